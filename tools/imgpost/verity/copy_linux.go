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
