package build

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/internal/values"
)

// TestMageBuildTarget runs the real `mage build` target (the compiled
// magefiles, as `go run mage.go build` does) natively against this
// repository's values and layer templates, with fake git and bitbake on PATH
// and every other host tool stubbed where missing, as an unprivileged user.
// A failing BitBake must end the target with BitBake's exit status.
func TestMageBuildTarget(t *testing.T) {
	testutil.Need(t, "go", "setpriv")
	root := testutil.RepoRoot(t)
	if _, err := os.Stat(filepath.Join(root, "meta-dstack/conf/templates/default/local.conf.sample")); err != nil {
		t.Fatalf("the layer's build-configuration template is missing: %v", err)
	}
	v, err := values.Load(filepath.Join(root, values.DefaultPath))
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		os.Chmod(d, 0o755)
	}
	mage := filepath.Join(base, "mage-bin")
	compile := exec.Command("go", "run", "mage.go", "-compile", mage)
	compile.Dir = root
	if out, err := compile.CombinedOutput(); err != nil {
		t.Fatalf("compile the magefiles: %v\n%s", err, out)
	}
	bin := filepath.Join(base, "bin")
	os.MkdirAll(bin, 0o755)
	copyFile(t, "testdata/fake-git", filepath.Join(bin, "git"), 0o755)
	copyFile(t, "testdata/fake-bitbake", filepath.Join(bin, "bitbake"), 0o755)
	os.WriteFile(filepath.Join(bin, "locale"), []byte("#!/bin/sh\nprintf 'C\\nen_US.utf8\\n'\n"), 0o755)
	for _, tool := range RequiredTools {
		if _, err := exec.LookPath(tool.Program); err != nil && tool.Program != "git" {
			os.WriteFile(filepath.Join(bin, tool.Program), []byte("#!/bin/sh\nexit 0\n"), 0o755)
		}
	}

	run := func(t *testing.T, extra ...string) (string, int, string) {
		t.Helper()
		work := filepath.Join(base, filepath.Base(t.Name()))
		os.MkdirAll(work, 0o777)
		os.Chmod(work, 0o777)
		log := filepath.Join(work, "calls.log")
		argv := []string{mage, "build"}
		if os.Geteuid() == 0 {
			argv = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}, argv...)
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = root
		cmd.Env = append([]string{
			"PATH=" + bin + ":/usr/bin:/bin", "HOME=" + work,
			"DSTACK_CONTAINER=0", "DSTACK_MIN_FREE_GB=0",
			"DSTACK_LAYERS_DIR=" + filepath.Join(work, "layers"),
			"DSTACK_BUILD_DIR=" + filepath.Join(work, "build"),
			"DSTACK_IMAGES_DIR=" + filepath.Join(work, "images"),
			"FAKE_LOG=" + log, "FAKE_MACHINE=" + v.Machine.Name, "FAKE_DIST=" + v.DistName(),
		}, extra...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code, work
	}

	t.Run("success", func(t *testing.T) {
		out, code, work := run(t)
		if code != 0 {
			t.Fatalf("mage build exit %d:\n%s", code, out)
		}
		if _, err := os.Stat(filepath.Join(work, "images", v.DistName(), "metadata.json")); err != nil {
			t.Errorf("outputs not collected: %v\n%s", err, out)
		}
		calls, _ := os.ReadFile(filepath.Join(work, "calls.log"))
		if !strings.Contains(string(calls), "bitbake mc:prod:"+v.Images.Rootfs+"\n") {
			t.Errorf("calls:\n%s", calls)
		}
	})
	t.Run("failing bitbake", func(t *testing.T) {
		out, code, work := run(t, "FAKE_BITBAKE_EXIT=7")
		if code != 7 {
			t.Fatalf("mage build exit %d, want BitBake's 7:\n%s", code, out)
		}
		if !strings.Contains(out, "fake bitbake failing with 7") {
			t.Errorf("output:\n%s", out)
		}
		if _, err := os.Stat(filepath.Join(work, "images")); err == nil {
			t.Error("images/ created although BitBake failed")
		}
	})
	t.Run("host not ready, no container", func(t *testing.T) {
		// Root (when the test runs as root) or a missing tool: the target
		// refuses with the list and the fix, before fetching anything.
		out, code, work := run(t, "DSTACK_MIN_FREE_GB=100000000")
		if code != 1 || !strings.Contains(out, "host check: this host cannot run BitBake natively") || !strings.Contains(out, "GB free") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		if _, err := os.Stat(filepath.Join(work, "calls.log")); err == nil {
			t.Error("commands ran although the host check failed")
		}
	})
}
