package dist

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// TestPublishFailureRestores: when a rename of the publish step fails (each
// one in turn: moving a previous output aside, or moving a new one in), the
// output directory is left exactly as the previous run left it, the
// previous run's -gcp.tar.gz and .tar.gz included, and no staging
// directory remains.
func TestPublishFailureRestores(t *testing.T) {
	testutil.Need(t, "mksquashfs")
	dir := t.TempDir()
	in := testutil.MakeDistInputs(t, dir, 1<<20, 7)
	out := filepath.Join(dir, "images")
	o := baseOptions(in, out)
	if _, err := Run(o); err != nil {
		t.Fatal(err)
	}
	before := tree(t, out)
	o.GitRevision = "another" // the new run's outputs differ
	defer func() { rename = os.Rename }()
	injected := errors.New("injected rename failure")
	for fail := 1; fail <= 6; fail++ { // 3 outputs: aside + in for each
		n := 0
		rename = func(a, b string) error {
			if n++; n == fail {
				return injected
			}
			return os.Rename(a, b)
		}
		_, err := Run(o)
		if !errors.Is(err, injected) {
			t.Fatalf("rename %d: error %v", fail, err)
		}
		if after := tree(t, out); !reflect.DeepEqual(after, before) {
			t.Fatalf("rename %d failed: output directory changed:\nbefore %v\nafter  %v", fail, before, after)
		}
	}
	rename = os.Rename
	if _, err := Run(o); err != nil {
		t.Fatal(err)
	}
	if after := tree(t, out); reflect.DeepEqual(after, before) {
		t.Fatal("the successful run changed nothing")
	}
}

// TestDistRefusesInputInOutput: an input inside the output directory dist
// replaces (or a tarball it writes) is refused before anything is written.
func TestDistRefusesInputInOutput(t *testing.T) {
	testutil.Need(t, "mksquashfs")
	dir := t.TempDir()
	in := testutil.MakeDistInputs(t, dir, 1<<20, 8)
	out := filepath.Join(dir, "images")
	o := baseOptions(in, out)
	o.NoGCP, o.NoTarball = true, true
	if _, err := Run(o); err != nil {
		t.Fatal(err)
	}
	o2 := o
	o2.Kernel = filepath.Join(out, "dstack-0.5.0", KernelName) // the previous run's copy
	if _, err := Run(o2); !errors.Is(err, atomicfile.ErrIsInput) || !strings.Contains(err.Error(), "inside the output directory") {
		t.Fatalf("kernel from the output directory: %v", err)
	}
	o3 := o
	o3.Initrd = filepath.Join(out, "dstack-0.5.0.tar.gz")
	os.WriteFile(o3.Initrd, []byte("x"), 0o644)
	if _, err := Run(o3); !errors.Is(err, atomicfile.ErrIsInput) || !strings.Contains(err.Error(), "is the input") {
		t.Fatalf("initrd named like the tarball: %v", err)
	}
}
