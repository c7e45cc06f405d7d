//go:build mage

package main

import (
	"os"
)

// Bench runs every benchmark once on a 1 GiB incompressible squashfs, each
// beside its competitor (veritysetup, the shell pipeline's stages) in the same
// run, and prints the ratios. IMGPOST_BENCH_MIB sets another input size;
// BENCH selects benchmarks (a go test -bench pattern, default ".");
// IMGPOST_BENCH_DIR puts the work directories on another file system (the
// disk a build writes to) instead of tmpfs.
func Bench() error {
	if os.Getenv("IMGPOST_BENCH_MIB") == "" {
		os.Setenv("IMGPOST_BENCH_MIB", "1024")
	}
	pat := os.Getenv("BENCH")
	if pat == "" {
		pat = "."
	}
	return goRun("test", "-run", "^$", "-bench", pat, "-benchtime", "1x", "-benchmem", "-timeout", "60m", "./...")
}
