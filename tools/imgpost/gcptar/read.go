package gcptar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Bounds of Extract: a downloaded archive chooses every number in it.
const (
	// MaxDiskSize bounds a member's (sparse) size.
	MaxDiskSize = 64 << 30
	// maxSparseEntries bounds the sparse map (GNU tar's extension headers
	// hold 21 entries each).
	maxSparseEntries = 1 << 16
	// maxTrailer bounds the zero bytes after the member (GNU tar pads to a
	// 10 KiB record).
	maxTrailer = 1 << 20
)

// ErrArchive is wrapped by every error about a malformed archive.
var ErrArchive = errors.New("malformed GCP tarball")

// Member describes the one file of a GCP tarball.
type Member struct {
	Name    string
	Size    int64    // logical size (the disk's)
	Regions []Region // data regions (all of it for a plain member)
	Sparse  bool
}

// Extract reads a GCP import tarball's tar stream (already decompressed)
// strictly, the one way imgpost writes it: exactly one member, a regular or
// an old-GNU sparse ('S') file, followed only by zero bytes (the
// end-of-archive marker and record padding, at least two blocks, at most
// 1 MiB). The member's data is written at its offsets into out (holes are
// skipped, so out stays sparse) and out is sized to the member's size.
// Every field is checked before use: header checksum, octal/base-256 numbers,
// a sparse map sorted, inside the size and adding up to the stored bytes,
// the size at most MaxDiskSize. name is used in errors.
func Extract(r io.Reader, out io.WriterAt, truncate func(int64) error, name string) (*Member, error) {
	bad := func(field, format string, a ...any) error {
		return fmt.Errorf("%s: %w: %s: %s", name, ErrArchive, field, fmt.Sprintf(format, a...))
	}
	h := make([]byte, blockSize)
	if _, err := io.ReadFull(r, h); err != nil {
		return nil, bad("header", "cannot read the first header: %v", err)
	}
	if allZero(h) {
		return nil, bad("header", "empty archive (no member)")
	}
	if err := checkSum(h); err != nil {
		return nil, bad("header checksum", "%v", err)
	}
	m := &Member{Name: cString(h[offName : offName+100])}
	stored, err := parseNumeric(h[offSize : offSize+12])
	if err != nil {
		return nil, bad("size", "%v", err)
	}
	switch t := h[offTypeflag]; t {
	case '0', 0:
		m.Size = stored
		if stored > 0 {
			m.Regions = []Region{{Offset: 0, Size: stored}}
		}
	case 'S':
		m.Sparse = true
		if m.Size, err = parseNumeric(h[offRealsize : offRealsize+12]); err != nil {
			return nil, bad("realsize", "%v", err)
		}
		if m.Regions, err = readSparseMap(r, h, bad); err != nil {
			return nil, err
		}
	default:
		return nil, bad("typeflag", "%q: only a regular or an old-GNU sparse ('S') file is expected", t)
	}
	if m.Size > MaxDiskSize {
		return nil, bad("size", "%d bytes, above the %d-byte limit", m.Size, int64(MaxDiskSize))
	}
	var sum, end int64
	for i, reg := range m.Regions {
		if reg.Offset < end || reg.Offset > m.Size || reg.Size > m.Size-reg.Offset {
			return nil, bad("sparse map", "entry %d [%d, +%d) overlaps the previous one or runs past the size %d", i, reg.Offset, reg.Size, m.Size)
		}
		end = reg.Offset + reg.Size
		sum += reg.Size
	}
	if sum != stored {
		return nil, bad("sparse map", "regions add up to %d bytes, the header stores %d", sum, stored)
	}
	buf := make([]byte, 1<<20)
	for _, reg := range m.Regions {
		for off := int64(0); off < reg.Size; {
			n := min(int64(len(buf)), reg.Size-off)
			if _, err := io.ReadFull(r, buf[:n]); err != nil {
				return nil, bad("data", "%s: cut short at byte %d of %d: %v", m.Name, off, reg.Size, err)
			}
			for i := int64(0); i < n; i += 4096 {
				blk := buf[i:min(i+4096, n)]
				if !allZero(blk) {
					if _, err := out.WriteAt(blk, reg.Offset+off+i); err != nil {
						return nil, fmt.Errorf("%s: extract %s: %w", name, m.Name, err)
					}
				}
			}
			off += n
		}
	}
	if err := truncate(m.Size); err != nil {
		return nil, fmt.Errorf("%s: extract %s: %w", name, m.Name, err)
	}
	// Padding to the block, then only zeros: the end-of-archive marker.
	pad := (blockSize - stored%blockSize) % blockSize
	rest, err := io.ReadAll(io.LimitReader(r, pad+maxTrailer+1))
	if err != nil {
		return nil, bad("data", "%v", err)
	}
	if int64(len(rest)) < pad+2*blockSize {
		return nil, bad("end of archive", "%d bytes after the member, want its padding and two zero blocks", len(rest))
	}
	if i := bytes.IndexFunc(rest, func(c rune) bool { return c != 0 }); i >= 0 {
		off := i - int(pad)
		if off >= 0 {
			return nil, bad("end of archive", "non-zero data %d bytes after the member: a second member or trailing data", off)
		}
		return nil, bad("padding", "non-zero byte in the member's padding")
	}
	if int64(len(rest)) > pad+maxTrailer {
		return nil, bad("end of archive", "more than %d zero bytes after the member", maxTrailer)
	}
	return m, nil
}

// readSparseMap reads the 'S' header's map and its extension headers. The
// entries end with the first empty one; GNU tar's final (size, 0) entry is
// dropped.
func readSparseMap(r io.Reader, h []byte, bad func(string, string, ...any) error) ([]Region, error) {
	var regs []Region
	add := func(e []byte) (bool, error) {
		if allZero(e[:24]) || e[0] == 0 {
			return false, nil
		}
		off, err1 := parseNumeric(e[0:12])
		n, err2 := parseNumeric(e[12:24])
		if err1 != nil || err2 != nil {
			return false, bad("sparse map", "entry %d: %v %v", len(regs), err1, err2)
		}
		if len(regs) >= maxSparseEntries {
			return false, bad("sparse map", "more than %d entries", maxSparseEntries)
		}
		if n > 0 {
			regs = append(regs, Region{Offset: off, Size: n})
		}
		return true, nil
	}
	more := true
	for i := 0; i < 4 && more; i++ {
		var err error
		if more, err = add(h[offSparse+24*i:]); err != nil {
			return nil, err
		}
	}
	ext := h[offExtended] != 0
	x := make([]byte, blockSize)
	for ext {
		if _, err := io.ReadFull(r, x); err != nil {
			return nil, bad("sparse map", "cannot read an extension header: %v", err)
		}
		more := true
		for i := 0; i < extEntries && more; i++ {
			var err error
			if more, err = add(x[24*i:]); err != nil {
				return nil, err
			}
		}
		ext = x[offExtExtend] != 0
	}
	return regs, nil
}

func checkSum(h []byte) error {
	want, err := parseNumeric(h[offChksum : offChksum+8])
	if err != nil {
		return err
	}
	var sum int64
	for i, c := range h {
		if i >= offChksum && i < offChksum+8 {
			c = ' '
		}
		sum += int64(c)
	}
	if sum != want {
		return fmt.Errorf("header says %d, computed %d", want, sum)
	}
	return nil
}

// parseNumeric reads an octal field (NUL or space terminated) or a GNU
// base-256 one (first byte 0x80).
func parseNumeric(b []byte) (int64, error) {
	if len(b) > 0 && b[0] == 0x80 {
		var v int64
		for _, c := range b[1:] {
			if v > (1<<55)-1 {
				return 0, errors.New("base-256 number too large")
			}
			v = v<<8 | int64(c)
		}
		return v, nil
	}
	s := strings.TrimRight(strings.TrimLeft(cString(b), " "), " ")
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 8, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not an octal number", s)
	}
	return v, nil
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
