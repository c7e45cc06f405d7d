package uki

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/initramfs"
	"github.com/Dstack-TEE/meta-dstack/internal/qemu"
	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
)

// inputs makes the small inputs of a UKI in dir and returns Options
// (without Out).
func inputs(t *testing.T, dir string) Options {
	t.Helper()
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	kernel := testutil.DebianKernel(t)
	i1 := filepath.Join(dir, "initrd1")
	i2 := filepath.Join(dir, "initrd2")
	testutil.WriteRandom(t, i1, 3001, 1)
	testutil.WriteRandom(t, i2, 70001, 2)
	osrel := filepath.Join(dir, "os-release")
	if err := os.WriteFile(osrel, []byte("ID=dstack\nNAME=\"dstack\"\nVERSION_ID=0.5.5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return Options{
		Stub: testutil.DebianStub, Linux: kernel, Initrds: []string{i1, i2},
		Cmdline:   "console=ttyS0 dstack.rootfs_hash=" + strings.Repeat("ab", 32) + " dstack.rootfs_size=123",
		OSRelease: osrel, Uname: "6.1.0-test-amd64",
	}
}

type objSection struct {
	name           string
	size, vma, off uint64
}

// objdumpSections parses `objdump -h`.
func objdumpSections(t *testing.T, path string) []objSection {
	t.Helper()
	out := testutil.Run(t, "objdump", "-h", path)
	re := regexp.MustCompile(`(?m)^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s`)
	var secs []objSection
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		p := func(s string) uint64 {
			v, err := strconv.ParseUint(s, 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		secs = append(secs, objSection{m[1], p(m[2]), p(m[3]), p(m[4])})
	}
	if len(secs) == 0 {
		t.Fatalf("objdump -h: no sections:\n%s", out)
	}
	return secs
}

func TestBuildLayoutWithObjdump(t *testing.T) {
	testutil.Need(t, "objdump", "objcopy", "osslsigncode")
	dir := t.TempDir()
	opts := inputs(t, dir)
	opts.Out = filepath.Join(dir, "uki.efi")
	info, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	stub, _ := os.ReadFile(opts.Stub)
	h, err := parseStub(stub, opts.Stub)
	if err != nil {
		t.Fatal(err)
	}
	uki, _ := os.ReadFile(opts.Out)

	stubSecs := objdumpSections(t, opts.Stub)
	ukiSecs := objdumpSections(t, opts.Out)
	// objdump hides some stub sections (e.g. .sdmagic) but shows the same ones
	// in both files: the stub's come first and are unchanged.
	if len(ukiSecs) != len(stubSecs)+5 {
		t.Fatalf("UKI has %d sections per objdump, stub %d (+5 expected)", len(ukiSecs), len(stubSecs))
	}
	for i, s := range stubSecs {
		if ukiSecs[i] != s {
			t.Errorf("stub section %d changed: %+v -> %+v", i, s, ukiSecs[i])
		}
	}
	// The stub's bytes from the end of its headers to its last section are
	// copied verbatim.
	if !bytes.Equal(uki[h.sizeOfHeaders:0x11400], stub[h.sizeOfHeaders:0x11400]) {
		t.Error("stub section data changed")
	}
	added := ukiSecs[len(stubSecs):]
	want := []string{".osrel", ".cmdline", ".uname", ".initrd", ".linux"}
	var prevVEnd, prevFEnd uint64
	for _, s := range stubSecs {
		prevVEnd = max(prevVEnd, s.vma+s.size)
		prevFEnd = max(prevFEnd, s.off+s.size)
	}
	for i, s := range added {
		if s.name != want[i] {
			t.Fatalf("section %d is %s, want %s", i, s.name, want[i])
		}
		if s.vma%uint64(h.sectionAlign) != 0 || s.off%uint64(h.fileAlign) != 0 {
			t.Errorf("%s: VMA 0x%x / file offset 0x%x not aligned to 0x%x / 0x%x", s.name, s.vma, s.off, h.sectionAlign, h.fileAlign)
		}
		if s.vma < prevVEnd || s.off < prevFEnd {
			t.Errorf("%s overlaps the previous section (VMA 0x%x < 0x%x or offset 0x%x < 0x%x)", s.name, s.vma, prevVEnd, s.off, prevFEnd)
		}
		prevVEnd, prevFEnd = s.vma+s.size, s.off+s.size
	}
	// Contents, read back by objcopy, equal the inputs.
	// initrd1 is 3001 bytes: 3 zero bytes align initrd2 to 4.
	initrd := append(append(mustRead(t, opts.Initrds[0]), 0, 0, 0), mustRead(t, opts.Initrds[1])...)
	contents := map[string][]byte{
		".osrel": mustRead(t, opts.OSRelease), ".cmdline": []byte(opts.Cmdline), ".uname": []byte(opts.Uname),
		".initrd": initrd, ".linux": mustRead(t, opts.Linux),
	}
	for name, want := range contents {
		dump := filepath.Join(dir, "dump"+name)
		testutil.Run(t, "objcopy", "--dump-section", name+"="+dump, opts.Out, filepath.Join(dir, "scratch.efi"))
		if got := mustRead(t, dump); !bytes.Equal(got, want) {
			t.Errorf("%s: objcopy read back %d bytes differing from the %d-byte input", name, len(got), len(want))
		}
	}
	// Inspect agrees.
	if info.Cmdline != opts.Cmdline || info.Uname != opts.Uname || info.OSRelease != string(contents[".osrel"]) {
		t.Errorf("Inspect: %+v", info)
	}
	if cl, err := Cmdline(opts.Out); err != nil || cl != opts.Cmdline {
		t.Errorf("Cmdline: %q %v", cl, err)
	}
	// Header fields.
	le := binary.LittleEndian
	if n := int(le.Uint16(uki[h.coffOff+2:])); n != h.numSections+5 {
		t.Errorf("NumberOfSections %d", n)
	}
	last := added[len(added)-1]
	if soi := uint64(le.Uint32(uki[h.optOff+optSizeOfImage:])); soi != alignUp(last.vma+last.size, uint64(h.sectionAlign)) {
		t.Errorf("SizeOfImage 0x%x", soi)
	}
	if len(uki)%8 != 0 {
		t.Errorf("file length %d not a multiple of 8", len(uki))
	}
	// The stub's trailing COFF symbol table moved with PointerToSymbolTable.
	symOld, symNew := le.Uint32(stub[h.coffOff+8:]), le.Uint32(uki[h.coffOff+8:])
	if !bytes.Equal(stub[symOld:], uki[symNew:int(symNew)+len(stub)-int(symOld)]) {
		t.Error("symbol table not found at the new PointerToSymbolTable")
	}
	// CheckSum: osslsigncode computes the same value (it warns otherwise).
	out, _ := exec.Command("osslsigncode", "verify", "-in", opts.Out).CombinedOutput()
	wantCS := strings.ToUpper(strconv.FormatUint(uint64(info.CheckSum), 16))
	if bytes.Contains(out, []byte("invalid PE checksum")) || !bytes.Contains(out, []byte("PE checksum   : "+strings.Repeat("0", 8-len(wantCS))+wantCS)) {
		t.Errorf("osslsigncode disagrees with CheckSum %08X:\n%s", info.CheckSum, out)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChecksumMatchesLinker checks the PE checksum code on the Debian stub
// against the value its linker (binutils) wrote.
func TestChecksumMatchesLinker(t *testing.T) {
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	b := mustRead(t, testutil.DebianStub)
	h, err := parseStub(b, "stub")
	if err != nil {
		t.Fatal(err)
	}
	c := &checksum{skipOff: int64(h.optOff + optCheckSum)}
	// feed in odd-sized pieces to exercise the carry of a split word
	for i := 0; i < len(b); i += 7 {
		c.Write(b[i:min(i+7, len(b))])
	}
	if got, want := c.value(), binary.LittleEndian.Uint32(b[h.optOff+optCheckSum:]); got != want {
		t.Fatalf("checksum %08x, linker wrote %08x", got, want)
	}
}

func TestDeterministic(t *testing.T) {
	dir := t.TempDir()
	opts := inputs(t, dir)
	var outs [][]byte
	for i := 0; i < 2; i++ {
		opts.Out = filepath.Join(dir, "uki"+strconv.Itoa(i)+".efi")
		if _, err := Build(opts); err != nil {
			t.Fatal(err)
		}
		outs = append(outs, mustRead(t, opts.Out))
	}
	if !bytes.Equal(outs[0], outs[1]) {
		t.Fatal("two builds differ")
	}
	// Different command line, different bytes (the test can fail).
	opts.Cmdline += " x"
	opts.Out = filepath.Join(dir, "uki2.efi")
	if _, err := Build(opts); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(outs[0], mustRead(t, opts.Out)) {
		t.Fatal("command line did not change the output")
	}
}

// patched writes a copy of the stub with bytes changed.
func patched(t *testing.T, dir, name string, patch func(b []byte, h *header)) string {
	b := bytes.Clone(mustRead(t, testutil.DebianStub))
	h, err := parseStub(b, "stub")
	if err != nil {
		t.Fatal(err)
	}
	patch(b, h)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBadInputs(t *testing.T) {
	dir := t.TempDir()
	good := inputs(t, dir)
	le := binary.LittleEndian
	text := filepath.Join(dir, "text")
	os.WriteFile(text, []byte("hello, not a PE file at all, long enough to read a header from....\n"), 0o644)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, mustRead(t, good.Linux)[:0x100], 0o644)
	noHdrS := patched(t, dir, "nohdrs", func(b []byte, h *header) {}) // the stub itself: MZ+PE, no HdrS
	pe32 := patched(t, dir, "pe32", func(b []byte, h *header) { le.PutUint16(b[h.optOff:], magicPE32) })
	arm := patched(t, dir, "arm", func(b []byte, h *header) { le.PutUint16(b[h.coffOff:], 0xaa64) })
	driver := patched(t, dir, "driver", func(b []byte, h *header) { le.PutUint16(b[h.optOff+optSubsystem:], 11) })
	signed := patched(t, dir, "signed", func(b []byte, h *header) {
		le.PutUint32(b[h.optOff+optDataDirs+8*dirSecurity:], uint32(len(b)-8))
		le.PutUint32(b[h.optOff+optDataDirs+8*dirSecurity+4:], 8)
	})
	noRoom := patched(t, dir, "noroom", func(b []byte, h *header) {
		le.PutUint32(b[h.optOff+optSizeOfHeaders:], uint32(h.secTableOff+sectionHeaderSize*h.numSections))
	})
	busy := patched(t, dir, "busy", func(b []byte, h *header) { b[h.secTableOff+sectionHeaderSize*h.numSections+50] = 0xff })

	cases := []struct {
		name string
		mod  func(o *Options)
		want string
	}{
		{"stub missing", func(o *Options) { o.Stub = filepath.Join(dir, "nope") }, "no such file"},
		{"stub text", func(o *Options) { o.Stub = text }, "not a PE"},
		{"stub PE32", func(o *Options) { o.Stub = pe32 }, "SizeOfOptionalHeader"},
		{"stub arm64", func(o *Options) { o.Stub = arm }, "x86-64"},
		{"stub not an application", func(o *Options) { o.Stub = driver }, "subsystem 11"},
		{"stub signed", func(o *Options) { o.Stub = signed }, "signature"},
		{"stub no header room", func(o *Options) { o.Stub = noRoom }, "no room"},
		{"stub header space in use", func(o *Options) { o.Stub = busy }, "in use"},
		{"kernel ELF", func(o *Options) { o.Linux = "/bin/busybox" }, "ELF"},
		{"kernel text", func(o *Options) { o.Linux = text }, "too short"},
		{"kernel short", func(o *Options) { o.Linux = short }, "too short"},
		{"kernel without HdrS", func(o *Options) { o.Linux = noHdrS }, "HdrS"},
		{"kernel missing", func(o *Options) { o.Linux = filepath.Join(dir, "nope") }, "no such file"},
		{"initrd empty", func(o *Options) { o.Initrds = append(o.Initrds, empty) }, "empty"},
		{"initrd missing", func(o *Options) { o.Initrds = []string{filepath.Join(dir, "nope")} }, "no such file"},
		{"initrd directory", func(o *Options) { o.Initrds = []string{dir} }, "not a regular file"},
		{"no initrd", func(o *Options) { o.Initrds = nil }, "required"},
		{"cmdline too long", func(o *Options) { o.Cmdline = strings.Repeat("a", MaxCmdline+1) }, "more than 2048"},
		{"cmdline NUL", func(o *Options) { o.Cmdline = "a\x00b" }, "NUL"},
		{"cmdline newline", func(o *Options) { o.Cmdline = "a\nb" }, "newline"},
		{"cmdline empty", func(o *Options) { o.Cmdline = "" }, "empty"},
		{"os-release empty", func(o *Options) { o.OSRelease = empty }, "empty"},
		{"os-release missing", func(o *Options) { o.OSRelease = filepath.Join(dir, "nope") }, "no such file"},
		{"out dir missing", func(o *Options) { o.Out = filepath.Join(dir, "no", "uki.efi") }, "no such file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			od := t.TempDir()
			o := good
			o.Initrds = append([]string(nil), good.Initrds...)
			o.Out = filepath.Join(od, "uki.efi")
			c.mod(&o)
			_, err := Build(o)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q lacks %q", err, c.want)
			}
			if ents, _ := os.ReadDir(od); len(ents) != 0 {
				t.Errorf("left %d files behind", len(ents))
			}
		})
	}
	// The maximum command line is accepted.
	o := good
	o.Cmdline = strings.Repeat("a", MaxCmdline)
	o.Out = filepath.Join(t.TempDir(), "uki.efi")
	if _, err := Build(o); err != nil {
		t.Fatalf("2048-byte command line refused: %v", err)
	}
}

// TestBootUnderOVMF puts the UKI on a FAT ESP as EFI/BOOT/BOOTX64.EFI and
// boots it with OVMF (q35, TCG) into a busybox initramfs that prints
// /proc/cmdline: the kernel must see exactly the embedded command line.
func TestBootUnderOVMF(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	testutil.Need(t, "mkfs.vfat", "mmd", "mcopy", qemu.Binary)
	testutil.NeedFile(t, initramfs.HostBusybox, "busybox-static")
	dir := t.TempDir()
	opts := inputs(t, dir)
	initrd := filepath.Join(dir, "probe.cpio.gz")
	const probe = "#!/bin/sh\nmount -t proc proc /proc\necho \"UKI-CMDLINE-BEGIN[$(cat /proc/cmdline)]UKI-CMDLINE-END\"\n" +
		"echo \"SECOND-INITRD[$(cat /etc/second)]\"\npoweroff -f\n"
	// Vary a comment until the gzipped probe's length is not a multiple of
	// 4, so the second archive needs the alignment padding.
	for pad := 0; ; pad++ {
		var buf bytes.Buffer
		if err := initramfs.BusyboxImage(&buf, probe+"#"+strings.Repeat("x", pad)+"\n", true); err != nil {
			t.Fatal(err)
		}
		if buf.Len()%4 != 0 || pad == 64 {
			if err := os.WriteFile(initrd, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	// A second, uncompressed archive after the gzipped one: its file must
	// reach the guest (the .initrd concatenation keeps it 4-aligned).
	second := filepath.Join(dir, "second.cpio")
	f2, err := os.Create(second)
	if err != nil {
		t.Fatal(err)
	}
	w2, _ := initramfs.NewWriter(f2, initramfs.Options{})
	if err := w2.AddFile("/etc/second", []byte("from-second-archive"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	f2.Close()
	if st, _ := os.Stat(initrd); st.Size()%4 == 0 {
		t.Fatal("could not make a gzipped probe of unaligned length")
	}
	opts.Initrds = []string{initrd, second}
	opts.Cmdline = "console=ttyS0 panic=-1 dstack.rootfs_hash=" + strings.Repeat("0f", 32) + " dstack.rootfs_size=4096  quiet"
	opts.Out = filepath.Join(dir, "uki.efi")
	if _, err := Build(opts); err != nil {
		t.Fatal(err)
	}
	esp := filepath.Join(dir, "esp.img")
	testutil.Run(t, "mkfs.vfat", "-C", esp, "32768") // 32 MiB superfloppy FAT
	testutil.Run(t, "mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
	testutil.Run(t, "mcopy", "-i", esp, opts.Out, "::/EFI/BOOT/BOOTX64.EFI")

	vm, err := qemu.Start(qemu.Config{Drives: []qemu.Drive{{Path: esp, ReadOnly: true}}, LogPath: filepath.Join(dir, "console.log")})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	m, err := vm.WaitFor(regexp.MustCompile(`UKI-CMDLINE-BEGIN\[(.*)\]UKI-CMDLINE-END`), 4*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != opts.Cmdline {
		t.Fatalf("kernel saw command line\n %q\nembedded\n %q", m[1], opts.Cmdline)
	}
	if _, err := vm.WaitFor(regexp.MustCompile(`SECOND-INITRD\[from-second-archive\]`), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := vm.Wait(time.Minute); err != nil && !errors.Is(err, qemu.ErrTimeout) {
		t.Logf("qemu exit: %v", err)
	}
}

// TestChecksumPaths compares the checksum's word-wise fast path with its
// byte-wise path on random data written in ragged pieces.
func TestChecksumPaths(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r")
	testutil.WriteRandom(t, p, 1<<20+3, 5)
	b := mustRead(t, p)
	for _, skip := range []int64{0, 217, 1 << 19} {
		slow := &checksum{skipOff: skip}
		slow.slow(b)
		fast := &checksum{skipOff: skip}
		for i, step := 0, 1; i < len(b); i, step = i+step, step*3%70001+1 {
			fast.Write(b[i:min(i+step, len(b))])
		}
		if slow.value() != fast.value() {
			t.Fatalf("skip %d: fast %08x, slow %08x", skip, fast.value(), slow.value())
		}
	}
}

// TestSizeMultipleOf8: every UKI Build writes is a multiple of 8 bytes, so
// that firmware's Authenticode digest (unpadded) equals the signing tools'
// (padded): with the Debian stub (odd trailing symbol table), with it cut
// after its last section (no trailing data), and cut with FileAlignment 1 (the
// new sections then end at odd offsets), for initrds of every size mod 8.
func TestSizeMultipleOf8(t *testing.T) {
	dir := t.TempDir()
	good := inputs(t, dir)
	stub := mustRead(t, testutil.DebianStub)
	h, err := parseStub(stub, "stub")
	if err != nil {
		t.Fatal(err)
	}
	var rawEnd uint32
	for _, s := range h.sections {
		rawEnd = max(rawEnd, s.pointerToRD+s.sizeOfRawData)
	}
	cut := bytes.Clone(stub[:rawEnd])
	binary.LittleEndian.PutUint32(cut[h.coffOff+8:], 0) // no symbol table
	align1 := bytes.Clone(cut)
	binary.LittleEndian.PutUint32(align1[h.optOff+36:], 1) // FileAlignment
	stubs := map[string][]byte{"debian": stub, "cut": cut, "filealign1": align1}
	for name, b := range stubs {
		p := filepath.Join(dir, name+".stub")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		for n := int64(1); n <= 8; n++ {
			initrd := filepath.Join(dir, fmt.Sprintf("initrd-%d", n))
			testutil.WriteRandom(t, initrd, 1000+n, uint64(n))
			o := good
			o.Stub, o.Initrds, o.Out = p, []string{initrd}, filepath.Join(dir, "out.efi")
			o.Cmdline = strings.Repeat("x", int(n)) // odd section sizes too
			info, err := Build(o)
			if err != nil {
				t.Fatalf("%s, initrd %d: %v", name, n, err)
			}
			if info.Size%8 != 0 {
				t.Errorf("%s, initrd %d bytes: UKI is %d bytes, not a multiple of 8", name, 1000+n, info.Size)
			}
			fw, err1 := authenticode.FileFirmwareDigest(o.Out, crypto.SHA256)
			sg, err2 := authenticode.FileDigest(o.Out, crypto.SHA256)
			if err1 != nil || err2 != nil || !bytes.Equal(fw, sg) {
				t.Errorf("%s, initrd %d: firmware digest %x (%v), signer %x (%v)", name, n, fw, err1, sg, err2)
			}
		}
	}
}
