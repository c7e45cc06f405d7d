// Package epoch reads SOURCE_DATE_EPOCH, the reproducible-builds variable
// that fixes every timestamp a build writes. One rule for every reader in
// this module: unset or empty means "not given"; otherwise it must be a
// decimal count of seconds since 1970-01-01 UTC, 0 or more, digits only
// (no sign, blank or fraction).
package epoch

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Var is the environment variable's name.
const Var = "SOURCE_DATE_EPOCH"

// ErrMalformed is wrapped by every error for a value that breaks the rule.
var ErrMalformed = errors.New("not a non-negative decimal number of seconds")

// Parse checks s against the rule and returns its seconds.
func Parse(s string) (int64, error) {
	ok := s != ""
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			ok = false
			break
		}
	}
	var n int64
	if ok {
		var err error
		if n, err = strconv.ParseInt(s, 10, 64); err != nil {
			ok = false
		}
	}
	if !ok {
		return 0, fmt.Errorf("%s=%q: %w", Var, s, ErrMalformed)
	}
	return n, nil
}

// Lookup reads SOURCE_DATE_EPOCH through getenv (os.Getenv, or a test's
// map) and returns its seconds; set is false (and err nil) when it is unset
// or empty.
func Lookup(getenv func(string) string) (n int64, set bool, err error) {
	s := getenv(Var)
	if s == "" {
		return 0, false, nil
	}
	if n, err = Parse(s); err != nil {
		return 0, false, err
	}
	return n, true, nil
}

// FromEnv returns SOURCE_DATE_EPOCH from the environment as a UTC time; set
// is false (and err nil) when it is unset or empty.
func FromEnv() (t time.Time, set bool, err error) {
	n, set, err := Lookup(os.Getenv)
	if !set || err != nil {
		return time.Time{}, false, err
	}
	return time.Unix(n, 0).UTC(), true, nil
}
