package layergen

import (
	"archive/zip"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// moduleFiles is what `go mod download -json` reports for one module.
type moduleFiles struct {
	Path, Version, Zip, GoMod, Error string
}

// downloadModules runs `go mod download -json` for module@version
// arguments outside any module (so no go.mod or go.sum is read or written)
// and returns the files in the user's module cache by "path@version".
func downloadModules(t testing.TB, mods ...string) map[string]moduleFiles {
	t.Helper()
	cmd := exec.Command("go", append([]string{"mod", "download", "-json"}, mods...)...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download -json %s: %v\n%s", strings.Join(mods, " "), err, out)
	}
	res := map[string]moduleFiles{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var f moduleFiles
		if err := dec.Decode(&f); err != nil {
			t.Fatal(err)
		}
		if f.Error != "" {
			t.Fatalf("go mod download %s@%s: %s", f.Path, f.Version, f.Error)
		}
		res[f.Path+"@"+f.Version] = f
	}
	return res
}

// entryFiles maps "path@version" to the file (in the user's module cache,
// as `go mod download` reports it) each entry stands for.
func entryFiles(t testing.TB, mods []GoModule) map[string]string {
	t.Helper()
	var args []string
	for _, m := range mods {
		args = append(args, m.Path+"@"+m.Version)
	}
	dl := downloadModules(t, args...)
	files := map[string]string{}
	for _, m := range mods {
		k := m.Path + "@" + m.Version
		if m.Mod {
			files[k] = dl[k].GoMod
		} else {
			files[k] = dl[k].Zip
		}
		if files[k] == "" {
			t.Fatalf("go mod download reported no file for %s", m.URI())
		}
	}
	return files
}

// TestGoModulesChecksums checks each entry's sha256sum against sha256sum(1)
// run on the file `go mod download` fetched, and its URI against the form
// BitBake's gomod fetcher parses.
func TestGoModulesChecksums(t *testing.T) {
	testutil.Need(t, "sha256sum")
	mods := repoModules(t)
	if len(mods) == 0 {
		t.Fatal("no gomod entries")
	}
	files := entryFiles(t, mods)
	for _, m := range mods {
		file := files[m.Path+"@"+m.Version]
		out := testutil.Run(t, "sha256sum", file)
		if got := strings.Fields(out)[0]; got != m.SHA256 {
			t.Errorf("%s: sha256sum says %s, GoModules %s", file, got, m.SHA256)
		}
		want := "gomod://" + m.Path + ";version=" + m.Version + ";sha256sum=" + m.SHA256
		if m.Mod {
			want = "gomod://" + m.Path + ";version=" + m.Version + ";mod=1;sha256sum=" + m.SHA256
		}
		if m.URI() != want {
			t.Errorf("URI %q, want %q", m.URI(), want)
		}
	}
}

// TestGoModulesAreWhatImgpostBuilds compares the zip entries with the
// modules `go list -deps` says provide imgpost's packages (as the recipe
// builds it), and checks that every entry has its go.sum lines and that
// modules only tests or mage use are not there.
func TestGoModulesAreWhatImgpostBuilds(t *testing.T) {
	repo := testutil.RepoRoot(t)
	mods := repoModules(t)
	cmd := exec.Command("go", append([]string{"list", "-deps", "-f", "{{with .Module}}{{if not .Main}}{{.Path}}@{{.Version}}{{end}}{{end}}"}, ImgpostBuild.Packages...)...)
	cmd.Dir = repo
	cmd.Env = append(append(os.Environ(), ImgpostBuild.Env...), "GOFLAGS=-mod=readonly", "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	want := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		want[l] = true
	}
	got := map[string]bool{}
	for _, m := range mods {
		if !m.Mod {
			got[m.Path+"@"+m.Version] = true
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("zip entries %v\nmodules providing imgpost's packages %v", keys(got), keys(want))
	}
	sum, err := ReadGoSum(filepath.Join(repo, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		k := m.Path + "@" + m.Version
		if _, ok := sum.Mod[k]; !ok {
			t.Errorf("%s: no go.sum /go.mod line", k)
		}
		if _, ok := sum.Zip[k]; !ok && !m.Mod {
			t.Errorf("%s: no go.sum line", k)
		}
		for _, never := range []string{"github.com/google/go-cmp", "github.com/magefile/mage", "github.com/Masterminds/sprig/v3", "gopkg.in/yaml.v3", "github.com/stretchr/testify"} {
			if m.Path == never {
				t.Errorf("%s is not used by imgpost but has an entry: %s", never, m.URI())
			}
		}
	}
	sorted := append([]GoModule(nil), mods...)
	SortModules(sorted)
	if !reflect.DeepEqual(sorted, mods) {
		t.Error("GoModules result not sorted")
	}
}

func keys(m map[string]bool) []string {
	var l []string
	for k := range m {
		l = append(l, k)
	}
	sort.Strings(l)
	return l
}

// TestGoModulesCacheIndependent: with an empty module cache, filled only
// from the user's cache through a file:// proxy (no network), GoModules
// gives the same entries as with the user's cache, and go.mod/go.sum stay
// unchanged.
func TestGoModulesCacheIndependent(t *testing.T) {
	if testing.Short() {
		t.Skip("extracts the module zips again")
	}
	repo := testutil.RepoRoot(t)
	want := repoModules(t)
	userCache := strings.TrimSpace(testutil.Run(t, "go", "env", "GOMODCACHE"))
	sumBefore, _ := os.ReadFile(filepath.Join(repo, "go.sum"))
	modBefore, _ := os.ReadFile(filepath.Join(repo, "go.mod"))

	empty := t.TempDir()
	t.Cleanup(func() { removeModCache(empty) })
	t.Setenv("GOMODCACHE", empty)
	t.Setenv("GOPROXY", "file://"+filepath.ToSlash(filepath.Join(userCache, "cache", "download"))+",off")
	got, err := GoModules(repo, ImgpostBuild)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("empty cache gives\n%v\nthe user's cache\n%v", got, want)
	}
	sumAfter, _ := os.ReadFile(filepath.Join(repo, "go.sum"))
	modAfter, _ := os.ReadFile(filepath.Join(repo, "go.mod"))
	if string(sumAfter) != string(sumBefore) || string(modAfter) != string(modBefore) {
		t.Error("GoModules changed go.mod or go.sum")
	}
}

// TestGoModulesMissingGoSum: a module whose go.sum lacks a line the build
// needs is refused by the go command (GOFLAGS=-mod=readonly), and the error
// says which command and why; go.sum is left as it was.
func TestGoModulesMissingGoSum(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":  "module example.com/m\n\ngo 1.26\n\nrequire github.com/google/uuid v1.6.0\n",
		"go.sum":  "github.com/google/uuid v1.6.0/go.mod h1:TIyPZe4MgqvfeYDBFedMoGGpEw/LqOeaOT+nhxU+yHo=\n",
		"main.go": "package main\n\nimport \"github.com/google/uuid\"\n\nfunc main() { println(uuid.NewString()) }\n",
	}
	for n, s := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, err := GoModules(dir, GoBuild{Packages: []string{"."}})
	if err == nil || !strings.Contains(err.Error(), "go list") || !strings.Contains(err.Error(), "missing go.sum entry") {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "go.sum")); string(b) != files["go.sum"] {
		t.Errorf("go.sum changed:\n%s", b)
	}
	// With the zip line it works, and lists exactly that module.
	sum := files["go.sum"] + "github.com/google/uuid v1.6.0 h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=\n"
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), []byte(sum), 0o644); err != nil {
		t.Fatal(err)
	}
	mods, err := GoModules(dir, GoBuild{Packages: []string{"."}})
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) != 1 || mods[0].Path != "github.com/google/uuid" || mods[0].Version != "v1.6.0" || mods[0].Mod {
		t.Errorf("entries %v", mods)
	}
	if _, err := GoModules(t.TempDir(), ImgpostBuild); err == nil || !strings.Contains(err.Error(), "go.sum") {
		t.Errorf("no go.sum: err = %v", err)
	}
}

// TestCollectModules lays out module cache download directories from real
// module files and go.sum lines (written by the go command) and checks the
// entries CollectModules makes of them, and that it refuses bad input.
func TestCollectModules(t *testing.T) {
	testutil.Need(t, "sha256sum")
	repo := testutil.RepoRoot(t)
	realSum, err := os.ReadFile(filepath.Join(repo, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	const (
		uuid   = "github.com/google/uuid@v1.6.0"
		caleb  = "github.com/CalebQ42/squashfs@v1.3.0"
		mage   = "github.com/magefile/mage@v1.17.2"
		uuidH1 = "github.com/google/uuid v1.6.0 h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0="
		uuidMd = "github.com/google/uuid v1.6.0/go.mod h1:TIyPZe4MgqvfeYDBFedMoGGpEw/LqOeaOT+nhxU+yHo="
		mageMd = "github.com/magefile/mage v1.17.2/go.mod h1:Yj51kqllmsgFpvvSzgrZPK9WtluG3kUhFaBUVLo4feA="
	)
	for _, l := range []string{uuidH1, uuidMd, mageMd} {
		if !strings.Contains(string(realSum), l+"\n") {
			t.Fatalf("go.sum no longer has %q: update the test", l)
		}
	}
	real := downloadModules(t, uuid, caleb, mage)
	sha := func(file string) string { return strings.Fields(testutil.Run(t, "sha256sum", file))[0] }

	// file is one file of a download directory: a copy of src or the bytes data.
	type file struct{ src, data string }
	v := func(esc string) string { return filepath.Join(filepath.FromSlash(esc), "@v") }
	good := map[string]file{
		filepath.Join(v("github.com/google/uuid"), "v1.6.0.zip"):                    {src: real[uuid].Zip},
		filepath.Join(v("github.com/google/uuid"), "v1.6.0.mod"):                    {src: real[uuid].GoMod},
		filepath.Join(v("github.com/google/uuid"), "v1.6.0.info"):                   {data: "{}"},
		filepath.Join(v("github.com/!caleb!q42/squashfs"), "v1.3.0.zip"):            {src: real[caleb].Zip},
		filepath.Join(v("github.com/magefile/mage"), "v1.17.2.mod"):                 {src: real[mage].GoMod},
		filepath.Join(v("golang.org/toolchain"), "v0.0.1-go1.26.0.linux-amd64.zip"): {data: "not a zip"},
		filepath.Join("sumdb", "sum.golang.org", "lookup", "x"):                     {data: "x"},
	}
	wantGood := []GoModule{
		{Path: "github.com/CalebQ42/squashfs", Version: "v1.3.0", SHA256: sha(real[caleb].Zip)},
		{Path: "github.com/google/uuid", Version: "v1.6.0", SHA256: sha(real[uuid].Zip)},
		{Path: "github.com/magefile/mage", Version: "v1.17.2", Mod: true, SHA256: sha(real[mage].GoMod)},
	}
	with := func(over map[string]file) map[string]file {
		m := map[string]file{}
		for k, f := range good {
			m[k] = f
		}
		for k, f := range over {
			if f == (file{}) {
				delete(m, k)
			} else {
				m[k] = f
			}
		}
		return m
	}
	uuidZip := filepath.Join(v("github.com/google/uuid"), "v1.6.0.zip")
	foreignZip := filepath.Join(t.TempDir(), "foreign.zip")
	writeZip(t, foreignZip, map[string]string{"github.com/google/uuid@v1.6.0/go.mod": "module github.com/google/uuid\n", "elsewhere/x.go": "package x\n"})
	otherGoMod := filepath.Join(t.TempDir(), "other.zip")
	writeZip(t, otherGoMod, map[string]string{"github.com/google/uuid@v1.6.0/go.mod": "module github.com/google/uuid\n\ngo 1.99\n"})
	drop := func(lines ...string) string {
		s := string(realSum)
		for _, l := range lines {
			s = strings.Replace(s, l+"\n", "", 1)
		}
		return s
	}
	cases := []struct {
		name  string
		files map[string]file
		sum   string
		want  []GoModule // nil: an error containing each of errs
		errs  []string
	}{
		{"zips, go.mod-only, capitals; toolchain and sumdb ignored", good, string(realSum), wantGood, nil},
		{"tampered zip h1", good, strings.Replace(string(realSum), uuidH1, "github.com/google/uuid v1.6.0 h1:AAAAIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=", 1), nil,
			[]string{"github.com/google/uuid@v1.6.0", "go.sum", "says h1:AAAA"}},
		{"tampered go.mod h1", good, strings.Replace(string(realSum), mageMd, "github.com/magefile/mage v1.17.2/go.mod h1:AAAAkqllmsgFpvvSzgrZPK9WtluG3kUhFaBUVLo4feA=", 1), nil,
			[]string{"github.com/magefile/mage@v1.17.2", "v1.17.2.mod has hash"}},
		{"zip without go.sum line", good, drop(uuidH1), nil, []string{"github.com/google/uuid@v1.6.0", "has no line"}},
		{"zip without go.sum go.mod line", good, drop(uuidMd), nil, []string{"github.com/google/uuid@v1.6.0", "no v1.6.0/go.mod line"}},
		{"go.mod-only without go.sum line", good, drop(mageMd), nil, []string{"github.com/magefile/mage@v1.17.2", "no v1.17.2/go.mod line"}},
		{"zip member outside the module", with(map[string]file{uuidZip: {src: foreignZip}}), string(realSum), nil, []string{"elsewhere/x.go", "outside github.com/google/uuid@v1.6.0/"}},
		{"zip whose go.mod is not go.sum's", with(map[string]file{uuidZip: {src: otherGoMod}}), strings.Replace(string(realSum), uuidH1, "github.com/google/uuid v1.6.0 "+zipH1(t, otherGoMod), 1), nil,
			[]string{"the go.mod in", "says h1:TIyPZe4"}},
		{"not a zip", with(map[string]file{uuidZip: {data: "PK garbage"}}), string(realSum), nil, []string{"module zip", "v1.6.0.zip"}},
		{"bad escaping", with(map[string]file{filepath.Join(v("github.com/Bad"), "v1.0.0.mod"): {data: "module x\n"}}), string(realSum), nil, []string{"bad escaped path"}},
		{"malformed go.sum", good, "github.com/x/y v1.0.0\n", nil, []string{"malformed line", ":1:"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for p, f := range c.files {
				dst := filepath.Join(dir, p)
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
					t.Fatal(err)
				}
				data := []byte(f.data)
				if f.src != "" {
					if data, err = os.ReadFile(f.src); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.WriteFile(dst, data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			sumFile := filepath.Join(t.TempDir(), "go.sum")
			if err := os.WriteFile(sumFile, []byte(c.sum), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := CollectModules(dir, sumFile)
			if c.want != nil {
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, c.want) {
					t.Errorf("got %v\nwant %v", got, c.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %v", got)
			}
			for _, e := range c.errs {
				if !strings.Contains(err.Error(), e) {
					t.Errorf("error %q lacks %q", err, e)
				}
			}
		})
	}
	if _, err := CollectModules(t.TempDir(), filepath.Join(t.TempDir(), "none.sum")); err == nil || !strings.Contains(err.Error(), "none.sum") {
		t.Errorf("missing go.sum: err = %v", err)
	}
}

func writeZip(t *testing.T, file string, members map[string]string) {
	t.Helper()
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	names := make([]string, 0, len(members))
	for n := range members {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		w, err := zw.Create(n)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, members[n])
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// zipH1 is the h1: hash of a test zip (its member list is checked above
// against the go command's hashes of real modules).
func zipH1(t *testing.T, file string) string {
	h, _, err := zipHash1(file, "github.com/google/uuid@v1.6.0")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestEscapePath(t *testing.T) {
	cases := []struct{ plain, esc string }{
		{"github.com/CalebQ42/squashfs", "github.com/!caleb!q42/squashfs"},
		{"github.com/Masterminds/semver/v3", "github.com/!masterminds/semver/v3"},
		{"golang.org/x/sys", "golang.org/x/sys"},
		{"v0.0.0-20200203143853-96a758eda86e", "v0.0.0-20200203143853-96a758eda86e"},
		{"v1.0.0-RC1", "v1.0.0-!r!c1"},
	}
	for _, c := range cases {
		if got := escapePath(c.plain); got != c.esc {
			t.Errorf("escapePath(%q) = %q, want %q", c.plain, got, c.esc)
		}
		if got, err := unescapePath(c.esc); err != nil || got != c.plain {
			t.Errorf("unescapePath(%q) = %q, %v", c.esc, got, err)
		}
	}
	for _, bad := range []string{"github.com/Caleb", "x!", "x!1", "x!!a"} {
		if got, err := unescapePath(bad); err == nil {
			t.Errorf("unescapePath(%q) = %q, want an error", bad, got)
		}
	}
}

// TestSortModules: the go-mod-update-modules class's order (';' as ' ',
// '/' as '!'), which differs from plain path order where '-' or '.' meets '/'.
func TestSortModules(t *testing.T) {
	mods := []GoModule{
		{Path: "example.com/a-b", Version: "v1.0.0"},
		{Path: "example.com/a", Version: "v1.0.0"},
		{Path: "example.com/a/b", Version: "v1.0.0"},
		{Path: "example.com/a", Version: "v0.9.0", Mod: true},
	}
	SortModules(mods)
	var got []string
	for _, m := range mods {
		got = append(got, m.Path+"@"+m.Version)
	}
	want := []string{"example.com/a@v0.9.0", "example.com/a@v1.0.0", "example.com/a/b@v1.0.0", "example.com/a-b@v1.0.0"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}
