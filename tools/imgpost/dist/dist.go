// Package dist runs imgpost's whole chain: from BitBake's outputs (kernel,
// initramfs, squashfs rootfs, systemd EFI stub, optional OVMF) to the
// shippable dstack set:
//
//	<out>/<dist>-<ver>/            bzImage, initramfs.cpio.gz, rootfs.img.verity,
//	                               ovmf.fd (when given), dstack-uki.efi,
//	                               dstack-uki.efi.auth_hash.txt, metadata.json,
//	                               measurement.tdx.cbor (firmware with TDX
//	                               metadata only), measurement.gcp.cbor,
//	                               measurements.json, sha256sum.txt, digest.txt
//	<out>/<dist>-<ver>/gcp/disk.raw
//	<out>/<dist>-<ver>.tar.gz      bare-metal tarball (the set above, without gcp/)
//	<out>/<dist>-<ver>-gcp.tar.gz  GCP import tarball (one member, disk.raw)
//
// Everything is built in a temporary directory beside the outputs and
// renamed into place only when every stage succeeded, so a failure leaves
// nothing that looks finished.
package dist

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/internal/epoch"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/disk"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/gcptar"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/measure"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/sqfs"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/uki"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/verity"
)

// File names inside <dist>-<ver>/.
const (
	KernelName   = "bzImage"
	InitrdName   = "initramfs.cpio.gz"
	RootfsName   = "rootfs.img.verity"
	OVMFName     = "ovmf.fd"
	UKIName      = "dstack-uki.efi"
	AuthHashName = UKIName + authenticode.HashFileSuffix
	MetadataName = "metadata.json"
	SumName      = "sha256sum.txt"
	DigestName   = "digest.txt"
	GCPDir       = "gcp"
	DiskName     = "disk.raw"
)

// DefaultCmdlineBase is the base kernel command line when none is given
// (the upstream dstack arguments; the layer's values file carries the same).
const DefaultCmdlineBase = "console=ttyS0 init=/init panic=1 net.ifnames=0 biosdevname=0 mce=off oops=panic pci=noearly pci=nommconf random.trust_cpu=y random.trust_bootloader=n tsc=reliable no-kvmclock"

// CoherentPool is always added to the command line: the DMA atomic pool
// must be large enough for early NVMe and verity traffic on clouds without
// bounce buffers.
const CoherentPool = "coherent_pool=8M"

// RootfsDeviceArg is what the UKI's command line adds: the disk's rootfs partition.
const RootfsDeviceArg = "dstack.rootfs_device=PARTLABEL=" + disk.RootfsName

// Options are dist's inputs.
type Options struct {
	Kernel, Initrd, Rootfs, Stub string // required input files
	OVMF                         string // firmware to ship; "" for none
	DistName, Version            string // <dist>-<ver>
	Flavor                       string // "prod" or "dev" (is_dev)
	GitRevision                  string // recorded in metadata.json
	OutDir                       string // parent of the outputs (created if missing)
	// CmdlineBase is the base kernel command line ("": DefaultCmdlineBase).
	CmdlineBase string
	// GCPCmdlineExtra are extra arguments for the UKI only (e.g. dstack.data_dev=/dev/nvme0n2).
	GCPCmdlineExtra []string
	// NoGCP skips disk.raw and the GCP tarball.
	NoGCP bool
	// NoTarball skips the bare-metal tarball.
	NoTarball bool
	// ESPSize is the ESP size (0: disk.DefaultESPSize).
	ESPSize int64
	// Verity holds the salt and UUID (zero value: verity.DefaultParams()).
	Verity *verity.Params
	// MTime stamps the tarballs' members (zero: SOURCE_DATE_EPOCH, else the Unix epoch).
	MTime time.Time
	// Log receives progress and stage lines (nil: none). With Terminal, progress
	// is redrawn in place; otherwise one line per stage.
	Log      io.Writer
	Terminal bool
}

// Artifact is one output, as the summary lists it.
type Artifact struct {
	Path   string // final path
	Size   int64
	SHA256 string
}

// Stage is one timed step.
type Stage struct {
	Name     string
	Duration time.Duration
	Bytes    int64
}

// Result describes a finished dist run.
type Result struct {
	Name       string // <dist>-<ver>
	Dir        string // <out>/<dist>-<ver>
	Verity     *verity.Info
	Cmdline    string // bare-metal command line (metadata.json)
	UKICmdline string // the UKI's command line
	AuthHash   string // the UKI's SHA-256 Authenticode digest
	// NoTDX says why measurement.tdx.cbor was not written ("" when it was):
	// NoFirmware when Options.OVMF is empty, else what is wrong with that
	// firmware (a message naming Options.OVMF).
	NoTDX     string
	Digest    string // digest.txt
	Artifacts []Artifact
	Stages    []Stage
}

// NoFirmware is Result.NoTDX when no firmware was given.
const NoFirmware = "the image ships no firmware"

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)

// Cmdlines returns the bare-metal and UKI command lines for a verity image.
func Cmdlines(base string, info *verity.Info, extra []string) (bare, ukiCmd string) {
	return CmdlinesFor(base, info.RootHashHex(), info.DataSize(), extra)
}

// CmdlinesFor is Cmdlines for a root hash (lower-case hex) and data size:
// the words of base, coherent_pool, dstack.rootfs_hash and
// dstack.rootfs_size, each separated by one space; the UKI's adds
// RootfsDeviceArg and extra. verify expects exactly these.
func CmdlinesFor(base, rootHash string, size int64, extra []string) (bare, ukiCmd string) {
	args := append(strings.Fields(base), CoherentPool,
		"dstack.rootfs_hash="+rootHash,
		fmt.Sprintf("dstack.rootfs_size=%d", size))
	bare = strings.Join(args, " ")
	ukiArgs := append(append(args, RootfsDeviceArg), extra...)
	return bare, strings.Join(ukiArgs, " ")
}

// check returns a *FieldError for the first field at fault.
func (o *Options) check() error {
	for _, in := range []struct{ field, path string }{
		{"Kernel", o.Kernel}, {"Initrd", o.Initrd}, {"Rootfs", o.Rootfs}, {"Stub", o.Stub}, {"OVMF", o.OVMF},
	} {
		if in.path == "" {
			if in.field == "OVMF" {
				continue
			}
			return fileError(in.field, "", ErrRequired)
		}
		st, err := os.Stat(in.path)
		if err != nil {
			return fileError(in.field, in.path, errors.Unwrap(err))
		}
		if !st.Mode().IsRegular() {
			return fileError(in.field, in.path, ErrNotRegular)
		}
		if st.Size() == 0 {
			return fileError(in.field, in.path, ErrEmptyFile)
		}
	}
	badName := errors.New("want letters, digits and . _ + - (no slash, not empty)")
	if !nameRE.MatchString(o.DistName) {
		return wordError("DistName", o.DistName, badName)
	}
	if !nameRE.MatchString(o.Version) {
		return wordError("Version", o.Version, badName)
	}
	if o.Flavor != "prod" && o.Flavor != "dev" {
		return wordError("Flavor", o.Flavor, errors.New("want prod or dev"))
	}
	for _, a := range o.GCPCmdlineExtra {
		if a == "" || strings.ContainsAny(a, " \t\n\"'") {
			return wordError("GCPCmdlineExtra", a, errors.New("one argument without blanks or quotes each"))
		}
	}
	for _, f := range []struct {
		field string
		args  []string
	}{{"CmdlineBase", strings.Fields(o.CmdlineBase)}, {"GCPCmdlineExtra", o.GCPCmdlineExtra}} {
		for _, a := range f.args {
			for _, p := range []string{"dstack.rootfs_hash=", "dstack.rootfs_size=", "coherent_pool=", "dstack.rootfs_device="} {
				if strings.HasPrefix(a, p) {
					return wordError(f.field, a, fmt.Errorf("%w: dist adds %s itself", ErrReservedArg, strings.TrimSuffix(p, "=")))
				}
			}
		}
	}
	if o.OutDir == "" {
		return fileError("OutDir", "", ErrRequired)
	}
	return nil
}

// Run does the whole chain and returns the result. On error nothing is left
// under the final names (a previous run's outputs are kept as they were).
func Run(o Options) (res *Result, err error) {
	if o.CmdlineBase == "" {
		o.CmdlineBase = DefaultCmdlineBase
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	lg := &logger{w: o.Log, tty: o.Terminal}
	name := o.DistName + "-" + o.Version
	res = &Result{Name: name, Dir: filepath.Join(o.OutDir, name)}

	// Early checks of the inputs, before any heavy work.
	if _, err := sqfs.Check(o.Rootfs); err != nil {
		return nil, fileError("Rootfs", "", err)
	}
	if _, err := uki.Inspect(o.Stub); err != nil {
		return nil, fileError("Stub", o.Stub, fmt.Errorf("not a PE image: %w", err))
	}
	if _, err := uki.Inspect(o.Kernel); err != nil {
		return nil, fileError("Kernel", o.Kernel, fmt.Errorf("not an EFI-stub kernel (PE image): %w", err))
	}

	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fileError("OutDir", "", err)
	}
	if err := checkInputsOutside(o, name); err != nil {
		return nil, err
	}
	// Removed on return and, when the command runs CleanupOnSignal, on
	// SIGINT/SIGTERM too (publish has restored any previous outputs by then
	// or not yet touched them).
	stage, forget, err := atomicfile.MkdirTemp(o.OutDir, "."+name+".tmp-")
	if err != nil {
		return nil, fileError("OutDir", o.OutDir, fmt.Errorf("cannot write there: %w", errors.Unwrap(err)))
	}
	defer forget()
	defer os.RemoveAll(stage)
	sdir := filepath.Join(stage, name)
	// Mkdir, not MkdirAll: if a signal removed the stage meanwhile, this
	// fails instead of creating it again.
	for _, d := range []string{sdir, filepath.Join(sdir, GCPDir)} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	in := func(n string) string { return filepath.Join(sdir, n) }
	// The big outputs exist from the start (see outputs).
	outs, err := newOutputs(o, stage, sdir, name)
	if err != nil {
		return nil, fileError("OutDir", o.OutDir, err)
	}
	defer outs.abort()
	sums := newSummer()
	defer sums.stop()

	// 1. Copy the boot inputs (hashing them on the way).
	t := lg.start("copy inputs")
	var copied int64
	copies := [][2]string{{o.Kernel, KernelName}, {o.Initrd, InitrdName}}
	if o.OVMF != "" {
		copies = append(copies, [2]string{o.OVMF, OVMFName})
	}
	for _, c := range copies {
		n, sum, err := copyHashed(c[0], in(c[1]))
		if err != nil {
			return nil, err
		}
		sums.set(c[1], sum)
		copied += n
	}
	res.Stages = append(res.Stages, t.done(copied))

	// 2. verity.
	t = lg.start("verity")
	vp := verity.DefaultParams()
	if o.Verity != nil {
		vp = *o.Verity
	}
	vinfo, err := verity.FormatFile(o.Rootfs, in(RootfsName), vp)
	if err != nil {
		return nil, fmt.Errorf("stage verity: %w", err)
	}
	res.Verity = vinfo
	res.Stages = append(res.Stages, t.done(vinfo.Size()))
	// The rootfs image's sha256 (for the summary) and, when the tarball will
	// reuse the GCP archive's compressed rootfs, its CRC-32 (which the
	// tarball checks): computed beside the next stages.
	// (The disk stage copies with one thread, which leaves a CPU for this.)
	var rootfsCRC <-chan crcResult
	if !o.NoGCP && !o.NoTarball {
		rootfsCRC = sums.fileCRC(RootfsName, in(RootfsName))
	} else {
		sums.file(RootfsName, in(RootfsName))
	}

	// 3. Command lines and the UKI.
	res.Cmdline, res.UKICmdline = Cmdlines(o.CmdlineBase, vinfo, o.GCPCmdlineExtra)
	if err := uki.CheckCmdline(res.UKICmdline); err != nil {
		return nil, fmt.Errorf("UKI command line: %w", err)
	}
	t = lg.start("uki")
	osrel := filepath.Join(stage, "os-release")
	if err := os.WriteFile(osrel, []byte(osRelease(o)), 0o644); err != nil {
		return nil, err
	}
	uinfo, err := uki.Build(uki.Options{
		Stub: o.Stub, Linux: o.Kernel, Initrds: []string{o.Initrd},
		Cmdline: res.UKICmdline, OSRelease: osrel, Out: in(UKIName),
	})
	if err != nil {
		return nil, fmt.Errorf("stage uki: %w", err)
	}
	os.Remove(osrel)
	if res.AuthHash, err = authenticode.WriteHashFile(in(UKIName), in(AuthHashName)); err != nil {
		return nil, fmt.Errorf("stage uki: authenticode: %w", err)
	}
	res.Stages = append(res.Stages, t.done(uinfo.Size))
	sums.file(UKIName, in(UKIName))
	sums.file(AuthHashName, in(AuthHashName))

	// 4. metadata.json, the measurement files, sha256sum.txt, digest.txt.
	md := &Metadata{
		Kernel: KernelName, Cmdline: res.Cmdline, Initrd: InitrdName, Rootfs: RootfsName,
		Version: o.Version, GitRevision: o.GitRevision, SharedRO: true, IsDev: o.Flavor == "dev",
		OVMFVariant: OVMFVariant,
	}
	if o.OVMF != "" {
		md.BIOS = OVMFName
	}
	mj := md.JSON()
	if err := atomicfile.WriteFile(in(MetadataName), mj, 0o644); err != nil {
		return nil, err
	}
	sums.setBytes(MetadataName, mj)
	t = lg.start("measure")
	ms, err := measure.Compute(sdir)
	if err != nil {
		return nil, fmt.Errorf("stage measure: %w", err)
	}
	var measured []string
	for _, f := range ms.Files {
		if err := atomicfile.WriteFile(in(f.Name), f.Data, 0o644); err != nil {
			return nil, err
		}
		sums.setBytes(f.Name, f.Data)
		measured = append(measured, f.Name)
	}
	if ms.NoTDX != "" {
		res.NoTDX = NoFirmware
		if o.OVMF != "" {
			res.NoTDX = strings.ReplaceAll(ms.NoTDX, in(OVMFName), o.OVMF)
		}
	}
	res.Stages = append(res.Stages, t.done(0))
	var entries []SumEntry
	for _, n := range sumFiles(o.OVMF != "", measured) {
		entries = append(entries, SumEntry{SHA256: sums.get(n), Name: n})
	}
	sumText := SHA256SumText(entries)
	digest := DigestText(sumText)
	res.Digest = strings.TrimSpace(string(digest))
	if err := atomicfile.WriteFile(in(SumName), sumText, 0o644); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(in(DigestName), digest, 0o644); err != nil {
		return nil, err
	}
	sums.setBytes(SumName, sumText)
	sums.setBytes(DigestName, digest)

	mtime := o.MTime
	if mtime.IsZero() {
		sde, ok, err := epoch.FromEnv()
		if err != nil {
			return nil, err
		}
		mtime = time.Unix(0, 0)
		if ok {
			mtime = sde
		}
	}

	// 5. disk.raw and the GCP tarball.
	finals := []string{name}
	var reuse *Reuse // the rootfs as the GCP archive compressed it
	if !o.NoGCP {
		t = lg.start("disk")
		l, err := buildDisk(outs, in(UKIName), in(RootfsName),
			disk.Options{ESPSize: o.ESPSize, Progress: lg.progress("disk")})
		if err != nil {
			return nil, fmt.Errorf("stage disk: %w", err)
		}
		res.Stages = append(res.Stages, t.done(l.RootfsData+l.UKISize))
		sums.file(GCPDir+"/"+DiskName, filepath.Join(sdir, GCPDir, DiskName))

		t = lg.start("gcp")
		gname := name + "-gcp.tar.gz"
		r, err := writeSummed(sums, gname, outs.gcp, func(w io.Writer) (int64, error) {
			df, err := os.Open(filepath.Join(sdir, GCPDir, DiskName))
			if err != nil {
				return 0, err
			}
			defer df.Close()
			r, err := gcptar.Write(w, df, gcptar.Options{MTime: &mtime, Progress: lg.progress("gcp")})
			if seg, ok := r.Segment(gcptar.Region{Offset: l.Rootfs.Offset, Size: l.RootfsData}); ok {
				reuse = &Reuse{Name: RootfsName, Archive: filepath.Join(stage, gname), Segment: seg}
			}
			return r.DataSize, err
		})
		if err != nil {
			return nil, fmt.Errorf("stage gcp: %w", err)
		}
		res.Stages = append(res.Stages, t.done(r))
		finals = append(finals, gname)
	}

	// 6. The bare-metal tarball.
	if !o.NoTarball {
		t = lg.start("tarball")
		if reuse != nil {
			c := <-rootfsCRC
			if c.err != nil {
				return nil, fmt.Errorf("stage tarball: %w", c.err)
			}
			reuse.FileCRC = &c.crc
		}
		tname := name + ".tar.gz"
		files := append(sumFiles(o.OVMF != "", measured), RootfsName, UKIName, AuthHashName, SumName, DigestName)
		n, err := writeSummed(sums, tname, outs.tar, func(w io.Writer) (int64, error) {
			return WriteTarball(w, sdir, name, files, mtime, reuse)
		})
		if err != nil {
			return nil, fmt.Errorf("stage tarball: %w", err)
		}
		res.Stages = append(res.Stages, t.done(n))
		finals = append(finals, tname)
	}
	if o.NoGCP {
		os.Remove(filepath.Join(sdir, GCPDir))
	}

	// 7. Summary hashes (waits for the background ones).
	t = lg.start("checksums")
	if err := sums.wait(); err != nil {
		return nil, fmt.Errorf("stage checksums: %w", err)
	}
	res.Stages = append(res.Stages, t.done(0))
	for _, n := range []string{KernelName, InitrdName, OVMFName, RootfsName, UKIName, AuthHashName, MetadataName,
		measure.TDXFileName, measure.GCPFileName, measure.JSONFileName, SumName, DigestName, GCPDir + "/" + DiskName} {
		if h := sums.get(n); h != "" {
			st, err := os.Stat(in(n))
			if err != nil {
				return nil, err
			}
			res.Artifacts = append(res.Artifacts, Artifact{Path: filepath.Join(res.Dir, n), Size: st.Size(), SHA256: h})
		}
	}
	for _, f := range finals[1:] {
		st, err := os.Stat(filepath.Join(stage, f))
		if err != nil {
			return nil, err
		}
		res.Artifacts = append(res.Artifacts, Artifact{Path: filepath.Join(o.OutDir, f), Size: st.Size(), SHA256: sums.get(f)})
	}

	// 8. Publish: move the finished set into place.
	if err := publish(stage, o.OutDir, finals, name, o.NoGCP, o.NoTarball); err != nil {
		return nil, err
	}
	lg.clear()
	return res, nil
}

// SumOrder is the order of sha256sum.txt: upstream's (dstack's
// os/image/assemble.sh: ovmf.fd bzImage initramfs.cpio.gz metadata.json
// measurement.tdx.cbor, then measurement.gcp.cbor), then measurements.json,
// which upstream does not ship. Files a set lacks are left out.
var SumOrder = []string{OVMFName, KernelName, InitrdName, MetadataName, measure.TDXFileName, measure.GCPFileName, measure.JSONFileName}

// sumFiles are the files sha256sum.txt covers, in SumOrder: the boot
// inputs (ovmf.fd only when shipped), metadata.json and the measurement
// files written (measured).
func sumFiles(ovmf bool, measured []string) []string {
	var out []string
	for _, n := range SumOrder {
		switch {
		case n == OVMFName && !ovmf:
		case strings.HasPrefix(n, "measurement") && !slices.Contains(measured, n):
		default:
			out = append(out, n)
		}
	}
	return out
}

func osRelease(o Options) string {
	return fmt.Sprintf("NAME=%q\nID=dstack\nVERSION_ID=%q\nPRETTY_NAME=%q\nVARIANT_ID=%s\n",
		o.DistName, o.Version, o.DistName+" "+o.Version, o.Flavor)
}

// rename is os.Rename; tests replace it to make a publish step fail.
var rename = os.Rename

// publish renames the staged outputs to their final names. Whatever already
// has one of those names (the previous <name>/ directory and tarballs) is
// first moved aside into the stage and removed with it only after every
// new output is in place; if a rename fails, the new outputs already moved
// are removed and the previous ones put back, so a failed publish leaves
// what was there before. Stale tarballs of a skipped kind are removed.
func publish(stage, outDir string, finals []string, name string, noGCP, noTar bool) error {
	type moved struct{ final, aside string }
	var aside []moved
	var done []string
	var mu sync.Mutex // one step at a time, or the signal handler's undo
	undo := func() {
		for _, d := range done {
			os.RemoveAll(filepath.Join(outDir, d))
		}
		for i := len(aside) - 1; i >= 0; i-- {
			os.Rename(aside[i].aside, aside[i].final)
		}
		done, aside = nil, nil
	}
	// Interrupted half-way: put the previous outputs back before the
	// stage (holding them) is removed.
	forget := atomicfile.TrackFunc(func() { mu.Lock(); undo() })
	defer forget()
	mu.Lock()
	defer mu.Unlock()
	for i, f := range finals {
		mu.Unlock()
		mu.Lock()
		final := filepath.Join(outDir, f)
		if _, err := os.Lstat(final); err == nil {
			a := filepath.Join(stage, fmt.Sprintf(".previous-%d", i))
			if err := rename(final, a); err != nil {
				undo()
				return fmt.Errorf("publish: move the previous %s aside: %w", final, err)
			}
			aside = append(aside, moved{final, a})
		}
		if err := rename(filepath.Join(stage, f), final); err != nil {
			undo()
			return fmt.Errorf("publish %s: %w", final, err)
		}
		done = append(done, f)
	}
	if noGCP {
		os.Remove(filepath.Join(outDir, name+"-gcp.tar.gz"))
	}
	if noTar {
		os.Remove(filepath.Join(outDir, name+".tar.gz"))
	}
	return nil
}

// checkInputsOutside refuses inputs that the outputs would replace: an
// input that is (or links to) one of the final tarballs, or a file in the
// final <name>/ directory (which publish replaces).
func checkInputsOutside(o Options, name string) error {
	inputs := []string{o.Kernel, o.Initrd, o.Rootfs, o.Stub, o.OVMF}
	for _, f := range []string{name + ".tar.gz", name + "-gcp.tar.gz"} {
		if err := atomicfile.CheckNotInput(filepath.Join(o.OutDir, f), inputs...); err != nil {
			return err
		}
	}
	final := filepath.Join(o.OutDir, name)
	fd, err := filepath.EvalSymlinks(final)
	if err != nil {
		return nil // no previous output directory
	}
	fd, _ = filepath.Abs(fd)
	var existing []string
	filepath.WalkDir(fd, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			existing = append(existing, p)
		}
		return nil
	})
	for _, in := range inputs {
		if in == "" {
			continue
		}
		r, err := filepath.EvalSymlinks(in)
		if err != nil {
			continue
		}
		if r, _ = filepath.Abs(r); strings.HasPrefix(r, fd+string(filepath.Separator)) {
			return fmt.Errorf("input %s is inside the output directory %s, which dist replaces: %w", in, final, atomicfile.ErrIsInput)
		}
		for _, e := range existing {
			if err := atomicfile.CheckNotInput(e, in); err != nil {
				return fmt.Errorf("input %s is a file of the output directory %s, which dist replaces (%w)", in, final, err)
			}
		}
	}
	return nil
}

// copyHashed copies src to dst (atomically) and returns its size and sha256.
func copyHashed(src, dst string) (int64, string, error) {
	h := sha256.New()
	n, err := atomicfile.Copy(dst, src, 0o644, h)
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// writeSummed writes out through fill and has s hash it under name while
// it is written, then commits it. It returns what fill returned.
func writeSummed(s *summer, name string, out *atomicfile.File, fill func(io.Writer) (int64, error)) (int64, error) {
	fw := s.follow(name, out)
	n, err := fill(fw)
	if err == nil {
		err = out.Commit()
	}
	fw.finish(err)
	return n, err
}

// buildDisk writes disk.raw into its output from the UKI and the rootfs
// image.
func buildDisk(outs *outputs, ukiPath, rootfsPath string, opts disk.Options) (disk.Layout, error) {
	l, err := disk.BuildInto(outs.disk.File, ukiPath, rootfsPath, opts)
	if err != nil {
		return disk.Layout{}, err
	}
	return l, outs.disk.Commit()
}
