package dist

import (
	"errors"
	"fmt"
)

// Sentinels a FieldError's Err may be (errors.Is).
var (
	// ErrRequired: a required field is empty.
	ErrRequired = errors.New("required")
	// ErrNotRegular: an input is not a regular file.
	ErrNotRegular = errors.New("not a regular file")
	// ErrEmptyFile: an input file is empty.
	ErrEmptyFile = errors.New("empty file")
	// ErrReservedArg: a kernel argument that dist adds itself was given.
	ErrReservedArg = errors.New("reserved kernel argument")
)

// FieldError is a problem with one field of Options, found before any
// output exists: a missing, unreadable or malformed input, a bad name, an
// output directory that cannot be written. Run returns it as is, so
// errors.As finds it; the imgpost command sets Label to the field's flag.
type FieldError struct {
	Field string // the Options field: "Kernel", "Rootfs", "OutDir", "Flavor", ...
	Value string // the value at fault ("" when the message of Err names it)
	Err   error  // what is wrong
	// Label is how Error names the field ("": Field).
	Label string
	quote bool // Value is a word, not a path: print it quoted
}

func (e *FieldError) Error() string {
	name := e.Label
	if name == "" {
		name = e.Field
	}
	switch {
	case errors.Is(e.Err, ErrRequired):
		return name + " is required"
	case e.quote:
		return fmt.Sprintf("%s %q: %v", name, e.Value, e.Err)
	case e.Value == "":
		return fmt.Sprintf("%s: %v", name, e.Err)
	default:
		return fmt.Sprintf("%s %s: %v", name, e.Value, e.Err)
	}
}

// Unwrap returns Err.
func (e *FieldError) Unwrap() error { return e.Err }

// fileError is a FieldError about the file (or directory) path of field.
func fileError(field, path string, err error) error {
	return &FieldError{Field: field, Value: path, Err: err}
}

// wordError is a FieldError about a value that is not a path.
func wordError(field, value string, err error) error {
	return &FieldError{Field: field, Value: value, Err: err, quote: true}
}
