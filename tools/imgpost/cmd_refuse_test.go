package main

import (
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

func sum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func copyFile(t *testing.T, src, dst string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestOutputIsInput: every command refuses an output that is one of its
// inputs, by the same name, through a symbolic link or a hard link, and the
// input is left as it was (issue 14: uki, disk and gcp overwrote it).
func TestOutputIsInput(t *testing.T) {
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	dir := t.TempDir()
	k := copyFile(t, testutil.DebianKernel(t), filepath.Join(dir, "bzImage"))
	initrd := filepath.Join(dir, "initrd")
	testutil.WriteRandom(t, initrd, 5000, 1)
	rootfs := filepath.Join(dir, "rootfs.img.verity")
	testutil.WriteRandom(t, rootfs, 8192, 2)
	ukiF := filepath.Join(dir, "uki.efi")
	if _, se, code := ukiCLI(t, "uki", "--stub", testutil.DebianStub, "--linux", k, "--initrd", initrd, "--cmdline", "x", "--out", ukiF); code != 0 {
		t.Fatal(se)
	}
	diskF := filepath.Join(dir, "disk.raw")
	testutil.WriteRandom(t, diskF, 4096, 3)
	symK := filepath.Join(dir, "link-to-bzImage")
	os.Symlink(k, symK)
	hardI := filepath.Join(dir, "hardlink-to-initrd")
	os.Link(initrd, hardI)
	ukiArgs := func(out string) []string {
		return []string{"uki", "--stub", testutil.DebianStub, "--linux", k, "--initrd", initrd, "--cmdline", "x", "--out", out}
	}
	cases := []struct {
		name  string
		args  []string
		input string
	}{
		{"uki --out the kernel", ukiArgs(k), k},
		{"uki --out a symlink to the kernel", ukiArgs(symK), k},
		{"uki --out a hard link to the initrd", ukiArgs(hardI), initrd},
		{"disk --out the rootfs", []string{"disk", "--uki", ukiF, "--rootfs", rootfs, "--out", rootfs}, rootfs},
		{"disk --out the UKI", []string{"disk", "--uki", ukiF, "--rootfs", rootfs, "--out", ukiF}, ukiF},
		{"gcp --out the disk", []string{"gcp", "--disk", diskF, "--out", diskF}, diskF},
		{"gcp --uncompressed --out the disk", []string{"gcp", "--uncompressed", "--disk", diskF, "--out", diskF}, diskF},
		{"verity --out the data", []string{"verity", "--no-fs-check", "--data", rootfs, "--out", rootfs}, rootfs},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := sum(t, c.input)
			_, se, code := ukiCLI(t, c.args...)
			if code != 1 || !strings.Contains(se, "is the input") || strings.Count(strings.TrimSpace(se), "\n") != 0 {
				t.Fatalf("exit %d, stderr %q; want exit 1 and one line saying the output is the input", code, se)
			}
			if sum(t, c.input) != before {
				t.Fatal("the input changed")
			}
		})
	}
}

// TestMalformedPEInputs: uki, disk and dist refuse truncated or malformed
// PE inputs with one error naming the file and what is wrong.
func TestMalformedPEInputs(t *testing.T) {
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	dir := t.TempDir()
	kernel := testutil.DebianKernel(t)
	initrd := filepath.Join(dir, "initrd")
	testutil.WriteRandom(t, initrd, 5000, 1)
	rootfs := filepath.Join(dir, "rootfs.img.verity")
	testutil.WriteRandom(t, rootfs, 8192, 2)
	good := filepath.Join(dir, "good.efi")
	if _, se, code := ukiCLI(t, "uki", "--stub", testutil.DebianStub, "--linux", kernel, "--initrd", initrd, "--cmdline", "x", "--out", good); code != 0 {
		t.Fatal(se)
	}
	gb, _ := os.ReadFile(good)
	le := binary.LittleEndian
	peOff := int(le.Uint32(gb[0x3c:]))
	coff, opt := peOff+4, peOff+24
	sec := opt + int(le.Uint16(gb[coff+16:]))
	variant := func(name string, f func(b []byte) []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, f(append([]byte(nil), gb...)), 0o644)
		return p
	}
	truncUKI := variant("truncated.efi", func(b []byte) []byte { return b[:len(b)*2/3] })
	many := variant("ffff-sections.efi", func(b []byte) []byte { le.PutUint16(b[coff+2:], 0xFFFF); return b })
	rawSize := variant("raw-size.efi", func(b []byte) []byte { le.PutUint32(b[sec+16:], 0xFFFFFE00); return b })
	hdrs := variant("size-of-headers.efi", func(b []byte) []byte { le.PutUint32(b[opt+60:], 0xFFFFFFFF); return b })
	kb, _ := os.ReadFile(kernel)
	truncK := filepath.Join(dir, "truncated-bzImage")
	os.WriteFile(truncK, kb[:len(kb)/2], 0o644)
	sb, _ := os.ReadFile(testutil.DebianStub)
	soff := int(le.Uint32(sb[0x3c:]))
	ssec := soff + 24 + int(le.Uint16(sb[soff+4+16:]))
	le.PutUint32(sb[ssec+40+20:], le.Uint32(sb[ssec+20:])+512) // section 2's data inside section 1's
	overlap := filepath.Join(dir, "overlapping.stub")
	os.WriteFile(overlap, sb, 0o644)
	out := filepath.Join(dir, "out")
	ukiWith := func(stub, linux string) []string {
		return []string{"uki", "--stub", stub, "--linux", linux, "--initrd", initrd, "--cmdline", "x", "--out", out}
	}
	cases := []struct {
		name, file, want string
		args             []string
	}{
		{"disk --uki truncated", truncUKI, "runs past the end of the file", []string{"disk", "--uki", truncUKI, "--rootfs", rootfs, "--out", out}},
		{"disk --uki 0xFFFF sections", many, "NumberOfSections: 65535, more than 96", []string{"disk", "--uki", many, "--rootfs", rootfs, "--out", out}},
		{"disk --uki raw size 0xFFFFFE00", rawSize, "raw data", []string{"disk", "--uki", rawSize, "--rootfs", rootfs, "--out", out}},
		{"disk --uki SizeOfHeaders 0xFFFFFFFF", hdrs, "SizeOfHeaders", []string{"disk", "--uki", hdrs, "--rootfs", rootfs, "--out", out}},
		{"uki --linux truncated bzImage", truncK, "truncated", ukiWith(testutil.DebianStub, truncK)},
		{"uki --stub overlapping sections", overlap, "overlap", ukiWith(overlap, kernel)},
		{"inspect truncated UKI", truncUKI, "runs past the end of the file", []string{"inspect", truncUKI}},
		{"authenticode 0xFFFF sections", many, "NumberOfSections", []string{"authenticode", many}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, se, code := ukiCLI(t, c.args...)
			if code != 1 || !strings.Contains(se, c.file) || !strings.Contains(se, c.want) || strings.Count(strings.TrimSpace(se), "\n") != 0 {
				t.Fatalf("exit %d, stderr %q; want exit 1, one line naming %s and saying %q", code, se, c.file, c.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Fatal("output written")
			}
		})
	}
}
