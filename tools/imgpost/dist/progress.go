package dist

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// logger prints stage lines; on a terminal it also redraws a progress line
// (stage, bytes, throughput) in place.
type logger struct {
	w   io.Writer
	tty bool
	mu  sync.Mutex
	// last is when the progress line was last drawn.
	last  time.Time
	drawn bool
}

type timer struct {
	lg    *logger
	name  string
	start time.Time
}

func (l *logger) start(name string) *timer {
	return &timer{lg: l, name: name, start: time.Now()}
}

// done prints "stage NAME: BYTES in SECONDS (RATE)" and returns the Stage.
func (t *timer) done(bytes int64) Stage {
	d := time.Since(t.start)
	l := t.lg
	if l.w != nil {
		l.mu.Lock()
		l.clearLocked()
		if bytes > 0 {
			fmt.Fprintf(l.w, "imgpost dist: %-12s %s in %.2f s (%s/s)\n", t.name, human(bytes), d.Seconds(), human(int64(float64(bytes)/max(d.Seconds(), 1e-9))))
		} else {
			fmt.Fprintf(l.w, "imgpost dist: %-12s %.2f s\n", t.name, d.Seconds())
		}
		l.mu.Unlock()
	}
	return Stage{Name: t.name, Duration: d, Bytes: bytes}
}

// progress returns a callback drawing "NAME done/total (rate)" on a terminal,
// at most 10 times a second; nil when not on a terminal.
func (l *logger) progress(name string) func(done, total int64) {
	if l.w == nil || !l.tty {
		return nil
	}
	start := time.Now()
	return func(done, total int64) {
		l.mu.Lock()
		defer l.mu.Unlock()
		now := time.Now()
		if now.Sub(l.last) < 100*time.Millisecond && done < total {
			return
		}
		l.last = now
		rate := float64(done) / max(now.Sub(start).Seconds(), 1e-9)
		pct := 0.0
		if total > 0 {
			pct = 100 * float64(done) / float64(total)
		}
		fmt.Fprintf(l.w, "\r\x1b[K%s: %s / %s (%.0f%%, %s/s)", name, human(done), human(total), pct, human(int64(rate)))
		l.drawn = true
	}
}

func (l *logger) clearLocked() {
	if l.drawn {
		fmt.Fprint(l.w, "\r\x1b[K")
		l.drawn = false
	}
}

func (l *logger) clear() {
	if l.w == nil {
		return
	}
	l.mu.Lock()
	l.clearLocked()
	l.mu.Unlock()
}

// human renders a byte count with a binary unit.
func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, u := float64(n), 0
	for f >= unit && u < 4 {
		f /= unit
		u++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGT"[u-1])
}
