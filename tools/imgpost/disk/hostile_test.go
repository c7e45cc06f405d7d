package disk

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// The issue-14 hang and crash disks, as committed to ../testdata/hostile
// (gzip'd; the imgpost tests run the binary on them and bound its time and
// memory). IMGPOST_WRITE_TESTDATA=1 rewrites them; otherwise the committed
// copies must be what these functions make.

// fatClusterLoopDisk: a GPT disk whose ESP's EFI/BOOT/BOOTX64.EFI chain
// loops (FAT entry 6 -> 5, in both FATs).
func fatClusterLoopDisk() []byte {
	f := goodTiny()
	if c := f.clusters["BOOTX64 EFI"]; c[0] != 5 || c[1] != 6 {
		panic("layout changed")
	}
	f.setFAT(6, 5, true)
	return tinyDisk(tinyPart{TypeESP, ESPName, f.img}, tinyPart{TypeLinux, RootfsName, make([]byte, 4096)})
}

// gptEntrySizeDisk: a GPT whose headers (CRCs valid) give an entry size of
// 0xFFFFFFF8 bytes.
func gptEntrySizeDisk() []byte {
	img := tinyDisk(tinyPart{TypeESP, ESPName, goodTiny().img})
	total := len(img) / 512
	for _, lba := range []int{1, total - 1} {
		binary.LittleEndian.PutUint32(img[lba*512+84:], 0xFFFFFFF8)
	}
	rehashGPT(img)
	return img
}

func gz(b []byte) []byte {
	var z bytes.Buffer
	w, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
	w.Write(b)
	w.Close()
	return z.Bytes()
}

func TestHostileTestdata(t *testing.T) {
	for name, b := range map[string][]byte{
		"fat-cluster-loop.raw.gz":          gz(fatClusterLoopDisk()),
		"gpt-entry-size-0xfffffff8.raw.gz": gz(gptEntrySizeDisk()),
	} {
		p := filepath.Join("..", "testdata", "hostile", name)
		if os.Getenv("IMGPOST_WRITE_TESTDATA") == "1" {
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("%s is not what the generator makes (%v); regenerate with IMGPOST_WRITE_TESTDATA=1", p, err)
		}
	}
	// And the reader refuses them.
	img := fatClusterLoopDisk()
	d, err := NewReader(bytes.NewReader(img), int64(len(img)), "loop.raw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.BootFile(); err == nil {
		t.Fatal("loop accepted")
	}
	img = gptEntrySizeDisk()
	if _, err := NewReader(bytes.NewReader(img), int64(len(img)), "gpt.raw"); err == nil {
		t.Fatal("entry size accepted")
	}
}
