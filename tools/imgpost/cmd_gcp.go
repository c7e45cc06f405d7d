package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/gcptar"
)

func init() {
	register(command{
		name:    "gcp",
		summary: "write the Google Cloud import tarball (one sparse disk.raw member, parallel gzip)",
		run:     runGCP,
	})
}

func runGCP(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("gcp", stderr,
		"usage: imgpost gcp --disk disk.raw --out NAME-gcp.tar.gz [--level 6] [--workers N] [--uncompressed]",
		"The member is always named disk.raw; its mtime is SOURCE_DATE_EPOCH (default 0).")
	diskPath := fs.String("disk", "", "the sparse disk image `FILE` (from imgpost disk)")
	out := fs.String("out", "", "output `FILE`, e.g. NAME-gcp.tar.gz")
	level := fs.Int("level", 6, "gzip compression `LEVEL` (1-9)")
	workers := fs.Int("workers", 0, "compressing goroutines (`N`; default all CPUs)")
	uncompressed := fs.Bool("uncompressed", false, "write the plain tar stream (no gzip)")
	if _, help, err := parseArgs(fs, args, 0); help || err != nil {
		return err
	}
	if *diskPath == "" || *out == "" {
		return usagef("--disk and --out are required")
	}
	if *level < 1 || *level > 9 {
		return usagef("--level %d: want 1-9", *level)
	}
	opts := gcptar.Options{Level: *level, Workers: *workers}
	if err := atomicfile.CheckNotInput(*out, *diskPath); err != nil {
		return err
	}
	start := time.Now()
	if *uncompressed {
		f, err := os.Open(*diskPath)
		if err != nil {
			return err
		}
		defer f.Close()
		o, err := atomicfile.Create(*out, 0o644)
		if err != nil {
			return err
		}
		defer o.Abort()
		n, err := gcptar.WriteTar(o.File, f, opts)
		if err != nil {
			return fmt.Errorf("%s from %s: %w", *out, *diskPath, err)
		}
		if err := o.Commit(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %d bytes (uncompressed tar)\n", *out, n)
		return nil
	}
	res, err := gcptar.WriteFile(*out, *diskPath, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d bytes; disk.raw %d bytes, %d stored in %d regions (%.1fs)\n",
		*out, res.Size, res.DiskSize, res.DataSize, len(res.Regions), time.Since(start).Seconds())
	return nil
}
