//go:build linux

package verity

import (
	"os"

	"golang.org/x/sys/unix"
)

// preallocate reserves size bytes for f in one call (fallocate), where that
// is cheap: on ext4/xfs/btrfs it only allocates extents, and writing into
// them then costs less CPU than letting each write allocate. On tmpfs it
// would allocate every page up front, serially, before the first write
// (measured: about as long as hashing the data on all cores), so there it is
// skipped. Best effort: errors are ignored.
func preallocate(f *os.File, size int64) {
	if !Preallocate {
		return
	}
	var fs unix.Statfs_t
	if unix.Fstatfs(int(f.Fd()), &fs) == nil && fs.Type == unix.TMPFS_MAGIC {
		return
	}
	_ = unix.Fallocate(int(f.Fd()), 0, 0, size)
}
