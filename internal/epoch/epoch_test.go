package epoch

import (
	"errors"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"1700000000", 1700000000, true},
		{"0042", 42, true}, // decimal, never octal
		{"9223372036854775807", 1<<63 - 1, true},
		{"9223372036854775808", 0, false},
		{"", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{" 1", 0, false},
		{"1 ", 0, false},
		{"1.5", 0, false},
		{"0x10", 0, false},
		{"yesterday", 0, false},
	} {
		got, err := Parse(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q): error %v does not wrap ErrMalformed", tc.in, err)
		}
	}
}

func TestFromEnv(t *testing.T) {
	t.Setenv(Var, "")
	if _, set, err := FromEnv(); set || err != nil {
		t.Errorf("empty: set=%v err=%v", set, err)
	}
	t.Setenv(Var, "1700000000")
	got, set, err := FromEnv()
	if !set || err != nil || !got.Equal(time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC)) || got.Location() != time.UTC {
		t.Errorf("1700000000: %v %v %v", got, set, err)
	}
	t.Setenv(Var, "soon")
	if _, _, err := FromEnv(); !errors.Is(err, ErrMalformed) {
		t.Errorf("soon: err=%v", err)
	}
}

func TestLookup(t *testing.T) {
	for _, tc := range []struct {
		env     map[string]string
		want    int64
		set, ok bool
	}{
		{nil, 0, false, true},
		{map[string]string{Var: ""}, 0, false, true},
		{map[string]string{Var: "0"}, 0, true, true},
		{map[string]string{Var: "1700000000"}, 1700000000, true, true},
		{map[string]string{Var: "-5"}, 0, false, false},
		{map[string]string{"OTHER": "7"}, 0, false, true},
	} {
		n, set, err := Lookup(func(k string) string { return tc.env[k] })
		if n != tc.want || set != tc.set || (err == nil) != tc.ok {
			t.Errorf("%v: %d %v %v; want %d %v ok=%v", tc.env, n, set, err, tc.want, tc.set, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Errorf("%v: %v does not wrap ErrMalformed", tc.env, err)
		}
	}
}
