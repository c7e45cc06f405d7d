package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/measure"
)

func init() {
	register(command{
		name:    "measure",
		summary: "predict the TDX measurements (MRTD, RTMR0-2) and the GCP UKI digest of a dist directory",
		run:     runMeasure,
	})
}

// parseMemory reads a memory size: bytes, or a number with K/M/G/T
// (binary units, optional "iB"/"B").
func parseMemory(s string) (uint64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "IB"), "B")
	mult := uint64(1)
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGT", t[n-1]); i >= 0 {
			mult = 1 << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v == 0 || v > (1<<46)/mult {
		return 0, usagef("--memory %q: want a size such as 2G, 4096M or a byte count", s)
	}
	return v * mult, nil
}

func hexFlag(name, v string) ([]byte, error) {
	b, err := hex.DecodeString(v)
	if err != nil || len(b) != 48 {
		return nil, usagef("--%s: want 96 hex digits (a SHA-384 digest)", name)
	}
	return b, nil
}

type measureEventJSON struct {
	RTMR   uint32 `json:"rtmr"`
	Type   string `json:"type"`
	Digest string `json:"digest"`
	Name   string `json:"description"`
}

type measureJSON struct {
	MemoryBytes   uint64             `json:"memory_bytes"`
	QEMUVersion   string             `json:"qemu_version"`
	PageOrder     string             `json:"mrtd_page_order"`
	OVMFVariant   string             `json:"ovmf_variant"`
	MRTD          string             `json:"mrtd"`
	RTMR0         *string            `json:"rtmr0"`
	RTMR1         string             `json:"rtmr1"`
	RTMR2         string             `json:"rtmr2"`
	UKIAuthSHA256 string             `json:"uki_authenticode_sha256,omitempty"`
	Events        []measureEventJSON `json:"events,omitempty"`
	EventLog      *logCompareJSON    `json:"event_log,omitempty"`
}

type logCompareJSON struct {
	File       string   `json:"file"`
	Match      bool     `json:"match"`
	Mismatches []string `json:"mismatches,omitempty"`
	RTMR       []string `json:"replayed_rtmr"`
}

func runMeasure(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("measure", stderr,
		"usage: imgpost measure DIST_DIR [--memory SIZE] [--qemu-version V] [--event-log FILE] [--json] [--events]",
		"Predicts what TDX firmware and QEMU measure when DIST_DIR (metadata.json, ovmf.fd,",
		"bzImage, initrd) boots in the given VM shape, and the UKI's Authenticode SHA-256",
		"Google's firmware logs. RTMR0 needs the three ACPI digests of the VM: from --event-log",
		"(as dstack's \"lite\" verifier does) or --acpi-loader/--acpi-rsdp/--acpi-tables.")
	memory := fs.String("memory", "2G", "guest `RAM`: bytes or K/M/G/T")
	qemuVersion := fs.String("qemu-version", "9.1.0", "QEMU `VERSION`: 8.x adds pages two-pass, 9 and later single-pass")
	order := fs.String("mrtd-order", "auto", "MRTD page `ORDER`: auto (from --qemu-version), single or two")
	initrdArg := fs.String("initrd-arg", "suffix", "where the firmware puts \"initrd=initrd\" in the command line: suffix (EDK2 up to edk2-stable202505, dstack's firmware) or prefix (edk2-stable202508 and later)")
	eventLog := fs.String("event-log", "", "real event `FILE` (binary CCEL, or dstack's JSON event log / GetQuote response): take the ACPI digests from it and compare event by event")
	acpiLoader := fs.String("acpi-loader", "", "SHA-384 `HEX` of QEMU's ACPI table loader")
	acpiRSDP := fs.String("acpi-rsdp", "", "SHA-384 `HEX` of QEMU's ACPI RSDP")
	acpiTables := fs.String("acpi-tables", "", "SHA-384 `HEX` of QEMU's ACPI tables")
	asJSON := fs.Bool("json", false, "print JSON")
	events := fs.Bool("events", false, "list every predicted event with its digest and description")
	pos, help, err := parseArgs(fs, args, 1)
	if help || err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("give the dist directory")
	}
	dir := pos[0]
	shape := measure.Shape{QEMUVersion: *qemuVersion, OVMFVariant: measure.OVMFPre202505}
	if shape.MemoryBytes, err = parseMemory(*memory); err != nil {
		return err
	}
	pageOrder, err := shape.PageOrder()
	if err != nil {
		return usagef("--qemu-version: %v", err)
	}
	switch *order {
	case "auto":
	case "single":
		pageOrder = measure.SinglePass
	case "two":
		pageOrder = measure.TwoPass
	default:
		return usagef("--mrtd-order %q: want auto, single or two", *order)
	}
	switch *initrdArg {
	case "suffix":
		shape.Initrd = measure.InitrdSuffix
	case "prefix":
		shape.Initrd = measure.InitrdPrefix
	default:
		return usagef("--initrd-arg %q: want suffix or prefix", *initrdArg)
	}
	if *acpiLoader != "" || *acpiRSDP != "" || *acpiTables != "" {
		var a measure.ACPIDigests
		if a.Loader, err = hexFlag("acpi-loader", *acpiLoader); err != nil {
			return err
		}
		if a.RSDP, err = hexFlag("acpi-rsdp", *acpiRSDP); err != nil {
			return err
		}
		if a.Tables, err = hexFlag("acpi-tables", *acpiTables); err != nil {
			return err
		}
		shape.ACPI = &a
	}
	var log *measure.Log
	if *eventLog != "" {
		b, err := os.ReadFile(*eventLog)
		if err != nil {
			return err
		}
		if log, err = measure.ParseEventLog(b, true); err != nil {
			return fmt.Errorf("%s: %w", *eventLog, err)
		}
		if shape.ACPI == nil {
			if shape.ACPI, err = measure.ACPIFromLog(log); err != nil {
				return fmt.Errorf("%s: %w", *eventLog, err)
			}
		}
	}

	img, md, kf, err := measure.OpenImage(dir)
	if err != nil {
		return err
	}
	defer kf.Close()
	if md.OVMFVariant != "" {
		shape.OVMFVariant = md.OVMFVariant
	}
	pred, err := measure.Predict(*img, shape)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	pred.MRTD = img.Firmware.MRTD(pageOrder)
	var uki []byte
	ukiPath := filepath.Join(dir, measure.UKIFileName)
	if _, err := os.Stat(ukiPath); err == nil {
		if uki, err = measure.UKIAuthenticodeSHA256(ukiPath); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}

	out := measureJSON{
		MemoryBytes: shape.MemoryBytes, QEMUVersion: shape.QEMUVersion, PageOrder: pageOrder.String(),
		OVMFVariant: shape.OVMFVariant, MRTD: hex.EncodeToString(pred.MRTD),
		RTMR1: hex.EncodeToString(pred.RTMR[1]), RTMR2: hex.EncodeToString(pred.RTMR[2]),
	}
	if pred.RTMR[0] != nil {
		s := hex.EncodeToString(pred.RTMR[0])
		out.RTMR0 = &s
	}
	if uki != nil {
		out.UKIAuthSHA256 = hex.EncodeToString(uki)
	}
	if *events || *asJSON {
		for _, e := range pred.Events {
			d := "unknown"
			if e.Digest != nil {
				d = hex.EncodeToString(e.Digest)
			}
			out.Events = append(out.Events, measureEventJSON{e.Index, fmt.Sprintf("%#x", e.Type), d, e.Name})
		}
	}
	var mismatches []measure.Mismatch
	if log != nil {
		mismatches = measure.Compare(pred.Events, log)
		c := &logCompareJSON{File: *eventLog, Match: len(mismatches) == 0}
		for _, m := range mismatches {
			c.Mismatches = append(c.Mismatches, m.String())
		}
		replay := log.Replay()
		for i := uint32(0); i < 4; i++ {
			r := replay[i]
			if r == nil {
				r = make([]byte, 48) // never extended
			}
			c.RTMR = append(c.RTMR, hex.EncodeToString(r))
		}
		out.EventLog = c
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "# %s: %s RAM, QEMU %s (MRTD %s), OVMF %s\n", dir, *memory, shape.QEMUVersion, pageOrder, shape.OVMFVariant)
		fmt.Fprintf(stdout, "mrtd  %s\n", out.MRTD)
		if out.RTMR0 != nil {
			fmt.Fprintf(stdout, "rtmr0 %s\n", *out.RTMR0)
		} else {
			fmt.Fprintln(stdout, "rtmr0 unknown: needs the VM's ACPI digests (--event-log or --acpi-*)")
		}
		fmt.Fprintf(stdout, "rtmr1 %s\n", out.RTMR1)
		fmt.Fprintf(stdout, "rtmr2 %s\n", out.RTMR2)
		if uki != nil {
			fmt.Fprintf(stdout, "uki_authenticode_sha256 %s (GCP: as firmware measures %s)\n", out.UKIAuthSHA256, measure.UKIFileName)
		}
		if *events {
			for _, e := range out.Events {
				fmt.Fprintf(stdout, "RTMR%d %-10s %s %s\n", e.RTMR, e.Type, e.Digest, e.Name)
			}
		}
		if out.EventLog != nil {
			for i, r := range out.EventLog.RTMR {
				fmt.Fprintf(stdout, "log rtmr%d %s\n", i, r)
			}
			if out.EventLog.Match {
				fmt.Fprintf(stdout, "event log %s: every RTMR0-2 event matches the prediction\n", *eventLog)
			}
		}
	}
	if len(mismatches) > 0 {
		var s []string
		for _, m := range mismatches {
			s = append(s, m.String())
		}
		return fmt.Errorf("%s does not match the prediction: %s", *eventLog, strings.Join(s, "; "))
	}
	return nil
}
