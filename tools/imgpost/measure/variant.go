package measure

import (
	"fmt"
	"sort"
	"strings"
)

// edk2Variants maps the edk2 release tags whose TDX OVMF event layout
// dstack's verifier accepts to that layout's name (dstack-types'
// OvmfVariant, metadata.json's ovmf_variant). Upstream's dstack-ovmf builds
// edk2-stable202502 and stamps "pre202505", the one layout dstack knows
// (dstack 4cc8516f, 2026-06-29, removed its edk2-stable202505 variant).
// Later tags rewrite RTMR0: six OvmfPkg/MdeModulePkg commits between
// stable202502 and stable202505 add fw_cfg measurements, BootManagerMenuApp
// as Boot0000, UiApp as Boot0001 and the SMBIOS handoff table, and later
// tags change it again, so they are not listed.
var edk2Variants = map[string]string{
	"edk2-stable202502": OVMFPre202505,
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
