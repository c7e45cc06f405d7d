package build

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// fakeDocker records its arguments; no container engine runs here.
const fakeDocker = `#!/bin/sh
printf 'docker %s\n' "$*" >> "$FAKE_LOG"
`

// fakeGo stands in for the go command the script calls: `go run mage.go build`
// records the build's environment and leaves an images/ tree (build-b's disk
// differs in one byte when FAKE_DIFFER is set); `go run ./repro-build/compare`
// runs the real comparison command, built by the test.
const fakeGo = `#!/bin/sh
if [ "$1 $2 $3" = "run mage.go build" ]; then
  printf 'build images=%s container=%s image=%s sde=%s rev=%s dl=%s sstate=%s pwd=%s\n' \
    "$DSTACK_IMAGES_DIR" "$DSTACK_CONTAINER" "$DSTACK_CONTAINER_IMAGE" "$SOURCE_DATE_EPOCH" \
    "$DSTACK_GIT_REVISION" "$DL_DIR" "${SSTATE_DIR-unset}" "$PWD" >> "$FAKE_LOG"
  d="$DSTACK_IMAGES_DIR/dstack-0.5.5"
  mkdir -p "$d/gcp"
  echo '{"version":"0.5.5"}' > "$d/metadata.json"
  head -c 300000 /dev/zero > "$d/gcp/disk.raw"
  case "$DSTACK_IMAGES_DIR" in
    */build-b/*) if [ -n "$FAKE_DIFFER" ]; then printf 'X' | dd of="$d/gcp/disk.raw" bs=1 seek=123457 conv=notrunc 2>/dev/null; fi ;;
  esac
  echo 'tarball' > "$DSTACK_IMAGES_DIR/dstack-0.5.5.tar.gz"
  exit 0
fi
if [ "$1 $2" = "run ./repro-build/compare" ]; then
  shift 2
  printf 'compare %s\n' "$*" >> "$FAKE_LOG"
  exec "$REAL_COMPARE" "$@"
fi
echo "fake go: unexpected $*" >&2
exit 99
`

type scriptRun struct {
	repo, log string
	out       string
	code      int
}

// runReproScript runs repro-build.sh from a scratch clone of this repository's
// repro-build/ directory, with fake docker and go on PATH, as an unprivileged
// user (the script refuses root, as BitBake does).
func runReproScript(t *testing.T, compare string, dirty bool, env []string, args ...string) scriptRun {
	t.Helper()
	testutil.Need(t, "git", "sha256sum", "setpriv")
	root := testutil.RepoRoot(t)
	base := t.TempDir()
	os.Chmod(base, 0o755)
	os.Chmod(filepath.Dir(base), 0o755) // the unprivileged user must reach it
	repo := filepath.Join(base, "repo")
	bin := filepath.Join(base, "bin")
	home := filepath.Join(base, "home")
	for _, d := range []string{filepath.Join(repo, "repro-build"), bin, home} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"repro-build.sh", "Dockerfile", ".gitignore", ".dockerignore"} {
		info, err := os.Stat(filepath.Join(root, "repro-build", f))
		if err != nil {
			t.Fatal(err)
		}
		copyFile(t, filepath.Join(root, "repro-build", f), filepath.Join(repo, "repro-build", f), info.Mode().Perm())
	}
	os.WriteFile(filepath.Join(bin, "docker"), []byte(fakeDocker), 0o755)
	os.WriteFile(filepath.Join(bin, "go"), []byte(fakeGo), 0o755)
	log := filepath.Join(base, "calls.log")
	os.WriteFile(log, nil, 0o666)
	gitEnv := []string{"HOME=" + home, "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@e", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@e",
		"GIT_AUTHOR_DATE=@1700000000 +0000", "GIT_COMMITTER_DATE=@1700000000 +0000", "PATH=/usr/bin:/bin"}
	for _, c := range [][]string{{"init", "-q"}, {"add", "-A"}, {"commit", "-q", "-m", "scratch"}} {
		cmd := exec.Command("git", c...)
		cmd.Dir, cmd.Env = repo, gitEnv
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", c, err, out)
		}
	}
	if dirty {
		os.WriteFile(filepath.Join(repo, "untracked.txt"), []byte("x"), 0o644)
	}
	argv := append([]string{filepath.Join(repo, "repro-build", "repro-build.sh")}, args...)
	if os.Geteuid() == 0 {
		if err := exec.Command("chown", "-R", "65534:65534", base).Run(); err != nil {
			t.Fatal(err)
		}
		argv = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=" + bin + ":/usr/bin:/bin", "HOME=" + home, "FAKE_LOG=" + log, "REAL_COMPARE=" + compare,
		"SSTATE_DIR=/should/be/unset"}, env...)
	out, err := cmd.CombinedOutput()
	r := scriptRun{repo: repo, log: log, out: string(out)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r scriptRun) calls(t *testing.T) []string {
	b, err := os.ReadFile(r.log)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

func TestReproBuildScript(t *testing.T) {
	testutil.Need(t, "go")
	compare := filepath.Join(t.TempDir(), "compare")
	build := exec.Command("go", "build", "-trimpath", "-o", compare, "./repro-build/compare")
	build.Dir = testutil.RepoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build compare: %v\n%s", err, out)
	}
	os.Chmod(filepath.Dir(compare), 0o755)
	os.Chmod(filepath.Dir(filepath.Dir(compare)), 0o755)
	df, err := os.ReadFile(filepath.Join(testutil.RepoRoot(t), "repro-build", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	tag := ImageTag(df)

	t.Run("reproducible", func(t *testing.T) {
		r := runReproScript(t, compare, false, nil)
		if r.code != 0 {
			t.Fatalf("exit %d:\n%s", r.code, r.out)
		}
		calls := r.calls(t)
		rb := filepath.Join(r.repo, "repro-build")
		head := strings.TrimSpace(gitOut(t, r.repo, "rev-parse", "HEAD"))
		wantBuild := func(x string) string {
			return fmt.Sprintf("build images=%s/build-%s/images container=1 image=%s sde=1700000000 rev=%s dl=%s/downloads sstate=unset pwd=%s",
				rb, x, tag, head, rb, r.repo)
		}
		want := []string{
			"docker build -t " + tag + " -f " + rb + "/Dockerfile " + rb,
			wantBuild("a"), wantBuild("b"),
			"compare -commit " + head + " -reproduce " + rb + "/reproduce.sh -sums " + rb + "/expected.sha256 " + rb + "/build-a/images " + rb + "/build-b/images",
		}
		if strings.Join(calls, "\n") != strings.Join(want, "\n") {
			t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
		}
		if !strings.Contains(r.out, "REPRODUCIBLE: 3 files identical") {
			t.Errorf("output:\n%s", r.out)
		}
		script, err := os.ReadFile(filepath.Join(rb, "reproduce.sh"))
		if err != nil {
			t.Fatalf("reproduce.sh not written: %v\n%s", err, r.out)
		}
		if !strings.Contains(string(script), "git checkout "+head) {
			t.Errorf("reproduce.sh:\n%s", script)
		}
		// The agreed sums check out against build-a with the real sha256sum.
		cmd := exec.Command("sha256sum", "-c", filepath.Join(rb, "expected.sha256"))
		cmd.Dir = filepath.Join(rb, "build-a", "images")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sha256sum -c: %v\n%s", err, out)
		}
	})
	t.Run("one byte differs", func(t *testing.T) {
		r := runReproScript(t, compare, false, []string{"FAKE_DIFFER=1"})
		if r.code != 1 {
			t.Fatalf("exit %d, want 1:\n%s", r.code, r.out)
		}
		if !strings.Contains(r.out, "DIFFERS  dstack-0.5.5/gcp/disk.raw: first differing byte at offset 123457") {
			t.Errorf("output:\n%s", r.out)
		}
		if _, err := os.Stat(filepath.Join(r.repo, "repro-build", "reproduce.sh")); err == nil {
			t.Error("reproduce.sh written although the builds differ")
		}
	})
	t.Run("-n builds once", func(t *testing.T) {
		r := runReproScript(t, compare, false, nil, "-n")
		if r.code != 0 {
			t.Fatalf("exit %d:\n%s", r.code, r.out)
		}
		calls := r.calls(t)
		if len(calls) != 2 || !strings.HasPrefix(calls[1], "build images="+filepath.Join(r.repo, "repro-build/build-a/images")) {
			t.Errorf("calls: %q", calls)
		}
	})
	t.Run("dirty tree: compared, no reproduce instructions", func(t *testing.T) {
		r := runReproScript(t, compare, true, nil)
		if r.code != 0 {
			t.Fatalf("exit %d:\n%s", r.code, r.out)
		}
		if !strings.Contains(r.out, "not clean") || !strings.Contains(r.out, "REPRODUCIBLE") {
			t.Errorf("output:\n%s", r.out)
		}
		if _, err := os.Stat(filepath.Join(r.repo, "repro-build", "reproduce.sh")); err == nil {
			t.Error("reproduce.sh written for a dirty tree")
		}
	})
}

func gitOut(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "safe.directory=*", "-C", dir}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %v: %v", args, err)
	}
	return string(out)
}
