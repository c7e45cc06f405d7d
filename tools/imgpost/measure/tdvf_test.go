package measure

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// debianOVMF is Debian's combined OVMF image (package ovmf): OvmfPkgX64
// carries the TDX metadata, so its MRTD can be computed.
const debianOVMF = "/usr/share/ovmf/OVMF.fd"

func readOVMF(t *testing.T) []byte {
	t.Helper()
	testutil.NeedFile(t, debianOVMF, "ovmf")
	b, err := os.ReadFile(debianOVMF)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pinnedOVMFEnv names an extra firmware for the tests below: the ovmf.fd
// of meta-dstack-bsp's dstack-ovmf (edk2-stable202502, IntelTdxX64.dsc),
// which CI cannot build (docs/layer.md, "Checking the pinned firmware").
const pinnedOVMFEnv = "IMGPOST_TEST_OVMF"

// testFirmwares is Debian's OVMF and, when IMGPOST_TEST_OVMF names one, the
// pinned firmware.
func testFirmwares(t *testing.T) []string {
	t.Helper()
	testutil.NeedFile(t, debianOVMF, "ovmf")
	fws := []string{debianOVMF}
	if p := os.Getenv(pinnedOVMFEnv); p != "" {
		fws = append(fws, p)
	}
	return fws
}

// MRTD in both QEMU orders and the CFV digest agree with an independent
// reading of the TDVF metadata (testdata/tdvf_mrtd.py).
func TestMRTDMatchesPython(t *testing.T) {
	testutil.Need(t, "python3")
	for _, path := range testFirmwares(t) {
		t.Run(path, func(t *testing.T) { mrtdMatchesPython(t, path) })
	}
}

// firmwareFile reads and parses the firmware at path.
func firmwareFile(t *testing.T, path string) *Firmware {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fw, err := ParseFirmware(b)
	if err != nil {
		t.Fatal(err)
	}
	return fw
}

func mrtdMatchesPython(t *testing.T, path string) {
	fw := firmwareFile(t, path)
	out, err := exec.Command("python3", "testdata/tdvf_mrtd.py", path).Output()
	if err != nil {
		t.Fatalf("tdvf_mrtd.py: %v", err)
	}
	want := map[string]string{}
	var pySections int
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 {
			want[f[0]] = f[1]
		}
		if len(f) > 0 && f[0] == "section" {
			pySections++
		}
	}
	if len(fw.Sections) != pySections || pySections == 0 {
		t.Fatalf("%d sections, python read %d", len(fw.Sections), pySections)
	}
	if got := hex.EncodeToString(fw.MRTD(SinglePass)); got != want["single_pass"] {
		t.Errorf("single-pass MRTD %s, python %s", got, want["single_pass"])
	}
	if got := hex.EncodeToString(fw.MRTD(TwoPass)); got != want["two_pass"] {
		t.Errorf("two-pass MRTD %s, python %s", got, want["two_pass"])
	}
	if fw.MRTD(TwoPass) == nil || bytes.Equal(fw.MRTD(TwoPass), fw.MRTD(SinglePass)) {
		t.Error("the two orders give the same MRTD")
	}
	cfv, err := fw.CFV()
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(sha384(cfv)); got != want["cfv_sha384"] {
		t.Errorf("CFV digest %s, python %s", got, want["cfv_sha384"])
	}
	t.Logf("%s: MRTD single-pass %s, two-pass %s", path, want["single_pass"], want["two_pass"])
	// Debian's OVMF has the same TD_HOB/TEMP_MEM layout as dstack's
	// (the witness in dstack-0.6.0's measurement.tdx.cbor).
	w, err := fw.Witness()
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(w.Encode()); got != "80100904000609020b021010" {
		t.Errorf("witness %s", got)
	}
}

// The pinned firmware (IMGPOST_TEST_OVMF) is the one dstack's quotes were
// made with, as far as RTMR0 shows: its CFV digest and TD HOB layout, with
// each quote's ACPI digests from its log, predict both real quotes' RTMR0.
// (Its MRTD is its tool chain's: EDK II builds are not byte-reproducible
// across compilers.)
func TestPinnedFirmwareRTMR0(t *testing.T) {
	path := os.Getenv(pinnedOVMFEnv)
	if path == "" {
		t.Skip(pinnedOVMFEnv + " is not set (the pinned firmware is not built in CI)")
	}
	fw := firmwareFile(t, path)
	cfv, err := fw.CFV()
	if err != nil {
		t.Fatal(err)
	}
	w, err := fw.Witness()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{lite060, report64G} {
		f, l := loadFixture(t, name)
		hob := hobDigest(t, w, f.MemorySize)
		acpi, err := ACPIFromLog(l)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(RTMRs(RTMR0Events(hob, sha384(cfv), acpi))[0]); got != f.Quote["rtmr0"] {
			t.Errorf("%s: RTMR0 %s, quote %s", name, got, f.Quote["rtmr0"])
		}
	}
}

// Corrupting the metadata gives one clear error, never a panic.
func TestParseFirmwareRejects(t *testing.T) {
	fwb := readOVMF(t)
	fw, err := ParseFirmware(fwb)
	if err != nil {
		t.Fatal(err)
	}
	_ = fw
	le := binary.LittleEndian
	size := len(fwb)
	footer := size - 48
	tableEnd := footer - 2
	// Find the TDX metadata offset entry's value (python: the table's first
	// entry in Debian's OVMF, 0x840 from the end).
	entryVal := bytes.Index(fwb[tableEnd-136:tableEnd], append([]byte{0x40, 0x08, 0, 0, 22, 0}, guidTDXMetadataOffset[:]...))
	if entryVal < 0 {
		t.Fatal("TDX metadata entry not where tdvf_mrtd.py saw it")
	}
	entryVal += tableEnd - 136
	desc := size - int(le.Uint32(fwb[entryVal:]))
	cases := []struct {
		name string
		mut  func(b []byte) []byte
		want string
	}{
		{"empty", func(b []byte) []byte { return nil }, "too small"},
		{"no footer", func(b []byte) []byte { b[footer] ^= 1; return b }, "footer"},
		{"table too short", func(b []byte) []byte { le.PutUint16(b[footer-2:], 17); return b }, "table length"},
		{"no TDX entry", func(b []byte) []byte { b[entryVal+6] ^= 1; return b }, "no TDX metadata entry"},
		{"entry too long", func(b []byte) []byte { le.PutUint16(b[entryVal+4:], 0xff00); return b }, "outside the table"},
		{"metadata offset past start", func(b []byte) []byte { le.PutUint32(b[entryVal:], uint32(size+1)); return b }, "outside"},
		{"bad signature", func(b []byte) []byte { b[desc] = 'X'; return b }, "TDVF signature"},
		{"bad version", func(b []byte) []byte { le.PutUint32(b[desc+8:], 2); return b }, "version"},
		{"too many sections", func(b []byte) []byte { le.PutUint32(b[desc+12:], 1<<30); return b }, "sections"},
		{"section past end", func(b []byte) []byte { le.PutUint32(b[desc+16+4:], 0x7fffffff); return b }, "section 0"},
		{"unaligned address", func(b []byte) []byte { le.PutUint64(b[desc+16+8:], 0xffe20001); return b }, "aligned"},
		{"unknown type", func(b []byte) []byte { le.PutUint32(b[desc+16+24:], 9); return b }, "unknown type"},
		{"truncated", func(b []byte) []byte { return b[size/2:] }, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.mut(bytes.Clone(fwb))
			_, err := ParseFirmware(b)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want one containing %q", err, c.want)
			}
		})
	}
}

// Debian's 4 MiB OVMF (built without TDX) is told apart from a broken
// TDX firmware.
func TestNotTDX(t *testing.T) {
	testutil.NeedFile(t, "/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf")
	b, err := os.ReadFile("/usr/share/OVMF/OVMF_CODE_4M.fd")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseFirmware(b); !errors.Is(err, ErrNotTDX) {
		t.Errorf("OVMF_CODE_4M.fd: %v, want ErrNotTDX", err)
	}
	b = readOVMF(t)
	binary.LittleEndian.PutUint32(b[len(b)-0x840+8:], 7) // TDVF version 7
	if _, err := ParseFirmware(b); err == nil || errors.Is(err, ErrNotTDX) {
		t.Errorf("bad TDVF version: %v, want an error other than ErrNotTDX", err)
	}
}

func TestTDHOBLayout(t *testing.T) {
	w, err := DecodeWitness(unhex(t, "80100904000609020b021010"))
	if err != nil {
		t.Fatal(err)
	}
	ranges := func(mem uint64) [][3]uint64 {
		hob, err := w.TDHOB(mem)
		if err != nil {
			t.Fatal(err)
		}
		var out [][3]uint64
		for off := 56; off+48 <= len(hob); off += 48 {
			r := hob[off:]
			out = append(out, [3]uint64{uint64(r[24]), binary.LittleEndian.Uint64(r[32:]), binary.LittleEndian.Uint64(r[40:])})
		}
		if end := binary.LittleEndian.Uint64(hob[48:]); end != w.HOBAddr+uint64(len(hob))+8 {
			t.Errorf("EfiEndOfHobList %#x", end)
		}
		return out
	}
	// Below the q35 split: one unaccepted range to the end of RAM.
	low := ranges(2 << 30)
	if last := low[len(low)-1]; last != [3]uint64{7, 0x820000, 2<<30 - 0x820000} {
		t.Errorf("2 GiB: last range %#x", last)
	}
	// At and above 0xB0000000: split at 2 GiB, the rest above 4 GiB.
	high := ranges(8 << 30)
	n := len(high)
	if high[n-2] != [3]uint64{7, 0x820000, 0x80000000 - 0x820000} || high[n-1] != [3]uint64{7, 1 << 32, 6 << 30} {
		t.Errorf("8 GiB: last ranges %#x", high[n-2:])
	}
	// Accepted ranges are system memory (type 0), kept separate.
	if low[0] != [3]uint64{7, 0, 0x800000} || low[1] != [3]uint64{0, 0x800000, 0x6000} || low[3] != [3]uint64{0, 0x809000, 0x2000} {
		t.Errorf("first ranges %#x", low[:4])
	}
	for _, bad := range []uint64{0, 4095, 0x810000} {
		if _, err := w.TDHOB(bad); err == nil {
			t.Errorf("memory %#x accepted", bad)
		}
	}
}

func TestDecodeWitnessRejects(t *testing.T) {
	for _, h := range []string{"", "80", "801009", "8010090400060902", "80100904000609020b02101000", "801009ff", "8010090100ffffffffffffffffffff01"} {
		if _, err := DecodeWitness(unhex(t, h)); err == nil {
			t.Errorf("%s accepted", h)
		}
	}
}
