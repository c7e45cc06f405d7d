package authenticode

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
	pe := int(le.Uint32(stub[0x3c:]))
	opt := pe + 24
	mod := func(f func(b []byte)) []byte { b := bytes.Clone(stub); f(b); return b }
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "no MZ"},
		{"text", []byte(strings.Repeat("x", 200)), "no MZ"},
		{"no PE", mod(func(b []byte) { b[pe] = 'X' }), "no PE signature"},
		{"bad magic", mod(func(b []byte) { le.PutUint16(b[opt:], 0x999) }), "magic"},
		{"section past EOF", stub[:len(stub)/2], "beyond the end"},
		{"cert table past EOF", mod(func(b []byte) {
			le.PutUint32(b[opt+112+32:], uint32(len(b)-4))
			le.PutUint32(b[opt+112+36:], 64)
		}), "certificate table"},
		{"headers past EOF", mod(func(b []byte) { le.PutUint32(b[opt+60:], 1<<30) }), "SizeOfHeaders"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Digest(bytes.NewReader(c.data), int64(len(c.data)), crypto.SHA256)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
		})
	}
}
