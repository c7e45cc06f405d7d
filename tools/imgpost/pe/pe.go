// Package pe is imgpost's one reader of PE/COFF headers: the systemd EFI
// stub, the kernel's bzImage, a UKI and the Authenticode layout are all read
// through NewFile. It uses debug/pe's header types and constants, and adds
// what debug/pe does not do: every size, count and offset is checked
// against the file before anything is allocated or looped over, the way a
// hostile download must be read.
//
// A File is accepted when:
//   - it starts with "MZ" and e_lfanew points inside the file at "PE\0\0";
//   - NumberOfSections is at most MaxSections;
//   - SizeOfOptionalHeader is exactly the optional header's fixed part plus
//     NumberOfRvaAndSizes (at most 16) data directories, as EDK2's loader
//     requires, and the magic says PE32 or PE32+;
//   - FileAlignment and SectionAlignment are powers of two, SectionAlignment
//     at least FileAlignment;
//   - SizeOfHeaders covers the section table and lies inside the file;
//   - every section's raw data lies inside the file, after the headers, and
//     no two sections' raw data overlap;
//   - the certificate table, when there is one, lies inside the file after
//     the headers.
//
// Each failure is an *Error naming the file and the field.
package pe

import (
	"bytes"
	"debug/pe"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// MaxSections is the most sections NewFile accepts (the PE/COFF
// specification's limit for the Windows loader; a UKI has about 15).
const MaxSections = 96

// MaxHeaders bounds SizeOfHeaders (real images have 1-4 KiB).
const MaxHeaders = 1 << 20

// ErrFormat is wrapped by every *Error: the file is not an acceptable PE image.
var ErrFormat = errors.New("malformed PE image")

// Error is a problem with one header field of one file.
type Error struct {
	File  string // the name given to NewFile
	Field string // e.g. "NumberOfSections", "section .linux"
	Msg   string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s: PE %s: %s", e.File, e.Field, e.Msg)
}

// Unwrap returns ErrFormat.
func (e *Error) Unwrap() error { return ErrFormat }

// Section is one section header.
type Section struct {
	Name             string
	VirtualSize      uint32
	VirtualAddress   uint32
	SizeOfRawData    uint32
	PointerToRawData uint32
	Characteristics  uint32
	// HeaderOffset is the file offset of this section's 40-byte header.
	HeaderOffset int64
}

// File is a PE image's headers, checked against the file.
type File struct {
	Name string // for errors
	Size int64  // file size in bytes

	PEOffset       int64 // offset of "PE\0\0" (e_lfanew)
	FileHeader     pe.FileHeader
	OptionalOffset int64  // offset of the optional header
	Magic          uint16 // 0x10b (PE32) or 0x20b (PE32+)

	SectionAlignment, FileAlignment uint32
	SizeOfInitializedData           uint32
	SizeOfImage, SizeOfHeaders      uint32
	CheckSum                        uint32
	Subsystem                       uint16
	DataDirectory                   []pe.DataDirectory // NumberOfRvaAndSizes entries

	// CheckSumOffset is the file offset of the CheckSum field.
	CheckSumOffset int64
	// DataDirectoryOffset is the file offset of the first data directory.
	DataDirectoryOffset int64
	// SectionTableOffset is the file offset of the first section header.
	SectionTableOffset int64
	Sections           []Section // in header order

	r io.ReaderAt
}

// Offsets inside the optional header, common to PE32 and PE32+ unless said.
const (
	optSizeOfInitData = 8
	optSectionAlign   = 32
	optFileAlign      = 36
	optSizeOfImage    = 56
	optSizeOfHeaders  = 60
	optCheckSum       = 64
	optSubsystem      = 68
	optNumRva32       = 92 // PE32: NumberOfRvaAndSizes
	optNumRva64       = 108
	sectionHeaderSize = 40
)

// Optional header magics.
const (
	MagicPE32     = 0x10b
	MagicPE32Plus = 0x20b
)

// Open reads the headers of the PE image at path. The file stays open for
// ReadSection until Close.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, &Error{File: path, Msg: "not a regular file"}
	}
	p, err := NewFile(f, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, err
	}
	return p, nil
}

// Close closes the file Open opened (a no-op for NewFile's).
func (f *File) Close() error {
	if c, ok := f.r.(*os.File); ok {
		return c.Close()
	}
	return nil
}

// NewFile reads and checks the headers of the PE image of size bytes in r;
// name is used in errors.
func NewFile(r io.ReaderAt, size int64, name string) (*File, error) {
	f := &File{Name: name, Size: size, r: r}
	bad := func(field, format string, a ...any) error {
		return &Error{File: name, Field: field, Msg: fmt.Sprintf(format, a...)}
	}
	le := binary.LittleEndian
	var dos [0x40]byte
	if size < int64(len(dos)) {
		return nil, bad("", "not a PE image (%d bytes, too short)", size)
	}
	if _, err := r.ReadAt(dos[:], 0); err != nil {
		return nil, fmt.Errorf("%s: read DOS header: %w", name, err)
	}
	if string(dos[:2]) != "MZ" {
		return nil, &Error{File: name, Msg: "not a PE image (no MZ header)"}
	}
	f.PEOffset = int64(le.Uint32(dos[0x3c:]))
	if f.PEOffset < 4 || f.PEOffset+24 > size {
		return nil, bad("e_lfanew", "PE header offset %d outside the file (%d bytes)", f.PEOffset, size)
	}
	var coff [24]byte
	if _, err := r.ReadAt(coff[:], f.PEOffset); err != nil {
		return nil, fmt.Errorf("%s: read COFF header: %w", name, err)
	}
	if string(coff[:4]) != "PE\x00\x00" {
		return nil, bad("signature", "no \"PE\\0\\0\" at e_lfanew %#x", f.PEOffset)
	}
	if err := binary.Read(bytes.NewReader(coff[4:]), le, &f.FileHeader); err != nil {
		return nil, err
	}
	fh := &f.FileHeader
	if fh.NumberOfSections > MaxSections {
		return nil, bad("NumberOfSections", "%d, more than %d", fh.NumberOfSections, MaxSections)
	}
	f.OptionalOffset = f.PEOffset + 24
	optSize := int64(fh.SizeOfOptionalHeader)
	if optSize < 2 || f.OptionalOffset+optSize > size {
		return nil, bad("SizeOfOptionalHeader", "%d: too small or runs past the end of the file (%d bytes)", optSize, size)
	}
	opt := make([]byte, optSize)
	if _, err := r.ReadAt(opt, f.OptionalOffset); err != nil {
		return nil, fmt.Errorf("%s: read optional header: %w", name, err)
	}
	f.Magic = le.Uint16(opt)
	var nRvaOff int64
	switch f.Magic {
	case MagicPE32:
		nRvaOff = optNumRva32
	case MagicPE32Plus:
		nRvaOff = optNumRva64
	default:
		return nil, bad("optional header magic", "%#x, want PE32 (0x10b) or PE32+ (0x20b)", f.Magic)
	}
	dirsOff := nRvaOff + 4
	if optSize < dirsOff {
		return nil, bad("SizeOfOptionalHeader", "%d, less than the %d bytes of the fixed part", optSize, dirsOff)
	}
	nRva := le.Uint32(opt[nRvaOff:])
	if nRva > 16 {
		return nil, bad("NumberOfRvaAndSizes", "%d, more than 16", nRva)
	}
	if want := dirsOff + 8*int64(nRva); optSize != want {
		return nil, bad("SizeOfOptionalHeader", "%d, but NumberOfRvaAndSizes %d makes it %d", optSize, nRva, want)
	}
	f.SizeOfInitializedData = le.Uint32(opt[optSizeOfInitData:])
	f.SectionAlignment = le.Uint32(opt[optSectionAlign:])
	f.FileAlignment = le.Uint32(opt[optFileAlign:])
	f.SizeOfImage = le.Uint32(opt[optSizeOfImage:])
	f.SizeOfHeaders = le.Uint32(opt[optSizeOfHeaders:])
	f.CheckSum = le.Uint32(opt[optCheckSum:])
	f.Subsystem = le.Uint16(opt[optSubsystem:])
	f.CheckSumOffset = f.OptionalOffset + optCheckSum
	f.DataDirectoryOffset = f.OptionalOffset + dirsOff
	for i := uint32(0); i < nRva; i++ {
		o := dirsOff + 8*int64(i)
		f.DataDirectory = append(f.DataDirectory, pe.DataDirectory{
			VirtualAddress: le.Uint32(opt[o:]), Size: le.Uint32(opt[o+4:]),
		})
	}
	if !pow2(f.FileAlignment) || !pow2(f.SectionAlignment) || f.SectionAlignment < f.FileAlignment {
		return nil, bad("SectionAlignment/FileAlignment", "%#x/%#x: want powers of two, SectionAlignment ≥ FileAlignment", f.SectionAlignment, f.FileAlignment)
	}
	f.SectionTableOffset = f.OptionalOffset + optSize
	tableEnd := f.SectionTableOffset + sectionHeaderSize*int64(fh.NumberOfSections)
	if int64(f.SizeOfHeaders) > size || f.SizeOfHeaders > MaxHeaders {
		return nil, bad("SizeOfHeaders", "%d, beyond the end of the file (%d bytes) or above %d", f.SizeOfHeaders, size, MaxHeaders)
	}
	if tableEnd > int64(f.SizeOfHeaders) {
		return nil, bad("SizeOfHeaders", "%d, but the section table (%d sections) ends at %d", f.SizeOfHeaders, fh.NumberOfSections, tableEnd)
	}
	tab := make([]byte, tableEnd-f.SectionTableOffset)
	if _, err := r.ReadAt(tab, f.SectionTableOffset); err != nil {
		return nil, fmt.Errorf("%s: read section table: %w", name, err)
	}
	for i := 0; i < int(fh.NumberOfSections); i++ {
		var sh pe.SectionHeader32
		if err := binary.Read(bytes.NewReader(tab[sectionHeaderSize*i:]), le, &sh); err != nil {
			return nil, err
		}
		s := Section{
			Name:        cString(sh.Name[:]),
			VirtualSize: sh.VirtualSize, VirtualAddress: sh.VirtualAddress,
			SizeOfRawData: sh.SizeOfRawData, PointerToRawData: sh.PointerToRawData,
			Characteristics: sh.Characteristics,
			HeaderOffset:    f.SectionTableOffset + sectionHeaderSize*int64(i),
		}
		field := fmt.Sprintf("section %d (%q)", i+1, s.Name)
		if s.SizeOfRawData > 0 {
			end := int64(s.PointerToRawData) + int64(s.SizeOfRawData)
			if end > size {
				return nil, bad(field, "raw data [%#x, +%#x) runs past the end of the file (%d bytes)", s.PointerToRawData, s.SizeOfRawData, size)
			}
			if s.PointerToRawData < f.SizeOfHeaders {
				return nil, bad(field, "raw data at %#x inside the headers (SizeOfHeaders %#x)", s.PointerToRawData, f.SizeOfHeaders)
			}
		}
		f.Sections = append(f.Sections, s)
	}
	raw := f.RawOrder()
	for i := 1; i < len(raw); i++ {
		a, b := raw[i-1], raw[i]
		if uint64(a.PointerToRawData)+uint64(a.SizeOfRawData) > uint64(b.PointerToRawData) {
			return nil, bad("sections", "raw data of %q [%#x, +%#x) and %q [%#x, +%#x) overlap",
				a.Name, a.PointerToRawData, a.SizeOfRawData, b.Name, b.PointerToRawData, b.SizeOfRawData)
		}
	}
	if c, ok := f.CertTable(); ok {
		if int64(c.VirtualAddress) < int64(f.SizeOfHeaders) || int64(c.VirtualAddress)+int64(c.Size) > size {
			return nil, bad("certificate table", "[%#x, +%#x) outside the file after the headers (%d bytes)", c.VirtualAddress, c.Size, size)
		}
	}
	return f, nil
}

// CertTable returns the certificate table directory entry (a file offset
// and size), and whether the image has a non-empty one.
func (f *File) CertTable() (pe.DataDirectory, bool) {
	if len(f.DataDirectory) > pe.IMAGE_DIRECTORY_ENTRY_SECURITY {
		d := f.DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY]
		return d, d.Size != 0
	}
	return pe.DataDirectory{}, false
}

// RawOrder returns the sections that have raw data, sorted by
// PointerToRawData (the order Authenticode hashes them in).
func (f *File) RawOrder() []Section {
	var s []Section
	for _, x := range f.Sections {
		if x.SizeOfRawData > 0 {
			s = append(s, x)
		}
	}
	sort.SliceStable(s, func(i, j int) bool { return s[i].PointerToRawData < s[j].PointerToRawData })
	return s
}

// RawEnd is the end of the last section's raw data, or SizeOfHeaders when no
// section has raw data.
func (f *File) RawEnd() int64 {
	end := int64(f.SizeOfHeaders)
	for _, s := range f.Sections {
		if s.SizeOfRawData > 0 {
			end = max(end, int64(s.PointerToRawData)+int64(s.SizeOfRawData))
		}
	}
	return end
}

// SectionsNamed returns the sections called name, in header order.
func (f *File) SectionsNamed(name string) []Section {
	var out []Section
	for _, s := range f.Sections {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// Reader returns a reader over the image.
func (f *File) Reader() io.ReaderAt { return f.r }

// SectionData reads min(VirtualSize, SizeOfRawData) bytes of s (what a
// loader finds of the file's data in memory), refusing more than limit.
func (f *File) SectionData(s Section, limit int64) ([]byte, error) {
	n := int64(min(s.VirtualSize, s.SizeOfRawData))
	if n > limit {
		return nil, &Error{File: f.Name, Field: fmt.Sprintf("section %q", s.Name), Msg: fmt.Sprintf("%d bytes, more than %d", n, limit)}
	}
	b := make([]byte, n)
	if _, err := f.r.ReadAt(b, int64(s.PointerToRawData)); err != nil {
		return nil, fmt.Errorf("%s: section %q: %w", f.Name, s.Name, err)
	}
	return b, nil
}

// Headers reads the first SizeOfHeaders bytes.
func (f *File) Headers() ([]byte, error) {
	b := make([]byte, f.SizeOfHeaders)
	if _, err := f.r.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("%s: read headers: %w", f.Name, err)
	}
	return b, nil
}

func pow2(v uint32) bool { return v != 0 && v&(v-1) == 0 }

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}
