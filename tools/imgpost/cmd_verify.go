package main

import (
	"fmt"
	"io"

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
		"Exit 0 with a short report, or 1 naming the first mismatch.")
	paths, help, err := parseArgs(fs, args, 1)
	if help || err != nil {
		return err
	}
	if len(paths) != 1 {
		return usagef("want one PATH, got none")
	}
	rep, err := verifyimg.Verify(paths[0])
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, rep.String())
	return nil
}
