package reporoot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFind(t *testing.T) {
	root := t.TempDir()
	write := func(rel, text string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("repo/go.mod", "module "+Module+"\n\ngo 1.26\n")
	write("repo/a/b/c/.keep", "")
	write("repo/nested/go.mod", "module example.com/other\n")
	write("repo/nested/x/.keep", "")
	write("quoted/go.mod", "module \""+Module+"\"\n")
	write("other/go.mod", "module example.com/other\n")

	for _, tc := range []struct{ start, want, err string }{
		{"repo", "repo", ""},
		{"repo/a/b/c", "repo", ""},
		{"repo/nested/x", "repo", ""}, // another module's go.mod is passed over
		{"quoted", "quoted", ""},
		{"other", "", "not found"},
	} {
		got, err := Find(filepath.Join(root, tc.start))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Find(%s) = %q, %v; want error containing %q", tc.start, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != filepath.Join(root, tc.want) {
			t.Errorf("Find(%s) = %q, %v; want %s", tc.start, got, err, tc.want)
		}
	}
}

func TestFindThisRepository(t *testing.T) {
	got, err := Find(".")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(got, "internal", "reporoot", "reporoot.go")); err != nil {
		t.Errorf("Find(.) = %s, which does not hold this package: %v", got, err)
	}
}
