package verity

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// What is wrong with a verity image, for errors.Is (a *BlockError, for
// errors.As, is a block that does not match its hash). A short read wraps
// io.ErrUnexpectedEOF.
var (
	// ErrNoSuperblock: no verity superblock where the hash area should start
	// (a wrong hash offset, or not a verity image).
	ErrNoSuperblock = errors.New("no verity superblock")
	// ErrBadSuperblock: a superblock that is not what Format writes.
	ErrBadSuperblock = errors.New("unsupported verity superblock")
)

// ReadSuperblock reads and checks the superblock at hashOffset in r. It
// accepts only what Format writes: version 1, hash type 1, sha256, 4096-byte
// blocks, and a data size equal to hashOffset. The returned Info has no root hash.
func ReadSuperblock(r io.ReaderAt, hashOffset int64) (*Info, error) {
	if hashOffset <= 0 || hashOffset%BlockSize != 0 {
		return nil, fmt.Errorf("hash offset %d is not a positive multiple of %d", hashOffset, BlockSize)
	}
	sb := make([]byte, SuperblockSize)
	if n, err := r.ReadAt(sb, hashOffset); n != len(sb) {
		return nil, fmt.Errorf("read verity superblock at offset %d: %w", hashOffset, errOr(err, io.ErrUnexpectedEOF))
	}
	le := binary.LittleEndian
	if !bytes.Equal(sb[0:8], []byte("verity\x00\x00")) {
		return nil, fmt.Errorf("%w at offset %d (signature %q)", ErrNoSuperblock, hashOffset, bytes.TrimRight(sb[0:8], "\x00"))
	}
	if v := le.Uint32(sb[8:]); v != 1 {
		return nil, fmt.Errorf("%w at offset %d: version %d, want 1", ErrBadSuperblock, hashOffset, v)
	}
	if t := le.Uint32(sb[12:]); t != HashType {
		return nil, fmt.Errorf("%w at offset %d: hash type %d, want %d", ErrBadSuperblock, hashOffset, t, HashType)
	}
	if alg := string(bytes.TrimRight(sb[32:64], "\x00")); alg != Algorithm {
		return nil, fmt.Errorf("%w at offset %d: algorithm %q, want %q", ErrBadSuperblock, hashOffset, alg, Algorithm)
	}
	if d, h := le.Uint32(sb[64:]), le.Uint32(sb[68:]); d != BlockSize || h != BlockSize {
		return nil, fmt.Errorf("%w at offset %d: block sizes %d/%d, want %d/%d", ErrBadSuperblock, hashOffset, d, h, BlockSize, BlockSize)
	}
	info := &Info{DataBlocks: le.Uint64(sb[72:])}
	if info.DataBlocks != uint64(hashOffset/BlockSize) { // compared as block counts: no overflow
		return nil, fmt.Errorf("%w at offset %d: %d data blocks, but the hash offset says %d", ErrBadSuperblock,
			hashOffset, le.Uint64(sb[72:]), hashOffset/BlockSize)
	}
	if info.DataSize() != hashOffset {
		return nil, fmt.Errorf("%w at offset %d: %d data blocks (%d bytes), but the hash offset says %d bytes", ErrBadSuperblock,
			hashOffset, info.DataBlocks, info.DataSize(), hashOffset)
	}
	ss := int(le.Uint16(sb[80:]))
	if ss > MaxSaltSize {
		return nil, fmt.Errorf("%w at offset %d: salt size %d > %d", ErrBadSuperblock, hashOffset, ss, MaxSaltSize)
	}
	copy(info.UUID[:], sb[16:32])
	info.Salt = bytes.Clone(sb[88 : 88+ss])
	info.HashBlocks = newGeometry(info.DataBlocks).total
	return info, nil
}

func errOr(err, def error) error {
	if err == nil || err == io.EOF {
		return def
	}
	return err
}

// BlockError names the first bad block Verify found.
type BlockError struct {
	// Area is "data" for a data block, "hash" for a tree block, "root" when
	// the top of the tree does not hash to the expected root hash.
	Area string
	// Level is the tree level of a hash block (0 = digests of data blocks).
	Level int
	// Block is the index of the data block, or of the hash block within its level.
	Block uint64
	// Offset is the block's offset in the file.
	Offset int64
	// Reason says what did not match.
	Reason string
}

func (e *BlockError) Error() string {
	switch e.Area {
	case "data":
		return fmt.Sprintf("data block %d (offset %d) is corrupt: %s", e.Block, e.Offset, e.Reason)
	case "hash":
		return fmt.Sprintf("hash block %d of level %d (offset %d) is corrupt: %s", e.Block, e.Level, e.Offset, e.Reason)
	default:
		return fmt.Sprintf("root hash mismatch: %s", e.Reason)
	}
}

// rank orders errors so that the one reported is the cause, not a
// consequence: the root first, then tree levels from the top down, then data.
func (e *BlockError) rank(levels int) (int, uint64) {
	switch e.Area {
	case "root":
		return 0, 0
	case "hash":
		return levels - e.Level, e.Block
	default:
		return levels + 1, e.Block
	}
}

// Verify checks the data [0, hashOffset) and the hash tree of the verity
// image in r against rootHash, like `veritysetup verify`: every data block
// must hash to its level-0 entry, every tree block to its entry in the level
// above, the unused tail of every tree block must be zero, and the top block
// must hash to rootHash. On a mismatch it returns a *BlockError naming the
// first bad block (the cause: upper levels are checked before what they cover).
func Verify(r io.ReaderAt, hashOffset int64, rootHash []byte) (*Info, error) {
	if len(rootHash) != DigestSize {
		return nil, fmt.Errorf("root hash is %d bytes, want %d", len(rootHash), DigestSize)
	}
	info, err := ReadSuperblock(r, hashOffset)
	if err != nil {
		return nil, err
	}
	g := newGeometry(info.DataBlocks)
	treeOff := hashOffset + BlockSize
	levelOff := func(lvl int) int64 { return treeOff + int64(g.start[lvl])*BlockSize }
	var first *BlockError
	var mu sync.Mutex
	report := func(e *BlockError) {
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			first = e
			return
		}
		r1, b1 := e.rank(g.levels)
		r0, b0 := first.rank(g.levels)
		if r1 < r0 || (r1 == r0 && b1 < b0) {
			first = e
		}
	}
	h := newHasher(info.Salt)
	var sum [DigestSize]byte

	// Levels 1 and up are small: read them into memory and check them top down.
	stored := make([][]byte, g.levels)
	for lvl := 1; lvl < g.levels; lvl++ {
		stored[lvl] = make([]byte, g.blocks[lvl]*BlockSize)
		if n, err := r.ReadAt(stored[lvl], levelOff(lvl)); n != len(stored[lvl]) {
			return nil, fmt.Errorf("read hash tree level %d at offset %d: %w (file too short?)", lvl, levelOff(lvl), errOr(err, io.ErrUnexpectedEOF))
		}
	}
	if g.levels == 0 {
		// One data block: its digest is the root hash.
		blk := make([]byte, BlockSize)
		if n, err := r.ReadAt(blk, 0); n != BlockSize {
			return nil, fmt.Errorf("read data block 0: %w", errOr(err, io.ErrUnexpectedEOF))
		}
		h.sum(sum[:], blk)
		if !bytes.Equal(sum[:], rootHash) {
			return info, &BlockError{Area: "data", Offset: 0,
				Reason: fmt.Sprintf("hashes to %x, not the root hash %x (the only block)", sum, rootHash)}
		}
		info.RootHash = sum
		return info, nil
	}
	// entry returns the stored digest of block j of level lvl, which lives in level lvl+1.
	entry := func(lvl int, j uint64) []byte {
		if lvl == g.levels-1 {
			return rootHash
		}
		return stored[lvl+1][j*DigestSize : (j+1)*DigestSize]
	}
	checkBlock := func(lvl int, j uint64, blk []byte, entries uint64) {
		h.sum(sum[:], blk)
		want := entry(lvl, j)
		if !bytes.Equal(sum[:], want) {
			if lvl == g.levels-1 {
				report(&BlockError{Area: "root", Reason: fmt.Sprintf("the top hash block (level %d, offset %d) hashes to %x, not %x", lvl, levelOff(lvl), sum, rootHash)})
			} else {
				report(&BlockError{Area: "hash", Level: lvl, Block: j, Offset: levelOff(lvl) + int64(j)*BlockSize,
					Reason: fmt.Sprintf("hashes to %x, level %d says %x", sum, lvl+1, want)})
			}
			return
		}
		// The bytes after the last digest of a level must be zero.
		if used := entries - j*HashesPerBlock; used < HashesPerBlock {
			if i := bytes.IndexFunc(blk[used*DigestSize:], func(r rune) bool { return r != 0 }); i >= 0 {
				report(&BlockError{Area: "hash", Level: lvl, Block: j, Offset: levelOff(lvl) + int64(j)*BlockSize,
					Reason: "spare area after the last digest is not zero"})
			}
		}
	}
	for lvl := g.levels - 1; lvl >= 1; lvl-- {
		for j := uint64(0); j < g.blocks[lvl]; j++ {
			checkBlock(lvl, j, stored[lvl][j*BlockSize:(j+1)*BlockSize], g.blocks[lvl-1])
		}
	}

	// Level 0 and the data, streamed in chunks on all cores.
	chunkBlocks := uint64(ChunkSize / BlockSize)
	nChunks := int((info.DataBlocks + chunkBlocks - 1) / chunkBlocks)
	l0Off := levelOff(0)
	type scratch struct {
		l0, data, sums []byte
	}
	scr := make([]*scratch, Workers())
	err = parallel(nChunks, func(w, k int) error {
		if scr[w] == nil {
			scr[w] = &scratch{l0: make([]byte, ChunkSize/HashesPerBlock), data: make([]byte, ChunkSize), sums: make([]byte, ChunkSize/HashesPerBlock)}
		}
		var ws [DigestSize]byte
		first := uint64(k) * chunkBlocks
		nb := min(chunkBlocks, info.DataBlocks-first)
		nl0 := (nb + HashesPerBlock - 1) / HashesPerBlock
		j0 := first / HashesPerBlock
		l0 := scr[w].l0[:nl0*BlockSize]
		if n, err := r.ReadAt(l0, l0Off+int64(j0)*BlockSize); n != len(l0) {
			return fmt.Errorf("read hash tree level 0 at offset %d: %w (file too short?)", l0Off+int64(j0)*BlockSize, errOr(err, io.ErrUnexpectedEOF))
		}
		for j := uint64(0); j < nl0; j++ {
			blk := l0[j*BlockSize : (j+1)*BlockSize]
			h.sum(ws[:], blk)
			want := rootHash
			if g.levels > 1 {
				want = stored[1][(j0+j)*DigestSize : (j0+j+1)*DigestSize]
			}
			if !bytes.Equal(ws[:], want) {
				if g.levels == 1 {
					report(&BlockError{Area: "root", Reason: fmt.Sprintf("the top hash block (level 0, offset %d) hashes to %x, not %x", l0Off, ws, rootHash)})
				} else {
					report(&BlockError{Area: "hash", Level: 0, Block: j0 + j, Offset: l0Off + int64(j0+j)*BlockSize,
						Reason: fmt.Sprintf("hashes to %x, level 1 says %x", ws, want)})
				}
				continue
			}
			if used := info.DataBlocks - (j0+j)*HashesPerBlock; used < HashesPerBlock {
				if i := bytes.IndexFunc(blk[used*DigestSize:], func(r rune) bool { return r != 0 }); i >= 0 {
					report(&BlockError{Area: "hash", Level: 0, Block: j0 + j, Offset: l0Off + int64(j0+j)*BlockSize,
						Reason: "spare area after the last digest is not zero"})
				}
			}
		}
		data := scr[w].data[:nb*BlockSize]
		off := int64(first) * BlockSize
		if n, err := r.ReadAt(data, off); n != len(data) {
			return fmt.Errorf("read data at offset %d: %w", off, errOr(err, io.ErrUnexpectedEOF))
		}
		sums := scr[w].sums[:nb*DigestSize]
		h.sumBlocks(sums, data)
		for b := uint64(0); b < nb; b++ {
			got, want := sums[b*DigestSize:(b+1)*DigestSize], l0[b*DigestSize:(b+1)*DigestSize]
			if !bytes.Equal(got, want) {
				report(&BlockError{Area: "data", Block: first + b, Offset: off + int64(b)*BlockSize,
					Reason: fmt.Sprintf("hashes to %x, level 0 says %x", got, want)})
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if first != nil {
		return info, first
	}
	copy(info.RootHash[:], rootHash)
	return info, nil
}

// HashOffsetForSize finds the hash offset of a file that holds exactly the
// data, the superblock and the tree Format writes: the data size D such that
// D + superblock + tree(D) equals size.
func HashOffsetForSize(size int64) (int64, error) {
	total := func(n uint64) int64 { return OutputSize(int64(n) * BlockSize) }
	if size%BlockSize != 0 || size < 2*BlockSize {
		return 0, fmt.Errorf("size %d is not data + verity hash area (not a multiple of %d, or too small)", size, BlockSize)
	}
	lo, hi := uint64(1), uint64(size/BlockSize)
	for lo < hi {
		mid := lo + (hi-lo)/2
		if total(mid) < size {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if total(lo) != size {
		return 0, fmt.Errorf("size %d is not data + verity hash area for any data size; give the hash offset", size)
	}
	return int64(lo) * BlockSize, nil
}

// ParseRootHash parses a root hash in hex.
func ParseRootHash(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != DigestSize {
		return nil, fmt.Errorf("root hash %q: want %d hex digits", s, 2*DigestSize)
	}
	return b, nil
}

// VerifyFile verifies the verity image in path. A negative hashOffset means
// the file holds exactly data + hash area, and the offset is derived from its size.
func VerifyFile(path string, hashOffset int64, rootHash []byte) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", path, err)
	}
	if hashOffset < 0 {
		if hashOffset, err = HashOffsetForSize(st.Size()); err != nil {
			return nil, fmt.Errorf("verify %s: %w", path, err)
		}
	}
	info, err := Verify(f, hashOffset, rootHash)
	if err != nil {
		var be *BlockError
		if errors.As(err, &be) {
			return info, fmt.Errorf("verify %s: %w", path, err)
		}
		return nil, fmt.Errorf("verify %s: %w", path, err)
	}
	return info, nil
}
