package repro

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// benchTrees makes (once, cached under os.TempDir()) two identical trees each
// holding one incompressible file of IMGPOST_BENCH_MIB MiB (default 64).
func benchTrees(b *testing.B) (a, bb string, size int64) {
	b.Helper()
	mib := int64(64)
	if s := os.Getenv("IMGPOST_BENCH_MIB"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			b.Fatalf("IMGPOST_BENCH_MIB=%q", s)
		}
		mib = n
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("repro-bench-%d", mib))
	a, bb = filepath.Join(dir, "a"), filepath.Join(dir, "b")
	size = mib << 20
	for _, d := range []string{a, bb} {
		p := filepath.Join(d, "disk.raw")
		if st, err := os.Stat(p); err == nil && st.Size() == size {
			continue
		}
		os.MkdirAll(d, 0o755)
		testutil.WriteRandom(b, p, size, 42)
	}
	return a, bb, size
}

// BenchmarkCompare measures the streaming comparison of two identical trees
// beside the upstream check's method (md5sum of both files) in the same run.
func BenchmarkCompare(b *testing.B) {
	testutil.Need(b, "md5sum")
	a, bb, size := benchTrees(b)
	var ours, theirs time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		r, err := Compare(a, bb)
		if err != nil || !r.Same() {
			b.Fatalf("Compare: %v", err)
		}
		ours += time.Since(t0)
		t0 = time.Now()
		if out, err := exec.Command("md5sum", filepath.Join(a, "disk.raw"), filepath.Join(bb, "disk.raw")).CombinedOutput(); err != nil {
			b.Fatalf("md5sum: %v\n%s", err, out)
		}
		theirs += time.Since(t0)
	}
	b.SetBytes(2 * size)
	b.ReportMetric(ours.Seconds()/float64(b.N), "s-compare")
	b.ReportMetric(theirs.Seconds()/float64(b.N), "s-md5sum")
	b.ReportMetric(theirs.Seconds()/ours.Seconds(), "x-vs-md5sum")
}
