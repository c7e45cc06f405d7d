package uki

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// benchInitrdMiB is the initrd size of the UKI benchmark (a dstack
// initramfs is a few MiB; a kernel about 8 MiB).
const benchInitrdMiB = 32

func benchInitrd(b *testing.B) string {
	p := filepath.Join(os.TempDir(), fmt.Sprintf("imgpost-bench-initrd-%dMiB", benchInitrdMiB))
	if st, err := os.Stat(p); err == nil && st.Size() == benchInitrdMiB<<20 {
		return p
	}
	testutil.WriteRandom(b, p+".tmp", benchInitrdMiB<<20, 42)
	if err := os.Rename(p+".tmp", p); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkUKI builds the same UKI with Build and with the shell pipeline's
// objcopy --add-section/--change-section-vma command
// (../shared/bench/shell-pipeline.sh, stage uki), in the same run, and
// reports objcopy's time over imgpost's as x-vs-objcopy.
func BenchmarkUKI(b *testing.B) {
	testutil.Need(b, "objcopy")
	testutil.NeedFile(b, testutil.DebianStub, "systemd-boot-efi")
	kernel := testutil.DebianKernel(b)
	initrd := benchInitrd(b)
	dir := b.TempDir()
	osrel := filepath.Join(dir, "osrel.txt")
	os.WriteFile(osrel, []byte("NAME=dstack\n"), 0o644)
	cmdline := "console=ttyS0 panic=1 coherent_pool=8M dstack.rootfs_hash=" + strings.Repeat("ab", 32) +
		" dstack.rootfs_size=1073741824 dstack.rootfs_device=PARTLABEL=dstack-rootfs"
	clFile := filepath.Join(dir, "cmdline.txt")
	os.WriteFile(clFile, []byte(cmdline), 0o644)
	opts := Options{Stub: testutil.DebianStub, Linux: kernel, Initrds: []string{initrd}, Cmdline: cmdline,
		OSRelease: osrel, Out: filepath.Join(dir, "imgpost-uki.efi")}

	// objcopy's section addresses, computed as the shell script does.
	stub, _ := os.ReadFile(opts.Stub)
	h, err := parseStub(stub, opts.Stub)
	if err != nil {
		b.Fatal(err)
	}
	var end uint64
	for _, s := range h.sections {
		end = max(end, uint64(s.virtualAddr)+uint64(s.virtualSize))
	}
	sa := uint64(h.sectionAlign)
	ksize := uint64(fileLen(b, kernel))
	aOsrel := alignUp(end, sa)
	aCmd := alignUp(aOsrel+uint64(fileLen(b, osrel)), sa)
	aLinux := alignUp(aCmd+uint64(len(cmdline)), sa)
	aInitrd := alignUp(aLinux+ksize, sa)
	objcopyArgs := []string{
		"--add-section", ".osrel=" + osrel, "--change-section-vma", fmt.Sprintf(".osrel=0x%x", aOsrel),
		"--add-section", ".cmdline=" + clFile, "--change-section-vma", fmt.Sprintf(".cmdline=0x%x", aCmd),
		"--add-section", ".linux=" + kernel, "--change-section-vma", fmt.Sprintf(".linux=0x%x", aLinux),
		"--add-section", ".initrd=" + initrd, "--change-section-vma", fmt.Sprintf(".initrd=0x%x", aInitrd),
		opts.Stub, filepath.Join(dir, "objcopy-uki.efi"),
	}

	var tImg, tObj time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := Build(opts); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if out, err := exec.Command("objcopy", objcopyArgs...).CombinedOutput(); err != nil {
			b.Fatalf("objcopy: %v\n%s", err, out)
		}
		t2 := time.Now()
		tImg += t1.Sub(t0)
		tObj += t2.Sub(t1)
	}
	b.StopTimer()
	b.ReportMetric(float64(tImg.Milliseconds())/float64(b.N), "imgpost-ms")
	b.ReportMetric(float64(tObj.Milliseconds())/float64(b.N), "objcopy-ms")
	b.ReportMetric(tObj.Seconds()/tImg.Seconds(), "x-vs-objcopy")
}

func fileLen(b *testing.B, p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}
