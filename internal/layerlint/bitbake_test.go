package layerlint

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/internal/values"
)

// The checks below stand in for what real BitBake showed (issue 18); CI has
// no BitBake. Each one has cases that must fail, taken from the defects seen.

func layerRoot(t *testing.T) string { return filepath.Join(testutil.RepoRoot(t), "meta-dstack") }

// bspRoot is the machine layer beside it.
func bspRoot(t *testing.T) string { return filepath.Join(testutil.RepoRoot(t), "meta-dstack-bsp") }

// readStatements reads and parses one BitBake file.
func readStatements(t *testing.T, p string) []Statement {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sts, err := ParseStatements(p, data)
	if err != nil {
		t.Fatal(err)
	}
	return sts
}

// classFile is the image class and its bytes.
func classFile(t *testing.T) (string, []byte) {
	t.Helper()
	class := filepath.Join(layerRoot(t), "classes", "dstack-image.bbclass")
	data, err := os.ReadFile(class)
	if err != nil {
		t.Fatal(err)
	}
	return class, data
}

// layerNames are the repository's layers: the distro layer and the machine
// (BSP) layer beside it.
var layerNames = []string{"meta-dstack", "meta-dstack-bsp"}

// allMetadata reads the BitBake files of every layer of the repository.
func allMetadata(t *testing.T) (map[string][]Statement, []string) {
	t.Helper()
	all := map[string][]Statement{}
	var names []string
	for _, l := range layerNames {
		files, n, err := MetadataFiles(filepath.Join(testutil.RepoRoot(t), l))
		if err != nil {
			t.Fatal(err)
		}
		if len(n) == 0 {
			t.Fatalf("no metadata files in %s", l)
		}
		for k, v := range files {
			all[k] = v
		}
		names = append(names, n...)
	}
	return all, names
}

// TestLayersAreDistroOrBSP: yocto-check-layer stops at once on a layer with
// both conf/distro and conf/machine ("Can't be DISTRO and BSP type at the
// same time"); the distro and the machine live in separate layers.
func TestLayersAreDistroOrBSP(t *testing.T) {
	root := testutil.RepoRoot(t)
	kinds := map[string]string{}
	for _, l := range layerNames {
		if _, err := os.Stat(filepath.Join(root, l, "conf", "layer.conf")); err != nil {
			t.Fatalf("%s is not a layer: %v", l, err)
		}
		var has []string
		for _, k := range []string{"distro", "machine"} {
			if _, err := os.Stat(filepath.Join(root, l, "conf", k)); err == nil {
				has = append(has, k)
			}
		}
		if len(has) > 1 {
			t.Errorf("%s has both conf/distro and conf/machine: yocto-check-layer refuses it", l)
		}
		kinds[l] = strings.Join(has, "")
	}
	v := repoValues(t)
	if _, err := os.Stat(filepath.Join(root, "meta-dstack", "conf", "distro", v.Distro.Name+".conf")); err != nil {
		t.Errorf("the distro is not in meta-dstack: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "meta-dstack-bsp", "conf", "machine", v.Machine.Name+".conf")); err != nil {
		t.Errorf("the machine is not in meta-dstack-bsp: %v", err)
	}
	// yocto-check-layer's test_security looks for SECURITY* in the layer or at the top of the repository.
	if st, err := os.Stat(filepath.Join(root, "SECURITY.md")); err != nil || st.Size() == 0 {
		t.Errorf("no SECURITY.md with content at the top of the repository: %v", err)
	}
}

func repoValues(t *testing.T) *values.Values {
	v, err := values.Load(filepath.Join(testutil.RepoRoot(t), values.DefaultPath))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func parse(t *testing.T, src string) []Statement {
	t.Helper()
	sts, err := ParseStatements("x.conf", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return sts
}

func TestParseStatements(t *testing.T) {
	sts := parse(t, `# comment
FOO = "a"
BAR:append:tdx-guest = " \
    b \
    c \
"
BAZ[vardepsexclude] += "BB_ORIGENV"
export QUX ?= "${@d.getVar('X')}"
inherit core-image dstack-image
python do_x () {
    bb.note("x")
}
do_deploy:append:class-target:tdx-guest() {
	install a b
}
addtask do_x after do_image_complete before do_build
`)
	want := []Statement{
		{Line: 2, Var: "FOO", Op: "=", Value: "a"},
		{Line: 3, Var: "BAR:append:tdx-guest", Op: "=", Value: " \n    b \n    c \n"},
		{Line: 7, Var: "BAZ", Flag: "vardepsexclude", Op: "+=", Value: "BB_ORIGENV"},
		{Line: 8, Var: "QUX", Op: "?=", Value: "${@d.getVar('X')}"},
		{Line: 9, Directive: "inherit", Value: "core-image dstack-image"},
		{Line: 10, Func: "do_x", Python: true, Body: "    bb.note(\"x\")\n"},
		{Line: 13, Func: "do_deploy:append:class-target:tdx-guest", Body: "\tinstall a b\n"},
		{Line: 16, Directive: "addtask", Value: "do_x after do_image_complete before do_build"},
	}
	if len(sts) != len(want) {
		t.Fatalf("%d statements, want %d: %+v", len(sts), len(want), sts)
	}
	for i := range want {
		if sts[i] != want[i] {
			t.Errorf("statement %d = %+v, want %+v", i, sts[i], want[i])
		}
	}
	for _, bad := range []string{"FOO = unquoted\n", "this is not bitbake\n", "do_x() {\n\techo\n"} {
		if _, err := ParseStatements("bad.conf", []byte(bad)); err == nil || !strings.Contains(err.Error(), "bad.conf:1") {
			t.Errorf("%q: err = %v, want one naming bad.conf:1", bad, err)
		}
	}
	if !TaskAfter(sts, "do_x", "do_image_complete") || TaskAfter(sts, "do_x", "do_build") {
		t.Error("TaskAfter misreads addtask")
	}
}

func TestVarsExpand(t *testing.T) {
	v := Vars{}
	v.Apply(parse(t, `A ?= "/top/.."
A ?= "ignored"
B ?= "${A}/meta-dstack"
C = "x"
C .= "y"
C += "z"
D := "${C}"
C = "later"
E:append = "override ignored"
`))
	for k, want := range map[string]string{"A": "/top/..", "B": "${A}/meta-dstack", "C": "later", "D": "xy z"} {
		if v[k] != want {
			t.Errorf("%s = %q, want %q", k, v[k], want)
		}
	}
	if got := v.Expand("${B} ${UNKNOWN} ${@x}"); got != "/top/../meta-dstack ${UNKNOWN} ${@x}" {
		t.Errorf("Expand = %q", got)
	}
}

// TestOrigEnvCases: reading BB_ORIGENV (issue 18 item 1: 111 basehash errors)
// is caught unless excluded from the dependencies with a stable value.
func TestOrigEnvCases(t *testing.T) {
	cases := []struct {
		name, src string
		problems  int
	}{
		{"distro line as it was", `ENABLE_GCP_IMAGE ?= "${@(d.getVar('BB_ORIGENV', False).getVar('ENABLE_GCP_IMAGE') or '').strip() or '1'}"` + "\n", 2},
		{"excluded, no vardepvalue", "X = \"${@d.getVar('BB_ORIGENV', False).getVar('X')}\"\nX[vardepsexclude] = \"BB_ORIGENV\"\n", 1},
		{"vardepvalue, not excluded", "X = \"${@d.getVar('BB_ORIGENV', False).getVar('X')}\"\nX[vardepvalue] = \"1\"\n", 1},
		{"excluded with vardepvalue", "X = \"${@d.getVar('BB_ORIGENV', False).getVar('X')}\"\nX[vardepsexclude] += \"FOO BB_ORIGENV\"\nX[vardepvalue] = \"${X_DEFAULT}\"\n", 0},
		{"python function", "python do_x() {\n    e = d.getVar('BB_ORIGENV', False)\n}\n", 1},
		{"python function excluded", "python do_x() {\n    e = d.getVar('BB_ORIGENV', False)\n}\ndo_x[vardepsexclude] = \"BB_ORIGENV\"\n", 0},
		{"anonymous python", "python () {\n    e = d.getVar('BB_ORIGENV', False)\n}\n", 1},
		{"no use", "X = \"1\"\n", 0},
	}
	for _, c := range cases {
		got := OrigEnvProblems("x.conf", parse(t, c.src))
		if len(got) != c.problems {
			t.Errorf("%s: %d problems, want %d: %q", c.name, len(got), c.problems, got)
		}
	}
}

// TestLayerNoOrigEnvDependency: no file of the layer makes task hashes depend
// on BB_ORIGENV.
func TestLayerNoOrigEnvDependency(t *testing.T) {
	files, names := allMetadata(t)
	if len(names) < 10 {
		t.Fatalf("only %d metadata files found in the layer", len(names))
	}
	for _, n := range names {
		for _, p := range OrigEnvProblems(n, files[n]) {
			t.Error(p)
		}
	}
}

// TestAppendCases: bbappend statements must carry the machine (or distro)
// override (issue 18 item 4: an unscoped FILESEXTRAPATHS changed 442 task
// signatures of builds that do not use the layer).
func TestAppendCases(t *testing.T) {
	ov := []string{"tdx-guest", "dstack"}
	cases := []struct {
		name, src string
		problems  int
	}{
		{"kernel append as it was", "FILESEXTRAPATHS:prepend := \"${THISDIR}/files:\"\nSRC_URI:append:tdx-guest = \" file://a.cfg\"\n", 1},
		{"scoped", "FILESEXTRAPATHS:prepend:tdx-guest := \"${THISDIR}/files:\"\nKMACHINE:tdx-guest = \"common-pc-64\"\n", 0},
		{"distro scoped", "PACKAGECONFIG:append:dstack = \" x\"\n", 0},
		{"plain assignment", "KERNEL_FEATURES:append = \" cfg/x.scc\"\n", 1},
		{"flag", "do_deploy[depends] += \"x:do_y\"\n", 1},
		{"override that merely contains the machine name", "SRC_URI:append:tdx-guest-foo = \" x\"\n", 1},
		{"function", "do_deploy:append:class-target() {\n\tinstall a b\n}\n", 1},
		{"scoped function", "do_deploy:append:class-target:tdx-guest() {\n\tinstall a b\n}\n", 0},
		{"inherit", "inherit foo\n", 1},
		{"anonymous python", "python () {\n    pass\n}\n", 1},
	}
	for _, c := range cases {
		got := AppendProblems("x.bbappend", parse(t, c.src), ov)
		if len(got) != c.problems {
			t.Errorf("%s: %d problems, want %d: %q", c.name, len(got), c.problems, got)
		}
	}
}

// TestLayerAppendsScoped: every statement of the layer's bbappends is scoped to
// its machine or distro.
func TestLayerAppendsScoped(t *testing.T) {
	v := repoValues(t)
	files, names := allMetadata(t)
	seen := map[string]bool{}
	for _, n := range names {
		if filepath.Ext(n) != ".bbappend" {
			continue
		}
		seen[filepath.Base(n)] = true
		for _, p := range AppendProblems(n, files[n], []string{v.Machine.Name, v.Distro.Name}) {
			t.Error(p)
		}
	}
	for _, want := range []string{v.Kernel.Provider + "_%.bbappend", "busybox_%.bbappend"} {
		if !seen[want] {
			t.Errorf("%s not found: the check did not see the appends that matter", want)
		}
	}
}

// TestDistReadsDeployedRootfs: do_dstack_dist runs after do_image_complete,
// whose sstate step has moved IMGDEPLOYDIR's files into DEPLOY_DIR_IMAGE, so
// it must read the rootfs (and everything else) from DEPLOY_DIR_IMAGE (issue
// 18 item 2).
func TestDistReadsDeployedRootfs(t *testing.T) {
	class, data := classFile(t)
	check := func(data []byte) []string {
		sts, err := ParseStatements(class, data)
		if err != nil {
			t.Fatal(err)
		}
		var bad []string
		if !TaskAfter(sts, "do_dstack_dist", "do_image_complete") {
			bad = append(bad, "do_dstack_dist is not added after do_image_complete")
		}
		body := FuncBody(sts, "do_dstack_dist")
		if body == "" {
			return append(bad, "no do_dstack_dist function")
		}
		v := Vars{}
		v.Apply(sts)
		x := v.Expand(body)
		if strings.Contains(x, "IMGDEPLOYDIR") {
			bad = append(bad, "do_dstack_dist reads ${IMGDEPLOYDIR}, emptied by do_image_complete's sstate step:\n"+x)
		}
		if m := regexp.MustCompile(`--rootfs "([^"]*)"`).FindStringSubmatch(x); m == nil || m[1] != "${DEPLOY_DIR_IMAGE}/${IMAGE_LINK_NAME}.squashfs" {
			bad = append(bad, "--rootfs is not ${DEPLOY_DIR_IMAGE}/${IMAGE_LINK_NAME}.squashfs:\n"+x)
		}
		return bad
	}
	for _, p := range check(data) {
		t.Error(p)
	}
	// The defects the check exists for.
	for name, mutate := range map[string]func(string) string{
		"rootfs from IMGDEPLOYDIR": func(s string) string {
			return strings.Replace(s, `DSTACK_ROOTFS ?= "${DEPLOY_DIR_IMAGE}/`, `DSTACK_ROOTFS ?= "${IMGDEPLOYDIR}/`, 1)
		},
		"not after do_image_complete": func(s string) string {
			return strings.Replace(s, "addtask do_dstack_dist after do_image_complete", "addtask do_dstack_dist after do_image", 1)
		},
	} {
		m := mutate(string(data))
		if m == string(data) {
			t.Fatalf("%s: mutation did not apply", name)
		}
		if len(check([]byte(m))) == 0 {
			t.Errorf("%s: not caught", name)
		}
	}
}

// readmeFlow is the shell block of meta-dstack/README.md that sets up a
// build directory with TEMPLATECONF.
func readmeFlow(t *testing.T, readme string) []string {
	t.Helper()
	f, err := os.Open(readme)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var block []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case !in && l == "```sh":
			in, block = true, nil
		case in && l == "```":
			for _, b := range block {
				if strings.HasPrefix(b, "TEMPLATECONF=") {
					return block
				}
			}
			in = false
		case in:
			block = append(block, l)
		}
	}
	t.Fatalf("%s: no ```sh block with a TEMPLATECONF= line", readme)
	return nil
}

// TestTemplateConfFlowResolves follows meta-dstack/README.md's TEMPLATECONF
// flow in a directory laid out by its `git clone` lines (layers made from the
// values file; this repository linked in), does what oe-setup-builddir does
// (TEMPLATECONF must be <layer>/conf/templates/<name>, ##OEROOT## replaced in
// bblayers.conf.sample), and checks that every BBLAYERS entry is a layer
// (issue 18 item 3: the sample named a meta-dstack directory that was not one).
func TestTemplateConfFlowResolves(t *testing.T) {
	repo := testutil.RepoRoot(t)
	v := repoValues(t)
	block := readmeFlow(t, filepath.Join(repo, "meta-dstack", "README.md"))
	top := t.TempDir()
	flowProblems(t, top, block, v, repo)
}

func flowProblems(t *testing.T, top string, block []string, v *values.Values, repo string) {
	t.Helper()
	clone := regexp.MustCompile(`^git clone (?:-b \S+ )?(\S+)(?: (\S+))?$`)
	cloned := map[string]bool{}
	var templateconf, oeroot string
	for i := 0; i < len(block); i++ {
		l := block[i]
		for strings.HasSuffix(l, "\\") && i+1 < len(block) {
			i++
			l = strings.TrimSuffix(l, "\\") + " " + strings.TrimSpace(block[i])
		}
		if m := clone.FindStringSubmatch(l); m != nil {
			dir := m[2]
			if dir == "" {
				dir = strings.TrimSuffix(filepath.Base(m[1]), ".git")
			}
			cloned[dir] = true
			if strings.HasSuffix(m[1], "/meta-dstack.git") {
				if err := os.Symlink(repo, filepath.Join(top, dir)); err != nil {
					t.Fatal(err)
				}
				continue
			}
			pin, err := v.Pin(dir)
			if err != nil {
				t.Fatalf("README clones %s into %s, which the values file does not pin: %v", m[1], dir, err)
			}
			if pin.URL != m[1] {
				t.Errorf("README clones %s from %s, the values file pins %s", dir, m[1], pin.URL)
			}
			for _, sd := range pin.Subdirs {
				lc := filepath.Join(top, dir, sd, "conf", "layer.conf")
				if err := os.MkdirAll(filepath.Dir(lc), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(lc, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.MkdirAll(filepath.Join(top, dir), 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if strings.HasPrefix(l, "TEMPLATECONF=") {
			f := strings.Fields(l)
			templateconf = strings.ReplaceAll(strings.TrimPrefix(f[0], "TEMPLATECONF="), "$PWD", top)
			if len(f) < 3 || f[1] != "." || !strings.HasSuffix(f[2], "/oe-init-build-env") {
				t.Fatalf("README's TEMPLATECONF line does not source oe-init-build-env: %q", l)
			}
			oeroot = filepath.Join(top, filepath.Dir(f[2]))
		}
	}
	for _, p := range v.Layers {
		if !cloned[p.Name] {
			t.Errorf("README's flow does not clone %s", p.Name)
		}
	}
	// oe-setup-builddir's own checks of TEMPLATECONF.
	if filepath.Base(filepath.Dir(templateconf)) != "templates" {
		t.Fatalf("TEMPLATECONF %s is not <layer>/conf/templates/<name>", templateconf)
	}
	if _, err := os.Stat(filepath.Join(templateconf, "..", "..", "layer.conf")); err != nil {
		t.Fatalf("TEMPLATECONF %s: oe-setup-builddir needs ../../layer.conf: %v", templateconf, err)
	}
	if rel, _ := filepath.Rel(top, oeroot); !cloned[rel] {
		t.Fatalf("README sources oe-init-build-env from %s, which it does not clone", oeroot)
	}
	sample, err := os.ReadFile(filepath.Join(templateconf, "bblayers.conf.sample"))
	if err != nil {
		t.Fatal(err)
	}
	sts, err := ParseStatements("bblayers.conf.sample", []byte(strings.ReplaceAll(string(sample), "##OEROOT##", oeroot)))
	if err != nil {
		t.Fatal(err)
	}
	vars := Vars{}
	vars.Apply(sts)
	layers := strings.Fields(vars.Expand(vars["BBLAYERS"]))
	want := map[string]bool{}
	for _, p := range v.Layers {
		for _, sd := range p.Subdirs {
			want[filepath.Join(top, p.Name, sd)] = true
		}
	}
	found := map[string]bool{}
	for _, l := range layers {
		if strings.Contains(l, "${") {
			t.Errorf("BBLAYERS entry %s is not resolved by the sample", l)
			continue
		}
		if _, err := os.Stat(filepath.Join(l, "conf", "layer.conf")); err != nil {
			t.Errorf("BBLAYERS entry %s is not a layer in the README's layout: %v", l, err)
			continue
		}
		delete(want, filepath.Clean(l))
		if r, err := filepath.EvalSymlinks(l); err == nil {
			found[r] = true
		}
	}
	for l := range want {
		t.Errorf("BBLAYERS lacks %s", l)
	}
	for _, l := range layerNames {
		if !found[filepath.Join(repo, l)] {
			t.Errorf("BBLAYERS %q does not name this repository's %s layer", layers, l)
		}
	}
}

// TestIsMetadata: only conf/ directories hold BitBake .conf files; a .conf a
// recipe installs (an sshd drop-in) is not parsed.
func TestIsMetadata(t *testing.T) {
	for p, want := range map[string]bool{
		"/l/conf/layer.conf":                   true,
		"/l/conf/machine/tdx-guest.conf":       true,
		"/l/conf/multiconfig/prod.conf":        true,
		"/l/recipes-x/y/files/dstack-dev.conf": false,
		"/l/recipes-x/y/y_1.0.bb":              true,
		"/l/recipes-x/y/y_%.bbappend":          true,
		"/l/classes/dstack-image.bbclass":      true,
		"/l/recipes-x/y/files/journald.conf":   false,
		"/l/recipes-x/y/files/confd/x.conf":    false,
		"/l/recipes-x/y/files/script.sh":       false,
	} {
		if got := isMetadata("/l", p); got != want {
			t.Errorf("isMetadata(%s) = %v, want %v", p, got, want)
		}
	}
}

// TestInitramfsBusyboxStatic: /init's interpreter runs with the kernel's
// environment (issue 14), so the distro's busybox (the initramfs's sh and
// env) is linked statically: the busybox append adds, for the distro only, a
// configuration fragment that sets CONFIG_STATIC=y, and the initramfs installs
// busybox.
func TestInitramfsBusyboxStatic(t *testing.T) {
	v := repoValues(t)
	app := filepath.Join(layerRoot(t), "recipes-core", "busybox", "busybox_%.bbappend")
	sts := readStatements(t, app)
	var cfgs []string
	for _, s := range sts {
		if s.Var != "SRC_URI:append:"+v.Distro.Name {
			continue
		}
		for _, w := range strings.Fields(s.Value) {
			if strings.HasPrefix(w, "file://") && strings.HasSuffix(w, ".cfg") {
				cfgs = append(cfgs, strings.TrimPrefix(w, "file://"))
			}
		}
	}
	static := false
	for _, c := range cfgs {
		f, err := os.Open(filepath.Join(filepath.Dir(app), "files", c))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "CONFIG_STATIC=y" {
				static = true
			}
		}
		f.Close()
	}
	if !static {
		t.Errorf("%s: no fragment in SRC_URI:append:%s sets CONFIG_STATIC=y (fragments %q)", app, v.Distro.Name, cfgs)
	}
	found := false
	for _, p := range v.Images.InitramfsPackages {
		found = found || p == "busybox"
	}
	if !found {
		t.Errorf("the initramfs packages %q have no busybox", v.Images.InitramfsPackages)
	}
}
