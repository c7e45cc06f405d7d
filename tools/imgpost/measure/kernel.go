package measure

import (
	"crypto"
	"encoding/binary"
	"fmt"
	"io"
	"unicode/utf16"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
)

// acpiDataSize is what QEMU's pc machines keep free at the top of low RAM
// for the firmware's ACPI tables (0x20000 + 0x8000); the initrd goes below.
const acpiDataSize = 0x28000

// setupPatchLen is the part of the bzImage QEMU's setup-header patches
// touch (the header ends before 0x268).
const setupPatchLen = 0x1000

// patchSetupHeader returns the first bytes of the kernel as QEMU patches them
// in x86_load_linux() for direct kernel boot (-kernel/-initrd): the loader
// type, CAN_USE_HEAP with the heap end, the command-line address, and the
// initrd address and size. The initrd is placed at the top of the RAM below
// 4 GiB (below the ACPI area, page aligned), so the bytes depend on the
// memory size: q35 keeps 2 GiB below 4 GiB from 0xB0000000 on, all RAM below
// that.
func patchSetupHeader(head []byte, initrdSize uint64, memSize uint64) ([]byte, error) {
	if len(head) < setupPatchLen {
		return nil, fmt.Errorf("kernel: %d bytes, too short for a bzImage", len(head))
	}
	le := binary.LittleEndian
	k := append([]byte(nil), head...)
	protocol := uint16(0)
	if string(k[0x202:0x206]) == "HdrS" {
		protocol = le.Uint16(k[0x206:])
	}
	if protocol < 0x200 {
		return nil, fmt.Errorf("kernel: boot protocol %#x: not a bzImage QEMU can load with an initrd", protocol)
	}
	realAddr, cmdlineAddr := uint32(0x10000), uint32(0x20000)
	if k[0x211]&0x01 == 0 { // not LOADED_HIGH: zImage layout
		return nil, fmt.Errorf("kernel: not loaded high (zImage): unsupported")
	}
	k[0x210] = 0xb0 // type_of_loader: QEMU
	if protocol >= 0x201 {
		k[0x211] |= 0x80 // CAN_USE_HEAP
		le.PutUint16(k[0x224:], uint16(cmdlineAddr-realAddr-0x200))
	}
	if protocol >= 0x202 {
		le.PutUint32(k[0x228:], cmdlineAddr)
	} else {
		le.PutUint16(k[0x20:], 0xa33f)
		le.PutUint16(k[0x22:], uint16(cmdlineAddr-realAddr))
	}
	if initrdSize == 0 {
		return k, nil
	}
	var initrdMax uint64
	switch {
	case protocol >= 0x20c && le.Uint16(k[0x236:])&0x2 != 0: // XLF_CAN_BE_LOADED_ABOVE_4G (1<<1)
		initrdMax = 0xffffffff
	case protocol >= 0x203:
		initrdMax = uint64(le.Uint32(k[0x22c:]))
	default:
		initrdMax = 0x37ffffff
	}
	below4G := memSize
	lowmem := uint64(highMemThreshold)
	if memSize >= highMemThreshold {
		lowmem = lowMemSplit
	}
	if below4G > lowmem {
		below4G = lowmem
	}
	if below4G <= acpiDataSize {
		return nil, fmt.Errorf("memory size %d leaves no room for the initrd", memSize)
	}
	if initrdMax >= below4G-acpiDataSize {
		initrdMax = below4G - acpiDataSize - 1
	}
	if initrdSize >= initrdMax {
		return nil, fmt.Errorf("initrd of %d bytes does not fit below %#x", initrdSize, initrdMax)
	}
	le.PutUint32(k[0x218:], uint32((initrdMax-initrdSize)&^4095))
	le.PutUint32(k[0x21c:], uint32(initrdSize))
	return k, nil
}

// PatchedKernelAuthenticode returns the Authenticode digest (firmware mode)
// of the kernel in r as QEMU hands it to the firmware for a VM with memSize
// bytes of RAM and an initrd of initrdSize bytes: the RTMR1 (TDX) or PCR4
// (vTPM) EV_EFI_BOOT_SERVICES_APPLICATION digest of direct kernel boot.
func PatchedKernelAuthenticode(r io.ReaderAt, size int64, initrdSize, memSize uint64, h crypto.Hash) ([]byte, error) {
	if size < setupPatchLen {
		return nil, fmt.Errorf("kernel: %d bytes, too short for a bzImage", size)
	}
	head := make([]byte, setupPatchLen)
	if _, err := r.ReadAt(head, 0); err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	patched, err := patchSetupHeader(head, initrdSize, memSize)
	if err != nil {
		return nil, err
	}
	d, err := authenticode.FirmwareDigest(overlay{r, patched}, size, h)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	return d, nil
}

// overlay is an io.ReaderAt that reads base with patch laid over its first
// bytes: the kernel as QEMU has patched its setup header.
type overlay struct {
	base  io.ReaderAt
	patch []byte
}

func (o overlay) ReadAt(p []byte, off int64) (int, error) {
	n, err := o.base.ReadAt(p, off)
	if off < int64(len(o.patch)) {
		copy(p[:n], o.patch[off:])
	}
	return n, err
}

// InitrdArg says where OVMF's QEMU kernel loader puts the "initrd=initrd"
// word in the command line it passes to the kernel (and the EFI stub
// measures): older EDK2 appends " initrd=initrd", newer prepends
// "initrd=initrd ".
type InitrdArg int

const (
	InitrdSuffix InitrdArg = iota // "<cmdline> initrd=initrd" (EDK II up to edk2-stable202505: dstack's firmware)
	InitrdPrefix                  // "initrd=initrd <cmdline>" (edk2-stable202508 and later)
	InitrdNone                    // no initrd word (no initrd)
)

// MeasuredCmdline returns the command line the kernel's EFI stub measures.
func MeasuredCmdline(cmdline string, arg InitrdArg) string {
	switch arg {
	case InitrdPrefix:
		if cmdline == "" {
			return "initrd=initrd"
		}
		return "initrd=initrd " + cmdline
	case InitrdNone:
		return cmdline
	}
	if cmdline == "" {
		return "initrd=initrd"
	}
	return cmdline + " initrd=initrd"
}

// UTF16Z encodes s as UTF-16LE with a terminating NUL: the form of an EFI
// image's LoadOptions and of the measured command line.
func UTF16Z(s string) []byte {
	u := utf16.Encode([]rune(s))
	out := make([]byte, 0, 2*len(u)+2)
	for _, c := range u {
		out = binary.LittleEndian.AppendUint16(out, c)
	}
	return append(out, 0, 0)
}
