package layergen

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// TestGoModulesChecksums checks each entry's sha256sum against sha256sum(1)
// run on the module cache's file, and that every go.sum line is covered.
func TestGoModulesChecksums(t *testing.T) {
	testutil.Need(t, "sha256sum")
	repo := testutil.RepoRoot(t)
	cache := modCache(t, repo)
	mods, err := GoModules(filepath.Join(repo, "go.sum"), cache)
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := os.ReadFile(filepath.Join(repo, "go.sum"))
	for _, line := range strings.Split(strings.TrimSpace(string(sum)), "\n") {
		f := strings.Fields(line)
		v := strings.TrimSuffix(f[1], "/go.mod")
		found := false
		for _, m := range mods {
			if m.Path == f[0] && m.Version == v {
				found = true
			}
		}
		if !found {
			t.Errorf("go.sum line %q has no gomod entry", line)
		}
	}
	for _, m := range mods {
		ext := ".zip"
		if m.Mod {
			ext = ".mod"
		}
		file := filepath.Join(cache, "cache", "download", escapePath(m.Path), "@v", m.Version+ext)
		out := testutil.Run(t, "sha256sum", file)
		if got := strings.Fields(out)[0]; got != m.SHA256 {
			t.Errorf("%s: sha256sum says %s, GoModules %s", file, got, m.SHA256)
		}
		if !strings.HasPrefix(m.URI(), "gomod://"+m.Path+";version="+m.Version+";") {
			t.Errorf("URI %q", m.URI())
		}
	}
}

func TestGoModulesBadInput(t *testing.T) {
	repo := testutil.RepoRoot(t)
	cache := modCache(t, repo)
	sum, _ := os.ReadFile(filepath.Join(repo, "go.sum"))
	dir := t.TempDir()
	cases := map[string]struct{ content, want string }{
		"tampered h1": {strings.Replace(string(sum), "github.com/google/uuid v1.6.0 h1:", "github.com/google/uuid v1.6.0 h1:AAAA", 1), "go.sum"},
		"malformed":   {"github.com/x/y v1.0.0\n", "malformed line"},
		"not cached":  {"example.com/never/there v9.9.9 h1:abc=\n", "go mod download"},
	}
	for name, c := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".sum")
		os.WriteFile(p, []byte(c.content), 0o644)
		_, err := GoModules(p, cache)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, c.want)
		}
	}
	if _, err := GoModules(filepath.Join(dir, "none.sum"), cache); err == nil {
		t.Error("missing go.sum accepted")
	}
	if testing.Short() {
		return
	}
	// The fetcher's name encoding: capital letters become !lower.
	if escapePath("github.com/CalebQ42/squashfs") != "github.com/!caleb!q42/squashfs" {
		t.Error("escapePath")
	}
	_ = exec.Command
}
