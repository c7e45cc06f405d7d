package layergen

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/internal/values"
)

var update = flag.Bool("update", false, "rewrite testdata/golden from the current templates")

var (
	modsOnce sync.Once
	mods     []GoModule
	modsErr  error
)

// repoModules returns GoModules(repo, ImgpostBuild), computed once per test
// binary (it runs the go command twice and extracts the module zips).
func repoModules(t testing.TB) []GoModule {
	t.Helper()
	repo := testutil.RepoRoot(t)
	modsOnce.Do(func() { mods, modsErr = GoModules(repo, ImgpostBuild) })
	if modsErr != nil {
		t.Fatal(modsErr)
	}
	return mods
}

// repoOptions is what Load returns for valuesFile (default: the
// repository's), with the gomod entries of repoModules.
func repoOptions(t *testing.T, valuesFile, out string) Options {
	t.Helper()
	repo := testutil.RepoRoot(t)
	if valuesFile == "" {
		valuesFile = filepath.Join(repo, values.DefaultPath)
	}
	v, err := values.Load(valuesFile)
	if err != nil {
		t.Fatal(err)
	}
	return Options{Templates: filepath.Join(repo, "templates"), Values: v, Modules: repoModules(t), Build: ImgpostBuild, Out: out}
}

// TestCommittedLayerUpToDate fails when meta-dstack/ in the tree is not what
// `go run mage.go layer` renders from templates/ and templates/values.yaml.
func TestCommittedLayerUpToDate(t *testing.T) {
	repo := testutil.RepoRoot(t)
	diffs, err := Diff(repoOptions(t, "", repo))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		t.Errorf("%s — run `go run mage.go layer` and commit the result", d)
	}
}

// TestMageLayerChangesNothing runs the real target on a copy of the
// repository's tracked files and checks that no file changes.
func TestMageLayerChangesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mage")
	}
	repo := testutil.RepoRoot(t)
	dst := t.TempDir()
	// A clean clone: the committed files of HEAD.
	ls := exec.Command("git", "ls-files", "-z")
	ls.Dir = repo
	list, err := ls.Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	for _, f := range strings.Split(strings.TrimRight(string(list), "\x00"), "\x00") {
		src := filepath.Join(repo, f)
		data, err := os.ReadFile(src)
		if err != nil {
			continue // deleted in the work tree
		}
		st, _ := os.Stat(src)
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), data, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	// Use the work tree's templates and meta-dstack, so the test checks the code under test.
	for _, dir := range []string{"templates", "meta-dstack"} {
		os.RemoveAll(filepath.Join(dst, dir))
		if out, err := exec.Command("cp", "-a", filepath.Join(repo, dir), filepath.Join(dst, dir)).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	// The whole copy: go.mod, go.sum and meta-dstack/ must come out unchanged.
	before := snapshot(t, dst)
	time.Sleep(10 * time.Millisecond)
	cmd := exec.Command("go", "run", "mage.go", "layer")
	cmd.Dir = dst
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run mage.go layer: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), " 0 files written") || !strings.Contains(string(out), " 0 stale removed") {
		t.Errorf("mage layer changed files:\n%s", out)
	}
	after := snapshot(t, dst)
	for p, b := range before {
		if a, ok := after[p]; !ok {
			t.Errorf("mage layer removed %s", p)
		} else if a != b {
			t.Errorf("mage layer changed %s (content, mode or mtime)", p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("mage layer created %s", p)
		}
	}
	if t.Failed() {
		t.Logf("mage layer output:\n%s", out)
	}
}

// snapshot maps each file under dir to its modification time, mode and SHA-256.
func snapshot(t *testing.T, dir string) map[string]string {
	m := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		s := sha256.Sum256(data)
		rel, _ := filepath.Rel(dir, p)
		m[rel] = info.ModTime().String() + " " + info.Mode().String() + " " + hex.EncodeToString(s[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRenderDeterministic(t *testing.T) {
	o := repoOptions(t, "", t.TempDir())
	a, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	o2 := repoOptions(t, "", t.TempDir())
	b, err := Render(o2)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("%d vs %d files", len(a), len(b))
	}
	for i := range a {
		if a[i].Path != b[i].Path || !bytes.Equal(a[i].Data, b[i].Data) {
			t.Errorf("render differs at %s", a[i].Path)
		}
	}
}

// TestGolden renders testdata/variant.yaml (another distro name, three
// flavors, GCP off, cache knobs set) and compares with testdata/golden/.
func TestGolden(t *testing.T) {
	out := t.TempDir()
	o := repoOptions(t, filepath.Join("testdata", "variant.yaml"), out)
	if _, err := Write(o); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "golden")
	if *update {
		os.RemoveAll(golden)
		if out, err := exec.Command("cp", "-a", out, golden).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	got := readTree(t, out)
	want := readTree(t, golden)
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("%s: not rendered", p)
		} else if g != w {
			t.Errorf("%s: differs from the golden file (rerun with -update after checking)", p)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: rendered but not in golden/", p)
		}
	}
	// Properties of the variant, checked directly.
	mustContain := map[string][]string{
		"meta-dstack/conf/distro/acme.conf":                       {`DISTRO = "acme"`, `DISTRO_VERSION = "2.0"`, `ENABLE_GCP_IMAGE ?= "0"`, `DSTACK_GCP_CMDLINE_EXTRA ?= "dstack.data_dev=/dev/nvme0n2"`},
		"meta-dstack/conf/multiconfig/nvidia.conf":                {`DSTACK_FLAVOR = "nvidia"`, `DSTACK_FLAVOR_PACKAGES = "nvidia-driver"`},
		"meta-dstack/conf/templates/default/local.conf.sample":    {`DL_DIR ?= "/srv/dl"`, `SSTATE_MIRRORS ?= "file://.* https://sstate.example.com/PATH;downloadfilename=PATH"`, `BB_HASHSERVE ?= "hashserv.example.com:8686"`, `BB_SIGNATURE_HANDLER ?= "OEEquivHash"`, `BBMULTICONFIG ?= "prod dev nvidia"`},
		"meta-dstack/conf/layer.conf":                             {`BBFILE_COLLECTIONS += "acme"`, `LAYERSERIES_COMPAT_acme = "wrynose"`},
		"meta-dstack/recipes-core/images/acme-rootfs.bb":          {"inherit core-image dstack-image"},
		"meta-dstack/README.md":                                   {"<!-- " + Marker},
		"meta-dstack/conf/templates/default/bblayers.conf.sample": {"##OEROOT##/meta \\"},
	}
	for p, subs := range mustContain {
		for _, s := range subs {
			if !strings.Contains(got[p], s) {
				t.Errorf("%s lacks %q", p, s)
			}
		}
	}
	for p, data := range got {
		first := strings.SplitN(data, "\n", 2)[0]
		// A file under <layer>/ (meta-dstack, meta-dstack-bsp) comes from templates/<layer>/.
		if !strings.Contains(first, Marker+" from templates/"+strings.SplitN(p, "/", 2)[0]+"/") {
			t.Errorf("%s: first line %q is not the generated-file comment", p, first)
		}
	}
}

func readTree(t *testing.T, root string) map[string]string {
	m := map[string]string{}
	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		data, err := os.ReadFile(p)
		m[filepath.ToSlash(rel)] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// writeTemplates makes a template directory holding the given files.
func writeTemplates(t *testing.T, files map[string]string) string {
	dir := filepath.Join(t.TempDir(), "templates")
	for p, s := range files {
		f := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func defaultValues(t *testing.T) *values.Values {
	v, err := values.Load(filepath.Join(testutil.RepoRoot(t), values.DefaultPath))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestTemplateErrors(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"missing key", map[string]string{"meta-x/conf/a.conf.tmpl": "X = \"{{ .distro.codename }}\"\n"},
			[]string{"templates/meta-x/conf/a.conf.tmpl", "values.yaml", "key distro.codename"}},
		{"missing top key", map[string]string{"meta-x/b.bb.tmpl": "{{ .nothing.here }}\n"},
			[]string{"templates/meta-x/b.bb.tmpl", "values.yaml", "key nothing"}},
		{"missing key in path", map[string]string{"meta-x/{{.distro.nick}}.conf.tmpl": "A = \"1\"\n"},
			[]string{"templates/meta-x/{{.distro.nick}}.conf.tmpl", "key distro.nick"}},
		{"syntax", map[string]string{"meta-x/c.conf.tmpl": "{{ if }}\n"},
			[]string{"templates/meta-x/c.conf.tmpl"}},
		{"unknown file type", map[string]string{"meta-x/d.weird.tmpl": "x\n"},
			[]string{"templates/meta-x/d.weird.tmpl", "comment syntax"}},
		{"escapes out dir", map[string]string{"../x.conf.tmpl": "x\n"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.want == nil {
				return
			}
			dir := writeTemplates(t, c.files)
			_, err := Render(Options{Templates: dir, Values: defaultValues(t), Out: t.TempDir()})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestLoadBadValues(t *testing.T) {
	repo := testutil.RepoRoot(t)
	bad := filepath.Join(t.TempDir(), "mine.yaml")
	if err := os.WriteFile(bad, []byte("distro: [unclosed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(repo, bad, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "malformed YAML") {
		t.Fatalf("err = %v", err)
	}
	data, _ := os.ReadFile(filepath.Join(repo, values.DefaultPath))
	missing := strings.Replace(string(data), "  serial_consoles:", "  serial_consolez:", 1)
	if err := os.WriteFile(bad, []byte(missing), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Load(repo, bad, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "machine.serial_consoles") {
		t.Fatalf("err = %v", err)
	}
}

func TestHeaders(t *testing.T) {
	dir := writeTemplates(t, map[string]string{
		"meta-x/a.conf.tmpl":       "A = \"1\"\n",
		"meta-x/README.md.tmpl":    "# Title\n",
		"meta-x/run.sh.tmpl":       "#!/bin/sh\necho hi\n",
		"meta-x/[flavor].inc.tmpl": "F = \"{{ .flavor.name }}\"\n",
	})
	files, err := Render(Options{Templates: dir, Values: defaultValues(t), Out: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range files {
		got[f.Path] = string(f.Data)
	}
	h := Marker + " from templates/meta-x/"
	want := map[string]string{
		"meta-x/a.conf":    "# " + h + "a.conf.tmpl — do not edit\nA = \"1\"\n",
		"meta-x/README.md": "<!-- " + h + "README.md.tmpl — do not edit -->\n# Title\n",
		"meta-x/run.sh":    "#!/bin/sh\n# " + h + "run.sh.tmpl — do not edit\necho hi\n",
		"meta-x/prod.inc":  "# " + h + "[flavor].inc.tmpl — do not edit\nF = \"prod\"\n",
		"meta-x/dev.inc":   "# " + h + "[flavor].inc.tmpl — do not edit\nF = \"dev\"\n",
	}
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s = %q, want %q", p, got[p], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("rendered %d files, want %d", len(got), len(want))
	}
}

// TestWriteKeepsHandWritten: stale generated files go, hand-written files
// stay, and a template may not overwrite a hand-written file.
func TestWriteKeepsHandWritten(t *testing.T) {
	dir := writeTemplates(t, map[string]string{"meta-x/a.conf.tmpl": "A = \"1\"\n"})
	out := t.TempDir()
	hand := filepath.Join(out, "meta-x", "hand.bb")
	stale := filepath.Join(out, "meta-x", "old.conf")
	os.MkdirAll(filepath.Dir(hand), 0o755)
	os.WriteFile(hand, []byte("SUMMARY = \"mine\"\n"), 0o644)
	os.WriteFile(stale, []byte("# "+Marker+" from templates/meta-x/old.conf.tmpl — do not edit\n"), 0o644)
	o := Options{Templates: dir, Values: defaultValues(t), Out: out}
	res, err := Write(o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Written) != 1 || len(res.Removed) != 1 || res.Removed[0] != "meta-x/old.conf" {
		t.Fatalf("result %+v", res)
	}
	if _, err := os.Stat(hand); err != nil {
		t.Fatal("hand-written file removed")
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatal("stale generated file kept")
	}
	st1, _ := os.Stat(filepath.Join(out, "meta-x", "a.conf"))
	time.Sleep(10 * time.Millisecond)
	res, err = Write(o)
	if err != nil || len(res.Written) != 0 || len(res.Unchanged) != 1 {
		t.Fatalf("second write: %+v %v", res, err)
	}
	st2, _ := os.Stat(filepath.Join(out, "meta-x", "a.conf"))
	if !st1.ModTime().Equal(st2.ModTime()) {
		t.Error("unchanged file rewritten")
	}
	if diffs, err := Diff(o); err != nil || len(diffs) != 0 {
		t.Errorf("Diff after Write: %v %v", diffs, err)
	}
	// A template whose output is a hand-written file.
	dir2 := writeTemplates(t, map[string]string{"meta-x/hand.bb.tmpl": "X = \"1\"\n"})
	if _, err := Write(Options{Templates: dir2, Values: defaultValues(t), Out: out}); err == nil || !strings.Contains(err.Error(), "hand-written") {
		t.Fatalf("overwrote a hand-written file: %v", err)
	}
	if data, _ := os.ReadFile(hand); string(data) != "SUMMARY = \"mine\"\n" {
		t.Fatal("hand-written file changed")
	}
	// Diff reports an edited generated file.
	os.WriteFile(filepath.Join(out, "meta-x", "a.conf"), []byte("edited\n"), 0o644)
	if diffs, _ := Diff(o); len(diffs) != 1 || !strings.Contains(diffs[0], "differs") {
		t.Errorf("Diff after edit: %v", diffs)
	}
}
