package demo

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/internal/bootscripts"
	"github.com/Dstack-TEE/meta-dstack/internal/initramfs"
)

// Deploy is an assembled deploy directory (absolute paths of its files).
type Deploy struct {
	Dir    string
	Kernel string // bzImage
	Initrd string // dstack-initramfs.cpio.gz
	Rootfs string // dstack-rootfs.squashfs
	Stub   string // linuxx64.efi.stub
	OVMF   string // ovmf.fd
}

// File names in the deploy directory (those BitBake's image class hands to imgpost dist).
const (
	KernelName = "bzImage"
	InitrdName = "dstack-initramfs.cpio.gz"
	RootfsName = "dstack-rootfs.squashfs"
	StubName   = "linuxx64.efi.stub"
	OVMFName   = "ovmf.fd"
)

// Console lines the demo rootfs prints (the boot tests look for them).
const (
	MarkRootUp   = "[demo] verified rootfs is up"
	MarkRootHash = "[demo] verified root hash: "
	MarkDataDisk = "[demo] data disk: "
	MarkDone     = "[demo] done, powering off"
)

// RootfsInit is the demo rootfs's /sbin/init (busybox sh).
const RootfsInit = `#!/bin/sh
# dstack demo rootfs /sbin/init: show that the verified rootfs is up, run
# dstack-prepare, power off.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
set -f
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
echo "` + MarkRootUp + `"
while read -r dev mnt fstype opts rest; do
	[ "$mnt" = / ] && echo "[demo] / is $dev ($fstype, $opts)"
done </proc/mounts
. /usr/lib/dstack/devspec.sh
if dstack_cmdline_get dstack.rootfs_hash; then
	echo "` + MarkRootHash + `$DSTACK_VALUE"
fi
/usr/bin/dstack-prepare
echo "[demo] dstack-prepare exit status $?"
if [ -r /run/dstack/data_dev ]; then
	echo "` + MarkDataDisk + `$(cat /run/dstack/data_dev)"
else
	echo "` + MarkDataDisk + `(none)"
fi
echo "` + MarkDone + `"
sync
poweroff -f
`

// AgentStandIn is the demo rootfs's /usr/bin/dstack-util: the real guest agent
// is not part of this repository; the stand-in shows the hand-off.
const AgentStandIn = `#!/bin/sh
echo "[demo] dstack-util stand-in called: $*"
`

// InitramfsModules is the load-order list of kernel modules the initramfs
// needs on h's kernel (paths relative to the modules directory).
func (h Host) InitramfsModules() ([]string, error) {
	return ModuleClosure(h.ModulesDir, DemoModules)
}

// BuildInitramfs writes the demo initramfs (gzipped newc cpio) to out.
func BuildInitramfs(h Host, repoRoot string, out io.Writer) error {
	w, err := initramfs.NewWriter(out, initramfs.Options{Gzip: true})
	if err != nil {
		return err
	}
	if err := initramfs.AddSkeleton(w, "/dev", "/proc", "/sys", "/run", "/tmp", "/newroot"); err != nil {
		return err
	}
	if err := addRepoFile(w, repoRoot, bootscripts.InitPath, bootscripts.InstalledInit, 0o755); err != nil {
		return err
	}
	if err := addRepoFile(w, repoRoot, bootscripts.DevspecPath, bootscripts.InstalledDevspec, 0o644); err != nil {
		return err
	}
	mods, err := h.InitramfsModules()
	if err != nil {
		return err
	}
	var list strings.Builder
	for _, m := range mods {
		data, err := readModule(filepath.Join(h.ModulesDir, m))
		if err != nil {
			return err
		}
		dest := path.Join("/lib/modules", h.KernelVersion, stripCompression(m))
		if err := w.AddFile(dest, data, 0o644); err != nil {
			return err
		}
		list.WriteString(dest + "\n")
	}
	if err := w.AddFile(bootscripts.ModulesList, []byte(list.String()), 0o644); err != nil {
		return err
	}
	if err := addProgram(w, h.Veritysetup, "/usr/sbin/veritysetup"); err != nil {
		return err
	}
	if err := initramfs.AddBusyboxFrom(w, h.Busybox, "/bin/busybox"); err != nil {
		return err
	}
	return w.Close()
}

func addRepoFile(w *initramfs.Writer, repoRoot, rel, dest string, perm os.FileMode) error {
	data, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return w.AddFile(dest, data, perm)
}

// addProgram adds a dynamically linked host program at dest with its
// interpreter and libraries at their host paths.
func addProgram(w *initramfs.Writer, bin, dest string) error {
	libs, err := SharedLibs(bin)
	if err != nil {
		return err
	}
	if err := w.AddFileFrom(dest, bin); err != nil {
		return err
	}
	for _, l := range libs {
		real, err := filepath.EvalSymlinks(l)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		if err := w.AddFileFrom(l, real); err != nil {
			return err
		}
	}
	return nil
}

func stripCompression(p string) string {
	for _, s := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(p, ".ko"+s) {
			return strings.TrimSuffix(p, s)
		}
	}
	return p
}

// readModule returns a module's ELF bytes, decompressing .ko.gz in Go and
// .ko.xz/.ko.zst with the xz/zstd tools (busybox insmod takes plain .ko).
func readModule(p string) ([]byte, error) {
	switch {
	case strings.HasSuffix(p, ".ko"):
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		return data, nil
	case strings.HasSuffix(p, ".ko.gz"):
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("demo: %s: %w", p, err)
		}
		data, err := io.ReadAll(zr)
		if err != nil {
			return nil, fmt.Errorf("demo: %s: %w", p, err)
		}
		return data, nil
	case strings.HasSuffix(p, ".ko.xz"), strings.HasSuffix(p, ".ko.zst"):
		tool := map[bool]string{true: "xz", false: "zstd"}[strings.HasSuffix(p, ".xz")]
		var stderr bytes.Buffer
		cmd := exec.Command(tool, "-dc", p)
		cmd.Stderr = &stderr
		data, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("demo: %s -dc %s: %v: %s (Debian package %s-utils)", tool, p, err, stderr.String(), tool)
		}
		return data, nil
	}
	return nil, fmt.Errorf("demo: %s: unknown kernel module format", p)
}

// StageRootfs fills dir (which must be empty or absent) with the demo rootfs tree.
func StageRootfs(h Host, repoRoot, dir string) error {
	mk := func(rel string, perm os.FileMode) error {
		return os.MkdirAll(filepath.Join(dir, rel), perm)
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "var", "etc", "root", "sbin", "bin", "usr/bin", "usr/sbin", "usr/lib/dstack"} {
		if err := mk(d, 0o755); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	write := func(rel string, data []byte, perm os.FileMode) error {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		if err := os.WriteFile(p, data, perm); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		return os.Chmod(p, perm)
	}
	copyIn := func(src, rel string, perm os.FileMode) error {
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		return write(rel, data, perm)
	}
	if err := write("sbin/init", []byte(RootfsInit), 0o755); err != nil {
		return err
	}
	if err := write("usr/bin/dstack-util", []byte(AgentStandIn), 0o755); err != nil {
		return err
	}
	if err := write("etc/os-release", []byte("NAME=\"dstack demo\"\nID=dstack-demo\n"), 0o644); err != nil {
		return err
	}
	if err := copyIn(filepath.Join(repoRoot, bootscripts.DevspecPath), strings.TrimPrefix(bootscripts.InstalledDevspec, "/"), 0o644); err != nil {
		return err
	}
	if err := copyIn(filepath.Join(repoRoot, bootscripts.PreparePath), strings.TrimPrefix(bootscripts.InstalledPrepare, "/"), 0o755); err != nil {
		return err
	}
	if err := copyIn(h.Sgdisk, "usr/sbin/sgdisk", 0o755); err != nil {
		return err
	}
	libs, err := SharedLibs(h.Sgdisk)
	if err != nil {
		return err
	}
	for _, l := range libs {
		real, err := filepath.EvalSymlinks(l)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		if err := copyIn(real, strings.TrimPrefix(l, "/"), 0o755); err != nil {
			return err
		}
	}
	if err := copyIn(h.Busybox, "bin/busybox", 0o755); err != nil {
		return err
	}
	out, err := exec.Command(h.Busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("demo: %s --list-full: %w", h.Busybox, err)
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)
	for _, a := range applets {
		p := filepath.Join(dir, a)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		if err := os.Symlink("/bin/busybox", p); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	return nil
}

// BuildRootfs makes the demo squashfs at out (reproducibly: fixed times, root
// ownership) with mksquashfs.
func BuildRootfs(h Host, repoRoot, out string) error {
	stage, err := os.MkdirTemp(filepath.Dir(out), ".rootfs-stage-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(stage)
	if err := StageRootfs(h, repoRoot, filepath.Join(stage, "root")); err != nil {
		return err
	}
	tmp := filepath.Join(stage, "rootfs.squashfs")
	cmd := exec.Command(h.Mksquashfs, filepath.Join(stage, "root"), tmp, "-noappend", "-all-root",
		"-mkfs-time", "0", "-all-time", "0", "-no-xattrs", "-no-progress", "-quiet", "-processors", "1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("demo: mksquashfs: %v\n%s", err, b)
	}
	if _, err := atomicfile.Copy(out, tmp, 0o644, nil); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// Assemble writes a deploy directory in dir from the host parts h and the
// layer's scripts under repoRoot.
func Assemble(h Host, repoRoot, dir string) (Deploy, error) {
	d := Deploy{
		Dir:    dir,
		Kernel: filepath.Join(dir, KernelName),
		Initrd: filepath.Join(dir, InitrdName),
		Rootfs: filepath.Join(dir, RootfsName),
		Stub:   filepath.Join(dir, StubName),
		OVMF:   filepath.Join(dir, OVMFName),
	}
	if h.Kernel == "" || h.Busybox == "" || h.Veritysetup == "" || h.Sgdisk == "" || h.Stub == "" || h.OVMF == "" || h.Mksquashfs == "" {
		return d, errNoHost
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return d, fmt.Errorf("demo: %w", err)
	}
	for _, c := range [][2]string{{h.Kernel, d.Kernel}, {h.Stub, d.Stub}, {h.OVMF, d.OVMF}} {
		if _, err := atomicfile.Copy(c[1], c[0], 0o644, nil); err != nil {
			return d, fmt.Errorf("demo: %w", err)
		}
	}
	f, err := atomicfile.Create(d.Initrd, 0o644)
	if err != nil {
		return d, fmt.Errorf("demo: %w", err)
	}
	defer f.Abort()
	if err := BuildInitramfs(h, repoRoot, f); err != nil {
		return d, fmt.Errorf("demo: initramfs: %w", err)
	}
	if err := f.Commit(); err != nil {
		return d, fmt.Errorf("demo: %w", err)
	}
	if err := BuildRootfs(h, repoRoot, d.Rootfs); err != nil {
		return d, err
	}
	return d, nil
}
