//go:build amd64 && !purego && linux

package sha256x2

import (
	"os"
	"strings"
	"testing"
)

// TestDetect checks the CPUID feature detection against the kernel's view.
func TestDetect(t *testing.T) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skip(err)
	}
	var flags []string
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			flags = strings.Fields(v)
			break
		}
	}
	has := func(f string) bool {
		for _, g := range flags {
			if g == f {
				return true
			}
		}
		return false
	}
	want := has("sha_ni") && has("ssse3") && has("sse4_1")
	if haveAsm != want {
		t.Errorf("haveAsm = %v; /proc/cpuinfo flags say %v", haveAsm, want)
	}
	t.Logf("Accelerated() = %v", Accelerated())
}
