package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/uki"
)

func init() {
	register(command{
		name:    "uki",
		summary: "build the Unified Kernel Image (systemd stub + kernel + initrd + cmdline) and its Authenticode hash",
		run:     runUKI,
	})
}

// multiFlag collects a repeated string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func runUKI(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("uki", stderr,
		"usage: imgpost uki --stub linuxx64.efi.stub --linux bzImage --initrd INITRD [--initrd MORE...] (--cmdline STR | --cmdline-file F) [--os-release F] [--uname STR] --out dstack-uki.efi")
	stub := fs.String("stub", "", "systemd EFI stub `FILE` (linuxx64.efi.stub)")
	linux := fs.String("linux", "", "kernel `FILE` (x86 bzImage with the EFI stub)")
	var initrds multiFlag
	fs.Var(&initrds, "initrd", "initramfs `FILE` (repeat to concatenate several, in order)")
	cmdline := fs.String("cmdline", "", "kernel command line `STRING`")
	cmdlineFile := fs.String("cmdline-file", "", "read the command line from `FILE` (one trailing newline is dropped)")
	osrel := fs.String("os-release", "", "os-release `FILE` for the .osrel section (optional)")
	uname := fs.String("uname", "", "kernel release `STRING` for the .uname section (optional)")
	out := fs.String("out", "", "output UKI `FILE`; FILE"+authenticode.HashFileSuffix+" gets its SHA-256 Authenticode digest")
	if _, help, err := parseArgs(fs, args, 0); help || err != nil {
		return err
	}
	if *stub == "" || *linux == "" || len(initrds) == 0 || *out == "" {
		return usagef("--stub, --linux, --initrd and --out are required")
	}
	cmdSet := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "cmdline" {
			cmdSet = true
		}
	})
	if cmdSet == (*cmdlineFile != "") {
		return usagef("give exactly one of --cmdline and --cmdline-file")
	}
	cl := *cmdline
	if *cmdlineFile != "" {
		b, err := os.ReadFile(*cmdlineFile)
		if err != nil {
			return fmt.Errorf("command line file: %w", err)
		}
		cl = strings.TrimSuffix(string(b), "\n")
		if err := uki.CheckCmdline(cl); err != nil {
			return fmt.Errorf("command line file %s: %w", *cmdlineFile, err)
		}
	}
	info, err := uki.Build(uki.Options{
		Stub: *stub, Linux: *linux, Initrds: initrds, Cmdline: cl,
		OSRelease: *osrel, Uname: *uname, Out: *out,
	})
	if err != nil {
		return err
	}
	sum, err := authenticode.WriteHashFile(*out, "")
	if err != nil {
		os.Remove(*out) // no UKI without its hash file
		return err
	}
	fmt.Fprintf(stdout, "%s: %d bytes, %d sections, Authenticode sha256 %s\n", *out, info.Size, len(info.Sections), sum)
	return nil
}
