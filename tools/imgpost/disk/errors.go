package disk

import "errors"

// What is wrong with a disk image, for errors.Is. The errors that wrap them
// keep their messages: the file, the structure and what is wrong with it.
var (
	// ErrBadGPT: the protective MBR or a GPT header or entry array is
	// missing, damaged or inconsistent (a CRC, a signature, a size, an
	// overlap, a backup that differs from the primary).
	ErrBadGPT = errors.New("malformed GPT")
	// ErrBootPath: the disk has not exactly one boot path (one FAT file
	// system, in the one ESP, holding one EFI/BOOT/BOOTX64.EFI).
	ErrBootPath = errors.New("not exactly one boot path")
	// ErrNoPartition: no partition of the name or type asked for.
	ErrNoPartition = errors.New("no such partition")
)
