package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/disk"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/uki"
)

func init() {
	register(command{
		name:    "disk",
		summary: "build the sparse GPT disk.raw (ESP with the UKI + dstack-rootfs partition)",
		run:     runDisk,
	})
	inspectDisk = inspectDiskImage // declared in cmd_inspect.go
}

func runDisk(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("disk", stderr,
		"usage: imgpost disk --uki dstack-uki.efi --rootfs rootfs.img.verity --out disk.raw [--esp-size 256MiB] [--disk-guid G] [--esp-guid G] [--rootfs-guid G]",
		"FAT timestamps come from SOURCE_DATE_EPOCH (default 1980-01-01).")
	uki := fs.String("uki", "", "the UKI `FILE` (becomes EFI/BOOT/BOOTX64.EFI on the ESP)")
	rootfs := fs.String("rootfs", "", "rootfs.img.verity `FILE` (becomes the dstack-rootfs partition)")
	out := fs.String("out", "", "output disk image `FILE` (sparse, a whole number of GiB)")
	espSize := fs.String("esp-size", "256MiB", "ESP `SIZE` (multiple of 1MiB; suffixes K/KiB, M/MiB, G/GiB)")
	diskGUID := fs.String("disk-guid", disk.DefaultDiskGUID, "disk `GUID`")
	espGUID := fs.String("esp-guid", disk.DefaultESPGUID, "ESP partition `GUID` (PARTUUID)")
	rootfsGUID := fs.String("rootfs-guid", disk.DefaultRootfsGUID, "dstack-rootfs partition `GUID` (PARTUUID)")
	if _, help, err := parseArgs(fs, args, 0); help || err != nil {
		return err
	}
	if *uki == "" || *rootfs == "" || *out == "" {
		return usagef("--uki, --rootfs and --out are required")
	}
	esp, err := disk.ParseSize(*espSize)
	if err != nil {
		return usagef("--esp-size: %v", err)
	}
	l, err := disk.BuildFile(*out, *uki, *rootfs, disk.Options{
		ESPSize: esp, DiskGUID: *diskGUID, ESPGUID: *espGUID, RootfsGUID: *rootfsGUID,
	})
	if err != nil {
		return espHint(err)
	}
	fmt.Fprintf(stdout, "%s: %d bytes (%d GiB), ESP %d MiB at %d, %s %d bytes at %d\n",
		*out, l.Size, l.Size/disk.GiB, l.ESP.Size/disk.MiB, l.ESP.Offset, disk.RootfsName, l.Rootfs.Size, l.Rootfs.Offset)
	return nil
}

// espHint adds which flag makes the ESP larger to a disk.ESPTooSmallError.
func espHint(err error) error {
	var e *disk.ESPTooSmallError
	if errors.As(err, &e) {
		return fmt.Errorf("%w (use a larger --esp-size)", err)
	}
	return err
}

// inspectDiskImage draws the partition map of a disk image and, when the ESP
// holds BOOTX64.EFI, a summary of the UKI.
func inspectDiskImage(path string, asJSON bool, w io.Writer) error {
	d, err := disk.Open(path)
	if err != nil {
		return err
	}
	defer d.Close()
	rep := struct {
		Path       string           `json:"path"`
		Size       int64            `json:"size"`
		DiskGUID   string           `json:"disk_guid"`
		GPTValid   bool             `json:"gpt_valid"`
		GPTError   string           `json:"gpt_error,omitempty"`
		Partitions []disk.Partition `json:"partitions"`
		UKI        any              `json:"uki,omitempty"`
	}{Path: path, Size: d.Size, DiskGUID: d.GUID, GPTValid: true, Partitions: d.Partitions}
	if err := d.Verify(); err != nil {
		rep.GPTValid, rep.GPTError = false, err.Error()
	}
	ukiSummary, ukiErr := summarizeESPUKI(d)
	if ukiErr == nil {
		rep.UKI = ukiSummary
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(w, "%s: %d bytes (%.2f GiB), GPT disk GUID %s\n", path, d.Size, float64(d.Size)/disk.GiB, d.GUID)
	if rep.GPTValid {
		fmt.Fprintln(w, "GPT: primary and backup headers valid and consistent")
	} else {
		fmt.Fprintf(w, "GPT: PROBLEM: %s\n", rep.GPTError)
	}
	fmt.Fprintf(w, "%-3s %-22s %12s %12s %14s %14s  %-36s  %s\n", "#", "name", "first LBA", "last LBA", "offset", "size", "type", "partition GUID")
	for _, p := range d.Partitions {
		fmt.Fprintf(w, "%-3d %-22s %12d %12d %14d %14d  %-36s  %s\n", p.Index, p.Name, p.FirstLBA, p.LastLBA, p.Offset, p.Size, typeName(p.Type), p.GUID)
	}
	switch {
	case ukiErr != nil:
		fmt.Fprintf(w, "ESP: %v\n", ukiErr)
	default:
		fmt.Fprintf(w, "ESP: /%s\n", disk.BootPath)
		printUKISummary(w, ukiSummary)
	}
	return nil
}

func typeName(t string) string {
	switch t {
	case disk.TypeESP:
		return "EFI System (" + t[:8] + "…)"
	case disk.TypeLinux:
		return "Linux filesystem (" + t[:8] + "…)"
	}
	return t
}

// ukiSummary describes the BOOTX64.EFI found on the ESP.
type ukiSummary struct {
	Path   string    `json:"path"`
	Size   int64     `json:"size"`
	SHA256 string    `json:"sha256"`
	PE     *uki.Info `json:"pe,omitempty"`
	PEErr  string    `json:"pe_error,omitempty"`
}

func summarizeESPUKI(d *disk.Disk) (*ukiSummary, error) {
	r, err := d.OpenESPFile(disk.BootPath)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	if _, err := io.CopyBuffer(h, r, make([]byte, 4*disk.MiB)); err != nil {
		return nil, fmt.Errorf("%s: ESP: read /%s: %w", d.Name(), disk.BootPath, err)
	}
	s := &ukiSummary{Path: "/" + disk.BootPath, Size: r.Size(), SHA256: hex.EncodeToString(h.Sum(nil))}
	if info, err := uki.InspectReader(r, r.Size()); err != nil {
		s.PEErr = err.Error()
	} else {
		s.PE = info
	}
	return s, nil
}

func printUKISummary(w io.Writer, s *ukiSummary) {
	fmt.Fprintf(w, "  %d bytes, sha256 %s\n", s.Size, s.SHA256)
	if s.PE == nil {
		fmt.Fprintf(w, "  %s\n", s.PEErr)
		return
	}
	var names []string
	for _, sec := range s.PE.Sections {
		names = append(names, sec.Name)
	}
	fmt.Fprintf(w, "  PE sections: %s\n", strings.Join(names, " "))
	if s.PE.HasCmdline {
		fmt.Fprintf(w, "  cmdline: %s\n", strings.TrimRight(s.PE.Cmdline, "\x00"))
	} else {
		fmt.Fprintln(w, "  cmdline: (no .cmdline section: not a UKI?)")
	}
	if s.PE.Uname != "" {
		fmt.Fprintf(w, "  uname: %s\n", s.PE.Uname)
	}
	if s.PE.LinuxSize > 0 || s.PE.InitrdSize > 0 {
		fmt.Fprintf(w, "  .linux %d bytes, .initrd %d bytes\n", s.PE.LinuxSize, s.PE.InitrdSize)
	}
	for _, l := range strings.Split(strings.TrimRight(s.PE.OSRelease, "\n\x00"), "\n") {
		if strings.HasPrefix(l, "PRETTY_NAME=") || strings.HasPrefix(l, "VERSION_ID=") {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
}
