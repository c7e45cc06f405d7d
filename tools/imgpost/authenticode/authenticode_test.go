package authenticode

import (
	"bytes"
	"crypto"
	"debug/pe"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	imgpe "github.com/Dstack-TEE/meta-dstack/tools/imgpost/pe"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/uki"
)

// throwawayKey makes a self-signed certificate and key with openssl.
func throwawayKey(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	testutil.Run(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
		"-days", "1", "-subj", "/CN=imgpost test")
	return cert, key
}

var calcRE = regexp.MustCompile(`Calculated message digest\s*:\s*([0-9A-Fa-f]+)`)

// signedDigest signs a copy of pe with osslsigncode and returns the
// "Calculated message digest" osslsigncode verify reports, and the copy.
func signedDigest(t *testing.T, dir, pe, algo, cert, key string) (string, string) {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pe)+"."+algo+".signed")
	testutil.Run(t, "osslsigncode", "sign", "-h", algo, "-certs", cert, "-key", key, "-in", pe, "-out", out)
	// verify exits non-zero (untrusted self-signed certificate); only the digest matters.
	v, _ := exec.Command("osslsigncode", "verify", "-in", out).CombinedOutput()
	m := calcRE.FindSubmatch(v)
	if m == nil {
		t.Fatalf("osslsigncode verify printed no calculated digest:\n%s", v)
	}
	return strings.ToLower(string(m[1])), out
}

func buildUKI(t *testing.T, dir string) string {
	t.Helper()
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	initrd := filepath.Join(dir, "initrd")
	testutil.WriteRandom(t, initrd, 100003, 7)
	out := filepath.Join(dir, "dstack-uki.efi")
	if _, err := uki.Build(uki.Options{
		Stub: testutil.DebianStub, Linux: testutil.DebianKernel(t), Initrds: []string{initrd},
		Cmdline: "console=ttyS0", Out: out,
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAgainstOsslsigncode: for the bare Debian stub (odd length, trailing
// symbol table) and a UKI, with SHA-256 and SHA-384, the digest of the
// unsigned file and of the signed copy both equal osslsigncode's.
func TestAgainstOsslsigncode(t *testing.T) {
	testutil.Need(t, "osslsigncode", "openssl")
	dir := t.TempDir()
	cert, key := throwawayKey(t, dir)
	files := map[string]string{"stub": testutil.DebianStub, "uki": buildUKI(t, dir)}
	if st, _ := os.Stat(testutil.DebianStub); st.Size()%8 == 0 {
		t.Log("note: the stub's length is a multiple of 8; padding not exercised by it")
	}
	for name, pe := range files {
		for _, algo := range []struct {
			name string
			h    crypto.Hash
		}{{"sha256", crypto.SHA256}, {"sha384", crypto.SHA384}} {
			t.Run(name+"/"+algo.name, func(t *testing.T) {
				want, signed := signedDigest(t, dir, pe, algo.name, cert, key)
				for _, f := range []string{pe, signed} {
					got, err := FileDigest(f, algo.h)
					if err != nil {
						t.Fatal(err)
					}
					if hex.EncodeToString(got) != want {
						t.Errorf("%s: digest %x, osslsigncode %s", filepath.Base(f), got, want)
					}
				}
			})
		}
	}
}

func TestWriteHashFile(t *testing.T) {
	dir := t.TempDir()
	pe := buildUKI(t, dir)
	sum, err := WriteHashFile(pe, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pe + HashFileSuffix)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := FileDigest(pe, crypto.SHA256)
	if string(b) != hex.EncodeToString(d)+"\n" || sum != hex.EncodeToString(d) {
		t.Fatalf("hash file %q, digest %x", b, d)
	}
	// A bad input writes nothing.
	bad := filepath.Join(dir, "bad.efi")
	os.WriteFile(bad, []byte("MZ not really"), 0o644)
	if _, err := WriteHashFile(bad, ""); err == nil {
		t.Fatal("accepted a non-PE file")
	}
	if _, err := os.Stat(bad + HashFileSuffix); !os.IsNotExist(err) {
		t.Fatal("hash file written for a bad input")
	}
}

func TestBadImages(t *testing.T) {
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	stub, _ := os.ReadFile(testutil.DebianStub)
	le := binary.LittleEndian
	peOff := int(le.Uint32(stub[0x3c:]))
	opt := peOff + 24
	mod := func(f func(b []byte)) []byte { b := bytes.Clone(stub); f(b); return b }
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not a PE image"},
		{"text", []byte(strings.Repeat("x", 200)), "no MZ"},
		{"no PE", mod(func(b []byte) { b[peOff] = 'X' }), "signature"},
		{"bad magic", mod(func(b []byte) { le.PutUint16(b[opt:], 0x999) }), "magic"},
		{"section past EOF", stub[:len(stub)/2], "runs past the end"},
		{"cert table past EOF", mod(func(b []byte) {
			le.PutUint32(b[opt+112+32:], uint32(len(b)-4))
			le.PutUint32(b[opt+112+36:], 64)
		}), "certificate table"},
		{"headers past EOF", mod(func(b []byte) { le.PutUint32(b[opt+60:], 1<<30) }), "SizeOfHeaders"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, f := range []func(io.ReaderAt, int64, crypto.Hash) ([]byte, error){Digest, FirmwareDigest} {
				_, err := f(bytes.NewReader(c.data), int64(len(c.data)), crypto.SHA256)
				if !errors.Is(err, imgpe.ErrFormat) || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("error %v, want pe.ErrFormat and %q", err, c.want)
				}
			}
		})
	}
}

// firmwareStream is EDK2's MeasurePeImage input written out by hand from
// debug/pe's view of the file: the headers without CheckSum and the
// certificate-table entry, the sections by file offset, then the bytes after
// SizeOfHeaders + the sections' sizes up to the end less the certificate
// table, with no padding.
func firmwareStream(t *testing.T, b []byte) []byte {
	t.Helper()
	f, err := pe.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	oh := f.OptionalHeader.(*pe.OptionalHeader64)
	peOff := int(binary.LittleEndian.Uint32(b[0x3c:]))
	opt := peOff + 24
	cs, cd, hdrs := opt+64, opt+112+8*4, int(oh.SizeOfHeaders)
	var out []byte
	out = append(out, b[:cs]...)
	out = append(out, b[cs+4:cd]...)
	out = append(out, b[cd+8:hdrs]...)
	secs := append([]*pe.Section(nil), f.Sections...)
	for i := range secs { // insertion sort by offset
		for j := i; j > 0 && secs[j].Offset < secs[j-1].Offset; j-- {
			secs[j], secs[j-1] = secs[j-1], secs[j]
		}
	}
	sum := hdrs
	for _, s := range secs {
		if s.Size == 0 {
			continue
		}
		out = append(out, b[s.Offset:s.Offset+s.Size]...)
		sum += int(s.Size)
	}
	end := len(b) - int(oh.DataDirectory[4].Size)
	if end > sum {
		out = append(out, b[sum:end]...)
	}
	return out
}

// TestFirmwareDigest: for files whose length is not a multiple of 8 (the
// Debian stub, 83,297 bytes, and copies cut or grown to every residue mod 8)
// FirmwareDigest is the hash of the unpadded stream computed by hand and
// differs from Digest (osslsigncode's, checked by TestAgainstOsslsigncode);
// for 8-aligned files the two agree.
func TestFirmwareDigest(t *testing.T) {
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	stub, _ := os.ReadFile(testutil.DebianStub)
	for extra := 0; extra < 8; extra++ {
		b := append(bytes.Clone(stub), bytes.Repeat([]byte{0xa5}, extra)...)
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384} {
			want := h.New()
			want.Write(firmwareStream(t, b))
			got, err := FirmwareDigest(bytes.NewReader(b), int64(len(b)), h)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want.Sum(nil)) {
				t.Errorf("%d bytes, %v: firmware digest %x, by hand %x", len(b), h, got, want.Sum(nil))
			}
			signer, err := Digest(bytes.NewReader(b), int64(len(b)), h)
			if err != nil {
				t.Fatal(err)
			}
			if aligned := len(b)%8 == 0; aligned != bytes.Equal(signer, got) {
				t.Errorf("%d bytes (mod 8 = %d), %v: firmware %x, signer %x", len(b), len(b)%8, h, got, signer)
			}
		}
	}
}

// FuzzDigest: both digests of any bytes return an error or a digest, never
// panic or hang (issue 14: SizeOfOptionalHeader 0 used to panic).
func FuzzDigest(f *testing.F) {
	testutil.NeedFile(f, testutil.DebianStub, "systemd-boot-efi")
	stub, _ := os.ReadFile(testutil.DebianStub)
	f.Add(stub)
	f.Add(stub[:4096])
	f.Fuzz(func(t *testing.T, b []byte) {
		Digest(bytes.NewReader(b), int64(len(b)), crypto.SHA256)
		FirmwareDigest(bytes.NewReader(b), int64(len(b)), crypto.SHA384)
	})
}
