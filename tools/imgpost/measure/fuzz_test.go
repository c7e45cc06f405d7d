package measure

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"encoding/json"
	"os"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// tinyTDVF builds a small firmware image with a valid GUIDed table and TDVF
// descriptor: a 4 KiB BFV (extended), a 4 KiB CFV, a TD HOB and a TEMP_MEM
// section.
func tinyTDVF() []byte {
	le := binary.LittleEndian
	const size = 0x4000
	fw := make([]byte, size)
	for i := 0; i < 0x2000; i++ {
		fw[i] = byte(i * 7)
	}
	desc := 0x3000
	copy(fw[desc:], "TDVF")
	secs := []Section{
		{0, 0x1000, 0xfffc0000, 0x1000, SectionBFV, AttrMRExtend},
		{0x1000, 0x1000, 0xfffc1000, 0x1000, SectionCFV, 0},
		{0, 0, 0x809000, 0x2000, SectionTDHOB, 0},
		{0, 0, 0x800000, 0x6000, SectionTempMem, 0},
	}
	le.PutUint32(fw[desc+4:], uint32(16+32*len(secs)))
	le.PutUint32(fw[desc+8:], 1)
	le.PutUint32(fw[desc+12:], uint32(len(secs)))
	for i, s := range secs {
		b := fw[desc+16+32*i:]
		le.PutUint32(b[0:], s.DataOffset)
		le.PutUint32(b[4:], s.RawDataSize)
		le.PutUint64(b[8:], s.MemoryAddress)
		le.PutUint64(b[16:], s.MemoryDataSize)
		le.PutUint32(b[24:], s.Type)
		le.PutUint32(b[28:], s.Attributes)
	}
	footer := size - 48
	copy(fw[footer:], guidTableFooter[:])
	le.PutUint16(fw[footer-2:], 18+22)
	entry := footer - 2 - 22
	le.PutUint32(fw[entry:], uint32(size-desc))
	le.PutUint16(fw[entry+4:], 22)
	copy(fw[entry+6:], guidTDXMetadataOffset[:])
	return fw
}

func TestTinyTDVF(t *testing.T) {
	fw, err := ParseFirmware(tinyTDVF())
	if err != nil {
		t.Fatal(err)
	}
	if len(fw.Sections) != 4 || len(fw.MRTD(SinglePass)) != 48 {
		t.Fatalf("%+v", fw.Sections)
	}
	if w, err := fw.Witness(); err != nil || w.HOBAddr != 0x809000 {
		t.Fatalf("%+v %v", w, err)
	}
}

func FuzzParseFirmware(f *testing.F) {
	f.Add(tinyTDVF())
	f.Add(tinyTDVF()[0x2000:])
	f.Fuzz(func(t *testing.T, b []byte) {
		fw, err := ParseFirmware(b)
		if err != nil {
			return
		}
		fw.MRTD(SinglePass)
		fw.MRTD(TwoPass)
		fw.CFV()
		if w, err := fw.Witness(); err == nil {
			if _, err := DecodeWitness(w.Encode()); err != nil && len(w.Accepted) > 0 {
				t.Fatalf("witness %x does not decode: %v", w.Encode(), err)
			}
			w.TDHOB(2 << 30)
			w.TDHOB(16 << 30)
		}
	})
}

func FuzzDecodeWitness(f *testing.F) {
	f.Add(unhexT("80100904000609020b021010"))
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := DecodeWitness(b)
		if err != nil {
			return
		}
		w.TDHOB(2 << 30)
		w.TDHOB(12 << 30)
	})
}

func FuzzParseTCG2(f *testing.F) {
	b, err := os.ReadFile("testdata/dstack-ccel-sample.bin")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:200])
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, ccel := range []bool{true, false} {
			if l, err := ParseTCG2(b, AlgSHA384, ccel); err == nil {
				l.Replay()
				ACPIFromLog(l)
			}
		}
	})
}

func FuzzParseDstackJSON(f *testing.F) {
	b, err := os.ReadFile("testdata/dstack-0.6.0-tdx-lite.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`[{"imr":3,"event_type":134217729,"event":"a","event_payload":"00"}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if l, err := ParseEventLog(b, true); err == nil {
			l.Replay()
			ACPIFromLog(l)
		}
	})
}

func FuzzDecodeCBOR(f *testing.F) {
	var fx struct {
		CBOR string `json:"measurement_tdx_cbor"`
	}
	b, err := os.ReadFile("testdata/dstack-0.6.0-tdx-lite.json")
	if err != nil || json.Unmarshal(b, &fx) != nil {
		f.Fatal("fixture")
	}
	f.Add(unhexT(fx.CBOR))
	good := TDXMaterial{
		CmdlineSHA384: make([]byte, 48), KernelAuthenticode: make([]byte, 48), InitrdSHA384: make([]byte, 48),
		OVMFVariant: OVMFPre202505, MRTDSinglePass: make([]byte, 48), MRTDTwoPass: make([]byte, 48),
		TDHOBWitness: unhexT("80100904000609020b021010"),
	}
	f.Add(good.CBOR())
	g, _ := GCPMaterial(make([]byte, 32))
	f.Add(g)
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := DecodeCBOR(b)
		if err != nil {
			return
		}
		// Canonical inputs re-encode to themselves; any decoded value
		// re-encodes to something that decodes to the same encoding.
		e, err := EncodeCBOR(v)
		if err != nil {
			t.Fatal(err)
		}
		v2, err := DecodeCBOR(e)
		if err != nil {
			t.Fatalf("re-encoded %x does not decode: %v", e, err)
		}
		e2, _ := EncodeCBOR(v2)
		if !bytes.Equal(e, e2) {
			t.Fatalf("unstable encoding %x / %x", e, e2)
		}
		if m, err := DecodeTDXMaterial(b); err == nil && !bytes.Equal(m.CBOR(), e) && bytes.Equal(b, e) {
			t.Fatalf("material re-encodes differently")
		}
		DecodeGCPMaterial(b)
	})
}

// FuzzPatchedKernelAuthenticode: any bytes give an error or a digest
// (the firmware digest itself is fuzzed in package authenticode).
func FuzzPatchedKernelAuthenticode(f *testing.F) {
	if stub, err := os.ReadFile(testutil.DebianStub); err == nil {
		f.Add(stub[:4096])
	}
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= setupPatchLen {
			PatchedKernelAuthenticode(bytes.NewReader(b), int64(len(b)), 1000, 2<<30, crypto.SHA384)
		}
	})
}
