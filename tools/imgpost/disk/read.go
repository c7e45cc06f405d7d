package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"unicode/utf16"

	"github.com/Dstack-TEE/meta-dstack/internal/errkind"
)

// Partition is one GPT entry as found on a disk.
type Partition struct {
	Index    int    `json:"index"`     // 1-based slot in the entry array
	Name     string `json:"name"`      // GPT partition name (PARTLABEL)
	Type     string `json:"type_guid"` // type GUID, upper case
	GUID     string `json:"guid"`      // unique partition GUID (PARTUUID), upper case
	FirstLBA uint64 `json:"first_lba"`
	LastLBA  uint64 `json:"last_lba"` // inclusive
	Offset   int64  `json:"offset"`   // FirstLBA * 512
	Size     int64  `json:"size"`     // (LastLBA-FirstLBA+1) * 512
}

// Disk is a GPT disk image opened for reading.
type Disk struct {
	r      io.ReaderAt
	closer io.Closer
	name   string
	Size   int64  // bytes
	GUID   string // disk GUID, upper case
	FirstUsable, LastUsable,
	BackupLBA uint64 // from the primary header
	Partitions []Partition // in slot order
	entries    []byte      // raw primary entry array
	entriesLBA uint64
}

// Open opens a disk image file and reads its primary GPT.
func Open(p string) (*Disk, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	d, err := NewReader(f, st.Size(), p)
	if err != nil {
		f.Close()
		return nil, err
	}
	d.closer = f
	return d, nil
}

// Close closes the file Open opened.
func (d *Disk) Close() error {
	if d.closer != nil {
		return d.closer.Close()
	}
	return nil
}

// Name is the name given to NewReader (the path for Open).
func (d *Disk) Name() string { return d.name }

// NewReader reads the primary GPT of a disk image of size bytes held in r;
// name is used in errors.
func NewReader(r io.ReaderAt, size int64, name string) (*Disk, error) {
	d := &Disk{r: r, name: name, Size: size}
	if size < 67*SectorSize || size%SectorSize != 0 {
		return nil, errkind.Errorf(ErrBadGPT, "%s: %d bytes is not a GPT disk (too small or not whole sectors)", name, size)
	}
	h, err := d.readHeader(1)
	if err != nil {
		return nil, fmt.Errorf("%s: primary GPT: %w", name, err)
	}
	d.GUID, d.FirstUsable, d.LastUsable, d.BackupLBA = h.diskGUID, h.firstUsable, h.lastUsable, h.alternate
	d.entries, d.entriesLBA = h.entries, h.entriesLBA
	for i := 0; i < int(h.numEntries); i++ {
		e := h.entries[i*int(h.entrySize) : (i+1)*int(h.entrySize)]
		if allZero(e[:16]) {
			continue
		}
		p := Partition{
			Index:    i + 1,
			Type:     guidString(e[0:16]),
			GUID:     guidString(e[16:32]),
			FirstLBA: binary.LittleEndian.Uint64(e[32:40]),
			LastLBA:  binary.LittleEndian.Uint64(e[40:48]),
			Name:     utf16Name(e[56:128]),
		}
		if p.LastLBA < p.FirstLBA {
			return nil, errkind.Errorf(ErrBadGPT, "%s: partition %d ends (LBA %d) before it starts (LBA %d)", name, p.Index, p.LastLBA, p.FirstLBA)
		}
		p.Offset = int64(p.FirstLBA) * SectorSize
		p.Size = int64(p.LastLBA-p.FirstLBA+1) * SectorSize
		d.Partitions = append(d.Partitions, p)
	}
	return d, nil
}

// Bounds on a GPT's entry array (a standard one is 128 entries of 128 bytes).
const (
	maxEntrySize = 1024
	maxEntries   = 1024
)

type gptHeader struct {
	my, alternate           uint64
	firstUsable, lastUsable uint64
	diskGUID                string
	entriesLBA              uint64
	numEntries, entrySize   uint32
	entries                 []byte
}

func (d *Disk) readHeader(lba uint64) (*gptHeader, error) {
	b := make([]byte, SectorSize)
	if _, err := d.r.ReadAt(b, int64(lba)*SectorSize); err != nil {
		return nil, fmt.Errorf("read LBA %d: %w", lba, err)
	}
	if string(b[0:8]) != "EFI PART" {
		return nil, errkind.Errorf(ErrBadGPT, "no \"EFI PART\" signature at LBA %d", lba)
	}
	hsize := binary.LittleEndian.Uint32(b[12:16])
	if hsize < 92 || hsize > SectorSize {
		return nil, errkind.Errorf(ErrBadGPT, "header size %d at LBA %d", hsize, lba)
	}
	want := binary.LittleEndian.Uint32(b[16:20])
	hb := append([]byte(nil), b[:hsize]...)
	copy(hb[16:20], []byte{0, 0, 0, 0})
	if got := crc32.ChecksumIEEE(hb); got != want {
		return nil, errkind.Errorf(ErrBadGPT, "header CRC at LBA %d is %08x, computed %08x", lba, want, got)
	}
	h := &gptHeader{
		my:          binary.LittleEndian.Uint64(b[24:32]),
		alternate:   binary.LittleEndian.Uint64(b[32:40]),
		firstUsable: binary.LittleEndian.Uint64(b[40:48]),
		lastUsable:  binary.LittleEndian.Uint64(b[48:56]),
		diskGUID:    guidString(b[56:72]),
		entriesLBA:  binary.LittleEndian.Uint64(b[72:80]),
		numEntries:  binary.LittleEndian.Uint32(b[80:84]),
		entrySize:   binary.LittleEndian.Uint32(b[84:88]),
	}
	if h.my != lba {
		return nil, errkind.Errorf(ErrBadGPT, "header at LBA %d says it is at LBA %d", lba, h.my)
	}
	// UEFI: SizeOfPartitionEntry is 128 × 2^n; bound it and the count
	// before allocating, and check the array lies on the disk.
	if h.entrySize < 128 || h.entrySize > maxEntrySize || h.entrySize&(h.entrySize-1) != 0 {
		return nil, errkind.Errorf(ErrBadGPT, "header at LBA %d: SizeOfPartitionEntry %d: want 128 × a power of two, at most %d", lba, h.entrySize, maxEntrySize)
	}
	if h.numEntries == 0 || h.numEntries > maxEntries {
		return nil, errkind.Errorf(ErrBadGPT, "header at LBA %d: NumberOfPartitionEntries %d: want 1..%d", lba, h.numEntries, maxEntries)
	}
	arrBytes := int64(h.numEntries) * int64(h.entrySize)
	if h.entriesLBA > uint64(d.Size/SectorSize) || int64(h.entriesLBA)*SectorSize+arrBytes > d.Size {
		return nil, errkind.Errorf(ErrBadGPT, "header at LBA %d: PartitionEntryLBA %d: the entry array (%d bytes) runs past the end of the disk", lba, h.entriesLBA, arrBytes)
	}
	h.entries = make([]byte, arrBytes)
	if _, err := d.r.ReadAt(h.entries, int64(h.entriesLBA)*SectorSize); err != nil {
		return nil, fmt.Errorf("read entry array at LBA %d: %w", h.entriesLBA, err)
	}
	if got, want := crc32.ChecksumIEEE(h.entries), binary.LittleEndian.Uint32(b[88:92]); got != want {
		return nil, errkind.Errorf(ErrBadGPT, "entry array CRC (header at LBA %d) is %08x, computed %08x", lba, want, got)
	}
	return h, nil
}

// Verify checks the GPT thoroughly: the protective MBR, the backup header at
// the last sector with the same partitions, usable range, partitions inside
// it and not overlapping. It returns the first problem found.
func (d *Disk) Verify() error {
	mbr := make([]byte, SectorSize)
	if _, err := d.r.ReadAt(mbr, 0); err != nil {
		return fmt.Errorf("%s: read MBR: %w", d.name, err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return errkind.Errorf(ErrBadGPT, "%s: no MBR boot signature", d.name)
	}
	if mbr[446+4] != 0xee || binary.LittleEndian.Uint32(mbr[446+8:]) != 1 {
		return errkind.Errorf(ErrBadGPT, "%s: MBR has no protective (type 0xEE, from LBA 1) partition", d.name)
	}
	last := uint64(d.Size/SectorSize) - 1
	if d.BackupLBA != last {
		return errkind.Errorf(ErrBadGPT, "%s: primary GPT puts the backup at LBA %d, the last sector is %d", d.name, d.BackupLBA, last)
	}
	bk, err := d.readHeader(last)
	if err != nil {
		return fmt.Errorf("%s: backup GPT: %w", d.name, err)
	}
	if bk.alternate != 1 || bk.diskGUID != d.GUID || bk.firstUsable != d.FirstUsable || bk.lastUsable != d.LastUsable {
		return errkind.Errorf(ErrBadGPT, "%s: backup GPT header disagrees with the primary", d.name)
	}
	if !bytes.Equal(bk.entries, d.entries) {
		return errkind.Errorf(ErrBadGPT, "%s: backup GPT partition entries differ from the primary's", d.name)
	}
	arr := uint64((len(d.entries) + SectorSize - 1) / SectorSize)
	if d.FirstUsable < d.entriesLBA+arr || d.LastUsable >= bk.entriesLBA || bk.entriesLBA+arr > last {
		return errkind.Errorf(ErrBadGPT, "%s: usable range LBA %d-%d overlaps the GPT structures", d.name, d.FirstUsable, d.LastUsable)
	}
	for i, p := range d.Partitions {
		if p.FirstLBA < d.FirstUsable || p.LastLBA > d.LastUsable {
			return errkind.Errorf(ErrBadGPT, "%s: partition %d (LBA %d-%d) lies outside the usable range %d-%d", d.name, p.Index, p.FirstLBA, p.LastLBA, d.FirstUsable, d.LastUsable)
		}
		for _, q := range d.Partitions[:i] {
			if p.FirstLBA <= q.LastLBA && q.FirstLBA <= p.LastLBA {
				return errkind.Errorf(ErrBadGPT, "%s: partitions %d and %d overlap", d.name, q.Index, p.Index)
			}
		}
	}
	return nil
}

// Partition returns the partition with the given GPT name.
func (d *Disk) Partition(name string) (Partition, error) {
	for _, p := range d.Partitions {
		if p.Name == name {
			return p, nil
		}
	}
	return Partition{}, errkind.Errorf(ErrNoPartition, "%s: no partition named %q", d.name, name)
}

// ESP returns the first partition of type EFI System Partition.
func (d *Disk) ESP() (Partition, error) {
	for _, p := range d.Partitions {
		if p.Type == TypeESP {
			return p, nil
		}
	}
	return Partition{}, errkind.Errorf(ErrNoPartition, "%s: no EFI System Partition", d.name)
}

// Section returns a reader over the partition with the given GPT name.
func (d *Disk) Section(name string) (*io.SectionReader, error) {
	p, err := d.Partition(name)
	if err != nil {
		return nil, err
	}
	return d.PartitionReader(p), nil
}

// PartitionReader returns a reader over partition p.
func (d *Disk) PartitionReader(p Partition) *io.SectionReader {
	return io.NewSectionReader(d.r, p.Offset, p.Size)
}

// OpenESPFile finds file p (e.g. BootPath) on the FAT32 file system of the
// ESP (the first partition of type TypeESP) as firmware would (any case,
// long or short name), refusing colliding names and unsound cluster chains
// on the way, and returns a reader over its content (random access; Size()
// is the file size), read lazily from the disk.
func (d *Disk) OpenESPFile(p string) (*io.SectionReader, error) {
	esp, err := d.ESP()
	if err != nil {
		return nil, err
	}
	v, err := OpenFAT(d.PartitionReader(esp), esp.Size, fmt.Sprintf("%s: ESP (partition %d)", d.name, esp.Index))
	if err != nil {
		return nil, err
	}
	return v.Open(p)
}

// Boot is the one boot path of a disk: the partition firmware boots from
// and its EFI/BOOT/BOOTX64.EFI.
type Boot struct {
	Partition Partition
	File      *io.SectionReader // BOOTX64.EFI's content
}

// BootFile checks that the disk has exactly one boot path for UEFI
// firmware's removable-media boot and returns it. Firmware looks for
// \EFI\BOOT\BOOTX64.EFI on every FAT file system it finds, whatever the
// partition's type GUID, in partition order; so every partition (and the
// whole disk's first sector) is probed for a FAT boot sector, and the disk
// passes only when the single FAT file system is the single partition typed
// as an ESP and holds exactly one file by that name (any case, long or 8.3
// name, in directories without colliding names).
func (d *Disk) BootFile() (*Boot, error) {
	sec := make([]byte, SectorSize)
	if _, err := d.r.ReadAt(sec, 0); err != nil {
		return nil, fmt.Errorf("%s: read LBA 0: %w", d.name, err)
	}
	if LooksFAT(sec) {
		return nil, errkind.Errorf(ErrBootPath, "%s: LBA 0 (the protective MBR) is also a FAT boot sector: firmware may boot the whole disk as a FAT volume", d.name)
	}
	var fats, esps []Partition
	for _, p := range d.Partitions {
		if p.Type == TypeESP {
			esps = append(esps, p)
		}
		if p.Size < SectorSize || p.Offset+SectorSize > d.Size {
			continue
		}
		if _, err := d.r.ReadAt(sec, p.Offset); err != nil {
			return nil, fmt.Errorf("%s: partition %d: read first sector: %w", d.name, p.Index, err)
		}
		if LooksFAT(sec) {
			fats = append(fats, p)
		} else if why := nestedTable(d.r, sec, p); why != "" {
			return nil, errkind.Errorf(ErrBootPath, "%s: partition %d %q holds %s: firmware may find a FAT file system inside it", d.name, p.Index, p.Name, why)
		}
	}
	if len(esps) != 1 {
		return nil, errkind.Errorf(ErrBootPath, "%s: %d partitions typed as an EFI System Partition, want exactly one", d.name, len(esps))
	}
	esp := esps[0]
	for _, p := range fats {
		if p.Index != esp.Index {
			return nil, errkind.Errorf(ErrBootPath, "%s: partition %d %q (type %s) holds a FAT file system besides the ESP (partition %d): firmware may boot from it", d.name, p.Index, p.Name, p.Type, esp.Index)
		}
	}
	if len(fats) != 1 {
		return nil, errkind.Errorf(ErrBootPath, "%s: the ESP (partition %d) holds no FAT file system", d.name, esp.Index)
	}
	v, err := OpenFAT(d.PartitionReader(esp), esp.Size, fmt.Sprintf("%s: ESP (partition %d)", d.name, esp.Index))
	if err != nil {
		return nil, err
	}
	f, err := v.Open(BootPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errkind.Wrap(ErrBootPath, err)
	}
	if err != nil {
		return nil, err
	}
	return &Boot{Partition: esp, File: f}, nil
}

// nestedTable reports a partition table inside partition p (whose first
// sector is first): an MBR with a partition entry inside p, or a GPT header
// at its second sector. Firmware's partition driver may look inside.
func nestedTable(r io.ReaderAt, first []byte, p Partition) string {
	if first[510] == 0x55 && first[511] == 0xAA {
		for i := 0; i < 4; i++ {
			e := first[446+16*i:]
			start, n := int64(binary.LittleEndian.Uint32(e[8:])), int64(binary.LittleEndian.Uint32(e[12:]))
			if e[4] != 0 && n != 0 && (start+n)*SectorSize <= p.Size {
				return "an MBR partition table"
			}
		}
	}
	var sig [8]byte
	if p.Size >= 2*SectorSize {
		if _, err := r.ReadAt(sig[:], p.Offset+SectorSize); err == nil && string(sig[:]) == "EFI PART" {
			return "a GPT header"
		}
	}
	return ""
}

// rangesReaderAt reads the concatenation of extents of r.
type rangesReaderAt struct {
	r      io.ReaderAt
	ranges []Extent
}

func (m *rangesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	var base int64
	for _, e := range m.ranges {
		if len(p) == n {
			break
		}
		if off+int64(n) < base+e.Size {
			in := off + int64(n) - base
			c := min(int64(len(p)-n), e.Size-in)
			k, err := m.r.ReadAt(p[n:n+int(c)], e.Offset+in)
			n += k
			if err != nil && !(err == io.EOF && int64(k) == c) {
				return n, err
			}
		}
		base += e.Size
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// CopyESPFile writes file p of the ESP to w and returns its size.
func (d *Disk) CopyESPFile(p string, w io.Writer) (int64, error) {
	r, err := d.OpenESPFile(p)
	if err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(w, r, make([]byte, 4*MiB))
	if err != nil {
		return n, fmt.Errorf("%s: ESP: read %s: %w", d.name, p, err)
	}
	if n != r.Size() {
		return n, fmt.Errorf("%s: ESP: %s: read %d of %d bytes", d.name, p, n, r.Size())
	}
	return n, nil
}

// guidString formats a GPT on-disk (mixed-endian) GUID.
func guidString(b []byte) string {
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X",
		binary.LittleEndian.Uint32(b[0:4]), binary.LittleEndian.Uint16(b[4:6]),
		binary.LittleEndian.Uint16(b[6:8]), b[8:10], b[10:16])
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
