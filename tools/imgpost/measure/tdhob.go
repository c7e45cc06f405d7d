package measure

import (
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// highMemThreshold is where QEMU's q35 machine starts splitting guest RAM
// into a part below 2 GiB and a part above 4 GiB (0xB0000000 = 2.75 GiB);
// below it all RAM sits below 4 GiB.
const highMemThreshold = 0xB0000000

const lowMemSplit = 0x80000000

// memRange is a guest-physical range [start, end) and whether the firmware's
// TDX metadata asks for it to be accepted early (TD_HOB/TEMP_MEM sections).
type memRange struct {
	accepted   bool
	start, end uint64
}

// hobRanges returns the ranges QEMU describes in the TD HOB for memSize
// bytes of RAM: the accepted ranges of the metadata, and the unaccepted RAM
// around them. Accepted ranges are kept separate even when adjacent.
func hobRanges(accepted [][2]uint64, memSize uint64) []memRange {
	rs := []memRange{{false, 0, memSize}}
	for _, a := range accepted {
		start, end := a[0], a[1]
		if start >= end {
			continue
		}
		var next []memRange
		for _, r := range rs {
			if r.accepted || r.end <= start || r.start >= end {
				next = append(next, r)
				continue
			}
			if r.start < start {
				next = append(next, memRange{false, r.start, start})
			}
			if r.end > end {
				next = append(next, memRange{false, end, r.end})
			}
		}
		next = append(next, memRange{true, start, end})
		sort.SliceStable(next, func(i, j int) bool { return next[i].start < next[j].start })
		rs = next
	}
	return rs
}

// TDHOB returns the TD HOB list QEMU writes into the firmware's TD_HOB
// section for a VM with memSize bytes of RAM: a PHIT HOB, then one resource
// descriptor HOB per range (accepted ranges as system memory, the rest as
// unaccepted memory; RAM beyond the q35 low-memory split moves above 4 GiB).
// The firmware measures exactly these bytes into RTMR0.
func TDHOB(hobAddr uint64, accepted [][2]uint64, memSize uint64) ([]byte, error) {
	if memSize < pageSize || memSize%pageSize != 0 {
		return nil, fmt.Errorf("memory size %d is not a positive multiple of 4 KiB", memSize)
	}
	if memSize > 1<<46 {
		return nil, fmt.Errorf("memory size %d is implausibly large", memSize)
	}
	rs := hobRanges(accepted, memSize)
	last := rs[len(rs)-1]
	rs = rs[:len(rs)-1]
	if last.accepted {
		return nil, errors.New("the firmware's accepted ranges reach the end of RAM: memory too small")
	}

	le := binary.LittleEndian
	hob := make([]byte, 56, 56+48*(len(rs)+2))
	le.PutUint16(hob[0:], 0x0001) // EFI_HOB_TYPE_HANDOFF
	le.PutUint16(hob[2:], 56)     // HobLength
	le.PutUint32(hob[8:], 9)      // Version
	// BootMode, EfiMemoryTop/Bottom, EfiFreeMemoryTop/Bottom: zero.
	// EfiEndOfHobList at [48:56] is filled in below.
	resource := func(typ uint8, start, length uint64) {
		var r [48]byte
		le.PutUint16(r[0:], 0x0003) // EFI_HOB_TYPE_RESOURCE_DESCRIPTOR
		le.PutUint16(r[2:], 48)
		// Owner GUID (r[8:24]) zero.
		r[24] = typ                // ResourceType
		le.PutUint32(r[28:], 0x07) // PRESENT | INITIALIZED | TESTED
		le.PutUint64(r[32:], start)
		le.PutUint64(r[40:], length)
		hob = append(hob, r[:]...)
	}
	const (
		systemMemory     = 0x00
		unacceptedMemory = 0x07
	)
	for _, r := range rs {
		if r.accepted {
			resource(systemMemory, r.start, r.end-r.start)
		} else {
			resource(unacceptedMemory, r.start, r.end-r.start)
		}
	}
	if memSize >= highMemThreshold {
		if last.start < lowMemSplit {
			resource(unacceptedMemory, last.start, lowMemSplit-last.start)
		}
		if last.end > lowMemSplit {
			resource(unacceptedMemory, 1<<32, last.end-lowMemSplit)
		}
	} else {
		resource(unacceptedMemory, last.start, last.end-last.start)
	}
	// EfiEndOfHobList points past an 8-byte end-of-list HOB that follows
	// the list in memory; the measured bytes stop before it.
	le.PutUint64(hob[48:], hobAddr+uint64(len(hob))+8)
	return hob, nil
}

// HOBWitness is the compact form of the firmware's TD_HOB/TEMP_MEM ranges
// dstack ships in measurement.tdx.cbor ("td_hob"): enough to rebuild the TD
// HOB for any memory size without the firmware.
type HOBWitness struct {
	HOBAddr  uint64
	Accepted [][2]uint64 // [start, end), sorted by start
}

// Witness collects the firmware's TD HOB address and accepted ranges.
func (f *Firmware) Witness() (HOBWitness, error) {
	var w HOBWitness
	hobs := 0
	for _, s := range f.Sections {
		if s.Type == SectionTDHOB || s.Type == SectionTempMem {
			w.Accepted = append(w.Accepted, [2]uint64{s.MemoryAddress, s.MemoryAddress + s.MemoryDataSize})
		}
		if s.Type == SectionTDHOB {
			hobs++
			w.HOBAddr = s.MemoryAddress
		}
	}
	if hobs != 1 {
		return w, fmt.Errorf("firmware: %d TD_HOB sections, want exactly one", hobs)
	}
	sort.Slice(w.Accepted, func(i, j int) bool { return w.Accepted[i][0] < w.Accepted[j][0] })
	for i := 1; i < len(w.Accepted); i++ {
		if w.Accepted[i][0] < w.Accepted[i-1][1] {
			return w, errors.New("firmware: TD_HOB/TEMP_MEM sections overlap")
		}
	}
	return w, nil
}

// TDHOB returns the TD HOB QEMU builds for this firmware and memSize.
func (w HOBWitness) TDHOB(memSize uint64) ([]byte, error) {
	return TDHOB(w.HOBAddr, w.Accepted, memSize)
}

// TDHOBDigest is the SHA-384 of the TD HOB: the first RTMR0 event.
func (w HOBWitness) TDHOBDigest(memSize uint64) ([]byte, error) {
	hob, err := w.TDHOB(memSize)
	if err != nil {
		return nil, err
	}
	s := sha512.Sum384(hob)
	return s[:], nil
}

// Encode renders the witness as dstack's TdHobWitnessV1: unsigned LEB128
// varints of 4 KiB page numbers — base page (lowest range start), TD HOB
// page minus base, range count, then per range its start minus base and its
// page count.
func (w HOBWitness) Encode() []byte {
	if len(w.Accepted) == 0 {
		return nil
	}
	base := w.Accepted[0][0] / pageSize
	var out []byte
	out = binary.AppendUvarint(out, base)
	out = binary.AppendUvarint(out, w.HOBAddr/pageSize-base)
	out = binary.AppendUvarint(out, uint64(len(w.Accepted)))
	for _, r := range w.Accepted {
		out = binary.AppendUvarint(out, r[0]/pageSize-base)
		out = binary.AppendUvarint(out, (r[1]-r[0])/pageSize)
	}
	return out
}

// DecodeWitness parses a TdHobWitnessV1 byte string.
func DecodeWitness(b []byte) (HOBWitness, error) {
	var w HOBWitness
	next := func(what string) (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, fmt.Errorf("td_hob witness: bad or truncated varint for %s", what)
		}
		b = b[n:]
		return v, nil
	}
	const maxPage = 1 << 40
	base, err := next("base page")
	if err != nil {
		return w, err
	}
	hob, err := next("TD HOB page")
	if err != nil {
		return w, err
	}
	count, err := next("range count")
	if err != nil {
		return w, err
	}
	if count == 0 || count > uint64(len(b)) || count > maxSections {
		return w, fmt.Errorf("td_hob witness: %d ranges in %d bytes", count, len(b))
	}
	if base > maxPage || hob > maxPage {
		return w, errors.New("td_hob witness: page number out of range")
	}
	w.HOBAddr = (base + hob) * pageSize
	for i := uint64(0); i < count; i++ {
		d, err := next("range start")
		if err != nil {
			return w, err
		}
		n, err := next("range size")
		if err != nil {
			return w, err
		}
		if d > maxPage || n == 0 || n > maxPage {
			return w, fmt.Errorf("td_hob witness: range %d out of bounds", i)
		}
		start := (base + d) * pageSize
		w.Accepted = append(w.Accepted, [2]uint64{start, start + n*pageSize})
	}
	if len(b) != 0 {
		return w, fmt.Errorf("td_hob witness: %d trailing bytes", len(b))
	}
	return w, nil
}
