package errkind

import (
	"errors"
	"io/fs"
	"testing"
)

func TestErrorf(t *testing.T) {
	kind := errors.New("the kind")
	other := errors.New("another kind")
	for _, tc := range []struct {
		name    string
		err     error
		msg     string
		matches []error
		not     []error
	}{
		{"plain", Errorf(kind, "disk.raw: header CRC %08x", 7), "disk.raw: header CRC 00000007", []error{kind}, []error{other, fs.ErrNotExist}},
		{"keeps what it wraps", Errorf(kind, "x: %w", fs.ErrNotExist), "x: file does not exist", []error{kind, fs.ErrNotExist}, []error{other}},
		{"nested kinds", Wrap(other, Errorf(kind, "y")), "y", []error{kind, other}, []error{fs.ErrNotExist}},
	} {
		if tc.err.Error() != tc.msg {
			t.Errorf("%s: message %q, want %q", tc.name, tc.err, tc.msg)
		}
		for _, k := range tc.matches {
			if !errors.Is(tc.err, k) {
				t.Errorf("%s: does not match %v", tc.name, k)
			}
		}
		for _, k := range tc.not {
			if errors.Is(tc.err, k) {
				t.Errorf("%s: matches %v", tc.name, k)
			}
		}
	}
	if Wrap(kind, nil) != nil {
		t.Error("Wrap(kind, nil) is not nil")
	}
}
