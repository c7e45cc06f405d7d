// Package errkind gives an error a kind, a sentinel that errors.Is matches,
// without changing its message: a package keeps its precise messages (the
// file, the structure, what is wrong) and still lets callers tell classes of
// failure apart.
package errkind

import "fmt"

type kinded struct {
	kind error
	err  error // the message, and what it wraps
}

func (e *kinded) Error() string { return e.err.Error() }

// Unwrap returns the kind and the error carrying the message (and so what
// that wraps).
func (e *kinded) Unwrap() []error { return []error{e.kind, e.err} }

// Wrap returns an error with err's message that errors.Is matches against
// kind as well as against whatever err matches. Wrap(kind, nil) is nil.
func Wrap(kind, err error) error {
	if err == nil {
		return nil
	}
	return &kinded{kind: kind, err: err}
}

// Errorf is fmt.Errorf(format, a...) with kind added (see Wrap).
func Errorf(kind error, format string, a ...any) error {
	return Wrap(kind, fmt.Errorf(format, a...))
}
