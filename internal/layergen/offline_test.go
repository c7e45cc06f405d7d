package layergen

import (
	"archive/zip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// TestGoModulesSufficeOffline lays out a module cache the way BitBake's
// gomod fetcher unpacks the generated entries (the .zip plus the go.mod
// taken from it, or the .mod alone for mod=1) and builds imgpost against it
// with GOPROXY=off, as the imgpost-native recipe does.
func TestGoModulesSufficeOffline(t *testing.T) {
	if testing.Short() {
		t.Skip("builds imgpost")
	}
	repo := testutil.RepoRoot(t)
	cache := modCache(t, repo)
	mods, err := GoModules(filepath.Join(repo, "go.sum"), cache)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	mc := filepath.Join(work, "pkg", "mod")
	for _, m := range mods {
		dir := filepath.Join(mc, "cache", "download", escapePath(m.Path), "@v")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		src := filepath.Join(cache, "cache", "download", escapePath(m.Path), "@v", m.Version)
		if m.Mod {
			copyFile(t, src+".mod", filepath.Join(dir, m.Version+".mod"))
			continue
		}
		copyFile(t, src+".zip", filepath.Join(dir, m.Version+".zip"))
		zr, err := zip.OpenReader(src + ".zip")
		if err != nil {
			t.Fatal(err)
		}
		data := []byte("module " + m.Path + "\n")
		for _, f := range zr.File {
			if f.Name == m.Path+"@"+m.Version+"/go.mod" {
				rc, _ := f.Open()
				data, _ = io.ReadAll(rc)
				rc.Close()
			}
		}
		zr.Close()
		if err := os.WriteFile(filepath.Join(dir, m.Version+".mod"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-o", filepath.Join(work, "imgpost"), "./tools/imgpost")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "GOMODCACHE="+mc, "GOPROXY=off", "GOFLAGS=-mod=readonly -modcacherw", "GOWORK=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("offline build of imgpost from the gomod entries failed: %v\n%s", err, out)
	}
	out := testutil.Run(t, filepath.Join(work, "imgpost"), "help")
	if !strings.Contains(out, "verity") {
		t.Errorf("imgpost help: %s", out)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
