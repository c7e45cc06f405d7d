package disk

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
)

// benchMiB is IMGPOST_BENCH_MIB (default 64).
func benchMiB(b *testing.B) int64 {
	n := int64(64)
	if s := os.Getenv("IMGPOST_BENCH_MIB"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v <= 0 {
			b.Fatalf("IMGPOST_BENCH_MIB=%q: want a positive number of MiB", s)
		}
		n = v
	}
	return n
}

// BenchInputs returns a rootfs.img.verity stand-in of IMGPOST_BENCH_MIB MiB of
// incompressible data and a 32 MiB fake UKI (the Debian stub + random bytes),
// cached under os.TempDir()/imgpost-bench.
func benchInputs(b *testing.B) (rootfs, uki string) {
	b.Helper()
	testutil.NeedFile(b, stubPath, "systemd-boot-efi")
	mib := benchMiB(b)
	dir := filepath.Join(os.TempDir(), "imgpost-bench")
	os.MkdirAll(dir, 0o755)
	rootfs = filepath.Join(dir, fmt.Sprintf("disk-rootfs-%dMiB.img", mib))
	if st, err := os.Stat(rootfs); err != nil || st.Size() != mib*MiB+1234 {
		testutil.WriteRandom(b, rootfs+".tmp", mib*MiB+1234, 42)
		os.Rename(rootfs+".tmp", rootfs)
	}
	uki = filepath.Join(dir, "disk-uki-32MiB.efi")
	if _, err := os.Stat(uki); err != nil {
		p := fakeUKI(b, b.TempDir(), 32*MiB)
		testutil.Run(b, "cp", p, uki)
	}
	return rootfs, uki
}

// benchWorkDir is where the benchmark writes (testutil.BenchDir: tmpfs, or
// IMGPOST_BENCH_DIR to measure on a build's disk file system).
func benchWorkDir(b *testing.B, need int64) string {
	return testutil.BenchDir(b, "imgpost-bench-disk-", 3*need)
}

// shellDisk is the disk() stage of ../shared/bench/shell-pipeline.sh (the
// upstream shell build's sgdisk + mkfs.vfat + mmd + mcopy + dd), verbatim.
const shellDisk = `set -euo pipefail
align() { echo $(( ($1 + $2 - 1) / $2 * $2 )); }
disk() {
  local A=$((1024 * 1024)) EFI=$((256 * 1024 * 1024)) rsz total d="$W/gcp/disk.raw"
  rsz=$(align "$(stat -c %s "$W/rootfs.img.verity")" $A)
  total=$(align $((A + EFI + rsz + A)) $A)
  rm -f "$d"; truncate -s "$total" "$d"
  sgdisk --zap-all "$d" >/dev/null
  sgdisk --disk-guid=d5acc000-0000-4000-8000-000000000000 \
    --new=1:2048:$((2048 + EFI / 512 - 1)) --typecode=1:ef00 --change-name=1:'EFI System Partition' "$d" >/dev/null
  sgdisk --new=2:$(((A + EFI) / 512)):$(((A + EFI + rsz) / 512 - 1)) --typecode=2:8300 \
    --change-name=2:dstack-rootfs "$d" >/dev/null
  rm -f "$W/efi.img"
  mkfs.vfat -F 32 -n DSTACKEFI -C "$W/efi.img" $((EFI / 1024)) >/dev/null
  mmd -i "$W/efi.img" ::EFI ::EFI/BOOT
  mcopy -i "$W/efi.img" "$W/dstack-uki.efi" ::EFI/BOOT/BOOTX64.EFI
  dd if="$W/efi.img" of="$d" bs=$A seek=1 conv=notrunc status=none
  dd if="$W/rootfs.img.verity" of="$d" bs=$A seek=$(((A + EFI) / A)) conv=notrunc status=none
}
disk
`

// BenchmarkDisk builds disk.raw with Build and with the shell pipeline's disk
// stage on the same inputs in the same run; x-vs-shell is the shell's time
// over imgpost's (best of 2 each).
func BenchmarkDisk(b *testing.B) {
	testutil.Need(b, "sgdisk", "mkfs.vfat", "mmd", "mcopy", "dd", "bash")
	rootfs, uki := benchInputs(b)
	st, _ := os.Stat(rootfs)
	w := benchWorkDir(b, 3*st.Size())
	// Inputs beside the outputs, under the names the script expects.
	testutil.Run(b, "cp", rootfs, filepath.Join(w, "rootfs.img.verity"))
	testutil.Run(b, "cp", uki, filepath.Join(w, "dstack-uki.efi"))
	os.Mkdir(filepath.Join(w, "gcp"), 0o755)
	var tImg, tSh, cImg, cSh time.Duration
	best := func(cur *time.Duration, d time.Duration) {
		if *cur == 0 || d < *cur {
			*cur = d
		}
	}
	out := filepath.Join(w, "imgpost-disk.raw")
	b.ResetTimer()
	for range b.N {
		for range 2 {
			b.StopTimer()
			os.Remove(filepath.Join(w, "gcp", "disk.raw"))
			cmd := exec.Command("bash", "-c", shellDisk)
			cmd.Env = append(os.Environ(), "W="+w)
			t0 := time.Now()
			if o, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("shell disk stage: %v\n%s", err, o)
			}
			best(&tSh, time.Since(t0))
			best(&cSh, cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime())
			os.Remove(filepath.Join(w, "gcp", "disk.raw"))
			os.Remove(filepath.Join(w, "efi.img"))
			os.Remove(out)
			b.StartTimer()
			c0 := cpuTime()
			t0 = time.Now()
			if _, err := BuildFile(out, filepath.Join(w, "dstack-uki.efi"), filepath.Join(w, "rootfs.img.verity"), Options{}); err != nil {
				b.Fatal(err)
			}
			best(&tImg, time.Since(t0))
			best(&cImg, cpuTime()-c0)
		}
	}
	b.StopTimer()
	b.ReportMetric(tSh.Seconds(), "s-shell")
	b.ReportMetric(tImg.Seconds(), "s-imgpost")
	b.ReportMetric(tSh.Seconds()/tImg.Seconds(), "x-vs-shell")
	b.ReportMetric(float64(st.Size())/tImg.Seconds()/1e6, "MB/s")
	// CPU time (user+sys) ratio: what the machine's load does not change.
	b.ReportMetric(cSh.Seconds()/cImg.Seconds(), "cpu-x-vs-shell")
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
