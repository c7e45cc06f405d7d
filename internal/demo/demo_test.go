package demo

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/bootscripts"
	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

func host(t *testing.T) Host {
	t.Helper()
	h, miss := FindHost()
	if len(miss) > 0 {
		msg := "host parts missing: install Debian packages " + strings.Join(MissingPackages(miss), " ")
		if testutil.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return h
}

// TestModuleClosure checks the load order against modinfo (kmod), which reads
// each module's own "depends" field: every dependency is loaded before the
// module that needs it, and nothing else is loaded.
func TestModuleClosure(t *testing.T) {
	h := host(t)
	testutil.Need(t, "modinfo")
	order, err := h.InitramfsModules()
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		pos[modName(m)] = i
	}
	depends := func(name string) []string {
		out := strings.TrimSpace(testutil.Run(t, "modinfo", "-k", h.KernelVersion, "-F", "depends", name))
		if out == "" {
			return nil
		}
		return strings.Split(out, ",")
	}
	want := map[string]bool{}
	var walk func(string)
	walk = func(n string) {
		n = normalize(n)
		if want[n] {
			return
		}
		want[n] = true
		for _, d := range depends(n) {
			walk(d)
			if pos[normalize(d)] >= pos[n] {
				t.Errorf("%s is loaded before its dependency %s", n, d)
			}
		}
	}
	for _, m := range DemoModules {
		walk(m)
	}
	got := map[string]bool{}
	for n := range pos {
		got[n] = true
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("modules %v, modinfo's closure %v", got, want)
	}
	if _, err := ModuleClosure(h.ModulesDir, []string{"no_such_module"}); err == nil || !strings.Contains(err.Error(), "no_such_module not in") {
		t.Errorf("unknown module: err %v", err)
	}
}

// TestSharedLibs compares with ldd.
func TestSharedLibs(t *testing.T) {
	h := host(t)
	testutil.Need(t, "ldd")
	for _, bin := range []string{h.Veritysetup, h.Sgdisk} {
		got, err := SharedLibs(bin)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		re := regexp.MustCompile(`(?m)^\s*(?:\S+ => )?(/\S+) \(0x`)
		for _, m := range re.FindAllStringSubmatch(testutil.Run(t, "ldd", bin), -1) {
			want = append(want, m[1])
		}
		sort.Strings(want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: SharedLibs\n%v\nldd\n%v", bin, got, want)
		}
	}
	got, err := SharedLibs(h.Busybox)
	if err != nil || len(got) != 0 {
		t.Errorf("static busybox: %v %v", got, err)
	}
}

func TestMissingPackages(t *testing.T) {
	saved := []any{KernelGlob, BusyboxPath, StubPath, OVMFPaths, toolDirs}
	defer func() {
		KernelGlob, BusyboxPath, StubPath = saved[0].(string), saved[1].(string), saved[2].(string)
		OVMFPaths, toolDirs = saved[3].([]string), saved[4].([]string)
	}()
	empty := t.TempDir()
	KernelGlob = filepath.Join(empty, "vmlinuz-*")
	BusyboxPath = filepath.Join(empty, "busybox")
	StubPath = filepath.Join(empty, "stub")
	OVMFPaths = []string{filepath.Join(empty, "OVMF.fd")}
	toolDirs = nil
	t.Setenv("PATH", empty)
	_, miss := FindHost()
	want := []string{"busybox-static", "cryptsetup-bin", "gdisk", "linux-image-amd64", "ovmf", "qemu-system-x86", "squashfs-tools", "systemd-boot-efi"}
	if got := MissingPackages(miss); !reflect.DeepEqual(got, want) {
		t.Errorf("missing %v, want %v", got, want)
	}
	// a dynamically linked busybox is not enough
	BusyboxPath = "/bin/sh"
	_, miss = FindHost()
	found := false
	for _, m := range miss {
		found = found || m.Package == "busybox-static"
	}
	if !found {
		t.Errorf("dynamic %s accepted as busybox", BusyboxPath)
	}
}

// TestAssemble builds the deploy directory twice (byte-identical), then
// checks with GNU cpio and unsquashfs that the layer's scripts are inside
// unchanged and, with chroot, that veritysetup and sgdisk run from what was
// packed (their libraries are all there).
func TestAssemble(t *testing.T) {
	h := host(t)
	testutil.Need(t, "cpio", "unsquashfs")
	root := testutil.RepoRoot(t)
	a, err := Assemble(h, root, filepath.Join(t.TempDir(), "a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Assemble(h, root, filepath.Join(t.TempDir(), "b"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{KernelName, InitrdName, RootfsName, StubName, OVMFName} {
		x, err1 := os.ReadFile(filepath.Join(a.Dir, n))
		y, err2 := os.ReadFile(filepath.Join(b.Dir, n))
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two assemblies", n)
		}
	}
	kernel, _ := os.ReadFile(h.Kernel)
	if k, _ := os.ReadFile(a.Kernel); !bytes.Equal(k, kernel) {
		t.Errorf("bzImage is not %s", h.Kernel)
	}

	// initramfs
	ird := filepath.Join(t.TempDir(), "initramfs")
	if err := os.MkdirAll(ird, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `gzip -dc "$1" | cpio -idm --quiet --no-absolute-filenames`, "sh", a.Initrd)
	cmd.Dir = ird
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gzip|cpio: %v\n%s", err, out)
	}
	sameFile(t, filepath.Join(root, bootscripts.InitPath), filepath.Join(ird, "init"))
	sameFile(t, filepath.Join(root, bootscripts.DevspecPath), filepath.Join(ird, bootscripts.InstalledDevspec))
	if fi, err := os.Stat(filepath.Join(ird, "init")); err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("/init not executable: %v %v", fi, err)
	}
	list, err := os.ReadFile(filepath.Join(ird, bootscripts.ModulesList))
	if err != nil {
		t.Fatal(err)
	}
	mods, _ := h.InitramfsModules()
	lines := strings.Split(strings.TrimSpace(string(list)), "\n")
	if len(lines) != len(mods) {
		t.Fatalf("%s lists %d modules, want %d", bootscripts.ModulesList, len(lines), len(mods))
	}
	for i, l := range lines {
		if l != "/lib/modules/"+h.KernelVersion+"/"+stripCompression(mods[i]) {
			t.Errorf("module %d: %s", i, l)
		}
		if _, err := os.Stat(filepath.Join(ird, l)); err != nil {
			t.Errorf("listed module missing: %v", err)
		}
	}
	for _, p := range []string{"bin/sh", "sbin/switch_root", "sbin/insmod"} {
		if _, err := os.Lstat(filepath.Join(ird, p)); err != nil {
			t.Errorf("initramfs lacks %s", p)
		}
	}

	// rootfs
	rfs := filepath.Join(t.TempDir(), "rootfs")
	testutil.Run(t, "unsquashfs", "-no-progress", "-quiet", "-d", rfs, a.Rootfs)
	sameFile(t, filepath.Join(root, bootscripts.PreparePath), filepath.Join(rfs, bootscripts.InstalledPrepare))
	sameFile(t, filepath.Join(root, bootscripts.DevspecPath), filepath.Join(rfs, bootscripts.InstalledDevspec))
	if got, _ := os.ReadFile(filepath.Join(rfs, "sbin/init")); string(got) != RootfsInit {
		t.Errorf("rootfs /sbin/init is not RootfsInit")
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp"} {
		if fi, err := os.Stat(filepath.Join(rfs, d)); err != nil || !fi.IsDir() {
			t.Errorf("rootfs lacks /%s", d)
		}
	}

	if os.Geteuid() != 0 {
		t.Log("not root: the chroot checks are skipped")
		return
	}
	for _, c := range []struct{ root, bin, want string }{
		{ird, "/usr/sbin/veritysetup", "veritysetup 2"},
		{rfs, "/usr/sbin/sgdisk", "GPT fdisk (sgdisk) version"},
	} {
		out, err := exec.Command("chroot", c.root, c.bin, "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Errorf("chroot %s %s --version: %v\n%s", c.root, c.bin, err, out)
		}
	}
}

func sameFile(t *testing.T, want, got string) {
	t.Helper()
	a, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(got)
	if err != nil {
		t.Fatalf("packed copy of %s: %v", want, err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("%s differs from %s", got, want)
	}
}

// TestRunMissingHost: with host parts missing, Run names the Debian packages
// and builds nothing.
func TestRunMissingHost(t *testing.T) {
	saved := StubPath
	defer func() { StubPath = saved }()
	StubPath = filepath.Join(t.TempDir(), "no-stub")
	work := filepath.Join(t.TempDir(), "work")
	var out bytes.Buffer
	err := Run(RunOptions{RepoRoot: testutil.RepoRoot(t), WorkDir: work, Out: &out})
	if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "apt-get install systemd-boot-efi") {
		t.Errorf("Run: %v", err)
	}
	if !strings.Contains(out.String(), "demo: missing "+StubPath+" (Debian package systemd-boot-efi)") {
		t.Errorf("output:\n%s", out.String())
	}
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Errorf("work directory created: %v", err)
	}
}

// TestRunChecks: a wrong repository root or accelerator is refused before
// any boot.
func TestRunChecks(t *testing.T) {
	host(t)
	var out bytes.Buffer
	err := Run(RunOptions{RepoRoot: t.TempDir(), WorkDir: t.TempDir(), Out: &out})
	if err == nil || !strings.Contains(err.Error(), "run from the repository root") {
		t.Errorf("wrong root: %v", err)
	}
	if _, err := chooseAccel(RunOptions{Accel: "hvf"}, "", "", &out); err == nil || !strings.Contains(err.Error(), `accelerator "hvf": want tcg, kvm or auto`) {
		t.Errorf("bad accel: %v", err)
	}
	for in, want := range map[string]string{"": "tcg", "tcg": "tcg", "kvm": "kvm"} {
		if got, err := chooseAccel(RunOptions{Accel: in}, "", "", &out); err != nil || got != want {
			t.Errorf("accel %q: %q %v", in, got, err)
		}
	}
}
