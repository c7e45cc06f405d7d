package demo

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/bootscripts"
	"github.com/Dstack-TEE/meta-dstack/internal/qemu"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/dist"
)

// Dist names used by the demo.
const (
	DistName = "dstack-demo"
	Version  = "0.0.0"
	// GCPDataDev is the data disk the demo's UKI names, as on Google Cloud: the
	// second namespace of the boot disk's NVMe controller.
	GCPDataDev = "/dev/nvme0n2"
)

// BareMetalConfig boots a dist directory the way a dstack host does: OVMF
// (the shipped ovmf.fd when there is one), the kernel and initramfs with
// metadata.json's command line, rootfs.img.verity as the first virtio disk
// (/dev/vda) and dataImg, if not "", as the second (/dev/vdb).
func BareMetalConfig(distDir, dataImg string) (qemu.Config, error) {
	b, err := os.ReadFile(filepath.Join(distDir, "metadata.json"))
	if err != nil {
		return qemu.Config{}, fmt.Errorf("demo: %w", err)
	}
	md, err := dist.ParseMetadata(b)
	if err != nil {
		return qemu.Config{}, fmt.Errorf("demo: %s: %w", distDir, err)
	}
	cfg := qemu.Config{
		Kernel: filepath.Join(distDir, md.Kernel),
		Initrd: filepath.Join(distDir, md.Initrd),
		Append: md.Cmdline,
		Drives: []qemu.Drive{{Path: filepath.Join(distDir, md.Rootfs), ReadOnly: true}},
	}
	if md.BIOS != "" {
		cfg.BIOS = filepath.Join(distDir, md.BIOS)
	}
	if dataImg != "" {
		cfg.Drives = append(cfg.Drives, qemu.Drive{Path: dataImg})
	}
	return cfg, nil
}

// GCPConfig boots a GCP disk the way Google Cloud's TDX VMs see it: OVMF
// loads the UKI from the ESP of disk.raw, which is namespace 1 of an NVMe
// controller (/dev/nvme0n1); dataImg, if not "", is namespace 2
// (/dev/nvme0n2).
func GCPConfig(diskRaw, dataImg string) qemu.Config {
	args := []string{
		"-drive", "file=" + qemu.Escape(diskRaw) + ",format=raw,if=none,readonly=on,id=gcpboot",
		"-device", "nvme,id=gcpnvme,serial=dstack-gcp",
		"-device", "nvme-ns,drive=gcpboot,bus=gcpnvme,nsid=1",
	}
	if dataImg != "" {
		args = append(args,
			"-drive", "file="+qemu.Escape(dataImg)+",format=raw,if=none,id=gcpdata",
			"-device", "nvme-ns,drive=gcpdata,bus=gcpnvme,nsid=2")
	}
	return qemu.Config{ExtraArgs: args}
}

// BlankDisk creates (or truncates to zero and regrows) a sparse all-zero
// disk image of size bytes.
func BlankDisk(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("demo: %s: %w", path, err)
	}
	return f.Close()
}

// RunOptions configure Run.
type RunOptions struct {
	RepoRoot string
	// WorkDir receives deploy/, images/ and the data disk images.
	WorkDir string
	// Accel is "tcg" (default), "kvm", or "auto": KVM only when a probe boot
	// under KVM reaches the demo rootfs's end.
	Accel string
	// Out receives progress and the serial consoles.
	Out io.Writer
	// BootTimeout bounds each boot (default 5 minutes).
	BootTimeout time.Duration
}

// ErrMissing is returned (wrapped) by Run when host packages are missing.
var ErrMissing = errors.New("host packages missing")

// Run is `mage demo`: check the host, assemble the deploy directory, run
// imgpost dist, then boot the result the GCP way and the bare-metal way,
// showing the serial consoles, and check each boot reached the verified
// rootfs and powered off.
func Run(o RunOptions) error {
	out := o.Out
	if out == nil {
		out = os.Stdout
	}
	if o.BootTimeout == 0 {
		o.BootTimeout = 5 * time.Minute
	}
	h, miss := FindHost()
	if len(miss) > 0 {
		for _, m := range miss {
			fmt.Fprintf(out, "demo: missing %s\n", m)
		}
		return fmt.Errorf("demo: %w: run  apt-get install %s", ErrMissing, strings.Join(MissingPackages(miss), " "))
	}
	if _, err := os.Stat(filepath.Join(o.RepoRoot, bootscripts.InitPath)); err != nil {
		return fmt.Errorf("demo: the layer's init script is not at %s (run from the repository root): %w", filepath.Join(o.RepoRoot, bootscripts.InitPath), err)
	}
	work, err := filepath.Abs(o.WorkDir)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(out, "demo: assembling the deploy directory from %s, busybox, veritysetup, sgdisk, the systemd stub and OVMF\n", h.Kernel)
	dep, err := Assemble(h, o.RepoRoot, filepath.Join(work, "deploy"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "demo: imgpost dist -> %s\n", filepath.Join(work, "images"))
	res, err := dist.Run(dist.Options{
		Kernel: dep.Kernel, Initrd: dep.Initrd, Rootfs: dep.Rootfs, Stub: dep.Stub, OVMF: dep.OVMF,
		DistName: DistName, Version: Version, Flavor: "dev", OutDir: filepath.Join(work, "images"),
		GCPCmdlineExtra: []string{"dstack.data_dev=" + GCPDataDev},
		Log:             out,
	})
	if err != nil {
		return fmt.Errorf("demo: imgpost dist: %w", err)
	}
	accel, err := chooseAccel(o, res.Dir, work, out)
	if err != nil {
		return err
	}

	gcpData := filepath.Join(work, "gcp-data.img")
	if err := BlankDisk(gcpData, 256<<20); err != nil {
		return err
	}
	cfg := GCPConfig(filepath.Join(res.Dir, "gcp", "disk.raw"), gcpData)
	cfg.Accel = accel
	fmt.Fprintf(out, "\ndemo: === GCP boot: OVMF, disk.raw as NVMe namespace 1 (UKI from its ESP), a blank data disk as namespace 2, %s ===\n", accel)
	if err := bootToEnd(cfg, o.BootTimeout, out); err != nil {
		return fmt.Errorf("demo: GCP boot: %w", err)
	}

	bareData := filepath.Join(work, "bare-data.img")
	if err := BlankDisk(bareData, 256<<20); err != nil {
		return err
	}
	cfg, err = BareMetalConfig(res.Dir, bareData)
	if err != nil {
		return err
	}
	cfg.Accel = accel
	fmt.Fprintf(out, "\ndemo: === bare-metal boot: ovmf.fd, kernel + initramfs + metadata.json's command line, rootfs.img.verity as /dev/vda, a blank /dev/vdb, %s ===\n", accel)
	if err := bootToEnd(cfg, o.BootTimeout, out); err != nil {
		return fmt.Errorf("demo: bare-metal boot: %w", err)
	}
	fmt.Fprintf(out, "\ndemo: both boots reached the verified rootfs (root hash %s) and powered off\n", res.Verity.RootHashHex())
	fmt.Fprintf(out, "demo: artifacts in %s\n", res.Dir)
	return nil
}

// bootToEnd boots cfg with the console shown and checks that the demo rootfs
// ran to its end.
func bootToEnd(cfg qemu.Config, timeout time.Duration, out io.Writer) error {
	cfg.Console = out
	console, err := qemu.Run(cfg, timeout)
	if err != nil {
		return err
	}
	return checkDone(console)
}

func checkDone(console string) error {
	if !strings.Contains(console, MarkDone) {
		return errors.New("the VM stopped before the demo rootfs's end (see the console above)")
	}
	return nil
}

// chooseAccel returns the accelerator: o.Accel as given ("tcg" by default,
// "kvm" when asked for), or for "auto" KVM only when /dev/kvm exists and a
// bare-metal probe boot under KVM reaches the demo rootfs's end.
func chooseAccel(o RunOptions, distDir, work string, out io.Writer) (string, error) {
	switch o.Accel {
	case "", "tcg":
		return "tcg", nil
	case "kvm":
		return "kvm", nil
	case "auto":
	default:
		return "", fmt.Errorf("demo: accelerator %q: want tcg, kvm or auto", o.Accel)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		fmt.Fprintln(out, "demo: no /dev/kvm: using TCG")
		return "tcg", nil
	}
	probeData := filepath.Join(work, "probe-data.img")
	if err := BlankDisk(probeData, 64<<20); err != nil {
		return "", err
	}
	defer os.Remove(probeData)
	cfg, err := BareMetalConfig(distDir, probeData)
	if err != nil {
		return "", err
	}
	cfg.Accel = "kvm"
	console, err := qemu.Run(cfg, 2*time.Minute)
	if err == nil && checkDone(console) == nil {
		fmt.Fprintln(out, "demo: a probe boot under KVM worked: using KVM")
		return "kvm", nil
	}
	fmt.Fprintln(out, "demo: a probe boot under KVM failed: using TCG")
	return "tcg", nil
}
