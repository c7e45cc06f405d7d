package verifyimg

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/disk"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/dist"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/pe"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/uki"
)

// The attacks of issue 14, each made from a good dist output with the
// independent tools an attacker would use (sgdisk, mkfs.fat, mtools,
// sha256sum), and each refused by `imgpost verify` (exit 1, the cause named
// on stderr).

// otherUKI builds a UKI like the fixture's with the given command line.
func otherUKI(t *testing.T, cmdline string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "other.efi")
	if _, err := uki.Build(uki.Options{Stub: fixIn.Stub, Linux: fixIn.Kernel, Initrds: []string{fixIn.Initrd}, Cmdline: cmdline, Out: p}); err != nil {
		t.Fatal(err)
	}
	return p
}

func espOf(t *testing.T, path string) disk.Partition {
	t.Helper()
	d, err := disk.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	esp, err := d.ESP()
	if err != nil {
		t.Fatal(err)
	}
	return esp
}

// verifyCLI runs `imgpost verify path`: exit code and stderr.
func verifyCLI(t *testing.T, path string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(testutil.Imgpost(t), "verify", path)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), so.String(), se.String()
}

// bootDirOffset finds the EFI/BOOT directory's first cluster on the FAT32
// ESP at espOff of the disk image (a reader independent of package disk:
// the fields as the FAT specification places them).
func bootDirOffset(t *testing.T, img *os.File, espOff int64) (off, clusterBytes int64) {
	t.Helper()
	bs := make([]byte, 512)
	img.ReadAt(bs, espOff)
	le := binary.LittleEndian
	bps, spc := int64(le.Uint16(bs[11:])), int64(bs[13])
	rsvd, nfats, fatsz := int64(le.Uint16(bs[14:])), int64(bs[16]), int64(le.Uint32(bs[36:]))
	clusterBytes = bps * spc
	at := func(c uint32) int64 { return espOff + (rsvd+nfats*fatsz)*bps + int64(c-2)*clusterBytes }
	find := func(dir int64, name string) uint32 {
		b := make([]byte, clusterBytes)
		img.ReadAt(b, dir)
		for i := 0; i+32 <= len(b); i += 32 {
			if string(b[i:i+11]) == name && b[i+11]&0x10 != 0 {
				return uint32(le.Uint16(b[i+20:]))<<16 | uint32(le.Uint16(b[i+26:]))
			}
		}
		t.Fatalf("no %q directory", name)
		return 0
	}
	efi := find(at(le.Uint32(bs[44:])), "EFI        ")
	return at(find(at(efi), "BOOT       ")), clusterBytes
}

func TestVerifyRefusesAttacks(t *testing.T) {
	testutil.Need(t, "sgdisk", "mkfs.fat", "mmd", "mcopy", "sha256sum")
	_, res := fixture(t)
	evil := func(t *testing.T) string {
		return otherUKI(t, strings.Replace(res.UKICmdline, "console=ttyS0", "console=ttyS0 rdinit=/bin/sh", 1))
	}
	// withUKI puts a UKI with cmdline as the disk's BOOTX64.EFI (mtools).
	withUKI := func(cmdline string) func(t *testing.T, out, set string) {
		return func(t *testing.T, out, set string) {
			p := otherUKI(t, cmdline)
			testutil.Run(t, "mcopy", "-o", "-i", fmt.Sprintf("%s@@%d", diskPath(out, set), espOf(t, diskPath(out, set)).Offset), p, "::EFI/BOOT/BOOTX64.EFI")
		}
	}
	// dirUKI replaces the directory's UKI and its recorded Authenticode
	// digest, so that only the command line check is left to catch it.
	dirUKI := func(cmdline string) func(t *testing.T, out, set string) {
		return func(t *testing.T, out, set string) {
			p := otherUKI(t, cmdline)
			b, _ := os.ReadFile(p)
			os.WriteFile(filepath.Join(set, dist.UKIName), b, 0o644)
			if _, err := authenticode.WriteHashFile(filepath.Join(set, dist.UKIName), ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	// metadata rewrites metadata.json and regenerates sha256sum.txt and
	// digest.txt as an attacker would.
	metadata := func(old, new string) func(t *testing.T, out, set string) {
		return func(t *testing.T, out, set string) {
			p := filepath.Join(set, dist.MetadataName)
			b, _ := os.ReadFile(p)
			if !bytes.Contains(b, []byte(old)) {
				t.Fatalf("metadata.json lacks %q", old)
			}
			os.WriteFile(p, bytes.Replace(b, []byte(old), []byte(new), 1), 0o644)
			sums := testutil.Run(t, "sh", "-c", "cd "+set+" && sha256sum ovmf.fd bzImage initramfs.cpio.gz metadata.json")
			os.WriteFile(filepath.Join(set, dist.SumName), []byte(sums), 0o644)
			os.WriteFile(filepath.Join(set, dist.DigestName), dist.DigestText([]byte(sums)), 0o644)
		}
	}
	repl := func(old, new string) string { return strings.Replace(res.UKICmdline, old, new, 1) }
	tarball := func(out, set string) string { return filepath.Join(out, res.Name+"-gcp.tar.gz") }
	cases := []struct {
		name   string
		target func(out, set string) string
		tamper func(t *testing.T, out, set string)
		want   string
	}{
		{"non-ESP FAT partition first holding its own BOOTX64.EFI", diskPath, func(t *testing.T, out, set string) {
			d := diskPath(out, set)
			st, _ := os.Stat(d)
			os.Truncate(d, st.Size()+64<<20)
			testutil.Run(t, "sgdisk", "-e", d)
			testutil.Run(t, "sgdisk", "-n", "3:0:+40M", "-t", "3:8300", "-c", "3:data", d)
			testutil.Run(t, "sgdisk", "--transpose=1:3", d)
			dd, err := disk.Open(d)
			if err != nil {
				t.Fatal(err)
			}
			p, err := dd.Partition("data")
			dd.Close()
			if err != nil || p.Index != 1 {
				t.Fatalf("data partition: %+v %v", p, err)
			}
			testutil.Run(t, "mkfs.fat", "-F", "16", "--offset", fmt.Sprint(p.FirstLBA), d, fmt.Sprint(p.Size/1024))
			img := fmt.Sprintf("%s@@%d", d, p.Offset)
			testutil.Run(t, "mmd", "-i", img, "::EFI", "::EFI/BOOT")
			testutil.Run(t, "mcopy", "-i", img, evil(t), "::EFI/BOOT/BOOTX64.EFI")
		}, `partition 1 "data" (type 0FC63DAF-8483-4772-8E79-3D69D8477DE4) holds a FAT file system besides the ESP`},
		{"bootx64.efi entry before BOOTX64.EFI", diskPath, func(t *testing.T, out, set string) {
			d := diskPath(out, set)
			esp := espOf(t, d)
			testutil.Run(t, "mcopy", "-i", fmt.Sprintf("%s@@%d", d, esp.Offset), evil(t), "::EFI/BOOT/OTHER.EFI")
			f, err := os.OpenFile(d, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			off, size := bootDirOffset(t, f, esp.Offset)
			dir := make([]byte, size)
			f.ReadAt(dir, off)
			var dot, boot, other []byte
			for i := 0; i+32 <= len(dir); i += 32 {
				switch e := dir[i : i+32]; string(e[:11]) {
				case ".          ", "..         ":
					dot = append(dot, e...)
				case "BOOTX64 EFI":
					boot = bytes.Clone(e)
				case "OTHER   EFI":
					other = bytes.Clone(e)
				}
			}
			if boot == nil || other == nil {
				t.Fatal("entries not found")
			}
			copy(other, "BOOTX64 EFI")
			other[12] = 0x18 // NT flags: base name and extension in lower case: "bootx64.efi"
			nd := append(append(append(dot, other...), boot...), make([]byte, size)...)[:size]
			f.WriteAt(nd, off)
		}, "have the same name in some case"},
		{"disk UKI with rdinit=/bin/sh", diskPath, withUKI(repl("console=ttyS0", "console=ttyS0 rdinit=/bin/sh")), `extra or repeated word "rdinit=/bin/sh"`},
		{"disk UKI with a second dstack.rootfs_device", diskPath, withUKI(res.UKICmdline + " dstack.rootfs_device=/dev/vdb"), `extra or repeated word "dstack.rootfs_device=/dev/vdb"`},
		{"disk UKI with a repeated word", diskPath, withUKI(res.UKICmdline + " panic=1"), `extra or repeated word "panic=1"`},
		{"disk UKI with a \\v separator", diskPath, withUKI(repl("console=ttyS0 ", "console=ttyS0\v")), "unexpected character U+000B"},
		{"disk UKI with a U+00A0 separator", diskPath, withUKI(repl("console=ttyS0 ", "console=ttyS0\u00a0")), "unexpected character U+00A0"},
		{"disk UKI with a U+2003 separator", diskPath, withUKI(repl("console=ttyS0 ", "console=ttyS0\u2003")), "unexpected character U+2003"},
		{"disk UKI with a double space", diskPath, withUKI(repl("console=ttyS0 ", "console=ttyS0  ")), "separator"},
		{"disk UKI without a word", diskPath, withUKI(repl(" mce=off", "")), `missing word "mce=off"`},
		{"dir UKI with rdinit=/bin/sh", setPath, dirUKI(repl("console=ttyS0", "console=ttyS0 rdinit=/bin/sh")), `extra or repeated word "rdinit=/bin/sh"`},
		{"dir UKI with two .cmdline sections", setPath, func(t *testing.T, out, set string) {
			p := filepath.Join(set, dist.UKIName)
			f, err := pe.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			osrel := f.SectionsNamed(".osrel")[0]
			f.Close()
			b, _ := os.ReadFile(p)
			copy(b[osrel.HeaderOffset:osrel.HeaderOffset+8], ".cmdline")
			os.WriteFile(p, b, 0o644)
			authenticode.WriteHashFile(p, "")
		}, `2 sections named ".cmdline"`},
		{"dir with a truncated UKI", setPath, func(t *testing.T, out, set string) {
			p := filepath.Join(set, dist.UKIName)
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()/2)
		}, "runs past the end of the file"},
		{"dir with a UKI whose SizeOfOptionalHeader is 0", setPath, func(t *testing.T, out, set string) {
			p := filepath.Join(set, dist.UKIName)
			b, _ := os.ReadFile(p)
			binary.LittleEndian.PutUint16(b[binary.LittleEndian.Uint32(b[0x3c:])+4+16:], 0)
			os.WriteFile(p, b, 0o644)
		}, "SizeOfOptionalHeader"},
		{"metadata.json keys differing in case", setPath, metadata(`"kernel": "bzImage",`, `"kernel": "evil", "Kernel": "bzImage",`), `unknown key "Kernel"`},
		{"metadata.json rootfs outside the directory", setPath, metadata(`"rootfs": "rootfs.img.verity"`, `"rootfs": "../elsewhere/r"`), `rootfs: "../elsewhere/r" is not a plain file name`},
		{"metadata.json command line with an extra word", setPath, metadata(`"cmdline": "console=ttyS0`, `"cmdline": "console=ttyS0 rdinit=/bin/sh`), `metadata.json: cmdline is not the command line dist writes for this image: extra or repeated word "rdinit=/bin/sh"`},
		{"GCP tarball with a second disk.raw after the end-of-archive marker", tarball, func(t *testing.T, out, set string) {
			p := tarball(out, set)
			b, _ := os.ReadFile(p)
			zr, _ := gzip.NewReader(bytes.NewReader(b))
			tarb, _ := io.ReadAll(zr)
			// A second archive holding another disk.raw, made by GNU tar.
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "disk.raw"), bytes.Repeat([]byte("evil"), 1024), 0o644)
			cmd := exec.Command("tar", "--format=oldgnu", "-cf", "-", "disk.raw")
			cmd.Dir = dir
			second, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			var z bytes.Buffer
			zw := gzip.NewWriter(&z)
			zw.Write(tarb)
			zw.Write(second)
			zw.Close()
			os.WriteFile(p, z.Bytes(), 0o644)
		}, "end of archive: non-zero data"},
		{"two partitions named dstack-rootfs", diskPath, func(t *testing.T, out, set string) {
			d := diskPath(out, set)
			st, _ := os.Stat(d)
			os.Truncate(d, st.Size()+8<<20)
			testutil.Run(t, "sgdisk", "-e", d)
			testutil.Run(t, "sgdisk", "-n", "3:0:+4M", "-t", "3:8300", "-c", "3:"+disk.RootfsName, d)
		}, `2 partitions named "dstack-rootfs"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, set := work(t)
			target := tc.target(out, set)
			if code, _, se := verifyCLI(t, target); code != 0 {
				t.Fatalf("the untouched copy fails: %s", se)
			}
			tc.tamper(t, out, set)
			code, so, se := verifyCLI(t, target)
			if code != 1 || !strings.Contains(se, tc.want) || !strings.Contains(se, filepath.Base(target)) {
				t.Fatalf("exit %d, stderr %q; want exit 1 naming %s and saying %q\n%s", code, se, filepath.Base(target), tc.want, so)
			}
		})
	}
}

// TestVerifyReport: a good output passes for the directory, gcp/disk.raw
// and the GCP tarball, and the report gives the UKI's sha256 and its
// Authenticode digest as firmware measures it (the auth_hash.txt value).
func TestVerifyReport(t *testing.T) {
	out, res := fixture(t)
	set := filepath.Join(out, res.Name)
	for _, p := range []string{set, diskPath(out, set), filepath.Join(out, res.Name+"-gcp.tar.gz")} {
		code, so, se := verifyCLI(t, p)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", p, code, se)
		}
		if !strings.Contains(so, "Authenticode sha256 "+res.AuthHash+" (what firmware measures)") || !strings.Contains(so, "one .cmdline, exactly dist's: "+res.UKICmdline) {
			t.Errorf("%s: report lacks the Authenticode digest or the command line:\n%s", p, so)
		}
		rep, err := Verify(p)
		if err != nil || rep.UKIAuthenticode != res.AuthHash || rep.Cmdline != res.UKICmdline {
			t.Errorf("%s: report %+v, %v", p, rep, err)
		}
	}
}

// TestVerifyCmdlineOptions: an image built with another base and extra
// words passes only when verify is told the same.
func TestVerifyCmdlineOptions(t *testing.T) {
	fixture(t)
	dir := t.TempDir()
	base := "console=ttyS0 init=/init"
	extra := []string{"dstack.data_dev=/dev/nvme0n2"}
	res, err := dist.Run(dist.Options{
		Kernel: fixIn.Kernel, Initrd: fixIn.Initrd, Rootfs: fixIn.Rootfs, Stub: fixIn.Stub,
		DistName: "dstack", Version: "2.0", Flavor: "prod", OutDir: dir, NoTarball: true,
		CmdlineBase: base, GCPCmdlineExtra: extra,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{res.Dir, filepath.Join(res.Dir, dist.GCPDir, dist.DiskName)} {
		if _, err := VerifyWith(p, Options{CmdlineBase: base, CmdlineExtra: extra}); err != nil {
			t.Errorf("%s with the same options: %v", p, err)
		}
		if _, err := Verify(p); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "not the command line dist writes") {
			t.Errorf("%s with the default options: %v", p, err)
		}
	}
}
