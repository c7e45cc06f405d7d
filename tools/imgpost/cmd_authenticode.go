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
		summary: "print a PE image's Authenticode digest (what UEFI firmware measures, or --signer)",
		run:     runAuthenticode,
	})
}

func runAuthenticode(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("authenticode", stderr,
		"usage: imgpost authenticode FILE [--algo sha256|sha384|sha512] [--signer]",
		"Prints HEX  firmware: the digest UEFI firmware (EDK2) measures, the bytes after the",
		"last section unpadded; with --signer, HEX  signer: the digest signing tools",
		"(osslsigncode) compute, padded to 8. They differ only when the size is not a multiple of 8.")
	algo := fs.String("algo", "sha256", "digest `ALGORITHM`: sha256, sha384 or sha512")
	signer := fs.Bool("signer", false, "print the signing tools' (osslsigncode's, padded) digest instead of the firmware's")
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
	digest, which := authenticode.FileFirmwareDigest, "firmware"
	if *signer {
		digest, which = authenticode.FileDigest, "signer"
	}
	sum, err := digest(files[0], h)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s  %s\n", hex.EncodeToString(sum), which)
	return nil
}
