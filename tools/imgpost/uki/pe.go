package uki

import (
	"encoding/binary"
	"fmt"
)

// PE/COFF constants used here.
const (
	machineAMD64      = 0x8664
	magicPE32         = 0x10b
	magicPE32Plus     = 0x20b
	subsystemEFIApp   = 10
	sectionHeaderSize = 40
	dirSecurity       = 4
	// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ, as ukify marks
	// the sections it adds.
	dataReadOnly = 0x40000040
)

// header holds the offsets and values of a PE32+ image's headers that the
// UKI builder reads and patches.
type header struct {
	peOff         int // "PE\0\0"
	coffOff       int // COFF file header (peOff+4)
	optOff        int // optional header
	secTableOff   int // first section header
	numSections   int
	sectionAlign  uint32
	fileAlign     uint32
	sizeOfHeaders uint32
	sizeOfImage   uint32
	symTablePtr   uint32
	secDirSize    uint32
	sections      []rawSection
}

type rawSection struct {
	name                       string
	virtualSize, virtualAddr   uint32
	sizeOfRawData, pointerToRD uint32
}

// Offsets inside the PE32+ optional header.
const (
	optSizeOfInitData = 8
	optSectionAlign   = 32
	optFileAlign      = 36
	optSizeOfImage    = 56
	optSizeOfHeaders  = 60
	optCheckSum       = 64
	optSubsystem      = 68
	optNumRvaSizes    = 108
	optDataDirs       = 112
)

// parseStub checks that b is a PE32+ x86-64 EFI application and returns its
// header layout. name is used in errors.
func parseStub(b []byte, name string) (*header, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("stub %s: %s", name, fmt.Sprintf(format, a...))
	}
	if len(b) < 0x40 || string(b[:2]) != "MZ" {
		return nil, bad("not a PE file (no MZ header)")
	}
	h := &header{}
	h.peOff = int(binary.LittleEndian.Uint32(b[0x3c:]))
	if h.peOff < 0x40 || h.peOff+24 > len(b) || string(b[h.peOff:h.peOff+4]) != "PE\x00\x00" {
		return nil, bad("not a PE file (no PE signature)")
	}
	h.coffOff = h.peOff + 4
	le := binary.LittleEndian
	if m := le.Uint16(b[h.coffOff:]); m != machineAMD64 {
		return nil, bad("machine 0x%04x, want x86-64 (0x8664)", m)
	}
	h.numSections = int(le.Uint16(b[h.coffOff+2:]))
	h.symTablePtr = le.Uint32(b[h.coffOff+8:])
	optSize := int(le.Uint16(b[h.coffOff+16:]))
	h.optOff = h.coffOff + 20
	if optSize < optDataDirs || h.optOff+optSize > len(b) {
		return nil, bad("optional header too small (%d bytes)", optSize)
	}
	if mg := le.Uint16(b[h.optOff:]); mg != magicPE32Plus {
		return nil, bad("optional header magic 0x%03x, want PE32+ (0x20b)", mg)
	}
	if ss := le.Uint16(b[h.optOff+optSubsystem:]); ss != subsystemEFIApp {
		return nil, bad("subsystem %d, want EFI application (10)", ss)
	}
	h.sectionAlign = le.Uint32(b[h.optOff+optSectionAlign:])
	h.fileAlign = le.Uint32(b[h.optOff+optFileAlign:])
	h.sizeOfImage = le.Uint32(b[h.optOff+optSizeOfImage:])
	h.sizeOfHeaders = le.Uint32(b[h.optOff+optSizeOfHeaders:])
	if h.fileAlign == 0 || h.fileAlign&(h.fileAlign-1) != 0 || h.sectionAlign < h.fileAlign || h.sectionAlign&(h.sectionAlign-1) != 0 {
		return nil, bad("bad alignments: SectionAlignment 0x%x, FileAlignment 0x%x", h.sectionAlign, h.fileAlign)
	}
	nDirs := int(le.Uint32(b[h.optOff+optNumRvaSizes:]))
	if nDirs > dirSecurity && optDataDirs+8*(dirSecurity+1) <= optSize {
		h.secDirSize = le.Uint32(b[h.optOff+optDataDirs+8*dirSecurity+4:])
	}
	h.secTableOff = h.optOff + optSize
	end := h.secTableOff + sectionHeaderSize*h.numSections
	if end > len(b) || uint32(end) > h.sizeOfHeaders || int(h.sizeOfHeaders) > len(b) {
		return nil, bad("section table (ends at %d) outside SizeOfHeaders %d / file size %d", end, h.sizeOfHeaders, len(b))
	}
	for i := 0; i < h.numSections; i++ {
		o := h.secTableOff + sectionHeaderSize*i
		s := rawSection{
			name:          cString(b[o : o+8]),
			virtualSize:   le.Uint32(b[o+8:]),
			virtualAddr:   le.Uint32(b[o+12:]),
			sizeOfRawData: le.Uint32(b[o+16:]),
			pointerToRD:   le.Uint32(b[o+20:]),
		}
		if s.sizeOfRawData > 0 && (uint64(s.pointerToRD)+uint64(s.sizeOfRawData) > uint64(len(b)) || s.pointerToRD < h.sizeOfHeaders) {
			return nil, bad("section %s raw data [%d, +%d) outside the file or inside the headers", s.name, s.pointerToRD, s.sizeOfRawData)
		}
		h.sections = append(h.sections, s)
	}
	return h, nil
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// checksum computes the PE image checksum (the algorithm of Windows'
// CheckSumMappedFile): 16-bit little-endian words summed with end-around
// carry, the CheckSum field itself counted as zero, plus the file length.
// Write the whole file through it in order.
type checksum struct {
	sum     uint64
	n       int64 // bytes seen
	skipOff int64 // offset of the 4-byte CheckSum field
	odd     int   // pending low byte (+1), 0 when none
}

func (c *checksum) Write(p []byte) (int, error) {
	if c.odd != 0 || c.n%2 != 0 || (c.n < c.skipOff+4 && c.n+int64(len(p)) > c.skipOff) {
		c.slow(p)
		return len(p), nil
	}
	// Fast path: even offset, CheckSum field not in p. Sum 16-bit words in
	// 32-bit lanes of two accumulators, flushed before a lane can overflow.
	i := 0
	for i+8 <= len(p) {
		var a, b uint64
		for k := 0; k < 8192 && i+8 <= len(p); k, i = k+1, i+8 {
			v := binary.LittleEndian.Uint64(p[i:])
			a += v & 0x0000ffff0000ffff
			b += (v >> 16) & 0x0000ffff0000ffff
		}
		c.sum += a&0xffffffff + a>>32 + b&0xffffffff + b>>32
	}
	c.n += int64(i)
	if i < len(p) {
		c.slow(p[i:])
	}
	if c.sum > 1<<60 {
		c.sum = fold(c.sum)
	}
	return len(p), nil
}

// slow adds p byte by byte, zeroing the CheckSum field.
func (c *checksum) slow(p []byte) {
	for i, v := range p {
		off := c.n + int64(i)
		if off >= c.skipOff && off < c.skipOff+4 {
			v = 0
		}
		if off%2 == 0 {
			c.odd = int(v) + 1
		} else {
			c.sum += uint64(c.odd-1) | uint64(v)<<8
			c.odd = 0
		}
	}
	c.n += int64(len(p))
}

func fold(s uint64) uint64 {
	for s > 0xffff {
		s = (s & 0xffff) + (s >> 16)
	}
	return s
}

// value returns the checksum of everything written so far.
func (c *checksum) value() uint32 {
	s := c.sum
	if c.odd != 0 {
		s += uint64(c.odd - 1)
	}
	return uint32(fold(s) + uint64(c.n))
}
