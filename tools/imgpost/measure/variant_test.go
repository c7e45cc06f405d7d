package measure

import (
	"strings"
	"testing"
)

func TestEDK2Variant(t *testing.T) {
	for _, c := range []struct {
		tag, want string
		modelled  bool
	}{
		{"edk2-stable202502", OVMFPre202505, true},
		{"edk2-stable202505", OVMFStable202505, false},
	} {
		got, err := EDK2Variant(c.tag)
		if err != nil || got != c.want {
			t.Errorf("EDK2Variant(%q) = %q, %v; want %q", c.tag, got, err, c.want)
		}
		if Modelled(got) != c.modelled {
			t.Errorf("Modelled(%q) = %v, want %v", got, !c.modelled, c.modelled)
		}
	}
	// Tags whose layout is not known, among them later ones (202511 changed
	// the layout again) and near misses of a known tag.
	for _, tag := range []string{"edk2-stable202511", "edk2-stable202411", "stable202502", "edk2-stable202502 ", "EDK2-STABLE202502", ""} {
		if v, err := EDK2Variant(tag); err == nil || !strings.Contains(err.Error(), "edk2-stable202502") {
			t.Errorf("EDK2Variant(%q) = %q, %v; want an error listing the known tags", tag, v, err)
		}
	}
	if Modelled("") || Modelled(OVMFStable202505) {
		t.Error("Modelled accepts a layout Predict does not model")
	}
}
