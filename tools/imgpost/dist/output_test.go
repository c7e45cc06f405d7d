package dist

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/gcptar"
)

// TestOutput: a reservation estimated too large or too small leaves a file
// of exactly the bytes written; a fixed-size file keeps its size, and only
// the reserved range is allocated (sparse map); abort leaves nothing; a
// reservation waits for the previous one.
func TestOutput(t *testing.T) {
	dir := t.TempDir()
	reserving := canReserve(t, dir)
	data := bytes.Repeat([]byte("dstack"), 3000) // 18000 bytes
	for _, est := range []int64{1 << 20, 4096, 0} {
		path := filepath.Join(dir, fmt.Sprintf("archive-%d", est))
		o, err := newOutput(path, 0, []span{{0, est}}, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o.file().Write(data); err != nil {
			t.Fatal(err)
		}
		if err := o.commit(); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("estimate %d: file of %d bytes (%v), want the %d written", est, len(got), err, len(data))
		}
	}

	// A disk-like file: 8 MiB, [1 MiB, 3 MiB) reserved, then written over.
	path := filepath.Join(dir, "disk")
	first, err := newOutput(path, 8<<20, []span{{1 << 20, 2 << 20}}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	second, err := newOutput(filepath.Join(dir, "second"), 0, []span{{0, 1 << 20}}, true, first)
	if err != nil {
		t.Fatal(err)
	}
	<-second.reserved
	select {
	case <-first.reserved:
	default:
		t.Fatal("a reservation finished before the one it waits for")
	}
	f := first.file()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if reserving && st.Blocks*512 < 2<<20 {
		t.Errorf("disk: %d bytes allocated after reserving 2 MiB", st.Blocks*512)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{1}, 2<<20), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := first.commit(); err != nil {
		t.Fatal(err)
	}
	df, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	regions, size, err := gcptar.SparseMap(df)
	df.Close()
	if want := fmt.Sprint([]gcptar.Region{{Offset: 1 << 20, Size: 2 << 20}}, 8<<20); err != nil || fmt.Sprint(regions, size) != want {
		t.Errorf("disk: data regions %v %d (%v), want %s", regions, size, err, want)
	}
	second.abort()
	if _, err := os.Stat(filepath.Join(dir, "second")); !os.IsNotExist(err) {
		t.Errorf("aborted output left: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
