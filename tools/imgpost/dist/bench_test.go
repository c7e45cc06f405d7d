package dist

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// shellPipeline is the competitor: the upstream post-processing pipeline
// built from public tools (a copy of ../shared/bench/shell-pipeline.sh kept in
// testdata so the benchmark runs anywhere; IMGPOST_SHELL_PIPELINE overrides it).
func shellPipeline(b *testing.B) string {
	if p := os.Getenv("IMGPOST_SHELL_PIPELINE"); p != "" {
		return p
	}
	p, err := filepath.Abs(filepath.Join("testdata", "shell-pipeline.sh"))
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// benchWorkDir is where the benchmark writes (testutil.BenchDir: tmpfs, or
// IMGPOST_BENCH_DIR to measure on a build's disk file system).
func benchWorkDir(b *testing.B, need int64) string {
	return testutil.BenchDir(b, "imgpost-bench-dist-", need)
}

// runShell runs the shell pipeline and returns its stage times.
func runShell(b *testing.B, script, rootfs, kernel, initrd, stub, out string) map[string]float64 {
	cmd := exec.Command("bash", script, rootfs, kernel, initrd, stub, out)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	stages := map[string]float64{}
	var lines []string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "stage" {
			v, err := strconv.ParseFloat(f[2], 64)
			if err != nil {
				b.Fatalf("shell pipeline: %q", sc.Text())
			}
			stages[f[1]] = v
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("shell pipeline: %v\n%s", err, strings.Join(lines, "\n"))
	}
	for _, s := range []string{"verity", "uki", "disk", "gcp"} {
		if _, ok := stages[s]; !ok {
			b.Fatalf("shell pipeline printed no stage %s:\n%s", s, strings.Join(lines, "\n"))
		}
	}
	return stages
}

// BenchmarkDist runs `imgpost dist` (the Run function, GCP on) beside the shell
// pipeline on the same squashfs (IMGPOST_BENCH_MIB, default 64), kernel,
// initramfs and stub, in the same run, and reports the whole chain's time
// against the shell's verity+uki+disk+gcp total ("x-faster-than-shell"), the
// same without imgpost's bare-metal tarball (which the shell's total does not
// include: "x-faster-than-shell-same-stages"), and the time of each side.
func BenchmarkDist(b *testing.B) {
	testutil.Need(b, "bash", "veritysetup", "objcopy", "objdump", "sgdisk", "mkfs.vfat", "mcopy", "tar", "pigz", "mksquashfs")
	sq := testutil.BenchSquashfs(b)
	st, err := os.Stat(sq)
	if err != nil {
		b.Fatal(err)
	}
	inDir := b.TempDir()
	in := testutil.MakeDistInputs(b, inDir, 0, 1)
	in.Rootfs = sq
	w := benchWorkDir(b, 6*st.Size()+(1<<30))
	local := filepath.Join(w, "rootfs.squashfs")
	testutil.Run(b, "cp", sq, local)
	script := shellPipeline(b)

	var shell map[string]float64
	var tDist, tDistSame time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		sdir := filepath.Join(w, "shell")
		shell = runShell(b, script, local, in.Kernel, in.Initrd, in.Stub, sdir)
		os.RemoveAll(sdir)

		out := filepath.Join(w, "imgpost")
		o := Options{Kernel: in.Kernel, Initrd: in.Initrd, Rootfs: local, Stub: in.Stub,
			DistName: "dstack", Version: "bench", Flavor: "prod", OutDir: out}
		if testing.Verbose() {
			o.Log = os.Stderr // stage lines with their times
		}
		b.StartTimer()
		t0 := time.Now()
		if _, err := Run(o); err != nil {
			b.Fatal(err)
		}
		tDist = time.Since(t0)
		b.StopTimer()
		os.RemoveAll(out)

		o.NoTarball = true
		t0 = time.Now()
		if _, err := Run(o); err != nil {
			b.Fatal(err)
		}
		tDistSame = time.Since(t0)
		os.RemoveAll(out)
		b.StartTimer()
	}
	b.StopTimer()
	total := shell["verity"] + shell["uki"] + shell["disk"] + shell["gcp"]
	b.ReportMetric(total/tDist.Seconds(), "x-faster-than-shell")
	b.ReportMetric(total/tDistSame.Seconds(), "x-faster-than-shell-same-stages")
	b.ReportMetric(tDist.Seconds(), "s-imgpost-dist")
	b.ReportMetric(tDistSame.Seconds(), "s-imgpost-dist-no-tarball")
	b.ReportMetric(total, "s-shell-total")
	for _, s := range []string{"verity", "uki", "disk", "gcp", "gcp-pigz"} {
		b.ReportMetric(shell[s], "s-shell-"+s)
	}
	b.ReportMetric(float64(st.Size())/(1<<20), "MiB")
}
