// Package testutil holds helpers shared by the project's tests: locating the
// repository, requiring external tools, building imgpost once, and making
// deterministic squashfs fixtures.
package testutil

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/reporoot"
)

// RepoRoot returns the directory holding the module's go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := reporoot.Find(".")
	if err != nil {
		t.Fatalf("testutil: %v", err)
	}
	return root
}

// InCI reports whether the tests run under CI (CI=true), where every tool the
// tests use is installed by .ci/run and a missing one is a failure.
func InCI() bool { return os.Getenv("CI") != "" }

// Need makes sure each named program is on PATH. Under CI a missing tool fails
// the test (.ci/run must install it); elsewhere the test is skipped with the
// Debian package to install.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			msg := fmt.Sprintf("%s not found on PATH (see .ci/run for the Debian package)", tool)
			if InCI() {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// NeedFile is Need for a file that a Debian package installs (a stub, firmware, a kernel).
func NeedFile(t testing.TB, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		msg := fmt.Sprintf("%s missing (install Debian package %s)", path, pkg)
		if InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// Run runs a command and fails the test with its output when it fails.
// It returns combined stdout and stderr.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Gunzip decompresses b with gzip(1) (an independent decoder) and fails the
// test if gzip refuses it.
func Gunzip(t testing.TB, b []byte) []byte {
	t.Helper()
	cmd := exec.Command("gzip", "-dc")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gzip -dc: %v", err)
	}
	return out
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Imgpost builds the imgpost command once per test binary and returns its path.
func Imgpost(t testing.TB) string {
	t.Helper()
	root := RepoRoot(t)
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "imgpost-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "imgpost")
		cmd := exec.Command("go", "build", "-trimpath", "-o", buildPath, "./tools/imgpost")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build imgpost: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// WriteRandom writes size bytes of deterministic pseudo-random (incompressible)
// data, derived from seed, to path.
func WriteRandom(t testing.TB, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, 1<<20)
	for size > 0 {
		n := int64(len(buf))
		if n > size {
			n = size
		}
		for i := 0; i < int(n); i += 8 {
			v := r.Uint64()
			for j := 0; j < 8 && i+j < int(n); j++ {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatal(err)
		}
		size -= n
	}
}

// Squashfs makes a reproducible squashfs image at dir/name holding one file of
// payload pseudo-random bytes (plus /sbin/init as a small script). With nopad
// the image is not padded to 4 KiB, so its size is usually not a multiple of
// 4096. It needs mksquashfs (Debian squashfs-tools).
func Squashfs(t testing.TB, dir, name string, payload int64, seed uint64, nopad bool) string {
	t.Helper()
	Need(t, "mksquashfs")
	src := filepath.Join(dir, name+".src")
	if err := os.MkdirAll(filepath.Join(src, "sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "sbin", "init"), []byte("#!/bin/sh\necho dstack test rootfs\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if payload > 0 {
		WriteRandom(t, filepath.Join(src, "payload.bin"), payload, seed)
	}
	out := filepath.Join(dir, name)
	args := []string{src, out, "-noappend", "-all-root", "-mkfs-time", "0", "-all-time", "0", "-no-progress", "-quiet", "-processors", "2"}
	if nopad {
		args = append(args, "-nopad")
	}
	Run(t, "mksquashfs", args...)
	if err := os.RemoveAll(src); err != nil {
		t.Fatal(err)
	}
	return out
}
