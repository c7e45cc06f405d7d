package layerlint

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/values"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/dist"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/measure"
)

// The firmware the measurements are defined for (issue 15): upstream's
// dstack-ovmf builds edk2-stable202502 from OvmfPkg/IntelTdx/IntelTdxX64.dsc
// with `OvmfPkg/build.sh -p <dsc> -a X64 -b RELEASE -t GCC5` (meta-dstack
// v0.5.11 and d403f7d, meta-dstack/recipes-core/dstack-ovmf/dstack-ovmf_git.bb).
const (
	firmwareDSC       = "OvmfPkg/IntelTdx/IntelTdxX64.dsc"
	firmwareArch      = "X64"
	firmwareTarget    = "RELEASE"
	firmwareToolchain = "GCC5"
	// firmwareOutputDir is IntelTdxX64.dsc's OUTPUT_DIRECTORY at
	// edk2-stable202502: the build writes Build/IntelTdx/RELEASE_GCC5/FV/OVMF.fd.
	firmwareOutputDir = "Build/IntelTdx"
)

// firmwareRecipe is the path of the dstack-ovmf recipe for the values'
// firmware tag: PV comes from the file name.
func firmwareRecipe(t *testing.T, v *values.Values) string {
	return filepath.Join(bspRoot(t), "recipes-core", "dstack-ovmf", "dstack-ovmf_"+v.Firmware.Tag+".bb")
}

// buildArg matches one option of the edk2 build command line as do_compile
// passes it: -p "x", -a x, ...
var buildArg = regexp.MustCompile(`(?:^|\s)-([A-Za-z])\s*("[^"]*"|[^\s"\\]+)`)

// firmwareProblems checks the dstack-ovmf recipe (path, data) against the
// values: edk2 at the pinned tag and commit with its submodules, the TDX
// platform built as upstream builds it, ovmf.fd deployed, only for the
// machine, and the tag's event layout the one imgpost dist records.
func firmwareProblems(path string, data []byte, v *values.Values) []string {
	var bad []string
	sts, err := ParseStatements(path, data)
	if err != nil {
		return []string{err.Error()}
	}
	pv := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), "dstack-ovmf_"), ".bb")
	if pv != v.Firmware.Tag {
		bad = append(bad, fmt.Sprintf("%s: PV (the file name's version) is %q, not the pinned tag %q", path, pv, v.Firmware.Tag))
	}
	vars := Vars{"PV": pv}
	for _, s := range sts {
		if s.Var == "PV" || strings.HasPrefix(s.Var, "PV:") {
			bad = append(bad, fmt.Sprintf("%s:%d: sets PV; the file name is its only source", path, s.Line))
		}
	}
	vars.Apply(sts)

	if got := vars["SRCREV"]; got != v.Firmware.Commit {
		bad = append(bad, fmt.Sprintf("%s: SRCREV %q, want the pinned commit %q", path, got, v.Firmware.Commit))
	}
	src := strings.Fields(vars.Expand(vars["SRC_URI"]))
	wantURL := "gitsm://" + strings.TrimPrefix(v.Firmware.URL, "https://")
	if len(src) != 1 {
		bad = append(bad, fmt.Sprintf("%s: SRC_URI %q: want exactly the edk2 repository", path, src))
	} else {
		parts := strings.Split(src[0], ";")
		params := map[string]string{}
		for _, p := range parts[1:] {
			k, val, _ := strings.Cut(p, "=")
			params[k] = val
		}
		if parts[0] != wantURL {
			bad = append(bad, fmt.Sprintf("%s: SRC_URI fetches %q, want %q (gitsm: edk2 with its submodules)", path, parts[0], wantURL))
		}
		if params["tag"] != v.Firmware.Tag {
			bad = append(bad, fmt.Sprintf("%s: SRC_URI tag=%q, want %q (the fetcher checks the tag resolves to SRCREV)", path, params["tag"], v.Firmware.Tag))
		}
		if params["protocol"] != "https" {
			bad = append(bad, fmt.Sprintf("%s: SRC_URI protocol=%q, want https", path, params["protocol"]))
		}
	}
	if got, want := vars["COMPATIBLE_MACHINE"], "^"+regexp.QuoteMeta(v.Machine.Name)+"$"; got != want {
		bad = append(bad, fmt.Sprintf("%s: COMPATIBLE_MACHINE %q, want %q (the firmware is the machine's; other machines skip it)", path, got, want))
	}
	deps := strings.Fields(vars["DEPENDS"])
	for _, need := range []string{"ovmf-native", "nasm-native", "acpica-native"} {
		if !containsWord(strings.Join(deps, " "), need) {
			bad = append(bad, fmt.Sprintf("%s: DEPENDS %q lacks %s", path, deps, need))
		}
	}

	// The build: edksetup.sh, then build with exactly upstream's options.
	compile := vars.Expand(FuncBody(sts, "do_compile"))
	if compile == "" {
		bad = append(bad, path+": no do_compile")
	}
	if !strings.Contains(compile, "edksetup.sh") {
		bad = append(bad, path+": do_compile does not source edksetup.sh")
	}
	i := strings.Index(compile, " build ")
	if j := strings.Index(compile, `build "$@"`); j >= 0 {
		i = j
	}
	opts := map[string][]string{}
	if i < 0 {
		bad = append(bad, path+": do_compile runs no edk2 build:\n"+compile)
	} else {
		for _, m := range buildArg.FindAllStringSubmatch(compile[i:], -1) {
			opts[m[1]] = append(opts[m[1]], strings.Trim(m[2], `"`))
		}
	}
	for _, o := range []struct{ flag, want string }{
		{"p", firmwareDSC}, {"a", firmwareArch}, {"b", firmwareTarget}, {"t", firmwareToolchain},
	} {
		if got := opts[o.flag]; len(got) != 1 || got[0] != o.want {
			bad = append(bad, fmt.Sprintf("%s: edk2 build -%s %q, want exactly %q:\n%s", path, o.flag, got, o.want, compile))
		}
	}
	if d := opts["D"]; len(d) > 0 {
		bad = append(bad, fmt.Sprintf("%s: edk2 build defines %q; upstream's build passes none (IntelTdxX64.dsc's defaults)", path, d))
	}

	// The deployed file: the build's OVMF.fd as ovmf.fd, after do_compile.
	deploy := vars.Expand(FuncBody(sts, "do_deploy"))
	from := fmt.Sprintf("/%s/%s_%s/FV/OVMF.fd", firmwareOutputDir, firmwareTarget, firmwareToolchain)
	m := regexp.MustCompile(`install -m 0644 "([^"]+)" "\$\{DEPLOYDIR\}/([^"]+)"`).FindStringSubmatch(deploy)
	switch {
	case m == nil:
		bad = append(bad, path+": do_deploy installs nothing into ${DEPLOYDIR}:\n"+deploy)
	case m[2] != dist.OVMFName:
		bad = append(bad, fmt.Sprintf("%s: do_deploy deploys %q, want %q (what the image class hands imgpost dist)", path, m[2], dist.OVMFName))
	case !strings.HasSuffix(m[1], from):
		bad = append(bad, fmt.Sprintf("%s: do_deploy installs %q, not the build's %s", path, m[1], strings.TrimPrefix(from, "/")))
	}
	if !TaskAfter(sts, "do_deploy", "do_compile") {
		bad = append(bad, path+": do_deploy is not added after do_compile")
	}
	inherits := ""
	for _, s := range sts {
		if s.Directive == "inherit" {
			inherits += " " + s.Value
		}
	}
	if !containsWord(inherits, "deploy") {
		bad = append(bad, path+": does not inherit deploy")
	}

	// The NASM 3 fix runs after do_patch.
	fixed := false
	for _, s := range sts {
		if s.Var == "do_patch" && s.Flag == "postfuncs" {
			for _, f := range strings.Fields(s.Value) {
				fixed = fixed || strings.Contains(FuncBody(sts, f), "ExceptionHandlerAsm.nasm")
			}
		}
	}
	if !fixed {
		bad = append(bad, path+": no do_patch postfunc fixes ExceptionHandlerAsm.nasm for NASM 3")
	}

	// The layout the tag gives is the one dist records in metadata.json.
	if variant, err := measure.EDK2Variant(pv); err != nil {
		bad = append(bad, fmt.Sprintf("%s: %v", path, err))
	} else if variant != dist.OVMFVariant {
		bad = append(bad, fmt.Sprintf("%s: %s gives the OVMF event layout %q, but imgpost dist records ovmf_variant %q", path, pv, variant, dist.OVMFVariant))
	}
	return bad
}

// TestFirmwareRecipe: the BSP layer builds the firmware the measurements are
// defined for, as upstream's dstack-ovmf does (issue 15).
func TestFirmwareRecipe(t *testing.T) {
	v := repoValues(t)
	path := firmwareRecipe(t, v)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range firmwareProblems(path, data, v) {
		t.Error(p)
	}
	// What the check exists for: each of these must be caught.
	for _, c := range []struct{ name, old, new string }{
		{"other commit", `SRCREV = "` + v.Firmware.Commit + `"`, `SRCREV = "0000000000000000000000000000000000000000"`},
		{"no tag check", ";tag=${PV}", ""},
		{"without submodules", `SRC_URI = "gitsm://`, `SRC_URI = "git://`},
		{"PV set", "\nDEPENDS = ", "\nPV = \"edk2-stable202505\"\nDEPENDS = "},
		{"generic OVMF", `EDK2_PLATFORM = "OvmfPkg/IntelTdx/IntelTdxX64.dsc"`, `EDK2_PLATFORM = "OvmfPkg/OvmfPkgX64.dsc"`},
		{"debug build", `EDK2_BUILD_TARGET = "RELEASE"`, `EDK2_BUILD_TARGET = "DEBUG"`},
		{"other tool chain", `EDK2_TOOLCHAIN = "GCC5"`, `EDK2_TOOLCHAIN = "GCC"`},
		{"extra define", `-t "${EDK2_TOOLCHAIN}"`, `-t "${EDK2_TOOLCHAIN}" -D SECURE_BOOT_ENABLE=TRUE`},
		{"deploys the code half", `"${DEPLOYDIR}/ovmf.fd"`, `"${DEPLOYDIR}/ovmf.code.fd"`},
		{"deploys another build", `EDK2_OUTPUT_DIR = "${S}/Build/IntelTdx"`, `EDK2_OUTPUT_DIR = "${S}/Build/OvmfX64"`},
		{"any machine", `COMPATIBLE_MACHINE = "^` + v.Machine.Name + `$"`, `COMPATIBLE_MACHINE = "` + v.Machine.Name + `"`},
		{"no deploy task", "addtask deploy after do_compile before do_build", "addtask deploy before do_build"},
		{"no NASM fix", `do_patch[postfuncs] += "dstack_ovmf_nasm3"`, ""},
		{"no BaseTools", `DEPENDS = "ovmf-native `, `DEPENDS = "`},
	} {
		m := strings.Replace(string(data), c.old, c.new, 1)
		if m == string(data) {
			t.Fatalf("%s: mutation did not apply", c.name)
		}
		if len(firmwareProblems(path, []byte(m), v)) == 0 {
			t.Errorf("%s: not caught", c.name)
		}
	}
	// A recipe for another tag (renamed file), whose layout dstack's verifier
	// does not accept.
	other := *v
	other.Firmware.Tag = "edk2-stable202505"
	if len(firmwareProblems(path, data, &other)) == 0 {
		t.Error("a recipe for another tag than the pinned one: not caught")
	}
	renamed := filepath.Join(filepath.Dir(path), "dstack-ovmf_edk2-stable202505.bb")
	ps := firmwareProblems(renamed, []byte(strings.ReplaceAll(string(data), v.Firmware.Tag, "edk2-stable202505")), &other)
	if !strings.Contains(strings.Join(ps, "\n"), "event layout is not known") {
		t.Errorf("edk2-stable202505 (a layout dstack no longer accepts): not caught: %q", ps)
	}
}

// TestImageDependsOnFirmware: the machine (meta-dstack-bsp) makes the image
// class ship dstack-ovmf's ovmf.fd and depend on its do_deploy; the distro
// layer alone names no recipe of the BSP layer (yocto-check-layer tests it
// without the BSP layer); no layer touches openembedded-core's ovmf.
func TestImageDependsOnFirmware(t *testing.T) {
	class, data := classFile(t)
	v := repoValues(t)
	mconf := filepath.Join(bspRoot(t), "conf", "machine", v.Machine.Name+".conf")
	mdata, err := os.ReadFile(mconf)
	if err != nil {
		t.Fatal(err)
	}
	depends := func(sts []Statement, vars Vars) string {
		deps := ""
		for _, s := range sts {
			if s.Var == "do_dstack_dist" && s.Flag == "depends" {
				deps += " " + vars.Expand(s.Value)
			}
		}
		return deps
	}
	check := func(data, mdata []byte) []string {
		sts, err := ParseStatements(class, data)
		if err != nil {
			return []string{err.Error()}
		}
		msts, err := ParseStatements(mconf, mdata)
		if err != nil {
			return []string{err.Error()}
		}
		var bad []string
		// The class alone (the distro layer without the BSP layer).
		alone := Vars{}
		alone.Apply(sts)
		if d := depends(sts, alone); strings.Contains(d, "dstack-ovmf") || alone["DSTACK_OVMF"] != "" {
			bad = append(bad, fmt.Sprintf("without the machine, the class ships %q and depends on %q", alone["DSTACK_OVMF"], d))
		}
		// The machine's configuration is read before the class.
		vars := Vars{}
		vars.Apply(msts)
		vars.Apply(sts)
		if got, want := vars["DSTACK_OVMF"], "${DEPLOY_DIR_IMAGE}/"+dist.OVMFName; got != want {
			bad = append(bad, fmt.Sprintf("DSTACK_OVMF is %q with the machine, want %q (dstack-ovmf's deployed firmware)", got, want))
		}
		deps := depends(sts, vars)
		if !strings.Contains(deps, "'dstack-ovmf:do_deploy'") {
			bad = append(bad, fmt.Sprintf("do_dstack_dist[depends] does not name dstack-ovmf:do_deploy: %q", deps))
		}
		if regexp.MustCompile(`(^|[\s'])ovmf:do_deploy`).MatchString(deps) {
			bad = append(bad, fmt.Sprintf("do_dstack_dist[depends] names openembedded-core's ovmf: %q", deps))
		}
		return bad
	}
	for _, p := range check(data, mdata) {
		t.Error(p)
	}
	for name, mutate := range map[string]func(c, m string) (string, string){
		"oe-core's ovmf": func(c, m string) (string, string) {
			return c, strings.Replace(m, "'dstack-ovmf:do_deploy'", "'ovmf:do_deploy'", 1)
		},
		"no firmware dependency": func(c, m string) (string, string) {
			return strings.Replace(c, "    ${DSTACK_OVMF_DEPENDS} \\\n", "", 1), m
		},
		"other file": func(c, m string) (string, string) {
			return c, strings.Replace(m, `DSTACK_OVMF ?= "${DEPLOY_DIR_IMAGE}/ovmf.fd"`, `DSTACK_OVMF ?= "${DEPLOY_DIR_IMAGE}/OVMF.fd"`, 1)
		},
		"the class names the BSP's recipe": func(c, m string) (string, string) {
			return strings.Replace(c, `DSTACK_OVMF_DEPENDS ?= ""`, `DSTACK_OVMF_DEPENDS ?= "dstack-ovmf:do_deploy"`, 1), m
		},
	} {
		c, m := mutate(string(data), string(mdata))
		if c == string(data) && m == string(mdata) {
			t.Fatalf("%s: mutation did not apply", name)
		}
		if len(check([]byte(c), []byte(m))) == 0 {
			t.Errorf("%s: not caught", name)
		}
	}
	_, names := allMetadata(t)
	for _, n := range names {
		if b := filepath.Base(n); strings.HasPrefix(b, "ovmf_") || strings.HasPrefix(b, "ovmf-") {
			t.Errorf("%s: the layers build dstack-ovmf, not openembedded-core's ovmf", n)
		}
	}
}
