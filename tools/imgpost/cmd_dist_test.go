package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// runImgpostEnv is runImgpost with extra environment variables.
func runImgpostEnv(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(testutil.Imgpost(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var so, se strings.Builder
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return so.String(), se.String(), code
}

// TestDistAndVerifyCommands runs `imgpost dist` with ENABLE_GCP_IMAGE=0 (no GCP
// files), then `imgpost verify` on the result, before and after editing
// metadata.json, and the command-line errors.
func TestDistAndVerifyCommands(t *testing.T) {
	testutil.Need(t, "mksquashfs")
	dir := t.TempDir()
	in := testutil.MakeDistInputs(t, dir, 1<<20, 21)
	out := filepath.Join(dir, "images")
	args := []string{"dist", "--kernel", in.Kernel, "--initrd", in.Initrd, "--rootfs", in.Rootfs, "--stub", in.Stub,
		"--dist-name", "dstack", "--version", "9.9", "--out-dir", out}
	so, se, code := runImgpostEnv(t, []string{"ENABLE_GCP_IMAGE=0", "DSTACK_CMDLINE_BASE=console=ttyS0 panic=1"}, args...)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, se)
	}
	if !strings.Contains(se, "imgpost dist: verity") || strings.Contains(se, "\r") {
		t.Errorf("stderr (not a terminal) should have plain stage lines:\n%s", se)
	}
	// No --ovmf: no measurement.tdx.cbor, said in one line.
	if strings.Count(se, "imgpost dist: no measurement.tdx.cbor (no --ovmf") != 1 {
		t.Errorf("stderr should say why measurement.tdx.cbor is missing:\n%s", se)
	}
	if !strings.Contains(so, "root hash ") || !strings.Contains(so, filepath.Join(out, "dstack-9.9.tar.gz")) {
		t.Errorf("summary:\n%s", so)
	}
	ents, _ := os.ReadDir(out)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, " "); got != "dstack-9.9 dstack-9.9.tar.gz" {
		t.Errorf("ENABLE_GCP_IMAGE=0 outputs: %s", got)
	}
	if _, err := os.Stat(filepath.Join(out, "dstack-9.9", "gcp")); err == nil {
		t.Error("gcp/ exists with ENABLE_GCP_IMAGE=0")
	}
	mj, _ := os.ReadFile(filepath.Join(out, "dstack-9.9", "metadata.json"))
	if !strings.Contains(string(mj), `"cmdline": "console=ttyS0 panic=1 coherent_pool=8M dstack.rootfs_hash=`) {
		t.Errorf("DSTACK_CMDLINE_BASE not used:\n%s", mj)
	}

	set := filepath.Join(out, "dstack-9.9")
	// verify expects dist's exact command line: told the same base (by
	// flag or by the same variable), it passes; with the default, it does not.
	so, se, code = runImgpost(t, "verify", "--cmdline-base", "console=ttyS0 panic=1", set)
	if code != 0 || !strings.Contains(so, "OK") {
		t.Fatalf("verify of a good set: exit %d\n%s%s", code, so, se)
	}
	if _, se, code := runImgpostEnv(t, []string{"DSTACK_CMDLINE_BASE=console=ttyS0 panic=1"}, "verify", set); code != 0 {
		t.Fatalf("verify with DSTACK_CMDLINE_BASE: exit %d\n%s", code, se)
	}
	if _, se, code := runImgpost(t, "verify", set); code != 1 || !strings.Contains(se, `missing word "init=/init"`) {
		t.Fatalf("verify with the default base: exit %d\n%s", code, se)
	}
	os.WriteFile(filepath.Join(set, "metadata.json"), []byte(strings.Replace(string(mj), `"shared_ro": true`, `"shared_ro": false`, 1)), 0o644)
	_, se, code = runImgpost(t, "verify", "--cmdline-base", "console=ttyS0 panic=1", set)
	if code != 1 || !strings.Contains(se, "metadata.json") || strings.Count(strings.TrimSpace(se), "\n") != 0 {
		t.Fatalf("verify of an edited metadata.json: exit %d, %q", code, se)
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"dist", "--kernel", in.Kernel}, 2, "required"},
		{append(append([]string{}, args...), "--flavor", "qa"), 2, "--flavor"},
		{withArg(args, "--rootfs", in.Initrd), 1, "not a squashfs"},
		{withArg(args, "--stub", in.Initrd), 1, "--stub " + in.Initrd + ": not a PE image"},
		{withArg(args, "--kernel", filepath.Join(dir, "nope")), 1, "--kernel " + filepath.Join(dir, "nope") + ": no such file"},
		{withArg(args, "--out-dir", in.Initrd), 1, "--out-dir: mkdir " + in.Initrd},
		{append(append([]string{}, args...), "--cmdline-base", "coherent_pool=1M"), 1, `--cmdline-base "coherent_pool=1M": reserved kernel argument`},
		{[]string{"verify"}, 2, "PATH"},
		{[]string{"verify", filepath.Join(dir, "missing")}, 1, "no such file"},
	} {
		_, se, code := runImgpost(t, tc.args...)
		if code != tc.code || !strings.Contains(se, tc.want) {
			t.Errorf("imgpost %s: exit %d, %q; want exit %d and %q", strings.Join(tc.args, " "), code, se, tc.code, tc.want)
		}
	}
}

// withArg returns a copy of args with the value after flag replaced.
func withArg(args []string, flag, value string) []string {
	out := append([]string(nil), args...)
	for i := range out[:len(out)-1] {
		if out[i] == flag {
			out[i+1] = value
		}
	}
	return out
}

// TestDistInterrupted: SIGINT (and SIGTERM) at any point of dist's work
// leaves no temporary directory or file in the output directory, and the
// previous run's outputs as they were.
func TestDistInterrupted(t *testing.T) {
	testutil.Need(t, "mksquashfs")
	dir := t.TempDir()
	in := testutil.MakeDistInputs(t, dir, 48<<20, 22)
	out := filepath.Join(dir, "images")
	args := []string{"dist", "--quiet", "--kernel", in.Kernel, "--initrd", in.Initrd, "--rootfs", in.Rootfs, "--stub", in.Stub,
		"--dist-name", "dstack", "--version", "1", "--out-dir", out}
	if _, se, code := runImgpostEnv(t, nil, args...); code != 0 {
		t.Fatal(se)
	}
	listing := func() []string {
		var names []string
		filepath.WalkDir(out, func(p string, d os.DirEntry, err error) error {
			if err == nil {
				names = append(names, p)
			}
			return nil
		})
		return names
	}
	before := listing()
	interrupted := 0
	for i, delay := range []time.Duration{50 * time.Millisecond, 300 * time.Millisecond, 800 * time.Millisecond, 1500 * time.Millisecond} {
		sig := []os.Signal{syscall.SIGINT, syscall.SIGTERM}[i%2]
		cmd := exec.Command(testutil.Imgpost(t), append(args[:len(args):len(args)], "--git-revision", "x")...)
		var se strings.Builder
		cmd.Stderr = &se
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		cmd.Process.Signal(sig)
		cmd.Wait()
		code := cmd.ProcessState.ExitCode()
		if code == 0 {
			t.Logf("%v: finished before the signal", delay)
			before = listing()
			continue
		}
		interrupted++
		if want := 128 + int(sig.(syscall.Signal)); code != want {
			t.Errorf("%v after %v: exit %d, want %d", sig, delay, code, want)
		}
		if got := listing(); strings.Join(got, "\n") != strings.Join(before, "\n") {
			t.Fatalf("%v after %v (exit %d): output directory changed: added %v, removed %v\nstderr: %s", sig, delay, code, minus(got, before), minus(before, got), se.String())
		}
	}
	if interrupted == 0 {
		t.Skip("every run finished before its signal (machine too fast for this test)")
	}
}

// minus returns the elements of a not in b.
func minus(a, b []string) []string {
	in := map[string]bool{}
	for _, x := range b {
		in[x] = true
	}
	var out []string
	for _, x := range a {
		if !in[x] {
			out = append(out, x)
		}
	}
	return out
}
