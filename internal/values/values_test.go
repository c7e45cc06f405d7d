package values

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func defaultFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join("..", "..", DefaultPath)
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadDefault(t *testing.T) {
	v, err := Load(defaultFile(t))
	if err != nil {
		t.Fatal(err)
	}
	if v.Distro.Name != "dstack" || v.Machine.Name != "tdx-guest" {
		t.Errorf("distro %q machine %q", v.Distro.Name, v.Machine.Name)
	}
	for _, n := range []string{"bitbake", "openembedded-core", "meta-openembedded", "meta-virtualization"} {
		if _, err := v.Pin(n); err != nil {
			t.Error(err)
		}
	}
	if v.Firmware.Tag != "edk2-stable202502" || v.Firmware.Commit != "fbe0805b2091393406952e84724188f8c1941837" {
		t.Errorf("firmware %+v, want edk2-stable202502 at fbe0805b", v.Firmware)
	}
	if got := v.FlavorNames(); strings.Join(got, ",") != "prod,dev" {
		t.Errorf("flavors %v", got)
	}
	if _, err := v.Flavor("nope"); err == nil {
		t.Error("Flavor(nope) succeeded")
	}
	if !strings.HasPrefix(v.CmdlineBase(), "console=ttyS0 ") {
		t.Errorf("cmdline %q", v.CmdlineBase())
	}
	m, err := v.Map()
	if err != nil {
		t.Fatal(err)
	}
	if m["distro"].(map[string]any)["version"] != v.Distro.Version {
		t.Errorf("Map distro.version = %#v", m["distro"].(map[string]any)["version"])
	}
}

// TestMapKeepsStrings checks that a version such as 1.0 stays the string "1.0".
func TestMapKeepsStrings(t *testing.T) {
	data, err := os.ReadFile(defaultFile(t))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(data), "version: 0.5.5", "version: 1.0", 1)
	v, err := Parse("x.yaml", []byte(s))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := v.Map()
	if got := m["distro"].(map[string]any)["version"]; got != "1.0" {
		t.Fatalf("distro.version in Map = %#v, want \"1.0\"", got)
	}
}

func TestBadValues(t *testing.T) {
	data, err := os.ReadFile(defaultFile(t))
	if err != nil {
		t.Fatal(err)
	}
	good := string(data)
	cases := []struct {
		name    string
		edit    func(string) string
		key     string // expected key in the error ("" = none)
		wantMsg string
	}{
		{"malformed", func(s string) string { return s + "\n  bad: [unclosed\n" }, "", "malformed YAML"},
		{"empty", func(string) string { return "" }, "", "empty"},
		{"missing top", func(s string) string { return strings.Replace(s, "\nmachine:", "\nmachinx:", 1) }, "machine", "required key is missing"},
		{"missing nested", func(s string) string { return strings.Replace(s, "  version: 0.5.5 ", "  versio: 0.5.5 ", 1) }, "distro.version", "required key is missing"},
		{"missing in list", func(s string) string {
			return strings.Replace(s, "    commit: ef022bf82d79015802309d14c28b13373ebe53f5\n", "", 1)
		}, "layers[1].commit", "required key is missing"},
		{"bad commit", func(s string) string {
			return strings.Replace(s, "ef022bf82d79015802309d14c28b13373ebe53f5", "ef022bf", 1)
		}, "layers[1].commit", "40-hex"},
		{"unknown key", func(s string) string { return s + "\nextra: 1\n" }, "extra", "unknown key"},
		{"wrong shape", func(s string) string { return strings.Replace(s, "\ngcp:\n", "\ngcp: 3\nxgcp:\n", 1) }, "gcp", "must be a mapping"},
		{"wrong type", func(s string) string { return strings.Replace(s, "priority: 10", "priority: high", 1) }, "", "wrong type"},
		{"empty version", func(s string) string { return strings.Replace(s, "version: 0.5.5", `version: ""`, 1) }, "distro.version", "must not be empty"},
		{"imgpost arg", func(s string) string { return strings.Replace(s, "- tsc=reliable", "- coherent_pool=4M", 1) }, "kernel.cmdline[11]", "added by imgpost"},
		{"firmware missing", func(s string) string { return strings.Replace(s, "\nfirmware:\n", "\nfirmwarx:\n", 1) }, "firmware", "required key is missing"},
		{"firmware tag unknown", func(s string) string {
			return strings.Replace(s, "tag: edk2-stable202502", "tag: edk2-stable202511", 1)
		}, "firmware.tag", "not known"},
		{"firmware tag of another layout", func(s string) string {
			return strings.Replace(s, "tag: edk2-stable202502", "tag: edk2-stable202505", 1)
		}, "firmware.tag", "not known"},
		{"firmware commit short", func(s string) string {
			return strings.Replace(s, "commit: fbe0805b2091393406952e84724188f8c1941837", "commit: fbe0805b", 1)
		}, "firmware.commit", "40-hex"},
		{"firmware url", func(s string) string {
			return strings.Replace(s, "url: https://github.com/tianocore/edk2.git", "url: git@github.com:tianocore/edk2.git", 1)
		}, "firmware.url", "https://"},
		{"duplicate flavor", func(s string) string { return strings.Replace(s, "- name: dev\n", "- name: prod\n", 1) }, "flavors[1].name", "duplicate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.edit(good)
			if s == good {
				t.Fatal("edit changed nothing")
			}
			_, err := Parse("my-values.yaml", []byte(s))
			if err == nil {
				t.Fatal("no error")
			}
			var ve *Error
			if !errors.As(err, &ve) {
				t.Fatalf("error %v is not *values.Error", err)
			}
			if ve.File != "my-values.yaml" || ve.Key != c.key || !strings.Contains(ve.Msg, c.wantMsg) {
				t.Fatalf("got file %q key %q msg %q; want key %q msg containing %q", ve.File, ve.Key, ve.Msg, c.key, c.wantMsg)
			}
			if !strings.Contains(err.Error(), "my-values.yaml") {
				t.Fatalf("error %q does not name the file", err)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.yaml"))
	if err == nil || !strings.Contains(err.Error(), "none.yaml") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v", err)
	}
}
