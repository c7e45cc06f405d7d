// Package sqfs checks that a file (or a region of one) is a readable squashfs
// image: its superblock is valid, the size it records fits in the file, and
// its root directory can be read. It uses github.com/CalebQ42/squashfs and is
// shared by `imgpost verity`, `imgpost dist` and `imgpost verify`.
package sqfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/CalebQ42/squashfs"

	"github.com/Dstack-TEE/meta-dstack/internal/errkind"
)

// Magic is the squashfs superblock magic ("hsqs" little-endian).
const Magic = 0x73717368

// superblockSize is the size of the squashfs 4.0 superblock.
const superblockSize = 96

// Info is what the check learned about a squashfs image.
type Info struct {
	// BytesUsed is the image size recorded in the superblock; the file may be
	// longer (mksquashfs pads to 4 KiB by default).
	BytesUsed int64
	// BlockSize is the data block size.
	BlockSize uint32
	// Compression names the compressor (gzip, lzma, lzo, xz, lz4, zstd).
	Compression string
	// Inodes is the inode count.
	Inodes uint32
	// RootEntries is the number of entries in the root directory.
	RootEntries int
}

// oneLine joins the lines of errors.Join'ed library errors.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", ": ") }

var compressors = map[uint16]string{1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}

// ErrInvalid is wrapped by every error for content that is not a readable
// squashfs (empty, truncated, another format, an unsupported version,
// corrupt metadata), as against an input that cannot be read at all.
var ErrInvalid = errors.New("not a readable squashfs")

// Check opens path and checks that it holds a readable squashfs. Errors name
// the file and say what is wrong (empty, truncated, not a squashfs, root
// directory unreadable).
func Check(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("squashfs %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("squashfs %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("squashfs %s: not a regular file", path)
	}
	info, err := CheckReaderAt(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// CheckReaderAt checks that the first size bytes of r hold a readable
// squashfs. Errors do not name the file; callers add it.
func CheckReaderAt(r io.ReaderAt, size int64) (info *Info, err error) {
	if size == 0 {
		return nil, errkind.Errorf(ErrInvalid, "empty file, not a squashfs image")
	}
	le := binary.LittleEndian
	var sb [superblockSize]byte
	if _, err := r.ReadAt(sb[:min(size, superblockSize)], 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("read squashfs superblock: %w", err)
	}
	if m := le.Uint32(sb[0:]); size < 4 || m != Magic {
		return nil, errkind.Errorf(ErrInvalid, "not a squashfs image (magic %#08x, want %#08x \"hsqs\")", m, Magic)
	}
	if size < superblockSize {
		return nil, errkind.Errorf(ErrInvalid, "truncated: %d bytes, shorter than a squashfs superblock (%d bytes)", size, superblockSize)
	}
	if maj, mnr := le.Uint16(sb[28:]), le.Uint16(sb[30:]); maj != 4 || mnr != 0 {
		return nil, errkind.Errorf(ErrInvalid, "unsupported squashfs version %d.%d (want 4.0)", maj, mnr)
	}
	used := le.Uint64(sb[40:])
	if used < superblockSize || used > uint64(size) {
		if used > uint64(size) {
			return nil, errkind.Errorf(ErrInvalid, "truncated squashfs: superblock records %d bytes, file has %d", used, size)
		}
		return nil, errkind.Errorf(ErrInvalid, "corrupt squashfs superblock: bytes_used %d", used)
	}
	comp, ok := compressors[le.Uint16(sb[20:])]
	if !ok {
		return nil, errkind.Errorf(ErrInvalid, "corrupt squashfs superblock: unknown compression id %d", le.Uint16(sb[20:]))
	}
	// The library may panic on malformed metadata; turn that into an error.
	defer func() {
		if p := recover(); p != nil {
			info, err = nil, errkind.Errorf(ErrInvalid, "corrupt squashfs: reading the root directory failed: %v", p)
		}
	}()
	rd, err := squashfs.NewReader(io.NewSectionReader(r, 0, size))
	if err != nil {
		return nil, errkind.Errorf(ErrInvalid, "corrupt squashfs: %s", oneLine(err))
	}
	ents, err := rd.ReadDir(".")
	if err != nil {
		return nil, errkind.Errorf(ErrInvalid, "corrupt squashfs: root directory unreadable: %s", oneLine(err))
	}
	return &Info{
		BytesUsed:   int64(used),
		BlockSize:   le.Uint32(sb[12:]),
		Compression: comp,
		Inodes:      le.Uint32(sb[4:]),
		RootEntries: len(ents),
	}, nil
}
