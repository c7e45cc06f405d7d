package build

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/internal/epoch"
	"github.com/Dstack-TEE/meta-dstack/internal/values"
)

// Env is how `mage build` is configured: environment variables (see the
// README), the repository root, the host to check and where output goes.
type Env struct {
	Root           string
	Getenv         func(string) string // default os.Getenv
	Host           Host                // default DefaultHost()
	Stdout, Stderr io.Writer
	Environ        []string // environment for commands (default os.Environ())
}

func (e *Env) get(k string) string {
	if e.Getenv == nil {
		return os.Getenv(k)
	}
	return e.Getenv(k)
}

func (e *Env) abs(k, def string) string {
	v := e.get(k)
	if v == "" {
		v = def
	}
	if !filepath.IsAbs(v) {
		v = filepath.Join(e.Root, v)
	}
	return filepath.Clean(v)
}

// boolEnv reads a 0/1 switch; unset gives def.
func (e *Env) boolEnv(k string, def bool) (bool, error) {
	switch v := strings.TrimSpace(e.get(k)); strings.ToLower(v) {
	case "":
		return def, nil
	case "1", "true", "yes", "y", "on":
		return true, nil
	case "0", "false", "no", "n", "off":
		return false, nil
	default:
		return false, fmt.Errorf("%s=%q: want 0 or 1", k, v)
	}
}

// Setup is a configured build: the Config, whether it is a dry run, and the
// notes explaining the mode chosen.
type Setup struct {
	Config *Config
	Dry    bool
	Notes  []string
}

// Configure reads the environment and the values file and decides how to
// build: natively when the host passes the check (or DSTACK_CONTAINER=0),
// else in the repro-build container (DSTACK_CONTAINER=1 forces it) when a
// container engine is present. A host that can do neither is an error
// listing what is missing and how to install it.
func Configure(e *Env) (*Setup, error) {
	if e.Host.LookPath == nil {
		e.Host = DefaultHost()
	}
	vpath := e.abs("VALUES", values.DefaultPath)
	v, err := values.Load(vpath)
	if err != nil {
		return nil, err
	}
	c := &Config{
		Root:      e.Root,
		LayersDir: e.abs("DSTACK_LAYERS_DIR", ".cache/layers"),
		BuildDir:  e.abs("DSTACK_BUILD_DIR", "build"),
		ImagesDir: e.abs("DSTACK_IMAGES_DIR", "images"),
		Values:    v,
		Flavors:   strings.Fields(e.get("DSTACK_FLAVORS")),
	}
	if len(c.Flavors) == 0 {
		c.Flavors = []string{"prod"}
	}
	pick := func(env, val string) string {
		if s := e.get(env); s != "" {
			return s
		}
		return val
	}
	c.Caches = Caches{
		DLDir:             pick("DL_DIR", v.Cache.DLDir),
		SstateDir:         pick("SSTATE_DIR", v.Cache.SstateDir),
		SstateMirrors:     pick("SSTATE_MIRRORS", v.Cache.SstateMirrors),
		Hashserve:         pick("BB_HASHSERVE", v.Cache.Hashserve),
		HashserveUpstream: pick("BB_HASHSERVE_UPSTREAM", v.Cache.HashserveUpstream),
	}
	for _, d := range []*string{&c.Caches.DLDir, &c.Caches.SstateDir} {
		if *d != "" && !filepath.IsAbs(*d) && !strings.Contains(*d, "${") {
			*d = filepath.Join(e.Root, *d)
		}
	}
	if c.EnableGCP, err = e.boolEnv("ENABLE_GCP_IMAGE", v.GCP.Enable); err != nil {
		return nil, err
	}
	if n, set, err := epoch.Lookup(e.get); err != nil {
		return nil, err
	} else if set {
		c.SourceDateEpoch = &n
	}
	c.GitRevision = e.get("DSTACK_GIT_REVISION")
	if strings.ContainsAny(c.GitRevision, "\"\\\n ") {
		return nil, fmt.Errorf("DSTACK_GIT_REVISION=%q: want a plain revision", c.GitRevision)
	}
	s := &Setup{Config: c}
	if s.Dry, err = e.boolEnv("DSTACK_DRY_RUN", false); err != nil {
		return nil, err
	}
	minGB := uint64(DefaultMinFreeGB)
	if g := e.get("DSTACK_MIN_FREE_GB"); g != "" {
		if minGB, err = strconv.ParseUint(g, 10, 64); err != nil {
			return nil, fmt.Errorf("DSTACK_MIN_FREE_GB=%q: want a whole number", g)
		}
	}
	engine := e.get("DSTACK_CONTAINER_ENGINE")
	if engine == "" {
		engine = "docker"
	}
	mode := strings.TrimSpace(e.get("DSTACK_CONTAINER"))
	container := false
	switch mode {
	case "1", "0", "":
	default:
		return nil, fmt.Errorf("DSTACK_CONTAINER=%q: want 0 or 1", mode)
	}
	if mode == "1" {
		container = true
		s.Notes = append(s.Notes, "DSTACK_CONTAINER=1: every command runs in the repro-build container")
	} else {
		problems := CheckHost(e.Host, c.BuildDir, minGB)
		if len(problems) > 0 {
			_, engineErr := e.Host.LookPath(engine)
			if engineErr == nil && mode != "0" && e.Host.EngineWorks != nil {
				if err := e.Host.EngineWorks(engine); err != nil {
					engineErr = fmt.Errorf("%s is installed but does not work (%v)", engine, err)
				}
			}
			switch {
			case mode == "0" || engineErr != nil:
				msg := FormatProblems(problems)
				if mode != "0" {
					if _, err := e.Host.LookPath(engine); err == nil {
						msg += fmt.Sprintf("  %v: start it to build in the repro-build container instead\n", engineErr)
					} else {
						msg += fmt.Sprintf("  or install %s: the build then runs in the repro-build container (DSTACK_CONTAINER=1)\n", engine)
					}
				}
				if !s.Dry {
					return nil, fmt.Errorf("%s", strings.TrimRight(msg, "\n"))
				}
				s.Notes = append(s.Notes, strings.TrimRight(msg, "\n"), "dry run: showing the native plan anyway")
			default:
				container = true
				s.Notes = append(s.Notes, strings.TrimRight(FormatProblems(problems), "\n"),
					"so every command runs in the repro-build container ("+engine+" found; DSTACK_CONTAINER=0 refuses this)")
			}
		}
	}
	if container {
		if e.Host.EUID == 0 && e.get("DSTACK_CONTAINER_UID") == "" {
			msg := "the container runs commands as the calling user and BitBake refuses root: build as a non-root user (sudo useradd -m builder) or set DSTACK_CONTAINER_UID/DSTACK_CONTAINER_GID"
			if !s.Dry {
				return nil, fmt.Errorf("%s", msg)
			}
			s.Notes = append(s.Notes, msg)
		}
		ct := &Container{Engine: engine, Dockerfile: filepath.Join(e.Root, "repro-build", "Dockerfile"), UID: e.Host.EUID, GID: os.Getegid()}
		if u := e.get("DSTACK_CONTAINER_UID"); u != "" {
			if ct.UID, err = strconv.Atoi(u); err != nil {
				return nil, fmt.Errorf("DSTACK_CONTAINER_UID=%q: want a number", u)
			}
		}
		if g := e.get("DSTACK_CONTAINER_GID"); g != "" {
			if ct.GID, err = strconv.Atoi(g); err != nil {
				return nil, fmt.Errorf("DSTACK_CONTAINER_GID=%q: want a number", g)
			}
		}
		if img := e.get("DSTACK_CONTAINER_IMAGE"); img != "" {
			ct.Image, ct.Prebuilt = img, true
		} else {
			df, err := os.ReadFile(ct.Dockerfile)
			if err != nil {
				return nil, fmt.Errorf("builder image: %w", err)
			}
			ct.Image = ImageTag(df)
		}
		c.Container = ct
	}
	return s, nil
}

// Build is `mage build`: configure from the environment, lay out the plan
// and execute it (or print it when DSTACK_DRY_RUN=1).
func Build(ctx context.Context, e *Env) error {
	s, err := Configure(e)
	if err != nil {
		return err
	}
	p, err := NewPlan(s.Config)
	if err != nil {
		return err
	}
	p.Notes = append(s.Notes, p.Notes...)
	x := &Executor{Stdout: e.Stdout, Stderr: e.Stderr, Dry: s.Dry, Environ: e.Environ}
	return x.Run(ctx, p)
}
