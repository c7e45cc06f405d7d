package layerlint

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// check runs sh -n and shellcheck on one snippet; scripts are checked in
// place (so their `# shellcheck source=` paths resolve), functions from a
// temporary file.
func check(t *testing.T, s Snippet) (string, bool) {
	t.Helper()
	path := s.File
	if s.Name != "" {
		path = filepath.Join(t.TempDir(), "snippet.sh")
		if err := os.WriteFile(path, []byte(s.Script), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shell := "sh"
	if strings.HasPrefix(s.Script, "#!/bin/bash") {
		shell = "bash"
	}
	if out, err := exec.Command(shell, "-n", path).CombinedOutput(); err != nil {
		return shell + " -n: " + string(out), false
	}
	args := []string{"-x", "-P", "SCRIPTDIR"}
	if s.Name != "" {
		args = append(args, "-s", "sh")
	}
	cmd := exec.Command("shellcheck", append(args, path)...)
	cmd.Dir = filepath.Dir(path)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "shellcheck: " + string(out), false
	}
	return "", true
}

// shN runs sh -n on a script.
func shN(t *testing.T, script string) (string, bool) {
	p := filepath.Join(t.TempDir(), "x.sh")
	if err := os.WriteFile(p, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sh", "-n", p).CombinedOutput(); err != nil {
		return string(out), false
	}
	return "", true
}

// TestExpandCatchesPipes: a list value with "|" expanded unquoted in a for
// loop is a shell syntax error that only shows once BitBake substitutes it.
func TestExpandCatchesPipes(t *testing.T) {
	testutil.Need(t, "sh")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "r.inc"), []byte("LIST = \"a|b|c d|e|f\"\n"), 0o644)
	src := "do_configure:append() {\n\tfor entry in ${LIST}; do\n\t\techo \"$entry\"\n\tdone\n}\n"
	snips, err := Functions(filepath.Join(dir, "r.bb"), []byte(src))
	if err != nil || len(snips) != 1 {
		t.Fatal(err, len(snips))
	}
	if _, ok := shN(t, snips[0].Script); !ok {
		t.Fatal("unexpanded script rejected")
	}
	vars, err := Assignments(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := shN(t, Expand(snips[0].Script, vars)); ok {
		t.Fatal("expanded script with | in the for list accepted")
	}
	os.WriteFile(filepath.Join(dir, "r.inc"), []byte("LIST = \"a,b,c d,e,f\"\n"), 0o644)
	vars, _ = Assignments(dir)
	if msg, ok := shN(t, Expand(snips[0].Script, vars)); !ok {
		t.Fatalf("comma list rejected: %s", msg)
	}
}

// TestLayerShell checks every shell function and script in the repository's layers.
func TestLayerShell(t *testing.T) {
	testutil.Need(t, "shellcheck", "sh", "bash")
	var snips []Snippet
	for _, l := range layerNames {
		s, err := Collect(filepath.Join(testutil.RepoRoot(t), l))
		if err != nil {
			t.Fatal(err)
		}
		snips = append(snips, s...)
	}
	root := testutil.RepoRoot(t)
	names := map[string]bool{}
	for _, s := range snips {
		rel, _ := filepath.Rel(root, s.File)
		names[rel+":"+s.Name] = true
		s := s
		t.Run(strings.ReplaceAll(rel, "/", "_")+"_"+s.Name, func(t *testing.T) {
			if msg, ok := check(t, s); !ok {
				t.Errorf("%s:%d %s\n%s\n--- script ---\n%s", s.File, s.Line, s.Name, msg, s.Script)
			}
			if s.Name == "" {
				return
			}
			// With the values BitBake substitutes (assignments in the same directory).
			vars, err := Assignments(filepath.Dir(s.File))
			if err != nil {
				t.Fatal(err)
			}
			if x := Expand(s.Script, vars); x != s.Script {
				if msg, ok := shN(t, x); !ok {
					t.Errorf("%s:%d %s with BitBake's values substituted: %s\n--- script ---\n%s", s.File, s.Line, s.Name, msg, x)
				}
			}
		})
	}
	// The check must have seen the code that matters.
	for _, want := range []string{
		"meta-dstack/classes/dstack-image.bbclass:do_dstack_dist",
		"meta-dstack/recipes-devtools/imgpost/imgpost-native_1.0.bb:do_compile",
		"meta-dstack-bsp/recipes-core/dstack-ovmf/dstack-ovmf_edk2-stable202502.bb:do_compile",
		"meta-dstack-bsp/recipes-core/dstack-ovmf/dstack-ovmf_edk2-stable202502.bb:dstack_ovmf_nasm3",
		"meta-dstack/recipes-core/dstack-prepare/dstack-prepare_1.0.bb:do_install",
	} {
		if !names[want] {
			t.Errorf("shell function %s not found by Collect", want)
		}
	}
}

// TestCheckCatchesErrors: the checks reject broken code.
func TestCheckCatchesErrors(t *testing.T) {
	testutil.Need(t, "shellcheck", "sh")
	cases := map[string]string{
		"syntax":   "do_x() {\n\tif true; then\n\t\techo ${S}\n}\n",
		"unquoted": "do_y() {\n\tf=$1\n\trm -rf $f/*\n}\n",
		"bashism":  "do_z() {\n\t[[ -n \"${D}\" ]] && echo ok\n}\n",
	}
	for name, src := range cases {
		snips, err := Functions(name+".bb", []byte(src))
		if err != nil && name != "syntax" {
			t.Fatal(err)
		}
		if name == "syntax" {
			// The '}' closes the function early, leaving an unterminated if.
			if len(snips) != 1 {
				t.Fatalf("%s: %d snippets", name, len(snips))
			}
		}
		if _, ok := check(t, snips[0]); ok {
			t.Errorf("%s: accepted:\n%s", name, snips[0].Script)
		}
	}
}

func TestFunctions(t *testing.T) {
	src := `SRC_URI = "x"
python do_foo() {
    bb.note("not shell")
}
do_install:append:class-target() {
	install -m 0644 "${WORKDIR}/a" "${D}${bindir}/${@d.getVar('X')}"
	echo "${KBRANCH:qemux86-64}" "${SRCREV_machine}" "${FOO:-bar}"
}
fakeroot do_other () {
	:
}
`
	snips, err := Functions("r.bb", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(snips) != 2 || snips[0].Name != "do_install:append:class-target" || snips[1].Name != "do_other" {
		t.Fatalf("%+v", snips)
	}
	s := snips[0].Script
	for _, want := range []string{"do_install_append_class_target() {", "BBPYTHON", "${BB_KBRANCH}", "${SRCREV_machine}", "${FOO:-bar}"} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	if _, err := Functions("bad.bb", []byte("do_x() {\n\techo\n")); err == nil {
		t.Error("unterminated function accepted")
	}
}
