// Package build drives the Yocto build of the dstack guest images: it checks
// the host, fetches the layers pinned in the values file at their exact
// commits, writes the build directory's configuration, runs BitBake for the
// flavors asked (one multiconfig each), and collects the image class's
// `imgpost dist` output into images/ in the seed's layout.
//
// Everything it does is first laid out as a Plan, an ordered list of Steps,
// so that a dry run (DSTACK_DRY_RUN=1) prints exactly the commands and files
// a real run executes and writes. In container mode every command runs in a
// fresh container of the repro-build image, with the same paths mounted.
//
// SOURCE_DATE_EPOCH follows the module's one rule (internal/epoch): unset or
// empty leaves the rootfs timestamp to oe-core's default; any other value
// must be a decimal number of seconds, 0 or more, and becomes
// REPRODUCIBLE_TIMESTAMP_ROOTFS in auto.conf (0 too: it means 1970-01-01,
// as it does for imgpost's tarballs, not "unset").
package build

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/internal/values"
)

// StepKind says what a Step does.
type StepKind int

const (
	// RunStep runs a command (Argv in Dir with Env).
	RunStep StepKind = iota + 1
	// WriteStep writes Data to Path (atomically).
	WriteStep
	// CollectStep copies the imgpost dist outputs from the deploy directories
	// into the images directory.
	CollectStep
)

// Step is one announced unit of work.
type Step struct {
	Kind  StepKind
	Title string // announced before the step runs

	// RunStep
	Argv []string
	Dir  string
	Env  []string // KEY=VALUE added to the environment
	// SkipIf, when set, is run first; if it succeeds the step is skipped
	// (e.g. the pinned commit is already present).
	SkipIf []string
	// Fallback, when set, is run when Argv fails (e.g. a full fetch when the
	// server refuses a shallow fetch of a commit).
	Fallback []string

	// WriteStep
	Path string
	Data []byte

	// CollectStep
	Collect *Collect
}

// Collect describes where the imgpost dist outputs are found and where they go.
type Collect struct {
	BuildDir  string // the BitBake build directory (TOPDIR)
	Machine   string // MACHINE: deploy dirs are <BuildDir>/tmp*/deploy/images/<Machine>
	ImagesDir string // destination (./images)
	SkipGCP   bool   // ENABLE_GCP_IMAGE=0: leave gcp/ and *-gcp.tar.gz out
}

// Plan is the ordered list of steps of one build.
type Plan struct {
	Steps []Step
	// Notes are printed before the steps (mode decisions, host check).
	Notes []string
}

// Caches are the shared-cache knobs written into the build configuration.
// Empty fields keep BitBake's defaults.
type Caches struct {
	DLDir             string // DL_DIR: source downloads, shareable between builds and machines
	SstateDir         string // SSTATE_DIR: shared state cache
	SstateMirrors     string // SSTATE_MIRRORS: read-only sstate mirrors (e.g. an HTTP server)
	Hashserve         string // BB_HASHSERVE: "auto" or host:port of a shared hash equivalence server
	HashserveUpstream string // BB_HASHSERVE_UPSTREAM
}

// Container says how to run the commands in the repro-build container.
type Container struct {
	Engine     string // docker or podman
	Image      string // image tag; built from Dockerfile unless Prebuilt
	Dockerfile string // repro-build/Dockerfile
	Prebuilt   bool   // the image exists already (DSTACK_CONTAINER_IMAGE): do not build it
	UID, GID   int    // the user the commands run as (--user)
}

// Config is everything a build plan depends on.
type Config struct {
	Root      string // repository root (holds meta-dstack/ and repro-build/)
	LayersDir string // where the pinned layers are fetched (a cache kept between builds)
	BuildDir  string // BitBake's build directory
	ImagesDir string // where the outputs are collected

	Values  *values.Values
	Flavors []string // flavors to build, each a multiconfig (prod, dev)
	Caches  Caches
	// EnableGCP builds the GCP disk and tarball (ENABLE_GCP_IMAGE).
	EnableGCP bool
	// SourceDateEpoch, when not nil, fixes the rootfs timestamp
	// (REPRODUCIBLE_TIMESTAMP_ROOTFS), 0 included; nil leaves oe-core's
	// default. repro-build sets it to the commit time.
	SourceDateEpoch *int64
	// GitRevision is recorded in metadata.json (DSTACK_GIT_REVISION).
	GitRevision string

	Container *Container // nil: run natively
}

// LayerDir is where the pinned layer repository named name is fetched.
func (c *Config) LayerDir(name string) string { return filepath.Join(c.LayersDir, name) }

// TemplateConf is the layer's build-configuration template directory (TEMPLATECONF).
func (c *Config) TemplateConf() string {
	return filepath.Join(c.Root, "meta-dstack", "conf", "templates", "default")
}

// Targets are the BitBake targets: the rootfs image of every flavor's
// multiconfig (its image class runs imgpost dist).
func (c *Config) Targets() []string {
	t := make([]string, len(c.Flavors))
	for i, f := range c.Flavors {
		t[i] = "mc:" + f + ":" + c.Values.Images.Rootfs
	}
	return t
}

// containerPath is the PATH inside the repro-build container.
const containerPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// NewPlan lays out the build: fetch each pinned layer at its commit, write
// the build configuration, run BitBake for the flavors' targets, collect the
// outputs. It reads the layer's configuration samples from the tree.
func NewPlan(c *Config) (*Plan, error) {
	if c.Values == nil {
		return nil, fmt.Errorf("build: no values loaded")
	}
	if len(c.Flavors) == 0 {
		return nil, fmt.Errorf("build: no flavors to build")
	}
	for _, f := range c.Flavors {
		if _, err := c.Values.Flavor(f); err != nil {
			return nil, fmt.Errorf("DSTACK_FLAVORS: %w", err)
		}
	}
	p := &Plan{}
	if ct := c.Container; ct != nil && !ct.Prebuilt {
		p.Steps = append(p.Steps, Step{
			Kind:  RunStep,
			Title: "Build the builder image " + ct.Image + " from " + rel(c.Root, ct.Dockerfile),
			Argv:  []string{ct.Engine, "build", "-t", ct.Image, "-f", ct.Dockerfile, filepath.Dir(ct.Dockerfile)},
			Dir:   c.Root,
		})
	}
	for _, pin := range c.Values.Layers {
		dir := c.LayerDir(pin.Name)
		short := pin.Commit[:12]
		p.Steps = append(p.Steps,
			c.run(Step{Title: fmt.Sprintf("Prepare %s in %s", pin.Name, dir),
				Argv: []string{"git", "init", "-q", dir}, Dir: c.Root}),
			c.run(Step{Title: fmt.Sprintf("Fetch %s %s (branch %s) from %s, shallow", pin.Name, short, pin.Branch, pin.URL),
				SkipIf:   []string{"git", "-C", dir, "cat-file", "-e", pin.Commit + "^{commit}"},
				Argv:     []string{"git", "-C", dir, "fetch", "-q", "--depth", "1", pin.URL, pin.Commit},
				Fallback: []string{"git", "-C", dir, "fetch", "-q", pin.URL, "refs/heads/" + pin.Branch},
				Dir:      c.Root}),
			c.run(Step{Title: fmt.Sprintf("Check out %s at %s", pin.Name, pin.Commit),
				Argv: []string{"git", "-C", dir, "checkout", "-q", "--detach", pin.Commit}, Dir: c.Root}),
		)
	}
	confSteps, err := c.confSteps()
	if err != nil {
		return nil, err
	}
	p.Steps = append(p.Steps, confSteps...)
	p.Steps = append(p.Steps, c.run(Step{
		Title: "BitBake " + strings.Join(c.Targets(), " ") + " (a first build takes hours; with a warm sstate cache, minutes)",
		Argv:  append([]string{"bitbake"}, c.Targets()...),
		Dir:   c.BuildDir,
		Env:   []string{"LANG=en_US.UTF-8", "LC_ALL=en_US.UTF-8"},
	}))
	p.Steps = append(p.Steps, Step{
		Kind:  CollectStep,
		Title: "Collect the imgpost dist outputs into " + c.ImagesDir,
		Collect: &Collect{
			BuildDir: c.BuildDir, Machine: c.Values.Machine.Name, ImagesDir: c.ImagesDir, SkipGCP: !c.EnableGCP,
		},
	})
	return p, nil
}

// bitbakePath is the PATH prefix that makes the pinned BitBake and
// openembedded-core's scripts found first (what oe-init-build-env does).
func (c *Config) bitbakePath() []string {
	return []string{
		filepath.Join(c.LayerDir("bitbake"), "bin"),
		filepath.Join(c.LayerDir("openembedded-core"), "scripts"),
	}
}

// run finishes a RunStep: in container mode its commands are wrapped in a
// fresh `docker run`; natively the pinned BitBake is put first on PATH.
func (c *Config) run(s Step) Step {
	s.Kind = RunStep
	if c.Container == nil {
		s.Env = append([]string{"PATH=" + strings.Join(c.bitbakePath(), ":") + ":$PATH"}, s.Env...)
		return s
	}
	s.Argv = c.wrap(s.Argv, s.Dir, s.Env)
	if s.SkipIf != nil {
		s.SkipIf = c.wrap(s.SkipIf, s.Dir, s.Env)
	}
	if s.Fallback != nil {
		s.Fallback = c.wrap(s.Fallback, s.Dir, s.Env)
	}
	s.Env = nil
	return s
}

// wrap turns argv into a `docker run` of the builder image: a fresh
// container, removed afterwards, running as the calling user, with every
// directory the build touches mounted at the same path.
func (c *Config) wrap(argv []string, dir string, env []string) []string {
	ct := c.Container
	w := []string{ct.Engine, "run", "--rm", "--user", fmt.Sprintf("%d:%d", ct.UID, ct.GID),
		"-e", "HOME=/tmp", "-e", "PATH=" + strings.Join(c.bitbakePath(), ":") + ":" + containerPath}
	for _, e := range env {
		w = append(w, "-e", e)
	}
	for _, m := range c.mounts() {
		w = append(w, "-v", m+":"+m)
	}
	w = append(w, "-w", dir, ct.Image)
	return append(w, argv...)
}

// mounts lists the host directories a container needs, outermost first,
// leaving out those inside another.
func (c *Config) mounts() []string {
	dirs := []string{c.Root, c.LayersDir, c.BuildDir, c.ImagesDir}
	for _, d := range []string{c.Caches.DLDir, c.Caches.SstateDir} {
		if filepath.IsAbs(d) {
			dirs = append(dirs, d)
		}
	}
	sort.Strings(dirs)
	var out []string
	for _, d := range dirs {
		inside := false
		for _, o := range out {
			if d == o || strings.HasPrefix(d, o+string(filepath.Separator)) {
				inside = true
				break
			}
		}
		if !inside {
			out = append(out, d)
		}
	}
	return out
}

// confSteps writes the build directory's configuration: bblayers.conf from
// the pinned layers, local.conf from the layer's template (TEMPLATECONF,
// ##OEROOT## substituted as oe-setup-builddir does), templateconf.cfg, and
// auto.conf with the flavors, caches and knobs of this build. The user's own
// settings belong in conf/site.conf, which is never written.
func (c *Config) confSteps() ([]Step, error) {
	conf := filepath.Join(c.BuildDir, "conf")
	oeroot := c.LayerDir("openembedded-core")
	var steps []Step
	tc := c.TemplateConf()
	sample := filepath.Join(tc, "local.conf.sample")
	local, err := os.ReadFile(sample)
	if err != nil {
		return nil, fmt.Errorf("build configuration template %s: %w (run `go run mage.go layer`)", sample, err)
	}
	steps = append(steps, Step{Kind: WriteStep, Title: "Write " + filepath.Join(conf, "local.conf") + " from " + rel(c.Root, sample),
		Path: filepath.Join(conf, "local.conf"), Data: []byte(strings.ReplaceAll(string(local), "##OEROOT##", oeroot))})
	layersSample := filepath.Join(tc, "bblayers.conf.sample")
	layers, err := os.ReadFile(layersSample)
	if err != nil {
		return nil, fmt.Errorf("build configuration template %s: %w (run `go run mage.go layer`)", layersSample, err)
	}
	steps = append(steps, Step{Kind: WriteStep, Title: "Write " + filepath.Join(conf, "bblayers.conf") + " from " + rel(c.Root, layersSample) + " (the pinned layers and meta-dstack)",
		Path: filepath.Join(conf, "bblayers.conf"), Data: c.bblayers(layers)})
	steps = append(steps, Step{Kind: WriteStep, Title: "Write " + filepath.Join(conf, "templateconf.cfg"),
		Path: filepath.Join(conf, "templateconf.cfg"), Data: []byte(tc + "\n")})
	steps = append(steps, Step{Kind: WriteStep, Title: "Write " + filepath.Join(conf, "auto.conf") + " (flavors, caches, GCP switch)",
		Path: filepath.Join(conf, "auto.conf"), Data: c.autoConf()})
	return steps, nil
}

const generatedHeader = "# Generated by `go run mage.go build` (internal/build); rewritten on every build.\n# Put your own settings in conf/site.conf.\n"

// bblayers is the layer's bblayers.conf.sample as oe-setup-builddir writes
// it (##OEROOT## replaced), with this build's layout set first: the sample
// finds the other layers in DSTACK_LAYERS and the layer in DSTACK_REPO, both
// assigned with ?=, so the same file serves the README's TEMPLATECONF flow
// and this build.
func (c *Config) bblayers(sample []byte) []byte {
	var b strings.Builder
	b.WriteString(generatedHeader)
	fmt.Fprintf(&b, "# From %s, with this build's layout:\n", rel(c.Root, filepath.Join(c.TemplateConf(), "bblayers.conf.sample")))
	fmt.Fprintf(&b, "DSTACK_LAYERS = \"%s\"\nDSTACK_REPO = \"%s\"\n\n", c.LayersDir, c.Root)
	b.WriteString(strings.ReplaceAll(string(sample), "##OEROOT##", c.LayerDir("openembedded-core")))
	return []byte(b.String())
}

func (c *Config) autoConf() []byte {
	var b strings.Builder
	b.WriteString(generatedHeader)
	fmt.Fprintf(&b, "BBMULTICONFIG = \"%s\"\n", strings.Join(c.Flavors, " "))
	// Distinct output names per flavor (imgpost dist writes <name>-<version>):
	// prod keeps the distro's name, any other flavor appends itself
	// (dstack-dev-0.5.5). A multiconfig that sets DSTACK_DIST_NAME wins.
	b.WriteString("DSTACK_DIST_NAME ?= \"${DISTRO}${@'' if (d.getVar('BB_CURRENT_MC') or 'prod') in ('prod', 'default') else '-' + d.getVar('BB_CURRENT_MC')}\"\n")
	gcp := "1"
	if !c.EnableGCP {
		gcp = "0"
	}
	fmt.Fprintf(&b, "ENABLE_GCP_IMAGE = \"%s\"\n", gcp)
	for _, kv := range []struct{ k, v string }{
		{"DL_DIR", c.Caches.DLDir}, {"SSTATE_DIR", c.Caches.SstateDir}, {"SSTATE_MIRRORS", c.Caches.SstateMirrors},
		{"BB_HASHSERVE", c.Caches.Hashserve}, {"BB_HASHSERVE_UPSTREAM", c.Caches.HashserveUpstream},
	} {
		if kv.v != "" {
			fmt.Fprintf(&b, "%s = \"%s\"\n", kv.k, strings.ReplaceAll(kv.v, `"`, `\"`))
		}
	}
	if c.GitRevision != "" {
		fmt.Fprintf(&b, "DSTACK_GIT_REVISION = \"%s\"\n", c.GitRevision)
	}
	if c.SourceDateEpoch != nil {
		fmt.Fprintf(&b, "REPRODUCIBLE_TIMESTAMP_ROOTFS = \"%d\"\n", *c.SourceDateEpoch)
	}
	return []byte(b.String())
}

// ImageTag is the builder image's tag, derived from the Dockerfile's content
// so that a changed Dockerfile gets a new image.
func ImageTag(dockerfile []byte) string {
	sum := sha256.Sum256(dockerfile)
	return "dstack-repro-build:" + hex.EncodeToString(sum[:6])
}

func rel(root, p string) string {
	if r, err := filepath.Rel(root, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}
