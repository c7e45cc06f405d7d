package sqfs

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// TestCheck builds good and broken images and checks that Check agrees with
// unsquashfs (the independent reader) on each, with the expected error.
func TestCheck(t *testing.T) {
	testutil.Need(t, "mksquashfs", "unsquashfs")
	dir := t.TempDir()
	good := testutil.Squashfs(t, dir, "good.squashfs", 200000, 1, true)
	img, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	used := binary.LittleEndian.Uint64(img[40:])
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	withDirTableZeroed := append([]byte(nil), img...)
	dirTable := binary.LittleEndian.Uint64(img[72:])
	for i := dirTable; i < dirTable+2 && i < uint64(len(img)); i++ {
		withDirTableZeroed[i] = 0xff
	}
	badComp := append([]byte(nil), img...)
	binary.LittleEndian.PutUint16(badComp[20:], 99)
	padded := append(append([]byte(nil), img...), make([]byte, 8192)...)

	cases := []struct {
		name string
		path string
		want string // "" = good
	}{
		{"good", good, ""},
		{"good-with-trailing-padding", write("padded", padded), ""},
		{"empty", write("empty", nil), "empty file"},
		{"tiny", write("tiny", img[:50]), "truncated"},
		{"truncated", write("truncated", img[:used/2]), "truncated squashfs"},
		{"truncated-by-one", write("truncated1", img[:used-1]), "truncated squashfs"},
		{"not-squashfs", write("text", []byte(strings.Repeat("this is not a squashfs image\n", 100))), "not a squashfs"},
		{"bad-compression", write("badcomp", badComp), "compression"},
		{"corrupt-directory", write("corruptdir", withDirTableZeroed), "corrupt squashfs"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			info, err := Check(tc.path)
			ls, lsErr := exec.Command("unsquashfs", "-no-progress", "-l", "-d", "/root-of-image", tc.path).CombinedOutput()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				if lsErr != nil {
					t.Fatalf("unsquashfs -l rejects the good image: %s", ls)
				}
				// The root entries unsquashfs lists (direct children of the root).
				n := 0
				for _, l := range strings.Split(string(ls), "\n") {
					if rest, ok := strings.CutPrefix(l, "/root-of-image/"); ok && !strings.Contains(rest, "/") {
						n++
					}
				}
				if info.RootEntries != n || info.BytesUsed != int64(used) {
					t.Fatalf("Check: %d root entries, %d bytes used; unsquashfs lists %d root entries, superblock says %d", info.RootEntries, info.BytesUsed, n, used)
				}
				return
			}
			if err == nil {
				t.Fatalf("Check accepted a bad image (%s)", tc.name)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
				t.Fatalf("Check: %v; want ErrInvalid, naming the file and saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error: %q", err)
			}
			if lsErr == nil {
				t.Fatalf("unsquashfs -l accepts the image Check rejects:\n%s", ls)
			}
		})
	}
	if _, err := Check(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrInvalid) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Check(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}
