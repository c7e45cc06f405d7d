package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

var ukiBytes = bytes.Repeat([]byte("the UKI "), 200) // 1600 bytes: 4 clusters

func goodTiny() *tinyFAT {
	return newTinyFAT(tinyEntry{short: "BOOTX64 EFI", data: ukiBytes})
}

func openTiny(t *tinyFAT) (*io.SectionReader, error) {
	v, err := OpenFAT(bytes.NewReader(t.img), int64(len(t.img)), "esp")
	if err != nil {
		return nil, err
	}
	return v.Open(BootPath)
}

// TestTinyAgainstTools: the hand-built volume and disk are what fsck.fat
// and sgdisk accept, so the tests below start from real formats. (The
// volume has 122 clusters, below FAT32's nominal 65,525: fsck.fat warns,
// mtools then takes it for FAT12; UEFI's FAT driver and OpenFAT go by
// BPB_FATSz16 == 0, as dist's 256 MiB ESP is checked by the verify tests.)
func TestTinyAgainstTools(t *testing.T) {
	testutil.Need(t, "fsck.fat", "sgdisk")
	dir := t.TempDir()
	esp := filepath.Join(dir, "esp.img")
	os.WriteFile(esp, goodTiny().img, 0o644)
	if out, err := exec.Command("fsck.fat", "-n", "-v", esp).CombinedOutput(); err != nil {
		t.Fatalf("fsck.fat: %v\n%s", err, out)
	}
	if out, _ := exec.Command("fsck.fat", "-n", "-l", esp).CombinedOutput(); !strings.Contains(string(out), "Checking file /EFI/BOOT/BOOTX64.EFI\n") {
		t.Fatalf("fsck.fat -l does not list /EFI/BOOT/BOOTX64.EFI:\n%s", out)
	}
	d := filepath.Join(dir, "disk.img")
	os.WriteFile(d, tinyDisk(tinyPart{TypeESP, "esp", goodTiny().img}), 0o644)
	if out, err := exec.Command("sgdisk", "-v", d).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
		t.Fatalf("sgdisk -v: %v\n%s", err, out)
	}
}

func TestFATOpen(t *testing.T) {
	r, err := openTiny(goodTiny())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r)
	if !bytes.Equal(b, ukiBytes) {
		t.Fatalf("read %d bytes, want %d", len(b), len(ukiBytes))
	}
	// Any case, and a long name, resolve as firmware resolves them.
	v, _ := OpenFAT(bytes.NewReader(goodTiny().img), int64(len(goodTiny().img)), "esp")
	if _, err := v.Open("efi/Boot/bootx64.efi"); err != nil {
		t.Fatal(err)
	}
	lfn := newTinyFAT(tinyEntry{short: "BOOTX~1 EFI", long: "BootX64.efi", data: ukiBytes})
	if _, err := openTiny(lfn); err != nil {
		t.Fatalf("long name: %v", err)
	}
	// A long name whose checksum does not match is ignored (firmware does so).
	bad := newTinyFAT(tinyEntry{short: "BOOTX~1 EFI", long: "BOOTX64.EFI", data: ukiBytes})
	slot := 2 // first LFN entry after . and ..
	bad.img[(tinyData+int(bad.bootDir)-2)*512+32*slot+13]++
	if _, err := openTiny(bad); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "no BOOTX64.EFI") {
		t.Fatalf("bad LFN checksum: %v", err)
	}
}

// TestFATRefuses: each malformed or ambiguous volume is refused with an
// error naming the field or entry.
func TestFATRefuses(t *testing.T) {
	cases := []struct {
		name string
		make func() *tinyFAT
		want string
	}{
		{"lower-case entry before BOOTX64.EFI", func() *tinyFAT {
			return newTinyFAT(tinyEntry{short: "BOOTX64 EFI", nt: 0x18, data: []byte("other")}, tinyEntry{short: "BOOTX64 EFI", data: ukiBytes})
		}, "same name"},
		{"long name bootx64.efi beside BOOTX64.EFI", func() *tinyFAT {
			return newTinyFAT(tinyEntry{short: "BOOTX~1 EFI", long: "bootx64.efi", data: []byte("other")}, tinyEntry{short: "BOOTX64 EFI", data: ukiBytes})
		}, "same name"},
		{"cluster chain loop (6 -> 5 in both FATs)", func() *tinyFAT {
			f := goodTiny()
			c := f.clusters["BOOTX64 EFI"]
			f.setFAT(c[1], c[0], true)
			return f
		}, "loops"},
		{"chain longer than the size", func() *tinyFAT {
			f := newTinyFAT(tinyEntry{short: "BOOTX64 EFI", data: ukiBytes}, tinyEntry{short: "OTHER   EFI", data: ukiBytes})
			c := f.clusters["BOOTX64 EFI"]
			f.setFAT(c[len(c)-1], f.clusters["OTHER   EFI"][0], true)
			return f
		}, "longer than"},
		{"chain into a free cluster", func() *tinyFAT {
			f := goodTiny()
			f.setFAT(f.clusters["BOOTX64 EFI"][0], 0, true)
			return f
		}, "free"},
		{"chain out of range", func() *tinyFAT {
			f := goodTiny()
			f.setFAT(f.clusters["BOOTX64 EFI"][0], 0x0FFFFFF0, true)
			return f
		}, "outside"},
		{"directory loop", func() *tinyFAT {
			f := goodTiny()
			f.setFAT(f.bootDir, f.bootDir, true)
			return f
		}, "loops"},
		{"FAT copies differ", func() *tinyFAT {
			f := goodTiny()
			f.setFAT(f.clusters["BOOTX64 EFI"][1], f.clusters["BOOTX64 EFI"][0], false)
			return f
		}, "FAT copy 2 differs"},
		{"total sectors past the partition", func() *tinyFAT {
			f := goodTiny()
			binary.LittleEndian.PutUint32(f.img[32:], 1<<30)
			return f
		}, "BPB_TotSec"},
		{"FAT16", func() *tinyFAT {
			f := goodTiny()
			binary.LittleEndian.PutUint16(f.img[17:], 512)
			return f
		}, "not FAT32"},
		{"no BOOTX64.EFI", func() *tinyFAT { return newTinyFAT(tinyEntry{short: "GRUBX64 EFI", data: ukiBytes}) }, "no BOOTX64.EFI"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := openTiny(c.make())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			// Malformed (ErrBadFAT) or, for a missing file, fs.ErrNotExist: never both.
			if errors.Is(err, ErrBadFAT) == (c.name == "no BOOTX64.EFI") || errors.Is(err, fs.ErrNotExist) != (c.name == "no BOOTX64.EFI") {
				t.Errorf("error %v: ErrBadFAT %v, fs.ErrNotExist %v", err, errors.Is(err, ErrBadFAT), errors.Is(err, fs.ErrNotExist))
			}
		})
	}
}

// TestBootFile: the disk-level rule: one FAT file system, in the one ESP.
func TestBootFile(t *testing.T) {
	other := newTinyFAT(tinyEntry{short: "BOOTX64 EFI", data: []byte("another UKI")}).img
	notFAT := bytes.Repeat([]byte{0x5a}, 8192)
	cases := []struct {
		name  string
		parts []tinyPart
		want  string // "" for success
	}{
		{"good", []tinyPart{{TypeESP, "esp", goodTiny().img}, {TypeLinux, RootfsName, notFAT}}, ""},
		{"non-ESP FAT partition first with its own BOOTX64.EFI", []tinyPart{{TypeLinux, "data", other}, {TypeESP, "esp", goodTiny().img}}, "partition 1 \"data\""},
		{"non-ESP FAT partition after", []tinyPart{{TypeESP, "esp", goodTiny().img}, {"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "data", other}}, "besides the ESP"},
		{"two ESPs", []tinyPart{{TypeESP, "esp", goodTiny().img}, {TypeESP, "esp2", notFAT}}, "2 partitions typed"},
		{"ESP not FAT", []tinyPart{{TypeESP, "esp", notFAT}}, "no FAT file system"},
		{"no BOOTX64.EFI", []tinyPart{{TypeESP, "esp", newTinyFAT(tinyEntry{short: "GRUBX64 EFI", data: ukiBytes}).img}}, "no BOOTX64.EFI"},
		{"MBR inside a partition", []tinyPart{{TypeESP, "esp", goodTiny().img}, {TypeLinux, "data", nestedMBR(notFAT)}}, "holds an MBR partition table"},
		{"GPT inside a partition", []tinyPart{{TypeESP, "esp", goodTiny().img}, {TypeLinux, "data", noMBR(tinyDisk(tinyPart{TypeESP, "x", goodTiny().img}))}}, "holds a GPT header"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := tinyDisk(c.parts...)
			d, err := NewReader(bytes.NewReader(img), int64(len(img)), "tiny.raw")
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Verify(); err != nil {
				t.Fatal(err)
			}
			b, err := d.BootFile()
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(b.File)
				if !bytes.Equal(got, ukiBytes) {
					t.Fatal("wrong content")
				}
				return
			}
			if !errors.Is(err, ErrBootPath) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want ErrBootPath and %q", err, c.want)
			}
		})
	}
	// The protective MBR doubling as a FAT boot sector.
	img := tinyDisk(tinyPart{TypeESP, "esp", goodTiny().img})
	copy(img[11:64], goodTiny().img[11:64])
	d, _ := NewReader(bytes.NewReader(img), int64(len(img)), "tiny.raw")
	if _, err := d.BootFile(); !errors.Is(err, ErrBootPath) || !strings.Contains(err.Error(), "LBA 0") {
		t.Fatalf("FAT MBR: %v", err)
	}
}

// TestGPTBounds: entry sizes and counts are refused before anything is
// allocated (entry size 0xFFFFFFF8 used to exhaust memory).
func TestGPTBounds(t *testing.T) {
	le := binary.LittleEndian
	cases := []struct {
		name string
		mod  func(h []byte)
		want string
	}{
		{"entry size 0xFFFFFFF8", func(h []byte) { le.PutUint32(h[84:], 0xFFFFFFF8) }, "SizeOfPartitionEntry 4294967288"},
		{"entry size not a power of two", func(h []byte) { le.PutUint32(h[84:], 384) }, "SizeOfPartitionEntry 384"},
		{"entry count 0xFFFFFFFF", func(h []byte) { le.PutUint32(h[80:], 0xFFFFFFFF) }, "NumberOfPartitionEntries"},
		{"entry array past the end", func(h []byte) { le.PutUint64(h[72:], 1<<60) }, "PartitionEntryLBA"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := tinyDisk(tinyPart{TypeESP, "esp", goodTiny().img})
			c.mod(img[512 : 512+92])
			rehashGPT(img)
			_, err := NewReader(bytes.NewReader(img), int64(len(img)), "tiny.raw")
			if !errors.Is(err, ErrBadGPT) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "tiny.raw") {
				t.Fatalf("error %v, want %q", err, c.want)
			}
		})
	}
}

// FuzzFAT: OpenFAT and Open on any bytes return (an error or the file)
// without hanging, panicking or allocating beyond the input's bounds.
func FuzzFAT(f *testing.F) {
	f.Add(goodTiny().img)
	f.Add(newTinyFAT(tinyEntry{short: "BOOTX~1 EFI", long: "BootX64.efi", data: ukiBytes}).img)
	f.Add(newTinyFAT(tinyEntry{short: "BOOTX64 EFI", nt: 0x18, data: []byte("x")}, tinyEntry{short: "BOOTX64 EFI", data: ukiBytes}).img)
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := OpenFAT(bytes.NewReader(b), int64(len(b)), "fuzz")
		if err != nil {
			return
		}
		if r, err := v.Open(BootPath); err == nil {
			io.Copy(io.Discard, r)
		}
	})
}

// FuzzGPT: NewReader, Verify and BootFile on any disk bytes.
func FuzzGPT(f *testing.F) {
	f.Add(tinyDisk(tinyPart{TypeESP, "esp", goodTiny().img}))
	f.Add(tinyDisk(tinyPart{TypeLinux, "data", goodTiny().img}, tinyPart{TypeESP, "esp", goodTiny().img}))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := NewReader(bytes.NewReader(b), int64(len(b)), "fuzz")
		if err != nil {
			return
		}
		d.Verify()
		if bf, err := d.BootFile(); err == nil {
			io.Copy(io.Discard, bf.File)
		}
	})
}

// nestedMBR is b with an MBR whose one partition (type 0x0C, FAT32 LBA)
// covers its second half.
func nestedMBR(b []byte) []byte {
	b = bytes.Clone(b)
	e := b[446:]
	e[4] = 0x0C
	binary.LittleEndian.PutUint32(e[8:], uint32(len(b)/1024))
	binary.LittleEndian.PutUint32(e[12:], uint32(len(b)/1024))
	b[510], b[511] = 0x55, 0xAA
	return b
}

func noMBR(b []byte) []byte { b[510], b[511] = 0, 0; return b }
