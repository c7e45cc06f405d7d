package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/initramfs"
	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

const probeInit = `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "PROBE-BEGIN[$(cat /proc/cmdline)]PROBE-END"
ls /dev > /dev/null
for d in /sys/bus/pci/devices/*; do echo "PCI $(cat $d/vendor):$(cat $d/device) $(cat $d/class)"; done
echo PROBE-DONE
poweroff -f
`

func writeProbe(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "probe.cpio.gz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := initramfs.BusyboxImage(f, probeInit, true); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDirectBoot boots Debian's kernel with a busybox initramfs under
// OVMF/TCG, with one virtio disk read-only and one NVMe disk writable, and
// checks the console shows the command line and the disks, then that QEMU
// exits on poweroff.
func TestDirectBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	testutil.Need(t, Binary, "cpio")
	testutil.NeedFile(t, initramfs.HostBusybox, "busybox-static")
	if _, _, err := FindOVMF(); err != nil {
		testutil.NeedFile(t, "/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf")
	}
	kernel := testutil.DebianKernel(t)
	dir := t.TempDir()
	disk1 := filepath.Join(dir, "a,b.raw") // comma: exercises escaping
	disk2 := filepath.Join(dir, "n.raw")
	testutil.WriteRandom(t, disk1, 1<<20, 1)
	testutil.WriteRandom(t, disk2, 1<<20, 2)
	cmdline := "console=ttyS0 panic=-1 dstack.test=a=b  x"
	var logPath = filepath.Join(dir, "console.log")
	vm, err := Start(Config{
		Kernel: kernel, Initrd: writeProbe(t, dir), Append: cmdline,
		Drives: []Drive{
			{Path: disk1, ReadOnly: true},
			{Path: disk2, Interface: NVMe},
		},
		LogPath: logPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	m, err := vm.WaitFor(regexp.MustCompile(`PROBE-BEGIN\[(.*)\]PROBE-END`), 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// OVMF's direct (fw_cfg) kernel boot appends " initrd=initrd" to the
	// command line it hands the kernel's EFI stub.
	if m[1] != cmdline+" initrd=initrd" {
		t.Errorf("guest /proc/cmdline %q, want %q", m[1], cmdline)
	}
	if _, err := vm.WaitFor(regexp.MustCompile(`PROBE-DONE`), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := vm.Wait(time.Minute); err != nil {
		t.Fatalf("QEMU did not exit after poweroff: %v", err)
	}
	out := vm.Output()
	// Debian's virtio_blk and nvme drivers are modules the probe does not
	// load, so look for the PCI functions: virtio-blk and an NVMe controller.
	for _, want := range []string{"PCI 0x1af4:0x1001 ", " 0x010802"} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	log, err := os.ReadFile(logPath)
	if err != nil || string(log) != out {
		t.Errorf("console log file differs from captured output (%v)", err)
	}
}

// TestExitAndTimeout checks that WaitFor reports QEMU's exit and a timeout.
func TestExitAndTimeout(t *testing.T) {
	testutil.Need(t, Binary)
	// No firmware: -bios of a file that is not firmware → QEMU exits quickly or hangs; use a bogus arg to force exit.
	vm, err := Start(Config{BIOS: "/dev/null", ExtraArgs: []string{"-no-such-option"}})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if _, err := vm.WaitFor(regexp.MustCompile("never"), time.Minute); !errors.Is(err, ErrExited) {
		t.Fatalf("want ErrExited, got %v", err)
	} else if !strings.Contains(err.Error(), "no-such-option") {
		t.Errorf("error lacks QEMU's stderr: %v", err)
	}

	code, vars, err := FindOVMF()
	if err != nil {
		t.Skip(err)
	}
	vm2, err := Start(Config{Firmware: code, Vars: vars}) // no disk: firmware sits in its menu/shell
	if err != nil {
		t.Fatal(err)
	}
	defer vm2.Close()
	if _, err := vm2.WaitFor(regexp.MustCompile("never-printed"), 3*time.Second); !errors.Is(err, ErrTimeout) {
		t.Fatalf("want ErrTimeout, got %v", err)
	}
	vm2.Kill()
	if !vm2.Exited() {
		t.Fatal("still running after Kill")
	}
}

func TestArgs(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want []string
		err  bool
	}{
		{"defaults", Config{Firmware: "C", BIOS: ""}, []string{"-machine q35 -accel tcg -m 512 -smp 1", "-no-reboot", "if=pflash,format=raw,unit=0,readonly=on,file=C", "unit=1,file=V"}, false},
		{"bios", Config{BIOS: "ovmf.fd", MemoryMiB: 2048}, []string{"-m 2048", "-bios ovmf.fd"}, false},
		{"nvme", Config{BIOS: "b", Drives: []Drive{{Path: "x", Interface: NVMe, ReadOnly: true}, {Path: "y", Interface: NVMe, Serial: "s"}}},
			[]string{"file=x,format=raw,readonly=on,if=none,id=nvme0 -device nvme,drive=nvme0,serial=nvme0", "id=nvme1 -device nvme,drive=nvme1,serial=s"}, false},
		{"virtio serial", Config{BIOS: "b", Drives: []Drive{{Path: "x"}, {Path: "y", Serial: "root,1"}, {Path: "z", Interface: IDE, Serial: "s"}}},
			[]string{"file=x,format=raw,if=virtio", "file=y,format=raw,if=none,id=disk0 -device virtio-blk-pci,drive=disk0,serial=root,,1", "file=z,format=raw,if=none,id=disk1 -device ide-hd,drive=disk1,serial=s"}, false},
		{"append without kernel", Config{BIOS: "b", Append: "x"}, nil, true},
		{"bad interface", Config{BIOS: "b", Drives: []Drive{{Path: "x", Interface: "scsi"}}}, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := c.cfg.Args("V")
			if c.err {
				if err == nil {
					t.Fatal("accepted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := strings.Join(a, " ")
			for _, w := range c.want {
				if !strings.Contains(s, w) {
					t.Errorf("%q lacks %q", s, w)
				}
			}
		})
	}
}
