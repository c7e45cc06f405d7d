package guesttest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/internal/demo"
	"github.com/Dstack-TEE/meta-dstack/internal/layerlint"
)

// The Debian root filesystem the runtime is tested in.
var (
	debSuite  = "bookworm"
	debMirror = "http://deb.debian.org/debian"
	// What the layer's image installs, in Debian's names: systemd with udev
	// and dbus (docker's systemd cgroup driver), kmod (modules are loaded on
	// demand here), docker with compose (bookworm has docker-compose 1.29;
	// the runner uses the compose plugin when there is one), and what
	// dstack-prepare, dstack-runtime and the dstack-util double run.
	debPackages = []string{
		"chrony", "cryptsetup-bin", "curl", "dbus", "docker-compose", "docker.io", "e2fsprogs",
		"fdisk", "gdisk", "iproute2", "jq", "kmod", "procps", "systemd", "systemd-sysv", "udev",
	}
	debOptions = []string{
		"--variant=minbase", "--format=tar",
		"--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		"--dpkgopt=path-exclude=/usr/share/doc/*",
	}
)

// Recipes whose do_install the test runs unchanged into the root, with the
// files directory each one's SRC_URI file:// entries come from.
var recipes = []string{
	"meta-dstack/recipes-core/dstack-devspec/dstack-devspec_1.0.bb",
	"meta-dstack/recipes-core/dstack-prepare/dstack-prepare_1.0.bb",
	"meta-dstack/recipes-dstack/dstack-runtime/dstack-runtime_1.0.bb",
	"meta-dstack/recipes-dstack/dstack-guest-agent/dstack-guest-agent_0.5.11.bb",
}

// BitBake's directory variables as an image of the layer's distro sets them
// (usrmerge), for running do_install outside BitBake.
var bbDirs = map[string]string{
	"bindir": "/usr/bin", "sbindir": "/usr/sbin", "libdir": "/usr/lib", "nonarch_libdir": "/usr/lib",
	"base_bindir": "/usr/bin", "base_sbindir": "/usr/sbin", "base_libdir": "/usr/lib",
	"nonarch_base_libdir": "/usr/lib", "sysconfdir": "/etc", "localstatedir": "/var",
	"datadir": "/usr/share", "systemd_unitdir": "/usr/lib/systemd",
	"systemd_system_unitdir": "/usr/lib/systemd/system",
}

// cargoSubdir stands for ${CARGO_TARGET_SUBDIR}: where the agent recipe's
// do_install takes the Rust binaries from (here: the doubles).
const cargoSubdir = "x86_64-unknown-linux-gnu/release"

// debianRootfs returns a tar of the Debian root, from the cache or built with
// mmdebstrap.
func debianRootfs(cacheDir string) (string, error) {
	key := sha256.Sum256([]byte(strings.Join(append(append([]string{debSuite, debMirror}, debOptions...), debPackages...), "\n")))
	tarPath := filepath.Join(cacheDir, "debian-"+debSuite+"-"+hex.EncodeToString(key[:6])+".tar")
	if _, err := os.Stat(tarPath); err == nil {
		return tarPath, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	tmp := tarPath + ".tmp"
	args := append([]string{}, debOptions...)
	args = append(args, "--include="+strings.Join(debPackages, ","), debSuite, tmp, debMirror)
	cmd := exec.Command("mmdebstrap", args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("mmdebstrap %s: %v\n%s", strings.Join(args, " "), err, tail(string(out), 3000))
	}
	return tarPath, os.Rename(tmp, tarPath)
}

// doInstall returns the body of a recipe's do_install as a shell script
// defining the function do_install.
func doInstall(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	fns, err := layerlint.Functions(path, data)
	if err != nil {
		return "", err
	}
	for _, f := range fns {
		if f.Name == "do_install" {
			if strings.Contains(f.Script, "BBPYTHON") || strings.Contains(f.Script, "${BB_") {
				return "", fmt.Errorf("%s: do_install uses inline Python or overrides, which only BitBake expands", path)
			}
			return f.Script, nil
		}
	}
	return "", fmt.Errorf("%s: no do_install", path)
}

var systemdService = regexp.MustCompile(`(?m)^SYSTEMD_SERVICE:\$\{PN\}\s*=\s*"([^"]*)"`)

// installRecipe runs a recipe's do_install with D=stage and returns the
// units its SYSTEMD_SERVICE enables.
func installRecipe(root, recipe, stage, build string) ([]string, error) {
	path := filepath.Join(root, recipe)
	script, err := doInstall(path)
	if err != nil {
		return nil, err
	}
	files := filepath.Join(filepath.Dir(path), "files")
	cmd := exec.Command("sh", "-e", "-c", script+"\ndo_install\n")
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "D=" + stage, "S=" + files, "UNPACKDIR=" + files,
		"WORKDIR=" + files, "B=" + build, "CARGO_TARGET_SUBDIR=" + cargoSubdir}
	for k, v := range bbDirs {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s: do_install: %v\n%s", recipe, err, out)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var units []string
	for _, m := range systemdService.FindAllStringSubmatch(string(data), -1) {
		units = append(units, strings.Fields(m[1])...)
	}
	return units, nil
}

// Kernel module directories copied into the guest root (with the modules
// they depend on): what docker, dm-crypt, ext4, overlayfs and 9p need of
// Debian's kernel, which builds them as modules.
var moduleDirs = []string{
	"kernel/fs/", "kernel/net/", "kernel/crypto/", "kernel/lib/", "kernel/arch/x86/crypto/",
	"kernel/drivers/md/", "kernel/drivers/block/", "kernel/drivers/virtio/", "kernel/drivers/char/hw_random/",
	"kernel/drivers/net/veth.ko", "kernel/drivers/net/tun.ko", "kernel/drivers/net/dummy.ko",
	"kernel/drivers/net/macvlan.ko", "kernel/drivers/net/virtio_net.ko", "kernel/drivers/net/net_failover.ko",
	"kernel/drivers/net/ipvlan/", "kernel/drivers/net/vxlan/",
}

// installModules copies the host kernel's modules the guest needs and runs depmod.
func installModules(h demo.Host, stage string) error {
	var names []string
	err := filepath.WalkDir(filepath.Join(h.ModulesDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(h.ModulesDir, p)
		for _, pre := range moduleDirs {
			if strings.HasPrefix(rel, pre) {
				b := filepath.Base(rel)
				names = append(names, b[:strings.Index(b, ".ko")])
				break
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	mods, err := demo.ModuleClosure(h.ModulesDir, names)
	if err != nil {
		return err
	}
	dst := filepath.Join(stage, "usr/lib/modules", h.KernelVersion)
	for _, m := range append(mods, "modules.order", "modules.builtin", "modules.builtin.modinfo") {
		if err := copyFile(filepath.Join(h.ModulesDir, m), filepath.Join(dst, m), 0o644); err != nil {
			return err
		}
	}
	if out, err := exec.Command("depmod", "-b", stage, h.KernelVersion).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod -b %s %s: %v\n%s", stage, h.KernelVersion, err, out)
	}
	return nil
}

// stageVersion changes whenever buildStage changes what it makes.
const stageVersion = "3"

// rootfsKey names a squashed guest root by what went into it: the Debian
// tar, the kernel's modules, the recipes' directories, the doubles and this
// package's additions.
func rootfsKey(root, debTar, kernelVersion string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%s\n%q\n", stageVersion, filepath.Base(debTar), kernelVersion, poweroffUnit, poweroffScript, moduleDirs)
	dirs := []string{"internal/guesttest/testdata"}
	for _, r := range recipes {
		dirs = append(dirs, filepath.Dir(r))
	}
	for _, d := range dirs {
		err := filepath.WalkDir(filepath.Join(root, d), func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			fmt.Fprintf(h, "%s %d\n", rel, len(b))
			h.Write(b)
			return nil
		})
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// The test's own additions to the root (not part of the layer): a unit that
// powers the VM off once the app said it is done (it touches
// /run/guesttest/app-done), or after 240 s without that, so QEMU ends and
// the data disk is unmounted cleanly.
const (
	poweroffUnit = `[Unit]
Description=guesttest (test only): power off once the app is done
Wants=app-compose.service
After=app-compose.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/guesttest-poweroff
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
`
	poweroffScript = `#!/bin/sh
for i in $(seq 240); do
	if [ -e /run/guesttest/app-done ]; then
		echo "guesttest: the app is done; powering off"
		exec systemctl poweroff
	fi
	sleep 1
done
echo "guesttest: the app did not say it was done in 240 s; powering off"
exec systemctl poweroff
`
)

// buildStage makes the guest root tree in stage: the Debian root, the
// layer's files (their recipes' do_install), the doubles, kernel modules,
// units enabled.
func buildStage(h demo.Host, root, debTar, stage, build string) error {
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("tar", "-xf", debTar, "-C", stage, "--numeric-owner").CombinedOutput(); err != nil {
		return fmt.Errorf("tar -xf %s: %v\n%s", debTar, err, out)
	}
	// Debian's /usr/sbin/init is an absolute link to /lib/systemd/systemd, as
	// Yocto's update-alternatives link is: /init resolves it inside the new
	// root, so the boot proves that too.
	var units []string
	for _, r := range recipes {
		u, err := installRecipe(root, r, stage, build)
		if err != nil {
			return err
		}
		units = append(units, u...)
	}
	if err := installModules(h, stage); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "usr/lib/systemd/system/guesttest-poweroff.service"), []byte(poweroffUnit), 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(stage, "usr/local/sbin"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "usr/local/sbin/guesttest-poweroff"), []byte(poweroffScript), 0o755); err != nil {
		return err
	}
	units = append(units, "guesttest-poweroff.service")
	args := append([]string{stage, "systemctl", "enable"}, units...)
	if out, err := exec.Command("chroot", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("chroot %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	// systemd's own check of the layer's units and drop-ins, with the
	// programs they name present: the guest's systemd-analyze in the root.
	args = append([]string{stage, "systemd-analyze", "verify"}, append(units, "dstack-prepare.service", "docker.service", "containerd.service")...)
	if out, err := exec.Command("chroot", args...).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		return fmt.Errorf("chroot %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// buildDoubles puts the two test doubles where the agent recipe's
// do_install takes the Rust binaries from: build/target/<subdir>/.
func buildDoubles(root, build string) error {
	dir := filepath.Join(build, "target", cargoSubdir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "dstack-guest-agent"), "./internal/guesttest/testdata/agentdouble")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build agentdouble: %v\n%s", err, out)
	}
	return copyFile(filepath.Join(root, "internal/guesttest/testdata/dstack-util-double"), filepath.Join(dir, "dstack-util"), 0o755)
}

// appScript runs in the app's container: it counts boots in its named
// volume, prints a marker line on the serial console, says it is done and
// waits.
const appScript = `#!/bin/sh
set -e
n=1
if [ -f /data/boots ]; then n=$(( $(wc -l </data/boots) + 1 )); fi
echo "boot $n" >>/data/boots
sync
echo "GUESTTEST-APP boot=$n boots=[$(tr '\n' ',' </data/boots)]" >/dev/ttyS0
touch /signal/app-done
trap 'exit 0' TERM
while :; do sleep 1; done
`

// appImage is the app's image name, loaded from a local tarball.
const appImage = "dstack-guesttest/busybox:1"

// writeImageTar writes a `docker save` format image (one layer: static
// busybox with its applets, /app.sh) to path, padded to whole sectors so it
// can be attached as a disk.
func writeImageTar(path, busybox string) error {
	applets, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("%s --list: %w", busybox, err)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	add := func(h *tar.Header, data []byte) error {
		h.Uname, h.Gname = "root", "root"
		if err := lw.WriteHeader(h); err != nil {
			return err
		}
		_, err := lw.Write(data)
		return err
	}
	for _, d := range []string{"bin", "data", "dev", "etc", "proc", "signal", "sys", "tmp"} {
		if err := add(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}, nil); err != nil {
			return err
		}
	}
	if err := add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))}, bb); err != nil {
		return err
	}
	for _, a := range strings.Fields(string(applets)) {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := add(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil); err != nil {
			return err
		}
	}
	if err := add(&tar.Header{Name: "app.sh", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(appScript))}, []byte(appScript)); err != nil {
		return err
	}
	if err := lw.Close(); err != nil {
		return err
	}
	layerSum := sha256.Sum256(layer.Bytes())
	layerID := hex.EncodeToString(layerSum[:])
	cfg, err := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Env": []string{"PATH=/bin"}, "Cmd": []string{"/bin/sh", "/app.sh"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerID}},
	})
	if err != nil {
		return err
	}
	cfgSum := sha256.Sum256(cfg)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": cfgName, "RepoTags": []string{appImage}, "Layers": []string{layerID + "/layer.tar"},
	}})
	if err != nil {
		return err
	}
	var img bytes.Buffer
	w := tar.NewWriter(&img)
	for _, f := range []struct {
		name string
		data []byte
	}{{layerID + "/layer.tar", layer.Bytes()}, {cfgName, cfg}, {"manifest.json", manifest}} {
		if strings.Contains(f.name, "/") {
			if err := w.WriteHeader(&tar.Header{Name: filepath.Dir(f.name) + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				return err
			}
		}
		if err := w.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.data))}); err != nil {
			return err
		}
		if _, err := w.Write(f.data); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if pad := img.Len() % 4096; pad != 0 {
		img.Write(make([]byte, 4096-pad))
	}
	return os.WriteFile(path, img.Bytes(), 0o644)
}

// removeTree removes dir like os.RemoveAll, but refuses when anything is
// mounted at or below it (a removal must never reach into a mounted file
// system such as the host's /dev).
func removeTree(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == abs || strings.HasPrefix(f[4], abs+"/")) {
			return fmt.Errorf("not removing %s: %s is a mount point", abs, f[4])
		}
	}
	return os.RemoveAll(abs)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
