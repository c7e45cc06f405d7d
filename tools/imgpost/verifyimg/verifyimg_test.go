package verifyimg

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/disk"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/dist"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/gcptar"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/measure"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/uki"
)

var (
	fixOnce sync.Once
	fixDir  string // a pristine dist output directory (<out>)
	fixIn   testutil.DistInputs
	fixRes  *dist.Result
	fixErr  error
)

// fixture builds one dist output shared by the tests (copied before any change).
func fixture(t *testing.T) (string, *dist.Result) {
	t.Helper()
	testutil.Need(t, "mksquashfs", "cp")
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	testutil.NeedFile(t, tdxOVMF, "ovmf")
	testutil.DebianKernel(t)
	fixOnce.Do(func() {
		dir, err := os.MkdirTemp("", "verifyimg-fixture-")
		if err != nil {
			fixErr = err
			return
		}
		fixIn = testutil.MakeDistInputs(t, dir, 2<<20, 5)
		fixIn.OVMF = tdxOVMF // with TDX metadata: the set has measurement.tdx.cbor
		fixDir = filepath.Join(dir, "images")
		fixRes, fixErr = dist.Run(dist.Options{
			Kernel: fixIn.Kernel, Initrd: fixIn.Initrd, Rootfs: fixIn.Rootfs, Stub: fixIn.Stub, OVMF: fixIn.OVMF,
			DistName: "dstack", Version: "1.0", Flavor: "prod", OutDir: fixDir,
		})
	})
	if fixErr != nil {
		t.Fatal(fixErr)
	}
	if fixRes == nil {
		t.Fatal("fixture not built")
	}
	return fixDir, fixRes
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fixDir != "" {
		os.RemoveAll(filepath.Dir(fixDir))
	}
	os.Exit(code)
}

// tdxOVMF is Debian's OVMF.fd, which has TDX metadata (OVMF_CODE_4M.fd has none).
const tdxOVMF = "/usr/share/ovmf/OVMF.fd"

// resum regenerates sha256sum.txt (same names, same order, with GNU
// sha256sum) and digest.txt, as someone changing files would.
func resum(t *testing.T, set string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(set, dist.SumName))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		names = append(names, strings.Fields(l)[1])
	}
	cmd := exec.Command("sha256sum", names...)
	cmd.Dir = set
	sums, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(set, dist.SumName), sums, 0o644)
	os.WriteFile(filepath.Join(set, dist.DigestName), dist.DigestText(sums), 0o644)
}

// work copies the fixture (sparse) into a fresh directory and returns the
// copy of <dist>-<ver>/ and of the GCP tarball's path.
func work(t *testing.T) (dir, set string) {
	t.Helper()
	src, res := fixture(t)
	dir = t.TempDir()
	testutil.Run(t, "cp", "-a", "--sparse=always", src, dir)
	return filepath.Join(dir, "images"), filepath.Join(dir, "images", res.Name)
}

// TestVerifyGood: all three kinds of input pass, with the root hash dist printed.
func TestVerifyGood(t *testing.T) {
	out, res := fixture(t)
	set := filepath.Join(out, res.Name)
	for _, p := range []string{set, filepath.Join(set, "gcp", "disk.raw"), filepath.Join(out, res.Name+"-gcp.tar.gz")} {
		rep, err := Verify(p)
		if err != nil {
			t.Fatalf("Verify(%s): %v", p, err)
		}
		if rep.RootHash != res.Verity.RootHashHex() || rep.RootfsSize != res.Verity.DataSize() {
			t.Errorf("%s: report root hash %s size %d, dist made %s %d", p, rep.RootHash, rep.RootfsSize, res.Verity.RootHashHex(), res.Verity.DataSize())
		}
		if !strings.Contains(rep.String(), "OK") {
			t.Errorf("report:\n%s", rep)
		}
		if p == set && !strings.Contains(rep.String(), "measurements: measurement.gcp.cbor, measurement.tdx.cbor, measurements.json recomputed") {
			t.Errorf("report does not show the measurement check:\n%s", rep)
		}
	}
}

// TestVerifyTampered: each change is caught, and the error names it.
func TestVerifyTampered(t *testing.T) {
	testutil.Need(t, "mcopy", "sha256sum")
	_, res := fixture(t)
	cases := []struct {
		name   string
		target func(out, set string) string // what to verify
		tamper func(t *testing.T, out, set string)
		want   string
	}{
		{"disk-rootfs-byte", diskPath, func(t *testing.T, out, set string) {
			d, err := disk.Open(diskPath(out, set))
			if err != nil {
				t.Fatal(err)
			}
			p, _ := d.Partition(disk.RootfsName)
			d.Close()
			testutil.FlipByte(t, diskPath(out, set), p.Offset+5*4096+100)
		}, "data block 5 "},
		{"disk-hash-tree-byte", diskPath, func(t *testing.T, out, set string) {
			d, _ := disk.Open(diskPath(out, set))
			p, _ := d.Partition(disk.RootfsName)
			d.Close()
			testutil.FlipByte(t, diskPath(out, set), p.Offset+res.Verity.DataSize()+4096+40)
		}, "hash block"},
		{"disk-changed-uki", diskPath, func(t *testing.T, out, set string) {
			// A UKI whose command line names another root hash, put on the ESP by mtools.
			other := filepath.Join(t.TempDir(), "other.efi")
			cmd := strings.Replace(res.UKICmdline, res.Verity.RootHashHex(), strings.Repeat("0", 64), 1)
			if _, err := uki.Build(uki.Options{Stub: fixIn.Stub, Linux: fixIn.Kernel, Initrds: []string{fixIn.Initrd}, Cmdline: cmd, Out: other}); err != nil {
				t.Fatal(err)
			}
			d, _ := disk.Open(diskPath(out, set))
			esp, _ := d.ESP()
			d.Close()
			testutil.Run(t, "mcopy", "-o", "-i", fmt.Sprintf("%s@@%d", diskPath(out, set), esp.Offset), other, "::EFI/BOOT/BOOTX64.EFI")
		}, "root hash mismatch"},
		{"disk-no-bootx64", diskPath, func(t *testing.T, out, set string) {
			d, _ := disk.Open(diskPath(out, set))
			esp, _ := d.ESP()
			d.Close()
			testutil.Run(t, "mdel", "-i", fmt.Sprintf("%s@@%d", diskPath(out, set), esp.Offset), "::EFI/BOOT/BOOTX64.EFI")
		}, "BOOTX64.EFI"},
		{"disk-gpt-byte", diskPath, func(t *testing.T, out, set string) {
			testutil.FlipByte(t, diskPath(out, set), 512+60) // the disk GUID in the primary GPT header (CRC-covered)
		}, "GPT"},
		{"dir-rootfs-byte", setPath, func(t *testing.T, out, set string) {
			testutil.FlipByte(t, filepath.Join(set, dist.RootfsName), 7*4096+1)
		}, "data block 7 "},
		{"dir-changed-uki", setPath, func(t *testing.T, out, set string) {
			info, err := uki.Inspect(filepath.Join(set, dist.UKIName))
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range info.Sections {
				if s.Name == ".linux" {
					testutil.FlipByte(t, filepath.Join(set, dist.UKIName), int64(s.PointerToRawData)+1000)
				}
			}
		}, "UKI changed"},
		{"dir-edited-metadata", setPath, func(t *testing.T, out, set string) {
			p := filepath.Join(set, dist.MetadataName)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, []byte(strings.Replace(string(b), `"is_dev": false`, `"is_dev": true`, 1)), 0o644)
		}, "metadata.json: sha256"},
		{"dir-edited-metadata-and-sums", setPath, func(t *testing.T, out, set string) {
			p := filepath.Join(set, dist.MetadataName)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, []byte(strings.Replace(string(b), `"is_dev": false`, `"is_dev": true`, 1)), 0o644)
			sums := testutil.Run(t, "sh", "-c", "cd "+set+" && sha256sum ovmf.fd bzImage initramfs.cpio.gz metadata.json")
			os.WriteFile(filepath.Join(set, dist.SumName), []byte(sums), 0o644)
		}, "digest.txt"},
		{"dir-measurement-tdx-byte-resummed", setPath, func(t *testing.T, out, set string) {
			testutil.FlipByte(t, filepath.Join(set, measure.TDXFileName), 40)
			resum(t, set)
		}, "measurement.tdx.cbor: differs from the measurements recomputed"},
		{"dir-kernel-byte-resummed", setPath, func(t *testing.T, out, set string) {
			p := filepath.Join(set, dist.KernelName)
			st, _ := os.Stat(p)
			testutil.FlipByte(t, p, st.Size()/2) // inside the kernel's sections: its Authenticode digest changes
			resum(t, set)
		}, "measurement.tdx.cbor: differs from the measurements recomputed"},
		{"dir-measurement-line-dropped", setPath, func(t *testing.T, out, set string) {
			cmd := exec.Command("sh", "-c", "grep -v measurement.tdx.cbor sha256sum.txt > s && mv s sha256sum.txt")
			cmd.Dir = set
			if o, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v %s", err, o)
			}
			os.Remove(filepath.Join(set, measure.TDXFileName))
			resum(t, set)
		}, "does not list measurement.tdx.cbor"},
		{"dir-sums-line-dropped", setPath, func(t *testing.T, out, set string) {
			sums := testutil.Run(t, "sh", "-c", "cd "+set+" && sha256sum ovmf.fd bzImage initramfs.cpio.gz")
			os.WriteFile(filepath.Join(set, dist.SumName), []byte(sums), 0o644)
		}, "does not list metadata.json"},
		{"dir-disk-rootfs-byte", setPath, func(t *testing.T, out, set string) {
			d, _ := disk.Open(diskPath(out, set))
			p, _ := d.Partition(disk.RootfsName)
			d.Close()
			testutil.FlipByte(t, diskPath(out, set), p.Offset+3*4096)
		}, "gcp/disk.raw"},
		{"gcp-tarball-of-tampered-disk", func(out, set string) string { return filepath.Join(out, "re-gcp.tar.gz") }, func(t *testing.T, out, set string) {
			d, _ := disk.Open(diskPath(out, set))
			p, _ := d.Partition(disk.RootfsName)
			d.Close()
			testutil.FlipByte(t, diskPath(out, set), p.Offset+9*4096+4095)
			if _, err := gcptar.WriteFile(filepath.Join(out, "re-gcp.tar.gz"), diskPath(out, set), gcptar.Options{}); err != nil {
				t.Fatal(err)
			}
		}, "data block 9 "},
	}
	notMismatch := map[string]error{"disk-no-bootx64": disk.ErrBootPath, "disk-gpt-byte": disk.ErrBadGPT}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, set := work(t)
			target := tc.target(out, set)
			if _, err := Verify(target); err != nil {
				if !strings.Contains(tc.name, "gcp-tarball") {
					t.Fatalf("the untouched copy fails: %v", err)
				}
			}
			tc.tamper(t, out, set)
			_, err := Verify(target)
			if err == nil {
				t.Fatalf("Verify accepted the tampered %s", target)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), filepath.Base(target)) {
				t.Fatalf("error %q; want one naming %s and saying %q", err, filepath.Base(target), tc.want)
			}
			// A change to what the image records is a mismatch; a broken
			// structure is the reader's kind of error, and no mismatch.
			kind, ok := notMismatch[tc.name]
			if !ok {
				kind = ErrMismatch
			}
			if !errors.Is(err, kind) || (kind != ErrMismatch && errors.Is(err, ErrMismatch)) {
				t.Errorf("error %q: want errors.Is %v (and ErrMismatch only if that is it)", err, kind)
			}
		})
	}
}

func diskPath(out, set string) string { return filepath.Join(set, dist.GCPDir, dist.DiskName) }
func setPath(out, set string) string  { return set }

func TestVerifyNotAnImage(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "junk")
	os.WriteFile(p, []byte(strings.Repeat("junk", 1000)), 0o644)
	for _, tc := range []struct {
		name, path string
		is         error
		want       string // in the message
	}{
		{"junk file", p, disk.ErrBadGPT, "junk: GPT"},
		{"empty directory", dir, fs.ErrNotExist, "metadata.json"},
		{"missing path", filepath.Join(dir, "missing"), fs.ErrNotExist, "missing"},
	} {
		_, err := Verify(tc.path)
		if !errors.Is(err, tc.is) || errors.Is(err, ErrMismatch) || !strings.Contains(fmt.Sprint(err), tc.want) {
			t.Errorf("%s: %v, want errors.Is %v, no ErrMismatch, and %q", tc.name, err, tc.is, tc.want)
		}
	}
}
