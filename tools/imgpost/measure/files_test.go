package measure

import (
	"bytes"
	"crypto"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
)

// distDir makes a dist directory from Debian's kernel, OVMF (the 2 MiB
// combined image, which has TDX metadata) and systemd stub (as the UKI:
// any PE will do), with a random initrd.
func distDir(t *testing.T) string {
	t.Helper()
	testutil.NeedFile(t, debianOVMF, "ovmf")
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	dir := t.TempDir()
	cp := func(src, name string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cp(testutil.DebianKernel(t), "bzImage")
	cp(debianOVMF, "ovmf.fd")
	cp(testutil.DebianStub, UKIFileName)
	testutil.WriteRandom(t, filepath.Join(dir, "initramfs.cpio.gz"), 1234567, 3)
	md := `{"bios": "ovmf.fd", "kernel": "bzImage", "cmdline": "console=ttyS0 dstack.rootfs_hash=ab dstack.rootfs_size=4096", "initrd": "initramfs.cpio.gz", "rootfs": "rootfs.img.verity", "version": "0.5.11", "git_revision": "x", "shared_ro": true, "is_dev": false}`
	if err := os.WriteFile(filepath.Join(dir, "metadata.json"), []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestFiles(t *testing.T) {
	dir := distDir(t)
	files, err := Files(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	byName := map[string][]byte{}
	for _, f := range files {
		names = append(names, f.Name)
		byName[f.Name] = f.Data
	}
	if strings.Join(names, " ") != "measurement.gcp.cbor measurement.tdx.cbor measurements.json" {
		t.Fatalf("files %v", names)
	}
	again, err := Files(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range files {
		if !bytes.Equal(files[i].Data, again[i].Data) {
			t.Errorf("%s differs between two runs", files[i].Name)
		}
	}

	m, err := DecodeTDXMaterial(byName[TDXFileName])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.CBOR(), byName[TDXFileName]) {
		t.Error("measurement.tdx.cbor does not re-encode to itself")
	}
	fwb, _ := os.ReadFile(filepath.Join(dir, "ovmf.fd"))
	fw, err := ParseFirmware(fwb)
	if err != nil {
		t.Fatal(err)
	}
	initrd, _ := os.ReadFile(filepath.Join(dir, "initramfs.cpio.gz"))
	isum := sha512.Sum384(initrd)
	cmd := "console=ttyS0 dstack.rootfs_hash=ab dstack.rootfs_size=4096 initrd=initrd"
	for _, c := range []struct {
		name      string
		got, want []byte
	}{
		{"mrtd single", m.MRTDSinglePass, fw.MRTD(SinglePass)},
		{"mrtd two", m.MRTDTwoPass, fw.MRTD(TwoPass)},
		{"initrd", m.InitrdSHA384, isum[:]},
		{"cmdline", m.CmdlineSHA384, sha384(UTF16Z(cmd))},
		{"witness", m.TDHOBWitness, unhex(t, "80100904000609020b021010")},
	} {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("%s: %x, want %x", c.name, c.got, c.want)
		}
	}
	// The kernel digest is the 2 GiB / high-memory one, and differs from
	// the unpatched kernel's.
	kf, _ := os.Open(filepath.Join(dir, "bzImage"))
	defer kf.Close()
	st, _ := kf.Stat()
	k2g, err := PatchedKernelAuthenticode(kf, st.Size(), uint64(len(initrd)), 2<<30, crypto.SHA384)
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := authenticode.FirmwareDigest(kf, st.Size(), crypto.SHA384)
	if !bytes.Equal(k2g, m.KernelAuthenticode) || bytes.Equal(plain, m.KernelAuthenticode) {
		t.Errorf("kernel digest %x (2 GiB %x, unpatched %x)", m.KernelAuthenticode, k2g, plain)
	}

	uki, err := DecodeGCPMaterial(byName[GCPFileName])
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(uki) != fileDigest(t, filepath.Join(dir, UKIFileName), crypto.SHA256) {
		t.Errorf("uki_auth %x", uki)
	}
	if want := "a26776657273696f6e0168756b695f617574685820" + hex.EncodeToString(uki); hex.EncodeToString(byName[GCPFileName]) != want {
		t.Errorf("measurement.gcp.cbor %x, want %s", byName[GCPFileName], want)
	}

	var js map[string]any
	if err := json.Unmarshal(byName[JSONFileName], &js); err != nil {
		t.Fatal(err)
	}
	if js["mrtd_two_pass"] != hex.EncodeToString(m.MRTDTwoPass) || len(js["shapes"].([]any)) != len(DefaultShapes) {
		t.Errorf("measurements.json:\n%s", byName[JSONFileName])
	}

	// Check: fine once written, then a tampered file is named.
	for _, f := range files {
		os.WriteFile(filepath.Join(dir, f.Name), f.Data, 0o644)
	}
	if err := Check(dir); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "initramfs.cpio.gz"), []byte("other"), 0o644)
	if err := Check(dir); !errors.Is(err, ErrDiffers) || !strings.Contains(err.Error(), "measurement.tdx.cbor") {
		t.Errorf("Check after changing the initrd: %v", err)
	}
}

func TestFilesRejects(t *testing.T) {
	dir := distDir(t)
	write := func(name, s string) { os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644) }
	md, _ := os.ReadFile(filepath.Join(dir, "metadata.json"))
	for _, c := range []struct{ name, metadata, want string }{
		{"path in kernel", strings.Replace(string(md), `"bzImage"`, `"../bzImage"`, 1), "not a file name"},
		{"bad json", "{", "metadata.json"},
		{"variant", strings.Replace(string(md), `"is_dev"`, `"ovmf_variant": "post202505", "is_dev"`, 1), "ovmf_variant"},
		{"missing firmware", strings.Replace(string(md), `"ovmf.fd"`, `"nothere.fd"`, 1), "nothere.fd"},
	} {
		write("metadata.json", c.metadata)
		if _, err := Files(dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %q", c.name, err, c.want)
		}
	}
	write("metadata.json", string(md))
	// A firmware without TDX metadata (not an OVMF image at all, or Debian's
	// OVMF_CODE_4M.fd) is no error: no measurement.tdx.cbor, and why.
	for _, fw := range []string{"not a firmware, but long enough to look for a GUIDed table footer in it", "debian"} {
		if fw == "debian" {
			b, err := os.ReadFile(testutil.DebianOVMF)
			if err != nil {
				t.Skipf("%s: %v", testutil.DebianOVMF, err)
			}
			fw = string(b)
		}
		write("ovmf.fd", fw)
		s, err := Compute(dir)
		if err != nil || !strings.Contains(s.NoTDX, "ovmf.fd") || !strings.Contains(s.NoTDX, "TDX") {
			t.Errorf("firmware without TDX metadata: %v, NoTDX %q", err, s.NoTDX)
		}
		var names []string
		for _, f := range s.Files {
			names = append(names, f.Name)
		}
		if strings.Join(names, " ") != GCPFileName+" "+JSONFileName {
			t.Errorf("firmware without TDX metadata: files %v", names)
		}
	}
	os.Remove(filepath.Join(dir, "ovmf.fd"))
	write("metadata.json", strings.Replace(string(md), `"ovmf.fd"`, `""`, 1))
	if s, err := Compute(dir); err != nil || !strings.Contains(s.NoTDX, "no firmware") || len(s.Files) != 2 {
		t.Errorf("no firmware: %v, %q, %d files", err, s.NoTDX, len(s.Files))
	}
}
