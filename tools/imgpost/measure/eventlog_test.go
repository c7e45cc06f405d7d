package measure

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"
)

func TestParseTCG2Rejects(t *testing.T) {
	good, err := os.ReadFile("testdata/dstack-ccel-sample.bin")
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	first := 32 + int(le.Uint32(good[28:])) // first TCG_PCR_EVENT2
	cases := []struct {
		name string
		mut  func(b []byte) []byte
		want string
	}{
		{"empty", func(b []byte) []byte { return nil }, "truncated"},
		{"not agile", func(b []byte) []byte { b[32] = 'X'; return b }, "Spec ID"},
		{"header type", func(b []byte) []byte { b[4] = 1; return b }, "EV_NO_ACTION"},
		{"huge header", func(b []byte) []byte { le.PutUint32(b[28:], 0xffffffff); return b }, "truncated"},
		{"digest count", func(b []byte) []byte { le.PutUint32(b[first+8:], 1000); return b }, "digests"},
		{"unknown alg", func(b []byte) []byte { le.PutUint16(b[first+12:], 0x0b); return b }, "algorithm"},
		{"huge event", func(b []byte) []byte { le.PutUint32(b[first+14+48:], 0x7fffffff); return b }, "bytes of data"},
		{"mr index", func(b []byte) []byte { le.PutUint32(b[first:], 9); return b }, "MR index"},
		{"cut", func(b []byte) []byte { return b[:first+30] }, "truncated"},
	}
	for _, c := range cases {
		_, err := ParseTCG2(c.mut(bytes.Clone(good)), AlgSHA384, true)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := ParseTCG2(good, AlgSHA256, true); err == nil {
		t.Error("a SHA-256 bank was found in a SHA-384-only log")
	}
}

func TestParseDstackJSONRejects(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`[{"imr":4,"event_type":1,"digest":""}]`, "imr 4"},
		{`[{"event_type":1}]`, "lacks"},
		{`[{"imr":0,"event_type":1,"digest":"00"}]`, "48 bytes"},
		{`[{"imr":0,"event_type":1,"digest":""}]`, "no digest"},
		{`[{"imr":3,"event_type":134217729,"event":"x","event_payload":"zz"}]`, "event_payload"},
		{`{"quote":"00"}`, "event_log"},
		{`{"event_log":"[1]"}`, "cannot unmarshal"},
	} {
		_, err := ParseDstackJSON([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.in, err, c.want)
		}
	}
}
