package measure

import (
	"bytes"
	"crypto"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// OVMFPre202505 names the OVMF event layout dstack's verifier knows
// (dstack's OvmfVariant::Pre202505): 13 RTMR0 events, the command line
// with " initrd=initrd" appended.
const OVMFPre202505 = "pre202505"

// ACPIDigests are the SHA-384 digests of the three ACPI blobs QEMU hands the
// firmware (table loader script, RSDP, tables). They depend on the whole VM
// configuration (vCPUs, devices, QEMU build), so they are an input: from a
// real event log ("lite" mode, as dstack's verifier does) or given by hand.
type ACPIDigests struct {
	Loader, RSDP, Tables []byte
}

// Shape is the VM configuration the measurements depend on.
type Shape struct {
	// MemoryBytes is the guest RAM (TD HOB, initrd placement).
	MemoryBytes uint64
	// QEMUVersion is "MAJOR.MINOR.PATCH"; it selects the MRTD page order
	// (8.x: two-pass; 9 and later: single-pass). Empty means 9.1.0, dstack's
	// default.
	QEMUVersion string
	// OVMFVariant is the firmware's event layout; empty means pre202505.
	OVMFVariant string
	// Initrd is where the firmware puts "initrd=initrd" in the command line.
	Initrd InitrdArg
	// ACPI, when set, completes RTMR0; without it RTMR0 is not predicted.
	ACPI *ACPIDigests
}

// PageOrder returns the MRTD page order QEMUVersion implies.
func (s Shape) PageOrder() (PageOrder, error) {
	v := s.QEMUVersion
	if v == "" {
		v = "9.1.0"
	}
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return 0, fmt.Errorf("QEMU version %q: want MAJOR.MINOR.PATCH", v)
	}
	var n [3]int
	for i, p := range parts {
		x, err := strconv.Atoi(p)
		if err != nil || x < 0 {
			return 0, fmt.Errorf("QEMU version %q: %q is not a number", v, p)
		}
		n[i] = x
	}
	switch {
	case n[0] < 8:
		return 0, fmt.Errorf("QEMU version %s: TDX needs QEMU 8 or later", v)
	case n[0] == 8:
		return TwoPass, nil
	}
	return SinglePass, nil
}

// Image is what a prediction reads from an image: the firmware, the kernel,
// the initrd's digest and size, and the command line from metadata.json.
type Image struct {
	Firmware     *Firmware
	Kernel       io.ReaderAt
	KernelSize   int64
	InitrdSHA384 []byte
	InitrdSize   uint64
	Cmdline      string
}

// Prediction is the predicted TDX measurement of an image in a VM shape.
type Prediction struct {
	MRTD []byte
	// RTMR holds RTMR0..2; RTMR[0] is nil when the ACPI digests are unknown.
	RTMR [3][]byte
	// Events are the predicted RTMR events in firmware order per register
	// (Index 0..2); an event whose digest is unknown has a nil Digest.
	Events []Event
}

// UEFI variable vendor GUIDs.
const (
	efiGlobalVariable  = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
	efiImageSecurityDB = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
	ovmfDXEFV          = "7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1" // OvmfPkg DXEFV name
	uiAppFile          = "462caa21-7614-4503-836e-8ab6f4662331" // MdeModulePkg UiApp
)

func sha384(b []byte) []byte { s := sha512.Sum384(b); return s[:] }

// VariableData is UEFI_VARIABLE_DATA: the event data (and, for
// EV_EFI_VARIABLE_DRIVER_CONFIG, the measured bytes) of a variable event.
func VariableData(vendor, name string, data []byte) []byte {
	g := mustGUID(vendor)
	var b bytes.Buffer
	b.Write(g[:])
	n := UTF16Z(name)
	n = n[:len(n)-2]
	binary.Write(&b, binary.LittleEndian, uint64(len(n)/2))
	binary.Write(&b, binary.LittleEndian, uint64(len(data)))
	b.Write(n)
	b.Write(data)
	return b.Bytes()
}

// uiAppBootOption is the EFI_LOAD_OPTION OVMF's platform boot manager
// creates as Boot0000 for the UI application (the "UiApp" entry that sits
// first in BootOrder during direct kernel boot): LOAD_OPTION_ACTIVE |
// LOAD_OPTION_HIDDEN | LOAD_OPTION_CATEGORY_APP, description "UiApp", device
// path FV(DXEFV)/FvFile(UiApp)/End.
func uiAppBootOption() []byte {
	var dp bytes.Buffer
	fv, app := mustGUID(ovmfDXEFV), mustGUID(uiAppFile)
	dp.Write([]byte{0x04, 0x07, 0x14, 0x00}) // MEDIA_PIWG_FW_VOL_DP
	dp.Write(fv[:])
	dp.Write([]byte{0x04, 0x06, 0x14, 0x00}) // MEDIA_PIWG_FW_FILE_DP
	dp.Write(app[:])
	dp.Write([]byte{0x7f, 0xff, 0x04, 0x00}) // END_ENTIRE_DEVICE_PATH
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint32(0x00000109))
	binary.Write(&b, binary.LittleEndian, uint16(dp.Len()))
	b.Write(UTF16Z("UiApp"))
	b.Write(dp.Bytes())
	return b.Bytes()
}

// RTMR0Events returns the RTMR0 events of the pre202505 OVMF layout, given
// the SHA-384 digests of the TD HOB and of the CFV; acpi may be nil (its
// three digests are then unknown).
func RTMR0Events(tdHOBDigest, cfvDigest []byte, acpi *ACPIDigests) []Event {
	ev := func(t uint32, d []byte, name string) Event { return Event{Index: 0, Type: t, Digest: d, Name: name} }
	var loader, rsdp, tables []byte
	if acpi != nil {
		loader, rsdp, tables = acpi.Loader, acpi.RSDP, acpi.Tables
	}
	return []Event{
		ev(EvEFIHandoffTables2, tdHOBDigest, "TD HOB (TdxTable)"),
		ev(EvEFIPlatformFirmwareBlob2, cfvDigest, "CFV: the firmware's variable store"),
		ev(EvEFIVariableDriverConfig, sha384(VariableData(efiGlobalVariable, "SecureBoot", nil)), "SecureBoot (not set)"),
		ev(EvEFIVariableDriverConfig, sha384(VariableData(efiGlobalVariable, "PK", nil)), "PK (not set)"),
		ev(EvEFIVariableDriverConfig, sha384(VariableData(efiGlobalVariable, "KEK", nil)), "KEK (not set)"),
		ev(EvEFIVariableDriverConfig, sha384(VariableData(efiImageSecurityDB, "db", nil)), "db (not set)"),
		ev(EvEFIVariableDriverConfig, sha384(VariableData(efiImageSecurityDB, "dbx", nil)), "dbx (not set)"),
		ev(EvSeparator, sha384([]byte{0, 0, 0, 0}), "separator"),
		ev(EvPlatformConfigFlags, loader, "acpi-loader: QEMU ACPI table loader"),
		ev(EvPlatformConfigFlags, rsdp, "acpi-rsdp: QEMU ACPI RSDP"),
		ev(EvPlatformConfigFlags, tables, "acpi-tables: QEMU ACPI tables"),
		ev(EvEFIVariableBoot, sha384([]byte{0, 0}), "BootOrder = 0000"),
		ev(EvEFIVariableBoot, sha384(uiAppBootOption()), "Boot0000 = UiApp"),
	}
}

// RTMR1Events returns the RTMR1 events of direct kernel boot.
func RTMR1Events(kernelAuthenticode []byte) []Event {
	ev := func(t uint32, d []byte, name string) Event { return Event{Index: 1, Type: t, Digest: d, Name: name} }
	return []Event{
		ev(EvEFIBootServicesApp, kernelAuthenticode, "kernel: Authenticode SHA-384 of the QEMU-patched bzImage"),
		ev(EvEFIAction, sha384([]byte("Calling EFI Application from Boot Option")), "Calling EFI Application from Boot Option"),
		ev(EvSeparator, sha384([]byte{0, 0, 0, 0}), "separator"),
		ev(EvEFIAction, sha384([]byte("Exit Boot Services Invocation")), "Exit Boot Services Invocation"),
		ev(EvEFIAction, sha384([]byte("Exit Boot Services Returned with Success")), "Exit Boot Services Returned with Success"),
	}
}

// RTMR2Events returns the RTMR2 events the kernel's EFI stub makes: the
// command line (UTF-16LE, NUL-terminated) and the initrd.
func RTMR2Events(measuredCmdline string, initrdSHA384 []byte) []Event {
	return []Event{
		{Index: 2, Type: EvEventTag, Digest: sha384(UTF16Z(measuredCmdline)), Name: "kernel command line: " + measuredCmdline},
		{Index: 2, Type: EvEventTag, Digest: initrdSHA384, Name: "initrd"},
	}
}

// Predict computes the TDX measurements of img booted in shape.
func Predict(img Image, shape Shape) (*Prediction, error) {
	if shape.OVMFVariant != "" && shape.OVMFVariant != OVMFPre202505 {
		return nil, fmt.Errorf("OVMF variant %q: only %q is modelled", shape.OVMFVariant, OVMFPre202505)
	}
	order, err := shape.PageOrder()
	if err != nil {
		return nil, err
	}
	w, err := img.Firmware.Witness()
	if err != nil {
		return nil, err
	}
	hob, err := w.TDHOB(shape.MemoryBytes)
	if err != nil {
		return nil, err
	}
	cfv, err := img.Firmware.CFV()
	if err != nil {
		return nil, err
	}
	kernel, err := PatchedKernelAuthenticode(img.Kernel, img.KernelSize, img.InitrdSize, shape.MemoryBytes, crypto.SHA384)
	if err != nil {
		return nil, err
	}
	initrdArg := shape.Initrd
	if img.InitrdSize == 0 {
		initrdArg = InitrdNone
	}
	p := &Prediction{MRTD: img.Firmware.MRTD(order)}
	p.Events = append(p.Events, RTMR0Events(sha384(hob), sha384(cfv), shape.ACPI)...)
	p.Events = append(p.Events, RTMR1Events(kernel)...)
	p.Events = append(p.Events, RTMR2Events(MeasuredCmdline(img.Cmdline, initrdArg), img.InitrdSHA384)...)
	p.RTMR = RTMRs(p.Events)
	return p, nil
}

// RTMRs replays events into RTMR0..2; a register with an unknown event
// digest is nil.
func RTMRs(events []Event) [3][]byte {
	var digests [3][][]byte
	var unknown [3]bool
	for _, e := range events {
		if e.Index > 2 {
			continue
		}
		if e.Digest == nil {
			unknown[e.Index] = true
		}
		digests[e.Index] = append(digests[e.Index], e.Digest)
	}
	var out [3][]byte
	for i := range out {
		if !unknown[i] {
			out[i] = ReplayDigests(digests[i])
		}
	}
	return out
}

// ACPIFromLog takes the three RTMR0 "ACPI DATA" digests (EV_PLATFORM_CONFIG_FLAGS
// events) from a real event log, in firmware order: loader, RSDP, tables.
// A dstack JSON log names them; the names must then match the order.
func ACPIFromLog(l *Log) (*ACPIDigests, error) {
	var found []Event
	for _, e := range l.Events {
		if e.Index == 0 && e.Type == EvPlatformConfigFlags && string(e.Data) == "ACPI DATA" {
			found = append(found, e)
		}
	}
	if len(found) != 3 {
		return nil, fmt.Errorf("event log: %d RTMR0 ACPI DATA events, want 3", len(found))
	}
	for i, want := range []string{"acpi-loader", "acpi-rsdp", "acpi-tables"} {
		if found[i].Name != "" && found[i].Name != want {
			return nil, fmt.Errorf("event log: ACPI DATA event %d is named %q, want %q", i, found[i].Name, want)
		}
		if len(found[i].Digest) != 48 {
			return nil, fmt.Errorf("event log: ACPI DATA event %q has a %d-byte digest", want, len(found[i].Digest))
		}
	}
	return &ACPIDigests{Loader: found[0].Digest, RSDP: found[1].Digest, Tables: found[2].Digest}, nil
}

// Mismatch describes where a real log departs from a prediction.
type Mismatch struct {
	RTMR     uint32
	Position int    // index of the event within the register's events
	Want     *Event // predicted (nil: the log has an extra event)
	Got      *Event // logged (nil: the log lacks the event)
}

func (m Mismatch) String() string {
	switch {
	case m.Got == nil:
		return fmt.Sprintf("RTMR%d event %d: predicted %q (%x), the log ends", m.RTMR, m.Position, m.Want.Name, m.Want.Digest)
	case m.Want == nil:
		return fmt.Sprintf("RTMR%d event %d: the log has an extra event of type %#x (%x)", m.RTMR, m.Position, m.Got.Type, m.Got.Digest)
	}
	return fmt.Sprintf("RTMR%d event %d (%s): predicted %x (type %#x), the log has %x (type %#x)",
		m.RTMR, m.Position, m.Want.Name, m.Want.Digest, m.Want.Type, m.Got.Digest, m.Got.Type)
}

// Compare matches the predicted RTMR0..2 events against a real log's,
// register by register and in order, and returns the first mismatch of
// each register (none when they agree). Unknown predicted digests match any
// logged digest.
func Compare(pred []Event, log *Log) []Mismatch {
	var out []Mismatch
	for r := uint32(0); r < 3; r++ {
		var want, got []Event
		for _, e := range pred {
			if e.Index == r {
				want = append(want, e)
			}
		}
		for _, e := range log.Events {
			if e.Index == r {
				got = append(got, e)
			}
		}
		for i := 0; i < max(len(want), len(got)); i++ {
			m := Mismatch{RTMR: r, Position: i}
			if i < len(want) {
				m.Want = &want[i]
			}
			if i < len(got) {
				m.Got = &got[i]
			}
			if m.Want != nil && m.Got != nil && m.Want.Type == m.Got.Type &&
				(m.Want.Digest == nil || bytes.Equal(m.Want.Digest, m.Got.Digest)) {
				continue
			}
			out = append(out, m)
			break
		}
	}
	return out
}
