// Package values loads the values file that drives both the layer generator
// (`mage layer`, templates/ → meta-dstack/) and the build (`mage build`):
// distro name and version, the pinned layers, flavors, machine, kernel,
// command line, GCP options and shared-cache knobs.
//
// Load rejects malformed YAML, unknown keys and missing required keys, always
// naming the file and the key. The typed Values gives Go code checked access;
// Values.Map gives templates the same data as plain maps, so that a template
// referring to a key that does not exist fails (missingkey=error).
package values

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/measure"
)

// DefaultPath is the default values file, relative to the repository root.
const DefaultPath = "templates/values.yaml"

// Values is the whole values file.
type Values struct {
	Distro     Distro     `yaml:"distro"`
	Layer      Layer      `yaml:"layer"`
	Machine    Machine    `yaml:"machine"`
	Layers     []Pin      `yaml:"layers"`
	Kernel     Kernel     `yaml:"kernel"`
	Images     Images     `yaml:"images"`
	Flavors    []Flavor   `yaml:"flavors"`
	GCP        GCP        `yaml:"gcp"`
	GuestAgent GuestAgent `yaml:"guest_agent"`
	Firmware   Firmware   `yaml:"firmware"`
	Cache      Cache      `yaml:"cache"`

	path string
}

// Distro names the distribution and the Yocto release series it targets.
type Distro struct {
	Name              string   `yaml:"name"`               // DISTRO and the dist name of images/<name>-<version>/
	Title             string   `yaml:"title"`              // DISTRO_NAME
	Version           string   `yaml:"version"`            // DISTRO_VERSION
	LayerSeriesCompat []string `yaml:"layerseries_compat"` // LAYERSERIES_COMPAT_<collection>
}

// Layer describes meta-dstack's own conf/layer.conf.
type Layer struct {
	Collection string   `yaml:"collection"` // BBFILE_COLLECTIONS
	Priority   int      `yaml:"priority"`   // BBFILE_PRIORITY
	Depends    []string `yaml:"depends"`    // LAYERDEPENDS
}

// Machine is the MACHINE the layer defines.
type Machine struct {
	Name           string `yaml:"name"`
	SerialConsoles string `yaml:"serial_consoles"`
}

// Pin is one layer repository fetched at an exact commit.
type Pin struct {
	Name    string   `yaml:"name"`
	URL     string   `yaml:"url"`
	Branch  string   `yaml:"branch"`
	Commit  string   `yaml:"commit"`
	Subdirs []string `yaml:"subdirs"` // layer directories inside the repository ("." = its root); empty for bitbake
}

// Kernel selects the kernel and its base command line.
type Kernel struct {
	Provider string   `yaml:"provider"` // PREFERRED_PROVIDER_virtual/kernel
	Version  string   `yaml:"version"`  // PREFERRED_VERSION_<provider>
	Cmdline  []string `yaml:"cmdline"`  // base arguments; imgpost adds coherent_pool=8M and the dstack.rootfs_* ones
}

// Images names the image recipes and their package lists.
type Images struct {
	Rootfs            string   `yaml:"rootfs"`
	Initramfs         string   `yaml:"initramfs"`
	RootfsPackages    []string `yaml:"rootfs_packages"`
	InitramfsPackages []string `yaml:"initramfs_packages"`
}

// Flavor is one build variant (a multiconfig) and what it adds to the rootfs.
type Flavor struct {
	Name     string   `yaml:"name"`
	Dev      bool     `yaml:"dev"`
	Packages []string `yaml:"packages"`
	Features []string `yaml:"features"` // EXTRA_IMAGE_FEATURES
}

// GCP holds the Google Cloud image options.
type GCP struct {
	Enable       bool     `yaml:"enable"`
	CmdlineExtra []string `yaml:"cmdline_extra" values:"optional"`
}

// GuestAgent pins the dstack guest agent's sources.
type GuestAgent struct {
	URL     string `yaml:"url"`
	Branch  string `yaml:"branch"`
	Commit  string `yaml:"commit"`
	Version string `yaml:"version"`
}

// Firmware pins the TDX firmware the BSP layer builds (recipe dstack-ovmf):
// edk2 at a release tag. The tag decides the firmware's boot-time event
// layout, the ovmf_variant imgpost dist records and imgpost measure
// predicts, so only a tag whose layout imgpost models is accepted.
type Firmware struct {
	URL    string `yaml:"url"`    // edk2 repository, https://host/path.git
	Tag    string `yaml:"tag"`    // release tag, the recipe's PV (dstack-ovmf_<tag>.bb)
	Commit string `yaml:"commit"` // the tag's commit (SRCREV)
}

// Cache holds the shared build-cache knobs; empty strings mean BitBake's defaults.
type Cache struct {
	DLDir             string `yaml:"dl_dir"`
	SstateDir         string `yaml:"sstate_dir"`
	SstateMirrors     string `yaml:"sstate_mirrors"`
	Hashserve         string `yaml:"hashserve"`
	HashserveUpstream string `yaml:"hashserve_upstream" values:"optional"`
}

// Error is a problem with a values file: the file, the key (dotted path, may
// be empty for a syntax error) and what is wrong.
type Error struct {
	File string
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("values file %s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("values file %s: key %s: %s", e.File, e.Key, e.Msg)
}

// Load reads, checks and returns the values file at path.
func Load(path string) (*Values, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("values file %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse checks and decodes data, naming it path in errors.
func Parse(path string, data []byte) (*Values, error) {
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, &Error{File: path, Msg: "malformed YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if raw == nil {
		return nil, &Error{File: path, Msg: "empty values file"}
	}
	if err := checkKeys(path, "", reflect.TypeOf(Values{}), raw); err != nil {
		return nil, err
	}
	v := &Values{path: path}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return nil, &Error{File: path, Msg: "wrong type: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if err := v.validate(); err != nil {
		return nil, err
	}
	return v, nil
}

// checkKeys reports the first (sorted) missing required key or unknown key
// of node against the yaml-tagged struct type t.
func checkKeys(file, prefix string, t reflect.Type, node any) error {
	m, ok := node.(map[string]any)
	if !ok {
		return &Error{File: file, Key: strings.TrimSuffix(prefix, "."), Msg: fmt.Sprintf("must be a mapping, not %s", kind(node))}
	}
	known := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" || !f.IsExported() {
			continue
		}
		known[name] = true
		key := prefix + name
		val, present := m[name]
		if !present {
			if f.Tag.Get("values") == "optional" {
				continue
			}
			return &Error{File: file, Key: key, Msg: "required key is missing"}
		}
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct:
			if err := checkKeys(file, key+".", ft, val); err != nil {
				return err
			}
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			list, ok := val.([]any)
			if !ok {
				return &Error{File: file, Key: key, Msg: fmt.Sprintf("must be a list, not %s", kind(val))}
			}
			for j, el := range list {
				if err := checkKeys(file, fmt.Sprintf("%s[%d].", key, j), ft.Elem(), el); err != nil {
					return err
				}
			}
		}
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if !known[k] {
			return &Error{File: file, Key: prefix + k, Msg: "unknown key"}
		}
	}
	return nil
}

func kind(v any) string {
	switch v.(type) {
	case nil:
		return "empty"
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	default:
		return fmt.Sprintf("the scalar %v", v)
	}
}

var (
	commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)
	edk2URL  = regexp.MustCompile(`^https://[a-z0-9.-]+/[A-Za-z0-9._/-]+\.git$`)
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._+-]*$`)
)

func (v *Values) validate() error {
	bad := func(key, format string, args ...any) error {
		return &Error{File: v.path, Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	nonEmpty := map[string]string{
		"distro.name": v.Distro.Name, "distro.title": v.Distro.Title, "distro.version": v.Distro.Version,
		"layer.collection": v.Layer.Collection, "machine.name": v.Machine.Name,
		"kernel.provider": v.Kernel.Provider, "kernel.version": v.Kernel.Version,
		"images.rootfs": v.Images.Rootfs, "images.initramfs": v.Images.Initramfs,
		"guest_agent.url": v.GuestAgent.URL, "guest_agent.version": v.GuestAgent.Version,
	}
	keys := make([]string, 0, len(nonEmpty))
	for k := range nonEmpty {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.TrimSpace(nonEmpty[k]) == "" {
			return bad(k, "must not be empty")
		}
	}
	for _, k := range []struct{ key, val string }{
		{"distro.name", v.Distro.Name}, {"layer.collection", v.Layer.Collection}, {"machine.name", v.Machine.Name},
		{"images.rootfs", v.Images.Rootfs}, {"images.initramfs", v.Images.Initramfs},
	} {
		if !nameRE.MatchString(k.val) {
			return bad(k.key, "%q is not a valid name (lower-case letters, digits, . _ + -)", k.val)
		}
	}
	if strings.ContainsAny(v.Distro.Version, " \t/\"'") {
		return bad("distro.version", "%q must not contain spaces, quotes or slashes", v.Distro.Version)
	}
	if len(v.Distro.LayerSeriesCompat) == 0 {
		return bad("distro.layerseries_compat", "must list at least one release series")
	}
	if v.Layer.Priority < 1 {
		return bad("layer.priority", "must be a positive integer, not %d", v.Layer.Priority)
	}
	if len(v.Layers) == 0 {
		return bad("layers", "must list the pinned layers")
	}
	seen := map[string]bool{}
	for i, p := range v.Layers {
		key := fmt.Sprintf("layers[%d]", i)
		if !nameRE.MatchString(p.Name) {
			return bad(key+".name", "%q is not a valid name", p.Name)
		}
		if seen[p.Name] {
			return bad(key+".name", "duplicate layer %q", p.Name)
		}
		seen[p.Name] = true
		if p.URL == "" {
			return bad(key+".url", "must not be empty")
		}
		if p.Branch == "" {
			return bad(key+".branch", "must not be empty")
		}
		if !commitRE.MatchString(p.Commit) {
			return bad(key+".commit", "%q is not a full 40-hex-digit commit id", p.Commit)
		}
		for j, s := range p.Subdirs {
			if s == "" || filepath.IsAbs(s) || strings.Contains(s, "..") {
				return bad(fmt.Sprintf("%s.subdirs[%d]", key, j), "%q must be a relative path inside the repository", s)
			}
		}
	}
	for _, need := range []string{"bitbake", "openembedded-core"} {
		if !seen[need] {
			return bad("layers", "must pin %q", need)
		}
	}
	if !commitRE.MatchString(v.GuestAgent.Commit) {
		return bad("guest_agent.commit", "%q is not a full 40-hex-digit commit id", v.GuestAgent.Commit)
	}
	if !edk2URL.MatchString(v.Firmware.URL) {
		return bad("firmware.url", "%q is not an https://host/path.git repository URL", v.Firmware.URL)
	}
	if _, err := measure.EDK2Variant(v.Firmware.Tag); err != nil {
		return bad("firmware.tag", "%v", err)
	}
	if !commitRE.MatchString(v.Firmware.Commit) {
		return bad("firmware.commit", "%q is not a full 40-hex-digit commit id", v.Firmware.Commit)
	}
	if len(v.Kernel.Cmdline) == 0 {
		return bad("kernel.cmdline", "must list the base kernel arguments")
	}
	for i, a := range v.Kernel.Cmdline {
		if a == "" || strings.ContainsAny(a, " \t\n\"'") {
			return bad(fmt.Sprintf("kernel.cmdline[%d]", i), "%q must be one argument without spaces or quotes", a)
		}
		if strings.HasPrefix(a, "dstack.rootfs_hash=") || strings.HasPrefix(a, "dstack.rootfs_size=") || strings.HasPrefix(a, "coherent_pool=") {
			return bad(fmt.Sprintf("kernel.cmdline[%d]", i), "%q is added by imgpost dist, do not set it here", a)
		}
	}
	for i, a := range v.GCP.CmdlineExtra {
		if a == "" || strings.ContainsAny(a, " \t\n\"'") {
			return bad(fmt.Sprintf("gcp.cmdline_extra[%d]", i), "%q must be one argument without spaces or quotes", a)
		}
	}
	if len(v.Flavors) == 0 {
		return bad("flavors", "must list at least one flavor")
	}
	fl := map[string]bool{}
	for i, f := range v.Flavors {
		if !nameRE.MatchString(f.Name) {
			return bad(fmt.Sprintf("flavors[%d].name", i), "%q is not a valid name", f.Name)
		}
		if fl[f.Name] {
			return bad(fmt.Sprintf("flavors[%d].name", i), "duplicate flavor %q", f.Name)
		}
		fl[f.Name] = true
	}
	return nil
}

// Path is the file the values were loaded from.
func (v *Values) Path() string { return v.path }

// Map returns the checked values as plain maps and lists keyed by the YAML
// names, for templates: every string stays a string (a version "1.0" is not
// turned into the number 1), and a key absent here is a template error.
func (v *Values) Map() (map[string]any, error) {
	data, err := yaml.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("values file %s: %w", v.path, err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("values file %s: %w", v.path, err)
	}
	return m, nil
}

// Flavor returns the flavor named name.
func (v *Values) Flavor(name string) (Flavor, error) {
	for _, f := range v.Flavors {
		if f.Name == name {
			return f, nil
		}
	}
	return Flavor{}, fmt.Errorf("values file %s: no flavor %q (have %s)", v.path, name, strings.Join(v.FlavorNames(), ", "))
}

// FlavorNames lists the flavors in file order.
func (v *Values) FlavorNames() []string {
	n := make([]string, len(v.Flavors))
	for i, f := range v.Flavors {
		n[i] = f.Name
	}
	return n
}

// Pin returns the pinned layer repository named name.
func (v *Values) Pin(name string) (Pin, error) {
	for _, p := range v.Layers {
		if p.Name == name {
			return p, nil
		}
	}
	return Pin{}, fmt.Errorf("values file %s: no pinned layer %q", v.path, name)
}

// CmdlineBase is the base kernel command line, space-separated.
func (v *Values) CmdlineBase() string { return strings.Join(v.Kernel.Cmdline, " ") }

// DistName is the images/ directory name, "<distro.name>-<distro.version>".
func (v *Values) DistName() string { return v.Distro.Name + "-" + v.Distro.Version }
