// Package verifyimg checks dstack images offline, as a user who downloaded
// one would: a disk.raw, a dist directory (<dist>-<ver>/) or a GCP import
// tarball. It recomputes what can be recomputed (the verity tree of the
// rootfs, the checksums, the UKI's Authenticode digest) and compares it with
// what the image claims (the kernel command line, sha256sum.txt, digest.txt,
// the .auth_hash.txt file). The first mismatch is an error naming it.
//
// Every byte it reads is treated as hostile (tools/imgpost/README.md,
// "imgpost verify"): an OK means the disk has exactly one boot path (one FAT file
// system, in the one ESP, holding one EFI/BOOT/BOOTX64.EFI under any case,
// in directories without colliding names), the UKI has exactly one
// .cmdline section equal, byte for byte, to the command line dist writes
// for the rootfs it names, and that rootfs verifies. Every parser on the way
// is bounded by the file (package pe, disk's FAT and GPT readers,
// gcptar.Extract, dist.ParseMetadata), and a GCP tarball is extracted to an
// already unlinked temporary file, so nothing is left behind on any exit.
package verifyimg

import (
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/internal/errkind"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/disk"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/dist"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/gcptar"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/measure"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/pe"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/sqfs"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/verity"

	_ "crypto/sha256" // crypto.SHA256 for authenticode
)

// ErrMismatch is wrapped by every error for an image that is readable and
// shaped as a dstack image but does not match what it records: the UKI's
// command line is not dist's for the rootfs it names, the rootfs does not
// verify against its root hash, a file does not match sha256sum.txt,
// digest.txt or the .auth_hash.txt file, a measurement file is not the
// recomputed one, gcp/disk.raw differs from the set. Such an image was
// changed after dist wrote it. Other errors are an image that cannot be read
// or is not shaped as one (disk.ErrBadGPT, disk.ErrBootPath, disk.ErrBadFAT,
// pe.ErrFormat, sqfs.ErrInvalid, dist.ErrMalformed, gcptar.ErrArchive, a
// missing file).
var ErrMismatch = errors.New("the image does not match what it records")

// Report lists what was checked, one line per check, for the user.
type Report struct {
	Path   string
	Kind   string // "disk", "dist directory", "GCP tarball"
	Checks []string
	// RootHash and RootfsSize are the verity parameters found (and checked).
	RootHash   string
	RootfsSize int64
	// UKISHA256 is the sha256 of the UKI (BOOTX64.EFI or dstack-uki.efi).
	UKISHA256 string
	// UKIAuthenticode is the UKI's SHA-256 Authenticode digest as firmware
	// measures it (authenticode.FirmwareDigest).
	UKIAuthenticode string
	// Cmdline is the UKI's command line.
	Cmdline string
}

// Options say which command line to expect: the one dist writes with the
// same --cmdline-base and --gcp-cmdline-extra.
type Options struct {
	CmdlineBase  string   // "": dist.DefaultCmdlineBase
	CmdlineExtra []string // the UKI's extra words (dist --gcp-cmdline-extra)
}

func (o Options) base() string {
	if o.CmdlineBase == "" {
		return dist.DefaultCmdlineBase
	}
	return o.CmdlineBase
}

func (r *Report) ok(format string, a ...any) { r.Checks = append(r.Checks, fmt.Sprintf(format, a...)) }

// String renders the report.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s): OK\n", r.Path, r.Kind)
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "  ok  %s\n", c)
	}
	return b.String()
}

// Verify is VerifyWith with the default command line.
func Verify(path string) (*Report, error) { return VerifyWith(path, Options{}) }

// VerifyWith detects what path is (a directory, a gzip file, else a disk
// image) and checks it, expecting the command line o describes.
func VerifyWith(path string, o Options) (*Report, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return dirCheck(path, o)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	magic := make([]byte, 2)
	_, _ = io.ReadFull(f, magic)
	f.Close()
	if bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		return gcpTarball(path, o)
	}
	return diskCheck(path, o)
}

// Disk checks a disk.raw: the GPT (protective MBR, backup header,
// partitions), the one boot path (disk.BootFile), the UKI's command line
// (exactly dist's for its dstack.rootfs_hash and dstack.rootfs_size) against
// the verity tree recomputed from the dstack-rootfs partition, and the
// squashfs in it.
func Disk(path string) (*Report, error) { return diskCheck(path, Options{}) }

func diskCheck(path string, o Options) (*Report, error) {
	d, err := disk.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: GPT: %w", path, err)
	}
	defer d.Close()
	rep := &Report{Path: path, Kind: "disk"}
	if err := checkDisk(d, rep, o); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rep, nil
}

func checkDisk(d *disk.Disk, rep *Report, o Options) error {
	if err := d.Verify(); err != nil {
		return fmt.Errorf("GPT: %w", err)
	}
	rep.ok("GPT: protective MBR, primary and backup headers agree, %d partitions", len(d.Partitions))
	boot, err := d.BootFile()
	if err != nil {
		return fmt.Errorf("boot path: %w", err)
	}
	bootx := boot.File
	rep.ok("boot path: one FAT file system, the ESP (partition %d), with one %s (no colliding names)", boot.Partition.Index, disk.BootPath)
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(bootx, 0, bootx.Size())); err != nil {
		return fmt.Errorf("ESP: read %s: %w", disk.BootPath, err)
	}
	rep.UKISHA256 = hex.EncodeToString(h.Sum(nil))
	what := "ESP:/" + disk.BootPath
	pf, err := pe.NewFile(bootx, bootx.Size(), what)
	if err != nil {
		return err
	}
	hash, size, err := checkUKI(pf, o, rep)
	if err != nil {
		return err
	}
	ad, err := authenticode.FirmwareDigest(bootx, bootx.Size(), crypto.SHA256)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	rep.UKIAuthenticode = hex.EncodeToString(ad)
	rep.ok("ESP: %s, %d bytes, sha256 %s, Authenticode sha256 %s (what firmware measures)", disk.BootPath, bootx.Size(), rep.UKISHA256, rep.UKIAuthenticode)
	rep.RootHash, rep.RootfsSize = hash, size
	var parts []disk.Partition
	for _, p := range d.Partitions {
		if p.Name == disk.RootfsName {
			parts = append(parts, p)
		}
	}
	if len(parts) != 1 {
		return fmt.Errorf("GPT: %d partitions named %q (PARTLABEL), want exactly one", len(parts), disk.RootfsName)
	}
	part := parts[0]
	if size > part.Size {
		return errkind.Errorf(ErrMismatch, "dstack.rootfs_size=%d is larger than partition %d (%d bytes)", size, part.Index, part.Size)
	}
	return checkRootfs(d.PartitionReader(part), size, hash, fmt.Sprintf("partition %d %q", part.Index, part.Name), rep)
}

// checkUKI checks the UKI's sections and command line: exactly one section
// of each name (so no stub can pick a different .cmdline than the one read
// here), and a .cmdline equal byte for byte to the command line dist writes
// for the root hash and size it names. It returns those.
func checkUKI(pf *pe.File, o Options, rep *Report) (string, int64, error) {
	seen := map[string]bool{}
	for _, s := range pf.Sections {
		if seen[s.Name] {
			return "", 0, fmt.Errorf("%s: %d sections named %q, want one (which one a stub uses is its own business)", pf.Name, len(pf.SectionsNamed(s.Name)), s.Name)
		}
		seen[s.Name] = true
	}
	for _, n := range []string{".cmdline", ".linux", ".initrd"} {
		if !seen[n] {
			return "", 0, fmt.Errorf("%s: no %s section: not a UKI", pf.Name, n)
		}
	}
	b, err := pf.SectionData(pf.SectionsNamed(".cmdline")[0], 2*4096)
	if err != nil {
		return "", 0, err
	}
	got := string(b)
	hash, size, err := dist.RootfsArgs(got)
	if err != nil {
		return "", 0, fmt.Errorf("%s: .cmdline: %w", pf.Name, err)
	}
	_, want := dist.CmdlinesFor(o.base(), hash, size, o.CmdlineExtra)
	if err := compareCmdline(got, want); err != nil {
		return "", 0, errkind.Errorf(ErrMismatch, "%s: .cmdline is not the command line dist writes for this image: %w", pf.Name, err)
	}
	rep.Cmdline = got
	rep.ok("UKI: one .cmdline, exactly dist's: %s", got)
	return hash, size, nil
}

// compareCmdline explains how got differs from want (nil when equal): an
// unexpected character or separator, an extra, missing or repeated word,
// or a different order.
func compareCmdline(got, want string) error {
	if got == want {
		return nil
	}
	for i, r := range got {
		if r < 0x20 || r > 0x7e {
			return fmt.Errorf("unexpected character %U at byte %d (want printable ASCII words separated by single spaces)", r, i)
		}
	}
	if strings.Contains(got, "  ") || strings.HasPrefix(got, " ") || strings.HasSuffix(got, " ") {
		return errors.New("separator: not single spaces between words")
	}
	count := map[string]int{}
	for _, w := range strings.Split(want, " ") {
		count[w]++
	}
	for _, w := range strings.Split(got, " ") {
		if count[w] == 0 {
			return fmt.Errorf("extra or repeated word %q", w)
		}
		count[w]--
	}
	for _, w := range strings.Split(want, " ") {
		if count[w] > 0 {
			return fmt.Errorf("missing word %q", w)
		}
	}
	return fmt.Errorf("words in a different order: %q, want %q", got, want)
}

// checkRootfs verifies the verity image in r (data of size bytes, then the
// hash area) against hash and checks the squashfs in it.
func checkRootfs(r io.ReaderAt, size int64, hash, what string, rep *Report) error {
	rh, err := verity.ParseRootHash(hash)
	if err != nil {
		return err
	}
	vinfo, err := verity.Verify(r, size, rh)
	if err != nil {
		err = fmt.Errorf("rootfs (%s) does not match dstack.rootfs_hash/dstack.rootfs_size: %w", what, err)
		var be *verity.BlockError
		if errors.As(err, &be) || errors.Is(err, verity.ErrNoSuperblock) || errors.Is(err, verity.ErrBadSuperblock) {
			err = errkind.Wrap(ErrMismatch, err)
		}
		return err
	}
	rep.ok("rootfs (%s): %d data blocks and %d hash blocks match root hash %s", what, vinfo.DataBlocks, vinfo.HashBlocks, hash)
	si, err := sqfs.CheckReaderAt(r, size)
	if err != nil {
		return fmt.Errorf("rootfs (%s): %w", what, err)
	}
	rep.ok("rootfs (%s): squashfs (%s), %d bytes, root directory readable", what, si.Compression, si.BytesUsed)
	return nil
}

// GCPTarball checks a GCP import tarball: exactly one member, disk.raw,
// and nothing but zeros after it (gcptar.Extract, bounded), extracted
// (sparse) to an unlinked temporary file and checked as Disk does.
func GCPTarball(path string) (*Report, error) { return gcpTarball(path, Options{}) }

func gcpTarball(path string, o Options) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: not gzip: %w", path, err)
	}
	tmp, err := os.CreateTemp("", "imgpost-verify-*.raw")
	if err != nil {
		return nil, err
	}
	// Unlinked at once: the open file is all that is used, and nothing is
	// left whatever ends the process.
	os.Remove(tmp.Name())
	defer tmp.Close()
	m, err := gcptar.Extract(zr, tmp, tmp.Truncate, path)
	if err != nil {
		return nil, err
	}
	if m.Name != dist.DiskName {
		return nil, fmt.Errorf("%s: the member is %q, want %q", path, m.Name, dist.DiskName)
	}
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return nil, fmt.Errorf("%s: gzip: %w", path, err)
	}
	d, err := disk.NewReader(tmp, m.Size, path+":"+dist.DiskName)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: GPT: %w", path, dist.DiskName, err)
	}
	rep := &Report{Path: path, Kind: "GCP tarball"}
	rep.ok("archive: one member %s, %d bytes, nothing after the end-of-archive marker", m.Name, m.Size)
	if err := checkDisk(d, rep, o); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", path, dist.DiskName, err)
	}
	return rep, nil
}

// Dir checks a dist directory: metadata.json (read strictly), sha256sum.txt
// (every file it lists, and it lists the boot inputs and metadata.json),
// digest.txt, the rootfs against the command line in metadata.json (exactly
// dist's), the UKI's command line (exactly dist's, same rootfs) and
// Authenticode digest, and gcp/disk.raw when present (its BOOTX64.EFI must
// be dstack-uki.efi). Every file read must be a regular file (no links).
func Dir(dir string) (*Report, error) { return dirCheck(dir, Options{}) }

func dirCheck(dir string, o Options) (*Report, error) {
	rep := &Report{Path: dir, Kind: "dist directory"}
	if err := checkDir(dir, rep, o); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return rep, nil
}

// regular returns the path of name in dir after checking it is a regular
// file there (not a link, a directory or a device).
func regular(dir, name string) (string, error) {
	p := filepath.Join(dir, name)
	st, err := os.Lstat(p)
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file (%s)", name, st.Mode().Type())
	}
	return p, nil
}

func readRegular(dir, name string) ([]byte, error) {
	p, err := regular(dir, name)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

func checkDir(dir string, rep *Report, o Options) error {
	mb, err := readRegular(dir, dist.MetadataName)
	if err != nil {
		return err
	}
	md, err := dist.ParseMetadata(mb)
	if err != nil {
		return err
	}
	sumText, err := readRegular(dir, dist.SumName)
	if err != nil {
		return err
	}
	sums, err := dist.ParseSHA256Sum(sumText)
	if err != nil {
		return err
	}
	// The list must cover the boot inputs and the metadata.
	want := []string{md.Kernel, md.Initrd, dist.MetadataName}
	if md.BIOS != "" {
		want = append(want, md.BIOS)
	}
	var listed []string
	for _, e := range sums {
		listed = append(listed, e.Name)
	}
	for _, w := range want {
		if !slices.Contains(listed, w) {
			return errkind.Errorf(ErrMismatch, "%s does not list %s", dist.SumName, w)
		}
	}
	for _, e := range sums {
		p, err := regular(dir, e.Name)
		if err != nil {
			return fmt.Errorf("%s lists %s: %w", dist.SumName, e.Name, err)
		}
		got, err := fileSHA256(p)
		if err != nil {
			return fmt.Errorf("%s lists %s: %w", dist.SumName, e.Name, err)
		}
		if got != e.SHA256 {
			return errkind.Errorf(ErrMismatch, "%s: sha256 %s, but %s says %s (file changed)", e.Name, got, dist.SumName, e.SHA256)
		}
	}
	rep.ok("%s: %d files match (%s)", dist.SumName, len(sums), strings.Join(listed, ", "))
	dg, err := readRegular(dir, dist.DigestName)
	if err != nil {
		return err
	}
	if want := dist.DigestText(sumText); !bytes.Equal(dg, want) {
		return errkind.Errorf(ErrMismatch, "%s is %q, but sha256 of %s is %s", dist.DigestName, strings.TrimSpace(string(dg)), dist.SumName, strings.TrimSpace(string(want)))
	}
	rep.ok("%s: %s = sha256(%s)", dist.DigestName, strings.TrimSpace(string(dg)), dist.SumName)

	hash, size, err := dist.RootfsArgs(md.Cmdline)
	if err != nil {
		return fmt.Errorf("%s cmdline: %w", dist.MetadataName, err)
	}
	if bare, _ := dist.CmdlinesFor(o.base(), hash, size, o.CmdlineExtra); md.Cmdline != bare {
		return errkind.Errorf(ErrMismatch, "%s: cmdline is not the command line dist writes for this image: %w", dist.MetadataName, compareCmdline(md.Cmdline, bare))
	}
	rep.RootHash, rep.RootfsSize = hash, size
	rp, err := regular(dir, md.Rootfs)
	if err != nil {
		return fmt.Errorf("%s rootfs: %w", dist.MetadataName, err)
	}
	rf, err := os.Open(rp)
	if err != nil {
		return fmt.Errorf("%s rootfs: %w", dist.MetadataName, err)
	}
	defer rf.Close()
	if err := checkRootfs(rf, size, hash, md.Rootfs, rep); err != nil {
		return err
	}

	// The UKI: same rootfs parameters, and its Authenticode digest as recorded.
	ukiPath, err := regular(dir, dist.UKIName)
	if err != nil {
		return err
	}
	pf, err := pe.Open(ukiPath)
	if err != nil {
		return err
	}
	defer pf.Close()
	uh, us, err := checkUKI(pf, o, rep)
	if err != nil {
		return err
	}
	if uh != hash || us != size {
		return errkind.Errorf(ErrMismatch, "%s command line has dstack.rootfs_hash=%s dstack.rootfs_size=%d, %s has %s %d", dist.UKIName, uh, us, dist.MetadataName, hash, size)
	}
	ad, err := authenticode.FileFirmwareDigest(ukiPath, crypto.SHA256)
	if err != nil {
		return err
	}
	adHex := hex.EncodeToString(ad)
	rec, err := readRegular(dir, dist.AuthHashName)
	if err != nil {
		return err
	}
	if string(rec) != adHex+"\n" {
		return errkind.Errorf(ErrMismatch, "%s: Authenticode sha256 %s, but %s says %q (UKI changed)", dist.UKIName, adHex, dist.AuthHashName, strings.TrimSpace(string(rec)))
	}
	ukiSum, err := fileSHA256(ukiPath)
	if err != nil {
		return err
	}
	rep.ok("%s: command line matches %s; sha256 %s, Authenticode sha256 %s (what firmware measures) matches %s", dist.UKIName, dist.MetadataName, ukiSum, adHex, dist.AuthHashName)

	diskPath := filepath.Join(dir, dist.GCPDir, dist.DiskName)
	if _, err := os.Lstat(diskPath); err == nil {
		if _, err := regular(filepath.Join(dir, dist.GCPDir), dist.DiskName); err != nil {
			return fmt.Errorf("%s/%w", dist.GCPDir, err)
		}
		d, err := disk.Open(diskPath)
		if err != nil {
			return fmt.Errorf("%s: GPT: %w", diskPath, err)
		}
		defer d.Close()
		if err := checkDisk(d, rep, o); err != nil {
			return fmt.Errorf("%s/%s: %w", dist.GCPDir, dist.DiskName, err)
		}
		if rep.UKISHA256 != ukiSum {
			return errkind.Errorf(ErrMismatch, "%s/%s: %s (sha256 %s) is not %s (sha256 %s)", dist.GCPDir, dist.DiskName, disk.BootPath, rep.UKISHA256, dist.UKIName, ukiSum)
		}
		if rep.RootHash != hash || rep.RootfsSize != size {
			return errkind.Errorf(ErrMismatch, "%s/%s: rootfs parameters differ from %s", dist.GCPDir, dist.DiskName, dist.MetadataName)
		}
		rep.ok("%s/%s: %s is %s", dist.GCPDir, dist.DiskName, disk.BootPath, dist.UKIName)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := checkMeasurements(dir, listed, rep); err != nil {
		return err
	}
	rep.UKISHA256, rep.UKIAuthenticode = ukiSum, adHex
	return nil
}

// checkMeasurements recomputes the measurement files (measure.Compute) of
// a set whose sha256sum.txt lists any: the list must name exactly the files
// the set's firmware, kernel, initrd, command line and UKI give, and each
// must be byte for byte the recomputed one. A set listing none (built before
// dist wrote them) is reported as such.
func checkMeasurements(dir string, listed []string, rep *Report) error {
	var lm []string
	for _, n := range listed {
		if n == measure.TDXFileName || n == measure.GCPFileName || n == measure.JSONFileName {
			lm = append(lm, n)
		}
	}
	if len(lm) == 0 {
		rep.ok("%s lists no measurement files: measurements not checked", dist.SumName)
		return nil
	}
	ms, err := measure.Compute(dir)
	if err != nil {
		return fmt.Errorf("measurements: %w", err)
	}
	var want []string
	for _, f := range ms.Files {
		want = append(want, f.Name)
		if !slices.Contains(lm, f.Name) {
			why := ""
			if ms.NoTDX == "" && f.Name == measure.TDXFileName {
				why = " (the firmware has TDX metadata)"
			}
			return errkind.Errorf(ErrMismatch, "%s does not list %s%s", dist.SumName, f.Name, why)
		}
	}
	for _, n := range lm {
		if !slices.Contains(want, n) {
			if n == measure.TDXFileName {
				return errkind.Errorf(ErrMismatch, "%s lists %s, but the set has none: %s", dist.SumName, n, ms.NoTDX)
			}
			return errkind.Errorf(ErrMismatch, "%s lists %s, but the set gives none", dist.SumName, n)
		}
	}
	if err := ms.Check(dir); errors.Is(err, measure.ErrDiffers) {
		return errkind.Wrap(ErrMismatch, err)
	} else if err != nil {
		return err
	}
	rep.ok("measurements: %s recomputed from the set and equal", strings.Join(want, ", "))
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
