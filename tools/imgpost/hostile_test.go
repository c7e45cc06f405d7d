package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
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

// Limits on a run of imgpost on a hostile input (issue 14: "an error within
// a second and bounded memory"). CPU time is what is bounded: the wall time
// is logged, and only checked against a looser limit, because the test
// machines are shared.
const (
	maxCPU  = time.Second
	maxWall = 10 * time.Second
	maxRSS  = 64 << 20
)

type bounded struct {
	stdout, stderr string
	code           int
	wall, cpu      time.Duration
	rss            int64 // bytes (ru_maxrss, the peak RSS)
}

// runBounded runs the imgpost binary, killing it after a minute.
func runBounded(t *testing.T, args ...string) bounded {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testutil.Imgpost(t), args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	start := time.Now()
	cmd.Run()
	r := bounded{stdout: so.String(), stderr: se.String(), wall: time.Since(start), code: cmd.ProcessState.ExitCode()}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.rss = ru.Maxrss << 10 // KiB on Linux
		r.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return r
}

func gunzipTo(t *testing.T, src, dst string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := out.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestHostileInputsBounded runs imgpost on each hang and crash input of
// issue 14 (testdata/hostile, made by the generators in disk, gcptar and
// pe): it must stop with an error naming the cause (inspect reports the
// disk's problem and exits 0, as it does for any unbootable disk), in
// bounded CPU time and memory, leaving no temporary file.
func TestHostileInputsBounded(t *testing.T) {
	dir := t.TempDir()
	h := func(n string) string { return filepath.Join("testdata", "hostile", n) }
	loop := gunzipTo(t, h("fat-cluster-loop.raw.gz"), filepath.Join(dir, "fat-cluster-loop.raw"))
	gpt := gunzipTo(t, h("gpt-entry-size-0xfffffff8.raw.gz"), filepath.Join(dir, "gpt-entry-size.raw"))
	pe0 := h("pe-size-of-optional-header-0.efi")
	sparse := h("gcp-sparse-member-2e62-bytes.tar.gz")
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"verify FAT cluster loop", []string{"verify", loop}, 1, "cluster chain loops"},
		{"inspect FAT cluster loop", []string{"inspect", loop}, 0, "cluster chain loops"},
		{"verify GPT entry size 0xFFFFFFF8", []string{"verify", gpt}, 1, "SizeOfPartitionEntry 4294967288"},
		{"inspect GPT entry size 0xFFFFFFF8", []string{"inspect", gpt}, 1, "SizeOfPartitionEntry 4294967288"},
		{"authenticode SizeOfOptionalHeader 0", []string{"authenticode", pe0}, 1, "SizeOfOptionalHeader"},
		{"authenticode --signer SizeOfOptionalHeader 0", []string{"authenticode", "--signer", pe0}, 1, "SizeOfOptionalHeader"},
		{"inspect SizeOfOptionalHeader 0", []string{"inspect", pe0}, 1, "SizeOfOptionalHeader"},
		{"verify sparse member of 2^62 bytes", []string{"verify", sparse}, 1, "above the"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runBounded(t, c.args...)
			t.Logf("exit %d, wall %v, CPU %v, peak RSS %.1f MiB", r.code, r.wall, r.cpu, float64(r.rss)/(1<<20))
			if r.code != c.code || !strings.Contains(r.stdout+r.stderr, c.want) {
				t.Fatalf("exit %d, want %d with %q:\n%s%s", r.code, c.code, c.want, r.stdout, r.stderr)
			}
			if c.code != 0 && !strings.Contains(r.stderr, filepath.Base(c.args[len(c.args)-1])) {
				t.Errorf("error does not name the file: %s", r.stderr)
			}
			if r.cpu > maxCPU || r.wall > maxWall || r.rss > maxRSS {
				t.Errorf("CPU %v (max %v), wall %v (max %v), RSS %d (max %d)", r.cpu, maxCPU, r.wall, maxWall, r.rss, int64(maxRSS))
			}
		})
	}
}

// TestVerifyLeavesNoTempOnSignal: verify of a GCP tarball killed half-way
// leaves nothing in TMPDIR (the extracted disk is unlinked as soon as it is
// created).
func TestVerifyLeavesNoTempOnSignal(t *testing.T) {
	tmp := t.TempDir()
	// A tarball whose member is 1 GiB of data: extraction takes a while.
	p := filepath.Join(t.TempDir(), "big-gcp.tar.gz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	hdr := make([]byte, 512)
	copy(hdr, "disk.raw")
	copy(hdr[100:], "0000644\x00")
	copy(hdr[124:], "\x80")
	binary.BigEndian.PutUint64(hdr[124+4:], 1<<30)
	hdr[156] = '0'
	copy(hdr[257:], "ustar\x0000")
	copy(hdr[148:], "        ")
	var sum int
	for _, c := range hdr {
		sum += int(c)
	}
	copy(hdr[148:], fmt.Sprintf("%06o\x00 ", sum))
	zw.Write(hdr)
	block := bytes.Repeat([]byte{1}, 1<<20)
	for i := 0; i < 1024; i++ {
		zw.Write(block)
	}
	zw.Close()
	f.Close()
	cmd := exec.Command(testutil.Imgpost(t), "verify", p)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Fatalf("left in TMPDIR: %v", ents)
	}
}
