// Package bootscripts locates the layer's boot-chain shell scripts (the
// initramfs /init, the devspec.sh device-spec library and dstack-prepare) and
// runs them under busybox for tests. Its tests lint the scripts and exercise
// devspec.sh on a fake sysfs and /dev tree.
package bootscripts

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Paths of the scripts relative to the repository root.
const (
	InitPath    = "meta-dstack/recipes-core/initramfs-dstack-init/files/init"
	DevspecPath = "meta-dstack/recipes-core/dstack-devspec/files/devspec.sh"
	PreparePath = "meta-dstack/recipes-core/dstack-prepare/files/dstack-prepare"
)

// Installed paths of the scripts inside the images.
const (
	InstalledInit    = "/init"
	InstalledDevspec = "/usr/lib/dstack/devspec.sh"
	InstalledPrepare = "/usr/bin/dstack-prepare"
	// ModulesList is the file /init reads kernel module paths from, one per line.
	ModulesList = "/etc/dstack/modules"
)

// BusyboxBin makes dir/bin holding a symlink to busybox for every applet it
// provides and returns that directory, so a script run with PATH set to it
// sees busybox's tools only, as in the initramfs.
func BusyboxBin(busybox, dir string) (string, error) {
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return "", fmt.Errorf("%s --list: %w", busybox, err)
	}
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	for _, applet := range strings.Fields(string(out)) {
		if strings.Contains(applet, "/") {
			continue
		}
		if err := os.Symlink(busybox, filepath.Join(bin, applet)); err != nil && !os.IsExist(err) {
			return "", fmt.Errorf("busybox applet %s: %w", applet, err)
		}
	}
	return bin, nil
}
