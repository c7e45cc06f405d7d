package main

import (
	"fmt"
	"io"
	"os"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/dist"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/verifyimg"
)

func init() {
	register(command{
		name:    "verify",
		summary: "check a disk.raw, a dist directory or a GCP tarball offline",
		run:     runVerify,
	})
}

func runVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("verify", stderr,
		"usage: imgpost verify PATH",
		"PATH is a disk.raw, a <dist>-<ver>/ directory or a <dist>-<ver>-gcp.tar.gz.",
		"Exit 0 with a short report, or 1 naming the first mismatch.",
		"The UKI's command line must be exactly the one dist writes; give the same",
		"--cmdline-base and --gcp-cmdline-extra as to dist when they were not the defaults.")
	base := os.Getenv("DSTACK_CMDLINE_BASE")
	if base == "" {
		base = dist.DefaultCmdlineBase
	}
	var o verifyimg.Options
	fs.StringVar(&o.CmdlineBase, "cmdline-base", base, "base kernel `ARGS` dist was given (default: $DSTACK_CMDLINE_BASE, else the upstream arguments)")
	var extra argList
	fs.Var(&extra, "gcp-cmdline-extra", "extra kernel `ARGS` dist added to the UKI (repeatable, blank-separated)")
	paths, help, err := parseArgs(fs, args, 1)
	if help || err != nil {
		return err
	}
	if len(paths) != 1 {
		return usagef("want one PATH, got none")
	}
	o.CmdlineExtra = extra
	rep, err := verifyimg.VerifyWith(paths[0], o)
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, rep.String())
	return nil
}
