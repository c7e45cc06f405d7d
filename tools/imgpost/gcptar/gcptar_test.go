package gcptar

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/epoch"
	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// sparseFile creates a file of size bytes with a few bytes of pseudo-random
// data written at each offset in at (everything else a hole).
func sparseFile(t testing.TB, path string, size int64, at []int64, chunk int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(uint64(size), 1))
	for _, off := range at {
		b := make([]byte, min(int64(chunk), size-off))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Chmod(0o644); err != nil {
		t.Fatal(err)
	}
}

func gnuTar(t testing.TB, dir, name string, mtime int64) []byte {
	t.Helper()
	cmd := exec.Command("tar", "--format=oldgnu", "-cSf", "-", "--owner=root:0", "--group=root:0", fmt.Sprintf("--mtime=@%d", mtime), name)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("tar: %v\n%s", err, errb.String())
	}
	return out.Bytes()
}

// TestTarMatchesGNU compares the uncompressed stream with GNU tar's, byte for
// byte, for sparse maps that fit the header, need one and several extension
// headers, end in data and end in a hole.
func TestTarMatchesGNU(t *testing.T) {
	testutil.Need(t, "tar")
	many := func(n int, step int64) []int64 {
		var a []int64
		for i := 0; i < n; i++ {
			a = append(a, int64(i)*step)
		}
		return a
	}
	const M = 1 << 20
	cases := []struct {
		name  string
		size  int64
		at    []int64
		chunk int
		mtime int64
	}{
		{"one-region-hole-end", 8 * M, []int64{0}, 4096, 0},
		{"three-regions", 8 * M, []int64{0, 2 * M, 5 * M}, 8192, 1700000000},
		{"four-regions-ext", 8 * M, []int64{0, 1 * M, 3 * M, 7 * M}, 4096, 0},
		{"ends-in-data", 8 * M, []int64{M, 8*M - 512}, 4096, 0},
		{"25-regions-two-ext", 64 * M, many(25, 2*M), 4096, 12345},
		{"60-regions-big-chunks", 256 * M, many(60, 4*M), 300000, 0},
		{"no-data", 4 * M, nil, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "disk.raw")
			sparseFile(t, p, tc.size, tc.at, tc.chunk)
			want := gnuTar(t, dir, "disk.raw", tc.mtime)
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			mt := time.Unix(tc.mtime, 0)
			var got bytes.Buffer
			if _, err := WriteTar(&got, f, Options{MTime: &mt}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				i := 0
				for i < min(got.Len(), len(want)) && got.Bytes()[i] == want[i] {
					i++
				}
				t.Fatalf("differs from GNU tar at byte %d (block %d); sizes %d vs %d", i, i/512, got.Len(), len(want))
			}
		})
	}
}

// TestArchiveRoundTrip checks the compressed archive with gzip, GNU tar and
// Go's archive/tar, and that SOURCE_DATE_EPOCH sets the member time.
func TestArchiveRoundTrip(t *testing.T) {
	testutil.Need(t, "tar", "gzip", "cmp")
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.raw")
	const M = 1 << 20
	sparseFile(t, p, 1<<30, []int64{0, M, 300 * M, 301 * M, 302 * M, 700 * M, 1<<30 - 4096}, 3*M)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	out := filepath.Join(dir, "disk-gcp.tar.gz")
	res, err := WriteFile(out, p, Options{BlockSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "gzip", "-t", out)
	list := testutil.Run(t, "tar", "--numeric-owner", "-tvzf", out)
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], " 1073741824 2023-11-14") || !strings.HasSuffix(lines[0], " disk.raw") || !strings.HasPrefix(lines[0], "-rw-r--r-- 0/0") {
		t.Fatalf("tar -tv: want one disk.raw of 1073741824 bytes, 0/0, 2023-11-14:\n%s", list)
	}
	// GNU tar extracts it, equal and still sparse.
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	testutil.Run(t, "tar", "-xSzf", out, "-C", x)
	testutil.Run(t, "cmp", p, filepath.Join(x, "disk.raw"))
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(x, "disk.raw"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 64*M {
		t.Errorf("extracted file has %d bytes allocated: not sparse", st.Blocks*512)
	}
	// Go's archive/tar reads one sparse member with the right size and content.
	arch, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	br := bytes.NewReader(arch) // an io.ByteReader: gzip reads no further than its member
	zr, err := gzip.NewReader(br)
	if err != nil {
		t.Fatal(err)
	}
	zr.Multistream(false)
	if zr.Name != "" || !zr.ModTime.IsZero() && zr.ModTime.Unix() != 0 {
		t.Errorf("gzip header has name %q / time %v", zr.Name, zr.ModTime)
	}
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	if h.Name != "disk.raw" || h.Size != 1<<30 || h.Typeflag != tar.TypeGNUSparse || h.ModTime.Unix() != 1700000000 || h.Uid != 0 || h.Uname != "root" {
		t.Fatalf("header %+v", h)
	}
	hw, hg := sha256.New(), sha256.New()
	if _, err := io.Copy(hw, tr); err != nil {
		t.Fatal(err)
	}
	g, _ := os.Open(p)
	io.Copy(hg, g)
	g.Close()
	if !bytes.Equal(hw.Sum(nil), hg.Sum(nil)) {
		t.Fatal("archive/tar content differs from the disk")
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatalf("second member: %v", err)
	}
	// After the end-of-archive blocks only record padding (zeros), then the
	// end of the single gzip member.
	rest, err := io.ReadAll(zr)
	if err != nil || len(rest) >= 10240 || !bytes.Equal(rest, make([]byte, len(rest))) {
		t.Fatalf("after the tar: %d bytes, %v", len(rest), err)
	}
	if br.Len() != 0 {
		t.Fatalf("%d bytes after the first gzip member", br.Len())
	}
	if res.DiskSize != 1<<30 || len(res.Regions) < 4 {
		t.Errorf("result %+v", res)
	}
}

// TestDeterministic: same bytes across runs, worker counts and GOMAXPROCS.
func TestDeterministic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.raw")
	sparseFile(t, p, 256<<20, []int64{0, 10 << 20, 100 << 20}, 5<<20)
	var sums []string
	for _, w := range []int{1, 2, 5} {
		out := filepath.Join(dir, fmt.Sprintf("o%d.tar.gz", w))
		if _, err := WriteFile(out, p, Options{Workers: w}); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(out)
		sums = append(sums, fmt.Sprintf("%x", sha256.Sum256(b)))
	}
	if sums[0] != sums[1] || sums[1] != sums[2] {
		t.Fatalf("outputs differ: %v", sums)
	}
}

// TestGzipWriter checks the parallel compressor against gzip(1) and Go's
// reader over sizes around the block size and mixed data.
func TestGzipWriter(t *testing.T) {
	testutil.Need(t, "gzip")
	r := rand.New(rand.NewPCG(5, 6))
	mixed := make([]byte, 3<<20)
	for i := range mixed {
		if (i/70000)%2 == 0 {
			mixed[i] = byte(r.Uint32())
		} else {
			mixed[i] = "the quick brown fox jumps over the lazy dog\n"[i%44]
		}
	}
	bs := 64 << 10
	for _, tc := range []struct {
		name    string
		n       int
		workers int
		level   int
	}{
		{"empty", 0, 2, 6}, {"one", 1, 2, 6}, {"block", bs, 2, 6}, {"block+1", bs + 1, 3, 6},
		{"dict-short", bs/2 + 7, 1, 6}, {"many", len(mixed), 2, 6}, {"level1", len(mixed), 2, 1}, {"level9", len(mixed), 4, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mixed[:tc.n]
			var out bytes.Buffer
			z, err := NewGzipWriter(&out, tc.level, tc.workers, bs)
			if err != nil {
				t.Fatal(err)
			}
			// Uneven writes.
			for rest := in; len(rest) > 0; {
				c := min(len(rest), 1+int(r.Uint32()%100000))
				if _, err := z.Write(rest[:c]); err != nil {
					t.Fatal(err)
				}
				rest = rest[c:]
			}
			if err := z.Close(); err != nil {
				t.Fatal(err)
			}
			if got := testutil.Gunzip(t, out.Bytes()); !bytes.Equal(got, in) {
				t.Fatalf("gzip -dc gives %d bytes, want %d (or content differs)", len(got), len(in))
			}
			if b := out.Bytes(); b[3] != 0 || !bytes.Equal(b[4:8], []byte{0, 0, 0, 0}) {
				t.Errorf("gzip header flags %x mtime %x", b[3], b[4:8])
			}
			if tc.n == len(mixed) && tc.level == 6 && out.Len() > len(in)*3/4 {
				t.Errorf("compressed %d -> %d: too little", len(in), out.Len())
			}
		})
	}
}

// TestGzipSplice cuts a segment out of one compressed stream (SetCuts,
// Marks) and splices its compressed bytes into another (WriteCompressed):
// gzip(1) must decode both, and the spliced one must give the other stream's
// data around the segment — which fails if the segment's blocks referred to
// data before the cut (the data repeats, so DEFLATE would reach back).
func TestGzipSplice(t *testing.T) {
	testutil.Need(t, "gzip")
	r := rand.New(rand.NewPCG(7, 8))
	text := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			if (i/5000)%3 == 0 {
				b[i] = byte(r.Uint32())
			} else {
				b[i] = "dm-verity hash tree over a squashfs rootfs\n"[i%43] + seed%2
			}
		}
		return b
	}
	bs := 64 << 10
	for _, tc := range []struct {
		name     string
		p, s, q  int // stream A: prefix, segment, suffix
		x, y     int // stream B: before and after the spliced segment
		readFrom bool
		workers  int
	}{
		{"middle", 100000, 300000, 50000, 7000, 9000, false, 2},
		{"at-start", 0, 200000, 10, 0, 1, false, 3},
		{"block-aligned", bs, 2 * bs, bs, bs, 0, true, 2},
		{"small", 10, 20, 30, 40, 50, true, 1},
		{"to-end", 5000, 70000, 0, 100, 100, false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			P, S, Q := text(tc.p, 0), text(tc.s, 0), text(tc.q, 1)
			a := append(append(append([]byte(nil), P...), S...), Q...)
			var outA bytes.Buffer
			z, err := NewGzipWriter(&outA, 6, tc.workers, bs)
			if err != nil {
				t.Fatal(err)
			}
			if err := z.SetCuts(int64(tc.p), int64(tc.p+tc.s)); err != nil {
				t.Fatal(err)
			}
			if tc.readFrom {
				if _, err := z.ReadFrom(bytes.NewReader(a)); err != nil {
					t.Fatal(err)
				}
			} else {
				for rest := a; len(rest) > 0; {
					c := min(len(rest), 1+int(r.Uint32()%40000))
					z.Write(rest[:c])
					rest = rest[c:]
				}
			}
			if err := z.Close(); err != nil {
				t.Fatal(err)
			}
			if got := testutil.Gunzip(t, outA.Bytes()); !bytes.Equal(got, a) {
				t.Fatalf("stream A decodes to %d bytes, want %d (or differs)", len(got), len(a))
			}
			m := z.Marks()
			if len(m) != 2 {
				t.Fatalf("%d marks, want 2", len(m))
			}
			if m[0].In != int64(tc.p) || m[1].In != int64(tc.p+tc.s) {
				t.Fatalf("marks at input %d, %d; want %d, %d", m[0].In, m[1].In, tc.p, tc.p+tc.s)
			}
			if m[0].CRC != crc32.ChecksumIEEE(P) || m[1].CRC != crc32.ChecksumIEEE(S) {
				t.Fatalf("mark CRCs %08x %08x, want %08x %08x", m[0].CRC, m[1].CRC, crc32.ChecksumIEEE(P), crc32.ChecksumIEEE(S))
			}
			seg := outA.Bytes()[m[0].Out:m[1].Out]

			X, Y := text(tc.x, 1), text(tc.y, 0)
			var outB bytes.Buffer
			zb, err := NewGzipWriter(&outB, 6, 2, bs)
			if err != nil {
				t.Fatal(err)
			}
			zb.Write(X)
			if err := zb.WriteCompressed(bytes.NewReader(seg), int64(len(S)), m[1].CRC); err != nil {
				t.Fatal(err)
			}
			zb.Write(Y)
			if err := zb.Close(); err != nil {
				t.Fatal(err)
			}
			want := append(append(append([]byte(nil), X...), S...), Y...)
			if got := testutil.Gunzip(t, outB.Bytes()); !bytes.Equal(got, want) {
				t.Fatalf("spliced stream decodes to %d bytes, want %d (or differs)", len(got), len(want))
			}
		})
	}
	t.Run("bad-cuts", func(t *testing.T) {
		z, _ := NewGzipWriter(io.Discard, 6, 1, bs)
		defer z.Close()
		if err := z.SetCuts(10, 5); err == nil {
			t.Fatal("decreasing cuts accepted")
		}
		z.Write(make([]byte, 100))
		if err := z.SetCuts(50); err == nil {
			t.Fatal("a cut before the data already written accepted")
		}
	})
}

func TestCRC32Combine(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cases := [][2]int{{0, 0}, {0, 5}, {5, 0}, {1, 1}, {1000, 33333}, {1 << 20, 7}, {3, 1 << 20}, {1, 1<<22 + 12345}}
	for range 30 {
		cases = append(cases, [2]int{r.IntN(5000), r.IntN(300000)})
	}
	for _, n := range cases {
		a, b := make([]byte, n[0]), make([]byte, n[1])
		for i := range a {
			a[i] = byte(r.Uint32())
		}
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		want := crc32.ChecksumIEEE(append(append([]byte(nil), a...), b...))
		if got := crc32Combine(crc32.ChecksumIEEE(a), crc32.ChecksumIEEE(b), int64(len(b))); got != want {
			t.Errorf("%v: %08x want %08x", n, got, want)
		}
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "o.tar.gz")
	for _, in := range []string{filepath.Join(dir, "missing.raw"), dir} {
		if _, err := WriteFile(out, in, Options{}); err == nil {
			t.Errorf("%s: no error", in)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: left %v behind", in, ents)
		}
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	p := filepath.Join(t.TempDir(), "d.raw")
	sparseFile(t, p, 1<<20, []int64{0}, 10)
	if _, err := WriteFile(out, p, Options{}); !errors.Is(err, epoch.ErrMalformed) || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("bad SOURCE_DATE_EPOCH: %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("output left behind")
	}
}

func TestProgress(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.raw")
	sparseFile(t, p, 64<<20, []int64{0, 8 << 20, 40 << 20}, 3<<20)
	var last, calls int64
	res, err := WriteFile(filepath.Join(dir, "o.tar.gz"), p, Options{Progress: func(done, total int64) {
		if done <= last || done > total {
			t.Errorf("progress %d/%d after %d", done, total, last)
		}
		last = done
		calls++
	}})
	if err != nil {
		t.Fatal(err)
	}
	if last != res.DataSize || calls < 3 {
		t.Errorf("progress ended at %d after %d calls; data %d", last, calls, res.DataSize)
	}
}

// TestSegment: every data region of the disk is a segment of the archive
// whose bytes decode on their own (behind a fresh gzip header) to exactly
// that region, with its CRC-32; the archive still decodes (gzip -dc) to the
// tar stream WriteTar writes, and is what WriteFile (`imgpost gcp`) writes.
func TestSegment(t *testing.T) {
	testutil.Need(t, "gzip")
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.raw")
	const M = 1 << 20
	// Regions of whole tar blocks (one region's end is the next one's start in
	// the stream) and a last one of 1000 bytes (padded in the stream).
	sparseFile(t, p, 64*M+1000, []int64{0, 10 * M, 40 * M, 64 * M}, 3*M)
	disk, _ := os.ReadFile(p)
	f, _ := os.Open(p)
	defer f.Close()
	var out, tarStream bytes.Buffer
	r, err := Write(&out, f, Options{BlockSize: 128 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteTar(&tarStream, f, Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(testutil.Gunzip(t, out.Bytes()), tarStream.Bytes()) {
		t.Fatal("the archive does not decode to the tar stream")
	}
	if _, err := WriteFile(filepath.Join(dir, "again.tar.gz"), p, Options{BlockSize: 128 << 10}); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "again.tar.gz")); !bytes.Equal(again, out.Bytes()) {
		t.Fatal("WriteFile and Write give different archives")
	}
	if len(r.Segments) != len(r.Regions) || len(r.Segments) != 4 {
		t.Fatalf("%d segments for regions %v", len(r.Segments), r.Regions)
	}
	for i, seg := range r.Segments {
		want := disk[seg.Region.Offset : seg.Region.Offset+seg.Region.Size]
		if seg.Region != r.Regions[i] || seg.CRC != crc32.ChecksumIEEE(want) {
			t.Errorf("segment %d %+v: want region %+v, CRC %08x", i, seg, r.Regions[i], crc32.ChecksumIEEE(want))
		}
		if got, ok := r.Segment(seg.Region); !ok || got != seg {
			t.Errorf("Segment(%+v) = %+v, %v", seg.Region, got, ok)
		}
		// The segment alone, behind a gzip header, is a complete stream once
		// an empty final block and the trailer are added.
		raw := out.Bytes()[seg.Offset : seg.Offset+seg.Size]
		var alone bytes.Buffer
		alone.Write([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3})
		alone.Write(raw)
		alone.Write([]byte{3, 0}) // final fixed-Huffman block with only end-of-block
		binary.Write(&alone, binary.LittleEndian, seg.CRC)
		binary.Write(&alone, binary.LittleEndian, uint32(seg.Region.Size))
		if got := testutil.Gunzip(t, alone.Bytes()); !bytes.Equal(got, want) {
			t.Errorf("segment %d decodes to %d bytes, want the %d disk bytes", i, len(got), len(want))
		}
	}
	if _, ok := r.Segment(Region{10*M + 4096, 2 * M}); ok {
		t.Error("a range inside a region is not a segment")
	}
}
