package uki

import (
	"bytes"
	"encoding/binary"
	"fmt"

	imgpe "github.com/Dstack-TEE/meta-dstack/tools/imgpost/pe"
)

// PE/COFF constants used here.
const (
	machineAMD64      = 0x8664
	magicPE32Plus     = 0x20b
	subsystemEFIApp   = 10
	sectionHeaderSize = 40
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
	optSizeOfImage    = 56
	optSubsystem      = 68
	optDataDirs       = 112
	magicPE32         = 0x10b
	dirSecurity       = 4
	optSizeOfHeaders  = 60
	optCheckSum       = 64
)

// parseStub checks that b is a PE32+ x86-64 EFI application (read by the
// strict reader, package pe) and returns its header layout. name is used in
// errors.
func parseStub(b []byte, name string) (*header, error) {
	f, err := imgpe.NewFile(bytes.NewReader(b), int64(len(b)), name)
	if err != nil {
		return nil, fmt.Errorf("stub: %w", err)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("stub %s: %s", name, fmt.Sprintf(format, a...))
	}
	if m := f.FileHeader.Machine; m != machineAMD64 {
		return nil, bad("machine 0x%04x, want x86-64 (0x8664)", m)
	}
	if f.Magic != magicPE32Plus {
		return nil, bad("optional header magic 0x%03x, want PE32+ (0x20b)", f.Magic)
	}
	if f.Subsystem != subsystemEFIApp {
		return nil, bad("subsystem %d, want EFI application (10)", f.Subsystem)
	}
	h := &header{
		peOff:         int(f.PEOffset),
		coffOff:       int(f.PEOffset) + 4,
		optOff:        int(f.OptionalOffset),
		secTableOff:   int(f.SectionTableOffset),
		numSections:   len(f.Sections),
		sectionAlign:  f.SectionAlignment,
		fileAlign:     f.FileAlignment,
		sizeOfHeaders: f.SizeOfHeaders,
		sizeOfImage:   f.SizeOfImage,
		symTablePtr:   f.FileHeader.PointerToSymbolTable,
	}
	if c, ok := f.CertTable(); ok {
		h.secDirSize = c.Size
	}
	for _, s := range f.Sections {
		h.sections = append(h.sections, rawSection{
			name: s.Name, virtualSize: s.VirtualSize, virtualAddr: s.VirtualAddress,
			sizeOfRawData: s.SizeOfRawData, pointerToRD: s.PointerToRawData,
		})
	}
	return h, nil
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
