package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTrack: a temporary file of Create is removed by RemoveTracked (what
// the signal handler runs) until it is committed; clean-ups run newest
// first.
func TestTrack(t *testing.T) {
	dir := t.TempDir()
	f, err := Create(filepath.Join(dir, "out"), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	done, err := Create(filepath.Join(dir, "done"), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := done.Commit(); err != nil {
		t.Fatal(err)
	}
	var order []string
	forget := TrackFunc(func() { order = append(order, "first") })
	defer forget()
	TrackFunc(func() { order = append(order, "second") })
	RemoveTracked()
	if _, err := os.Stat(f.Name()); !os.IsNotExist(err) {
		t.Fatalf("temporary file still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "done")); err != nil {
		t.Fatalf("committed file removed: %v", err)
	}
	if strings.Join(order, ",") != "second,first" {
		t.Fatalf("order %v", order)
	}
}

func TestCheckNotInput(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.WriteFile(in, []byte("x"), 0o644)
	sym := filepath.Join(dir, "sym")
	os.Symlink(in, sym)
	hard := filepath.Join(dir, "hard")
	os.Link(in, hard)
	for _, out := range []string{in, filepath.Join(dir, ".", "in"), sym, hard} {
		if err := CheckNotInput(out, "other", in); !errors.Is(err, ErrIsInput) || !strings.Contains(err.Error(), "is the input "+in) {
			t.Errorf("%s: %v", out, err)
		}
	}
	for _, out := range []string{filepath.Join(dir, "new"), "", filepath.Join(dir, "other")} {
		if err := CheckNotInput(out, in); err != nil {
			t.Errorf("%s: %v", out, err)
		}
	}
}
