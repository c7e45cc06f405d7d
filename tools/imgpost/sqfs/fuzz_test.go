package sqfs

import (
	"bytes"
	"os"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// FuzzCheckReaderAt: any bytes give an error or a readable root directory,
// never a panic or a hang. Seeded with mksquashfs images (xz and gzip, with
// and without padding).
func FuzzCheckReaderAt(f *testing.F) {
	if _, err := os.Stat("/usr/bin/mksquashfs"); err == nil {
		dir := f.TempDir()
		for i, nopad := range []bool{true, false} {
			p := testutil.Squashfs(f, dir, "seed.squashfs", 3000, uint64(i), nopad)
			b, _ := os.ReadFile(p)
			f.Add(b)
			os.Remove(p)
		}
	}
	f.Add([]byte("hsqs"))
	f.Fuzz(func(t *testing.T, b []byte) {
		CheckReaderAt(bytes.NewReader(b), int64(len(b)))
	})
}
