// Package sha256x2 computes SHA-256 of two messages at once: two
// equal-length messages with a common prefix (Salted), or two streams of any
// length (Digest and Write2).
//
// On amd64 CPUs with the SHA extensions (SHA-NI, plus SSSE3 and SSE4.1) the
// two messages are hashed by one assembly loop that interleaves the
// instructions of the two lanes, so that each lane's SHA256RNDS2 executes
// while the other lane waits on the latency of its previous one. This gives
// close to twice the throughput of hashing the messages one after the other,
// which is what building a dm-verity hash tree needs: many 4096-byte blocks,
// each hashed as salt||block, and what checksumming several big files
// needs. Everywhere else (other architectures, the
// purego build tag, CPUs without SHA-NI) a fallback built on crypto/sha256
// computes the same digests.
package sha256x2

import (
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"hash"
	"sync"
)

const blockSize = 64

// useAsm selects the two-lane SHA-NI code. Tests clear it to exercise the
// fallback on machines that have SHA-NI.
var useAsm = haveAsm

// iv is the SHA-256 initial hash value (FIPS 180-4, 5.3.3).
var iv = [8]uint32{
	0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
	0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
}

// Salted hashes messages that all start with the same prefix (dm-verity's
// salt: hash type 1 hashes salt||block). A Salted is immutable after New and
// safe for concurrent use by many goroutines.
type Salted struct {
	mid   [8]uint32       // state after the prefix's whole blocks (SHA-NI path)
	tail  [blockSize]byte // prefix bytes after its whole blocks
	ntail int             // len of the used part of tail, < blockSize
	plen  uint64          // len(prefix)
	state []byte          // crypto/sha256 state after the prefix (fallback)
}

// New returns a Salted for prefix. It precomputes the SHA-256 state after the
// prefix's whole 64-byte blocks (the midstate) and keeps the remaining prefix
// bytes. prefix may have any length, including zero; New does not retain it.
func New(prefix []byte) *Salted {
	s := &Salted{mid: iv, plen: uint64(len(prefix))}
	whole := len(prefix) &^ (blockSize - 1)
	if haveAsm && whole > 0 {
		other := iv
		blocks2(&s.mid, &other, &prefix[0], &prefix[0], whole/blockSize)
	}
	s.ntail = copy(s.tail[:], prefix[whole:])

	h := sha256.New()
	h.Write(prefix)
	st, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic("sha256x2: " + err.Error())
	}
	s.state = st
	return s
}

// Sum2 writes sha256(prefix||m0) to d0[:32] and sha256(prefix||m1) to
// d1[:32]. len(m0) must equal len(m1) and d0 and d1 must have room for 32
// bytes; Sum2 panics otherwise. It does not allocate.
func (s *Salted) Sum2(d0, d1 []byte, m0, m1 []byte) {
	if len(m0) != len(m1) {
		panic("sha256x2: Sum2 messages differ in length")
	}
	_, _ = d0[31], d1[31]
	if !useAsm {
		s.sumGeneric(d0, m0)
		s.sumGeneric(d1, m1)
		return
	}
	s.sum2(d0, d1, m0, m1)
}

// Sum writes sha256(prefix||m) to d[:32]; d must have room for 32 bytes. It
// is meant for the odd message out when messages come in pairs: it costs
// about as much as Sum2. It does not allocate.
func (s *Salted) Sum(d []byte, m []byte) {
	_ = d[31]
	if !useAsm {
		s.sumGeneric(d, m)
		return
	}
	// Both lanes hash m; the two-lane loop takes about as long as a
	// single-lane one would, since one lane alone is latency bound.
	var spare [sha256.Size]byte
	s.sum2(d, spare[:], m, m)
}

// Accelerated reports whether the two-lane SHA-NI code is in use. If it
// returns false, a portable fallback built on crypto/sha256 is used.
func Accelerated() bool { return useAsm }

// sum2 hashes prefix||m0 and prefix||m1 with blocks2. len(m0) == len(m1)
// and len(d0), len(d1) >= 32 are checked by the callers.
func (s *Salted) sum2(d0, d1 []byte, m0, m1 []byte) {
	s0, s1 := s.mid, s.mid
	bits := (s.plen + uint64(len(m0))) << 3

	// b0 and b1 hold each lane's pending bytes: first the rest of the prefix
	// with the start of the message, at the end the message's last partial
	// block and the padding (one or two blocks).
	var b0, b1 [2 * blockSize]byte
	n := s.ntail
	if n > 0 {
		copy(b0[:], s.tail[:n])
		copy(b1[:], s.tail[:n])
		c := copy(b0[n:blockSize], m0)
		copy(b1[n:blockSize], m1)
		m0, m1 = m0[c:], m1[c:]
		n += c
		if n == blockSize {
			blocks2(&s0, &s1, &b0[0], &b1[0], 1)
			n = 0
		}
	}
	if n == 0 {
		if k := len(m0) / blockSize; k > 0 {
			blocks2(&s0, &s1, &m0[0], &m1[0], k)
			m0, m1 = m0[k*blockSize:], m1[k*blockSize:]
		}
		n = copy(b0[:], m0)
		copy(b1[:], m1)
	}

	end := blockSize
	if n >= blockSize-8 {
		end = 2 * blockSize
	}
	b0[n], b1[n] = 0x80, 0x80
	clear(b0[n+1 : end-8])
	clear(b1[n+1 : end-8])
	binary.BigEndian.PutUint64(b0[end-8:end], bits)
	binary.BigEndian.PutUint64(b1[end-8:end], bits)
	blocks2(&s0, &s1, &b0[0], &b1[0], end/blockSize)

	for i := range 8 {
		binary.BigEndian.PutUint32(d0[4*i:], s0[i])
		binary.BigEndian.PutUint32(d1[4*i:], s1[i])
	}
}

var hashPool = sync.Pool{New: func() any { return sha256.New() }}

// sumGeneric is the fallback: crypto/sha256 restored to the state after the
// prefix, then fed m.
func (s *Salted) sumGeneric(d, m []byte) {
	h := hashPool.Get().(hash.Hash)
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(s.state); err != nil {
		panic("sha256x2: " + err.Error())
	}
	h.Write(m)
	h.Sum(d[:0])
	hashPool.Put(h)
}

// SetAccelerated turns the two-lane code on (where the CPU has it) or off,
// and returns the previous setting. It exists for A/B measurements of the
// code that uses this package; it must not be called while hashing.
func SetAccelerated(on bool) (prev bool) {
	prev = useAsm
	useAsm = on && haveAsm
	return prev
}
