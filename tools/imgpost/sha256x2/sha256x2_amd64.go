//go:build amd64 && !purego

package sha256x2

// blocks2 runs the SHA-256 compression function over n 64-byte blocks of
// each lane: p0[:64*n] into s0 and p1[:64*n] into s1. The states are in
// natural order (a..h). p0 and p1 need no alignment and may be equal.
//
//go:noescape
func blocks2(s0, s1 *[8]uint32, p0, p1 *byte, n int)

// cpuid executes CPUID with EAX=leaf and ECX=sub.
func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)

// haveAsm reports whether the CPU supports the instructions blocks2 uses:
// SHA extensions (SHA256RNDS2, SHA256MSG1/2), SSSE3 (PSHUFB, PALIGNR) and
// SSE4.1 (PBLENDW).
var haveAsm = detect()

func detect() bool {
	maxLeaf, _, _, _ := cpuid(0, 0)
	if maxLeaf < 7 {
		return false
	}
	_, _, ecx1, _ := cpuid(1, 0)
	_, ebx7, _, _ := cpuid(7, 0)
	ssse3 := ecx1&(1<<9) != 0
	sse41 := ecx1&(1<<19) != 0
	sha := ebx7&(1<<29) != 0
	return ssse3 && sse41 && sha
}
