package sha256x2

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"testing"
)

// splits cuts m into pieces of random lengths (some empty, some not whole
// blocks, some long).
func splits(r *rand.Rand, m []byte) [][]byte {
	var out [][]byte
	for len(m) > 0 {
		var n int
		switch r.IntN(4) {
		case 0:
			n = r.IntN(3)
		case 1:
			n = r.IntN(130)
		case 2:
			n = 64 * r.IntN(40)
		default:
			n = r.IntN(9000)
		}
		n = min(n, len(m))
		out = append(out, m[:n])
		m = m[n:]
	}
	return out
}

func TestDigestWrite(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	lens := testLens(r, 20, 70000)
	for _, p := range paths() {
		t.Run(p.name, func(t *testing.T) {
			use(t, p)
			for _, n := range lens {
				m := randBytes(r, n)
				want := sha256.Sum256(m)
				d := NewDigest()
				for _, piece := range splits(r, m) {
					d.Write(piece)
				}
				if got := d.Sum(nil); !bytes.Equal(got, want[:]) {
					t.Fatalf("len %d: Write pieces: %x, want %x", n, got, want)
				}
				// Sum does not change the state: more data, then Sum again.
				d.Write([]byte("more"))
				want2 := sha256.Sum256(append(bytes.Clone(m), "more"...))
				if got := d.Sum([]byte("prefix")); !bytes.Equal(got, append([]byte("prefix"), want2[:]...)) {
					t.Fatalf("len %d: Sum after Sum: %x, want %x", n, got, want2)
				}
				d.Reset()
				d.Write(m)
				if got := d.Sum(nil); !bytes.Equal(got, want[:]) {
					t.Fatalf("len %d: after Reset: %x, want %x", n, got, want)
				}
			}
		})
	}
}

// TestWrite2 feeds two messages through Write2 in pieces of unrelated
// lengths (so lanes are paired at every offset and phase, and one message
// often ends before the other), mixed with plain Writes.
func TestWrite2(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, p := range paths() {
		t.Run(p.name, func(t *testing.T) {
			use(t, p)
			for i := range 300 {
				ma, mb := randBytes(r, r.IntN(50000)), randBytes(r, r.IntN(50000))
				if i%10 == 0 {
					mb = bytes.Clone(ma) // identical lanes
				}
				a, b := NewDigest(), NewDigest()
				pa, pb := splits(r, ma), splits(r, mb)
				for len(pa) > 0 || len(pb) > 0 {
					var xa, xb []byte
					if len(pa) > 0 {
						xa, pa = pa[0], pa[1:]
					}
					if len(pb) > 0 {
						xb, pb = pb[0], pb[1:]
					}
					switch r.IntN(4) {
					case 0:
						a.Write(xa)
						b.Write(xb)
					case 1:
						Write2(b, a, xb, xa)
					default:
						Write2(a, b, xa, xb)
					}
				}
				wa, wb := sha256.Sum256(ma), sha256.Sum256(mb)
				if got := a.Sum(nil); !bytes.Equal(got, wa[:]) {
					t.Fatalf("case %d: lane a (len %d): %x, want %x", i, len(ma), got, wa)
				}
				if got := b.Sum(nil); !bytes.Equal(got, wb[:]) {
					t.Fatalf("case %d: lane b (len %d): %x, want %x", i, len(mb), got, wb)
				}
			}
		})
	}
}

func TestWrite2Self(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Write2(d, d) did not panic")
		}
	}()
	d := NewDigest()
	Write2(d, d, nil, nil)
}

func TestDigestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocations differ under the race detector")
	}
	a, b := NewDigest(), NewDigest()
	m := make([]byte, 10000)
	out := make([]byte, 0, 32)
	if n := testing.AllocsPerRun(100, func() {
		Write2(a, b, m, m[1:])
		a.Write(m[:77])
		out = a.Sum(out[:0])
	}); n != 0 && Accelerated() {
		t.Fatalf("%v allocations per run, want 0", n)
	}
}

// BenchmarkDigest compares one stream (Write), two streams two lanes at a
// time (Write2; bytes counted for both) and crypto/sha256, on 1 MiB writes.
func BenchmarkDigest(b *testing.B) {
	m := make([]byte, 1<<20)
	b.Run("Write", func(b *testing.B) {
		d := NewDigest()
		b.SetBytes(int64(len(m)))
		for b.Loop() {
			d.Write(m)
		}
	})
	b.Run("Write2", func(b *testing.B) {
		d0, d1 := NewDigest(), NewDigest()
		b.SetBytes(2 * int64(len(m)))
		for b.Loop() {
			Write2(d0, d1, m, m)
		}
	})
	b.Run("crypto-sha256", func(b *testing.B) {
		h := sha256.New()
		b.SetBytes(int64(len(m)))
		for b.Loop() {
			h.Write(m)
		}
	})
}
