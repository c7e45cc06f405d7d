//go:build linux

package verity

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// copyRange copies n bytes at off from src to the same offset in dst inside
// the kernel (copy_file_range: a page-cache copy, or a reflink where the
// filesystem shares extents), which costs less CPU than writing the bytes
// from user space. It returns errUnsupported, having copied nothing, when the
// pair of files cannot do it (different filesystems, old kernel).
func copyRange(dst, src *os.File, off, n int64) error {
	roff, woff := off, off
	for n > 0 {
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(min(n, 1<<30)), 0)
		if err != nil {
			if roff == off && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) ||
				errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
				return errUnsupported
			}
			return fmt.Errorf("copy data at offset %d: %w", roff, err)
		}
		if c == 0 {
			return fmt.Errorf("copy data at offset %d: input ended early", roff)
		}
		n -= int64(c)
	}
	return nil
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
