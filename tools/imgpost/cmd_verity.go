package main

import (
	"fmt"
	"io"
	"os"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/sqfs"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/verity"
)

func init() {
	register(command{
		name:    "verity",
		summary: "append a dm-verity hash tree to a squashfs rootfs (or --verify one)",
		run:     runVerity,
	})
}

func runVerity(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("verity", stderr,
		"usage: imgpost verity --data ROOTFS.squashfs --out ROOTFS.img.verity [--salt HEX] [--uuid UUID] [--env FILE] [--no-fs-check]",
		"       imgpost verity --verify FILE --root-hash HEX [--hash-offset BYTES]")
	data := fs.String("data", "", "input squashfs `FILE` (the data to protect)")
	out := fs.String("out", "", "output `FILE`: the data padded to 4096 bytes, then the verity superblock and hash tree")
	salt := fs.String("salt", verity.DefaultSaltHex, "salt in `HEX` (at most 512 hex digits; \"-\" for none)")
	uuid := fs.String("uuid", verity.DefaultUUID, "superblock `UUID`")
	env := fs.String("env", "", "also write the KEY=VALUE lines to `FILE`")
	noFS := fs.Bool("no-fs-check", false, "do not check that the data is a readable squashfs")
	verifyPath := fs.String("verify", "", "verify `FILE` (data + hash area) instead of formatting")
	rootHash := fs.String("root-hash", "", "with --verify: the expected root hash in `HEX`")
	hashOffset := fs.Int64("hash-offset", -1, "with --verify: offset of the verity superblock in `BYTES` (default: derived from the file size)")
	if _, help, err := parseArgs(fs, args, 0); help || err != nil {
		return err
	}

	if *verifyPath != "" {
		if *data != "" || *out != "" || *env != "" {
			return usagef("--verify does not take --data, --out or --env")
		}
		if *rootHash == "" {
			return usagef("--verify needs --root-hash")
		}
		rh, err := verity.ParseRootHash(*rootHash)
		if err != nil {
			return usagef("%v", err)
		}
		info, err := verity.VerifyFile(*verifyPath, *hashOffset, rh)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: verified %d data blocks (%d bytes) and %d hash blocks against root hash %s\n",
			*verifyPath, info.DataBlocks, info.DataSize(), info.HashBlocks, info.RootHashHex())
		return nil
	}

	if *data == "" || *out == "" {
		return usagef("--data and --out are required (or --verify FILE --root-hash HEX)")
	}
	if *rootHash != "" || *hashOffset != -1 {
		return usagef("--root-hash and --hash-offset go with --verify")
	}
	p := verity.Params{}
	var err error
	if p.Salt, err = verity.ParseSalt(*salt); err != nil {
		return usagef("--salt: %v", err)
	}
	if p.UUID, err = verity.ParseUUID(*uuid); err != nil {
		return usagef("--uuid: %v", err)
	}
	if *env != "" {
		if err := atomicfile.CheckNotInput(*env, *data, *out); err != nil {
			return usagef("--env: %v", err)
		}
	}
	if !*noFS {
		if _, err := sqfs.Check(*data); err != nil {
			return fmt.Errorf("%w (use --no-fs-check to protect data that is not a squashfs)", err)
		}
	}
	// Open the env output first, so a bad --env fails before OUT is written.
	var envFile *atomicfile.File
	if *env != "" {
		if envFile, err = atomicfile.Create(*env, 0o644); err != nil {
			return err
		}
		defer envFile.Abort()
	}
	info, err := verity.FormatFile(*data, *out, p)
	if err != nil {
		return err
	}
	text := info.EnvText()
	if envFile != nil {
		_, err := envFile.WriteString(text)
		if err == nil {
			err = envFile.Commit()
		}
		if err != nil {
			os.Remove(*out)
			return fmt.Errorf("write %s: %w", *env, err)
		}
	}
	fmt.Fprint(stdout, text)
	return nil
}
