package sha256x2

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sync"
	"testing"
)

// path is one implementation to test: the two-lane SHA-NI code or the
// crypto/sha256 fallback.
type path struct {
	name string
	asm  bool
}

// paths returns the implementations available on this machine.
func paths() []path {
	ps := []path{{"fallback", false}}
	if haveAsm {
		ps = append(ps, path{"sha-ni", true})
	}
	return ps
}

// use selects p for the rest of the test.
func use(t testing.TB, p path) {
	old := useAsm
	useAsm = p.asm
	t.Cleanup(func() { useAsm = old })
}

func ref(prefix, m []byte) [32]byte {
	return sha256.Sum256(append(append([]byte(nil), prefix...), m...))
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

var (
	prefixLens = []int{0, 1, 31, 32, 33, 55, 56, 63, 64, 65, 100, 128, 200, 256, 300}
	msgLens    = []int{0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 4095, 4096, 4097, 8192}
)

// testLens is msgLens and n random lengths below max.
func testLens(r *rand.Rand, n, max int) []int {
	lens := append([]int(nil), msgLens...)
	for range n {
		lens = append(lens, r.IntN(max))
	}
	return lens
}

func TestSum2(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	lens := testLens(r, 8, 10000)
	for _, p := range paths() {
		t.Run(p.name, func(t *testing.T) {
			use(t, p)
			for _, pl := range prefixLens {
				prefix := randBytes(r, pl)
				s := New(prefix)
				for _, ml := range lens {
					m0, m1 := randBytes(r, ml), randBytes(r, ml)
					if ml > 0 && bytes.Equal(m0, m1) {
						m1[0] ^= 1
					}
					check2(t, s, prefix, m0, m1)
				}
				// Identical messages in both lanes, and lanes aliasing the
				// same memory.
				m := randBytes(r, 4096)
				check2(t, s, prefix, m, bytes.Clone(m))
				check2(t, s, prefix, m, m)
			}
		})
	}
}

// check2 checks Sum2 and Sum against crypto/sha256.
func check2(t *testing.T, s *Salted, prefix, m0, m1 []byte) {
	t.Helper()
	w0, w1 := ref(prefix, m0), ref(prefix, m1)
	var d0, d1 [40]byte
	for i := range d0 {
		d0[i], d1[i] = 0xee, 0xee
	}
	s.Sum2(d0[:], d1[:], m0, m1)
	if !bytes.Equal(d0[:32], w0[:]) || !bytes.Equal(d1[:32], w1[:]) {
		t.Fatalf("prefix %d, msg %d: Sum2 = %x, %x; want %x, %x", len(prefix), len(m0), d0[:32], d1[:32], w0, w1)
	}
	if !bytes.Equal(d0[32:], bytes.Repeat([]byte{0xee}, 8)) || !bytes.Equal(d1[32:], bytes.Repeat([]byte{0xee}, 8)) {
		t.Fatalf("prefix %d, msg %d: Sum2 wrote past 32 bytes", len(prefix), len(m0))
	}
	var d [32]byte
	s.Sum(d[:], m0)
	if d != w0 {
		t.Fatalf("prefix %d, msg %d: Sum = %x; want %x", len(prefix), len(m0), d, w0)
	}
	s.Sum(d[:], m1)
	if d != w1 {
		t.Fatalf("prefix %d, msg %d: Sum(m1) = %x; want %x", len(prefix), len(m1), d, w1)
	}
}

func TestBitFlip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	salt := randBytes(r, 32)
	s := New(salt)
	m0, m1 := randBytes(r, 4096), randBytes(r, 4096)
	for _, p := range paths() {
		t.Run(p.name, func(t *testing.T) {
			use(t, p)
			var a0, a1, b0, b1 [32]byte
			s.Sum2(a0[:], a1[:], m0, m1)
			for _, bit := range []int{0, 7, 8*64 - 1, 8 * 64, 8*4096 - 1, r.IntN(8 * 4096)} {
				m := bytes.Clone(m1)
				m[bit/8] ^= 1 << (bit % 8)
				s.Sum2(b0[:], b1[:], m0, m)
				if b0 != a0 {
					t.Errorf("bit %d of m1: d0 changed", bit)
				}
				if b1 == a1 {
					t.Errorf("bit %d of m1: d1 unchanged", bit)
				}
				if w := ref(salt, m); b1 != w {
					t.Errorf("bit %d of m1: d1 = %x, want %x", bit, b1, w)
				}
			}
		})
	}
}

func TestConcurrent(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	salt := randBytes(r, 32)
	s := New(salt)
	const nmsg = 64
	msgs := make([][]byte, nmsg)
	want := make([][32]byte, nmsg)
	for i := range msgs {
		msgs[i] = randBytes(r, 4096)
		want[i] = ref(salt, msgs[i])
	}
	for _, p := range paths() {
		t.Run(p.name, func(t *testing.T) {
			use(t, p)
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					var d0, d1 [32]byte
					for it := range 50 {
						i, j := (g+it)%nmsg, (g+3*it+1)%nmsg
						s.Sum2(d0[:], d1[:], msgs[i], msgs[j])
						if d0 != want[i] || d1 != want[j] {
							t.Errorf("goroutine %d: wrong digest for messages %d, %d", g, i, j)
							return
						}
						s.Sum(d0[:], msgs[j])
						if d0 != want[j] {
							t.Errorf("goroutine %d: Sum wrong digest for message %d", g, j)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

func TestAllocs(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	s := New(randBytes(r, 32))
	m0, m1 := randBytes(r, 4096), randBytes(r, 4096)
	var d0, d1 [32]byte
	for _, p := range paths() {
		t.Run(p.name, func(t *testing.T) {
			if !p.asm && raceEnabled {
				t.Skip("sync.Pool drops items at random under the race detector")
			}
			use(t, p)
			if n := testing.AllocsPerRun(100, func() { s.Sum2(d0[:], d1[:], m0, m1) }); n != 0 {
				t.Errorf("Sum2: %v allocs per run", n)
			}
			if n := testing.AllocsPerRun(100, func() { s.Sum(d0[:], m0) }); n != 0 {
				t.Errorf("Sum: %v allocs per run", n)
			}
		})
	}
}

func TestPanics(t *testing.T) {
	s := New([]byte("salt"))
	var d0, d1 [32]byte
	cases := map[string]func(){
		"unequal lengths": func() { s.Sum2(d0[:], d1[:], make([]byte, 64), make([]byte, 65)) },
		"short d0":        func() { s.Sum2(d0[:31], d1[:], nil, nil) },
		"short d1":        func() { s.Sum2(d0[:], d1[:31], nil, nil) },
		"short d":         func() { s.Sum(d0[:31], nil) },
	}
	for _, p := range paths() {
		use(t, p)
		for name, f := range cases {
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("%s, %s: no panic", p.name, name)
					}
				}()
				f()
			}()
		}
	}
}

// TestBlocks2 checks the assembly block function on its own against a plain
// Go SHA-256 compression function, with states that are not the IV.
func TestBlocks2(t *testing.T) {
	if !haveAsm {
		t.Skip("no SHA-NI code in this build or on this CPU")
	}
	r := rand.New(rand.NewPCG(9, 10))
	for _, n := range []int{0, 1, 2, 3, 17} {
		p0, p1 := randBytes(r, 64*n+1), randBytes(r, 64*n+1)
		var s0, s1 [8]uint32
		for i := range s0 {
			s0[i], s1[i] = r.Uint32(), r.Uint32()
		}
		w0, w1 := s0, s1
		refBlocks(&w0, p0[1:64*n+1])
		refBlocks(&w1, p1[1:64*n+1])
		if n > 0 {
			// Offset by one byte: blocks2 must not need aligned input.
			blocks2(&s0, &s1, &p0[1], &p1[1], n)
		}
		if s0 != w0 || s1 != w1 {
			t.Errorf("%d blocks: got %08x, %08x; want %08x, %08x", n, s0, s1, w0, w1)
		}
	}
}

// refBlocks is a straightforward SHA-256 compression function (FIPS 180-4,
// 6.2.2) used to check blocks2 without the wrappers around it.
func refBlocks(h *[8]uint32, p []byte) {
	var k [64]uint32
	kb := refK()
	copy(k[:], kb)
	for ; len(p) >= 64; p = p[64:] {
		var w [64]uint32
		for i := range 16 {
			w[i] = binary.BigEndian.Uint32(p[4*i:])
		}
		for i := 16; i < 64; i++ {
			s0 := bits.RotateLeft32(w[i-15], -7) ^ bits.RotateLeft32(w[i-15], -18) ^ w[i-15]>>3
			s1 := bits.RotateLeft32(w[i-2], -17) ^ bits.RotateLeft32(w[i-2], -19) ^ w[i-2]>>10
			w[i] = w[i-16] + s0 + w[i-7] + s1
		}
		a, b, c, d, e, f, g, hh := h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
		for i := range 64 {
			S1 := bits.RotateLeft32(e, -6) ^ bits.RotateLeft32(e, -11) ^ bits.RotateLeft32(e, -25)
			ch := e&f ^ ^e&g
			t1 := hh + S1 + ch + k[i] + w[i]
			S0 := bits.RotateLeft32(a, -2) ^ bits.RotateLeft32(a, -13) ^ bits.RotateLeft32(a, -22)
			maj := a&b ^ a&c ^ b&c
			t2 := S0 + maj
			hh, g, f, e, d, c, b, a = g, f, e, d+t1, c, b, a, t1+t2
		}
		h[0] += a
		h[1] += b
		h[2] += c
		h[3] += d
		h[4] += e
		h[5] += f
		h[6] += g
		h[7] += hh
	}
}

// refK computes the SHA-256 round constants from their definition (the
// first 32 fractional bits of the cube roots of the first 64 primes) with
// an integer cube root, independently of the table in the assembly.
func refK() []uint32 {
	var k []uint32
	for p := uint64(2); len(k) < 64; p++ {
		prime := true
		for q := uint64(2); q*q <= p; q++ {
			if p%q == 0 {
				prime = false
			}
		}
		if !prime {
			continue
		}
		// floor(cbrt(p) * 2^32) = floor(cbrt(p << 96)), the largest x with
		// x^3 <= p<<96. p < 512, so x < 2^36 and x^3 fits in 128 bits.
		lo, hi := uint64(0), uint64(1)<<36
		for hi-lo > 1 {
			mid := (lo + hi) / 2
			if cubeLE(mid, p) {
				lo = mid
			} else {
				hi = mid
			}
		}
		k = append(k, uint32(lo))
	}
	return k
}

// cubeLE reports whether x^3 <= p<<96.
func cubeLE(x, p uint64) bool {
	h1, l1 := bits.Mul64(x, x)  // x^2 = h1:l1 < 2^72
	hi, lo := bits.Mul64(l1, x) // l1*x
	hi += h1 * x                // h1*x < 2^44: no overflow
	ph := p << 32               // p<<96 = ph:0
	return hi < ph || hi == ph && lo == 0
}

func TestRefK(t *testing.T) {
	k := refK()
	if k[0] != 0x428a2f98 || k[63] != 0xc67178f2 {
		t.Fatalf("refK: %08x ... %08x", k[0], k[63])
	}
}

func FuzzSum2(f *testing.F) {
	f.Add([]byte("salt"), []byte("a"), []byte("b"))
	f.Add(make([]byte, 32), make([]byte, 4096), bytes.Repeat([]byte{1}, 4096))
	f.Add(make([]byte, 63), make([]byte, 56), make([]byte, 57))
	f.Fuzz(func(t *testing.T, prefix, m0, m1 []byte) {
		n := min(len(m0), len(m1))
		m0, m1 = m0[:n], m1[:n]
		w0, w1 := ref(prefix, m0), ref(prefix, m1)
		s := New(prefix)
		for _, p := range paths() {
			useAsm = p.asm
			var d0, d1, d [32]byte
			s.Sum2(d0[:], d1[:], m0, m1)
			s.Sum(d[:], m1)
			useAsm = haveAsm
			if d0 != w0 || d1 != w1 || d != w1 {
				t.Fatalf("%s: prefix %d, msg %d: got %x %x %x; want %x %x", p.name, len(prefix), n, d0, d1, d, w0, w1)
			}
		}
	})
}

const benchLen = 4096

func benchMsgs() (salt, m0, m1 []byte) {
	r := rand.New(rand.NewPCG(11, 12))
	return randBytes(r, 32), randBytes(r, benchLen), randBytes(r, benchLen)
}

// BenchmarkSum2 hashes two 4096-byte blocks with a 32-byte salt per op.
func BenchmarkSum2(b *testing.B) {
	for _, p := range paths() {
		b.Run(p.name, func(b *testing.B) {
			use(b, p)
			salt, m0, m1 := benchMsgs()
			s := New(salt)
			var d0, d1 [32]byte
			b.SetBytes(2 * benchLen)
			for b.Loop() {
				s.Sum2(d0[:], d1[:], m0, m1)
			}
		})
	}
}

// BenchmarkSum hashes one 4096-byte block with a 32-byte salt per op.
func BenchmarkSum(b *testing.B) {
	salt, m0, _ := benchMsgs()
	s := New(salt)
	var d [32]byte
	b.SetBytes(benchLen)
	for b.Loop() {
		s.Sum(d[:], m0)
	}
}

// BenchmarkStdlib is the baseline for BenchmarkSum2: crypto/sha256 hashing
// salt||block for the same two blocks, reusing one hash.Hash.
func BenchmarkStdlib(b *testing.B) {
	salt, m0, m1 := benchMsgs()
	h := sha256.New()
	var d [32]byte
	b.SetBytes(2 * benchLen)
	for b.Loop() {
		for _, m := range [][]byte{m0, m1} {
			h.Reset()
			h.Write(salt)
			h.Write(m)
			h.Sum(d[:0])
		}
	}
}

func ExampleSalted_Sum2() {
	s := New([]byte("salt"))
	b0 := bytes.Repeat([]byte{0}, 4096)
	b1 := bytes.Repeat([]byte{1}, 4096)
	var d0, d1 [32]byte
	s.Sum2(d0[:], d1[:], b0, b1)
	fmt.Println(d0 == sha256.Sum256(append([]byte("salt"), b0...)))
	fmt.Println(d1 == sha256.Sum256(append([]byte("salt"), b1...)))
	// Output:
	// true
	// true
}
