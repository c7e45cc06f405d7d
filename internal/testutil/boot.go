package testutil

import (
	"path/filepath"
	"sort"
	"testing"
)

// DebianKernel returns the newest installed Debian kernel image
// (/boot/vmlinuz-*-amd64, package linux-image-amd64), an x86 bzImage with an
// EFI stub. Missing: fails under CI, skips elsewhere.
func DebianKernel(t testing.TB) string {
	t.Helper()
	m, _ := filepath.Glob("/boot/vmlinuz-*-amd64")
	if len(m) == 0 {
		NeedFile(t, "/boot/vmlinuz-*-amd64", "linux-image-amd64")
	}
	sort.Strings(m)
	return m[len(m)-1]
}

// DebianStub is where Debian's systemd-boot-efi installs the x86-64 systemd
// EFI stub.
const DebianStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
