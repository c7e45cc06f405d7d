package repro

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// makeTree writes a small synthetic images/ tree in the seed's layout. The
// disk image is larger than one comparison chunk so that offsets past the
// first chunk are exercised.
func makeTree(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{"dstack-0.5.5/gcp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"dstack-0.5.5/metadata.json":  `{"version":"0.5.5"}` + "\n",
		"dstack-0.5.5/sha256sum.txt":  "abc  bzImage\n",
		"dstack-0.5.5/digest.txt":     "0123\n",
		"dstack-0.5.5/dstack-uki.efi": "MZ fake pe\n",
	}
	for p, s := range files {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WriteRandom(t, filepath.Join(dir, "dstack-0.5.5/gcp/disk.raw"), 3<<20+123, 7)
	testutil.WriteRandom(t, filepath.Join(dir, "dstack-0.5.5-gcp.tar.gz"), 5000, 8)
	if err := os.Symlink("dstack-0.5.5-gcp.tar.gz", filepath.Join(dir, "latest-gcp.tar.gz")); err != nil {
		t.Fatal(err)
	}
}

// cmpOffset asks GNU cmp (independent tool) where two files first differ;
// it prints a 1-based byte number.
func cmpOffset(t *testing.T, a, b string) string {
	t.Helper()
	testutil.Need(t, "cmp")
	out, _ := exec.Command("cmp", a, b).CombinedOutput()
	return string(out)
}

func TestCompare(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(t *testing.T, b string)
		want   []Difference
	}{
		{name: "identical", mutate: func(*testing.T, string) {}},
		{
			name: "one byte different past the first chunk",
			mutate: func(t *testing.T, b string) {
				testutil.FlipByte(t, filepath.Join(b, "dstack-0.5.5/gcp/disk.raw"), 2<<20+77)
			},
			want: []Difference{{Path: "dstack-0.5.5/gcp/disk.raw", Kind: ContentDiffers, Offset: 2<<20 + 77, SizeA: 3<<20 + 123, SizeB: 3<<20 + 123}},
		},
		{
			name:   "one byte different at offset 0",
			mutate: func(t *testing.T, b string) { testutil.FlipByte(t, filepath.Join(b, "dstack-0.5.5/metadata.json"), 0) },
			want:   []Difference{{Path: "dstack-0.5.5/metadata.json", Kind: ContentDiffers, Offset: 0, SizeA: 20, SizeB: 20}},
		},
		{
			name: "file missing in B",
			mutate: func(t *testing.T, b string) {
				if err := os.Remove(filepath.Join(b, "dstack-0.5.5/digest.txt")); err != nil {
					t.Fatal(err)
				}
			},
			want: []Difference{{Path: "dstack-0.5.5/digest.txt", Kind: MissingInB, Offset: -1, Detail: "regular file"}},
		},
		{
			name: "extra file in B",
			mutate: func(t *testing.T, b string) {
				if err := os.WriteFile(filepath.Join(b, "dstack-0.5.5/extra"), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want: []Difference{{Path: "dstack-0.5.5/extra", Kind: MissingInA, Offset: -1, Detail: "regular file"}},
		},
		{
			name: "truncated file",
			mutate: func(t *testing.T, b string) {
				if err := os.Truncate(filepath.Join(b, "dstack-0.5.5-gcp.tar.gz"), 4000); err != nil {
					t.Fatal(err)
				}
			},
			want: []Difference{{Path: "dstack-0.5.5-gcp.tar.gz", Kind: ContentDiffers, Offset: 4000, SizeA: 5000, SizeB: 4000, Detail: "one file is a prefix of the other"}},
		},
		{
			name: "symlink target differs",
			mutate: func(t *testing.T, b string) {
				p := filepath.Join(b, "latest-gcp.tar.gz")
				os.Remove(p)
				if err := os.Symlink("other", p); err != nil {
					t.Fatal(err)
				}
			},
			want: []Difference{{Path: "latest-gcp.tar.gz", Kind: ContentDiffers, Offset: -1, Detail: `symlink to "dstack-0.5.5-gcp.tar.gz" in A, to "other" in B`}},
		},
		{
			name: "file replaced by directory",
			mutate: func(t *testing.T, b string) {
				p := filepath.Join(b, "dstack-0.5.5/digest.txt")
				os.Remove(p)
				if err := os.Mkdir(p, 0o755); err != nil {
					t.Fatal(err)
				}
			},
			want: []Difference{{Path: "dstack-0.5.5/digest.txt", Kind: TypeMismatch, Offset: -1, Detail: "regular file in A, directory in B"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
			makeTree(t, a)
			makeTree(t, b)
			tc.mutate(t, b)
			r, err := Compare(a, b)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Diffs) != len(tc.want) {
				t.Fatalf("diffs = %+v, want %+v", r.Diffs, tc.want)
			}
			for i := range tc.want {
				if r.Diffs[i] != tc.want[i] {
					t.Errorf("diff %d = %+v, want %+v", i, r.Diffs[i], tc.want[i])
				}
				// Cross-check the offset with GNU cmp (1-based byte number).
				d := tc.want[i]
				if d.Kind == ContentDiffers && d.Offset >= 0 && d.Detail == "" {
					out := cmpOffset(t, filepath.Join(a, d.Path), filepath.Join(b, d.Path))
					if want := "byte " + itoa(d.Offset+1) + ","; !strings.Contains(out, want) {
						t.Errorf("cmp says %q, want it to contain %q", out, want)
					}
				}
			}
			if got := r.Same(); got != (len(tc.want) == 0) {
				t.Errorf("Same() = %v", got)
			}
			var text bytes.Buffer
			if err := r.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			if len(tc.want) == 0 {
				if !strings.Contains(text.String(), "REPRODUCIBLE: 6 files identical, 1 symlinks identical") {
					t.Errorf("report:\n%s", text.String())
				}
			} else {
				if !strings.Contains(text.String(), "NOT REPRODUCIBLE") || !strings.Contains(text.String(), tc.want[0].Path) {
					t.Errorf("report:\n%s", text.String())
				}
				if d := tc.want[0]; d.Kind == ContentDiffers && d.Offset >= 0 &&
					!strings.Contains(text.String(), "first differing byte at offset "+itoa(d.Offset)) {
					t.Errorf("report lacks the offset:\n%s", text.String())
				}
			}
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestIdenticalDigestsMatchSha256sum(t *testing.T) {
	testutil.Need(t, "sha256sum")
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	makeTree(t, a)
	makeTree(t, b)
	r, err := Compare(a, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range r.Identical {
		out := testutil.Run(t, "sha256sum", filepath.Join(a, f.Path))
		if got := strings.Fields(out)[0]; got != f.SHA256 {
			t.Errorf("%s: sha256 %s, sha256sum says %s", f.Path, f.SHA256, got)
		}
	}
	// The reproduce script's check, run against tree B with the real tool.
	sums := filepath.Join(dir, "expected.sha256")
	reproduce := filepath.Join(dir, "reproduce.sh")
	if err := WriteReproduce(r, "", "0123456789abcdef0123456789abcdef01234567", reproduce, sums); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sha256sum", "-c", sums)
	cmd.Dir = b
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c in B: %v\n%s", err, out)
	}
	script, err := os.ReadFile(reproduce)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"git clone " + DefaultRepoURL, "git checkout 0123456789abcdef0123456789abcdef01234567", "./repro-build/repro-build.sh -n", "sha256sum -c <<'EOF'"} {
		if !strings.Contains(string(script), want) {
			t.Errorf("reproduce script lacks %q:\n%s", want, script)
		}
	}
	// The heredoc part of the script, run by a real shell in tree B, passes.
	i := strings.Index(string(script), "sha256sum -c")
	check := exec.Command("sh", "-e", "-c", string(script[i:]))
	check.Dir = b
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum heredoc: %v\n%s", err, out)
	}
	// ... and fails once a byte of B changes.
	testutil.FlipByte(t, filepath.Join(b, "dstack-0.5.5/dstack-uki.efi"), 3)
	check = exec.Command("sh", "-e", "-c", string(script[i:]))
	check.Dir = b
	if out, err := check.CombinedOutput(); err == nil {
		t.Fatalf("sha256sum heredoc accepted a changed file:\n%s", out)
	}
}

func TestWriteReproduceRefusesDifferences(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	makeTree(t, a)
	makeTree(t, b)
	testutil.FlipByte(t, filepath.Join(b, "dstack-0.5.5/digest.txt"), 1)
	r, err := Compare(a, b)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "reproduce.sh")
	if err := WriteReproduce(r, "", "abc", out, ""); err == nil {
		t.Fatal("WriteReproduce accepted a failed comparison")
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("reproduce file written after a failed comparison: %v", err)
	}
}

func TestCompareBadInput(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct{ a, b, want string }{
		{filepath.Join(dir, "nope"), dir, "nope"},
		{dir, file, "not a directory"},
	} {
		if _, err := Compare(tc.a, tc.b); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Compare(%s, %s) = %v, want error mentioning %q", tc.a, tc.b, err, tc.want)
		}
	}
}
