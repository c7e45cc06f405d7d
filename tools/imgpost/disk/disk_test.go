package disk

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

const stubPath = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// fakeUKI writes a PE file: the systemd stub followed by extra pseudo-random
// bytes (enough to need several FAT writes when extra is large).
func fakeUKI(t testing.TB, dir string, extra int64) string {
	t.Helper()
	testutil.NeedFile(t, stubPath, "systemd-boot-efi")
	stub, err := os.ReadFile(stubPath)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "uki.efi")
	if extra > 0 {
		testutil.WriteRandom(t, p+".tail", extra, 7)
		tail, err := os.ReadFile(p + ".tail")
		if err != nil {
			t.Fatal(err)
		}
		stub = append(stub, tail...)
	}
	if err := os.WriteFile(p, stub, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// sgdiskInfo is what `sgdisk -i N` prints about a partition.
type sgdiskInfo struct{ typ, guid, name, first, last string }

func sgdiskPartition(t *testing.T, img string, n int) sgdiskInfo {
	t.Helper()
	out := testutil.Run(t, "sgdisk", "-i", strconv.Itoa(n), img)
	get := func(re string) string {
		m := regexp.MustCompile(re).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("sgdisk -i %d: no match for %q in\n%s", n, re, out)
		}
		return m[1]
	}
	return sgdiskInfo{
		typ:   get(`Partition GUID code: ([0-9A-F-]+)`),
		guid:  get(`Partition unique GUID: ([0-9A-F-]+)`),
		name:  get(`Partition name: '([^']*)'`),
		first: get(`First sector: (\d+)`),
		last:  get(`Last sector: (\d+)`),
	}
}

func TestBuildCrossCheck(t *testing.T) {
	testutil.Need(t, "sgdisk", "fsck.fat", "mcopy", "mdir")
	cases := []struct {
		name      string
		opts      Options
		rootfs    int64
		ukiExtra  int64
		wantESP   int64
		wantGUIDs [3]string
	}{
		{"defaults", Options{}, 3*MiB + 123, 0, DefaultESPSize,
			[3]string{DefaultDiskGUID, DefaultESPGUID, DefaultRootfsGUID}},
		{"small-esp-big-uki-custom-guids", Options{
			ESPSize:  64 * MiB,
			DiskGUID: "0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f", ESPGUID: "11111111-2222-4333-8444-555555555555",
			RootfsGUID: "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
		}, 5 * MiB, 40 * MiB, 64 * MiB,
			[3]string{"0B1C2D3E-4F50-4617-8829-3A4B5C6D7E8F", "11111111-2222-4333-8444-555555555555", "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE"}},
		{"rootfs-crossing-a-gib", Options{}, GiB - 200*MiB, 0, DefaultESPSize,
			[3]string{DefaultDiskGUID, DefaultESPGUID, DefaultRootfsGUID}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			uki := fakeUKI(t, dir, tc.ukiExtra)
			rootfs := filepath.Join(dir, "rootfs.img.verity")
			testutil.WriteRandom(t, rootfs, tc.rootfs, 3)
			img := filepath.Join(dir, "disk.raw")
			l, err := BuildFile(img, uki, rootfs, tc.opts)
			if err != nil {
				t.Fatal(err)
			}

			// Size: whole GiB, big enough; sparse.
			var st syscall.Stat_t
			if err := syscall.Stat(img, &st); err != nil {
				t.Fatal(err)
			}
			minSize := MiB + tc.wantESP + tc.rootfs + 33*SectorSize
			if st.Size%GiB != 0 || st.Size < minSize || st.Size >= minSize+GiB+2*MiB {
				t.Errorf("size %d: want a whole number of GiB >= %d, less than 1 GiB more", st.Size, minSize)
			}
			ukiSt, _ := os.Stat(uki)
			maxAlloc := tc.rootfs + ukiSt.Size() + 8*MiB // + FATs, GPT, directories
			if st.Blocks*512 > maxAlloc {
				t.Errorf("allocated %d bytes, want <= %d (file should be sparse)", st.Blocks*512, maxAlloc)
			}

			// GPT, checked by sgdisk.
			if out := testutil.Run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
				t.Fatalf("sgdisk -v:\n%s", out)
			}
			if out := testutil.Run(t, "sgdisk", "-p", img); !strings.Contains(out, "Disk identifier (GUID): "+tc.wantGUIDs[0]) {
				t.Errorf("sgdisk -p: want disk GUID %s in\n%s", tc.wantGUIDs[0], out)
			}
			p1, p2 := sgdiskPartition(t, img, 1), sgdiskPartition(t, img, 2)
			wantP1 := sgdiskInfo{TypeESP, tc.wantGUIDs[1], "EFI System Partition", "2048", strconv.FormatInt(2048+tc.wantESP/512-1, 10)}
			first2 := 2048 + tc.wantESP/512
			wantP2 := sgdiskInfo{TypeLinux, tc.wantGUIDs[2], "dstack-rootfs", strconv.FormatInt(first2, 10),
				strconv.FormatInt(first2+roundUp(tc.rootfs, MiB)/512-1, 10)}
			if p1 != wantP1 {
				t.Errorf("partition 1: sgdisk says %+v, want %+v", p1, wantP1)
			}
			if p2 != wantP2 {
				t.Errorf("partition 2: sgdisk says %+v, want %+v", p2, wantP2)
			}

			// ESP: fsck.fat on an extracted copy, mtools reads the UKI back.
			esp := filepath.Join(dir, "esp.img")
			testutil.Run(t, "dd", "if="+img, "of="+esp, "bs=1M", "skip=1", "count="+strconv.FormatInt(tc.wantESP/MiB, 10), "conv=sparse", "status=none")
			out, err := exec.Command("fsck.fat", "-n", "-v", esp).CombinedOutput()
			if err != nil || strings.Contains(string(out), "Fixing") || strings.Contains(string(out), "uninitialized") {
				t.Fatalf("fsck.fat -n: %v\n%s", err, out)
			}
			mimg := img + "@@1M"
			back := filepath.Join(dir, "back.efi")
			testutil.Run(t, "mcopy", "-n", "-i", mimg, "::EFI/BOOT/BOOTX64.EFI", back)
			sameFile(t, back, uki)
			if out := testutil.Run(t, "mdir", "-i", mimg, "::"); !strings.Contains(out, "Volume in drive : is DSTACKEFI") {
				t.Errorf("mdir: want volume label DSTACKEFI in\n%s", out)
			}

			// Rootfs bytes at the offset sgdisk reports.
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got := io.NewSectionReader(f, first2*512, tc.rootfs)
			sameReader(t, "rootfs partition", got, rootfs)

			// Our reader agrees with sgdisk and mtools.
			d, err := Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := d.Verify(); err != nil {
				t.Fatal(err)
			}
			if d.GUID != tc.wantGUIDs[0] || len(d.Partitions) != 2 {
				t.Fatalf("reader: GUID %s, %d partitions", d.GUID, len(d.Partitions))
			}
			for i, want := range []sgdiskInfo{p1, p2} {
				p := d.Partitions[i]
				got := sgdiskInfo{p.Type, p.GUID, p.Name, strconv.FormatUint(p.FirstLBA, 10), strconv.FormatUint(p.LastLBA, 10)}
				if got != want {
					t.Errorf("reader partition %d: %+v, sgdisk %+v", i+1, got, want)
				}
			}
			var ukiBack bytes.Buffer
			if _, err := d.CopyESPFile(BootPath, &ukiBack); err != nil {
				t.Fatal(err)
			}
			sameReader(t, "reader BOOTX64.EFI", bytes.NewReader(ukiBack.Bytes()), uki)
			sec, err := d.Section(RootfsName)
			if err != nil {
				t.Fatal(err)
			}
			if sec.Size() != l.Rootfs.Size {
				t.Errorf("section size %d, layout %d", sec.Size(), l.Rootfs.Size)
			}
			sameReader(t, "reader rootfs section", io.NewSectionReader(sec, 0, tc.rootfs), rootfs)
		})
	}
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	f, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sameReader(t, a, f, b)
}

// sameReader compares r with the whole content of file want.
func sameReader(t *testing.T, what string, r io.Reader, want string) {
	t.Helper()
	w, err := os.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	var off int64
	for {
		na, ea := io.ReadFull(r, ba)
		nb, eb := io.ReadFull(w, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s differs from %s in the MiB at %d (%d vs %d bytes)", what, want, off, na, nb)
		}
		off += int64(na)
		if ea != nil || eb != nil {
			if (ea == nil) != (eb == nil) {
				t.Fatalf("%s and %s end differently: %v / %v", what, want, ea, eb)
			}
			return
		}
	}
}

func TestDeterministicAndTimestamps(t *testing.T) {
	testutil.Need(t, "mdir")
	dir := t.TempDir()
	uki := fakeUKI(t, dir, 1*MiB)
	rootfs := filepath.Join(dir, "rootfs")
	testutil.WriteRandom(t, rootfs, 2*MiB+5, 9)
	build := func(name string, opts Options) string {
		p := filepath.Join(dir, name)
		if _, err := BuildFile(p, uki, rootfs, opts); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	a := build("a.raw", Options{})
	time.Sleep(2100 * time.Millisecond) // FAT time resolution is 2 s
	b := build("b.raw", Options{})
	sameFile(t, a, b)
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "1700000000" {
		t.Errorf("SOURCE_DATE_EPOCH not restored: %q", v)
	}
	// The time stamps come from SOURCE_DATE_EPOCH (2023-11-14 22:13:20 UTC).
	out := testutil.Run(t, "mdir", "-i", a+"@@1M", "::EFI/BOOT")
	if !strings.Contains(out, "2023-11-14  22:13") {
		t.Errorf("mdir: want 2023-11-14 22:13 time stamps in\n%s", out)
	}
	// Options.Time wins; before 1980 is clamped to the FAT epoch.
	c := build("c.raw", Options{Time: time.Unix(0, 0)})
	out = testutil.Run(t, "mdir", "-i", c+"@@1M", "::EFI/BOOT")
	if !strings.Contains(out, "1980-01-01   0:00") {
		t.Errorf("mdir: want 1980-01-01 0:00 time stamps in\n%s", out)
	}
	// The volume ID is derived from the ESP GUID (mtools prints it).
	out = testutil.Run(t, "mdir", "-i", c+"@@1M", "::")
	id := VolumeIDFor(DefaultESPGUID)
	want := strings.ToUpper(strconv.FormatUint(uint64(id>>16), 16) + "-" + strconv.FormatUint(uint64(id&0xffff), 16))
	if !strings.Contains(strings.ToUpper(out), "SERIAL NUMBER IS "+padSerial(id)) {
		t.Errorf("mdir: want volume serial %s in\n%s", want, out)
	}
}

func padSerial(id uint32) string {
	s := strconv.FormatUint(uint64(id), 16)
	s = strings.Repeat("0", 8-len(s)) + s
	return strings.ToUpper(s[:4] + "-" + s[4:])
}

func TestReaderDetectsDamage(t *testing.T) {
	dir := t.TempDir()
	uki := fakeUKI(t, dir, 0)
	rootfs := filepath.Join(dir, "rootfs")
	testutil.WriteRandom(t, rootfs, MiB, 1)
	good := filepath.Join(dir, "good.raw")
	l, err := BuildFile(good, uki, rootfs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		off     int64
		openErr string // error from Open
		verErr  string // error from Verify
	}{
		{"primary header", SectorSize + 60, "primary GPT: header CRC", ""},
		{"primary entries", 2*SectorSize + 60, "primary GPT: entry array CRC", ""},
		{"mbr signature", 510, "", "no MBR boot signature"},
		{"backup header", l.Size - SectorSize + 60, "", "backup GPT: header CRC"},
		{"backup entries", l.Size - 33*SectorSize + 20, "", "backup GPT: entry array CRC"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "bad.raw")
			testutil.Run(t, "cp", "--sparse=always", good, p)
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			b := []byte{0}
			f.ReadAt(b, tc.off)
			b[0] ^= 0x5a
			f.WriteAt(b, tc.off)
			f.Close()
			d, err := Open(p)
			if tc.openErr != "" {
				if !errors.Is(err, ErrBadGPT) || !strings.Contains(err.Error(), tc.openErr) {
					t.Fatalf("Open: %v, want error containing %q", err, tc.openErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := d.Verify(); !errors.Is(err, ErrBadGPT) || !strings.Contains(err.Error(), tc.verErr) {
				t.Fatalf("Verify: %v, want error containing %q", err, tc.verErr)
			}
		})
	}
}

func TestBadInputs(t *testing.T) {
	dir := t.TempDir()
	uki := fakeUKI(t, dir, 0)
	rootfs := filepath.Join(dir, "rootfs")
	testutil.WriteRandom(t, rootfs, MiB, 1)
	notPE := filepath.Join(dir, "notpe.efi")
	os.WriteFile(notPE, []byte("MZ but nothing else, certainly not a PE header here............"), 0o644)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	big := filepath.Join(dir, "big.efi")
	stub, _ := os.ReadFile(uki)
	os.WriteFile(big, stub, 0o644)
	os.Truncate(big, 60*MiB)
	cases := []struct {
		name, uki, rootfs string
		opts              Options
		want              string
	}{
		{"uki missing", filepath.Join(dir, "nope.efi"), rootfs, Options{}, "nope.efi"},
		{"uki not PE", notPE, rootfs, Options{}, "not a PE image"},
		{"rootfs empty", uki, empty, Options{}, "rootfs is empty"},
		{"uki too big", big, rootfs, Options{ESPSize: 64 * MiB}, "does not fit"},
		{"esp not aligned", uki, rootfs, Options{ESPSize: 64*MiB + 512}, "multiple of 1 MiB"},
		{"esp too small", uki, rootfs, Options{ESPSize: 8 * MiB}, "between"},
		{"bad guid", uki, rootfs, Options{DiskGUID: "zz"}, "not a GUID"},
		{"same part guids", uki, rootfs, Options{ESPGUID: DefaultRootfsGUID}, "both"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "disk.raw")
			_, err := BuildFile(out, tc.uki, tc.rootfs, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to contain %q", err, tc.want)
			}
			var small *ESPTooSmallError
			if errors.As(err, &small) != (tc.name == "uki too big") {
				t.Errorf("err %v: ESPTooSmallError %v", err, small)
			}
			ents, _ := os.ReadDir(filepath.Dir(out))
			if len(ents) != 0 {
				t.Errorf("left %d files behind (%s)", len(ents), ents[0].Name())
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"256MiB", 256 * MiB, true}, {"256M", 256 * MiB, true}, {"1GiB", GiB, true}, {"4096", 4096, true},
		{"64K", 64 << 10, true}, {"", 0, false}, {"12MB", 0, false}, {"-1", 0, false}, {"1.5G", 0, false},
	} {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// TestESPSizesFsck builds ESPs of sizes around go-diskfs's cluster-size and
// FAT-size boundaries and has fsck.fat check each.
func TestESPSizesFsck(t *testing.T) {
	testutil.Need(t, "fsck.fat", "mcopy")
	dir := t.TempDir()
	uki := fakeUKI(t, dir, 0)
	rootfs := filepath.Join(dir, "rootfs")
	testutil.WriteRandom(t, rootfs, 4096, 1)
	for _, mib := range []int64{40, 64, 100, 128, 255, 256, 260, 261, 300, 512} {
		t.Run(strconv.FormatInt(mib, 10)+"MiB", func(t *testing.T) {
			img := filepath.Join(dir, "d.raw")
			if _, err := BuildFile(img, uki, rootfs, Options{ESPSize: mib * MiB}); err != nil {
				t.Fatal(err)
			}
			esp := filepath.Join(dir, "esp.img")
			testutil.Run(t, "dd", "if="+img, "of="+esp, "bs=1M", "skip=1", "count="+strconv.FormatInt(mib, 10), "conv=sparse", "status=none")
			out, err := exec.Command("fsck.fat", "-n", esp).CombinedOutput()
			if err != nil || strings.Contains(string(out), "Fixing") {
				t.Fatalf("fsck.fat -n: %v\n%s", err, out)
			}
			back := filepath.Join(dir, "back.efi")
			os.Remove(back)
			testutil.Run(t, "mcopy", "-n", "-i", img+"@@1M", "::EFI/BOOT/BOOTX64.EFI", back)
			sameFile(t, back, uki)
		})
	}
}

// TestProgress: the rootfs copy reports monotonically up to the total, and a
// rootfs on another filesystem (tmpfs, when there is one) is copied right.
func TestProgress(t *testing.T) {
	dir := t.TempDir()
	uki := fakeUKI(t, dir, 0)
	src := dir
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "disk-test-"); err == nil {
			defer os.RemoveAll(d)
			src = d
		}
	}
	rootfs := filepath.Join(src, "rootfs")
	const size = 150*MiB + 3
	testutil.WriteRandom(t, rootfs, size, 4)
	var last, calls int64
	img := filepath.Join(dir, "d.raw")
	_, err := BuildFile(img, uki, rootfs, Options{Progress: func(done, total int64) {
		if total != size || done <= last || done > total {
			t.Errorf("progress %d/%d after %d", done, total, last)
		}
		last = done
		calls++
	}})
	if err != nil {
		t.Fatal(err)
	}
	if last != size || calls < 3 {
		t.Errorf("progress ended at %d after %d calls, want %d in >= 3 calls", last, calls, int64(size))
	}
	d, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sec, err := d.Section(RootfsName)
	if err != nil {
		t.Fatal(err)
	}
	sameReader(t, "rootfs partition", io.NewSectionReader(sec, 0, size), rootfs)
}

// TestBuildIntoUsedFile: a destination that already holds allocated space
// (fallocate) gets the bytes and the space of an image built into an empty
// file: Build empties it first.
func TestBuildIntoUsedFile(t *testing.T) {
	dir := t.TempDir()
	uki := fakeUKI(t, dir, 0)
	rootfs := filepath.Join(dir, "rootfs")
	testutil.WriteRandom(t, rootfs, 5*MiB+4096, 6)
	plain := filepath.Join(dir, "plain.raw")
	l, err := BuildFile(plain, uki, rootfs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(plain)
	space := func(p string) int64 {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks * 512
	}
	exact := Extent{Offset: l.Rootfs.Offset, Size: l.RootfsData}
	for _, r := range []Extent{exact, {Offset: exact.Offset + 8*MiB, Size: exact.Size}} { // over the rootfs data, and past it
		p := filepath.Join(dir, "reserved.raw")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Fallocate(int(f.Fd()), 0, r.Offset, r.Size); err != nil {
			f.Close()
			t.Skipf("fallocate: %v", err)
		}
		_, err = BuildInto(f, uki, rootfs, Options{})
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(p); !bytes.Equal(got, want) {
			t.Errorf("reserved %+v: the image differs from one built into an empty file", r)
		}
		if a, b := space(p), space(plain); a > b+MiB {
			t.Errorf("reserved %+v: the image takes %d bytes, %d built into an empty file", r, a, b)
		}
	}
}
