package disk

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"strings"
	"unicode/utf16"

	"github.com/google/uuid"
)

// Small, hand-built FAT32 volumes and GPT disks for the unit tests and the
// fuzz seeds: they follow the on-disk formats byte for byte (the good ones
// pass fsck.fat's and sgdisk's checks, see TestTinyAgainstTools) but are a
// few KiB instead of dist's 256 MiB ESP, so a fuzzer can mutate them.

const (
	tinySectors = 32 // 16 KiB
	tinyRsvd    = 4
	tinyFATSz   = 1 // sector per FAT: 128 entries
	tinyData    = tinyRsvd + 2*tinyFATSz
)

// tinyEntry is a file of EFI/BOOT in a tiny volume.
type tinyEntry struct {
	short string // 11 bytes, space padded ("BOOTX64 EFI")
	nt    byte   // NT case flags (0x08 base, 0x10 extension lower case)
	long  string // long name ("" for none)
	data  []byte
}

// tinyFAT is a FAT32 volume whose EFI/BOOT holds entries (in order).
type tinyFAT struct {
	img      []byte
	clusters map[string][]uint32 // chain of each entry's data, by short name
	bootDir  uint32              // cluster of EFI/BOOT
}

func dirent(short string, attr, nt byte, cluster uint32, size uint32) []byte {
	e := make([]byte, 32)
	copy(e, short)
	e[11], e[12] = attr, nt
	binary.LittleEndian.PutUint16(e[20:], uint16(cluster>>16))
	binary.LittleEndian.PutUint16(e[26:], uint16(cluster))
	binary.LittleEndian.PutUint32(e[28:], size)
	binary.LittleEndian.PutUint16(e[24:], 0x21) // 1980-01-01
	return e
}

// lfnEntries returns the long-name entries (in on-disk order) for long,
// belonging to the 11-byte short name.
func lfnEntries(long, short string) []byte {
	u := utf16.Encode([]rune(long))
	n := (len(u) + 12) / 13
	if len(u)%13 != 0 {
		u = append(u, 0)
	}
	for len(u) < 13*n {
		u = append(u, 0xFFFF)
	}
	sum := shortSum([]byte(short))
	var out []byte
	for seq := n; seq >= 1; seq-- {
		e := make([]byte, 32)
		e[0] = byte(seq)
		if seq == n {
			e[0] |= 0x40
		}
		e[11], e[13] = 0x0F, sum
		for k, o := range []int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30} {
			binary.LittleEndian.PutUint16(e[o:], u[13*(seq-1)+k])
		}
		out = append(out, e...)
	}
	return out
}

func newTinyFAT(entries ...tinyEntry) *tinyFAT {
	img := make([]byte, tinySectors*512)
	bs := img[:512]
	copy(bs, []byte{0xEB, 0x58, 0x90})
	copy(bs[3:], "mkfs.fat")
	le := binary.LittleEndian
	le.PutUint16(bs[11:], 512)
	bs[13] = 1
	le.PutUint16(bs[14:], tinyRsvd)
	bs[16] = 2
	bs[21] = 0xF8
	le.PutUint16(bs[24:], 32) // sectors per track
	le.PutUint16(bs[26:], 2)  // heads
	le.PutUint32(bs[32:], tinySectors)
	le.PutUint32(bs[36:], tinyFATSz)
	le.PutUint32(bs[44:], 2) // root cluster
	le.PutUint16(bs[48:], 1) // FSInfo
	le.PutUint16(bs[50:], 2) // backup boot sector
	bs[66] = 0x29
	copy(bs[71:], "ESP        ")
	copy(bs[82:], "FAT32   ")
	bs[510], bs[511] = 0x55, 0xAA
	fat := make([]uint32, tinyFATSz*128)
	fat[0], fat[1] = 0x0FFFFFF8, 0x0FFFFFFF
	next := uint32(2)
	alloc := func(n int) []uint32 {
		var c []uint32
		for i := 0; i < max(n, 1); i++ {
			c = append(c, next)
			next++
		}
		for i := range c {
			if i+1 < len(c) {
				fat[c[i]] = c[i+1]
			} else {
				fat[c[i]] = 0x0FFFFFFF
			}
		}
		return c
	}
	cl := func(c uint32) []byte { o := (tinyData + int(c) - 2) * 512; return img[o : o+512] }
	t := &tinyFAT{img: img, clusters: map[string][]uint32{}}
	root, efi, boot := alloc(1)[0], alloc(1)[0], alloc(1)[0]
	t.bootDir = boot
	copy(cl(root), dirent("ESP        ", 0x08, 0, 0, 0))
	copy(cl(root)[32:], dirent("EFI        ", 0x10, 0, efi, 0))
	copy(cl(efi), dirent(".          ", 0x10, 0, efi, 0))
	copy(cl(efi)[32:], dirent("..         ", 0x10, 0, 0, 0))
	copy(cl(efi)[64:], dirent("BOOT       ", 0x10, 0, boot, 0))
	dir := append(dirent(".          ", 0x10, 0, boot, 0), dirent("..         ", 0x10, 0, efi, 0)...)
	for _, e := range entries {
		chain := alloc((len(e.data) + 511) / 512)
		t.clusters[e.short] = chain
		for i, c := range chain {
			copy(cl(c), e.data[min(len(e.data), 512*i):min(len(e.data), 512*(i+1))])
		}
		if e.long != "" {
			dir = append(dir, lfnEntries(e.long, e.short)...)
		}
		dir = append(dir, dirent(e.short, 0x20, e.nt, chain[0], uint32(len(e.data)))...)
	}
	copy(cl(boot), dir)
	for i, v := range fat {
		le.PutUint32(img[tinyRsvd*512+4*i:], v)
		le.PutUint32(img[(tinyRsvd+tinyFATSz)*512+4*i:], v)
	}
	// FSInfo
	fi := img[512:1024]
	copy(fi, "RRaA")
	copy(fi[484:], "rrAa")
	le.PutUint32(fi[488:], uint32(tinySectors-tinyData)-(next-2))
	le.PutUint32(fi[492:], next)
	fi[510], fi[511] = 0x55, 0xAA
	copy(img[2*512:4*512], img[:2*512]) // backups
	return t
}

// setFAT sets cluster c's entry to v in both FATs (or only the first).
func (t *tinyFAT) setFAT(c, v uint32, both bool) {
	binary.LittleEndian.PutUint32(t.img[tinyRsvd*512+4*int(c):], v)
	if both {
		binary.LittleEndian.PutUint32(t.img[(tinyRsvd+tinyFATSz)*512+4*int(c):], v)
	}
}

// tinyPart is a partition of a tiny disk.
type tinyPart struct {
	typ, name string
	data      []byte
}

// tinyDisk lays partitions out from LBA 34 (each rounded up to whole
// sectors) and writes a protective MBR and both GPTs (128 entries of 128
// bytes), as sgdisk does.
func tinyDisk(parts ...tinyPart) []byte {
	lba := uint64(34)
	type placed struct {
		p           tinyPart
		first, last uint64
	}
	var pl []placed
	for _, p := range parts {
		n := uint64((len(p.data) + 511) / 512)
		pl = append(pl, placed{p, lba, lba + n - 1})
		lba += n
	}
	total := lba + 33
	img := make([]byte, total*512)
	le := binary.LittleEndian
	mbr := img[:512]
	mbr[446+4] = 0xEE
	le.PutUint32(mbr[446+8:], 1)
	le.PutUint32(mbr[446+12:], uint32(min(total-1, 0xFFFFFFFF)))
	mbr[510], mbr[511] = 0x55, 0xAA
	ents := make([]byte, 128*128)
	for i, x := range pl {
		e := ents[128*i:]
		copy(e[0:16], guidBytes(x.p.typ))
		copy(e[16:32], guidBytes(uuid.NewSHA1(uuid.Nil, []byte{byte(i)}).String()))
		le.PutUint64(e[32:], x.first)
		le.PutUint64(e[40:], x.last)
		for k, c := range utf16.Encode([]rune(x.p.name)) {
			le.PutUint16(e[56+2*k:], c)
		}
		copy(img[x.first*512:], x.p.data)
	}
	copy(img[2*512:], ents)
	copy(img[(total-33)*512:], ents)
	hdr := func(my, alt, entLBA uint64) {
		h := img[my*512 : my*512+92]
		copy(h, "EFI PART")
		le.PutUint32(h[8:], 0x10000)
		le.PutUint32(h[12:], 92)
		le.PutUint64(h[24:], my)
		le.PutUint64(h[32:], alt)
		le.PutUint64(h[40:], 34)
		le.PutUint64(h[48:], total-34)
		copy(h[56:72], guidBytes("11111111-2222-3333-4444-555555555555"))
		le.PutUint64(h[72:], entLBA)
		le.PutUint32(h[80:], 128)
		le.PutUint32(h[84:], 128)
		le.PutUint32(h[88:], crc32.ChecksumIEEE(ents))
		le.PutUint32(h[16:], crc32.ChecksumIEEE(h))
	}
	hdr(1, total-1, 2)
	hdr(total-1, 1, total-33)
	return img
}

// guidBytes encodes a GUID string in GPT's mixed-endian layout.
func guidBytes(s string) []byte {
	u := uuid.MustParse(strings.ToLower(s))
	b := bytes.Clone(u[:])
	b[0], b[1], b[2], b[3] = b[3], b[2], b[1], b[0]
	b[4], b[5] = b[5], b[4]
	b[6], b[7] = b[7], b[6]
	return b
}

// rehashGPT recomputes both headers' CRCs after a test changed a field.
func rehashGPT(img []byte) {
	le := binary.LittleEndian
	total := uint64(len(img) / 512)
	for _, lba := range []uint64{1, total - 1} {
		h := img[lba*512 : lba*512+92]
		n := uint64(le.Uint32(h[80:])) * uint64(le.Uint32(h[84:]))
		if el := le.Uint64(h[72:]); el*512+n <= uint64(len(img)) {
			le.PutUint32(h[88:], crc32.ChecksumIEEE(img[el*512:el*512+n]))
		}
		le.PutUint32(h[16:], 0)
		le.PutUint32(h[16:], crc32.ChecksumIEEE(h))
	}
}
