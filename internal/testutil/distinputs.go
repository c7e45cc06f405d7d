package testutil

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// DistInputs are small, real inputs for `imgpost dist`.
type DistInputs struct {
	Kernel, Initrd, Rootfs, Stub, OVMF string
}

// DebianOVMF is Debian's 4 MiB OVMF code image (package ovmf).
const DebianOVMF = "/usr/share/OVMF/OVMF_CODE_4M.fd"

// MakeDistInputs prepares dist inputs in dir: the Debian kernel and systemd
// stub, Debian's OVMF, a tiny gzip'd newc cpio initramfs and a squashfs with
// payload bytes of random data (seeded).
func MakeDistInputs(t testing.TB, dir string, payload int64, seed uint64) DistInputs {
	t.Helper()
	NeedFile(t, DebianStub, "systemd-boot-efi")
	NeedFile(t, DebianOVMF, "ovmf")
	in := DistInputs{
		Kernel: DebianKernel(t),
		Stub:   DebianStub,
		OVMF:   DebianOVMF,
		Rootfs: Squashfs(t, dir, "rootfs.squashfs", payload, seed, false),
		Initrd: filepath.Join(dir, "initramfs.cpio.gz"),
	}
	var z bytes.Buffer
	gw, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
	gw.Write(newcTrailerOnly())
	gw.Close()
	if err := os.WriteFile(in.Initrd, z.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return in
}

// newcTrailerOnly is an empty newc cpio archive (just the TRAILER!!! entry),
// padded to 512 bytes.
func newcTrailerOnly() []byte {
	name := "TRAILER!!!\x00"
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(name), 0)
	b := []byte(h + name)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	for len(b)%512 != 0 {
		b = append(b, 0)
	}
	return b
}

// BenchMiB is the benchmark input size in MiB: IMGPOST_BENCH_MIB, default 64.
func BenchMiB(b testing.TB) int {
	b.Helper()
	s := os.Getenv("IMGPOST_BENCH_MIB")
	if s == "" {
		return 64
	}
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n <= 0 || fmt.Sprint(n) != s {
		b.Fatalf("IMGPOST_BENCH_MIB=%q: want a positive number of MiB", s)
	}
	return n
}

// BenchSquashfs returns an incompressible squashfs of IMGPOST_BENCH_MIB MiB
// of payload (default 64), made once and cached under os.TempDir() across
// runs and packages.
func BenchSquashfs(b testing.TB) string {
	b.Helper()
	mib := BenchMiB(b)
	dir := filepath.Join(os.TempDir(), "imgpost-bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	name := fmt.Sprintf("verity-%dmib.squashfs", mib)
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	tmp, err := os.MkdirTemp(dir, ".make-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	sq := Squashfs(b, tmp, name, int64(mib)<<20, 42, false)
	if err := os.Rename(sq, p); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchDir returns a fresh work directory for a benchmark that writes about
// need bytes, removed when it ends. IMGPOST_BENCH_DIR, when set, names the
// directory to create it in: a build's disk file system (ext4, where BitBake
// writes) rather than tmpfs. Otherwise it is on tmpfs (/dev/shm) when that
// has room, so both sides are measured on their work rather than on
// writeback, and under the test's temporary directory when not. The
// benchmark logs which it used.
func BenchDir(b testing.TB, prefix string, need int64) string {
	b.Helper()
	parent := os.Getenv("IMGPOST_BENCH_DIR")
	if parent == "" {
		var fs syscall.Statfs_t
		if err := syscall.Statfs("/dev/shm", &fs); err == nil && int64(fs.Bavail)*int64(fs.Bsize) > need {
			parent = "/dev/shm"
		}
	}
	if parent == "" {
		d := b.TempDir()
		b.Logf("work directory %s (the test's temporary directory)", d)
		return d
	}
	d, err := os.MkdirTemp(parent, prefix)
	if err != nil {
		b.Fatalf("IMGPOST_BENCH_DIR: %v", err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	b.Logf("work directory %s", d)
	return d
}
