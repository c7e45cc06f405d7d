package verity

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// vsFormat runs `veritysetup format` on a copy of the padded data of out (the
// first dataSize bytes) with the hash area at dataSize, and returns the copy
// and the root hash veritysetup printed.
func vsFormat(t *testing.T, out string, dataSize int64, salt, uuid string) (string, string) {
	t.Helper()
	cp := out + ".vs"
	src, err := os.ReadFile(out) // small enough for tests
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, src[:dataSize], 0o644); err != nil {
		t.Fatal(err)
	}
	o := testutil.Run(t, "veritysetup", "format", cp, cp, fmt.Sprintf("--hash-offset=%d", dataSize),
		"--salt="+salt, "--uuid="+uuid)
	m := regexp.MustCompile(`(?m)^Root hash:\s+([0-9a-f]{64})$`).FindStringSubmatch(o)
	if m == nil {
		t.Fatalf("no root hash in veritysetup format output:\n%s", o)
	}
	return cp, m[1]
}

// vsDump parses `veritysetup dump` into lower-cased keys with underscores.
func vsDump(t *testing.T, file string, hashOffset int64) map[string]string {
	t.Helper()
	o := testutil.Run(t, "veritysetup", "dump", file, fmt.Sprintf("--hash-offset=%d", hashOffset))
	kv := map[string]string{}
	for _, line := range strings.Split(o, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.HasPrefix(line, "VERITY header") {
			continue
		}
		kv[strings.ReplaceAll(strings.ToUpper(strings.TrimSpace(k)), " ", "_")] = strings.TrimSpace(v)
	}
	return kv
}

// vsVerify runs `veritysetup verify` and reports whether it accepted the file.
func vsVerify(t *testing.T, file string, hashOffset int64, root string) (bool, string) {
	t.Helper()
	out, err := exec.Command("veritysetup", "verify", file, file, root, fmt.Sprintf("--hash-offset=%d", hashOffset)).CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("veritysetup verify: %v", err)
		}
		return false, string(out)
	}
	return true, string(out)
}

// TestAgainstVeritysetup is the main cross-check: for squashfs images of one
// block, of a size not a multiple of 4096, and large enough for three tree
// levels, veritysetup accepts imgpost's output and root hash, produces the
// same bytes and root hash itself, and dumps the same fields; flipping a
// byte of the data, the tree or the padding makes both verifiers fail.
func TestAgainstVeritysetup(t *testing.T) {
	testutil.Need(t, "veritysetup", "mksquashfs")
	dir := t.TempDir()
	cases := []struct {
		name    string
		payload int64
		nopad   bool
		levels  int
	}{
		{"one-block", 0, false, 0},
		{"unaligned", 3<<20 + 1234, true, 2},
		{"three-levels", 65 << 20, true, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sq := testutil.Squashfs(t, dir, tc.name+".squashfs", tc.payload, 7, tc.nopad)
			st, err := os.Stat(sq)
			if err != nil {
				t.Fatal(err)
			}
			if tc.nopad && st.Size()%BlockSize == 0 {
				t.Fatalf("fixture %s is block-aligned (%d bytes); want a tail", sq, st.Size())
			}
			if tc.name == "one-block" && st.Size() != BlockSize {
				t.Fatalf("fixture %s is %d bytes, want one block", sq, st.Size())
			}
			out := filepath.Join(dir, tc.name+".verity")
			p := DefaultParams()
			info, err := FormatFile(sq, out, p)
			if err != nil {
				t.Fatal(err)
			}
			if g := newGeometry(info.DataBlocks); g.levels != tc.levels {
				t.Fatalf("tree has %d levels, the case wants %d", g.levels, tc.levels)
			}
			ost, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			if ost.Size() != info.Size() {
				t.Fatalf("OUT is %d bytes, Info.Size says %d", ost.Size(), info.Size())
			}
			if want := (st.Size() + BlockSize - 1) / BlockSize * BlockSize; info.DataSize() != want {
				t.Fatalf("DATA_SIZE %d, want padded size %d", info.DataSize(), want)
			}
			root := info.RootHashHex()

			// veritysetup verify accepts OUT with our root hash.
			if ok, msg := vsVerify(t, out, info.DataSize(), root); !ok {
				t.Fatalf("veritysetup verify rejected OUT: %s", msg)
			}
			// veritysetup format with the same salt and uuid: same root, same bytes.
			vs, vsRoot := vsFormat(t, out, info.DataSize(), DefaultSaltHex, DefaultUUID)
			if vsRoot != root {
				t.Fatalf("root hash: imgpost %s, veritysetup %s", root, vsRoot)
			}
			a, _ := os.ReadFile(out)
			b, _ := os.ReadFile(vs)
			if !bytes.Equal(a, b) {
				t.Fatalf("OUT (%d bytes) differs from veritysetup's (%d bytes)", len(a), len(b))
			}
			orig, _ := os.ReadFile(sq)
			if !bytes.Equal(a[:len(orig)], orig) || bytes.ContainsFunc(a[len(orig):info.DataSize()], func(r rune) bool { return r != 0 }) {
				t.Fatal("OUT's data is not the input followed by zero padding")
			}
			// veritysetup dump agrees on every field.
			d := vsDump(t, out, info.DataSize())
			want := map[string]string{
				"UUID": DefaultUUID, "HASH_TYPE": "1", "DATA_BLOCKS": fmt.Sprint(info.DataBlocks),
				"DATA_BLOCK_SIZE": "4096", "HASH_BLOCKS": fmt.Sprint(info.HashBlocks), "HASH_BLOCK_SIZE": "4096",
				"HASH_ALGORITHM": "sha256", "SALT": info.SaltHex(),
			}
			for k, v := range want {
				if d[k] != v {
					t.Errorf("veritysetup dump %s = %q, imgpost says %q", k, d[k], v)
				}
			}
			for k := range d {
				if _, ok := want[k]; !ok {
					t.Errorf("veritysetup dump has field %s that the test does not compare", k)
				}
			}
			// Our env agrees with veritysetup's format output, as OE's class would write it.
			for _, e := range info.Env() {
				switch e.Key {
				case "ROOT_HASH":
					if e.Value != vsRoot {
						t.Errorf("env ROOT_HASH %s, veritysetup %s", e.Value, vsRoot)
					}
				case "DATA_SIZE":
					if e.Value != fmt.Sprint(info.DataSize()) {
						t.Errorf("env DATA_SIZE %s", e.Value)
					}
				default:
					if d[e.Key] != e.Value {
						t.Errorf("env %s=%s, veritysetup %q", e.Key, e.Value, d[e.Key])
					}
				}
			}
			// Userspace verify accepts it.
			if _, err := VerifyFile(out, -1, info.RootHash[:]); err != nil {
				t.Fatalf("Verify: %v", err)
			}

			// Flips: each must make both verifiers fail, and ours must name the block.
			g := newGeometry(info.DataBlocks)
			treeOff := info.DataSize() + BlockSize
			type flipCase struct {
				name  string
				off   int64
				area  string
				level int
				block uint64
			}
			flips := []flipCase{
				{"data-first", 0, "data", 0, 0},
				{"data-last", st.Size() - 1, "data", 0, info.DataBlocks - 1},
			}
			if tail := info.DataSize() - st.Size(); tail > 0 {
				flips = append(flips, flipCase{"padding", info.DataSize() - 1, "data", 0, info.DataBlocks - 1})
			}
			if g.levels > 0 {
				l0 := treeOff + int64(g.start[0])*BlockSize
				last := l0 + int64(g.blocks[0]-1)*BlockSize
				topArea := "hash"
				if g.levels == 1 {
					topArea = "root"
				}
				flips = append(flips,
					flipCase{"tree-level0-digest", last + 5, topArea, 0, g.blocks[0] - 1},
					flipCase{"tree-top", treeOff + 17, "root", g.levels - 1, 0},
				)
				if info.DataBlocks%HashesPerBlock != 0 {
					flips = append(flips, flipCase{"tree-level0-spare", last + BlockSize - 1, topArea, 0, g.blocks[0] - 1})
				}
				if g.levels > 2 {
					mid := treeOff + int64(g.start[1])*BlockSize
					flips = append(flips, flipCase{"tree-level1", mid + 100, "hash", 1, 0})
				}
			}
			for _, f := range flips {
				t.Run("flip-"+f.name, func(t *testing.T) {
					testutil.FlipByte(t, out, f.off)
					defer testutil.FlipByte(t, out, f.off)
					if ok, _ := vsVerify(t, out, info.DataSize(), root); ok {
						t.Errorf("veritysetup verify accepted a flipped byte at %d", f.off)
					}
					_, err := VerifyFile(out, -1, info.RootHash[:])
					var be *BlockError
					if !errors.As(err, &be) {
						t.Fatalf("Verify: want a BlockError, got %v", err)
					}
					if be.Area != f.area || (f.area != "root" && (be.Level != f.level || be.Block != f.block)) {
						t.Errorf("Verify blamed %s level %d block %d, want %s level %d block %d (%v)",
							be.Area, be.Level, be.Block, f.area, f.level, f.block, err)
					}
				})
			}
			// After flipping back, both accept again (the flips were real and undone).
			if ok, msg := vsVerify(t, out, info.DataSize(), root); !ok {
				t.Fatalf("veritysetup verify after restoring: %s", msg)
			}
			// Two runs give the same bytes.
			out2 := out + ".2"
			info2, err := FormatFile(sq, out2, p)
			if err != nil {
				t.Fatal(err)
			}
			c, _ := os.ReadFile(out2)
			if !bytes.Equal(a, c) || info2.EnvText() != info.EnvText() {
				t.Fatal("two runs differ")
			}
			os.Remove(out2)
			os.Remove(vs)
		})
	}
}

// TestParamsAgainstVeritysetup checks salts of every allowed length class and a
// custom UUID, and chunk-boundary data sizes, against veritysetup format.
func TestParamsAgainstVeritysetup(t *testing.T) {
	testutil.Need(t, "veritysetup")
	dir := t.TempDir()
	long := strings.Repeat("a5", MaxSaltSize)
	cases := []struct {
		name       string
		size       int64
		salt, uuid string
	}{
		{"empty-salt", 5 * BlockSize, "-", DefaultUUID},
		{"one-byte-salt", 3*BlockSize + 1, "ff", "01234567-89ab-cdef-0123-456789abcdef"},
		{"max-salt", 300 * BlockSize, long, "ffffffff-0000-1111-2222-333333333333"},
		{"63-byte-salt", 129 * BlockSize, strings.Repeat("3c", 63), DefaultUUID},
		{"full-level0-block", 128 * BlockSize, DefaultSaltHex, DefaultUUID},
		{"chunk-minus-one", int64(ChunkSize) - 1, DefaultSaltHex, DefaultUUID},
		{"chunk-plus-one", int64(ChunkSize) + 1, DefaultSaltHex, DefaultUUID},
		{"two-blocks", BlockSize + 1, DefaultSaltHex, DefaultUUID},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := filepath.Join(dir, tc.name)
			testutil.WriteRandom(t, in, tc.size, uint64(i))
			salt, err := ParseSalt(tc.salt)
			if err != nil {
				t.Fatal(err)
			}
			u, err := ParseUUID(tc.uuid)
			if err != nil {
				t.Fatal(err)
			}
			out := in + ".verity"
			info, err := FormatFile(in, out, Params{Salt: salt, UUID: u})
			if err != nil {
				t.Fatal(err)
			}
			vs, vsRoot := vsFormat(t, out, info.DataSize(), tc.salt, tc.uuid)
			if vsRoot != info.RootHashHex() {
				t.Fatalf("root hash: imgpost %s, veritysetup %s", info.RootHashHex(), vsRoot)
			}
			a, _ := os.ReadFile(out)
			b, _ := os.ReadFile(vs)
			if !bytes.Equal(a, b) {
				t.Fatalf("OUT differs from veritysetup's output")
			}
			d := vsDump(t, out, info.DataSize())
			if d["SALT"] != info.SaltHex() || d["UUID"] != tc.uuid || d["UUID"] != FormatUUID(info.UUID) {
				t.Fatalf("dump salt %q uuid %q; imgpost %q %q", d["SALT"], d["UUID"], info.SaltHex(), FormatUUID(info.UUID))
			}
			if _, err := VerifyFile(out, -1, info.RootHash[:]); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestParseSalt(t *testing.T) {
	cases := []struct {
		in   string
		ok   bool
		size int
	}{
		{"-", true, 0},
		{"", true, 0},
		{"00", true, 1},
		{DefaultSaltHex, true, 32},
		{strings.Repeat("ab", MaxSaltSize), true, MaxSaltSize},
		{strings.Repeat("ab", MaxSaltSize+1), false, 0},
		{"abc", false, 0},
		{"zz", false, 0},
		{"0x00", false, 0},
	}
	for _, tc := range cases {
		b, err := ParseSalt(tc.in)
		if (err == nil) != tc.ok || (tc.ok && len(b) != tc.size) {
			t.Errorf("ParseSalt(%.20q) = %d bytes, %v; want ok=%v size %d", tc.in, len(b), err, tc.ok, tc.size)
		}
	}
}

func TestParseUUID(t *testing.T) {
	for _, s := range []string{DefaultUUID, "01234567-89ab-cdef-0123-456789abcdef"} {
		u, err := ParseUUID(s)
		if err != nil || FormatUUID(u) != s {
			t.Errorf("ParseUUID(%q) round trip: %q, %v", s, FormatUUID(u), err)
		}
	}
	for _, s := range []string{"", "0123456789abcdef0123456789abcdef", "0123456-789ab-cdef-0123-456789abcdef", "g1234567-89ab-cdef-0123-456789abcdef"} {
		if _, err := ParseUUID(s); err == nil {
			t.Errorf("ParseUUID(%q): no error", s)
		}
	}
}

// TestHashOffsetForSize checks that the offset is found back from the size of
// what Format writes, for sizes around every level boundary.
func TestHashOffsetForSize(t *testing.T) {
	for _, n := range []uint64{1, 2, 127, 128, 129, 16383, 16384, 16385, 1 << 21, 1<<21 + 1} {
		info := &Info{DataBlocks: n, HashBlocks: newGeometry(n).total}
		got, err := HashOffsetForSize(info.Size())
		if err != nil || got != info.DataSize() {
			t.Errorf("%d blocks: HashOffsetForSize(%d) = %d, %v; want %d", n, info.Size(), got, err, info.DataSize())
		}
	}
	for _, size := range []int64{0, 4096, 4097, 3 * 4096} {
		if _, err := HashOffsetForSize(size); err == nil {
			t.Errorf("HashOffsetForSize(%d): no error", size)
		}
	}
}

// TestOutputSize: OutputSize is the size of what Format writes, for data
// sizes around the block and tree-level boundaries.
func TestOutputSize(t *testing.T) {
	for _, size := range []int64{1, 4095, 4096, 4097, 127 * 4096, 128 * 4096, 128*4096 + 1, 16384 * 4096, 16385*4096 - 7} {
		info, err := Format(discardAt{}, zeroAt{}, size, DefaultParams())
		if err != nil {
			t.Fatal(err)
		}
		if got := OutputSize(size); got != info.Size() {
			t.Errorf("OutputSize(%d) = %d, Format wrote %d", size, got, info.Size())
		}
	}
}

// zeroAt reads zeros; discardAt drops what is written.
type zeroAt struct{}

func (zeroAt) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}

type discardAt struct{}

func (discardAt) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }

// TestVerifyRejects covers what is not a bit flip: a wrong root hash, a
// truncated file, a missing superblock.
func TestVerifyRejects(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "data")
	testutil.WriteRandom(t, in, 200*BlockSize+7, 3)
	out := in + ".verity"
	info, err := FormatFile(in, out, DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	wrong := bytes.Clone(info.RootHash[:])
	wrong[0] ^= 1
	b, _ := os.ReadFile(out)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, b[:len(b)-BlockSize], 0o644)
	for _, tc := range []struct {
		name   string
		path   string
		offset int64
		root   []byte
		is     error  // errors.Is; nil: a *BlockError of area root
		want   string // in the message
	}{
		{"wrong root hash", out, -1, wrong, nil, "root hash mismatch"},
		{"wrong hash offset", out, info.DataSize() - BlockSize, info.RootHash[:], ErrNoSuperblock, "no verity superblock at offset"},
		{"truncated", short, info.DataSize(), info.RootHash[:], io.ErrUnexpectedEOF, "file too short"},
	} {
		_, err := VerifyFile(tc.path, tc.offset, tc.root)
		var be *BlockError
		if tc.is == nil && (!errors.As(err, &be) || be.Area != "root") || tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.is)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s: %v, want a message naming %s and saying %q", tc.name, err, tc.path, tc.want)
		}
	}
	if _, err := VerifyFile(short, -1, info.RootHash[:]); err == nil {
		t.Errorf("truncated, offset from size: no error")
	}
	if _, err := ParseRootHash(hex.EncodeToString(wrong[:31])); err == nil {
		t.Error("short root hash accepted")
	}
}

// TestFormatFileRejects checks FormatFile's own refusals leave nothing behind.
func TestFormatFileRejects(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "data")
	testutil.WriteRandom(t, in, 10000, 1)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	cases := []struct{ name, in, out, want string }{
		{"empty", empty, filepath.Join(dir, "o1"), "empty file"},
		{"missing", filepath.Join(dir, "nope"), filepath.Join(dir, "o2"), "no such file"},
		{"directory", dir, filepath.Join(dir, "o3"), "not a regular file"},
		{"out-is-in", in, in, "is the input"},
		{"out-is-in-other-name", in, filepath.Join(dir, ".", "data"), "is the input"},
		{"out-dir-missing", in, filepath.Join(dir, "no", "o4"), "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := FormatFile(tc.in, tc.out, DefaultParams())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		for _, e := range ents {
			t.Log(e.Name())
		}
		t.Fatalf("%d entries in the directory, want only the 2 inputs", len(ents))
	}
	if b, _ := os.ReadFile(in); len(b) != 10000 {
		t.Fatal("input modified")
	}
}

// memWriter is an in-memory io.WriterAt (not an *os.File, so Format takes
// its plain write path instead of reserving the file first).
type memWriter struct {
	mu sync.Mutex
	b  []byte
}

func (m *memWriter) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

// TestFormatWritePaths checks that the file path and the plain writer path
// give the same bytes, for an unaligned size over several chunks.
func TestFormatWritePaths(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "data")
	size := int64(3*ChunkSize + 5*BlockSize + 99)
	testutil.WriteRandom(t, in, size, 9)
	out := in + ".verity"
	info, err := FormatFile(in, out, DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var m memWriter
	info2, err := Format(&m, f, size, DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	if !bytes.Equal(a, m.b) || info.RootHash != info2.RootHash {
		for i := range min(len(a), len(m.b)) {
			if a[i] != m.b[i] {
				t.Logf("first difference at %d; sizes %d %d; roots %x %x", i, len(a), len(m.b), info.RootHash, info2.RootHash)
				break
			}
		}
		t.Fatal("file-to-file and in-memory outputs differ")
	}
}

// TestMemoryBounded checks that Format and Verify do not buffer the data:
// what they allocate for 64 MiB is a few chunk buffers, not the input.
func TestMemoryBounded(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "data")
	size := int64(64 << 20)
	testutil.WriteRandom(t, in, size, 8)
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := os.Create(in + ".verity")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	var m0, m1, m2 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	info, err := Format(out, f, size, DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&m1)
	if _, err := Verify(out, info.DataSize(), info.RootHash[:]); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&m2)
	limit := uint64(Workers()+2) * uint64(ChunkSize) * 2
	if a := m1.TotalAlloc - m0.TotalAlloc; a > limit {
		t.Errorf("Format allocated %d bytes for %d bytes of data (limit %d)", a, size, limit)
	}
	if a := m2.TotalAlloc - m1.TotalAlloc; a > limit {
		t.Errorf("Verify allocated %d bytes for %d bytes of data (limit %d)", a, size, limit)
	}
}

// TestFormatShortInput: an input shorter than the size given (a file that
// shrank) is an error naming the offset, not a crash.
func TestFormatShortInput(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "data")
	testutil.WriteRandom(t, in, 2<<20, 4)
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	_, err = Format(out, f, 6<<20, DefaultParams())
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Format of an input shorter than its size: %v, want io.ErrUnexpectedEOF", err)
	}
	t.Log(err)
}

// TestVerifyHostileSuperblock: a superblock whose data block count would
// overflow into the given hash offset is refused, not trusted.
func TestVerifyHostileSuperblock(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "data")
	testutil.WriteRandom(t, in, 10*BlockSize, 5)
	out := in + ".verity"
	info, err := FormatFile(in, out, DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(out, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], info.DataBlocks+1<<52) // *4096 wraps to the same byte count
	if _, err := f.WriteAt(b[:], info.DataSize()+72); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(f, info.DataSize(), info.RootHash[:]); !errors.Is(err, ErrBadSuperblock) || !strings.Contains(err.Error(), "data blocks") {
		t.Fatalf("hostile data block count: %v", err)
	}
}

// failingWriter fails every write from the n-th on.
type failingWriter struct {
	mu sync.Mutex
	n  int
}

func (w *failingWriter) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n--; w.n < 0 {
		return 0, errors.New("no space left on device")
	}
	return len(p), nil
}

// TestFormatWriteError: a write that fails (a full disk) stops Format with
// that error, whichever write it is, without hanging the hashing workers.
func TestFormatWriteError(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "data")
	size := int64(16*ChunkSize + 7)
	testutil.WriteRandom(t, in, size, 5)
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, n := range []int{0, 1, 2, 7, 30} {
		_, err := Format(&failingWriter{n: n}, f, size, DefaultParams())
		if err == nil || !strings.Contains(err.Error(), "no space left") || !strings.Contains(err.Error(), "write") {
			t.Errorf("failing at write %d: err = %v", n, err)
		}
	}
}

// FuzzVerify: ReadSuperblock and Verify of any bytes against a root hash
// end with an error or success, without panics or unbounded work. Seeded
// with Format's output for 3 data blocks.
func FuzzVerify(f *testing.F) {
	data := bytes.Repeat([]byte("verity fuzz seed"), 3*BlockSize/16)
	var out memWriterAt
	info, err := Format(&out, bytes.NewReader(data), int64(len(data)), DefaultParams())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(out.b)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		if _, err := ReadSuperblock(r, info.DataSize()); err != nil {
			return
		}
		Verify(r, info.DataSize(), info.RootHash[:])
	})
}

type memWriterAt struct{ b []byte }

func (m *memWriterAt) WriteAt(p []byte, off int64) (int, error) {
	if need := int(off) + len(p); need > len(m.b) {
		m.b = append(m.b, make([]byte, need-len(m.b))...)
	}
	copy(m.b[off:], p)
	return len(p), nil
}
