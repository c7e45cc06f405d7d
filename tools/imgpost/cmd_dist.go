package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/disk"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/dist"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/measure"
)

func init() {
	register(command{
		name:    "dist",
		summary: "the whole chain: verity, UKI, disk, GCP tarball, metadata, checksums, tarball",
		run:     runDist,
	})
}

// argList is a repeatable flag whose values are split on blanks.
type argList []string

func (a *argList) String() string { return strings.Join(*a, " ") }
func (a *argList) Set(s string) error {
	*a = append(*a, strings.Fields(s)...)
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func runDist(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dist", stderr,
		"usage: imgpost dist --kernel bzImage --initrd initramfs.cpio.gz --rootfs rootfs.squashfs --stub linuxx64.efi.stub",
		"       [--ovmf ovmf.fd] --dist-name NAME --version VER [--flavor prod|dev] [--git-revision REV] [--out-dir images]",
		"Tarball times come from SOURCE_DATE_EPOCH (default 0).")
	var o dist.Options
	fs.StringVar(&o.Kernel, "kernel", "", "kernel `bzImage` (EFI stub)")
	fs.StringVar(&o.Initrd, "initrd", "", "initramfs `FILE` (cpio.gz)")
	fs.StringVar(&o.Rootfs, "rootfs", "", "rootfs `squashfs`")
	fs.StringVar(&o.Stub, "stub", "", "systemd EFI `stub` (linuxx64.efi.stub)")
	fs.StringVar(&o.OVMF, "ovmf", "", "firmware `FILE` to ship as ovmf.fd (optional)")
	fs.StringVar(&o.DistName, "dist-name", "", "dist `NAME` (outputs are NAME-VERSION)")
	fs.StringVar(&o.Version, "version", "", "dist `VERSION`")
	fs.StringVar(&o.Flavor, "flavor", "prod", "`prod` or dev (metadata.json is_dev)")
	fs.StringVar(&o.GitRevision, "git-revision", "", "source `REVISION` recorded in metadata.json")
	fs.StringVar(&o.OutDir, "out-dir", "images", "output `DIR` (created if missing)")
	base := os.Getenv("DSTACK_CMDLINE_BASE")
	if base == "" {
		base = dist.DefaultCmdlineBase
	}
	fs.StringVar(&o.CmdlineBase, "cmdline-base", base, "base kernel `ARGS` (default: $DSTACK_CMDLINE_BASE, else the upstream arguments)")
	var extra argList
	fs.Var(&extra, "gcp-cmdline-extra", "extra kernel `ARGS` for the UKI only (repeatable, blank-separated)")
	noGCP := fs.Bool("no-gcp", false, "skip disk.raw and the GCP tarball (also ENABLE_GCP_IMAGE=0)")
	noTar := fs.Bool("no-tarball", false, "skip the bare-metal tarball (also DSTACK_TAR_RELEASE=0)")
	espSize := fs.String("esp-size", "256MiB", "ESP `SIZE` of disk.raw")
	quiet := fs.Bool("quiet", false, "no progress or stage lines on stderr")
	if _, help, err := parseArgs(fs, args, 0); help || err != nil {
		return err
	}
	for _, req := range []struct{ name, v string }{
		{"--kernel", o.Kernel}, {"--initrd", o.Initrd}, {"--rootfs", o.Rootfs}, {"--stub", o.Stub},
		{"--dist-name", o.DistName}, {"--version", o.Version},
	} {
		if req.v == "" {
			return usagef("%s is required", req.name)
		}
	}
	if o.Flavor != "prod" && o.Flavor != "dev" {
		return usagef("--flavor %q: want prod or dev", o.Flavor)
	}
	var err error
	if o.ESPSize, err = disk.ParseSize(*espSize); err != nil {
		return usagef("--esp-size: %v", err)
	}
	o.GCPCmdlineExtra = extra
	o.NoGCP = *noGCP || os.Getenv("ENABLE_GCP_IMAGE") == "0"
	o.NoTarball = *noTar || os.Getenv("DSTACK_TAR_RELEASE") == "0"
	if !*quiet {
		o.Log = stderr
		o.Terminal = isTerminal(stderr)
	}
	res, err := dist.Run(o)
	if err != nil {
		return distFlagError(err)
	}
	switch {
	case res.NoTDX == dist.NoFirmware:
		fmt.Fprintf(stderr, "imgpost dist: no %s (no --ovmf: %s)\n", measure.TDXFileName, res.NoTDX)
	case res.NoTDX != "":
		fmt.Fprintf(stderr, "imgpost dist: no %s (--ovmf %s)\n", measure.TDXFileName, res.NoTDX)
	}
	fmt.Fprintf(stdout, "%s: root hash %s, rootfs size %d, digest %s\n", res.Name, res.Verity.RootHashHex(), res.Verity.DataSize(), res.Digest)
	fmt.Fprintf(stdout, "UKI Authenticode sha256 %s\n", res.AuthHash)
	for _, a := range res.Artifacts {
		fmt.Fprintf(stdout, "%s  %12d  %s\n", a.SHA256, a.Size, a.Path)
	}
	return nil
}

// distFlags are the flags of dist.Options' fields.
var distFlags = map[string]string{
	"Kernel": "--kernel", "Initrd": "--initrd", "Rootfs": "--rootfs", "Stub": "--stub", "OVMF": "--ovmf",
	"DistName": "--dist-name", "Version": "--version", "Flavor": "--flavor", "OutDir": "--out-dir",
	"CmdlineBase": "--cmdline-base", "GCPCmdlineExtra": "--gcp-cmdline-extra", "ESPSize": "--esp-size",
}

// distFlagError names the flag in a dist.FieldError (and says which flag
// makes the ESP larger when the UKI does not fit).
func distFlagError(err error) error {
	var fe *dist.FieldError
	if errors.As(err, &fe) {
		fe.Label = distFlags[fe.Field]
	}
	return espHint(err)
}
