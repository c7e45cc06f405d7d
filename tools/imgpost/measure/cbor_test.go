package measure

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

func TestCBORRoundTrip(t *testing.T) {
	for _, c := range []struct {
		v    CBORValue
		want string // RFC 8949 appendix A encodings
	}{
		{uint64(0), "00"},
		{uint64(23), "17"},
		{uint64(24), "1818"},
		{uint64(1000), "1903e8"},
		{uint64(1000000), "1a000f4240"},
		{uint64(1000000000000), "1b000000e8d4a51000"},
		{[]byte{1, 2, 3, 4}, "4401020304"},
		{"IETF", "6449455446"},
		{(&CBORMap{}).Add("a", uint64(1)).Add("b", []byte{}), "a2616101616240"},
	} {
		b, err := EncodeCBOR(c.v)
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(b) != c.want {
			t.Errorf("%v: %x, want %s", c.v, b, c.want)
		}
		v, err := DecodeCBOR(b)
		if err != nil {
			t.Fatalf("%s: %v", c.want, err)
		}
		b2, _ := EncodeCBOR(v)
		if !bytes.Equal(b, b2) {
			t.Errorf("%s: decode/encode gives %x", c.want, b2)
		}
	}
}

func TestCBORRejects(t *testing.T) {
	for _, c := range []struct{ hex, want string }{
		{"", "truncated"},
		{"18", "truncated length"},
		{"5f", "indefinite"},
		{"20", "major type 1"},
		{"80", "major type 4"},
		{"4501", "runs past"},
		{"a1016161", "not a text string"},
		{"a261610161610102", "duplicate"},
		{"0000", "trailing"},
		{"bb00000000ffffffff", "cannot fit"},
		{strings.Repeat("a16161", 20) + "00", "too deep"},
	} {
		_, err := DecodeCBOR(unhexT(c.hex))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.hex, err, c.want)
		}
	}
}

func unhexT(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestDecodeTDXMaterialRejects(t *testing.T) {
	good := TDXMaterial{
		CmdlineSHA384: make([]byte, 48), KernelAuthenticode: make([]byte, 48), InitrdSHA384: make([]byte, 48),
		OVMFVariant: OVMFPre202505, MRTDSinglePass: make([]byte, 48), MRTDTwoPass: make([]byte, 48),
		TDHOBWitness: unhexT("80100904000609020b021010"),
	}
	if _, err := DecodeTDXMaterial(good.CBOR()); err != nil {
		t.Fatal(err)
	}
	short := good
	short.InitrdSHA384 = make([]byte, 32)
	variant := good
	variant.OVMFVariant = "x"
	witness := good
	witness.TDHOBWitness = []byte{1}
	for name, m := range map[string]TDXMaterial{"short digest": short, "variant": variant, "witness": witness} {
		if _, err := DecodeTDXMaterial(m.CBOR()); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	v3 := good.CBOR()
	v4 := bytes.Replace(v3, []byte("version\x03"), []byte("version\x04"), 1)
	if _, err := DecodeTDXMaterial(v4); err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("version 4: %v", err)
	}
}
