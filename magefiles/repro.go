//go:build mage

package main

import (
	"os"
	"path/filepath"

	"github.com/Dstack-TEE/meta-dstack/internal/reporoot"
	"github.com/magefile/mage/sh"
)

// Repro runs repro-build/repro-build.sh: builds the pinned builder image, builds
// the release twice in fresh containers, compares the two image trees and, when
// they agree, writes the third-party reproduce instructions.
// DSTACK_REPRO_ONCE=1 builds once (the script's -n).
func Repro() error {
	root, err := reporoot.Find(".")
	if err != nil {
		return err
	}
	var args []string
	if os.Getenv("DSTACK_REPRO_ONCE") == "1" {
		args = append(args, "-n")
	}
	return sh.RunV(filepath.Join(root, "repro-build", "repro-build.sh"), args...)
}
