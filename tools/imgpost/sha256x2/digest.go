package sha256x2

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
)

// Digest is a streaming SHA-256 (a hash.Hash) for long messages such as
// whole files. Fed alone with Write it runs as fast as crypto/sha256; fed
// together with a second Digest through Write2, the two streams' blocks are
// hashed two lanes at a time, which takes about as long as one stream alone.
// A Digest is not safe for concurrent use.
type Digest struct {
	s   [8]uint32
	buf [blockSize]byte // pending bytes of a partial block
	n   int             // len of the used part of buf
	len uint64          // bytes written
	std hash.Hash       // the crypto/sha256 fallback, without SHA-NI
}

// NewDigest returns a Digest of the empty message.
func NewDigest() *Digest {
	d := new(Digest)
	d.Reset()
	return d
}

var _ hash.Hash = (*Digest)(nil)

// Reset makes d a Digest of the empty message.
func (d *Digest) Reset() {
	d.s, d.n, d.len, d.std = iv, 0, 0, nil
	if !useAsm {
		d.std = sha256.New()
	}
}

// Size returns sha256.Size.
func (d *Digest) Size() int { return sha256.Size }

// BlockSize returns sha256.BlockSize.
func (d *Digest) BlockSize() int { return blockSize }

// Write adds p to the message. It never fails.
func (d *Digest) Write(p []byte) (int, error) {
	if d.std != nil {
		return d.std.Write(p)
	}
	d.len += uint64(len(p))
	d.tail(d.head(p))
	return len(p), nil
}

// Write2 adds pa to a's message and pb to b's, hashing the blocks of the two
// in two lanes where it can: when pa and pb have the same length (after
// whatever partial blocks a and b had pending), Write2 costs about as much
// as one Write of pa. a and b must be different Digests.
func Write2(a, b *Digest, pa, pb []byte) {
	if a == b {
		panic("sha256x2: Write2 of a Digest with itself")
	}
	if a.std != nil || b.std != nil {
		a.Write(pa)
		b.Write(pb)
		return
	}
	a.len += uint64(len(pa))
	b.len += uint64(len(pb))
	pa, pb = a.head(pa), b.head(pb)
	if k := min(len(pa), len(pb)) / blockSize; k > 0 {
		blocks2(&a.s, &b.s, &pa[0], &pb[0], k)
		pa, pb = pa[k*blockSize:], pb[k*blockSize:]
	}
	a.tail(pa)
	b.tail(pb)
}

// head tops up a pending partial block from p (hashing it once full) and
// returns the rest of p. If it returns a non-empty slice, nothing is pending.
func (d *Digest) head(p []byte) []byte {
	if d.n == 0 {
		return p
	}
	c := copy(d.buf[d.n:], p)
	d.n += c
	if d.n == blockSize {
		d.single(d.buf[:], 1)
		d.n = 0
	}
	return p[c:]
}

// tail hashes p's whole blocks alone and keeps the rest pending; nothing is
// pending when it is called with a non-empty p.
func (d *Digest) tail(p []byte) {
	if k := len(p) / blockSize; k > 0 {
		d.single(p, k)
		p = p[k*blockSize:]
	}
	d.n += copy(d.buf[d.n:], p)
}

// single hashes k blocks of p in one lane; the other lane hashes them too
// and is thrown away, which costs nothing, as one lane is latency bound.
func (d *Digest) single(p []byte, k int) {
	var spare [8]uint32
	blocks2(&d.s, &spare, &p[0], &p[0], k)
}

// Sum appends the digest of the message so far to b; d is not changed.
func (d *Digest) Sum(b []byte) []byte {
	if d.std != nil {
		return d.std.Sum(b)
	}
	c := *d // the padding is hashed in a copy
	var pad [2 * blockSize]byte
	n := copy(pad[:], c.buf[:c.n])
	pad[n] = 0x80
	end := blockSize
	if n >= blockSize-8 {
		end = 2 * blockSize
	}
	binary.BigEndian.PutUint64(pad[end-8:end], c.len<<3)
	c.single(pad[:end], end/blockSize)
	var out [sha256.Size]byte
	for i, v := range c.s {
		binary.BigEndian.PutUint32(out[4*i:], v)
	}
	return append(b, out[:]...)
}
