package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// runImgpost runs the built binary and returns stdout, stderr and the exit code.
func runImgpost(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(testutil.Imgpost(t), args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return so.String(), se.String(), code
}

func envMap(s string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// readOnlyDir returns a directory the test cannot create files in. Root
// ignores permission bits, so as root it uses /sys (read-only to everyone).
func readOnlyDir(t *testing.T) string {
	if os.Geteuid() == 0 {
		if st, err := os.Stat("/sys"); err == nil && st.IsDir() {
			if err := os.WriteFile("/sys/.imgpost-probe", nil, 0o644); err == nil {
				os.Remove("/sys/.imgpost-probe")
				t.Skip("no read-only directory available as root")
			}
			return "/sys"
		}
		t.Skip("no read-only directory available as root")
	}
	d := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(d, 0o555); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestVerityCommand runs `imgpost verity` end to end: the env on stdout and in
// --env agrees with veritysetup, two runs give the same bytes, --verify
// accepts the result and names the first bad block after a flip.
func TestVerityCommand(t *testing.T) {
	testutil.Need(t, "veritysetup", "mksquashfs")
	dir := t.TempDir()
	sq := testutil.Squashfs(t, dir, "rootfs.squashfs", 1<<20+333, 11, true)
	var outs [2][]byte
	var envs [2]string
	for i := range 2 {
		out := filepath.Join(dir, fmt.Sprintf("rootfs.img.verity.%d", i))
		env := filepath.Join(dir, fmt.Sprintf("rootfs.env.%d", i))
		so, se, code := runImgpost(t, "verity", "--data", sq, "--out", out, "--env", env)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, se)
		}
		eb, err := os.ReadFile(env)
		if err != nil {
			t.Fatal(err)
		}
		if string(eb) != so {
			t.Fatalf("--env file differs from stdout:\n%s\n---\n%s", eb, so)
		}
		var keys []string
		for _, l := range strings.Split(strings.TrimSpace(so), "\n") {
			k, _, _ := strings.Cut(l, "=")
			keys = append(keys, k)
		}
		if got := strings.Join(keys, " "); got != "UUID HASH_TYPE DATA_BLOCKS DATA_BLOCK_SIZE HASH_BLOCK_SIZE HASH_ALGORITHM SALT ROOT_HASH DATA_SIZE" {
			t.Fatalf("env keys: %s", got)
		}
		outs[i], _ = os.ReadFile(out)
		envs[i] = so
	}
	if !bytes.Equal(outs[0], outs[1]) || envs[0] != envs[1] {
		t.Fatal("two runs differ")
	}
	e := envMap(envs[0])
	out := filepath.Join(dir, "rootfs.img.verity.0")
	testutil.Run(t, "veritysetup", "verify", out, out, e["ROOT_HASH"], "--hash-offset="+e["DATA_SIZE"])

	so, se, code := runImgpost(t, "verity", "--verify", out, "--root-hash", e["ROOT_HASH"])
	if code != 0 || !strings.Contains(so, "verified") {
		t.Fatalf("--verify of a good file: exit %d\n%s%s", code, so, se)
	}
	// Flip a byte of data block 100: both verifiers fail, imgpost names block 100.
	f, err := os.OpenFile(out, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	f.ReadAt(b, 100*4096+5)
	b[0] ^= 0x80
	f.WriteAt(b, 100*4096+5)
	f.Close()
	if _, err := exec.Command("veritysetup", "verify", out, out, e["ROOT_HASH"], "--hash-offset="+e["DATA_SIZE"]).CombinedOutput(); err == nil {
		t.Fatal("veritysetup verify accepted the flipped file")
	}
	_, se, code = runImgpost(t, "verity", "--verify", out, "--root-hash", e["ROOT_HASH"])
	if code != 1 || !strings.Contains(se, "data block 100 ") || !strings.Contains(se, out) {
		t.Fatalf("--verify of a flipped file: exit %d, stderr %q; want exit 1 naming data block 100 and the file", code, se)
	}
	// With an explicit --hash-offset too.
	_, se, code = runImgpost(t, "verity", "--verify", out, "--root-hash", e["ROOT_HASH"], "--hash-offset", e["DATA_SIZE"])
	if code != 1 || !strings.Contains(se, "data block 100 ") {
		t.Fatalf("--verify --hash-offset of a flipped file: exit %d, %q", code, se)
	}
	// --salt and --uuid reach the superblock (veritysetup dump reads them back).
	out2 := filepath.Join(dir, "custom.verity")
	so, se, code = runImgpost(t, "verity", "--data", sq, "--out", out2, "--salt", "abcdef", "--uuid", "12345678-9abc-def0-1234-56789abcdef0")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, se)
	}
	e2 := envMap(so)
	dump := testutil.Run(t, "veritysetup", "dump", out2, "--hash-offset="+e2["DATA_SIZE"])
	if !strings.Contains(dump, "abcdef") || !strings.Contains(dump, "12345678-9abc-def0-1234-56789abcdef0") || e2["SALT"] != "abcdef" {
		t.Fatalf("custom salt/uuid not in dump:\n%s\nenv:\n%s", dump, so)
	}
	testutil.Run(t, "veritysetup", "verify", out2, out2, e2["ROOT_HASH"], "--hash-offset="+e2["DATA_SIZE"])

	// --no-fs-check protects data that is not a squashfs; without it, that data is refused.
	raw := filepath.Join(dir, "raw.bin")
	testutil.WriteRandom(t, raw, 50000, 3)
	out3 := filepath.Join(dir, "raw.verity")
	if _, se, code := runImgpost(t, "verity", "--data", raw, "--out", out3); code != 1 || !strings.Contains(se, "not a squashfs") {
		t.Fatalf("raw data without --no-fs-check: exit %d %q", code, se)
	}
	so, se, code = runImgpost(t, "verity", "--data", raw, "--out", out3, "--no-fs-check")
	if code != 0 {
		t.Fatalf("--no-fs-check: exit %d %s", code, se)
	}
	e3 := envMap(so)
	testutil.Run(t, "veritysetup", "verify", out3, out3, e3["ROOT_HASH"], "--hash-offset="+e3["DATA_SIZE"])
}

// TestVerityCommandBadInputs tries every bad input of the issue: each gets a
// clear error and a non-zero exit, and nothing is left in the output directory.
func TestVerityCommandBadInputs(t *testing.T) {
	testutil.Need(t, "mksquashfs")
	in := t.TempDir()
	sq := testutil.Squashfs(t, in, "rootfs.squashfs", 100000, 5, true)
	img, err := os.ReadFile(sq)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(in, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notSq := write("not.squashfs", bytes.Repeat([]byte("plain text, not a filesystem\n"), 500))
	trunc := write("trunc.squashfs", img[:len(img)/2])
	empty := write("empty.squashfs", nil)
	ro := readOnlyDir(t)

	cases := []struct {
		name string
		args []string // {OUT} is replaced by a fresh path in an empty directory
		code int
		want string
	}{
		{"not-squashfs", []string{"--data", notSq, "--out", "{OUT}"}, 1, "not a squashfs"},
		{"truncated", []string{"--data", trunc, "--out", "{OUT}"}, 1, "truncated squashfs"},
		{"empty", []string{"--data", empty, "--out", "{OUT}"}, 1, "empty file"},
		{"empty-no-fs-check", []string{"--data", empty, "--out", "{OUT}", "--no-fs-check"}, 1, "empty file"},
		{"missing", []string{"--data", filepath.Join(in, "nope"), "--out", "{OUT}"}, 1, "no such file"},
		{"unreadable-directory", []string{"--data", in, "--out", "{OUT}"}, 1, "not a regular file"},
		{"out-is-input", []string{"--data", sq, "--out", sq}, 1, "is the input"},
		{"out-dir-missing", []string{"--data", sq, "--out", filepath.Join(in, "missing-dir", "x.verity")}, 1, "missing-dir"},
		{"out-dir-read-only", []string{"--data", sq, "--out", filepath.Join(ro, "x.verity")}, 1, ro},
		{"env-dir-missing", []string{"--data", sq, "--out", "{OUT}", "--env", filepath.Join(in, "missing-dir", "x.env")}, 1, "missing-dir"},
		{"env-is-data", []string{"--data", sq, "--out", "{OUT}", "--env", sq}, 2, "is the input"},
		{"salt-too-long", []string{"--data", sq, "--out", "{OUT}", "--salt", strings.Repeat("00", 257)}, 2, "at most 256"},
		{"salt-not-hex", []string{"--data", sq, "--out", "{OUT}", "--salt", "xyz0"}, 2, "not hex"},
		{"salt-odd", []string{"--data", sq, "--out", "{OUT}", "--salt", "abc"}, 2, "odd"},
		{"uuid-bad", []string{"--data", sq, "--out", "{OUT}", "--uuid", "not-a-uuid"}, 2, "uuid"},
		{"no-out", []string{"--data", sq}, 2, "required"},
		{"verify-no-root-hash", []string{"--verify", sq}, 2, "--root-hash"},
		{"verify-bad-root-hash", []string{"--verify", sq, "--root-hash", "abcd"}, 2, "hex digits"},
		{"verify-not-verity", []string{"--verify", sq, "--root-hash", strings.Repeat("0", 64)}, 1, sq},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			outDir := t.TempDir()
			args := []string{"verity"}
			for _, a := range tc.args {
				args = append(args, strings.ReplaceAll(a, "{OUT}", filepath.Join(outDir, "rootfs.img.verity")))
			}
			before, _ := os.ReadDir(in)
			so, se, code := runImgpost(t, args...)
			if code != tc.code || !strings.Contains(se, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, se, tc.code, tc.want)
			}
			if so != "" {
				t.Errorf("stdout not empty: %q", so)
			}
			if n := strings.Count(strings.TrimSpace(se), "\n"); code == 1 && n != 0 {
				t.Errorf("want one error line, got %d:\n%s", n+1, se)
			}
			if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
				t.Errorf("output directory not empty after a failure: %v", ents)
			}
			if after, _ := os.ReadDir(in); len(after) != len(before) {
				t.Errorf("input directory changed: %d -> %d entries", len(before), len(after))
			}
		})
	}
	if b, _ := os.ReadFile(sq); !bytes.Equal(b, img) {
		t.Fatal("input modified")
	}
}

// TestVerityCommandMemory checks that the peak resident set of `imgpost
// verity` does not grow with the input: 160 MiB of data, peak under 64 MiB.
func TestVerityCommandMemory(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "data.bin")
	testutil.WriteRandom(t, in, 160<<20, 6)
	cmd := exec.Command(testutil.Imgpost(t), "verity", "--no-fs-check", "--data", in, "--out", in+".verity")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		t.Skip("no rusage on this platform")
	}
	if maxKiB := ru.Maxrss; maxKiB > 64<<10 {
		t.Fatalf("peak RSS %d KiB for 160 MiB of data; want under 64 MiB", maxKiB)
	} else {
		t.Logf("peak RSS %d KiB", maxKiB)
	}
}
