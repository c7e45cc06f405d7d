package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// With early writeback on and off, a File written over several writeback
// ticks commits exactly its bytes, and Commit and Abort stop its goroutine.
func TestEarlyWriteback(t *testing.T) {
	for _, on := range []bool{true, false} {
		prev := SetEarlyWriteback(on)
		base := runtime.NumGoroutine()
		dir := t.TempDir()
		p := filepath.Join(dir, "out")
		f, err := Create(p, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		want := base
		if on && canWriteback {
			want++
		}
		if runtime.NumGoroutine() != want {
			t.Errorf("writeback %v: %d goroutines, want %d", on, runtime.NumGoroutine(), want)
		}
		chunk := bytes.Repeat([]byte{0x5a}, 1<<20)
		for i := 0; i < 8; i++ {
			if _, err := f.Write(chunk); err != nil {
				t.Fatal(err)
			}
			time.Sleep(writebackInterval / 2)
		}
		if err := f.Commit(); err != nil {
			t.Fatal(err)
		}
		g, err := Create(filepath.Join(dir, "aborted"), 0o644)
		if err != nil {
			t.Fatal(err)
		}
		g.Abort()
		if n := runtime.NumGoroutine(); n != base {
			t.Errorf("writeback %v: %d goroutines after Commit and Abort, want %d", on, n, base)
		}
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, bytes.Repeat(chunk, 8)) {
			t.Errorf("writeback %v: committed %d bytes (%v), want %d", on, len(got), err, 8<<20)
		}
		SetEarlyWriteback(prev)
	}
}
