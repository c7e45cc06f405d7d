package dist

import (
	"bytes"
	"strings"
	"testing"
)

// TestLogger checks both output modes: plain stage lines, and on a terminal a
// progress line redrawn in place and erased before the stage line.
func TestLogger(t *testing.T) {
	var plain bytes.Buffer
	l := &logger{w: &plain}
	if l.progress("disk") != nil {
		t.Error("progress callback when not on a terminal")
	}
	l.start("verity").done(3 << 30)
	if got := plain.String(); !strings.HasPrefix(got, "imgpost dist: verity") || !strings.Contains(got, "3.0 GiB in ") || strings.ContainsAny(got, "\r\x1b") {
		t.Errorf("plain stage line %q", got)
	}

	var tty bytes.Buffer
	l = &logger{w: &tty, tty: true}
	tm := l.start("gcp")
	p := l.progress("gcp")
	p(1<<20, 4<<20)
	p(4<<20, 4<<20) // the last update is always drawn
	tm.done(4 << 20)
	got := tty.String()
	if strings.Count(got, "\r\x1b[K") != 3 || !strings.Contains(got, "gcp: 1.0 MiB / 4.0 MiB (25%") || !strings.Contains(got, "(100%") {
		t.Errorf("terminal output %q", got)
	}
	if !strings.HasSuffix(got, "\n") || !strings.Contains(got, "\r\x1b[Kimgpost dist: gcp") {
		t.Errorf("stage line does not replace the progress line: %q", got)
	}
	for _, c := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {3 << 29, "1.5 GiB"}} {
		if h := human(c.n); h != c.want {
			t.Errorf("human(%d) = %q, want %q", c.n, h, c.want)
		}
	}
	var nothing *logger = &logger{}
	nothing.start("x").done(1) // no writer: no panic
	nothing.clear()
}
