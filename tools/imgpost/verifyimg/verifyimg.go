// Package verifyimg checks dstack images offline, as a user who downloaded
// one would: a disk.raw, a dist directory (<dist>-<ver>/) or a GCP import
// tarball. It recomputes what can be recomputed (the verity tree of the
// rootfs, the checksums, the UKI's Authenticode digest) and compares it with
// what the image claims (the kernel command line, sha256sum.txt, digest.txt,
// the .auth_hash.txt file). The first mismatch is an error naming it.
package verifyimg

import (
	"archive/tar"
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

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/disk"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/dist"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/sqfs"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/uki"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/verity"

	_ "crypto/sha256" // crypto.SHA256 for authenticode
)

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

// Verify detects what path is (a directory, a gzip file, else a disk image)
// and checks it.
func Verify(path string) (*Report, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return Dir(path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	magic := make([]byte, 2)
	_, _ = io.ReadFull(f, magic)
	f.Close()
	if bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		return GCPTarball(path)
	}
	return Disk(path)
}

// Disk checks a disk.raw: the GPT (protective MBR, backup header, partitions),
// the ESP's EFI/BOOT/BOOTX64.EFI, the dstack.rootfs_hash and
// dstack.rootfs_size in the UKI's command line against the verity tree
// recomputed from the dstack-rootfs partition, and the squashfs in it.
func Disk(path string) (*Report, error) {
	d, err := disk.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: GPT: %w", path, err)
	}
	defer d.Close()
	rep := &Report{Path: path, Kind: "disk"}
	if err := checkDisk(d, rep); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rep, nil
}

func checkDisk(d *disk.Disk, rep *Report) error {
	if err := d.Verify(); err != nil {
		return fmt.Errorf("GPT: %w", err)
	}
	rep.ok("GPT: protective MBR, primary and backup headers agree, %d partitions", len(d.Partitions))
	esp, err := d.ESP()
	if err != nil {
		return fmt.Errorf("GPT: %w", err)
	}
	bootx, err := d.OpenESPFile(disk.BootPath)
	if err != nil {
		return fmt.Errorf("ESP (partition %d): %s: %w", esp.Index, disk.BootPath, err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(bootx, 0, bootx.Size())); err != nil {
		return fmt.Errorf("ESP: read %s: %w", disk.BootPath, err)
	}
	rep.UKISHA256 = hex.EncodeToString(h.Sum(nil))
	info, err := uki.InspectReader(bootx, bootx.Size())
	if err != nil {
		return fmt.Errorf("ESP: %s is not a PE image: %w", disk.BootPath, err)
	}
	if !info.HasCmdline {
		return fmt.Errorf("ESP: %s has no .cmdline section", disk.BootPath)
	}
	rep.ok("ESP: %s, %d bytes, sha256 %s", disk.BootPath, bootx.Size(), rep.UKISHA256)
	hash, size, err := dist.RootfsArgs(info.Cmdline)
	if err != nil {
		return fmt.Errorf("UKI command line: %w", err)
	}
	if !slices.Contains(strings.Fields(info.Cmdline), dist.RootfsDeviceArg) {
		return fmt.Errorf("UKI command line lacks %s", dist.RootfsDeviceArg)
	}
	rep.RootHash, rep.RootfsSize = hash, size
	part, err := d.Partition(disk.RootfsName)
	if err != nil {
		return fmt.Errorf("GPT: %w", err)
	}
	sec := d.PartitionReader(part)
	if err := checkRootfs(sec, size, hash, fmt.Sprintf("partition %d %q", part.Index, part.Name), rep); err != nil {
		return err
	}
	return nil
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
		return fmt.Errorf("rootfs (%s) does not match dstack.rootfs_hash/dstack.rootfs_size: %w", what, err)
	}
	rep.ok("rootfs (%s): %d data blocks and %d hash blocks match root hash %s", what, vinfo.DataBlocks, vinfo.HashBlocks, hash)
	si, err := sqfs.CheckReaderAt(r, size)
	if err != nil {
		return fmt.Errorf("rootfs (%s): %w", what, err)
	}
	rep.ok("rootfs (%s): squashfs (%s), %d bytes, root directory readable", what, si.Compression, si.BytesUsed)
	return nil
}

// GCPTarball checks a GCP import tarball: one member, disk.raw, which is then
// extracted (sparse) to a temporary file and checked as Disk does.
func GCPTarball(path string) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: not gzip: %w", path, err)
	}
	tr := tar.NewReader(zr)
	hdr, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("%s: tar: %w", path, err)
	}
	if hdr.Name != dist.DiskName {
		return nil, fmt.Errorf("%s: first member is %q, want %q", path, hdr.Name, dist.DiskName)
	}
	tmp, err := os.CreateTemp("", "imgpost-verify-*.raw")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := copySparse(tmp, tr, hdr.Size); err != nil {
		return nil, fmt.Errorf("%s: extract %s: %w", path, hdr.Name, err)
	}
	if _, err := tr.Next(); err != io.EOF {
		if err == nil {
			return nil, fmt.Errorf("%s: more than one member (want only %s)", path, dist.DiskName)
		}
		return nil, fmt.Errorf("%s: tar: %w", path, err)
	}
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return nil, fmt.Errorf("%s: gzip: %w", path, err)
	}
	d, err := disk.NewReader(tmp, hdr.Size, path+":"+dist.DiskName)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: GPT: %w", path, dist.DiskName, err)
	}
	rep := &Report{Path: path, Kind: "GCP tarball"}
	rep.ok("archive: one member %s, %d bytes", hdr.Name, hdr.Size)
	if err := checkDisk(d, rep); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", path, dist.DiskName, err)
	}
	return rep, nil
}

// copySparse copies size bytes from r to f, seeking over all-zero blocks so
// that the copy stays sparse.
func copySparse(f *os.File, r io.Reader, size int64) error {
	buf := make([]byte, 1<<20)
	var off int64
	for off < size {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), size-off)])
		if n > 0 {
			for i := 0; i < n; i += 4096 {
				blk := buf[i:min(i+4096, n)]
				if !allZero(blk) {
					if _, err := f.WriteAt(blk, off+int64(i)); err != nil {
						return err
					}
				}
			}
			off += int64(n)
		}
		if err != nil {
			return err
		}
	}
	return f.Truncate(size)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Dir checks a dist directory: metadata.json, sha256sum.txt (every file it
// lists, and it lists the boot inputs and metadata.json), digest.txt, the
// rootfs against the command line in metadata.json, the UKI's command line
// and Authenticode digest, and gcp/disk.raw when present (its BOOTX64.EFI
// must be dstack-uki.efi).
func Dir(dir string) (*Report, error) {
	rep := &Report{Path: dir, Kind: "dist directory"}
	if err := checkDir(dir, rep); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return rep, nil
}

func checkDir(dir string, rep *Report) error {
	p := func(n string) string { return filepath.Join(dir, n) }
	mb, err := os.ReadFile(p(dist.MetadataName))
	if err != nil {
		return err
	}
	md, err := dist.ParseMetadata(mb)
	if err != nil {
		return err
	}
	sumText, err := os.ReadFile(p(dist.SumName))
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
			return fmt.Errorf("%s does not list %s", dist.SumName, w)
		}
	}
	for _, e := range sums {
		got, err := fileSHA256(p(e.Name))
		if err != nil {
			return fmt.Errorf("%s lists %s: %w", dist.SumName, e.Name, err)
		}
		if got != e.SHA256 {
			return fmt.Errorf("%s: sha256 %s, but %s says %s (file changed)", e.Name, got, dist.SumName, e.SHA256)
		}
	}
	rep.ok("%s: %d files match (%s)", dist.SumName, len(sums), strings.Join(listed, ", "))
	dg, err := os.ReadFile(p(dist.DigestName))
	if err != nil {
		return err
	}
	if want := dist.DigestText(sumText); !bytes.Equal(dg, want) {
		return fmt.Errorf("%s is %q, but sha256 of %s is %s", dist.DigestName, strings.TrimSpace(string(dg)), dist.SumName, strings.TrimSpace(string(want)))
	}
	rep.ok("%s: %s = sha256(%s)", dist.DigestName, strings.TrimSpace(string(dg)), dist.SumName)

	hash, size, err := dist.RootfsArgs(md.Cmdline)
	if err != nil {
		return fmt.Errorf("%s cmdline: %w", dist.MetadataName, err)
	}
	rep.RootHash, rep.RootfsSize = hash, size
	rf, err := os.Open(p(md.Rootfs))
	if err != nil {
		return fmt.Errorf("%s rootfs: %w", dist.MetadataName, err)
	}
	defer rf.Close()
	if err := checkRootfs(rf, size, hash, md.Rootfs, rep); err != nil {
		return err
	}

	// The UKI: same rootfs parameters, and its Authenticode digest as recorded.
	ukiPath := p(dist.UKIName)
	uinfo, err := uki.Inspect(ukiPath)
	if err != nil {
		return fmt.Errorf("%s: %w", dist.UKIName, err)
	}
	uh, us, err := dist.RootfsArgs(uinfo.Cmdline)
	if err != nil {
		return fmt.Errorf("%s command line: %w", dist.UKIName, err)
	}
	if uh != hash || us != size {
		return fmt.Errorf("%s command line has dstack.rootfs_hash=%s dstack.rootfs_size=%d, %s has %s %d", dist.UKIName, uh, us, dist.MetadataName, hash, size)
	}
	ad, err := authenticode.FileDigest(ukiPath, crypto.SHA256)
	if err != nil {
		return err
	}
	adHex := hex.EncodeToString(ad)
	rec, err := os.ReadFile(p(dist.AuthHashName))
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(rec)) != adHex {
		return fmt.Errorf("%s: Authenticode sha256 %s, but %s says %s (UKI changed)", dist.UKIName, adHex, dist.AuthHashName, strings.TrimSpace(string(rec)))
	}
	rep.ok("%s: command line matches %s; Authenticode sha256 %s matches %s", dist.UKIName, dist.MetadataName, adHex, dist.AuthHashName)
	ukiSum, err := fileSHA256(ukiPath)
	if err != nil {
		return err
	}

	diskPath := p(filepath.Join(dist.GCPDir, dist.DiskName))
	if _, err := os.Stat(diskPath); err == nil {
		d, err := disk.Open(diskPath)
		if err != nil {
			return fmt.Errorf("%s: GPT: %w", diskPath, err)
		}
		defer d.Close()
		if err := checkDisk(d, rep); err != nil {
			return fmt.Errorf("%s/%s: %w", dist.GCPDir, dist.DiskName, err)
		}
		if rep.UKISHA256 != ukiSum {
			return fmt.Errorf("%s/%s: %s (sha256 %s) is not %s (sha256 %s)", dist.GCPDir, dist.DiskName, disk.BootPath, rep.UKISHA256, dist.UKIName, ukiSum)
		}
		if rep.RootHash != hash || rep.RootfsSize != size {
			return fmt.Errorf("%s/%s: rootfs parameters differ from %s", dist.GCPDir, dist.DiskName, dist.MetadataName)
		}
		rep.ok("%s/%s: %s is %s", dist.GCPDir, dist.DiskName, disk.BootPath, dist.UKIName)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	rep.UKISHA256 = ukiSum
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
