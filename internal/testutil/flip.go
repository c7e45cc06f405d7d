package testutil

import (
	"os"
	"testing"
)

// FlipByte flips the lowest bit of the byte at off in the file at path, the
// one-byte tampering the tests use to prove a check fails.
func FlipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("flip byte %d of %s: %v", off, path, err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatalf("flip byte %d of %s: %v", off, path, err)
	}
}
