package dist

import (
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// sha256sumOf runs sha256sum(1), the independent check.
func sha256sumOf(t *testing.T, path string) string {
	t.Helper()
	return strings.Fields(testutil.Run(t, "sha256sum", path))[0]
}

// TestSummer hashes, at the same time, complete files (empty, small, not a
// whole number of blocks, sparse with holes at the start, middle and end,
// several chunks long) and files while they are written in writes of random
// sizes, and compares every sum with sha256sum(1).
func TestSummer(t *testing.T) {
	testutil.Need(t, "sha256sum")
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(9, 10))
	data := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	files := map[string][]byte{
		"empty": nil,
		"small": data(100),
		"odd":   data(3*sumChunk + 12345),
		"exact": data(2 * sumChunk),
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// sparse: hole, data, hole, data, hole (holes of several chunks).
	sp, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	sp.WriteAt(data(5000), 3*sumChunk+100)
	sp.WriteAt(data(sumChunk+7), 7*sumChunk)
	sp.Truncate(11*sumChunk + 3)
	sp.Close()

	s := newSummer()
	defer s.stop()
	names := []string{"empty", "small", "odd", "exact", "sparse"}
	for _, n := range names[:2] {
		s.file(n, filepath.Join(dir, n))
	}
	// Writers run beside the complete files, in several goroutines.
	var wg sync.WaitGroup
	for i, size := range []int{0, 1, sumChunk - 1, 5*sumChunk + 999} {
		n := "written" + string(rune('a'+i))
		names = append(names, n)
		p := filepath.Join(dir, n)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		fw := s.follow(n, f)
		b := data(size)
		seed := uint64(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			wr := rand.New(rand.NewPCG(seed, 1))
			for len(b) > 0 {
				k := min(len(b), wr.IntN(3*sumChunk/2)+1)
				if _, err := fw.Write(b[:k]); err != nil {
					fw.finish(err)
					return
				}
				b = b[k:]
				if wr.IntN(4) == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			fw.finish(f.Close())
		}()
	}
	s.file("odd", filepath.Join(dir, "odd"))
	crcs := map[string]<-chan crcResult{
		"exact":  s.fileCRC("exact", filepath.Join(dir, "exact")),
		"sparse": s.fileCRC("sparse", filepath.Join(dir, "sparse")),
	}
	wg.Wait()
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
	for n, c := range crcs {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if r := <-c; r.err != nil || r.crc != crc32.ChecksumIEEE(b) {
			t.Errorf("%s: CRC-32 %08x, %v; want %08x", n, r.crc, r.err, crc32.ChecksumIEEE(b))
		}
	}
	for _, n := range names {
		if got, want := s.get(n), sha256sumOf(t, filepath.Join(dir, n)); got != want {
			t.Errorf("%s: summer %q, sha256sum %q", n, got, want)
		}
	}
}

// TestSummerErrors: a writer that fails leaves no sum, and wait reports
// neither a false sum nor a hang; a file that is missing is an error;
// stop ends a job whose writer never finishes.
func TestSummerErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a")
	f, _ := os.Create(p)
	defer f.Close()

	s := newSummer()
	fw := s.follow("a", f)
	fw.Write([]byte("partial"))
	fw.finish(errors.New("disk full"))
	s.file("missing", filepath.Join(dir, "missing"))
	crc := s.fileCRC("missing2", filepath.Join(dir, "missing"))
	err := s.wait()
	if r := <-crc; r.err == nil {
		t.Fatal("CRC-32 of a missing file: no error")
	}
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("wait: %v; want the writer's error and the missing file", err)
	}
	if s.get("a") != "" || s.get("missing") != "" {
		t.Fatal("a sum was recorded for a failed file")
	}

	// A writer that never finishes, and a second one queued behind it
	// (one archive is hashed at a time), blocked in Write: stop must not
	// hang, and the blocked Write fails.
	s = newSummer()
	fb := s.follow("b", f)
	fb.Write([]byte("b"))
	fc := s.follow("c", f)
	werr := make(chan error, 1)
	go func() { _, err := fc.Write([]byte("c")); werr <- err }()
	time.Sleep(50 * time.Millisecond)
	done := make(chan struct{})
	go func() { s.stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("stop hung on an unfinished writer")
	}
	if err := <-werr; !errors.Is(err, errStopped) {
		t.Fatalf("Write blocked behind another archive, after stop: %v", err)
	}
	if _, err := fb.Write([]byte("more")); !errors.Is(err, errStopped) {
		t.Fatalf("Write after stop: %v", err)
	}
}

// TestSummerGaps: while a writer is idle, the files queued beside it are
// hashed to the end, one after the other (one, two or three files, of
// sizes that end mid-chunk), and every sum is right.
func TestSummerGaps(t *testing.T) {
	testutil.Need(t, "sha256sum")
	for _, sizes := range [][]int{{3*sumChunk + 777}, {3*sumChunk + 777, sumChunk + 5}, {100, 2*sumChunk + 3, 4096}} {
		dir := t.TempDir()
		w, err := os.Create(filepath.Join(dir, "written"))
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(1, uint64(len(sizes))))
		s := newSummer()
		fw := s.follow("written", w)
		if _, err := fw.Write([]byte("first")); err != nil {
			t.Fatal(err)
		}
		names := []string{"written"}
		for i, n := range sizes {
			b := make([]byte, n)
			for k := range b {
				b[k] = byte(r.Uint32())
			}
			name := fmt.Sprint("file", i)
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
			s.file(name, filepath.Join(dir, name))
			names = append(names, name)
		}
		deadline := time.Now().Add(10 * time.Second)
		for _, n := range names[1:] {
			for s.get(n) == "" {
				if time.Now().After(deadline) {
					t.Fatalf("%v: %s was not hashed while the writer was idle", sizes, n)
				}
				time.Sleep(time.Millisecond)
			}
		}
		if _, err := fw.Write([]byte("second")); err != nil {
			t.Fatal(err)
		}
		fw.finish(w.Close())
		if err := s.wait(); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if got, want := s.get(n), sha256sumOf(t, filepath.Join(dir, n)); got != want {
				t.Errorf("%v: %s: summer %q, sha256sum %q", sizes, n, got, want)
			}
		}
	}
}
