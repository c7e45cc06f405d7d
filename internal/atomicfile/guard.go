package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
)

// Clean-ups to run if the process is interrupted, by registration order.
var (
	trackMu sync.Mutex
	tracked = map[int]func(){}
	trackID int
)

// Track records path (a temporary file or directory) to be removed with
// os.RemoveAll if the process receives SIGINT or SIGTERM while it is
// tracked (see CleanupOnSignal). The returned function forgets it; call it
// once the path is gone or published.
func Track(path string) (forget func()) {
	return TrackFunc(func() { os.RemoveAll(path) })
}

// MkdirTemp is os.MkdirTemp with the new directory tracked (Track) from
// the moment it exists: a signal cannot fall between its creation and its
// tracking.
func MkdirTemp(dir, pattern string) (path string, forget func(), err error) {
	trackMu.Lock()
	defer trackMu.Unlock()
	path, err = os.MkdirTemp(dir, pattern)
	if err != nil {
		return "", nil, err
	}
	return path, trackLocked(func() { os.RemoveAll(path) }), nil
}

// createTemp is os.CreateTemp tracked the same way.
func createTemp(dir, pattern string) (*os.File, func(), error) {
	trackMu.Lock()
	defer trackMu.Unlock()
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, nil, err
	}
	name := f.Name()
	return f, trackLocked(func() { os.Remove(name) }), nil
}

// TrackFunc is Track for any clean-up. On a signal, clean-ups run newest
// first (a step registered inside a larger one is undone before it).
func TrackFunc(f func()) (forget func()) {
	trackMu.Lock()
	defer trackMu.Unlock()
	return trackLocked(f)
}

func trackLocked(f func()) (forget func()) {
	trackID++
	id := trackID
	tracked[id] = f
	return func() {
		trackMu.Lock()
		delete(tracked, id)
		trackMu.Unlock()
	}
}

// RemoveTracked runs every tracked clean-up now, newest first (what the
// signal handler does before exiting).
func RemoveTracked() {
	trackMu.Lock()
	defer trackMu.Unlock()
	ids := make([]int, 0, len(tracked))
	for id := range tracked {
		ids = append(ids, id)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(ids)))
	for _, id := range ids {
		tracked[id]()
		delete(tracked, id)
	}
}

var signalOnce sync.Once

// CleanupOnSignal makes SIGINT and SIGTERM remove every tracked path and
// then exit with status 128+signal (130 for SIGINT), as a shell reports a
// process killed by it. Commands call it once at start.
func CleanupOnSignal() {
	signalOnce.Do(func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
		go func() {
			s := <-c
			RemoveTracked()
			fmt.Fprintf(os.Stderr, "imgpost: %v: temporary files removed\n", s)
			os.Exit(128 + int(s.(syscall.Signal)))
		}()
	})
}

// ErrIsInput is wrapped by CheckNotInput's error (and by callers that refuse
// an output for the same reason).
var ErrIsInput = errors.New("refusing to overwrite it")

// CheckNotInput refuses an output path that is, or links to (symbolic or
// hard link), one of the inputs: writing it would destroy the input. The
// error names both.
func CheckNotInput(out string, inputs ...string) error {
	if out == "" {
		return nil
	}
	ost, oerr := os.Stat(out)
	oabs, _ := filepath.Abs(out)
	for _, in := range inputs {
		if in == "" {
			continue
		}
		if iabs, _ := filepath.Abs(in); iabs == oabs && oabs != "" {
			return fmt.Errorf("output %s is the input %s: %w", out, in, ErrIsInput)
		}
		if oerr != nil {
			continue
		}
		if ist, err := os.Stat(in); err == nil && os.SameFile(ist, ost) {
			return fmt.Errorf("output %s is the input %s (same file through a link): %w", out, in, ErrIsInput)
		}
	}
	return nil
}
