package measure

import (
	"crypto"
	_ "crypto/sha256" // register SHA-256
	_ "crypto/sha512" // register SHA-384
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// FirmwareAuthenticode returns the Authenticode digest of the PE image in r
// (size bytes) as UEFI firmware computes it when it measures an image
// (EDK2's MeasurePeImageAndExtend / DxeTpm2MeasureBootLib): the headers up
// to SizeOfHeaders without the CheckSum field and the certificate-table
// directory entry; each section's raw data sorted by PointerToRawData; then
// the bytes after SizeOfHeaders + the sum of the sections' raw sizes up to
// the certificate table (or the end of the file) — without padding them to
// a multiple of 8, unlike signing tools.
//
// It is written here rather than taken from the authenticode package, whose
// padding is what signing tools do; the two are to be unified.
func FirmwareAuthenticode(r io.ReaderAt, size int64, h crypto.Hash) ([]byte, error) {
	regions, err := peRegions(r, size)
	if err != nil {
		return nil, err
	}
	d := h.New()
	buf := make([]byte, 1<<16)
	for _, rg := range regions {
		for off := rg[0]; off < rg[1]; {
			n := min(int64(len(buf)), rg[1]-off)
			if _, err := r.ReadAt(buf[:n], off); err != nil {
				return nil, fmt.Errorf("PE: reading bytes %d..%d: %w", off, off+n, err)
			}
			d.Write(buf[:n])
			off += n
		}
	}
	return d.Sum(nil), nil
}

// peRegions returns the [start, end) byte ranges of the image to hash, in
// order. Every header value is checked against the file size.
func peRegions(r io.ReaderAt, size int64) ([][2]int64, error) {
	le := binary.LittleEndian
	read := func(off int64, n int) ([]byte, error) {
		if off < 0 || off+int64(n) > size {
			return nil, fmt.Errorf("PE: header bytes %d..%d outside the %d-byte file", off, off+int64(n), size)
		}
		b := make([]byte, n)
		if _, err := r.ReadAt(b, off); err != nil {
			return nil, fmt.Errorf("PE: %w", err)
		}
		return b, nil
	}
	dos, err := read(0, 0x40)
	if err != nil || string(dos[:2]) != "MZ" {
		return nil, errors.New("PE: no MZ header: not a PE image")
	}
	peOff := int64(le.Uint32(dos[0x3c:]))
	coff, err := read(peOff, 24)
	if err != nil || string(coff[:4]) != "PE\x00\x00" {
		return nil, errors.New("PE: no PE signature: not a PE image")
	}
	nsec := int(le.Uint16(coff[6:]))
	optSize := int(le.Uint16(coff[20:]))
	optOff := peOff + 24
	opt, err := read(optOff, optSize)
	if err != nil {
		return nil, err
	}
	var dirOff, nDirsOff int
	switch {
	case optSize >= 2 && le.Uint16(opt) == 0x20b: // PE32+
		dirOff, nDirsOff = 112, 108
	case optSize >= 2 && le.Uint16(opt) == 0x10b: // PE32
		dirOff, nDirsOff = 96, 92
	default:
		return nil, errors.New("PE: unknown optional header magic")
	}
	if optSize < dirOff {
		return nil, fmt.Errorf("PE: optional header of %d bytes is too short", optSize)
	}
	nDirs := int(le.Uint32(opt[nDirsOff:]))
	sizeOfHeaders := int64(le.Uint32(opt[60:]))
	checksum := optOff + 64
	if sizeOfHeaders < checksum+4 || sizeOfHeaders > size {
		return nil, fmt.Errorf("PE: SizeOfHeaders %d is outside the file", sizeOfHeaders)
	}
	var regions [][2]int64
	var certSize int64 // EDK2 subtracts the directory's size even when its address is 0
	if nDirs > 4 && dirOff+5*8 <= optSize {
		cert := optOff + int64(dirOff) + 4*8
		if cert+8 > sizeOfHeaders {
			return nil, errors.New("PE: certificate directory entry past SizeOfHeaders")
		}
		certSize = int64(le.Uint32(opt[dirOff+36:]))
		regions = append(regions, [2]int64{0, checksum}, [2]int64{checksum + 4, cert}, [2]int64{cert + 8, sizeOfHeaders})
	} else {
		regions = append(regions, [2]int64{0, checksum}, [2]int64{checksum + 4, sizeOfHeaders})
	}
	secTable := optOff + int64(optSize)
	st, err := read(secTable, 40*nsec)
	if err != nil {
		return nil, fmt.Errorf("PE: section table: %w", err)
	}
	type sec struct{ ptr, n int64 }
	var secs []sec
	for i := 0; i < nsec; i++ {
		s := st[40*i:]
		n, ptr := int64(le.Uint32(s[16:])), int64(le.Uint32(s[20:]))
		if n == 0 {
			continue
		}
		if ptr+n > size {
			return nil, fmt.Errorf("PE: section %d (%q) raw data %d+%d runs past the %d-byte file", i, cstr(s[:8]), ptr, n, size)
		}
		secs = append(secs, sec{ptr, n})
	}
	sort.SliceStable(secs, func(i, j int) bool { return secs[i].ptr < secs[j].ptr })
	hashed := sizeOfHeaders
	for _, s := range secs {
		regions = append(regions, [2]int64{s.ptr, s.ptr + s.n})
		hashed += s.n
	}
	if size > hashed {
		if size < hashed+certSize {
			return nil, fmt.Errorf("PE: certificate table of %d bytes does not fit after the sections", certSize)
		}
		regions = append(regions, [2]int64{hashed, size - certSize})
	}
	return regions, nil
}

func cstr(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// overlay is an io.ReaderAt that reads base with patch laid over its first
// bytes: the kernel as QEMU has patched its setup header.
type overlay struct {
	base  io.ReaderAt
	patch []byte
}

func (o overlay) ReadAt(p []byte, off int64) (int, error) {
	n, err := o.base.ReadAt(p, off)
	if off < int64(len(o.patch)) {
		copy(p[:n], o.patch[off:])
	}
	return n, err
}
