// Package verity builds and checks dm-verity hash trees in exactly the
// on-disk format `veritysetup format` writes by default: a version-1
// superblock at the hash offset, hash type 1 (salt hashed before the block),
// sha256, 4096-byte data and hash blocks, and the tree levels after the
// superblock, the top level first.
//
// Format writes OUT = the data zero-padded to a whole block, then the
// superblock and the tree, reading the data once in large chunks and hashing
// on all cores. Verify is a userspace `veritysetup verify` that names the
// first bad block. Memory stays bounded: the data is streamed, only the
// levels above level 0 (1/128 of level 0) are held in memory.
package verity

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/sha256x2"
)

// Fixed parameters of the format imgpost writes (veritysetup's defaults).
const (
	// BlockSize is the data and hash block size.
	BlockSize = 4096
	// DigestSize is the size of a sha256 digest.
	DigestSize = sha256.Size
	// HashesPerBlock is the number of digests in a hash block.
	HashesPerBlock = BlockSize / DigestSize
	// HashType is the dm-verity hash type: 1 = salt first, then the block.
	HashType = 1
	// Algorithm is the hash algorithm name as stored in the superblock.
	Algorithm = "sha256"
	// MaxSaltSize is the largest salt the superblock can hold, in bytes.
	MaxSaltSize = 256
	// SuperblockSize is the size of the on-disk superblock; it occupies the
	// first hash block of the hash area.
	SuperblockSize = 512
)

// DefaultUUID is the superblock UUID used when none is given: fixed, so that
// builds are reproducible (the UUID is not part of the root hash).
const DefaultUUID = "00000000-0000-0000-0000-000000000000"

// DefaultSaltHex is the salt used when none is given: 32 zero bytes, fixed so
// that builds are reproducible. It is the salt the upstream shell pipeline passes
// to veritysetup, so both give the same root hash for the same padded data.
const DefaultSaltHex = "0000000000000000000000000000000000000000000000000000000000000000"

// ChunkSize is the amount of data a worker reads, hashes and writes at once.
// It must be a multiple of HashesPerBlock*BlockSize (512 KiB) so that each
// chunk fills whole level-0 hash blocks.
var ChunkSize = 1 << 20

// Params are the choices a caller makes; everything else is fixed.
type Params struct {
	// Salt is hashed before every block; at most MaxSaltSize bytes, may be empty.
	Salt []byte
	// UUID is stored in the superblock.
	UUID [16]byte
}

// DefaultParams returns the fixed, documented salt and UUID.
func DefaultParams() Params {
	s, _ := ParseSalt(DefaultSaltHex)
	u, _ := ParseUUID(DefaultUUID)
	return Params{Salt: s, UUID: u}
}

// ParseSalt parses a salt given in hex, as veritysetup takes it; "-" is the
// empty salt. It must have an even number of hex digits and at most
// MaxSaltSize bytes.
func ParseSalt(s string) ([]byte, error) {
	if s == "-" {
		return []byte{}, nil
	}
	if len(s)%2 != 0 {
		return nil, fmt.Errorf("salt %q: odd number of hex digits", s)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("salt %q: not hex", s)
	}
	if len(b) > MaxSaltSize {
		return nil, fmt.Errorf("salt is %d bytes, the format allows at most %d (%d hex digits)", len(b), MaxSaltSize, 2*MaxSaltSize)
	}
	return b, nil
}

// ParseUUID parses a UUID in the 8-4-4-4-12 hex form.
func ParseUUID(s string) ([16]byte, error) {
	var u [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("uuid %q: want the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, fmt.Errorf("uuid %q: not hex", s)
	}
	return u, nil
}

// FormatUUID renders u in the lower-case 8-4-4-4-12 form veritysetup prints.
func FormatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Info describes a formatted verity image, as veritysetup dump shows it.
type Info struct {
	UUID [16]byte
	Salt []byte
	// DataBlocks is the number of data blocks the tree covers.
	DataBlocks uint64
	// HashBlocks is the number of tree blocks (the superblock not counted),
	// as veritysetup reports it.
	HashBlocks uint64
	// RootHash is the root of the tree (zero when read from a superblock only).
	RootHash [DigestSize]byte
	// InputSize is the unpadded input size (Format only).
	InputSize int64
}

// DataSize is the size of the protected data: the padded input, which is
// also the offset of the hash area (the superblock) in OUT.
func (i *Info) DataSize() int64 { return int64(i.DataBlocks) * BlockSize }

// HashOffset is the offset of the superblock; equal to DataSize.
func (i *Info) HashOffset() int64 { return i.DataSize() }

// Size is the size of OUT: data, superblock and tree.
func (i *Info) Size() int64 { return i.DataSize() + BlockSize + int64(i.HashBlocks)*BlockSize }

// RootHashHex is the root hash in lower-case hex.
func (i *Info) RootHashHex() string { return hex.EncodeToString(i.RootHash[:]) }

// SaltHex is the salt in hex, "-" when empty (as veritysetup prints it).
func (i *Info) SaltHex() string {
	if len(i.Salt) == 0 {
		return "-"
	}
	return hex.EncodeToString(i.Salt)
}

// EnvVar is one KEY=VALUE line of the env output.
type EnvVar struct{ Key, Value string }

// Env returns the keys openembedded-core's dm-verity image class writes to
// its .verity.env (veritysetup's format output, keys upper-cased with
// underscores, values without blanks, then DATA_SIZE), in that order.
func (i *Info) Env() []EnvVar {
	return []EnvVar{
		{"UUID", FormatUUID(i.UUID)},
		{"HASH_TYPE", fmt.Sprint(HashType)},
		{"DATA_BLOCKS", fmt.Sprint(i.DataBlocks)},
		{"DATA_BLOCK_SIZE", fmt.Sprint(BlockSize)},
		{"HASH_BLOCK_SIZE", fmt.Sprint(BlockSize)},
		{"HASH_ALGORITHM", Algorithm},
		{"SALT", i.SaltHex()},
		{"ROOT_HASH", i.RootHashHex()},
		{"DATA_SIZE", fmt.Sprint(i.DataSize())},
	}
}

// EnvText renders Env as KEY=VALUE lines.
func (i *Info) EnvText() string {
	var b strings.Builder
	for _, e := range i.Env() {
		fmt.Fprintf(&b, "%s=%s\n", e.Key, e.Value)
	}
	return b.String()
}

// geometry is the shape of the tree for a number of data blocks, computed as
// cryptsetup does: level 0 holds the digests of the data blocks, level i+1 the
// digests of level i's blocks, up to a level of one block. Levels are stored
// top level first right after the superblock.
type geometry struct {
	levels int
	blocks []uint64 // blocks[i]: number of hash blocks at level i
	start  []uint64 // start[i]: index of level i's first block after the superblock
	total  uint64   // all tree blocks
}

func newGeometry(dataBlocks uint64) geometry {
	const bits = 7 // log2(HashesPerBlock)
	var g geometry
	for bits*g.levels < 64 && (dataBlocks-1)>>(bits*g.levels) != 0 {
		g.levels++
	}
	g.blocks = make([]uint64, g.levels)
	g.start = make([]uint64, g.levels)
	for i := g.levels - 1; i >= 0; i-- {
		g.start[i] = g.total
		sh := uint(bits * (i + 1))
		var s uint64
		if sh >= 64 {
			s = 1
		} else {
			s = (dataBlocks + (1 << sh) - 1) >> sh
		}
		g.blocks[i] = s
		g.total += s
	}
	return g
}

// hasher hashes blocks with the salt first (hash type 1), two blocks at a
// time where it can (package sha256x2: about twice the throughput of one
// SHA-256 stream on CPUs with SHA-NI). It is safe for concurrent use.
type hasher struct{ s *sha256x2.Salted }

func newHasher(salt []byte) *hasher { return &hasher{s: sha256x2.New(salt)} }

// sum writes the digest of salt||block into out[:DigestSize].
func (h *hasher) sum(out, block []byte) { h.s.Sum(out, block) }

// sumBlocks writes the digests of the BlockSize blocks of data, in order,
// into out (DigestSize bytes each).
func (h *hasher) sumBlocks(out, data []byte) {
	n := len(data) / BlockSize
	b := 0
	for ; b+1 < n; b += 2 {
		h.s.Sum2(out[b*DigestSize:], out[(b+1)*DigestSize:],
			data[b*BlockSize:(b+1)*BlockSize], data[(b+1)*BlockSize:(b+2)*BlockSize])
	}
	if b < n {
		h.s.Sum(out[b*DigestSize:], data[b*BlockSize:(b+1)*BlockSize])
	}
}

// parallel runs work(w, k) for k in [0, n) on up to GOMAXPROCS workers (w is
// the worker index) and returns the first error; after an error no new k starts.
func parallel(n int, work func(w, k int) error) error {
	return parallelN(runtime.GOMAXPROCS(0), n, work)
}

// parallelN is parallel with at most workers workers.
func parallelN(workers, n int, work func(w, k int) error) error {
	workers = max(1, min(workers, n))
	var next atomic.Int64
	var failed atomic.Bool
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				k := int(next.Add(1) - 1)
				if k >= n {
					return
				}
				if err := work(w, k); err != nil {
					errs[w] = err
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Workers is the number of hashing workers Format and Verify use.
func Workers() int { return runtime.GOMAXPROCS(0) }

func checkParams(p Params) error {
	if len(p.Salt) > MaxSaltSize {
		return fmt.Errorf("salt is %d bytes, the format allows at most %d", len(p.Salt), MaxSaltSize)
	}
	if ChunkSize <= 0 || ChunkSize%(HashesPerBlock*BlockSize) != 0 {
		return fmt.Errorf("verity: ChunkSize %d is not a multiple of %d", ChunkSize, HashesPerBlock*BlockSize)
	}
	return nil
}

// Format reads size bytes of data from src and writes to dst the data
// zero-padded to a whole block at offset 0, the superblock at the padded size
// (the hash offset) and the hash tree after it. The data is read once, in
// chunks, hashed on all cores and written as it is hashed.
func Format(dst io.WriterAt, src io.ReaderAt, size int64, p Params) (*Info, error) {
	if err := checkParams(p); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, errors.New("empty data: nothing to protect")
	}
	info := &Info{UUID: p.UUID, Salt: bytes.Clone(p.Salt), InputSize: size}
	info.DataBlocks = uint64((size + BlockSize - 1) / BlockSize)
	g := newGeometry(info.DataBlocks)
	info.HashBlocks = g.total
	padded := info.DataSize()
	treeOff := padded + BlockSize
	var l0Off int64
	if g.levels > 0 {
		l0Off = treeOff + int64(g.start[0])*BlockSize
	}

	chunkBlocks := uint64(ChunkSize / BlockSize)
	nChunks := int((info.DataBlocks + chunkBlocks - 1) / chunkBlocks)
	workers := min(Workers(), nChunks)
	h := newHasher(info.Salt)
	// upper[j] is the digest of level-0 block j: the entries of level 1
	// (or the root when level 0 is the top).
	var upper []byte
	if g.levels > 0 {
		upper = make([]byte, g.blocks[0]*DigestSize)
	}

	// The workers hash; one writer goroutine writes what they hashed, so
	// that they never wait on the output file's lock (parallel writes to
	// one file contend for it and burn CPU). Chunks in flight are bounded:
	// each owns a buffer until it is written.
	type done struct {
		data, l0 []byte
		off      int64 // of data
		l0Off    int64
		buf      []byte // to recycle
	}
	inflight := 2*workers + 2
	bufs := make(chan []byte, inflight)
	for range inflight {
		bufs <- nil // allocated on first use
	}
	written := make(chan done, inflight)
	var writeErr error
	writerDone := make(chan struct{})
	var stop atomic.Bool
	go func() {
		defer close(writerDone)
		for d := range written {
			if writeErr == nil {
				if len(d.l0) > 0 {
					if _, err := dst.WriteAt(d.l0, d.l0Off); err != nil {
						writeErr = fmt.Errorf("write hash tree: %w", err)
					}
				}
				if writeErr == nil {
					if _, err := dst.WriteAt(d.data, d.off); err != nil {
						writeErr = fmt.Errorf("write data: %w", err)
					}
				}
				if writeErr != nil {
					stop.Store(true)
				}
			}
			bufs <- d.buf
		}
	}()

	// Writing a file is one thread's work in the kernel (the file's lock
	// serialises writers): leave it a core, so that it runs flat out beside
	// the hashers instead of sharing a core with them (measured on 2 cores:
	// 0.72-0.78 s per GiB on tmpfs with one hasher, 0.85-0.90 s with two).
	hashWorkers := workers
	if _, ok := dst.(*os.File); ok && workers > 1 {
		hashWorkers = workers - 1
	}
	err := parallelN(hashWorkers, nChunks, func(w, k int) error {
		if stop.Load() {
			return errors.New("stopped")
		}
		first := uint64(k) * chunkBlocks
		nb := min(chunkBlocks, info.DataBlocks-first)
		off := int64(first) * BlockSize
		want := min(int64(nb)*BlockSize, size-off)
		// buf holds the chunk's level-0 hash blocks, then the data.
		l0Size := ChunkSize / HashesPerBlock
		buf := <-bufs
		if need := l0Size + ChunkSize; len(buf) < need {
			buf = make([]byte, need)
		}
		l0 := buf[:l0Size]
		data := buf[l0Size : l0Size+ChunkSize]
		if n, err := src.ReadAt(data[:want], off); int64(n) != want {
			bufs <- buf
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read data at offset %d: %w (input shorter than %d bytes?)", off, err, size)
		}
		data = data[:nb*BlockSize]
		clear(data[want:])
		d := done{data: data, off: off, buf: buf}
		if g.levels == 0 { // a single data block: its digest is the root
			h.sum(info.RootHash[:], data)
		} else {
			h.sumBlocks(l0, data[:nb*BlockSize])
			nl0 := (nb + HashesPerBlock - 1) / HashesPerBlock
			clear(l0[nb*DigestSize : nl0*BlockSize])
			j0 := first / HashesPerBlock
			h.sumBlocks(upper[j0*DigestSize:], l0[:nl0*BlockSize])
			d.l0, d.l0Off = l0[:nl0*BlockSize], l0Off+int64(j0)*BlockSize
		}
		written <- d
		return nil
	})
	close(written)
	<-writerDone
	if writeErr != nil {
		return nil, writeErr
	}
	if err != nil {
		return nil, err
	}

	// The levels above 0 are small (1/128 of level 0 and less): build them in memory.
	if g.levels > 0 {
		cur := upper
		for lvl := 1; lvl < g.levels; lvl++ {
			blk := make([]byte, g.blocks[lvl]*BlockSize)
			copy(blk, cur)
			if _, err := dst.WriteAt(blk, treeOff+int64(g.start[lvl])*BlockSize); err != nil {
				return nil, fmt.Errorf("write hash tree: %w", err)
			}
			next := make([]byte, g.blocks[lvl]*DigestSize)
			h.sumBlocks(next, blk)
			cur = next
		}
		copy(info.RootHash[:], cur[:DigestSize])
	}
	if _, err := dst.WriteAt(info.superblock(), padded); err != nil {
		return nil, fmt.Errorf("write verity superblock: %w", err)
	}
	return info, nil
}

// superblock renders the on-disk superblock, padded to a whole hash block.
func (i *Info) superblock() []byte {
	sb := make([]byte, BlockSize)
	le := binary.LittleEndian
	copy(sb[0:8], "verity")
	le.PutUint32(sb[8:], 1) // version
	le.PutUint32(sb[12:], HashType)
	copy(sb[16:32], i.UUID[:])
	copy(sb[32:64], Algorithm)
	le.PutUint32(sb[64:], BlockSize)
	le.PutUint32(sb[68:], BlockSize)
	le.PutUint64(sb[72:], i.DataBlocks)
	le.PutUint16(sb[80:], uint16(len(i.Salt)))
	copy(sb[88:88+MaxSaltSize], i.Salt)
	return sb
}

// FormatFile writes outPath (through a temporary file renamed when complete)
// from the data in dataPath. It refuses an empty input and an output that is
// the input. It does not check the data's filesystem (see package sqfs).
func FormatFile(dataPath, outPath string, p Params) (*Info, error) {
	if err := checkParams(p); err != nil {
		return nil, err
	}
	in, err := os.Open(dataPath)
	if err != nil {
		return nil, fmt.Errorf("data %s: %w", dataPath, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return nil, fmt.Errorf("data %s: %w", dataPath, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("data %s: not a regular file", dataPath)
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("data %s: empty file", dataPath)
	}
	if err := atomicfile.CheckNotInput(outPath, dataPath); err != nil {
		return nil, err
	}
	out, err := atomicfile.Create(outPath, 0o644)
	if err != nil {
		return nil, err
	}
	defer out.Abort()
	info, err := Format(out.File, in, st.Size(), p)
	if err != nil {
		return nil, fmt.Errorf("verity %s -> %s: %w", dataPath, outPath, err)
	}
	if err := out.Commit(); err != nil {
		return nil, err
	}
	return info, nil
}

// OutputSize is the size of Format's output for size bytes of data: the
// data padded to a whole block, the superblock and the hash tree.
func OutputSize(size int64) int64 {
	i := &Info{DataBlocks: uint64((size + BlockSize - 1) / BlockSize)}
	i.HashBlocks = newGeometry(i.DataBlocks).total
	return i.Size()
}
