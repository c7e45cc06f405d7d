package atomicfile

import (
	"os"
	"sync/atomic"
	"time"
)

// Early writeback. On a disk file system an output's pages stay dirty in the
// page cache until Commit's fsync (the kernel starts writing on its own only
// past vm.dirty_background_ratio, gigabytes on a build host), so the fsync of
// a 1 GiB output waits for all of it at once: about 0.7 s on the development
// VM's ext4, four times per dist. While a File is open, a goroutine asks the
// kernel every writebackInterval to start writing what is dirty
// (sync_file_range(2), SYNC_FILE_RANGE_WRITE: start, do not wait), so the
// disk works while the producer hashes and compresses and the fsync waits
// only for the tail. On tmpfs it does nothing.

// writebackInterval is how often an open output's dirty pages are handed to
// the disk: at a producer's ~1 GB/s, about 50 MB each time.
const writebackInterval = 50 * time.Millisecond

// writebackOff turns early writeback off (SetEarlyWriteback).
var writebackOff atomic.Bool

// SetEarlyWriteback turns early writeback on or off for files created
// afterwards and returns the previous setting. It exists for A/B
// measurements (dist's BenchmarkDistAB).
func SetEarlyWriteback(on bool) (prev bool) {
	return !writebackOff.Swap(!on)
}

// startWriteback starts the writeback goroutine for f and returns the
// function that stops it (and waits for it, so that f can be closed).
func startWriteback(f *os.File) (stop func()) {
	if writebackOff.Load() || !canWriteback {
		return func() {}
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return func() {}
	}
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(writebackInterval)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				// Control holds the descriptor open for the call. An error
				// (a file system without the call) only loses the head start:
				// Commit's fsync still writes everything.
				rc.Control(startWriteOut)
			}
		}
	}()
	return func() { close(quit); <-done }
}
