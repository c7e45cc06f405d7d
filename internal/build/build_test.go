package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/epoch"
	"github.com/Dstack-TEE/meta-dstack/internal/layerlint"
	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/internal/values"
)

// okHost is a host that passes every check.
func okHost() Host {
	return Host{
		LookPath:  func(f string) (string, error) { return "/usr/bin/" + f, nil },
		Locales:   func() ([]string, error) { return []string{"C", "en_US.utf8"}, nil },
		FreeBytes: func(string) (uint64, error) { return 500e9, nil },
		EUID:      1000,
	}
}

// fixture is a throw-away repository root with fake git and bitbake first on PATH.
type fixture struct {
	root, bin, log string
	vals           *values.Values
	env            map[string]string
	stdout, stderr bytes.Buffer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	repo := testutil.RepoRoot(t)
	f := &fixture{root: t.TempDir()}
	f.bin = filepath.Join(f.root, "fakebin")
	f.log = filepath.Join(f.root, "calls.log")
	tc := filepath.Join(f.root, "meta-dstack", "conf", "templates", "default")
	for _, d := range []string{f.bin, tc, filepath.Join(f.root, "repro-build")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, "testdata/fake-git", filepath.Join(f.bin, "git"), 0o755)
	copyFile(t, "testdata/fake-bitbake", filepath.Join(f.bin, "bitbake"), 0o755)
	copyFile(t, "testdata/local.conf.sample", filepath.Join(tc, "local.conf.sample"), 0o644)
	// The layer's own bblayers.conf.sample, as `go run mage.go layer` renders it.
	copyFile(t, filepath.Join(repo, "meta-dstack", "conf", "templates", "default", "bblayers.conf.sample"), filepath.Join(tc, "bblayers.conf.sample"), 0o644)
	copyFile(t, filepath.Join(repo, "repro-build", "Dockerfile"), filepath.Join(f.root, "repro-build", "Dockerfile"), 0o644)
	vpath := filepath.Join(repo, values.DefaultPath)
	v, err := values.Load(vpath)
	if err != nil {
		t.Fatal(err)
	}
	f.vals = v
	f.env = map[string]string{"VALUES": vpath, "DSTACK_FLAVORS": "prod dev"}
	return f
}

func copyFile(t *testing.T, src, dst string, perm os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, perm); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) Env(host Host) *Env {
	environ := []string{
		"PATH=" + f.bin + ":/usr/bin:/bin",
		"FAKE_LOG=" + f.log,
		"FAKE_MACHINE=" + f.vals.Machine.Name,
		"FAKE_DIST=" + f.vals.DistName(),
	}
	for k, v := range f.env {
		if strings.HasPrefix(k, "FAKE_") {
			environ = append(environ, k+"="+v)
		}
	}
	return &Env{
		Root:    f.root,
		Getenv:  func(k string) string { return f.env[k] },
		Host:    host,
		Stdout:  &f.stdout,
		Stderr:  &f.stderr,
		Environ: environ,
	}
}

func (f *fixture) calls(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(f.log)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

// wantGitCalls derives the expected git invocations from the values file:
// for every pinned layer, init, the presence check, a shallow fetch of the
// exact commit, and a detached checkout of it.
func (f *fixture) wantGitCalls() []string {
	var want []string
	for _, p := range f.vals.Layers {
		dir := filepath.Join(f.root, ".cache", "layers", p.Name)
		want = append(want,
			"git init -q "+dir,
			"git -C "+dir+" cat-file -e "+p.Commit+"^{commit}",
			"git -C "+dir+" fetch -q --depth 1 "+p.URL+" "+p.Commit,
			"git -C "+dir+" checkout -q --detach "+p.Commit,
		)
	}
	return want
}

func TestBuildRunsPinnedFetchesConfigAndBitBake(t *testing.T) {
	f := newFixture(t)
	f.env["DL_DIR"] = "/srv/yocto/downloads"
	f.env["SSTATE_MIRRORS"] = "file://.* https://sstate.example.com/PATH;downloadfilename=PATH"
	f.env["BB_HASHSERVE"] = "auto"
	f.env["SOURCE_DATE_EPOCH"] = "1700000000"
	f.env["DSTACK_GIT_REVISION"] = "0123456789abcdef0123456789abcdef01234567"
	if err := Build(context.Background(), f.Env(okHost())); err != nil {
		t.Fatalf("Build: %v\nstdout:\n%s\nstderr:\n%s", err, f.stdout.String(), f.stderr.String())
	}
	calls := f.calls(t)
	want := f.wantGitCalls()
	var targets []string
	for _, fl := range []string{"prod", "dev"} {
		targets = append(targets, "mc:"+fl+":"+f.vals.Images.Rootfs)
	}
	build := filepath.Join(f.root, "build")
	want = append(want,
		"bitbake "+strings.Join(targets, " "),
		"cwd "+build,
		"path "+filepath.Join(f.root, ".cache/layers/bitbake/bin")+":"+filepath.Join(f.root, ".cache/layers/openembedded-core/scripts")+":"+f.bin+":/usr/bin:/bin",
	)
	if strings.Join(calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}

	// The configuration written into build/conf.
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(build, "conf", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// bblayers.conf as BitBake evaluates it: exactly the pinned layers' subdirectories
	// and meta-dstack, in order.
	bbl := read("bblayers.conf")
	sts, err := layerlint.ParseStatements("bblayers.conf", []byte(bbl))
	if err != nil {
		t.Fatal(err)
	}
	vars := layerlint.Vars{}
	vars.Apply(sts)
	var wantLayers []string
	for _, p := range f.vals.Layers {
		for _, sd := range p.Subdirs {
			wantLayers = append(wantLayers, filepath.Join(f.root, ".cache/layers", p.Name, sd))
		}
	}
	wantLayers = append(wantLayers, filepath.Join(f.root, "meta-dstack"), filepath.Join(f.root, "meta-dstack-bsp"))
	var gotLayers []string
	for _, l := range strings.Fields(vars.Expand(vars["BBLAYERS"])) {
		gotLayers = append(gotLayers, filepath.Clean(l))
	}
	if strings.Join(gotLayers, "\n") != strings.Join(wantLayers, "\n") {
		t.Errorf("bblayers.conf's BBLAYERS:\n%s\nwant:\n%s\n--- bblayers.conf ---\n%s", strings.Join(gotLayers, "\n"), strings.Join(wantLayers, "\n"), bbl)
	}
	if strings.Contains(bbl, "##OEROOT##") {
		t.Errorf("bblayers.conf: ##OEROOT## not substituted:\n%s", bbl)
	}
	auto := read("auto.conf")
	for _, w := range []string{
		`BBMULTICONFIG = "prod dev"`, `ENABLE_GCP_IMAGE = "1"`, `DL_DIR = "/srv/yocto/downloads"`,
		`SSTATE_MIRRORS = "file://.* https://sstate.example.com/PATH;downloadfilename=PATH"`,
		`BB_HASHSERVE = "auto"`, `REPRODUCIBLE_TIMESTAMP_ROOTFS = "1700000000"`,
		`DSTACK_GIT_REVISION = "0123456789abcdef0123456789abcdef01234567"`,
		`DSTACK_DIST_NAME ?= "${DISTRO}${@'' if (d.getVar('BB_CURRENT_MC') or 'prod') in ('prod', 'default') else '-' + d.getVar('BB_CURRENT_MC')}"`,
	} {
		if !strings.Contains(auto, w+"\n") {
			t.Errorf("auto.conf lacks %s:\n%s", w, auto)
		}
	}
	if strings.Contains(auto, "SSTATE_DIR") {
		t.Errorf("auto.conf sets SSTATE_DIR though neither env nor values do:\n%s", auto)
	}
	if l := read("local.conf"); !strings.Contains(l, `COREBASE_CHECK = "`+filepath.Join(f.root, ".cache/layers/openembedded-core")+`"`) {
		t.Errorf("local.conf: ##OEROOT## not substituted:\n%s", l)
	}
	if tc := read("templateconf.cfg"); tc != filepath.Join(f.root, "meta-dstack/conf/templates/default")+"\n" {
		t.Errorf("templateconf.cfg = %q", tc)
	}

	// The outputs collected into images/ in the seed's layout, and only those.
	dist := f.vals.DistName()
	devDist := f.vals.Distro.Name + "-dev-" + f.vals.Distro.Version
	for _, p := range []string{dist + "/metadata.json", dist + "/bzImage", dist + "/gcp/disk.raw", dist + ".tar.gz", dist + "-gcp.tar.gz", devDist + "/metadata.json"} {
		if _, err := os.Stat(filepath.Join(f.root, "images", p)); err != nil {
			t.Errorf("images/%s not collected: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(f.root, "images", "unrelated.squashfs")); err == nil {
		t.Error("a deploy file that is not an imgpost dist output was collected")
	}
	// Steps are announced, and BitBake's own output passes through.
	out := f.stdout.String()
	for _, w := range []string{"==> [1/", "Fetch openembedded-core", "BitBake mc:prod:", "fake bitbake: built mc:prod:"} {
		if !strings.Contains(out, w) {
			t.Errorf("stdout lacks %q:\n%s", w, out)
		}
	}
}

func TestCollectRefusesClashingFlavors(t *testing.T) {
	dir := t.TempDir()
	for _, tmp := range []string{"tmp-prod", "tmp-dev"} {
		d := filepath.Join(dir, "build", tmp, "deploy/images/m/dstack-dist/dstack-1.0")
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "metadata.json"), []byte("{}"), 0o644)
	}
	_, err := CollectOutputs(&Collect{BuildDir: filepath.Join(dir, "build"), Machine: "m", ImagesDir: filepath.Join(dir, "images")})
	if err == nil || !strings.Contains(err.Error(), "two builds produced dstack-1.0") {
		t.Fatalf("err = %v", err)
	}
}

func TestCollectNothingFound(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "build/tmp-prod/deploy/images/m/dstack-dist"), 0o755)
	_, err := CollectOutputs(&Collect{BuildDir: filepath.Join(dir, "build"), Machine: "m", ImagesDir: filepath.Join(dir, "images")})
	if err == nil || !strings.Contains(err.Error(), "no imgpost dist output") {
		t.Fatalf("err = %v", err)
	}
}

func TestBuildGCPOff(t *testing.T) {
	f := newFixture(t)
	f.env["ENABLE_GCP_IMAGE"] = "0"
	f.env["DSTACK_FLAVORS"] = ""
	if err := Build(context.Background(), f.Env(okHost())); err != nil {
		t.Fatalf("Build: %v\n%s", err, f.stdout.String())
	}
	b, _ := os.ReadFile(filepath.Join(f.root, "build/conf/auto.conf"))
	if !strings.Contains(string(b), `ENABLE_GCP_IMAGE = "0"`) || !strings.Contains(string(b), `BBMULTICONFIG = "prod"`) {
		t.Errorf("auto.conf:\n%s", b)
	}
	dist := f.vals.DistName()
	if _, err := os.Stat(filepath.Join(f.root, "images", dist, "metadata.json")); err != nil {
		t.Error(err)
	}
	for _, p := range []string{dist + "/gcp", dist + "-gcp.tar.gz"} {
		if _, err := os.Stat(filepath.Join(f.root, "images", p)); err == nil {
			t.Errorf("images/%s collected with ENABLE_GCP_IMAGE=0", p)
		}
	}
}

func TestBuildFailingBitBakeFailsWithItsStatus(t *testing.T) {
	for _, code := range []int{1, 3, 42} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			f := newFixture(t)
			f.env["FAKE_BITBAKE_EXIT"] = fmt.Sprint(code)
			err := Build(context.Background(), f.Env(okHost()))
			if err == nil {
				t.Fatal("Build succeeded with a failing BitBake")
			}
			if got := ExitCode(err); got != code {
				t.Errorf("ExitCode = %d, want %d (err %v)", got, code, err)
			}
			if !strings.Contains(f.stderr.String(), fmt.Sprintf("fake bitbake failing with %d", code)) {
				t.Errorf("BitBake's stderr not passed through: %q", f.stderr.String())
			}
			if _, err := os.Stat(filepath.Join(f.root, "images")); err == nil {
				t.Error("images/ created although BitBake failed")
			}
		})
	}
}

func TestDryRunPrintsEverythingAndDoesNothing(t *testing.T) {
	f := newFixture(t)
	f.env["DSTACK_DRY_RUN"] = "1"
	if err := Build(context.Background(), f.Env(okHost())); err != nil {
		t.Fatalf("Build: %v\n%s", err, f.stdout.String())
	}
	if c := f.calls(t); len(c) != 0 {
		t.Errorf("dry run executed commands:\n%s", strings.Join(c, "\n"))
	}
	for _, d := range []string{"build", "images", ".cache"} {
		if _, err := os.Stat(filepath.Join(f.root, d)); err == nil {
			t.Errorf("dry run created %s", d)
		}
	}
	out := f.stdout.String()
	// Every command and file, in the order a real run executes them.
	var want []string
	for _, c := range f.wantGitCalls() {
		want = append(want, strings.TrimPrefix(c, "git "))
	}
	build := filepath.Join(f.root, "build")
	want = append(want,
		"write "+filepath.Join(build, "conf/local.conf"),
		"write "+filepath.Join(build, "conf/bblayers.conf"),
		"| BBMULTICONFIG = \"prod dev\"",
		"cd "+build+" && PATH=",
		"bitbake mc:prod:"+f.vals.Images.Rootfs+" mc:dev:"+f.vals.Images.Rootfs,
		"into "+filepath.Join(f.root, "images"),
	)
	pos := 0
	for _, w := range want {
		i := strings.Index(out[pos:], w)
		if i < 0 {
			t.Fatalf("dry-run output lacks %q after offset %d:\n%s", w, pos, out)
		}
		pos += i + len(w)
	}
}

func TestContainerModePlan(t *testing.T) {
	f := newFixture(t)
	f.env["DSTACK_DRY_RUN"] = "1"
	f.env["DSTACK_CONTAINER"] = "1"
	f.env["SSTATE_DIR"] = "/srv/sstate"
	if err := Build(context.Background(), f.Env(okHost())); err != nil {
		t.Fatalf("Build: %v\n%s", err, f.stdout.String())
	}
	df, err := os.ReadFile(filepath.Join(f.root, "repro-build/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	tag := ImageTag(df)
	out := f.stdout.String()
	user := fmt.Sprintf("--user 1000:%d", os.Getegid())
	for _, w := range []string{
		"docker build -t " + tag + " -f " + filepath.Join(f.root, "repro-build/Dockerfile"),
		"docker run --rm " + user + " -e HOME=/tmp -e PATH=" + filepath.Join(f.root, ".cache/layers/bitbake/bin"),
		"-v " + f.root + ":" + f.root + " ",
		"-v /srv/sstate:/srv/sstate ",
		"-w " + filepath.Join(f.root, "build") + " " + tag + " bitbake mc:prod:",
		"-w " + f.root + " " + tag + " git -C " + filepath.Join(f.root, ".cache/layers/openembedded-core") + " fetch -q --depth 1",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("container plan lacks %q:\n%s", w, out)
		}
	}
}

func TestConfigureChoosesMode(t *testing.T) {
	noTools := okHost()
	noTools.LookPath = func(f string) (string, error) {
		if f == "docker" {
			return "/usr/bin/docker", nil
		}
		return "", errors.New("not found")
	}
	noDocker := okHost()
	noDocker.EUID = 0
	noDocker.LookPath = func(f string) (string, error) {
		if f == "docker" || f == "chrpath" {
			return "", errors.New("not found")
		}
		return "/usr/bin/" + f, nil
	}
	tests := []struct {
		name      string
		host      Host
		env       map[string]string
		container bool
		errHas    []string
	}{
		{name: "ready host builds natively", host: okHost()},
		{name: "forced container", host: okHost(), env: map[string]string{"DSTACK_CONTAINER": "1"}, container: true},
		{name: "host lacking tools falls back to docker", host: noTools, container: true},
		{name: "host lacking tools with DSTACK_CONTAINER=0 fails", host: noTools, env: map[string]string{"DSTACK_CONTAINER": "0"},
			errHas: []string{"program chrpath is not on PATH", "sudo apt-get install -y chrpath", "all packages at once: sudo apt-get install -y"}},
		{name: "no docker and root fails listing both", host: noDocker,
			errHas: []string{"chrpath", "BitBake refuses to run as root", "useradd", "or install docker"}},
		{name: "docker without a daemon is no fallback", host: func() Host {
			h := noTools
			h.EngineWorks = func(string) error { return errors.New("Cannot connect to the Docker daemon") }
			return h
		}(), errHas: []string{"program chrpath is not on PATH", "docker is installed but does not work", "Cannot connect to the Docker daemon"}},
		{name: "bad flavor env", host: okHost(), env: map[string]string{"DSTACK_CONTAINER": "maybe"}, errHas: []string{"DSTACK_CONTAINER"}},
		{name: "bad ENABLE_GCP_IMAGE", host: okHost(), env: map[string]string{"ENABLE_GCP_IMAGE": "perhaps"}, errHas: []string{"ENABLE_GCP_IMAGE"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			for k, v := range tc.env {
				f.env[k] = v
			}
			s, err := Configure(f.Env(tc.host))
			if tc.errHas != nil {
				if err == nil {
					t.Fatal("Configure succeeded")
				}
				for _, w := range tc.errHas {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error lacks %q:\n%v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Config.Container != nil; got != tc.container {
				t.Errorf("container = %v, want %v (notes %q)", got, tc.container, s.Notes)
			}
		})
	}
}

// TestConfigureSourceDateEpoch: SOURCE_DATE_EPOCH follows internal/epoch's
// rule (unset or empty: not given; else decimal seconds, 0 included), and a
// given value, 0 too, becomes REPRODUCIBLE_TIMESTAMP_ROOTFS in auto.conf.
func TestConfigureSourceDateEpoch(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		set         bool   // absent from the environment when false
		want        string // the auto.conf line; "" for none
		bad         bool
	}{
		{name: "unset"},
		{name: "empty", set: true},
		{name: "zero", value: "0", set: true, want: `REPRODUCIBLE_TIMESTAMP_ROOTFS = "0"`},
		{name: "commit time", value: "1700000000", set: true, want: `REPRODUCIBLE_TIMESTAMP_ROOTFS = "1700000000"`},
		{name: "leading zeros are decimal", value: "010", set: true, want: `REPRODUCIBLE_TIMESTAMP_ROOTFS = "10"`},
		{name: "word", value: "yesterday", set: true, bad: true},
		{name: "negative", value: "-1", set: true, bad: true},
		{name: "fraction", value: "1.5", set: true, bad: true},
		{name: "blank", value: " 1", set: true, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.set {
				f.env[epoch.Var] = tc.value
			}
			s, err := Configure(f.Env(okHost()))
			if tc.bad {
				if !errors.Is(err, epoch.ErrMalformed) || !strings.Contains(err.Error(), epoch.Var) {
					t.Fatalf("err = %v, want epoch.ErrMalformed naming %s", err, epoch.Var)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			auto := string(s.Config.autoConf())
			got := ""
			for _, l := range strings.Split(auto, "\n") {
				if strings.HasPrefix(l, "REPRODUCIBLE_TIMESTAMP_ROOTFS") {
					got = l
				}
			}
			if got != tc.want {
				t.Errorf("auto.conf line %q, want %q:\n%s", got, tc.want, auto)
			}
		})
	}
}

func TestUnknownFlavor(t *testing.T) {
	f := newFixture(t)
	f.env["DSTACK_FLAVORS"] = "prod staging"
	err := Build(context.Background(), f.Env(okHost()))
	if err == nil || !strings.Contains(err.Error(), `"staging"`) || !strings.Contains(err.Error(), "DSTACK_FLAVORS") {
		t.Fatalf("err = %v", err)
	}
	if c := f.calls(t); len(c) != 0 {
		t.Errorf("commands ran before the flavor check: %q", c)
	}
}

func TestMissingTemplateConf(t *testing.T) {
	for _, name := range []string{"local.conf.sample", "bblayers.conf.sample"} {
		f := newFixture(t)
		os.Remove(filepath.Join(f.root, "meta-dstack/conf/templates/default", name))
		err := Build(context.Background(), f.Env(okHost()))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Fatalf("without %s: err = %v", name, err)
		}
		if c := f.calls(t); len(c) != 0 {
			t.Errorf("without %s: commands ran: %q", name, c)
		}
	}
}

func TestCheckHost(t *testing.T) {
	h := okHost()
	if ps := CheckHost(h, "/", 100); len(ps) != 0 {
		t.Fatalf("ready host: %+v", ps)
	}
	h.LookPath = func(f string) (string, error) {
		if f == "lz4" || f == "rpcgen" {
			return "", errors.New("no")
		}
		return "/bin/" + f, nil
	}
	h.Locales = func() ([]string, error) { return []string{"C", "POSIX", "C.utf8"}, nil }
	h.FreeBytes = func(string) (uint64, error) { return 20e9, nil }
	h.EUID = 0
	ps := CheckHost(h, "/data/build", 100)
	text := FormatProblems(ps)
	for _, w := range []string{
		"program lz4 is not on PATH", "sudo apt-get install -y lz4",
		"program rpcgen is not on PATH", "sudo apt-get install -y rpcsvc-proto",
		"en_US.UTF-8", "locale-gen",
		"only 20.0 GB free at /data/build", "about 100 GB",
		"BitBake refuses to run as root",
		"all packages at once: sudo apt-get install -y locales lz4 rpcsvc-proto",
	} {
		if !strings.Contains(text, w) {
			t.Errorf("report lacks %q:\n%s", w, text)
		}
	}
	if len(ps) != 5 {
		t.Errorf("%d problems, want 5:\n%s", len(ps), text)
	}
}

func TestDefaultHostMatchesThisMachine(t *testing.T) {
	// The real probes work here: free space is positive, and `locale -a`
	// answers (its content varies by machine).
	h := DefaultHost()
	free, err := h.FreeBytes(filepath.Join(t.TempDir(), "not", "yet"))
	if err != nil || free == 0 {
		t.Fatalf("FreeBytes = %d, %v", free, err)
	}
	testutil.Need(t, "locale")
	if l, err := h.Locales(); err != nil || len(l) == 0 {
		t.Fatalf("Locales = %q, %v", l, err)
	}
}

func TestGCPCommands(t *testing.T) {
	got := GCPCommands("/x/images/dstack-0.5.5-gcp.tar.gz", "dstack-0.5.5", "gs://my-bucket/", "")
	for _, w := range []string{
		"gcloud storage cp /x/images/dstack-0.5.5-gcp.tar.gz gs://my-bucket/dstack-0.5.5-gcp.tar.gz\n",
		"gcloud compute images create dstack-0-5-5 \\\n    --source-uri=gs://my-bucket/dstack-0.5.5-gcp.tar.gz \\\n",
		"--guest-os-features=UEFI_COMPATIBLE,VIRTIO_SCSI_MULTIQUEUE,GVNIC,TDX_CAPABLE\n",
		"--confidential-compute-type=TDX", "--image=dstack-0-5-5",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("commands lack %q:\n%s", w, got)
		}
	}
	for in, want := range map[string]string{"dstack-0.5.5": "dstack-0-5-5", "0.1_x": "img-0-1-x", "Dstack-Dev-1.0": "dstack-dev-1-0"} {
		if g := GCPImageName(in); g != want {
			t.Errorf("GCPImageName(%q) = %q, want %q", in, g, want)
		}
	}
}

func TestGCPTarget(t *testing.T) {
	t.Run("builds when missing, then prints commands", func(t *testing.T) {
		f := newFixture(t)
		f.env["DSTACK_FLAVORS"] = ""
		f.env["GCS_BUCKET"] = "gs://b"
		if err := GCP(context.Background(), f.Env(okHost())); err != nil {
			t.Fatalf("GCP: %v\n%s", err, f.stdout.String())
		}
		if !strings.Contains(strings.Join(f.calls(t), "\n"), "bitbake mc:prod:") {
			t.Error("GCP did not build")
		}
		dist := f.vals.DistName()
		if !strings.Contains(f.stdout.String(), "gcloud storage cp "+filepath.Join(f.root, "images", dist+"-gcp.tar.gz")+" gs://b/"+dist+"-gcp.tar.gz") {
			t.Errorf("stdout:\n%s", f.stdout.String())
		}
	})
	t.Run("reuses existing outputs", func(t *testing.T) {
		f := newFixture(t)
		out := GCPFiles(filepath.Join(f.root, "images"), f.vals.DistName())
		os.MkdirAll(filepath.Dir(out.Disk), 0o755)
		os.WriteFile(out.Disk, []byte("d"), 0o644)
		os.WriteFile(out.Tarball, []byte("t"), 0o644)
		if err := GCP(context.Background(), f.Env(okHost())); err != nil {
			t.Fatal(err)
		}
		if c := f.calls(t); len(c) != 0 {
			t.Errorf("GCP rebuilt although the outputs exist: %q", c)
		}
		if !strings.Contains(f.stdout.String(), "Reusing") || !strings.Contains(f.stdout.String(), "TDX_CAPABLE") {
			t.Errorf("stdout:\n%s", f.stdout.String())
		}
	})
	t.Run("ENABLE_GCP_IMAGE=0 refuses", func(t *testing.T) {
		f := newFixture(t)
		f.env["ENABLE_GCP_IMAGE"] = "0"
		if err := GCP(context.Background(), f.Env(okHost())); err == nil || !strings.Contains(err.Error(), "ENABLE_GCP_IMAGE=0") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestShellLineQuoting(t *testing.T) {
	testutil.Need(t, "sh")
	argv := []string{"printf", "%s|", "a b", "it's", "", "$HOME", "x;y"}
	line := ShellLine("", nil, argv)
	out := testutil.Run(t, "sh", "-c", line)
	if want := "a b|it's||$HOME|x;y|"; out != want {
		t.Errorf("sh ran %s and printed %q, want %q", line, out, want)
	}
}
