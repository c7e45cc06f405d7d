// Package disk builds and reads the dstack GPT disk image (disk.raw): a
// protective MBR, a GPT with its backup at the end of the disk, partition 1 an
// EFI System Partition (FAT32) holding the UKI as EFI/BOOT/BOOTX64.EFI and
// partition 2, "dstack-rootfs", holding rootfs.img.verity (squashfs + verity
// hash tree).
//
// The image is sparse: it is created by truncation and only the GPT, the FAT
// metadata, the UKI and the rootfs are written, each at its offset; free ESP
// space, alignment gaps and the padding up to a whole GiB stay holes. The
// output is deterministic: GUIDs are fixed by default (settable), the FAT
// volume ID is derived from the ESP's partition GUID and FAT timestamps come
// from SOURCE_DATE_EPOCH.
package disk

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/internal/epoch"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/pe"
)

// Sizes and well-known values of the layout.
const (
	SectorSize = 512
	MiB        = 1 << 20
	GiB        = 1 << 30
	// Align is the partition alignment (and the gap before partition 1 and
	// after the last partition).
	Align = MiB
	// DefaultESPSize is the size of the EFI System Partition.
	DefaultESPSize = 256 * MiB
	// MinESPSize is the smallest ESP that still holds a valid FAT32
	// (at least 65525 clusters of 512 bytes).
	MinESPSize = 40 * MiB
	// MaxESPSize is the largest ESP accepted.
	MaxESPSize = 8 * GiB

	// ESPName is the GPT name of partition 1.
	ESPName = "EFI System Partition"
	// RootfsName is the GPT name of partition 2, what
	// dstack.rootfs_device=PARTLABEL=dstack-rootfs finds.
	RootfsName = "dstack-rootfs"
	// ESPLabel is the FAT volume label of the ESP.
	ESPLabel = "DSTACKEFI"
	// BootPath is where the UKI lives on the ESP (the removable-media path
	// firmware boots without any boot entry).
	BootPath = "EFI/BOOT/BOOTX64.EFI"

	// TypeESP is the GPT type GUID of an EFI System Partition (sgdisk ef00).
	TypeESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	// TypeLinux is the GPT type GUID "Linux filesystem data" (sgdisk 8300).
	TypeLinux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

	// DefaultDiskGUID is the disk GUID (the one the upstream shell build used).
	DefaultDiskGUID = "D5ACC000-0000-4000-8000-000000000000"
	// DefaultESPGUID is the unique partition GUID of the ESP
	// (PARTUUID=d5acc000-0000-4000-8000-000000000001).
	DefaultESPGUID = "D5ACC000-0000-4000-8000-000000000001"
	// DefaultRootfsGUID is the unique partition GUID of dstack-rootfs
	// (PARTUUID=d5acc000-0000-4000-8000-000000000002).
	DefaultRootfsGUID = "D5ACC000-0000-4000-8000-000000000002"
)

// ESPTooSmallError is Plan's error when the UKI does not fit in the ESP
// (Options.ESPSize): FAT's own structures need about a tenth of it.
type ESPTooSmallError struct {
	UKISize, ESPSize int64 // bytes
}

func (e *ESPTooSmallError) Error() string {
	return fmt.Sprintf("UKI of %d bytes does not fit in an ESP of %d MiB", e.UKISize, e.ESPSize/MiB)
}

// fatEpoch is the earliest time a FAT directory entry can record.
var fatEpoch = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)

// Options tune Build. The zero value gives the documented defaults.
type Options struct {
	// ESPSize is the ESP size in bytes, a multiple of 1 MiB (0: DefaultESPSize).
	ESPSize int64
	// DiskGUID, ESPGUID and RootfsGUID override the default GUIDs.
	DiskGUID, ESPGUID, RootfsGUID string
	// Time stamps the FAT directory entries. Zero: SOURCE_DATE_EPOCH from the
	// environment, else 1980-01-01 (the FAT epoch; earlier times are clamped
	// to it).
	Time time.Time
	// Progress, if set, is called as the rootfs is copied with the bytes done
	// and the total.
	Progress func(done, total int64)
}

// Extent is a byte range of the disk.
type Extent struct {
	Offset int64 // first byte
	Size   int64 // length in bytes
}

// FirstLBA is the first sector of the extent.
func (e Extent) FirstLBA() uint64 { return uint64(e.Offset / SectorSize) }

// LastLBA is the last sector of the extent (inclusive).
func (e Extent) LastLBA() uint64 { return uint64((e.Offset+e.Size)/SectorSize - 1) }

// Layout is where everything goes on the disk.
type Layout struct {
	Size       int64  // total disk size, a whole number of GiB
	ESP        Extent // partition 1
	Rootfs     Extent // partition 2 (size rounded up to Align)
	RootfsData int64  // bytes of rootfs.img.verity written at Rootfs.Offset
	UKISize    int64  // bytes of BOOTX64.EFI
	DiskGUID   string
	ESPGUID    string
	RootfsGUID string
	// VolumeID is the FAT volume serial number of the ESP.
	VolumeID uint32
}

func (o Options) normalized() (Options, error) {
	if o.ESPSize == 0 {
		o.ESPSize = DefaultESPSize
	}
	if o.ESPSize%Align != 0 || o.ESPSize < MinESPSize || o.ESPSize > MaxESPSize {
		return o, fmt.Errorf("ESP size %d: must be a multiple of 1 MiB between %d MiB and %d MiB", o.ESPSize, MinESPSize/MiB, MaxESPSize/MiB)
	}
	var err error
	if o.DiskGUID, err = normGUID("disk GUID", o.DiskGUID, DefaultDiskGUID); err != nil {
		return o, err
	}
	if o.ESPGUID, err = normGUID("ESP partition GUID", o.ESPGUID, DefaultESPGUID); err != nil {
		return o, err
	}
	if o.RootfsGUID, err = normGUID("rootfs partition GUID", o.RootfsGUID, DefaultRootfsGUID); err != nil {
		return o, err
	}
	if o.ESPGUID == o.RootfsGUID {
		return o, fmt.Errorf("ESP and rootfs partition GUIDs are both %s", o.ESPGUID)
	}
	if o.Time.IsZero() {
		if t, ok, err := epoch.FromEnv(); err != nil {
			return o, err
		} else if ok {
			o.Time = t
		}
	}
	if o.Time.Before(fatEpoch) {
		o.Time = fatEpoch
	}
	o.Time = o.Time.UTC()
	return o, nil
}

func normGUID(what, s, def string) (string, error) {
	if s == "" {
		return def, nil
	}
	u, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return "", fmt.Errorf("%s %q: not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", what, s)
	}
	return strings.ToUpper(u.String()), nil
}

// VolumeIDFor derives the FAT volume serial number from the ESP's partition
// GUID: the first 4 bytes (little-endian) of SHA-256 of its upper-case text.
func VolumeIDFor(espGUID string) uint32 {
	h := sha256.Sum256([]byte(strings.ToUpper(espGUID)))
	return binary.LittleEndian.Uint32(h[:4])
}

// Plan computes the layout for a rootfs of rootfsSize bytes and a UKI of
// ukiSize bytes, without writing anything.
func Plan(rootfsSize, ukiSize int64, opts Options) (Layout, error) {
	o, err := opts.normalized()
	if err != nil {
		return Layout{}, err
	}
	if rootfsSize <= 0 {
		return Layout{}, fmt.Errorf("rootfs is empty")
	}
	if ukiSize <= 0 {
		return Layout{}, fmt.Errorf("UKI is empty")
	}
	// FAT metadata (reserved sectors, two FATs, 3 directory clusters) takes
	// well under 5% of the ESP; keep the UKI below 90% to leave room.
	if ukiSize > o.ESPSize/10*9 {
		return Layout{}, &ESPTooSmallError{UKISize: ukiSize, ESPSize: o.ESPSize}
	}
	l := Layout{
		ESP:        Extent{Offset: Align, Size: o.ESPSize},
		RootfsData: rootfsSize,
		UKISize:    ukiSize,
		DiskGUID:   o.DiskGUID,
		ESPGUID:    o.ESPGUID,
		RootfsGUID: o.RootfsGUID,
		VolumeID:   VolumeIDFor(o.ESPGUID),
	}
	l.Rootfs = Extent{Offset: l.ESP.Offset + l.ESP.Size, Size: roundUp(rootfsSize, Align)}
	l.Size = roundUp(l.Rootfs.Offset+l.Rootfs.Size+Align, GiB)
	return l, nil
}

func roundUp(n, a int64) int64 { return (n + a - 1) / a * a }

// BuildFile writes the disk image to out (atomically: a temporary file renamed
// when complete) from the UKI and rootfs.img.verity files.
func BuildFile(out, ukiPath, rootfsPath string, opts Options) (Layout, error) {
	if err := atomicfile.CheckNotInput(out, ukiPath, rootfsPath); err != nil {
		return Layout{}, err
	}
	f, err := atomicfile.Create(out, 0o644)
	if err != nil {
		return Layout{}, err
	}
	defer f.Abort()
	l, err := BuildInto(f.File, ukiPath, rootfsPath, opts)
	if err != nil {
		return Layout{}, fmt.Errorf("%s: %w", out, err)
	}
	if err := f.Commit(); err != nil {
		return Layout{}, err
	}
	return l, nil
}

// BuildInto is Build from the UKI and rootfs.img.verity files.
func BuildInto(dst *os.File, ukiPath, rootfsPath string, opts Options) (Layout, error) {
	uki, err := os.Open(ukiPath)
	if err != nil {
		return Layout{}, fmt.Errorf("UKI: %w", err)
	}
	defer uki.Close()
	rootfs, err := os.Open(rootfsPath)
	if err != nil {
		return Layout{}, fmt.Errorf("rootfs: %w", err)
	}
	defer rootfs.Close()
	return Build(dst, uki, rootfs, opts)
}

// Build writes the disk image into dst, which is truncated first (it must
// be a regular file: the image is made sparse by truncation). uki and rootfs
// are read from their start to their end (Stat gives their sizes).
func Build(dst, uki, rootfs *os.File, opts Options) (Layout, error) {
	ust, err := uki.Stat()
	if err != nil {
		return Layout{}, fmt.Errorf("UKI: %w", err)
	}
	rst, err := rootfs.Stat()
	if err != nil {
		return Layout{}, fmt.Errorf("rootfs: %w", err)
	}
	if !ust.Mode().IsRegular() {
		return Layout{}, fmt.Errorf("UKI %s: not a regular file", uki.Name())
	}
	if !rst.Mode().IsRegular() {
		return Layout{}, fmt.Errorf("rootfs %s: not a regular file", rootfs.Name())
	}
	if err := checkPE(uki); err != nil {
		return Layout{}, err
	}
	o, err := opts.normalized()
	if err != nil {
		return Layout{}, err
	}
	l, err := Plan(rst.Size(), ust.Size(), o)
	if err != nil {
		return Layout{}, fmt.Errorf("%s, %s: %w", uki.Name(), rootfs.Name(), err)
	}
	if err := dst.Truncate(0); err != nil {
		return Layout{}, fmt.Errorf("truncate: %w", err)
	}
	if err := dst.Truncate(l.Size); err != nil {
		return Layout{}, fmt.Errorf("size to %d bytes: %w", l.Size, err)
	}
	sb := newSparseBackend(dst, l.Size)

	// GPT: protective MBR, primary and backup headers and entry arrays.
	table := &gpt.Table{
		LogicalSectorSize:  SectorSize,
		PhysicalSectorSize: SectorSize,
		GUID:               l.DiskGUID,
		ProtectiveMBR:      true,
		Partitions: []*gpt.Partition{
			{Index: 1, Start: l.ESP.FirstLBA(), End: l.ESP.LastLBA(), Type: gpt.Type(TypeESP), Name: ESPName, GUID: l.ESPGUID},
			{Index: 2, Start: l.Rootfs.FirstLBA(), End: l.Rootfs.LastLBA(), Type: gpt.Type(TypeLinux), Name: RootfsName, GUID: l.RootfsGUID},
		},
	}
	if err := table.Write(sb, l.Size); err != nil {
		return Layout{}, fmt.Errorf("write GPT: %w", err)
	}
	if err := writeESP(sb, l, uki, o.Time); err != nil {
		return Layout{}, err
	}
	if err := sb.flush(); err != nil {
		return Layout{}, err
	}
	if err := copyRange(dst, l.Rootfs.Offset, rootfs, rst.Size(), o.Progress); err != nil {
		return Layout{}, fmt.Errorf("copy rootfs %s: %w", rootfs.Name(), err)
	}
	return l, nil
}

// checkPE refuses a UKI that is not a well-formed PE image (package pe's
// checks: truncated, too many sections, sections or headers outside the
// file).
func checkPE(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if _, err := pe.NewFile(f, st.Size(), f.Name()); err != nil {
		return fmt.Errorf("UKI: %w", err)
	}
	return nil
}

// fatTimeMu serialises ESP creation: go-diskfs takes FAT timestamps from the
// SOURCE_DATE_EPOCH environment variable, which writeESP sets for the
// duration (and restores).
var fatTimeMu sync.Mutex

func writeESP(sb *sparseBackend, l Layout, uki *os.File, t time.Time) (err error) {
	fatTimeMu.Lock()
	defer fatTimeMu.Unlock()
	old, had := os.LookupEnv(epoch.Var)
	os.Setenv(epoch.Var, strconv.FormatInt(t.Unix(), 10))
	defer func() {
		if had {
			os.Setenv(epoch.Var, old)
		} else {
			os.Unsetenv(epoch.Var)
		}
	}()

	fsSize, err := fatFSSize(l.ESP.Size)
	if err != nil {
		return err
	}
	fs, err := fat32.Create(sb, fsSize, l.ESP.Offset, SectorSize, ESPLabel, true)
	if err != nil {
		return fmt.Errorf("create FAT32 ESP: %w", err)
	}
	if err := fs.Mkdir("/EFI/BOOT"); err != nil {
		return fmt.Errorf("ESP: mkdir /EFI/BOOT: %w", err)
	}
	f, err := fs.OpenFile("/"+BootPath, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return fmt.Errorf("ESP: create /%s: %w", BootPath, err)
	}
	// Few large writes: go-diskfs rescans the FAT and rewrites it on each.
	buf := make([]byte, 16*MiB)
	var off int64
	for {
		n, rerr := uki.ReadAt(buf, off)
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				return fmt.Errorf("ESP: write /%s: %w", BootPath, err)
			}
			off += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("read UKI %s: %w", uki.Name(), rerr)
		}
	}
	if off != l.UKISize {
		return fmt.Errorf("read UKI %s: %d bytes, expected %d (file changed?)", uki.Name(), off, l.UKISize)
	}
	if err := fixFAT(sb, l.ESP.Offset); err != nil {
		return err
	}
	// go-diskfs writes volume ID 0 in reproducible mode; stamp ours into the
	// boot sector and its backup (sector 6).
	var id [4]byte
	binary.LittleEndian.PutUint32(id[:], l.VolumeID)
	for _, sec := range []int64{0, 6} {
		if _, err := sb.WriteAt(id[:], l.ESP.Offset+sec*SectorSize+0x43); err != nil {
			return fmt.Errorf("ESP: write volume ID: %w", err)
		}
	}
	return nil
}

// copyFileRange is unix.CopyFileRange (tests replace it).
var copyFileRange = unix.CopyFileRange

// copyRange copies n bytes of src (from its start) into dst at off, with
// copy_file_range when the kernel allows it (a reflink on filesystems that
// share extents, an in-kernel copy elsewhere), else with an 8 MiB buffer.
// One thread copies: buffered writes to one file hold its inode lock, so
// more writers would only wait (spinning) for each other.
func copyRange(dst *os.File, off int64, src *os.File, n int64, progress func(done, total int64)) error {
	const step = 64 * MiB // progress granularity
	var pos int64
	short := func() error { return fmt.Errorf("unexpected end of input at %d of %d bytes", pos, n) }
	for pos < n {
		soff, doff := pos, off+pos
		c, err := copyFileRange(int(src.Fd()), &soff, int(dst.Fd()), &doff, int(min(step, n-pos)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) ||
				errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPERM) {
				break // not here: copy through a buffer
			}
			return err
		}
		if c == 0 {
			return short()
		}
		pos += int64(c)
		if progress != nil {
			progress(pos, n)
		}
	}
	var buf []byte
	for pos < n {
		if buf == nil {
			buf = make([]byte, 8*MiB)
		}
		b := buf[:min(int64(len(buf)), n-pos)]
		r, err := src.ReadAt(b, pos)
		if r < len(b) {
			if err == nil || err == io.EOF {
				pos += int64(r)
				err = short()
			}
			return err
		}
		if _, err := dst.WriteAt(b, off+pos); err != nil {
			return err
		}
		pos += int64(r)
		if progress != nil {
			progress(pos, n)
		}
	}
	return nil
}

// ParseSize parses a byte count: a plain number, or one with a binary suffix
// K/KiB, M/MiB, G/GiB (all powers of 1024).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}} {
		if strings.HasSuffix(t, u.suf) {
			t, mult = strings.TrimSuffix(t, u.suf), u.m
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a number of bytes, optionally with K/KiB, M/MiB or G/GiB", s)
	}
	return n * mult, nil
}
