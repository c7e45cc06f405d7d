package build

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

func TestReproBuildDockerfileIsPinned(t *testing.T) {
	root := testutil.RepoRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "repro-build", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	problems, pkgs := CheckDockerfile(string(b))
	if len(problems) > 0 {
		t.Errorf("repro-build/Dockerfile is not reproducible:\n  %s", strings.Join(problems, "\n  "))
	}
	if !strings.Contains(string(b), "FROM ") {
		t.Fatal("no FROM in the Dockerfile")
	}
	// The container must pass the host check the native build makes.
	have := map[string]bool{}
	for _, p := range pkgs {
		have[p] = true
	}
	for _, tool := range RequiredTools {
		if !have[tool.Package] {
			t.Errorf("the builder image lacks %s (package %s) that BitBake needs", tool.Program, tool.Package)
		}
	}
	if !have["locales"] || !strings.Contains(string(b), "locale-gen") {
		t.Error("the builder image does not generate the en_US.UTF-8 locale")
	}
}

// The checker itself must catch what it is there to catch.
func TestCheckDockerfileFlags(t *testing.T) {
	const snap = "RUN rm -f /etc/apt/sources.list.d/debian.sources && printf '%s\\n' 'deb http://snapshot.debian.org/archive/debian/20251229T000000Z bookworm main' > /etc/apt/sources.list\n"
	const digest = "FROM debian:bookworm@sha256:4216e8fe27fdd803d2822d08ed9de39825a41a47e34c32b71a23ac074f91eaf4\n"
	tests := []struct {
		name, file string
		want       string // substring of a problem; "" = clean
	}{
		{"pinned", digest + snap + "RUN apt-get update && apt-get install -y --no-install-recommends \\\n  git \\\n  gawk\n", ""},
		{"exact versions without snapshot", digest + "RUN apt-get update && apt-get install -y git=1:2.39.5-0+deb12u2\n", "apt sources pinned"},
		{"tag only", "FROM debian:bookworm\n" + snap, "not pinned by @sha256"},
		{"second stage tag only", digest + "FROM golang:1.26 AS go\n", "golang:1.26 is not pinned"},
		{"moving mirror", digest + "RUN apt-get update && apt-get install -y git\n", "snapshot.debian.org date"},
		{"snapshot without dropping debian.sources", digest +
			"RUN printf '%s\\n' 'deb http://snapshot.debian.org/archive/debian/20251229T000000Z bookworm main' > /etc/apt/sources.list\nRUN apt-get install -y git\n", "snapshot.debian.org date"},
		{"undated source", digest + "RUN rm -f /etc/apt/sources.list.d/debian.sources && printf '%s\\n' 'deb http://deb.debian.org/debian bookworm main' > /etc/apt/sources.list\n", "not a dated snapshot"},
		{"variable package list", digest + snap + "RUN apt-get install -y $PKGS\n", "variable $PKGS"},
		{"upgrade", digest + snap + "RUN apt-get update && apt-get upgrade -y\n", "upgraded"},
		{"curl pipe sh", digest + snap + "RUN curl -sSf https://sh.rustup.rs | sh -s -- -y\n", "piped into a shell"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			problems, _ := CheckDockerfile(tc.file)
			joined := strings.Join(problems, "\n")
			if tc.want == "" && len(problems) > 0 {
				t.Errorf("clean file flagged:\n%s", joined)
			}
			if tc.want != "" && !strings.Contains(joined, tc.want) {
				t.Errorf("problems %q lack %q", joined, tc.want)
			}
		})
	}
}

func TestReproBuildScriptsPassShellcheck(t *testing.T) {
	testutil.Need(t, "shellcheck")
	root := testutil.RepoRoot(t)
	scripts, _ := filepath.Glob(filepath.Join(root, "repro-build", "*.sh"))
	scripts = append(scripts, "testdata/fake-git", "testdata/fake-bitbake")
	if len(scripts) < 3 {
		t.Fatalf("no scripts found in repro-build/: %q", scripts)
	}
	for _, s := range scripts {
		if out, err := exec.Command("shellcheck", s).CombinedOutput(); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", s, err, out)
		}
	}
}

// repro-build.sh and `mage build` must name the builder image alike, or the
// script's prebuilt image would be rebuilt under another tag.
func TestImageTagMatchesScript(t *testing.T) {
	testutil.Need(t, "sha256sum")
	root := testutil.RepoRoot(t)
	df := filepath.Join(root, "repro-build", "Dockerfile")
	b, err := os.ReadFile(df)
	if err != nil {
		t.Fatal(err)
	}
	out := testutil.Run(t, "sh", "-c", `printf 'dstack-repro-build:%s' "$(sha256sum "$1" | cut -c1-12)"`, "sh", df)
	if got := ImageTag(b); got != out {
		t.Errorf("ImageTag = %s, script computes %s", got, out)
	}
	script, err := os.ReadFile(filepath.Join(root, "repro-build", "repro-build.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(script), `TAG="dstack-repro-build:$(sha256sum "$THIS_DIR/Dockerfile" | cut -c1-12)"`) {
		t.Error("repro-build.sh no longer computes the tag the way this test checks")
	}
}

func TestReproBuildScriptUsage(t *testing.T) {
	root := testutil.RepoRoot(t)
	script := filepath.Join(root, "repro-build", "repro-build.sh")
	for _, args := range [][]string{{"-x"}, {"extra"}} {
		cmd := exec.Command(script, args...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errorsAs(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "usage:") {
			t.Errorf("repro-build.sh %q: %v\n%s", args, err, out)
		}
	}
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}
