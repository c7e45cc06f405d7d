package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// ukiCLI runs the built imgpost binary: stdout, stderr, exit code.
func ukiCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(testutil.Imgpost(t), args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return so.String(), se.String(), 0
	case errors.As(err, &ee):
		return so.String(), se.String(), ee.ExitCode()
	}
	t.Fatal(err)
	return "", "", 0
}

func TestUKICommand(t *testing.T) {
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	kernel := testutil.DebianKernel(t)
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd")
	testutil.WriteRandom(t, initrd, 5000, 1)
	osrel := filepath.Join(dir, "os-release")
	os.WriteFile(osrel, []byte("ID=dstack\n"), 0o644)
	clFile := filepath.Join(dir, "cmdline")
	os.WriteFile(clFile, []byte("console=ttyS0 a=b\n"), 0o644)
	out := filepath.Join(dir, "dstack-uki.efi")

	base := []string{"uki", "--stub", testutil.DebianStub, "--linux", kernel, "--initrd", initrd, "--initrd", initrd}
	so, se, code := ukiCLI(t, append(base, "--cmdline-file", clFile, "--os-release", osrel, "--uname", "6.1-test", "--out", out)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, se)
	}
	hashFile, err := os.ReadFile(out + ".auth_hash.txt")
	if err != nil {
		t.Fatal(err)
	}
	auth, se, code := ukiCLI(t, "authenticode", out)
	h := strings.TrimSpace(string(hashFile))
	if code != 0 || auth != h+"  firmware\n" || !strings.Contains(so, h) {
		t.Fatalf("authenticode %q (exit %d, %s), hash file %q, uki said %q", auth, code, se, hashFile, so)
	}
	// imgpost's UKIs are 8-aligned: the signer's digest is the same.
	if a, _, code := ukiCLI(t, "authenticode", "--signer", out); code != 0 || a != h+"  signer\n" {
		t.Fatalf("authenticode --signer %q (exit %d)", a, code)
	}
	if a384, _, code := ukiCLI(t, "authenticode", "--algo", "sha384", out); code != 0 || len(strings.Fields(a384)[0]) != 96 {
		t.Fatalf("sha384: %q exit %d", a384, code)
	}

	js, se, code := ukiCLI(t, "inspect", out, "--json")
	if code != 0 {
		t.Fatalf("inspect --json: exit %d: %s", code, se)
	}
	var info struct {
		Cmdline   string `json:"cmdline"`
		OSRelease string `json:"os_release"`
		Uname     string `json:"uname"`
		Sections  []struct {
			Name string `json:"name"`
		} `json:"sections"`
	}
	if err := json.Unmarshal([]byte(js), &info); err != nil {
		t.Fatal(err)
	}
	if info.Cmdline != "console=ttyS0 a=b" || info.OSRelease != "ID=dstack\n" || info.Uname != "6.1-test" {
		t.Fatalf("inspect: %+v", info)
	}
	var names []string
	for _, s := range info.Sections {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, " "); !strings.HasSuffix(got, ".osrel .cmdline .uname .initrd .linux") {
		t.Fatalf("sections %s", got)
	}
	txt, _, code := ukiCLI(t, "inspect", out)
	if code != 0 || !strings.Contains(txt, "cmdline: console=ttyS0 a=b\n") || !strings.Contains(txt, ".linux ") {
		t.Fatalf("inspect text (exit %d):\n%s", code, txt)
	}

	// Usage mistakes exit 2, bad inputs exit 1; neither leaves files.
	bad := filepath.Join(dir, "bad.efi")
	for _, c := range []struct {
		name string
		args []string
		code int
	}{
		{"no cmdline", append(base, "--out", bad), 2},
		{"both cmdlines", append(base, "--cmdline", "x", "--cmdline-file", clFile, "--out", bad), 2},
		{"no out", append(base, "--cmdline", "x"), 2},
		{"extra arg", append(base, "--cmdline", "x", "--out", bad, "extra"), 2},
		{"ELF kernel", []string{"uki", "--stub", testutil.DebianStub, "--linux", "/bin/busybox", "--initrd", initrd, "--cmdline", "x", "--out", bad}, 1},
		{"newline in file", append(base, "--cmdline-file", osrel, "--out", bad), 0}, // "ID=dstack\n": one trailing newline is dropped
		{"two newlines", append(base, "--cmdline-file", writeTmp(t, dir, "c2", "a\n\n"), "--out", bad), 1},
		{"authenticode algo", []string{"authenticode", "--algo", "md5", out}, 2},
		{"authenticode no file", []string{"authenticode"}, 2},
		{"authenticode not PE", []string{"authenticode", osrel}, 1},
		{"inspect not PE", []string{"inspect", osrel}, 1},
		{"inspect two files", []string{"inspect", out, out}, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.Remove(bad)
			os.Remove(bad + ".auth_hash.txt")
			_, se, code := ukiCLI(t, c.args...)
			if code != c.code {
				t.Fatalf("exit %d, want %d: %s", code, c.code, se)
			}
			if code != 0 {
				if _, err := os.Stat(bad); err == nil {
					t.Error("output written")
				}
				if _, err := os.Stat(bad + ".auth_hash.txt"); err == nil {
					t.Error("hash file written")
				}
				if strings.Count(strings.TrimSpace(se), "\n") > 0 && code == 1 {
					t.Errorf("more than one error line: %s", se)
				}
			}
		})
	}
}

func writeTmp(t *testing.T, dir, name, s string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInspectDispatch checks that a GPT disk goes to the inspectDisk hook
// (and a clear message when no hook is set).
func TestInspectDispatch(t *testing.T) {
	dir := t.TempDir()
	gpt := make([]byte, 4096)
	copy(gpt[512:], "EFI PART")
	p := writeTmp(t, dir, "disk.raw", string(gpt))
	saved := inspectDisk
	defer func() { inspectDisk = saved }()

	inspectDisk = nil
	err := runInspect([]string{p}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "disk inspection not available") {
		t.Fatalf("nil hook: %v", err)
	}
	var called string
	var gotJSON bool
	inspectDisk = func(path string, asJSON bool, w io.Writer) error {
		called, gotJSON = path, asJSON
		return nil
	}
	if err := runInspect([]string{"--json", p}, io.Discard, io.Discard); err != nil || called != p || !gotJSON {
		t.Fatalf("hook: err %v, called %q, json %v", err, called, gotJSON)
	}
}
