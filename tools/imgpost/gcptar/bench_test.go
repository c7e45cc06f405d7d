package gcptar

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/disk"
)

const stubPath = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// benchDisk returns a disk.raw built by package disk from IMGPOST_BENCH_MIB
// MiB (default 64) of incompressible rootfs data and a 32 MiB fake UKI,
// cached under os.TempDir()/imgpost-bench.
func benchDisk(b *testing.B) string {
	b.Helper()
	testutil.NeedFile(b, stubPath, "systemd-boot-efi")
	mib := int64(64)
	if s := os.Getenv("IMGPOST_BENCH_MIB"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v <= 0 {
			b.Fatalf("IMGPOST_BENCH_MIB=%q: want a positive number of MiB", s)
		}
		mib = v
	}
	dir := filepath.Join(os.TempDir(), "imgpost-bench")
	os.MkdirAll(dir, 0o755)
	out := filepath.Join(dir, fmt.Sprintf("gcp-disk-%dMiB.raw", mib))
	if _, err := os.Stat(out); err == nil {
		return out
	}
	tmp := b.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	testutil.WriteRandom(b, rootfs, mib<<20+1234, 42)
	stub, err := os.ReadFile(stubPath)
	if err != nil {
		b.Fatal(err)
	}
	testutil.WriteRandom(b, filepath.Join(tmp, "tail"), 32<<20, 7)
	tail, _ := os.ReadFile(filepath.Join(tmp, "tail"))
	uki := filepath.Join(tmp, "uki.efi")
	os.WriteFile(uki, append(stub, tail...), 0o644)
	if _, err := disk.BuildFile(out, uki, rootfs, disk.Options{}); err != nil {
		b.Fatal(err)
	}
	return out
}

func benchWorkDir(b *testing.B, need int64) string {
	var fs syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &fs); err == nil && int64(fs.Bavail)*int64(fs.Bsize) > 3*need {
		if d, err := os.MkdirTemp("/dev/shm", "imgpost-bench-gcp-"); err == nil {
			b.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return b.TempDir()
}

func fileSize(b *testing.B, p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}

// BenchmarkGCP writes the GCP tarball with WriteFile and, in the same run, with
// `tar --format=oldgnu -cSf - disk.raw | pigz -6` and with the GCP recipe
// `tar --format=oldgnu -Sczf` (gzip -6). Reports the time ratios
// (x-vs-pigz, x-vs-tar-z) and the archive size over gzip -6's (size-vs-gzip6).
func BenchmarkGCP(b *testing.B) {
	testutil.Need(b, "tar", "pigz", "gzip", "bash")
	src := benchDisk(b)
	w := benchWorkDir(b, 2*fileSize(b, src))
	d := filepath.Join(w, "disk.raw")
	testutil.Run(b, "cp", "--sparse=always", src, d)
	var stored int64
	if f, err := os.Open(d); err == nil {
		regs, _, _ := SparseMap(f)
		for _, r := range regs {
			stored += r.Size
		}
		f.Close()
	}
	sh := func(script string) (time.Duration, time.Duration) {
		cmd := exec.Command("bash", "-c", "set -euo pipefail; "+script)
		cmd.Dir = w
		t0 := time.Now()
		if o, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", script, err, o)
		}
		return time.Since(t0), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	out := filepath.Join(w, "imgpost-gcp.tar.gz")
	var tImg, tPigz, tTarZ, cImg, cPigz, cTarZ time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		tPigz, cPigz = sh("tar --format=oldgnu -cSf - disk.raw | pigz -6 > pigz.tar.gz")
		tTarZ, cTarZ = sh("tar --format=oldgnu -Sczf tarz.tar.gz disk.raw")
		os.Remove(out)
		b.StartTimer()
		c0 := cpuTime()
		t0 := time.Now()
		if _, err := WriteFile(out, d, Options{}); err != nil {
			b.Fatal(err)
		}
		tImg, cImg = time.Since(t0), cpuTime()-c0
	}
	b.StopTimer()
	b.ReportMetric(tImg.Seconds(), "s-imgpost")
	b.ReportMetric(tPigz.Seconds(), "s-pigz")
	b.ReportMetric(tTarZ.Seconds(), "s-tar-z")
	b.ReportMetric(tPigz.Seconds()/tImg.Seconds(), "x-vs-pigz")
	b.ReportMetric(tTarZ.Seconds()/tImg.Seconds(), "x-vs-tar-z")
	// CPU time (user+sys, all threads/processes) ratios: what the machine's
	// load does not change.
	b.ReportMetric(cPigz.Seconds()/cImg.Seconds(), "cpu-x-vs-pigz")
	b.ReportMetric(cTarZ.Seconds()/cImg.Seconds(), "cpu-x-vs-tar-z")
	b.ReportMetric(float64(fileSize(b, out))/float64(fileSize(b, filepath.Join(w, "tarz.tar.gz"))), "size-vs-gzip6")
	b.ReportMetric(float64(stored)/tImg.Seconds()/1e6, "MB/s")
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
