package disk

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCopyRange copies with copy_file_range, with the buffered fallback (as
// when the kernel refuses copy_file_range between two filesystems), and
// switching to the fallback midway, and checks the bytes; a source shorter
// than asked is an error.
func TestCopyRange(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 150*MiB+12345)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	srcPath := filepath.Join(dir, "src")
	if err := os.WriteFile(srcPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	refuseAfter := func(k int) func(int, *int64, int, *int64, int, int) (int, error) {
		return func(a int, b *int64, c int, d *int64, e, f int) (int, error) {
			if k == 0 {
				return 0, unix.EXDEV
			}
			k--
			return unix.CopyFileRange(a, b, c, d, e, f)
		}
	}
	for _, tc := range []struct {
		name string
		cfr  func(int, *int64, int, *int64, int, int) (int, error)
	}{
		{"copy_file_range", unix.CopyFileRange},
		{"buffered", refuseAfter(0)},
		{"switch midway", refuseAfter(1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			copyFileRange = tc.cfr
			defer func() { copyFileRange = unix.CopyFileRange }()
			src, _ := os.Open(srcPath)
			defer src.Close()
			dst, _ := os.Create(filepath.Join(dir, "dst-"+strings.ReplaceAll(tc.name, " ", "-")))
			defer dst.Close()
			const off = 3 * MiB
			var last int64
			if err := copyRange(dst, off, src, int64(len(data)), func(done, total int64) { last = done }); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(dst.Name())
			if !bytes.Equal(got[off:], data) || !bytes.Equal(got[:off], make([]byte, off)) {
				t.Fatal("copied bytes differ")
			}
			if last != int64(len(data)) {
				t.Fatalf("last progress %d, want %d", last, len(data))
			}
			if err := copyRange(dst, off, src, int64(len(data))+1, nil); err == nil || !strings.Contains(err.Error(), "unexpected end of input") {
				t.Fatalf("short source: %v", err)
			}
		})
	}
}
