//go:build !amd64 || purego

package sha256x2

// haveAsm is false: this build has no two-lane block function.
const haveAsm = false

// blocks2 is never called when haveAsm is false.
func blocks2(s0, s1 *[8]uint32, p0, p1 *byte, n int) {
	panic("sha256x2: blocks2 not available")
}
