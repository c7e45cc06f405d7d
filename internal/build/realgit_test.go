package build

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"gopkg.in/yaml.v3"
)

// TestFetchWithRealGit runs the plan's fetch steps with the real git against
// local repositories: each layer ends up checked out at its pinned commit
// (also one that is not the branch tip), shallow, and a second build finds
// the commits present and fetches nothing.
func TestFetchWithRealGit(t *testing.T) {
	testutil.Need(t, "git")
	f := newFixture(t)
	// Real git, fake bitbake only.
	os.Remove(filepath.Join(f.bin, "git"))
	gitEnv := []string{"HOME=" + f.root, "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@e", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@e", "PATH=/usr/bin:/bin"}
	git := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
		cmd.Env = gitEnv
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	pins := map[string]string{}
	v := *f.vals
	v.Layers = nil
	for i, name := range []string{"bitbake", "openembedded-core"} {
		src := filepath.Join(f.root, "upstream", name)
		os.MkdirAll(src, 0o755)
		git(src, "init", "-q", "-b", "main")
		git(src, "commit", "-q", "--allow-empty", "-m", "first")
		first := git(src, "rev-parse", "HEAD")
		git(src, "commit", "-q", "--allow-empty", "-m", "second")
		pin := first // bitbake: an older commit, not the tip
		if i == 1 {
			pin = git(src, "rev-parse", "HEAD")
		}
		pins[name] = pin
		layer := f.vals.Layers[0]
		layer.Name, layer.URL, layer.Branch, layer.Commit = name, "file://"+src, "main", pin
		layer.Subdirs = nil
		v.Layers = append(v.Layers, layer)
	}
	y, err := yaml.Marshal(&v)
	if err != nil {
		t.Fatal(err)
	}
	vpath := filepath.Join(f.root, "values.yaml")
	os.WriteFile(vpath, y, 0o644)
	f.env["VALUES"] = vpath
	f.env["DSTACK_FLAVORS"] = "prod"

	env := f.Env(okHost())
	env.Environ = append(env.Environ, gitEnv[1:5]...) // identity only; PATH stays the fixture's
	if err := Build(context.Background(), env); err != nil {
		t.Fatalf("Build: %v\n%s\n%s", err, f.stdout.String(), f.stderr.String())
	}
	for name, pin := range pins {
		dir := filepath.Join(f.root, ".cache/layers", name)
		if got := git(dir, "rev-parse", "HEAD"); got != pin {
			t.Errorf("%s at %s, want %s", name, got, pin)
		}
		if got := git(dir, "rev-parse", "--is-shallow-repository"); got != "true" {
			t.Errorf("%s: shallow = %s", name, got)
		}
	}
	f.stdout.Reset()
	if err := Build(context.Background(), env); err != nil {
		t.Fatalf("second Build: %v\n%s", err, f.stdout.String())
	}
	if n := strings.Count(f.stdout.String(), "already done, skipped"); n != 2 {
		t.Errorf("second build skipped %d fetches, want 2:\n%s", n, f.stdout.String())
	}
}
