package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/measure"
)

const measureOVMF = "/usr/share/ovmf/OVMF.fd" // Debian's combined OVMF: has TDX metadata

func measureDist(t *testing.T) string {
	t.Helper()
	testutil.NeedFile(t, measureOVMF, "ovmf")
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	dir := t.TempDir()
	for src, name := range map[string]string{testutil.DebianKernel(t): "bzImage", measureOVMF: "ovmf.fd", testutil.DebianStub: "dstack-uki.efi"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	testutil.WriteRandom(t, filepath.Join(dir, "initramfs.cpio.gz"), 777777, 5)
	md := `{"bios":"ovmf.fd","kernel":"bzImage","cmdline":"console=ttyS0","initrd":"initramfs.cpio.gz","rootfs":"r","version":"0.5.11","git_revision":"x","shared_ro":true,"is_dev":false}`
	os.WriteFile(filepath.Join(dir, "metadata.json"), []byte(md), 0o644)
	return dir
}

func runIn(args ...string) (string, string, int) {
	var so, se bytes.Buffer
	code := run(args, &so, &se)
	return so.String(), se.String(), code
}

func TestMeasureCommand(t *testing.T) {
	dir := measureDist(t)
	fw, _ := os.ReadFile(filepath.Join(dir, "ovmf.fd"))
	f, err := measure.ParseFirmware(fw)
	if err != nil {
		t.Fatal(err)
	}
	so, se, code := runIn("measure", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, se)
	}
	if !strings.Contains(so, "mrtd  "+hex.EncodeToString(f.MRTD(measure.SinglePass))) || !strings.Contains(so, "rtmr0 unknown") ||
		!strings.Contains(so, "uki_authenticode_sha256 ") {
		t.Errorf("output:\n%s", so)
	}

	// JSON, QEMU 8: two-pass MRTD, 20 events.
	so, se, code = runIn("measure", dir, "--json", "--qemu-version", "8.2.2", "--memory", "4G")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, se)
	}
	var js struct {
		MRTD   string `json:"mrtd"`
		RTMR0  *string
		RTMR1  string `json:"rtmr1"`
		Events []struct {
			RTMR   uint32 `json:"rtmr"`
			Digest string `json:"digest"`
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(so), &js); err != nil {
		t.Fatal(err)
	}
	if js.MRTD != hex.EncodeToString(f.MRTD(measure.TwoPass)) || js.RTMR0 != nil || len(js.Events) != 20 {
		t.Errorf("json: %s", so)
	}

	// A log made of the prediction plus ACPI digests matches; a changed
	// command-line digest is named.
	var events []map[string]any
	for i, e := range js.Events {
		d := e.Digest
		name := ""
		if d == "unknown" {
			d = strings.Repeat("0"+string(rune('1'+i%9)), 48)
			name = []string{"acpi-loader", "acpi-rsdp", "acpi-tables"}[i-8]
		}
		ev := map[string]any{"imr": e.RTMR, "event_type": []int{0x8000000b, 0x8000000a, 0x80000001, 0x80000001, 0x80000001, 0x80000001, 0x80000001, 4, 10, 10, 10, 0x80000002, 0x80000002, 0x80000003, 0x80000007, 4, 0x80000007, 0x80000007, 6, 6}[i], "digest": d, "event": name, "event_payload": ""}
		if name != "" {
			ev["event_payload"] = hex.EncodeToString([]byte("ACPI DATA"))
		}
		events = append(events, ev)
	}
	logPath := filepath.Join(t.TempDir(), "log.json")
	b, _ := json.Marshal(events)
	os.WriteFile(logPath, b, 0o644)
	so, se, code = runIn("measure", dir, "--qemu-version", "8.2.2", "--memory", "4G", "--event-log", logPath)
	if code != 0 || !strings.Contains(so, "matches the prediction") || strings.Contains(so, "rtmr0 unknown") {
		t.Fatalf("exit %d: %s\n%s", code, so, se)
	}
	events[18]["digest"] = strings.Repeat("ab", 48)
	b, _ = json.Marshal(events)
	os.WriteFile(logPath, b, 0o644)
	_, se, code = runIn("measure", dir, "--qemu-version", "8.2.2", "--memory", "4G", "--event-log", logPath)
	if code != 1 || !strings.Contains(se, "RTMR2 event 0 (kernel command line") {
		t.Errorf("exit %d: %s", code, se)
	}
	// The kernel digest depends on the memory size below 0xB0000000.
	_, se, code = runIn("measure", dir, "--qemu-version", "8.2.2", "--memory", "2560M", "--event-log", logPath)
	if code != 1 || !strings.Contains(se, "RTMR0 event 0 (TD HOB") || !strings.Contains(se, "RTMR1 event 0 (kernel") {
		t.Errorf("exit %d: %s", code, se)
	}
}

func TestMeasureCommandErrors(t *testing.T) {
	dir := measureDist(t)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"measure"}, 2, "dist directory"},
		{[]string{"measure", dir, "--memory", "lots"}, 2, "--memory"},
		{[]string{"measure", dir, "--qemu-version", "7.2.0"}, 2, "QEMU 8"},
		{[]string{"measure", dir, "--mrtd-order", "three"}, 2, "--mrtd-order"},
		{[]string{"measure", dir, "--acpi-loader", "00"}, 2, "--acpi-loader"},
		{[]string{"measure", dir, "--event-log", filepath.Join(dir, "ovmf.fd")}, 1, "ovmf.fd"},
		{[]string{"measure", t.TempDir()}, 1, "metadata.json"},
	} {
		_, se, code := runIn(c.args...)
		if code != c.code || !strings.Contains(se, c.want) {
			t.Errorf("%v: exit %d, %s", c.args, code, se)
		}
	}
}
