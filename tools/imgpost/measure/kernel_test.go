package measure

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
)

var calcRE = regexp.MustCompile(`Calculated message digest\s*:\s*([0-9A-Fa-f]+)`)

// osslDigest signs a copy of pe with a throwaway key and returns the digest
// osslsigncode calculates for it, and the signed copy.
func osslDigest(t *testing.T, dir, pe, algo string) (string, string) {
	t.Helper()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := os.Stat(key); err != nil {
		testutil.Run(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
			"-days", "1", "-subj", "/CN=imgpost measure test")
	}
	out := filepath.Join(dir, filepath.Base(pe)+"."+algo+".signed")
	testutil.Run(t, "osslsigncode", "sign", "-h", algo, "-certs", cert, "-key", key, "-in", pe, "-out", out)
	v, _ := exec.Command("osslsigncode", "verify", "-in", out).CombinedOutput()
	m := calcRE.FindSubmatch(v)
	if m == nil {
		t.Fatalf("osslsigncode verify printed no calculated digest:\n%s", v)
	}
	return strings.ToLower(string(m[1])), out
}

func fileDigest(t *testing.T, p string, h crypto.Hash) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	d, err := authenticode.FirmwareDigest(f, st.Size(), h)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(d)
}

// Firmware-mode Authenticode against osslsigncode: a signed image's digest
// is osslsigncode's (certificate table excluded); an odd-sized unsigned
// image hashes its tail unpadded, so its digest is osslsigncode's only once
// the file itself is padded with zeros.
func TestFirmwareAuthenticodeAgainstOsslsigncode(t *testing.T) {
	testutil.Need(t, "osslsigncode", "openssl")
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	dir := t.TempDir()
	stub, err := os.ReadFile(testutil.DebianStub)
	if err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(dir, "odd.efi")
	if len(stub)%8 == 0 {
		stub = append(stub, 1, 2, 3) // make it odd-sized
	}
	os.WriteFile(odd, stub, 0o644)
	padded := filepath.Join(dir, "padded.efi")
	os.WriteFile(padded, append(bytes.Clone(stub), make([]byte, 8-len(stub)%8)...), 0o644)
	for _, algo := range []string{"sha256", "sha384"} {
		h := map[string]crypto.Hash{"sha256": crypto.SHA256, "sha384": crypto.SHA384}[algo]
		want, signed := osslDigest(t, dir, odd, algo)
		if got := fileDigest(t, signed, h); got != want {
			t.Errorf("%s signed copy: %s, osslsigncode %s", algo, got, want)
		}
		if got := fileDigest(t, padded, h); got != want {
			t.Errorf("%s zero-padded copy: %s, osslsigncode %s", algo, got, want)
		}
		if got := fileDigest(t, odd, h); got == want {
			t.Errorf("%s odd-sized file: firmware digest equals the padded one", algo)
		}
	}
	// Debian's kernel ships signed: its digest is the signed one.
	k := testutil.DebianKernel(t)
	v, _ := exec.Command("osslsigncode", "verify", "-in", k).CombinedOutput()
	if m := calcRE.FindSubmatch(v); m != nil {
		if got := fileDigest(t, k, crypto.SHA256); got != strings.ToLower(string(m[1])) {
			t.Errorf("%s: %s, osslsigncode %s", k, got, m[1])
		}
	}
}

func TestFirmwareAuthenticodeRejects(t *testing.T) {
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	stub, _ := os.ReadFile(testutil.DebianStub)
	le := binary.LittleEndian
	pe := int(le.Uint32(stub[0x3c:]))
	cases := map[string]func(b []byte) []byte{
		"empty":         func(b []byte) []byte { return nil },
		"no MZ":         func(b []byte) []byte { b[0] = 'X'; return b },
		"PE past end":   func(b []byte) []byte { le.PutUint32(b[0x3c:], 0x7fffffff); return b },
		"headers large": func(b []byte) []byte { le.PutUint32(b[pe+24+60:], 0x7fffffff); return b },
		"section past":  func(b []byte) []byte { le.PutUint32(b[pe+24+int(le.Uint16(b[pe+20:]))+16:], 0x7fffffff); return b },
		"truncated":     func(b []byte) []byte { return b[:len(b)/2] },
	}
	for name, mut := range cases {
		b := mut(bytes.Clone(stub))
		if _, err := authenticode.FirmwareDigest(bytes.NewReader(b), int64(len(b)), crypto.SHA384); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// QEMU's setup-header patches: fields, and the initrd address rule (the
// same below-4G placement at exactly 2 GiB and from 0xB0000000 on).
func TestPatchSetupHeader(t *testing.T) {
	le := binary.LittleEndian
	k := make([]byte, setupPatchLen)
	copy(k[0x202:], "HdrS")
	le.PutUint16(k[0x206:], 0x020f)
	k[0x211] = 0x01
	le.PutUint32(k[0x22c:], 0x7fffffff)
	le.PutUint16(k[0x236:], 0x0002) // XLF_CAN_BE_LOADED_ABOVE_4G
	initrd := uint64(0x123456)
	addr := func(mem uint64) uint32 {
		p, err := patchSetupHeader(k, initrd, mem)
		if err != nil {
			t.Fatal(err)
		}
		if p[0x210] != 0xb0 || p[0x211] != 0x81 || le.Uint16(p[0x224:]) != 0xfe00 || le.Uint32(p[0x228:]) != 0x20000 || le.Uint32(p[0x21c:]) != uint32(initrd) {
			t.Errorf("mem %#x: header %x", mem, p[0x210:0x230])
		}
		return le.Uint32(p[0x218:])
	}
	want2G := uint32((0x80000000 - acpiDataSize - 1 - initrd) &^ 4095)
	for _, mem := range []uint64{2 << 30, 0xB0000000, 4 << 30, 64 << 30} {
		if a := addr(mem); a != want2G {
			t.Errorf("mem %#x: initrd at %#x, want %#x", mem, a, want2G)
		}
	}
	if a := addr(1 << 30); a != uint32((1<<30-acpiDataSize-1-initrd)&^4095) {
		t.Errorf("1 GiB: initrd at %#x", a)
	}
	if a := addr(0xA0000000); a == want2G {
		t.Error("2.5 GiB: initrd at the 2 GiB address")
	}
	// Protocol 2.03..2.0b: initrd_addr_max from the header.
	le.PutUint16(k[0x206:], 0x020b)
	le.PutUint32(k[0x22c:], 0x37ffffff)
	if a := addr(4 << 30); a != uint32((0x37ffffff-initrd)&^4095) {
		t.Errorf("initrd_addr_max: initrd at %#x", a)
	}
	if _, err := patchSetupHeader(k, 0x80000000, 1<<30); err == nil {
		t.Error("initrd larger than RAM accepted")
	}
	if _, err := patchSetupHeader(make([]byte, setupPatchLen), initrd, 1<<30); err == nil {
		t.Error("no HdrS accepted")
	}
}

func TestMeasuredCmdline(t *testing.T) {
	for _, c := range []struct {
		in   string
		arg  InitrdArg
		want string
	}{
		{"console=ttyS0", InitrdSuffix, "console=ttyS0 initrd=initrd"},
		{"console=ttyS0", InitrdPrefix, "initrd=initrd console=ttyS0"},
		{"console=ttyS0", InitrdNone, "console=ttyS0"},
		{"", InitrdSuffix, "initrd=initrd"},
	} {
		if got := MeasuredCmdline(c.in, c.arg); got != c.want {
			t.Errorf("%q/%d: %q", c.in, c.arg, got)
		}
	}
	if got := hex.EncodeToString(UTF16Z("aé")); got != "6100e9000000" {
		t.Errorf("UTF16Z: %s", got)
	}
}
