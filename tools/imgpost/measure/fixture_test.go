package measure

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// Real TDX quotes with their event logs, copied from dstack's verifier
// fixtures (each file's "source" names where every number comes from).
const (
	// lite060 is verifier/fixtures/tdx-lite-getquote.json: dstack-0.6.0,
	// 2 GiB, QEMU 8.2.2, with the image's measurement.tdx.cbor.
	lite060 = "testdata/dstack-0.6.0-tdx-lite.json"
	// report64G is verifier/fixtures/quote-report.json: 16 vCPUs, 64 GiB
	// (above q35's 2.75 GiB split), QEMU 9.2.1, one GPU; no measurement
	// files.
	report64G = "testdata/dstack-quote-report-64g.json"
)

// fixture is one of the files above.
type fixture struct {
	MemorySize  uint64            `json:"memory_size"`
	QEMUVersion string            `json:"qemu_version"`
	Quote       map[string]string `json:"quote"`
	CBOR        string            `json:"measurement_tdx_cbor"`
	Checksum    string            `json:"checksum_file"`
	EventLog    json.RawMessage   `json:"event_log"`
}

func loadFixture(t *testing.T, name string) (fixture, *Log) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	var f fixture
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	l, err := ParseDstackJSON(f.EventLog)
	if err != nil {
		t.Fatal(err)
	}
	return f, l
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// material060 decodes dstack-0.6.0's measurement.tdx.cbor and its TD HOB
// witness.
func material060(t *testing.T, f fixture) (TDXMaterial, HOBWitness) {
	t.Helper()
	m, err := DecodeTDXMaterial(unhex(t, f.CBOR))
	if err != nil {
		t.Fatal(err)
	}
	w, err := DecodeWitness(m.TDHOBWitness)
	if err != nil {
		t.Fatal(err)
	}
	return m, w
}

// hobDigest is the witness's TD HOB digest for memSize bytes.
func hobDigest(t *testing.T, w HOBWitness, memSize uint64) []byte {
	t.Helper()
	d, err := w.TDHOBDigest(memSize)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// checkPrediction completes the RTMR0 events with RTMR1's (from the kernel
// digest) and RTMR2's (command line, initrd) and checks each against the
// log and the registers against the quote.
func checkPrediction(t *testing.T, f fixture, l *Log, rtmr0 []Event, kernel, cmdline, initrd []byte) {
	t.Helper()
	events := append(rtmr0, RTMR1Events(kernel)...)
	events = append(events, Event{Index: 2, Type: EvEventTag, Digest: cmdline}, Event{Index: 2, Type: EvEventTag, Digest: initrd})
	for _, x := range Compare(events, l) {
		t.Error(x)
	}
	got := RTMRs(events)
	for i, name := range []string{"rtmr0", "rtmr1", "rtmr2"} {
		if hex.EncodeToString(got[i]) != f.Quote[name] {
			t.Errorf("%s: predicted %x, quote %s", name, got[i], f.Quote[name])
		}
	}
}

func logDigests(l *Log, idx uint32) [][]byte {
	var out [][]byte
	for _, e := range l.Events {
		if e.Index == idx {
			out = append(out, e.Digest)
		}
	}
	return out
}

// Each event log replays into its quote's RTMR0-3 (RTMR3 through dstack's
// runtime-event digests).
func TestFixtureReplayMatchesQuote(t *testing.T) {
	for _, name := range []string{lite060, report64G} {
		f, l := loadFixture(t, name)
		got := l.Replay()
		for i, r := range []string{"rtmr0", "rtmr1", "rtmr2", "rtmr3"} {
			if hex.EncodeToString(got[uint32(i)]) != f.Quote[r] {
				t.Errorf("%s: %s: replay %x, quote %s", name, r, got[uint32(i)], f.Quote[r])
			}
		}
	}
}

// Each predicted event the fixture's data determine equals the logged one,
// and the predicted registers equal the quote.
func TestFixturePrediction(t *testing.T) {
	f, l := loadFixture(t, lite060)
	m, w := material060(t, f)
	hob := hobDigest(t, w, f.MemorySize)
	acpi, err := ACPIFromLog(l)
	if err != nil {
		t.Fatal(err)
	}
	r0 := logDigests(l, 0)
	// The CFV digest is the only RTMR0 input the fixture does not carry
	// (the firmware is not in it): take it from the log.
	checkPrediction(t, f, l, RTMR0Events(hob, r0[1], acpi), m.KernelAuthenticode, m.CmdlineSHA384, m.InitrdSHA384)
	order, err := Shape{QEMUVersion: f.QEMUVersion}.PageOrder()
	if err != nil || order != TwoPass {
		t.Fatalf("QEMU %s: order %v, %v; want two-pass", f.QEMUVersion, order, err)
	}
	if hex.EncodeToString(m.MRTDTwoPass) != f.Quote["mrtd"] {
		t.Errorf("two-pass MRTD %x, quote %s", m.MRTDTwoPass, f.Quote["mrtd"])
	}
}

// The TD HOB for 2 GiB built from the witness (the firmware's TD_HOB and
// TEMP_MEM sections) is the logged first RTMR0 event.
func TestFixtureTDHOB(t *testing.T) {
	f, l := loadFixture(t, lite060)
	m, w := material060(t, f)
	if got := hex.EncodeToString(w.Encode()); got != hex.EncodeToString(m.TDHOBWitness) {
		t.Errorf("witness re-encodes as %s, want %x", got, m.TDHOBWitness)
	}
	d := hobDigest(t, w, f.MemorySize)
	if !bytes.Equal(d, l.Events[0].Digest) {
		t.Errorf("TD HOB digest %x, log %x", d, l.Events[0].Digest)
	}
	// Another memory size gives another HOB.
	d2, _ := w.TDHOBDigest(4 << 30)
	if bytes.Equal(d2, d) {
		t.Error("TD HOB digest does not depend on memory size")
	}
}

// Above q35's 2.75 GiB split: the 64 GiB quote's first RTMR0 event is the TD
// HOB built from the dstack-0.6.0 witness for 64 GiB (RAM up to 2 GiB, the
// rest above 4 GiB). The witness applies because both quotes ran the same
// firmware layout: their configuration firmware volume digests (the second
// RTMR0 event) are equal.
func TestFixtureTDHOBAboveSplit(t *testing.T) {
	f060, l060 := loadFixture(t, lite060)
	f, l := loadFixture(t, report64G)
	if !bytes.Equal(l060.Events[1].Digest, l.Events[1].Digest) {
		t.Fatalf("CFV digests differ: %x, %x", l060.Events[1].Digest, l.Events[1].Digest)
	}
	if f.MemorySize != 64<<30 {
		t.Fatalf("memory %d", f.MemorySize)
	}
	_, w := material060(t, f060)
	d := hobDigest(t, w, f.MemorySize)
	if !bytes.Equal(d, l.Events[0].Digest) {
		t.Errorf("TD HOB digest for 64 GiB %x, log %x", d, l.Events[0].Digest)
	}
}

// The 64 GiB quote (QEMU 9.2.1, single-pass): every firmware event the
// prediction fixes (secure-boot variables, separators, boot variables, the
// EFI application and exit-boot-services strings) equals the logged one,
// and with the TD HOB for 64 GiB, the log's CFV, ACPI, kernel, command line
// and initrd digests, the predicted RTMR0-2 are the quote's.
func TestFixture64GPrediction(t *testing.T) {
	f060, _ := loadFixture(t, lite060)
	f, l := loadFixture(t, report64G)
	_, w := material060(t, f060)
	hob := hobDigest(t, w, f.MemorySize)
	acpi, err := ACPIFromLog(l)
	if err != nil {
		t.Fatal(err)
	}
	r0, r1, r2 := logDigests(l, 0), logDigests(l, 1), logDigests(l, 2)
	if len(r2) != 2 {
		t.Fatalf("%d RTMR2 events, want 2", len(r2))
	}
	checkPrediction(t, f, l, RTMR0Events(hob, r0[1], acpi), r1[0], r2[0], r2[1])
	order, err := Shape{QEMUVersion: f.QEMUVersion}.PageOrder()
	if err != nil || order != SinglePass {
		t.Errorf("QEMU %s: order %v, %v; want single-pass", f.QEMUVersion, order, err)
	}
}

// measurement.tdx.cbor: decoding then encoding gives the fixture's bytes,
// and its sha256 is the one sha256sum.txt lists.
func TestFixtureCBOR(t *testing.T) {
	f, _ := loadFixture(t, lite060)
	raw := unhex(t, f.CBOR)
	m, err := DecodeTDXMaterial(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.CBOR(), raw) {
		t.Errorf("re-encoded:\n%x\nfixture:\n%x", m.CBOR(), raw)
	}
	sum := sha256.Sum256(raw)
	if want := hex.EncodeToString(sum[:]) + "  " + TDXFileName + "\n"; f.Checksum != want {
		t.Errorf("sha256sum.txt %q, want %q", f.Checksum, want)
	}
	if m.OVMFVariant != OVMFPre202505 {
		t.Errorf("ovmf %q", m.OVMFVariant)
	}
}

// dstack's sample binary CCEL (cc-eventlog/samples/ccel.bin, trimmed to its
// events plus the 0xFF fill): it parses, and its firmware events have the
// digests the fixed parts of the prediction give.
func TestCCELSample(t *testing.T) {
	b, err := os.ReadFile("testdata/dstack-ccel-sample.bin")
	if err != nil {
		t.Fatal(err)
	}
	l, err := ParseTCG2(b, AlgSHA384, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Events) != 18 {
		t.Fatalf("%d events, want 18", len(l.Events))
	}
	acpi, err := ACPIFromLog(l)
	if err != nil {
		t.Fatal(err)
	}
	r0, r1 := logDigests(l, 0), logDigests(l, 1)
	pred := append(RTMR0Events(r0[0], r0[1], acpi), RTMR1Events(r1[0])...)
	if mm := Compare(pred, l); len(mm) != 0 {
		t.Errorf("mismatches: %v", mm)
	}
	// Replay values computed by an independent Python reading of the file.
	want := map[uint32]string{
		0: "274c2344116db7c663470693b5ba62b8621eac28cb41d2f816ddf188f9f423f900a1c44d32386fd3c993dc814e62af9d",
		1: "bdcf4ee0f7fdfe7c73fbb19ded73193aee23a6726b86d3b282ea097cf4c9ed7a0db21b5c1ccd513e410d90e310836b26",
	}
	got := l.Replay()
	for i, w := range want {
		if hex.EncodeToString(got[i]) != w {
			t.Errorf("RTMR%d %x, want %s", i, got[i], w)
		}
	}
	// The Boot0000 event's data carries the load option the prediction builds.
	var boot0000 Event
	for _, e := range l.Events {
		if e.Type == EvEFIVariableBoot && bytes.Contains(e.Data, UTF16Z("Boot0000")[:16]) {
			boot0000 = e
		}
	}
	if !bytes.HasSuffix(boot0000.Data, uiAppBootOption()) {
		t.Errorf("Boot0000 event data %x does not end with the UiApp load option %x", boot0000.Data, uiAppBootOption())
	}
}

func TestCompareNamesFirstMismatch(t *testing.T) {
	_, l := loadFixture(t, lite060)
	pred := append(RTMR0Events(l.Events[0].Digest, l.Events[1].Digest, nil), RTMR1Events(make([]byte, 48))...)
	mm := Compare(pred, l)
	var s []string
	for _, m := range mm {
		s = append(s, m.String())
	}
	all := strings.Join(s, "\n")
	if len(mm) != 2 || !strings.Contains(all, "RTMR1 event 0 (kernel") || !strings.Contains(all, "RTMR2 event 0") {
		t.Errorf("mismatches:\n%s", all)
	}
}
