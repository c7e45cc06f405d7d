// Package demo assembles a dstack deploy directory from parts of the host (a
// Debian system) instead of a Yocto build, and boots it: the quick start
// behind `go run mage.go demo`.
//
// The deploy directory holds what BitBake would leave for `imgpost dist`:
//
//	bzImage                   Debian's kernel (drivers as modules)
//	dstack-initramfs.cpio.gz  the layer's /init and devspec.sh unchanged, busybox,
//	                          veritysetup with its shared libraries, and the
//	                          kernel modules /init loads (/etc/dstack/modules)
//	dstack-rootfs.squashfs    a tiny rootfs whose /sbin/init runs the layer's
//	                          dstack-prepare, prints the verified root hash and
//	                          the chosen data disk, and powers off
//	linuxx64.efi.stub         systemd-boot's EFI stub
//	ovmf.fd                   OVMF firmware
package demo

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Host holds the host files and tools the demo is assembled from.
type Host struct {
	Kernel        string // /boot/vmlinuz-<ver>
	KernelVersion string // <ver>
	ModulesDir    string // /lib/modules/<ver>
	Busybox       string // static busybox
	Veritysetup   string
	Sgdisk        string
	Stub          string // systemd EFI stub
	OVMF          string // combined OVMF image (code + vars)
	Mksquashfs    string
	Qemu          string // qemu-system-x86_64
}

// Missing is a host part that was not found, with the Debian package that
// provides it.
type Missing struct {
	What    string
	Package string
}

func (m Missing) String() string { return fmt.Sprintf("%s (Debian package %s)", m.What, m.Package) }

// Search paths for the host parts (Debian bookworm layout).
var (
	KernelGlob  = "/boot/vmlinuz-*-amd64"
	BusyboxPath = "/bin/busybox"
	StubPath    = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	OVMFPaths   = []string{"/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"}
)

// FindHost locates every host part. It returns the parts found and, for each
// one that is missing, the Debian package to install.
func FindHost() (Host, []Missing) {
	var h Host
	var miss []Missing
	kernels, _ := filepath.Glob(KernelGlob)
	sort.Strings(kernels)
	for i := len(kernels) - 1; i >= 0; i-- {
		ver := strings.TrimPrefix(filepath.Base(kernels[i]), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", ver, "modules.dep")); err == nil {
			h.Kernel, h.KernelVersion, h.ModulesDir = kernels[i], ver, filepath.Join("/lib/modules", ver)
			break
		}
	}
	if h.Kernel == "" {
		miss = append(miss, Missing{KernelGlob + " with its /lib/modules", "linux-image-amd64"})
	}
	if isStatic(BusyboxPath) {
		h.Busybox = BusyboxPath
	} else {
		miss = append(miss, Missing{"static " + BusyboxPath, "busybox-static"})
	}
	for _, tool := range []struct {
		name, pkg string
		dst       *string
	}{
		{"veritysetup", "cryptsetup-bin", &h.Veritysetup},
		{"sgdisk", "gdisk", &h.Sgdisk},
		{"mksquashfs", "squashfs-tools", &h.Mksquashfs},
		{"qemu-system-x86_64", "qemu-system-x86", &h.Qemu},
	} {
		p, err := lookPath(tool.name)
		if err != nil {
			miss = append(miss, Missing{tool.name, tool.pkg})
			continue
		}
		*tool.dst = p
	}
	if _, err := os.Stat(StubPath); err == nil {
		h.Stub = StubPath
	} else {
		miss = append(miss, Missing{StubPath, "systemd-boot-efi"})
	}
	for _, p := range OVMFPaths {
		if _, err := os.Stat(p); err == nil {
			h.OVMF = p
			break
		}
	}
	if h.OVMF == "" {
		miss = append(miss, Missing{OVMFPaths[0], "ovmf"})
	}
	return h, miss
}

// toolDirs are searched after PATH by lookPath.
var toolDirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}

// lookPath is exec.LookPath that also searches the sbin directories, which a
// normal user's PATH may lack.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range toolDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// MissingPackages returns the sorted, de-duplicated Debian packages to install.
func MissingPackages(miss []Missing) []string {
	seen := map[string]bool{}
	var pkgs []string
	for _, m := range miss {
		if !seen[m.Package] {
			seen[m.Package] = true
			pkgs = append(pkgs, m.Package)
		}
	}
	sort.Strings(pkgs)
	return pkgs
}

func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// Library directories searched for DT_NEEDED entries (Debian multiarch first).
var libDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

// SharedLibs returns what a dynamically linked ELF program needs at run time:
// its program interpreter (ld.so) and the transitive closure of its DT_NEEDED
// libraries, as the paths the dynamic linker opens (library directory +
// soname), sorted. A static program needs nothing.
func SharedLibs(bin string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	var walk func(path string) error
	walk = func(path string) error {
		f, err := elf.Open(path)
		if err != nil {
			return fmt.Errorf("demo: %s: %w", path, err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return fmt.Errorf("demo: %s: interpreter: %w", path, err)
			}
			interp := strings.TrimRight(string(b), "\x00")
			if !seen[interp] {
				seen[interp] = true
				// libc names ld.so as DT_NEEDED too: the dynamic linker
				// matches it by soname to the interpreter already loaded
				seen["soname:"+filepath.Base(interp)] = true
				out = append(out, interp)
			}
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("demo: %s: %w", path, err)
		}
		for _, soname := range needed {
			if seen["soname:"+soname] {
				continue
			}
			seen["soname:"+soname] = true
			lib := ""
			for _, d := range libDirs {
				p := filepath.Join(d, soname)
				if _, err := os.Stat(p); err == nil {
					lib = p
					break
				}
			}
			if lib == "" {
				return fmt.Errorf("demo: %s needs %s, not found in %s", path, soname, strings.Join(libDirs, " "))
			}
			if seen[lib] {
				continue
			}
			seen[lib] = true
			out = append(out, lib)
			if err := walk(lib); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(bin); err != nil {
		return nil, err
	}
	sort.Strings(out)
	return out, nil
}

// ModuleClosure returns the modules (paths relative to modDir, as in
// modules.dep) needed to load the named modules, each after the modules it
// depends on, from modDir/modules.dep. Names may use - or _ alike. Soft
// dependencies are not followed (they are optional, and some, like
// crct10dif-pclmul, refuse to load on CPUs without the instructions).
func ModuleClosure(modDir string, names []string) ([]string, error) {
	depFile := filepath.Join(modDir, "modules.dep")
	data, err := os.ReadFile(depFile)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	deps := map[string][]string{}
	byName := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		byName[modName(mod)] = mod
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(mod string) error
	visit = func(mod string) error {
		switch state[mod] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("demo: %s: dependency cycle at %s", depFile, mod)
		}
		state[mod] = 1
		for _, d := range deps[mod] {
			if _, ok := deps[d]; !ok {
				return fmt.Errorf("demo: %s: %s depends on %s, which has no entry", depFile, mod, d)
			}
			if err := visit(d); err != nil {
				return err
			}
		}
		state[mod] = 2
		order = append(order, mod)
		return nil
	}
	for _, n := range names {
		mod, ok := byName[normalize(n)]
		if !ok {
			return nil, fmt.Errorf("demo: module %s not in %s (built into the kernel, or not shipped?)", n, depFile)
		}
		if err := visit(mod); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// modName is the module name of a modules.dep path: base name without .ko
// and compression suffix, - turned into _.
func modName(path string) string {
	b := filepath.Base(path)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return normalize(b)
}

func normalize(n string) string { return strings.ReplaceAll(n, "-", "_") }

// DemoModules are the drivers the demo's initramfs loads on a Debian kernel:
// virtio and NVMe disks on QEMU's q35, dm-verity, squashfs.
var DemoModules = []string{"virtio_pci", "virtio_blk", "nvme", "dm-verity", "squashfs"}

var errNoHost = errors.New("demo: host parts missing")
