package disk

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/uki"
)

// lockedBuffer collects QEMU's serial output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestOVMFBootsFromESP attaches a built disk to QEMU as an NVMe drive with no
// boot entries: OVMF must find the GPT, read the FAT32 ESP and start
// EFI/BOOT/BOOTX64.EFI, a UKI whose kernel then prints the command line
// embedded in it (with a marker).
func TestOVMFBootsFromESP(t *testing.T) {
	if testing.Short() {
		t.Skip("QEMU boot")
	}
	testutil.Need(t, "qemu-system-x86_64")
	testutil.NeedFile(t, testutil.DebianOVMF, "ovmf")
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	vars := "/usr/share/OVMF/OVMF_VARS_4M.fd"
	testutil.NeedFile(t, vars, "ovmf")
	dir := t.TempDir()
	in := testutil.MakeDistInputs(t, dir, 4096, 1)
	marker := "dstack.disktest=" + strings.Repeat("7", 12)
	ukiPath := filepath.Join(dir, "dstack-uki.efi")
	if _, err := uki.Build(uki.Options{Stub: in.Stub, Linux: in.Kernel, Initrds: []string{in.Initrd},
		Cmdline: "console=ttyS0 panic=-1 " + marker, Out: ukiPath}); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs.img.verity")
	testutil.WriteRandom(t, rootfs, 3<<20, 5)
	img := filepath.Join(dir, "disk.raw")
	if _, err := BuildFile(img, ukiPath, rootfs, Options{}); err != nil {
		t.Fatal(err)
	}
	v := filepath.Join(dir, "vars.fd")
	testutil.Run(t, "cp", vars, v)

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "512",
		"-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-net", "none",
		"-drive", "if=pflash,format=raw,readonly=on,file="+testutil.DebianOVMF,
		"-drive", "if=pflash,format=raw,file="+v,
		"-drive", "file="+img+",if=none,id=d0,format=raw,readonly=on",
		"-device", "nvme,serial=dstack0,drive=d0")
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if s := out.String(); strings.Contains(s, "Command line:") && strings.Contains(s, marker) {
				cmd.Process.Kill()
				<-done
				return
			}
		case err := <-done:
			t.Fatalf("QEMU ended (%v) before the kernel printed its command line:\n%s", err, tail(out.String()))
		}
	}
}

func tail(s string) string {
	if len(s) > 3000 {
		return "…" + s[len(s)-3000:]
	}
	return s
}
