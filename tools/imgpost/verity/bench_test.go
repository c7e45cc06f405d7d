package verity

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// benchSquashfs returns the shared cached benchmark squashfs.
func benchSquashfs(b *testing.B) string { return testutil.BenchSquashfs(b) }

// sha256Floor hashes every 4096-byte block of the file on all cores with
// crypto/sha256 (one block at a time, as veritysetup and OpenSSL do), read the
// way Format reads it (pread), and writes nothing: the least work any verity
// builder has to do.
// With pairs, blocks are hashed two at a time as Format does (sha256x2).
func sha256Floor(path string, pairs bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	chunks := int((size + int64(ChunkSize) - 1) / int64(ChunkSize))
	bufs := make([][]byte, Workers())
	h := newHasher(make([]byte, 32))
	return parallel(chunks, func(w, k int) error {
		off := int64(k) * int64(ChunkSize)
		n := min(int64(ChunkSize), size-off)
		if bufs[w] == nil {
			bufs[w] = make([]byte, ChunkSize)
		}
		m, _ := f.ReadAt(bufs[w][:n], off)
		data := bufs[w][:m]
		if pairs {
			sums := make([]byte, len(data)/BlockSize*DigestSize+DigestSize)
			h.sumBlocks(sums, data)
			return nil
		}
		for i := 0; i < len(data); i += BlockSize {
			sum := sha256.Sum256(data[i:min(i+BlockSize, len(data))])
			_ = sum
		}
		return nil
	})
}

// benchOutDir is where the benchmark writes (testutil.BenchDir: tmpfs, or
// IMGPOST_BENCH_DIR to measure on a build's disk file system).
func benchOutDir(b *testing.B, need int64) string {
	return testutil.BenchDir(b, "imgpost-bench-", 3*need)
}

// timeVeritysetup runs what the shell pipeline does: cp, then veritysetup
// format in place with the hash area at the data size.
func timeVeritysetup(b *testing.B, sq, out string, size int64, root string) (time.Duration, time.Duration, time.Duration) {
	os.Remove(out)
	t0 := time.Now()
	cp := exec.Command("cp", sq, out)
	if o, err := cp.CombinedOutput(); err != nil {
		b.Fatalf("cp: %v %s", err, o)
	}
	tcp := time.Since(t0)
	vs := exec.Command("veritysetup", "format", out, out, fmt.Sprintf("--hash-offset=%d", size),
		"--salt="+DefaultSaltHex, "--uuid="+DefaultUUID)
	o, err := vs.CombinedOutput()
	if err != nil {
		b.Fatalf("veritysetup format: %v %s", err, o)
	}
	d := time.Since(t0)
	cpu := cp.ProcessState.UserTime() + cp.ProcessState.SystemTime() + vs.ProcessState.UserTime() + vs.ProcessState.SystemTime()
	os.Remove(out)
	if size%BlockSize == 0 && !containsRoot(string(o), root) {
		b.Fatalf("veritysetup's root hash differs from imgpost's %s:\n%s", root, o)
	}
	return d, cpu, tcp
}

// cpuSelf is the CPU time this process has used.
func cpuSelf() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func timeImgpost(b *testing.B, sq, out string) (time.Duration, time.Duration, string) {
	os.Remove(out)
	c0 := cpuSelf()
	t0 := time.Now()
	info, err := FormatFile(sq, out, DefaultParams())
	if err != nil {
		b.Fatal(err)
	}
	d := time.Since(t0)
	cpu := cpuSelf() - c0
	os.Remove(out)
	return d, cpu, info.RootHashHex()
}

// BenchmarkVerity times imgpost's FormatFile beside `cp + veritysetup format`
// (what the shell pipeline does) and three floors on the same squashfs, in
// the same run, and reports the ratios: SHA-256 of every block on all cores
// with crypto/sha256 ("sha256-floor", the floor) and with the
// two-lane hasher Format uses ("sha256x2-floor"), and copying the data
// alone with cp ("cp": OUT holds a copy of the data, and writes to one file
// do not go faster with more threads), timed inside the veritysetup run. Outputs go to tmpfs (see
// benchOutDir); each is measured three times, interleaved, and the fastest
// counts (the machine is shared). One more pair is timed with the outputs on
// the disk, where both tools' fsync makes the disk's write speed dominate
// ("-disk" metrics).
func BenchmarkVerity(b *testing.B) {
	testutil.Need(b, "veritysetup", "mksquashfs")
	sq := benchSquashfs(b)
	st, err := os.Stat(sq)
	if err != nil {
		b.Fatal(err)
	}
	dir := benchOutDir(b, st.Size())
	// The input sits beside the outputs, so that both tools read it from the
	// same filesystem they write to.
	local := filepath.Join(dir, "input.squashfs")
	if o, err := exec.Command("cp", sq, local).CombinedOutput(); err != nil {
		b.Fatalf("cp: %v %s", err, o)
	}
	sq = local
	best := func(cur *time.Duration, d time.Duration) {
		if *cur == 0 || d < *cur {
			*cur = d
		}
	}
	var tImg, tVS, tFloor, tFloor2, tCp, cImg, cVS time.Duration
	var root string
	b.ResetTimer()
	for range b.N {
		for range 3 {
			b.StopTimer()
			t0 := time.Now()
			if err := sha256Floor(sq, false); err != nil {
				b.Fatal(err)
			}
			best(&tFloor, time.Since(t0))
			t0 = time.Now()
			if err := sha256Floor(sq, true); err != nil {
				b.Fatal(err)
			}
			best(&tFloor2, time.Since(t0))

			b.StartTimer()
			d, c, r := timeImgpost(b, sq, filepath.Join(dir, "imgpost.verity"))
			root = r
			best(&tImg, d)
			best(&cImg, c)
			b.StopTimer()
			d, c, dcp := timeVeritysetup(b, sq, filepath.Join(dir, "veritysetup.verity"), st.Size(), root)
			best(&tVS, d)
			best(&tCp, dcp)
			best(&cVS, c)
			b.StartTimer()
		}
	}
	b.StopTimer()
	disk := b.TempDir()
	tImgDisk, _, _ := timeImgpost(b, sq, filepath.Join(disk, "imgpost.verity"))
	tVSDisk, _, _ := timeVeritysetup(b, sq, filepath.Join(disk, "veritysetup.verity"), st.Size(), root)
	b.ReportMetric(tVS.Seconds()/tImg.Seconds(), "x-faster-than-veritysetup")
	b.ReportMetric(tImg.Seconds()/tFloor.Seconds(), "x-of-sha256-floor")
	b.ReportMetric(tImg.Seconds(), "s-imgpost")
	b.ReportMetric(tVS.Seconds(), "s-veritysetup")
	b.ReportMetric(tFloor.Seconds(), "s-sha256-floor")
	b.ReportMetric(tImg.Seconds()/tFloor2.Seconds(), "x-of-sha256x2-floor")
	b.ReportMetric(tFloor2.Seconds(), "s-sha256x2-floor")
	b.ReportMetric(tImg.Seconds()/tCp.Seconds(), "x-of-cp")
	b.ReportMetric(tCp.Seconds(), "s-cp")
	b.ReportMetric(tVSDisk.Seconds()/tImgDisk.Seconds(), "x-faster-than-veritysetup-disk")
	b.ReportMetric(tImgDisk.Seconds(), "s-imgpost-disk")
	b.ReportMetric(tVSDisk.Seconds(), "s-veritysetup-disk")
	// CPU time (user+system): what each side costs, whatever else loads the machine.
	b.ReportMetric(cImg.Seconds(), "cpu-s-imgpost")
	b.ReportMetric(cVS.Seconds(), "cpu-s-veritysetup")
	b.ReportMetric(float64(st.Size())/(1<<20), "MiB")
}

func containsRoot(out, root string) bool {
	return root != "" && strings.Contains(out, "Root hash:") && strings.Contains(out, root)
}
