package main

import (
	"crypto"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
)

func init() {
	register(command{
		name:    "authenticode",
		summary: "print a PE image's Authenticode digest (what UEFI firmware measures)",
		run:     runAuthenticode,
	})
}

func runAuthenticode(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("authenticode", stderr,
		"usage: imgpost authenticode FILE [--algo sha256|sha384|sha512]")
	algo := fs.String("algo", "sha256", "digest `ALGORITHM`: sha256, sha384 or sha512")
	files, help, err := parseArgs(fs, args, 1)
	if help || err != nil {
		return err
	}
	if len(files) != 1 {
		return usagef("give exactly one FILE")
	}
	h, ok := map[string]crypto.Hash{"sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512}[*algo]
	if !ok {
		return usagef("--algo %q: want sha256, sha384 or sha512", *algo)
	}
	sum, err := authenticode.FileDigest(files[0], h)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, hex.EncodeToString(sum))
	return nil
}
