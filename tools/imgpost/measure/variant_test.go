package measure

import (
	"strings"
	"testing"
)

func TestEDK2Variant(t *testing.T) {
	if got, err := EDK2Variant("edk2-stable202502"); err != nil || got != OVMFPre202505 {
		t.Errorf("EDK2Variant(edk2-stable202502) = %q, %v; want %q", got, err, OVMFPre202505)
	}
	// Tags whose layout dstack does not accept, among them later ones
	// (202505 rewrote RTMR0, 202511 again) and near misses of a known tag.
	for _, tag := range []string{"edk2-stable202505", "edk2-stable202511", "edk2-stable202411", "stable202502", "edk2-stable202502 ", "EDK2-STABLE202502", ""} {
		if v, err := EDK2Variant(tag); err == nil || !strings.Contains(err.Error(), "edk2-stable202502") {
			t.Errorf("EDK2Variant(%q) = %q, %v; want an error listing the known tags", tag, v, err)
		}
	}
}
