package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"unicode/utf16"

	"github.com/Dstack-TEE/meta-dstack/internal/errkind"
)

// This file reads the ESP's FAT32 file system the way a verifier must: every
// field of the boot sector is checked against the partition, the first FAT
// is read whole (bounded by MaxFATBytes) and compared with the other copies,
// cluster chains are followed with loop detection and a length bound, and
// a name is resolved as firmware resolves it (long and 8.3 names, any case)
// refusing a directory in which two entries answer to the same name.

// MaxFATBytes bounds the FAT read into memory (a 4 GiB ESP of 4 KiB clusters
// needs 4 MiB).
const MaxFATBytes = 64 << 20

// maxDirBytes is the FAT specification's limit on a directory's size
// (65,536 entries of 32 bytes).
const maxDirBytes = 65536 * 32

// ErrBadFAT is wrapped by every error about a malformed FAT file system.
var ErrBadFAT = errors.New("malformed FAT file system")

// LooksFAT reports whether the 512-byte sector b could be taken for a FAT
// boot sector by UEFI firmware's FAT driver. It is deliberately loose (a
// superset of what EDK2's FatPkg accepts: no check of the jump instruction,
// the media byte or the 0x55AA signature), because a partition it misses is a
// boot path the verifier would not see.
func LooksFAT(b []byte) bool {
	if len(b) < 64 {
		return false
	}
	le := binary.LittleEndian
	bps := le.Uint16(b[11:])
	spc := b[13]
	fatSz := uint32(le.Uint16(b[22:]))
	if fatSz == 0 {
		fatSz = le.Uint32(b[36:])
	}
	return (bps == 512 || bps == 1024 || bps == 2048 || bps == 4096) &&
		spc != 0 && spc&(spc-1) == 0 && le.Uint16(b[14:]) != 0 && b[16] != 0 && fatSz != 0
}

// FAT is a FAT32 file system opened for reading.
type FAT struct {
	r            io.ReaderAt // the partition
	name         string      // for errors
	clusterSize  int64
	dataOff      int64
	clusterCount uint32 // data clusters (numbered 2 .. clusterCount+1)
	rootCluster  uint32
	fat          []byte // the first FAT's entries for clusters 0 .. clusterCount+1
}

func (v *FAT) errf(format string, a ...any) error {
	return fmt.Errorf("%s: %w: %s", v.name, ErrBadFAT, fmt.Sprintf(format, a...))
}

// OpenFAT reads the FAT32 file system in r (a partition of size bytes);
// name is used in errors.
func OpenFAT(r io.ReaderAt, size int64, name string) (*FAT, error) {
	v := &FAT{r: r, name: name}
	bs := make([]byte, 512)
	if _, err := r.ReadAt(bs, 0); err != nil {
		return nil, fmt.Errorf("%s: read boot sector: %w", name, err)
	}
	if !LooksFAT(bs) {
		return nil, v.errf("no FAT boot sector")
	}
	le := binary.LittleEndian
	bps := int64(le.Uint16(bs[11:]))
	spc := int64(bs[13])
	rsvd := int64(le.Uint16(bs[14:]))
	nfats := int64(bs[16])
	if n := le.Uint16(bs[17:]); n != 0 || le.Uint16(bs[22:]) != 0 {
		return nil, v.errf("not FAT32 (BPB_RootEntCnt %d, BPB_FATSz16 %d): only FAT32 is read", n, le.Uint16(bs[22:]))
	}
	tot := int64(le.Uint16(bs[19:]))
	if tot == 0 {
		tot = int64(le.Uint32(bs[32:]))
	}
	fatSz := int64(le.Uint32(bs[36:]))
	v.rootCluster = le.Uint32(bs[44:])
	if tot*bps > size {
		return nil, v.errf("BPB_TotSec %d × %d bytes runs past the partition (%d bytes)", tot, bps, size)
	}
	meta := rsvd + nfats*fatSz
	if meta >= tot {
		return nil, v.errf("BPB_RsvdSecCnt %d + BPB_NumFATs %d × BPB_FATSz32 %d leave no data in %d sectors", rsvd, nfats, fatSz, tot)
	}
	v.clusterSize = spc * bps
	v.dataOff = meta * bps
	count := (tot - meta) / spc
	if count < 1 || count > 0x0FFFFFF5-2 {
		return nil, v.errf("%d data clusters", count)
	}
	v.clusterCount = uint32(count)
	need := (count + 2) * 4
	if need > fatSz*bps {
		return nil, v.errf("BPB_FATSz32 %d sectors too small for %d clusters", fatSz, count)
	}
	if need > MaxFATBytes {
		return nil, v.errf("FAT of %d bytes (BPB_FATSz32 %d) above the %d-byte limit", need, fatSz, MaxFATBytes)
	}
	if v.rootCluster < 2 || v.rootCluster >= v.clusterCount+2 {
		return nil, v.errf("BPB_RootClus %d outside clusters 2..%d", v.rootCluster, v.clusterCount+1)
	}
	v.fat = make([]byte, need)
	if _, err := r.ReadAt(v.fat, rsvd*bps); err != nil {
		return nil, fmt.Errorf("%s: read FAT: %w", name, err)
	}
	other := make([]byte, need)
	for i := int64(1); i < nfats; i++ {
		if _, err := r.ReadAt(other, (rsvd+i*fatSz)*bps); err != nil {
			return nil, fmt.Errorf("%s: read FAT %d: %w", name, i+1, err)
		}
		// Entries 0 and 1 hold media and dirty bits; compare the chains.
		if j := mismatch(v.fat[8:], other[8:]); j >= 0 {
			return nil, v.errf("FAT copy %d differs from the first at cluster %d", i+1, 2+j/4)
		}
	}
	return v, nil
}

func mismatch(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// chain returns the clusters of the chain starting at c: each a data
// cluster, none twice (a loop is an error), at most want clusters when
// want > 0 (and then exactly want).
func (v *FAT) chain(c uint32, want int64, what string) ([]uint32, error) {
	seen := make(map[uint32]bool)
	var out []uint32
	for {
		if c < 2 || c >= v.clusterCount+2 {
			return nil, v.errf("%s: cluster chain reaches cluster %#x, outside 2..%d", what, c, v.clusterCount+1)
		}
		if seen[c] {
			return nil, v.errf("%s: cluster chain loops (cluster %d again after %d clusters)", what, c, len(out))
		}
		seen[c] = true
		out = append(out, c)
		if want > 0 && int64(len(out)) > want {
			return nil, v.errf("%s: cluster chain longer than the %d clusters its size needs", what, want)
		}
		if int64(len(out)) > int64(v.clusterCount) {
			return nil, v.errf("%s: cluster chain longer than the cluster count %d", what, v.clusterCount)
		}
		next := binary.LittleEndian.Uint32(v.fat[4*c:]) & 0x0FFFFFFF
		if next >= 0x0FFFFFF8 {
			break
		}
		if next == 0x0FFFFFF7 || next == 0 {
			return nil, v.errf("%s: cluster %d is marked %s inside a chain", what, c, map[bool]string{true: "bad", false: "free"}[next != 0])
		}
		c = next
	}
	if want > 0 && int64(len(out)) != want {
		return nil, v.errf("%s: cluster chain of %d clusters, its size needs %d", what, len(out), want)
	}
	return out, nil
}

// extents turns a chain into byte ranges of the partition, n bytes in all.
func (v *FAT) extents(chain []uint32, n int64) []Extent {
	var out []Extent
	for _, c := range chain {
		if n <= 0 {
			break
		}
		off := v.dataOff + int64(c-2)*v.clusterSize
		k := min(n, v.clusterSize)
		if l := len(out); l > 0 && out[l-1].Offset+out[l-1].Size == off {
			out[l-1].Size += k
		} else {
			out = append(out, Extent{Offset: off, Size: k})
		}
		n -= k
	}
	return out
}

// DirEntry is one file or directory of a FAT directory.
type DirEntry struct {
	Short   string // 8.3 name as stored ("BOOTX64.EFI")
	Long    string // long name, "" when none (or when it does not belong to Short)
	Attr    byte
	Cluster uint32
	Size    uint32
	Slot    int // position in the directory (32-byte entries)
}

// Name is the long name, else the short one.
func (e DirEntry) Name() string {
	if e.Long != "" {
		return e.Long
	}
	return e.Short
}

// IsDir reports whether e is a directory.
func (e DirEntry) IsDir() bool { return e.Attr&0x10 != 0 }

// readDir reads the directory starting at cluster c.
func (v *FAT) readDir(c uint32, what string) ([]DirEntry, error) {
	chain, err := v.chain(c, 0, what)
	if err != nil {
		return nil, err
	}
	if int64(len(chain))*v.clusterSize > maxDirBytes {
		return nil, v.errf("%s: directory of %d clusters, above the FAT limit of 65536 entries", what, len(chain))
	}
	var buf bytes.Buffer
	for _, e := range v.extents(chain, int64(len(chain))*v.clusterSize) {
		if _, err := io.Copy(&buf, io.NewSectionReader(v.r, e.Offset, e.Size)); err != nil {
			return nil, fmt.Errorf("%s: %s: read directory: %w", v.name, what, err)
		}
	}
	b := buf.Bytes()
	if int64(len(b)) != int64(len(chain))*v.clusterSize {
		return nil, fmt.Errorf("%s: %s: directory cut short", v.name, what)
	}
	return parseDir(b), nil
}

// parseDir decodes 32-byte directory entries up to the end marker. A long
// name is kept only when its entries are complete, in sequence and carry
// the short name's checksum (firmware ignores it otherwise).
func parseDir(b []byte) []DirEntry {
	var out []DirEntry
	var lfn []uint16
	var lfnSum byte
	next := 0 // expected sequence number of the next LFN entry, 0: none pending
	for i := 0; i+32 <= len(b); i += 32 {
		e := b[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xE5 {
			next = 0
			continue
		}
		if e[11]&0x3F == 0x0F { // long-name entry
			seq := int(e[0] & 0x1F)
			switch {
			case e[0]&0x40 != 0 && seq >= 1 && seq <= 20:
				lfn, lfnSum, next = make([]uint16, 13*seq), e[13], seq
			case e[0]&0x40 == 0 && next > 0 && seq == next && e[13] == lfnSum:
			default:
				next = 0
				continue
			}
			part := lfn[13*(seq-1) : 13*seq]
			for k, o := range []int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30} {
				part[k] = binary.LittleEndian.Uint16(e[o:])
			}
			if next--; next == 0 {
				next = -1 // complete: the next entry must be its short entry
			}
			continue
		}
		de := DirEntry{Short: shortName(e), Attr: e[11], Slot: i / 32,
			Cluster: uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:])),
			Size:    binary.LittleEndian.Uint32(e[28:])}
		if next == -1 && lfnSum == shortSum(e[:11]) {
			de.Long = decodeLFN(lfn)
		}
		next = 0
		if e[11]&0x08 != 0 { // volume label
			continue
		}
		out = append(out, de)
	}
	return out
}

func decodeLFN(u []uint16) string {
	for i, c := range u {
		if c == 0 {
			u = u[:i]
			break
		}
	}
	for len(u) > 0 && u[len(u)-1] == 0xFFFF {
		u = u[:len(u)-1]
	}
	return string(utf16.Decode(u))
}

func shortSum(n []byte) byte {
	var s byte
	for _, c := range n {
		s = (s>>1 | s<<7) + c
	}
	return s
}

func shortName(e []byte) string {
	n := bytes.Clone(e[:11])
	if n[0] == 0x05 {
		n[0] = 0xE5
	}
	base := strings.TrimRight(string(n[:8]), " ")
	ext := strings.TrimRight(string(n[8:11]), " ")
	if ext == "" {
		return base
	}
	return base + "." + ext
}

// fold is the key under which names are compared (firmware compares file
// names without regard to case).
func fold(s string) string { return strings.ToUpper(strings.ToLower(s)) }

// lookup finds name in the directory entries, refusing a directory in which
// two entries answer to the same name in any case (by long or short name).
func (v *FAT) lookup(ents []DirEntry, name, dir string) (DirEntry, error) {
	owner := map[string]int{}
	for i, e := range ents {
		if e.Short == "." || e.Short == ".." {
			continue
		}
		keys := []string{fold(e.Short)}
		if e.Long != "" && fold(e.Long) != keys[0] {
			keys = append(keys, fold(e.Long))
		}
		for _, k := range keys {
			if j, ok := owner[k]; ok && j != i {
				return DirEntry{}, v.errf("%s: entries %d (%q) and %d (%q) have the same name in some case: firmware and tools may pick different ones",
					dir, ents[j].Slot, ents[j].Name(), e.Slot, e.Name())
			}
			owner[k] = i
		}
	}
	i, ok := owner[fold(name)]
	if !ok {
		return DirEntry{}, errkind.Errorf(fs.ErrNotExist, "%s: %s: no %s", v.name, dir, name)
	}
	return ents[i], nil
}

// Open resolves path (slash-separated, e.g. BootPath) as firmware does and
// returns a reader over the file's content. Every directory on the way must
// be free of names that collide in case, and every chain sound.
func (v *FAT) Open(path string) (*io.SectionReader, error) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	c, dir := v.rootCluster, "/"
	for i, p := range parts {
		ents, err := v.readDir(c, dir)
		if err != nil {
			return nil, err
		}
		e, err := v.lookup(ents, p, dir)
		if err != nil {
			return nil, err
		}
		full := dir + p
		if i < len(parts)-1 {
			if !e.IsDir() {
				return nil, fmt.Errorf("%s: %s is not a directory", v.name, full)
			}
			c, dir = e.Cluster, full+"/"
			continue
		}
		if e.IsDir() {
			return nil, fmt.Errorf("%s: %s is a directory", v.name, full)
		}
		if e.Size == 0 {
			return io.NewSectionReader(bytes.NewReader(nil), 0, 0), nil
		}
		want := (int64(e.Size) + v.clusterSize - 1) / v.clusterSize
		chain, err := v.chain(e.Cluster, want, full)
		if err != nil {
			return nil, err
		}
		return io.NewSectionReader(&rangesReaderAt{r: v.r, ranges: v.extents(chain, int64(e.Size))}, 0, int64(e.Size)), nil
	}
	return nil, fmt.Errorf("%s: empty path", v.name)
}
