package measure

import (
	"bytes"
	"crypto"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/initramfs"
	"github.com/Dstack-TEE/meta-dstack/internal/qemu"
	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/uki"
)

// dumpInit is the guest's /init: print the firmware's TCG event log in
// base64 between markers, then power off.
const dumpInit = `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security
echo "CMDLINE[$(cat /proc/cmdline)]"
echo BEGIN-EVENT-LOG
base64 /sys/kernel/security/tpm0/binary_bios_measurements
echo END-EVENT-LOG
poweroff -f
`

var logRE = regexp.MustCompile(`(?s)BEGIN-EVENT-LOG\r?\n(.*?)END-EVENT-LOG`)

// swtpm starts a software TPM 2.0 with SHA-256 and SHA-384 banks and returns
// the QEMU arguments that attach it (tpm-tis).
func swtpm(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	testutil.Run(t, "swtpm_setup", "--tpm2", "--tpmstate", dir, "--pcr-banks", "sha256,sha384", "--overwrite")
	sock := filepath.Join(dir, "sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--ctrl", "type=unixio,path="+sock, "--terminate")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return []string{"-chardev", "socket,id=chrtpm,path=" + sock,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"}
}

var cmdlineRE = regexp.MustCompile(`CMDLINE\[(.*)\]`)

// vtpmOVMFEnv names a directory with another TPM-enabled OVMF (an edk2
// build's FV directory: OVMF_CODE.fd, OVMF_VARS.fd) for the boots below,
// e.g. an EDK II that prepends "initrd=initrd" (edk2-stable202508 and
// later); by default they use Debian's.
const vtpmOVMFEnv = "IMGPOST_TEST_VTPM_OVMF"

// bootLog boots cfg with a fresh software TPM and returns the guest's
// binary_bios_measurements and /proc/cmdline.
func bootLog(t *testing.T, cfg qemu.Config) ([]byte, string) {
	t.Helper()
	cfg.ExtraArgs = append(cfg.ExtraArgs, swtpm(t)...)
	if d := os.Getenv(vtpmOVMFEnv); d != "" {
		cfg.Firmware, cfg.Vars = filepath.Join(d, "OVMF_CODE.fd"), filepath.Join(d, "OVMF_VARS.fd")
	}
	cfg.LogPath = filepath.Join(t.TempDir(), "console.log")
	vm, err := qemu.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	m, err := vm.WaitFor(logRE, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var cmdline string
	if c := cmdlineRE.FindStringSubmatch(vm.Output()); c != nil {
		cmdline = strings.TrimSpace(c[1])
	}
	b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(m[1]), ""))
	if err != nil {
		t.Fatalf("event log base64: %v", err)
	}
	return b, cmdline
}

func findEvent(l *Log, pcr, typ uint32, digest []byte) bool {
	for _, e := range l.Events {
		if e.Index == pcr && e.Type == typ && bytes.Equal(e.Digest, digest) {
			return true
		}
	}
	return false
}

func describe(l *Log, pcrs ...uint32) string {
	var b strings.Builder
	for _, e := range l.Events {
		for _, p := range pcrs {
			if e.Index == p {
				fmt.Fprintf(&b, "  PCR%d %#x %x %q\n", e.Index, e.Type, e.Digest, e.Data[:min(len(e.Data), 48)])
			}
		}
	}
	return b.String()
}

func vtpmNeeds(t *testing.T) (kernel, initrd string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boot test (-short)")
	}
	testutil.Need(t, "qemu-system-x86_64", "swtpm", "swtpm_setup")
	testutil.NeedFile(t, "/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf")
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	kernel = testutil.DebianKernel(t)
	initrd = filepath.Join(t.TempDir(), "initrd.cpio.gz")
	var b bytes.Buffer
	if err := initramfs.BusyboxImage(&b, dumpInit, true); err != nil {
		t.Skipf("busybox initramfs: %v (install busybox-static)", err)
	}
	if err := os.WriteFile(initrd, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return kernel, initrd
}

// Direct kernel boot under OVMF with a vTPM: the firmware logs the
// QEMU-patched kernel's Authenticode digest as predicted (at a memory size
// where the initrd address depends on it), and the kernel's EFI stub logs
// the command line and the initrd as predicted.
func TestVTPMDirectKernelBoot(t *testing.T) {
	kernel, initrd := vtpmNeeds(t)
	const memMiB = 2560 // between 2 GiB and 0xB0000000: the initrd address depends on it
	cmdline := "console=ttyS0 quiet measure-test"
	raw, seen := bootLog(t, qemu.Config{MemoryMiB: memMiB, Kernel: kernel, Initrd: initrd, Append: cmdline})
	// The command line the kernel got shows where this OVMF puts
	// "initrd=initrd" (the string the EFI stub measures on newer kernels).
	switch seen {
	case MeasuredCmdline(cmdline, InitrdSuffix):
		t.Logf("OVMF appends the initrd word: %q", seen)
	case MeasuredCmdline(cmdline, InitrdPrefix):
		t.Logf("OVMF prepends the initrd word: %q", seen)
	default:
		t.Errorf("guest command line %q is neither form of %q", seen, cmdline)
	}
	l, err := ParseTCG2(raw, AlgSHA384, false)
	if err != nil {
		t.Fatal(err)
	}
	kf, _ := os.Open(kernel)
	defer kf.Close()
	st, _ := kf.Stat()
	ib, _ := os.ReadFile(initrd)
	want, err := PatchedKernelAuthenticode(kf, st.Size(), uint64(len(ib)), memMiB<<20, crypto.SHA384)
	if err != nil {
		t.Fatal(err)
	}
	if !findEvent(l, 4, EvEFIBootServicesApp, want) {
		t.Errorf("no PCR4 application event with the predicted kernel digest %x; log:\n%s", want, describe(l, 4))
	}
	isum := sha512.Sum384(ib)
	if !findEvent(l, 9, EvEventTag, isum[:]) {
		t.Errorf("no PCR9 initrd event with %x; log:\n%s", isum, describe(l, 9))
	}
	// Linux's EFI stub (6.1 and later) tags its command line
	// "LOADED_IMAGE::LoadOptions" in PCR 9 (RTMR2 on TDX): the digest is
	// the prediction for the form (suffix or prefix) the guest saw.
	var logged []byte
	for _, e := range l.Events {
		if e.Index == 9 && e.Type == EvEventTag && bytes.Contains(e.Data, []byte("LOADED_IMAGE::LoadOptions\x00")) {
			logged = e.Digest
		}
	}
	if logged == nil {
		t.Fatalf("no PCR9 LoadOptions event; log:\n%s", describe(l, 9))
	}
	if want := sha384(UTF16Z(seen)); !bytes.Equal(logged, want) {
		t.Errorf("command line %q: predicted %x, logged %x", seen, want, logged)
	}
	t.Logf("command line measured as %q: %x", seen, logged)
}

// A UKI booted from an ESP (the GCP path): the firmware logs its
// Authenticode digest — SHA-256 and SHA-384 banks — computed without
// padding; the UKI is made odd-sized so that padding would show.
func TestVTPMUKIBoot(t *testing.T) {
	kernel, initrd := vtpmNeeds(t)
	esp := t.TempDir()
	boot := filepath.Join(esp, "EFI", "BOOT")
	if err := os.MkdirAll(boot, 0o755); err != nil {
		t.Fatal(err)
	}
	ukiPath := filepath.Join(boot, "BOOTX64.EFI")
	if _, err := uki.Build(uki.Options{Stub: testutil.DebianStub, Linux: kernel, Initrds: []string{initrd},
		Cmdline: "console=ttyS0 quiet", Out: ukiPath}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(ukiPath)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, make([]byte, 8+3-len(b)%8)...) // trailing bytes, odd size
	if err := os.WriteFile(ukiPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// QEMU's vvfat presents the directory as a FAT disk: the removable-media
	// boot path finds EFI/BOOT/BOOTX64.EFI.
	raw, _ := bootLog(t, qemu.Config{MemoryMiB: 1024, ExtraArgs: []string{"-drive", "file=fat:" + esp + ",format=raw,if=virtio,readonly=on"}})
	for _, alg := range []struct {
		id uint16
		h  crypto.Hash
	}{{AlgSHA256, crypto.SHA256}, {AlgSHA384, crypto.SHA384}} {
		l, err := ParseTCG2(raw, alg.id, false)
		if err != nil {
			t.Fatal(err)
		}
		want, err := authenticode.FirmwareDigest(bytes.NewReader(b), int64(len(b)), alg.h)
		if err != nil {
			t.Fatal(err)
		}
		if !findEvent(l, 4, EvEFIBootServicesApp, want) {
			t.Errorf("alg %#x: no PCR4 application event with the predicted UKI digest %x; log:\n%s", alg.id, want, describe(l, 4))
		}
		pb := append(bytes.Clone(b), make([]byte, 8-len(b)%8)...)
		padded, _ := authenticode.FirmwareDigest(bytes.NewReader(pb), int64(len(pb)), alg.h)
		if findEvent(l, 4, EvEFIBootServicesApp, padded) {
			t.Errorf("alg %#x: the firmware logged the zero-padded digest", alg.id)
		}
		if alg.id == AlgSHA256 {
			t.Logf("odd-sized UKI (%d bytes): firmware logged %s", len(b), hex.EncodeToString(want))
		}
	}
}
