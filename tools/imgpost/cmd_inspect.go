package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/uki"
)

func init() {
	register(command{
		name:    "inspect",
		summary: "describe a UKI/PE image (sections, command line, os-release) or a GPT disk image",
		run:     runInspect,
	})
}

// inspectDisk describes a GPT disk image; cmd_disk.go sets it in its init().
// When nil, inspect reports that disk inspection is not available.
var inspectDisk func(path string, asJSON bool, w io.Writer) error

func runInspect(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inspect", stderr,
		"usage: imgpost inspect FILE [--json]   (FILE: a UKI/PE image or a GPT disk image)")
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	files, help, err := parseArgs(fs, args, 1)
	if help || err != nil {
		return err
	}
	if len(files) != 1 {
		return usagef("give exactly one FILE")
	}
	path := files[0]
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	var magic [520]byte
	n, _ := io.ReadFull(f, magic[:])
	f.Close()
	switch {
	case n >= 520 && string(magic[512:520]) == "EFI PART":
		if inspectDisk == nil {
			return fmt.Errorf("%s: a GPT disk image; disk inspection not available in this build", path)
		}
		return inspectDisk(path, *asJSON, stdout)
	case n >= 2 && string(magic[:2]) == "MZ":
		info, err := uki.Inspect(path)
		if err != nil {
			return err
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(info)
		}
		printPE(stdout, path, info)
		return nil
	default:
		return fmt.Errorf("%s: neither a PE image (no MZ) nor a GPT disk (no \"EFI PART\" at 512)", path)
	}
}

func printPE(w io.Writer, path string, info *uki.Info) {
	fmt.Fprintf(w, "%s: PE image, %d bytes, SizeOfImage 0x%x, CheckSum 0x%08x, subsystem %d\n",
		path, info.Size, info.ImageSize, info.CheckSum, info.Subsystem)
	fmt.Fprintf(w, "%-10s %10s %10s %10s %10s\n", "section", "vaddr", "vsize", "rawsize", "rawptr")
	for _, s := range info.Sections {
		fmt.Fprintf(w, "%-10s 0x%08x 0x%08x 0x%08x 0x%08x\n", s.Name, s.VirtualAddress, s.VirtualSize, s.SizeOfRawData, s.PointerToRawData)
	}
	if info.HasCmdline {
		fmt.Fprintf(w, "cmdline: %s\n", strings.TrimRight(info.Cmdline, "\x00"))
	} else {
		fmt.Fprintln(w, "cmdline: (no .cmdline section)")
	}
	if info.Uname != "" {
		fmt.Fprintf(w, "uname: %s\n", info.Uname)
	}
	if info.OSRelease != "" {
		fmt.Fprintln(w, "os-release:")
		for _, l := range strings.Split(strings.TrimRight(info.OSRelease, "\n\x00"), "\n") {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
}
