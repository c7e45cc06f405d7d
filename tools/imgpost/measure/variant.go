package measure

import (
	"fmt"
	"sort"
	"strings"
)

// OVMFStable202505 names the event layout of edk2-stable202505 OVMF
// (dstack's OvmfVariant::Stable202505: 17 RTMR0 events, with fw_cfg,
// variable-authority and more boot-option events). dstack's verifier knows
// it; Predict does not model it.
const OVMFStable202505 = "stable202505"

// edk2Variants maps the edk2 release tags whose TDX OVMF event layout is
// known to that layout's name (dstack-types' OvmfVariant, metadata.json's
// ovmf_variant). Upstream's dstack-ovmf builds edk2-stable202502 and stamps
// "pre202505": six OvmfPkg/MdeModulePkg commits between stable202502 and
// stable202505 rewrite RTMR0 (fw_cfg measurement, BootManagerMenuApp as
// Boot0000, UiApp as Boot0001, the SMBIOS handoff table), and dstack's
// v0.5.10 image, built from edk2-stable202505, is Stable202505 to dstack-mr.
// Later tags change the layout again (upstream: stable202511 "needs a new
// OvmfVariant baseline"), so they are not listed.
var edk2Variants = map[string]string{
	"edk2-stable202502": OVMFPre202505,
	"edk2-stable202505": OVMFStable202505,
}

// EDK2Variant returns the OVMF event layout a TDX firmware built from the
// edk2 release tag produces; a tag whose layout is not known is an error.
func EDK2Variant(tag string) (string, error) {
	if v, ok := edk2Variants[tag]; ok {
		return v, nil
	}
	known := make([]string, 0, len(edk2Variants))
	for t := range edk2Variants {
		known = append(known, t)
	}
	sort.Strings(known)
	return "", fmt.Errorf("edk2 tag %q: its OVMF event layout is not known (known: %s)", tag, strings.Join(known, ", "))
}

// Modelled reports whether Predict models the OVMF event layout variant.
func Modelled(variant string) bool { return variant == OVMFPre202505 }
