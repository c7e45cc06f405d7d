//go:build mage

// Targets for meta-dstack. They stay thin: the logic lives in packages that
// tests reach; targets only wire them together. Run `go run mage.go -l`.
package main

import (
	"os"
	"os/exec"
	"strings"

	"github.com/magefile/mage/mg"
	"github.com/magefile/mage/sh"
)

// goRun runs the go tool with its output passed through.
func goRun(args ...string) error {
	return sh.RunV(mg.GoCmd(), args...)
}

// Test vets the code and runs every test: unit tests, cross-checks against
// veritysetup/sgdisk/fsck.fat/tar/objdump/osslsigncode/unsquashfs, and the
// QEMU boot tests. Pass extra `go test` flags in TESTFLAGS (e.g. TESTFLAGS="-run Verity").
func Test() error {
	if err := goRun("vet", "./..."); err != nil {
		return err
	}
	if out, err := exec.Command("gofmt", "-l", ".").Output(); err != nil {
		return err
	} else if s := strings.TrimSpace(string(out)); s != "" {
		os.Stderr.WriteString("gofmt: these files need formatting:\n" + s + "\n")
		return mg.Fatal(1, "gofmt check failed")
	}
	args := []string{"test", "-count=1", "-timeout", "80m"}
	if f := strings.Fields(os.Getenv("TESTFLAGS")); len(f) > 0 {
		args = append(args, f...)
	}
	return goRun(append(args, "./...")...)
}
