package guesttest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// The upgrade test's upstream-layout disk (LUKS2 header by cryptsetup, the
// file system encrypted by xtsEncrypt) against the kernel's dm-crypt: opened
// with cryptsetup and the disk key, it must read back as the plain file
// system. Needs root and device-mapper with loop devices; skipped without.
func TestUpstreamDiskOpensWithCryptsetup(t *testing.T) {
	testutil.Need(t, "cryptsetup", "mkfs.ext4")
	if os.Geteuid() != 0 {
		t.Skip("needs root (cryptsetup open)")
	}
	img, plain, pass := upstreamDisk(t, 24<<20)
	name := fmt.Sprintf("guesttest-%d", os.Getpid())
	if out, err := exec.Command("cryptsetup", "open", "--readonly", "--type", "luks2", "-d", pass, img, name).CombinedOutput(); err != nil {
		t.Skipf("cryptsetup open (device-mapper, loop devices) is not available here: %v: %s", err, bytes.TrimSpace(out))
	}
	defer exec.Command("cryptsetup", "close", name).Run()
	got, err := os.ReadFile("/dev/mapper/" + name)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("dm-crypt reads %d bytes that differ from the plain file system (%d bytes)", len(got), len(want))
	}
	testutil.Run(t, "e2fsck", "-f", "-n", "/dev/mapper/"+name)
}
