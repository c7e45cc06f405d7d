package layergen

import (
	"archive/zip"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// fetcherLayout lays out the files of mods in an empty module cache the way
// BitBake's gomod fetcher unpacks them (bitbake lib/bb/fetch2/gomod.py):
// cache/download/<escaped module>/@v/<escaped version>.zip and the go.mod
// read from that zip (or "module <path>\n" when it has none) as .mod; for a
// mod=1 entry only the .mod file. files maps "path@version" to the file
// each entry stands for.
func fetcherLayout(t *testing.T, mods []GoModule, files map[string]string) string {
	t.Helper()
	cache := filepath.Join(t.TempDir(), "pkg", "mod")
	t.Cleanup(func() { removeModCache(cache) })
	for _, m := range mods {
		src := files[m.Path+"@"+m.Version]
		ext := ".zip"
		if m.Mod {
			ext = ".mod"
		}
		dst := filepath.Join(cache, "cache", "download", filepath.FromSlash(escapePath(m.Path+"/@v/"+m.Version+ext)))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		linkOrCopy(t, src, dst)
		if m.Mod {
			continue
		}
		zr, err := zip.OpenReader(src)
		if err != nil {
			t.Fatal(err)
		}
		data := []byte("module " + m.Path + "\n")
		for _, f := range zr.File {
			if f.Name == m.Path+"@"+m.Version+"/go.mod" {
				rc, err := f.Open()
				if err != nil {
					t.Fatal(err)
				}
				data, err = io.ReadAll(rc)
				rc.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		zr.Close()
		if err := os.WriteFile(strings.TrimSuffix(dst, ".zip")+".mod", data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return cache
}

// offlineBuild builds imgpost the way the imgpost-native recipe's
// do_compile does, with GOPROXY=off against the module cache cache.
func offlineBuild(t *testing.T, repo, cache, out string) ([]byte, error) {
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-buildid=", "-o", out, "./tools/imgpost")
	cmd.Dir = repo
	cmd.Env = append(append(os.Environ(), ImgpostBuild.Env...),
		"GOMODCACHE="+cache, "GOPROXY=off", "GOFLAGS=-mod=readonly -modcacherw", "GOWORK=off")
	return cmd.CombinedOutput()
}

// TestGoModulesSufficeOffline lays out exactly the files of the generated
// gomod entries (each checked against its sha256sum, as the fetcher does) in
// an empty module cache as the gomod fetcher unpacks them, and builds
// imgpost against it with GOPROXY=off and GOFLAGS=-mod=readonly, as the
// imgpost-native recipe does. Then it drops each entry in turn: the build
// must fail, so every entry is needed.
func TestGoModulesSufficeOffline(t *testing.T) {
	if testing.Short() {
		t.Skip("builds imgpost")
	}
	repo := testutil.RepoRoot(t)
	mods := repoModules(t)
	files := entryFiles(t, mods)
	for _, m := range mods {
		k := m.Path + "@" + m.Version
		if got, err := fileSHA256(files[k]); err != nil || got != m.SHA256 {
			t.Fatalf("%s: sha256 %s (%v), entry says %s", files[k], got, err, m.SHA256)
		}
	}

	work := t.TempDir()
	bin := filepath.Join(work, "imgpost")
	if out, err := offlineBuild(t, repo, fetcherLayout(t, mods, files), bin); err != nil {
		t.Fatalf("offline build of imgpost from the gomod entries failed: %v\n%s", err, out)
	}
	out := testutil.Run(t, bin, "help")
	if !strings.Contains(out, "verity") {
		t.Errorf("imgpost help: %s", out)
	}

	// The test can fail: without an entry the build must fail. Every
	// go.mod-only entry is dropped in turn (zip entries are checked against
	// `go list -deps` in TestGoModulesAreWhatImgpostBuilds), and one zip
	// entry (each dropped build extracts the other zips, ~6 s).
	zipDropped := false
	for i, m := range mods {
		if !m.Mod {
			if zipDropped {
				continue
			}
			zipDropped = true
		}
		without := append(append([]GoModule(nil), mods[:i]...), mods[i+1:]...)
		out, err := offlineBuild(t, repo, fetcherLayout(t, without, files), filepath.Join(work, "imgpost-without"))
		if err == nil {
			t.Errorf("imgpost builds offline without %s: the entry is not needed", m.URI())
		} else if !strings.Contains(string(out), "module lookup disabled by GOPROXY=off") {
			t.Errorf("build without %s failed for another reason: %s", m.Path, out)
		}
	}
}

// linkOrCopy hard-links src to dst (module files are never modified in
// place), or copies it where a link is not possible.
func linkOrCopy(t *testing.T, src, dst string) {
	t.Helper()
	if os.Link(src, dst) == nil {
		return
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBitbakeGomodFetcher hands the committed imgpost-go-mods.inc to
// BitBake's own gomod fetcher (testdata/bbgomod.py): it parses each entry,
// checks the file's sha256sum and unpacks it; imgpost must then build
// offline from what it unpacked, and a wrong sha256sum must be refused.
// Opt-in, as CI has no BitBake: DSTACK_BITBAKE_LIB=<bitbake checkout>/lib.
func TestBitbakeGomodFetcher(t *testing.T) {
	bblib := os.Getenv("DSTACK_BITBAKE_LIB")
	if bblib == "" {
		t.Skip("set DSTACK_BITBAKE_LIB to a BitBake checkout's lib/ (2.18) to run")
	}
	testutil.Need(t, "python3")
	repo := testutil.RepoRoot(t)
	inc := filepath.Join(repo, "meta-dstack", "recipes-devtools", "imgpost", "imgpost-go-mods.inc")
	files := entryFiles(t, repoModules(t))
	filesJSON := filepath.Join(t.TempDir(), "files.json")
	data, err := json.Marshal(files)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filesJSON, data, 0o644); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs(filepath.Join("testdata", "bbgomod.py"))
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(inc string) (string, []byte, error) {
		root := t.TempDir()
		t.Cleanup(func() { removeModCache(root) })
		cmd := exec.Command("python3", script, bblib, inc, root, filesJSON)
		cmd.Dir = t.TempDir()
		out, err := cmd.CombinedOutput()
		return root, out, err
	}
	root, out, err := fetch(inc)
	if err != nil {
		t.Fatalf("bitbake gomod fetcher: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	if out, err := offlineBuild(t, repo, filepath.Join(root, "pkg", "mod"), filepath.Join(t.TempDir(), "imgpost")); err != nil {
		t.Fatalf("offline build from the fetcher's module cache: %v\n%s", err, out)
	}

	text, err := os.ReadFile(inc)
	if err != nil {
		t.Fatal(err)
	}
	m := repoModules(t)[0]
	bad := strings.Replace(string(text), "sha256sum="+m.SHA256, "sha256sum="+strings.Repeat("0", 64), 1)
	if bad == string(text) {
		t.Fatalf("%s not in %s", m.SHA256, inc)
	}
	badInc := filepath.Join(t.TempDir(), "bad.inc")
	if err := os.WriteFile(badInc, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, out, err := fetch(badInc); err == nil || !strings.Contains(string(out), "sha256 checksum '"+m.SHA256+"'") {
		t.Errorf("wrong sha256sum for %s: err %v\n%s", m.Path, err, out)
	}
}
