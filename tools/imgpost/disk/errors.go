package disk

import (
	"errors"
	"fmt"
)

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

// kindError is an error of a kind (one of the sentinels above) whose
// message is its own.
type kindError struct {
	kind error
	err  error // the message, and what it wraps (if anything)
}

func (e *kindError) Error() string { return e.err.Error() }

// Unwrap returns the kind and the error carrying the message (and so what
// that wraps).
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// kindf is fmt.Errorf with kind added to what the error wraps.
func kindf(kind error, format string, a ...any) error {
	return &kindError{kind: kind, err: fmt.Errorf(format, a...)}
}
