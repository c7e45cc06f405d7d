package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func tree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, s := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRun(t *testing.T) {
	base := map[string]string{"d-1/metadata.json": "{}\n", "d-1.tar.gz": "tar"}
	tests := []struct {
		name      string
		b         map[string]string
		args      []string
		code      int
		out       string
		reproduce bool
	}{
		{name: "identical with commit", b: base, args: []string{"-commit", "abc123"}, code: 0, out: "REPRODUCIBLE: 2 files identical", reproduce: true},
		{name: "identical without commit", b: base, code: 0, out: "not written"},
		{name: "one byte differs", b: map[string]string{"d-1/metadata.json": "{]\n", "d-1.tar.gz": "tar"}, args: []string{"-commit", "abc"}, code: 1,
			out: "DIFFERS  d-1/metadata.json: first differing byte at offset 1 (0x1)"},
		{name: "missing file", b: map[string]string{"d-1/metadata.json": "{}\n"}, code: 1, out: "MISSING  d-1.tar.gz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
			tree(t, a, base)
			tree(t, b, tc.b)
			rep := filepath.Join(dir, "reproduce.sh")
			var stdout, stderr bytes.Buffer
			args := append(append([]string{}, tc.args...), "-reproduce", rep, a, b)
			if code := run(args, &stdout, &stderr); code != tc.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tc.code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.out) {
				t.Errorf("stdout lacks %q:\n%s", tc.out, stdout.String())
			}
			_, err := os.Stat(rep)
			if got := err == nil; got != tc.reproduce {
				t.Errorf("reproduce.sh written = %v, want %v", got, tc.reproduce)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"only-one"}, {"-bogus", "a", "b"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "usage") && !strings.Contains(stderr.String(), "flag provided but not defined") {
			t.Errorf("run(%q) = %d, stderr %q", args, code, stderr.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"/nonexistent/a", t.TempDir()}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "/nonexistent/a") {
		t.Errorf("unreadable tree: code %d, stderr %q", code, stderr.String())
	}
}
