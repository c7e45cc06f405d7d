package atomicfile

import (
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// entries lists dir's names (temporaries included).
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestCopy: the copy has src's bytes and the asked permissions, tee sees
// every byte, and a failure leaves nothing under the final name nor any
// temporary.
func TestCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	data := make([]byte, 300000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, src string
		perm      os.FileMode
		tee       bool
		ok        bool
	}{
		{"plain", src, 0o644, false, true},
		{"hashed", src, 0o640, true, true},
		{"missing source", filepath.Join(dir, "nope"), 0o644, true, false},
		{"source is a directory", dir, 0o644, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			dst := filepath.Join(out, "dst")
			h := sha256.New()
			var tee io.Writer
			if tc.tee {
				tee = h
			}
			n, err := Copy(dst, tc.src, tc.perm, tee)
			if !tc.ok {
				if err == nil {
					t.Fatal("Copy succeeded")
				}
				if names := entries(t, out); len(names) != 0 {
					t.Fatalf("a failed Copy left %v", names)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dst)
			if err != nil || n != int64(len(data)) || string(got) != string(data) {
				t.Fatalf("copied %d bytes (%v), want %d identical", n, err, len(data))
			}
			if st, _ := os.Stat(dst); st.Mode().Perm() != tc.perm {
				t.Errorf("perm %v, want %v", st.Mode().Perm(), tc.perm)
			}
			if want := sha256.Sum256(data); tc.tee && string(h.Sum(nil)) != string(want[:]) {
				t.Error("tee did not see every byte")
			}
			if names := entries(t, out); len(names) != 1 {
				t.Errorf("temporaries left: %v", names)
			}
		})
	}
}

// TestLink: the link replaces what was at path and is the same file as
// src; a link that cannot be made wraps *os.LinkError and leaves path and
// the directory as they were.
func TestLink(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.WriteFile(src, []byte("new"), 0o644)
	out := t.TempDir()
	dst := filepath.Join(out, "dst")
	os.WriteFile(dst, []byte("old"), 0o644)
	if err := Link(src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(src)
	b, err := os.Stat(dst)
	if err != nil || !os.SameFile(a, b) {
		t.Fatalf("dst is not src: %v", err)
	}
	// A directory cannot be hard-linked.
	err = Link(dir, dst)
	var le *os.LinkError
	if !errors.As(err, &le) {
		t.Fatalf("err = %v, want an *os.LinkError", err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "new" {
		t.Errorf("dst changed by a failed link: %q", got)
	}
	if names := entries(t, out); len(names) != 1 {
		t.Errorf("temporaries left: %v", names)
	}
}

// TestReplaceDir: tmp takes dst's place, with or without a previous dst;
// when tmp cannot be moved the previous dst is back as it was.
func TestReplaceDir(t *testing.T) {
	parent := t.TempDir()
	dst := filepath.Join(parent, "set")
	mk := func(name, content string) string {
		d := filepath.Join(parent, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "f"), []byte(content), 0o644)
		return d
	}
	read := func() string {
		b, _ := os.ReadFile(filepath.Join(dst, "f"))
		return string(b)
	}
	for _, tc := range []struct {
		name, content string
		missing       bool // tmp does not exist: the move fails
		want          string
		ok            bool
	}{
		{"first", "one", false, "one", true},
		{"replace", "two", false, "two", true},
		{"failed move keeps the previous", "", true, "two", false},
	} {
		tmp := filepath.Join(parent, ".tmp-"+tc.name)
		if !tc.missing {
			mk(".tmp-"+tc.name, tc.content)
		}
		err := ReplaceDir(tmp, dst)
		if (err == nil) != tc.ok {
			t.Fatalf("%s: err = %v", tc.name, err)
		}
		if got := read(); got != tc.want {
			t.Errorf("%s: dst holds %q, want %q", tc.name, got, tc.want)
		}
		if names := entries(t, parent); len(names) != 1 {
			t.Errorf("%s: left %v", tc.name, names)
		}
	}
}
