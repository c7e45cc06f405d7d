// Package measure predicts the measurements Intel TDX firmware (TDVF, EDK2's
// OvmfPkg built for TDX) and QEMU make when they boot a dstack image: MRTD
// from the firmware's TDVF sections, the RTMR0-2 event lists (TD HOB, CFV,
// secure-boot variables, ACPI, boot variables, the QEMU-patched kernel's
// Authenticode digest, the command line and the initrd), and the UKI's
// Authenticode SHA-256 a vTPM logs on Google Cloud. It also replays real
// event logs (CCEL/TCG2 binary, or dstack's JSON) so a prediction can be
// compared event by event, and writes the measurement files dstack's
// verifier reads (measurement.tdx.cbor, measurement.gcp.cbor).
//
// Every file read here may be downloaded input: each offset, size and count
// is checked against the data before it is used.
package measure

import (
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
)

// TDVF section types (TDX Virtual Firmware Design Guide, table "TDVF_SECTION").
const (
	SectionBFV     = 0 // boot firmware volume: code, measured into MRTD
	SectionCFV     = 1 // configuration firmware volume: variables, measured into RTMR0
	SectionTDHOB   = 2 // TD HOB page(s) QEMU fills
	SectionTempMem = 3 // temporary memory the firmware accepts early
)

// TDVF section attributes.
const (
	AttrMRExtend = 1 << 0 // extend the section's content into MRTD
	AttrPageAug  = 1 << 1 // added with TDH.MEM.PAGE.AUG: not measured at all
)

const (
	pageSize         = 0x1000
	extendChunk      = 0x100
	maxFirmwareSize  = 64 << 20 // OVMF images are 2-4 MiB
	maxSections      = 64
	tdvfSectionSize  = 32
	tdvfDescSize     = 16
	tableFooterBytes = 32 // bytes after the GUIDed table footer (reset vector)
	// maxAddedMemory bounds the pages QEMU adds for the firmware (OVMF's
	// sections add a few MiB): each costs a block in the MRTD hash.
	maxAddedMemory = 256 << 20
)

// GUIDs in their on-disk (mixed-endian) byte order.
var (
	// 96b582de-1fb2-45f7-baea-a366c55a082d: OVMF GUIDed table footer.
	guidTableFooter = mustGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
	// e47a6535-984a-4798-865e-4685a7bf8ec2: TDX metadata offset entry.
	guidTDXMetadataOffset = mustGUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
)

// ErrNotTDX marks (wrapped) a firmware image without TDX metadata: not an
// OVMF image, or an OVMF built without TDX support (Debian's 4 MiB
// OVMF_CODE_4M.fd, for example). Callers may treat it differently from a
// malformed TDX firmware.
var ErrNotTDX = errors.New("no TDX metadata")

// Section is one TDVF_SECTION entry of the firmware's TDX metadata.
type Section struct {
	DataOffset     uint32 // offset of the section's bytes in the firmware file
	RawDataSize    uint32 // number of bytes in the file
	MemoryAddress  uint64 // guest-physical address
	MemoryDataSize uint64 // bytes in guest memory (>= RawDataSize, zero-filled)
	Type           uint32
	Attributes     uint32
}

// Firmware is a parsed TDX firmware image (ovmf.fd) and its TDVF sections.
type Firmware struct {
	data     []byte
	Sections []Section
}

// ParseFirmware finds the TDX metadata (TDVF descriptor) in a firmware image
// the way QEMU does: the GUIDed table that ends 32 bytes before the end of
// the image, its TDX metadata offset entry, then the descriptor and its
// sections. Every size, offset and count is checked against the image.
func ParseFirmware(data []byte) (*Firmware, error) {
	if len(data) > maxFirmwareSize {
		return nil, fmt.Errorf("firmware: %d bytes, more than the %d a TDX firmware can be", len(data), maxFirmwareSize)
	}
	le := binary.LittleEndian
	size := len(data)
	if size < tableFooterBytes+18 {
		return nil, fmt.Errorf("firmware: %d bytes, too small for an OVMF GUIDed table", size)
	}
	footer := size - tableFooterBytes - 16
	if [16]byte(data[footer:footer+16]) != guidTableFooter {
		return nil, fmt.Errorf("firmware: no OVMF GUIDed table footer (GUID 96b582de-1fb2-45f7-baea-a366c55a082d) at offset %#x: not an OVMF/TDVF image: %w", footer, ErrNotTDX)
	}
	// The table's length counts the whole table, including the 2-byte
	// length and the 16-byte footer GUID.
	tableLen := int(le.Uint16(data[footer-2:]))
	if tableLen < 18 || tableLen-18 > footer-2 {
		return nil, fmt.Errorf("firmware: GUIDed table length %d does not fit the image", tableLen)
	}
	// Walk entries backwards from the end of the table: each is
	// [data][u16 length][GUID], the length counting all three.
	end := footer - 2              // exclusive end of the entries
	start := end - (tableLen - 18) // first byte of the table
	var entry []byte
	for p := end; p-start >= 18; {
		guid := [16]byte(data[p-16 : p])
		n := int(le.Uint16(data[p-18:]))
		if n < 18 || n > p-start {
			return nil, fmt.Errorf("firmware: GUIDed table entry at %#x has length %d, outside the table", p-18, n)
		}
		if guid == guidTDXMetadataOffset {
			entry = data[p-n : p-18]
			break
		}
		p -= n
	}
	if entry == nil {
		return nil, fmt.Errorf("firmware: the GUIDed table has no TDX metadata entry (GUID e47a6535-984a-4798-865e-4685a7bf8ec2): not a TDX firmware: %w", ErrNotTDX)
	}
	if len(entry) < 4 {
		return nil, fmt.Errorf("firmware: TDX metadata entry holds %d bytes, want a 4-byte offset", len(entry))
	}
	fromEnd := int64(le.Uint32(entry))
	if fromEnd < tdvfDescSize || fromEnd > int64(size) {
		return nil, fmt.Errorf("firmware: TDX metadata offset %#x (from the end) is outside the %d-byte image", fromEnd, size)
	}
	desc := size - int(fromEnd)
	d := data[desc : desc+tdvfDescSize]
	if string(d[:4]) != "TDVF" {
		return nil, fmt.Errorf("firmware: no TDVF signature at %#x", desc)
	}
	length, version, n := le.Uint32(d[4:]), le.Uint32(d[8:]), le.Uint32(d[12:])
	if version != 1 {
		return nil, fmt.Errorf("firmware: TDVF descriptor version %d, only version 1 is known", version)
	}
	if n == 0 || n > maxSections {
		return nil, fmt.Errorf("firmware: TDVF descriptor has %d sections (want 1..%d)", n, maxSections)
	}
	need := int64(tdvfDescSize) + int64(n)*tdvfSectionSize
	if int64(length) < need {
		return nil, fmt.Errorf("firmware: TDVF descriptor length %d is less than its %d sections need (%d)", length, n, need)
	}
	if int64(desc)+need > int64(size) {
		return nil, fmt.Errorf("firmware: TDVF sections run past the end of the image")
	}
	fw := &Firmware{data: data}
	var added uint64
	for i := 0; i < int(n); i++ {
		b := data[desc+tdvfDescSize+i*tdvfSectionSize:]
		s := Section{
			DataOffset:     le.Uint32(b[0:]),
			RawDataSize:    le.Uint32(b[4:]),
			MemoryAddress:  le.Uint64(b[8:]),
			MemoryDataSize: le.Uint64(b[16:]),
			Type:           le.Uint32(b[24:]),
			Attributes:     le.Uint32(b[28:]),
		}
		if err := s.check(size); err != nil {
			return nil, fmt.Errorf("firmware: TDVF section %d: %w", i, err)
		}
		if s.Attributes&AttrPageAug == 0 {
			if added += s.MemoryDataSize; added > maxAddedMemory {
				return nil, fmt.Errorf("firmware: TDVF sections add more than %d MiB of pages", maxAddedMemory>>20)
			}
		}
		fw.Sections = append(fw.Sections, s)
	}
	return fw, nil
}

func (s Section) check(fwSize int) error {
	if s.Type > SectionTempMem {
		return fmt.Errorf("unknown type %d", s.Type)
	}
	if s.Attributes&^uint32(AttrMRExtend|AttrPageAug) != 0 {
		return fmt.Errorf("unknown attributes %#x", s.Attributes)
	}
	if s.MemoryAddress%pageSize != 0 || s.MemoryDataSize%pageSize != 0 {
		return fmt.Errorf("address %#x / size %#x not 4 KiB aligned", s.MemoryAddress, s.MemoryDataSize)
	}
	if s.MemoryDataSize == 0 || s.MemoryDataSize > 1<<32 || s.MemoryAddress > 1<<52 {
		return fmt.Errorf("memory range %#x+%#x is empty or implausible", s.MemoryAddress, s.MemoryDataSize)
	}
	if uint64(s.RawDataSize) > s.MemoryDataSize {
		return fmt.Errorf("raw data size %#x exceeds memory size %#x", s.RawDataSize, s.MemoryDataSize)
	}
	if s.Attributes&AttrMRExtend != 0 && s.MemoryDataSize-uint64(s.RawDataSize) >= pageSize {
		// Extended sections are the firmware's own bytes; more than a
		// page of zero fill would let a small file demand hashing
		// gigabytes.
		return fmt.Errorf("extended section of %#x bytes holds only %#x bytes of data", s.MemoryDataSize, s.RawDataSize)
	}
	if uint64(s.DataOffset)+uint64(s.RawDataSize) > uint64(fwSize) {
		return fmt.Errorf("data %#x+%#x runs past the %d-byte image", s.DataOffset, s.RawDataSize, fwSize)
	}
	if (s.Type == SectionTDHOB || s.Type == SectionTempMem) && (s.RawDataSize != 0 || s.Attributes&AttrMRExtend != 0) {
		return fmt.Errorf("type %d section carries data or is to be extended", s.Type)
	}
	return nil
}

// PageOrder is the order in which QEMU adds and measures the firmware's
// pages: it differs between QEMU versions.
type PageOrder int

const (
	// SinglePass (QEMU >= 9, upstream KVM): per page, MEM.PAGE.ADD then its
	// sixteen MR.EXTEND chunks.
	SinglePass PageOrder = iota
	// TwoPass (QEMU 8 with the TDX patches): per section, every page's
	// MEM.PAGE.ADD, then every MR.EXTEND.
	TwoPass
)

// String names the order as dstack does ("single_pass", "two_pass").
func (o PageOrder) String() string {
	if o == TwoPass {
		return "two_pass"
	}
	return "single_pass"
}

// MRTD is the TD measurement register after QEMU has built the TD from the
// firmware's sections: SHA-384 over a 128-byte MEM.PAGE.ADD block per page
// (unless the section is PAGE.AUG'ed) and, for sections to be extended, a
// 128-byte MR.EXTEND block per 256-byte chunk followed by the chunk.
func (f *Firmware) MRTD(order PageOrder) []byte {
	h := sha512.New384()
	for _, s := range f.Sections {
		pages := s.MemoryDataSize / pageSize
		switch order {
		case TwoPass:
			for p := uint64(0); p < pages; p++ {
				f.pageAdd(h, s, p)
			}
			for p := uint64(0); p < pages; p++ {
				f.extend(h, s, p)
			}
		default:
			for p := uint64(0); p < pages; p++ {
				f.pageAdd(h, s, p)
				f.extend(h, s, p)
			}
		}
	}
	return h.Sum(nil)
}

func (f *Firmware) pageAdd(h hash.Hash, s Section, page uint64) {
	if s.Attributes&AttrPageAug != 0 {
		return
	}
	var b [128]byte
	copy(b[:], "MEM.PAGE.ADD")
	binary.LittleEndian.PutUint64(b[16:], s.MemoryAddress+page*pageSize)
	h.Write(b[:])
}

func (f *Firmware) extend(h hash.Hash, s Section, page uint64) {
	if s.Attributes&AttrMRExtend == 0 {
		return
	}
	for i := uint64(0); i < pageSize/extendChunk; i++ {
		var b [128]byte
		copy(b[:], "MR.EXTEND")
		off := page*pageSize + i*extendChunk
		binary.LittleEndian.PutUint64(b[16:], s.MemoryAddress+off)
		h.Write(b[:])
		h.Write(f.chunk(s, off))
	}
}

// chunk returns the 256 bytes of guest memory at offset off of section s:
// the file's bytes, zero past RawDataSize (QEMU copies RawDataSize bytes
// into a zeroed region).
func (f *Firmware) chunk(s Section, off uint64) []byte {
	var c [extendChunk]byte
	if off < uint64(s.RawDataSize) {
		end := min(off+extendChunk, uint64(s.RawDataSize))
		copy(c[:], f.data[uint64(s.DataOffset)+off:uint64(s.DataOffset)+end])
	}
	return c[:]
}

// CFV returns the bytes of the configuration firmware volume (the variable
// store) as the firmware measures it into RTMR0: the CFV section's raw data.
func (f *Firmware) CFV() ([]byte, error) {
	var cfv []byte
	found := 0
	for _, s := range f.Sections {
		if s.Type == SectionCFV {
			found++
			cfv = f.data[s.DataOffset : s.DataOffset+s.RawDataSize]
		}
	}
	if found != 1 {
		return nil, fmt.Errorf("firmware: %d CFV sections, want exactly one", found)
	}
	return cfv, nil
}

func mustGUID(s string) [16]byte {
	g, err := parseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// parseGUID turns the text form of a GUID into EFI_GUID's byte order: the
// first three fields little-endian, the last two as written.
func parseGUID(s string) ([16]byte, error) {
	var g [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, fmt.Errorf("GUID %q: not in 8-4-4-4-12 form", s)
	}
	hexs := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	var raw [16]byte
	for i := range raw {
		var v byte
		for _, c := range []byte(hexs[2*i : 2*i+2]) {
			v <<= 4
			switch {
			case c >= '0' && c <= '9':
				v |= c - '0'
			case c >= 'a' && c <= 'f':
				v |= c - 'a' + 10
			case c >= 'A' && c <= 'F':
				v |= c - 'A' + 10
			default:
				return g, fmt.Errorf("GUID %q: bad hex digit %q", s, c)
			}
		}
		raw[i] = v
	}
	g = raw
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	return g, nil
}
