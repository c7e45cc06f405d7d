package gcptar

import (
	"fmt"
)

const (
	blockSize  = 512
	recordSize = 20 * blockSize // GNU tar's default blocking factor 20

	// Field offsets of the GNU (oldgnu) header.
	offName      = 0
	offMode      = 100
	offUID       = 108
	offGID       = 116
	offSize      = 124
	offMtime     = 136
	offChksum    = 148
	offTypeflag  = 156
	offMagic     = 257 // "ustar  \0" (magic + version of old GNU tar)
	offUname     = 265
	offGname     = 297
	offSparse    = 386 // 4 entries of offset[12] numbytes[12]
	offExtended  = 482
	offRealsize  = 483
	extEntries   = 21 // entries in an extension header
	offExtExtend = 504
)

// sparseHeaders returns the 'S' header and the extension headers for a
// sparse member, as GNU tar 1.34 writes them with --format=oldgnu -S: the
// map lists each data region and ends with an entry (size, 0).
func sparseHeaders(name string, mtime int64, regions []Region, size int64) ([]byte, error) {
	if len(name) > 99 {
		return nil, fmt.Errorf("member name %q longer than 99 bytes", name)
	}
	entries := append(append([]Region(nil), regions...), Region{Offset: size, Size: 0})
	var stored int64
	for _, r := range regions {
		stored += r.Size // GNU tar: the sum of the regions (each is then padded to a block)
	}
	nExt := 0
	if len(entries) > 4 {
		nExt = (len(entries) - 4 + extEntries - 1) / extEntries
	}
	b := make([]byte, blockSize*(1+nExt))
	h := b[:blockSize]
	copy(h[offName:], name)
	if err := putOctal(h[offMode:offMode+8], 0o644); err != nil {
		return nil, err
	}
	putOctal(h[offUID:offUID+8], 0)
	putOctal(h[offGID:offGID+8], 0)
	if err := putNumeric(h[offSize:offSize+12], stored); err != nil {
		return nil, err
	}
	if err := putNumeric(h[offMtime:offMtime+12], mtime); err != nil {
		return nil, err
	}
	h[offTypeflag] = 'S'
	copy(h[offMagic:], "ustar  \x00")
	copy(h[offUname:], "root")
	copy(h[offGname:], "root")
	put := func(dst []byte, r Region) error {
		if err := putNumeric(dst[0:12], r.Offset); err != nil {
			return err
		}
		return putNumeric(dst[12:24], r.Size)
	}
	for i := 0; i < 4 && i < len(entries); i++ {
		if err := put(h[offSparse+24*i:], entries[i]); err != nil {
			return nil, err
		}
	}
	if nExt > 0 {
		h[offExtended] = 1
	}
	if err := putNumeric(h[offRealsize:offRealsize+12], size); err != nil {
		return nil, err
	}
	// Checksum: sum of all bytes with the checksum field as spaces, written
	// as six octal digits, NUL, space.
	copy(h[offChksum:offChksum+8], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[offChksum:], fmt.Sprintf("%06o\x00 ", sum))

	rest := entries[min(4, len(entries)):]
	for e := 0; e < nExt; e++ {
		x := b[blockSize*(1+e) : blockSize*(2+e)]
		for i := 0; i < extEntries && len(rest) > 0; i++ {
			if err := put(x[24*i:], rest[0]); err != nil {
				return nil, err
			}
			rest = rest[1:]
		}
		if e < nExt-1 {
			x[offExtExtend] = 1
		}
	}
	return b, nil
}

// putOctal writes v as zero-padded octal digits followed by a NUL, filling
// the field (len-1 digits).
func putOctal(dst []byte, v int64) error {
	s := fmt.Sprintf("%0*o", len(dst)-1, v)
	if len(s) > len(dst)-1 {
		return fmt.Errorf("value %d does not fit a %d-byte octal field", v, len(dst))
	}
	copy(dst, s)
	dst[len(dst)-1] = 0
	return nil
}

// putNumeric writes v in octal when it fits, else in GNU base-256 (first
// byte 0x80, big-endian binary), as GNU tar does for large sizes.
func putNumeric(dst []byte, v int64) error {
	if v < 0 {
		return fmt.Errorf("negative value %d in a tar header", v)
	}
	if putOctal(dst, v) == nil {
		return nil
	}
	for i := len(dst) - 1; i > 0; i-- {
		dst[i] = byte(v)
		v >>= 8
	}
	if v != 0 {
		return fmt.Errorf("value too large for a %d-byte tar field", len(dst))
	}
	dst[0] = 0x80
	return nil
}
