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
	var fs unix.Statfs_t
	if unix.Fstatfs(int(f.Fd()), &fs) == nil && fs.Type == unix.TMPFS_MAGIC {
		return
	}
	_ = unix.Fallocate(int(f.Fd()), 0, 0, size)
}

// mapFile maps the first size bytes of f read-only, so that the workers hash
// the page cache in place instead of copying it out first. It returns nil
// when the file cannot be mapped (the caller then reads it).
func mapFile(f *os.File, size int64) (data []byte, unmap func()) {
	if !UseMmap || size <= 0 || int64(int(size)) != size {
		return nil, nil
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil
	}
	_ = unix.Madvise(m, unix.MADV_SEQUENTIAL)
	return m, func() { _ = unix.Munmap(m) }
}

// release drops the process's mapping of part of a mapped input once it has
// been hashed and written (the page cache keeps the pages), so the mapping
// does not add the whole input to the resident set.
func release(b []byte) {
	_ = unix.Madvise(b, unix.MADV_DONTNEED)
}
