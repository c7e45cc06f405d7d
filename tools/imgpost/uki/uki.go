// Package uki builds and reads Unified Kernel Images: the systemd EFI stub
// with the kernel, initramfs, command line and os-release appended as PE
// sections, following the UAPI group's UKI specification and what ukify
// produces.
//
// Layout of a built UKI: the stub's headers and sections are copied
// unchanged; then, in this order, .osrel (when given), .cmdline, .uname
// (when given), .initrd (all initrds concatenated in the order given, each
// but the last zero-padded to a 4-byte multiple so that an uncompressed cpio
// archive after a compressed one still starts 4-aligned, as the kernel's
// initramfs unpacker requires; zero bytes between archives are skipped) and .linux last (ukify keeps .linux last to leave room for the
// kernel's decompression). Each new section starts at the next
// SectionAlignment boundary after the previous one ends (the first after the
// stub's highest section end or SizeOfImage, whichever is larger); its raw
// data starts at the next FileAlignment boundary in the file and is
// zero-padded to a FileAlignment multiple; VirtualSize is the exact input
// size; characteristics are initialized, read-only data.
//
// Bytes the stub carries after its last section (Debian's stub has its COFF
// symbol and string tables there) are kept and moved after the new sections,
// with PointerToSymbolTable adjusted, so the file stays contiguous (headers,
// sections, trailing data) and every Authenticode implementation (section-wise
// like EDK2's, or linear like osslsigncode's) computes the same digest. The
// file is then always zero-padded to a multiple of 8 bytes, so the firmware's
// Authenticode digest of the file (EDK2 hashes the bytes after the last
// section unpadded) equals a signing tool's (which pads them to 8).
//
// The header fields NumberOfSections, SizeOfImage, SizeOfInitializedData
// (plus the new sections' VirtualSize, as ukify does) and CheckSum are
// updated; SizeOfHeaders is never grown: when the stub's headers have no room
// for the new section headers, Build fails. TimeDateStamp and everything else
// stay as in the stub, so the output depends only on the inputs (no clock,
// SOURCE_DATE_EPOCH is not needed).
package uki

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	imgpe "github.com/Dstack-TEE/meta-dstack/tools/imgpost/pe"
)

// MaxCmdline is the longest command line Build accepts (x86's
// COMMAND_LINE_SIZE).
const MaxCmdline = 2048

// maxStub bounds the stub read into memory (Debian's is about 80 KiB).
const maxStub = 64 << 20

// Options are Build's inputs. Stub, Linux, at least one Initrd, Out and a
// Cmdline are required.
type Options struct {
	Stub      string   // systemd EFI stub (linuxx64.efi.stub)
	Linux     string   // x86 bzImage with the EFI stub
	Initrds   []string // initramfs images, concatenated in order
	Cmdline   string   // kernel command line (no NUL or newline, ≤ MaxCmdline bytes)
	OSRelease string   // os-release file for .osrel; "" for none
	Uname     string   // kernel release for .uname; "" for none
	Out       string   // the UKI to write
}

// Section is one PE section of a UKI, as Inspect reports it.
type Section struct {
	Name             string `json:"name"`
	VirtualAddress   uint32 `json:"virtual_address"`
	VirtualSize      uint32 `json:"virtual_size"`
	SizeOfRawData    uint32 `json:"size_of_raw_data"`
	PointerToRawData uint32 `json:"pointer_to_raw_data"`
}

// Info describes a UKI (or any PE image): its sections and the text of its
// .cmdline, .osrel and .uname sections (empty when absent).
type Info struct {
	Size       int64     `json:"size"`
	Sections   []Section `json:"sections"`
	Cmdline    string    `json:"cmdline,omitempty"`
	HasCmdline bool      `json:"-"`
	// CmdlineSections counts the .cmdline sections (Cmdline is the last).
	CmdlineSections int    `json:"-"`
	OSRelease       string `json:"os_release,omitempty"`
	Uname           string `json:"uname,omitempty"`
	LinuxSize       uint32 `json:"linux_size,omitempty"`
	InitrdSize      uint32 `json:"initrd_size,omitempty"`
	ImageSize       uint32 `json:"size_of_image"`
	CheckSum        uint32 `json:"checksum"`
	Subsystem       uint16 `json:"subsystem"`
	TimeDateStamp   uint32 `json:"time_date_stamp"`
}

// CheckCmdline reports why s is not an acceptable UKI command line, or nil.
func CheckCmdline(s string) error {
	switch {
	case len(s) > MaxCmdline:
		return fmt.Errorf("command line is %d bytes, more than %d", len(s), MaxCmdline)
	case strings.ContainsRune(s, 0):
		return errors.New("command line holds a NUL byte")
	case strings.ContainsAny(s, "\n\r"):
		return errors.New("command line holds a newline")
	}
	return nil
}

// checkKernel makes sure path is an x86 bzImage with an EFI stub.
func checkKernel(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("kernel: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("kernel: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("kernel %s: not a regular file", path)
	}
	var hdr [0x206]byte
	n, _ := io.ReadFull(f, hdr[:])
	if n >= 4 && string(hdr[:4]) == "\x7fELF" {
		return 0, fmt.Errorf("kernel %s: an ELF file (vmlinux?); a bzImage with the EFI stub is needed", path)
	}
	if n < len(hdr) {
		return 0, fmt.Errorf("kernel %s: too short (%d bytes) for an x86 bzImage", path, st.Size())
	}
	if string(hdr[:2]) != "MZ" {
		return 0, fmt.Errorf("kernel %s: no MZ header: not a bzImage with an EFI stub", path)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return 0, fmt.Errorf("kernel %s: no x86 boot protocol header (HdrS at 0x202): not an x86 bzImage", path)
	}
	pf, err := imgpe.NewFile(f, st.Size(), path)
	if err != nil {
		if errors.Is(err, imgpe.ErrFormat) {
			return 0, fmt.Errorf("kernel: %w (truncated, or built without CONFIG_EFI_STUB?)", err)
		}
		return 0, fmt.Errorf("kernel: %w", err)
	}
	if pf.FileHeader.Machine != machineAMD64 {
		return 0, fmt.Errorf("kernel %s: PE machine 0x%04x, want x86-64 (0x8664)", path, pf.FileHeader.Machine)
	}
	if err := checkSetupSects(f, hdr[:], pf); err != nil {
		return 0, fmt.Errorf("kernel %s: %w", path, err)
	}
	return st.Size(), nil
}

// newSection is a section Build appends: data from a byte slice or from
// files (read in order).
type newSection struct {
	name  string
	data  []byte
	files []string
	align int64 // zero-pad between files to this multiple (0: none)
	size  int64
	// computed layout
	va, raw, rawSize uint32
}

func fileSize(what, path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("%s %s: not a regular file", what, path)
	}
	if st.Size() == 0 {
		return 0, fmt.Errorf("%s %s: empty", what, path)
	}
	return st.Size(), nil
}

// Build writes the UKI described by opts to opts.Out (atomically: on any
// error nothing is left at opts.Out) and returns its layout.
func Build(opts Options) (*Info, error) {
	if opts.Stub == "" || opts.Linux == "" || len(opts.Initrds) == 0 || opts.Out == "" {
		return nil, errors.New("uki: stub, kernel, at least one initrd and the output are required")
	}
	if err := CheckCmdline(opts.Cmdline); err != nil {
		return nil, err
	}
	if err := atomicfile.CheckNotInput(opts.Out, append([]string{opts.Stub, opts.Linux, opts.OSRelease}, opts.Initrds...)...); err != nil {
		return nil, err
	}
	if strings.ContainsAny(opts.Uname, "\x00\n") {
		return nil, errors.New("uname holds a NUL or newline")
	}
	stub, err := readStub(opts.Stub)
	if err != nil {
		return nil, err
	}
	h, err := parseStub(stub, opts.Stub)
	if err != nil {
		return nil, err
	}
	if h.secDirSize != 0 {
		return nil, fmt.Errorf("stub %s: carries an Authenticode signature (certificate table); use the unsigned stub", opts.Stub)
	}
	var secs []*newSection
	if opts.OSRelease != "" {
		b, err := os.ReadFile(opts.OSRelease)
		if err != nil {
			return nil, fmt.Errorf("os-release: %w", err)
		}
		if len(b) == 0 {
			return nil, fmt.Errorf("os-release %s: empty", opts.OSRelease)
		}
		secs = append(secs, &newSection{name: ".osrel", data: b})
	}
	if opts.Cmdline == "" {
		return nil, errors.New("command line is empty")
	}
	secs = append(secs, &newSection{name: ".cmdline", data: []byte(opts.Cmdline)})
	if opts.Uname != "" {
		secs = append(secs, &newSection{name: ".uname", data: []byte(opts.Uname)})
	}
	initrd := &newSection{name: ".initrd", files: opts.Initrds, align: 4}
	for i, p := range opts.Initrds {
		n, err := fileSize("initrd", p)
		if err != nil {
			return nil, err
		}
		initrd.size += n
		if i < len(opts.Initrds)-1 {
			initrd.size = int64(alignUp(uint64(initrd.size), 4))
		}
	}
	secs = append(secs, initrd)
	klen, err := checkKernel(opts.Linux)
	if err != nil {
		return nil, err
	}
	secs = append(secs, &newSection{name: ".linux", files: []string{opts.Linux}, size: klen})
	for _, s := range secs {
		if s.files == nil {
			s.size = int64(len(s.data))
		}
	}

	// Room for the new section headers?
	le := binary.LittleEndian
	oldEnd := h.secTableOff + sectionHeaderSize*h.numSections
	newEnd := oldEnd + sectionHeaderSize*len(secs)
	lowestRaw := uint64(h.sizeOfHeaders)
	for _, s := range h.sections {
		if s.sizeOfRawData > 0 && uint64(s.pointerToRD) < lowestRaw {
			lowestRaw = uint64(s.pointerToRD)
		}
	}
	if uint64(newEnd) > lowestRaw {
		return nil, fmt.Errorf("stub %s: no room for %d more section headers: the section table ends at %d, SizeOfHeaders is %d (need %d)",
			opts.Stub, len(secs), oldEnd, lowestRaw, newEnd)
	}
	if !allZero(stub[oldEnd:newEnd]) {
		return nil, fmt.Errorf("stub %s: the header space after the section table (%d..%d) is in use; cannot add section headers", opts.Stub, oldEnd, newEnd)
	}

	// Layout.
	var secEnd, vaEnd uint64 = uint64(h.sizeOfHeaders), uint64(h.sizeOfImage)
	for _, s := range h.sections {
		if e := uint64(s.pointerToRD) + uint64(s.sizeOfRawData); s.sizeOfRawData > 0 && e > secEnd {
			secEnd = e
		}
		vs := s.virtualSize
		if vs == 0 {
			vs = s.sizeOfRawData
		}
		if e := uint64(s.virtualAddr) + uint64(vs); e > vaEnd {
			vaEnd = e
		}
	}
	trailing := stub[secEnd:]
	raw := alignUp(secEnd, uint64(h.fileAlign))
	va := alignUp(vaEnd, uint64(h.sectionAlign))
	var initData uint64
	for _, s := range secs {
		rawSize := alignUp(uint64(s.size), uint64(h.fileAlign))
		if va+uint64(s.size) > 0xffffffff || raw+rawSize > 0xffffffff {
			return nil, fmt.Errorf("uki: section %s (%d bytes) does not fit a 4 GiB PE image", s.name, s.size)
		}
		s.va, s.raw, s.rawSize = uint32(va), uint32(raw), uint32(rawSize)
		initData += uint64(s.size)
		raw += rawSize
		va = alignUp(va+uint64(s.size), uint64(h.sectionAlign))
	}
	newTrailing := raw
	fileEnd := newTrailing + uint64(len(trailing))
	// Always a multiple of 8 bytes: firmware (EDK2) hashes the bytes after
	// the last section as they are, signing tools pad them to 8, and the
	// two digests agree only for an 8-aligned file.
	pad := alignUp(fileEnd, 8) - fileEnd

	// Patched headers.
	hdr := bytes.Clone(stub[:h.sizeOfHeaders])
	le.PutUint16(hdr[h.coffOff+2:], uint16(h.numSections+len(secs)))
	if h.numSections+len(secs) > 0xffff {
		return nil, errors.New("uki: too many sections")
	}
	if h.symTablePtr != 0 && uint64(h.symTablePtr) >= secEnd {
		le.PutUint32(hdr[h.coffOff+8:], uint32(uint64(h.symTablePtr)-secEnd+newTrailing))
	}
	oldInit := le.Uint32(hdr[h.optOff+optSizeOfInitData:])
	le.PutUint32(hdr[h.optOff+optSizeOfInitData:], uint32(uint64(oldInit)+initData))
	le.PutUint32(hdr[h.optOff+optSizeOfImage:], uint32(va))
	le.PutUint32(hdr[h.optOff+optCheckSum:], 0)
	for i, s := range secs {
		o := oldEnd + sectionHeaderSize*i
		e := hdr[o : o+sectionHeaderSize]
		copy(e[0:8], s.name)
		le.PutUint32(e[8:], uint32(s.size))
		le.PutUint32(e[12:], s.va)
		le.PutUint32(e[16:], s.rawSize)
		le.PutUint32(e[20:], s.raw)
		le.PutUint32(e[36:], dataReadOnly)
	}

	// Write.
	f, err := atomicfile.Create(opts.Out, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Abort()
	sum := &checksum{skipOff: int64(h.optOff + optCheckSum)}
	w := &countWriter{w: io.MultiWriter(f, sum)}
	w.Write(hdr)
	w.Write(stub[h.sizeOfHeaders:secEnd])
	w.zeros(int64(secs[0].raw) - w.n)
	for _, s := range secs {
		if s.files == nil {
			w.Write(s.data)
		} else {
			for i, p := range s.files {
				if err := w.copyFile(p); err != nil {
					return nil, err
				}
				if s.align > 0 && i < len(s.files)-1 {
					rel := w.n - int64(s.raw)
					w.zeros((s.align - rel%s.align) % s.align)
				}
			}
		}
		if want := int64(s.raw) + s.size; w.err == nil && w.n != want {
			return nil, fmt.Errorf("uki: section %s: input changed while reading (%d bytes written, want %d)", s.name, w.n-int64(s.raw), s.size)
		}
		w.zeros(int64(s.raw) + int64(s.rawSize) - w.n)
	}
	w.Write(trailing)
	w.zeros(int64(pad))
	if w.err != nil {
		return nil, fmt.Errorf("write %s: %w", opts.Out, w.err)
	}
	var cs [4]byte
	le.PutUint32(cs[:], sum.value())
	if _, err := f.WriteAt(cs[:], int64(h.optOff+optCheckSum)); err != nil {
		return nil, fmt.Errorf("write %s: %w", opts.Out, err)
	}
	if err := f.Commit(); err != nil {
		return nil, err
	}
	return Inspect(opts.Out)
}

func readStub(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("stub: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stub: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("stub %s: not a regular file", path)
	}
	if st.Size() > maxStub {
		return nil, fmt.Errorf("stub %s: %d bytes, too large for an EFI stub", path, st.Size())
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("stub %s: %w", path, err)
	}
	return b, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// countWriter writes sequentially, remembers the first error and counts bytes.
type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

var zeroBlock [4096]byte

func (c *countWriter) zeros(n int64) {
	for n > 0 && c.err == nil {
		k := min(n, int64(len(zeroBlock)))
		c.Write(zeroBlock[:k])
		n -= k
	}
}

func (c *countWriter) copyFile(path string) error {
	in, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("uki: %w", err)
	}
	defer in.Close()
	if _, err := io.CopyBuffer(c, in, make([]byte, 1<<20)); err != nil {
		if c.err != nil {
			return fmt.Errorf("uki: write: %w", c.err)
		}
		return fmt.Errorf("uki: read %s: %w", path, err)
	}
	return nil
}

// Inspect reads the PE image at path and returns its sections and embedded
// texts.
func Inspect(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	pf, err := imgpe.NewFile(f, st.Size(), path)
	if err != nil {
		return nil, err
	}
	return infoOf(pf)
}

// InspectReader is Inspect for an image held in r (size bytes). The headers
// are read by package pe (every size and offset checked against size).
func InspectReader(r io.ReaderAt, size int64) (*Info, error) {
	pf, err := imgpe.NewFile(r, size, "PE image")
	if err != nil {
		return nil, err
	}
	return infoOf(pf)
}

// InspectPE is Inspect for headers already read by package pe.
func InspectPE(pf *imgpe.File) (*Info, error) { return infoOf(pf) }

// maxText bounds the text sections read into memory.
const maxText = 1 << 20

func infoOf(pf *imgpe.File) (*Info, error) {
	info := &Info{Size: pf.Size, TimeDateStamp: pf.FileHeader.TimeDateStamp,
		ImageSize: pf.SizeOfImage, CheckSum: pf.CheckSum, Subsystem: pf.Subsystem}
	var err error
	for _, s := range pf.Sections {
		info.Sections = append(info.Sections, Section{
			Name: s.Name, VirtualAddress: s.VirtualAddress, VirtualSize: s.VirtualSize,
			SizeOfRawData: s.SizeOfRawData, PointerToRawData: s.PointerToRawData,
		})
		text := func() (string, error) {
			b, err := pf.SectionData(s, maxText)
			return string(b), err
		}
		switch s.Name {
		case ".cmdline":
			if info.Cmdline, err = text(); err != nil {
				return nil, err
			}
			info.HasCmdline = true
			info.CmdlineSections++
		case ".osrel":
			if info.OSRelease, err = text(); err != nil {
				return nil, err
			}
		case ".uname":
			if info.Uname, err = text(); err != nil {
				return nil, err
			}
		case ".linux":
			info.LinuxSize = s.VirtualSize
		case ".initrd":
			info.InitrdSize = s.VirtualSize
		}
	}
	return info, nil
}

// Cmdline returns the command line embedded in the UKI at path (its .cmdline
// section), with trailing NULs removed.
func Cmdline(path string) (string, error) {
	info, err := Inspect(path)
	if err != nil {
		return "", err
	}
	if !info.HasCmdline {
		return "", fmt.Errorf("%s: no .cmdline section (not a UKI?)", path)
	}
	return strings.TrimRight(info.Cmdline, "\x00"), nil
}

// checkSetupSects checks the x86 boot protocol's sizes against the file: the
// setup code ((setup_sects+1) × 512 bytes at 0x1f1) and the protected-mode
// kernel (syssize × 16 bytes at 0x1f4) must be in the file, and the PE view
// must not extend past it (pf already checked its own sections).
func checkSetupSects(f *os.File, hdr []byte, pf *imgpe.File) error {
	setup := int64(hdr[0x1f1])
	if setup == 0 {
		setup = 4
	}
	syssize := int64(binary.LittleEndian.Uint32(hdr[0x1f4:]))
	need := (setup+1)*512 + syssize*16
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if need > st.Size() {
		return fmt.Errorf("truncated: the boot header (setup_sects %d, syssize %d) needs %d bytes, the file has %d", setup, syssize, need, st.Size())
	}
	return nil
}
