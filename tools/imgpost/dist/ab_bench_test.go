package dist

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/sha256x2"
)

// abVariant is dist with one speed-up turned off.
type abVariant struct {
	name string
	set  func(off bool) // off: the speed-up is disabled
}

var abVariants = []abVariant{
	{"base", func(bool) {}},
	// sums.go: the hashing scheduler, against a goroutine per file and
	// archives hashed in their writers.
	{"plain-sums", func(off bool) { plainSums = off }},
	// sha256x2: two SHA-256 lanes at once, against crypto/sha256.
	{"no-sha256x2", func(off bool) { sha256x2.SetAccelerated(!off) }},
	// atomicfile's early writeback, against dirty pages left for the fsync
	// in Commit (no difference on tmpfs).
	{"no-writeback", func(off bool) { atomicfile.SetEarlyWriteback(!off) }},
}

// BenchmarkDistAB measures what each of dist's speed-ups is worth: dist on
// the benchmark squashfs with all of them (base) and with each one turned
// off, IMGPOST_BENCH_ROUNDS rounds (default 3) in a rotating order, in the
// same run. It reports each variant's median time over base's
// (x-<variant>: above 1 means the speed-up saves time). The work directory
// follows testutil.BenchDir (IMGPOST_BENCH_DIR for a disk file system).
func BenchmarkDistAB(b *testing.B) {
	testutil.Need(b, "mksquashfs")
	rounds := 3
	if s := os.Getenv("IMGPOST_BENCH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("IMGPOST_BENCH_ROUNDS=%q: want a positive number", s)
		}
		rounds = n
	}
	sq := testutil.BenchSquashfs(b)
	st, err := os.Stat(sq)
	if err != nil {
		b.Fatal(err)
	}
	in := testutil.MakeDistInputs(b, b.TempDir(), 0, 1)
	w := benchWorkDir(b, 5*st.Size()+(1<<30))
	local := filepath.Join(w, "rootfs.squashfs")
	testutil.Run(b, "cp", sq, local)
	times := map[string][]float64{}
	b.ResetTimer()
	for range b.N {
		for r := 0; r < rounds; r++ {
			for k := range abVariants {
				v := abVariants[(k+r)%len(abVariants)]
				out := filepath.Join(w, "out")
				o := Options{Kernel: in.Kernel, Initrd: in.Initrd, Rootfs: local, Stub: in.Stub,
					DistName: "dstack", Version: "bench", Flavor: "prod", OutDir: out}
				v.set(true)
				t0 := time.Now()
				_, err := Run(o)
				d := time.Since(t0)
				v.set(false)
				if err != nil {
					b.Fatalf("%s: %v", v.name, err)
				}
				os.RemoveAll(out)
				times[v.name] = append(times[v.name], d.Seconds())
			}
		}
	}
	b.StopTimer()
	med := func(x []float64) float64 {
		y := append([]float64(nil), x...)
		sort.Float64s(y)
		return y[len(y)/2]
	}
	base := med(times["base"])
	for _, v := range abVariants {
		m := med(times[v.name])
		b.ReportMetric(m, "s-"+v.name)
		if v.name != "base" {
			b.ReportMetric(m/base, "x-"+v.name)
		}
		b.Logf("%-12s median %.2f s of %s", v.name, m, fmt.Sprint(times[v.name]))
	}
}
