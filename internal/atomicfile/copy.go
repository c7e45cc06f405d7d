package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Copy writes the contents of the file src to path atomically (Create,
// then Commit once every byte is written) with permissions perm, and
// returns the number of bytes copied. Every byte also goes to tee when it
// is not nil (a hash computed on the way, say).
func Copy(path, src string, perm os.FileMode, tee io.Writer) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	f, err := Create(path, perm)
	if err != nil {
		return 0, err
	}
	defer f.Abort()
	var w io.Writer = f.File
	if tee != nil {
		w = io.MultiWriter(f.File, tee)
	}
	n, err := io.Copy(w, in)
	if err != nil {
		return 0, fmt.Errorf("copy %s to %s: %w", src, path, err)
	}
	return n, f.Commit()
}

// Link makes path a hard link to the file src atomically: the link is made
// under a temporary name beside path and renamed over it, so path is either
// what it was or src, never missing or half-made. When the link itself
// cannot be made (src on another file system, say) the error wraps the
// *os.LinkError, so that a caller can copy instead.
func Link(src, path string) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, forget, err := MkdirTemp(dir, "."+base+".tmp-")
	if err != nil {
		return fmt.Errorf("link %s: %w", path, err)
	}
	defer forget()
	defer os.RemoveAll(tmp)
	t := filepath.Join(tmp, base)
	if err := os.Link(src, t); err != nil {
		return fmt.Errorf("link %s: %w", path, err)
	}
	if err := os.Rename(t, path); err != nil {
		return fmt.Errorf("link %s: %w", path, err)
	}
	return nil
}

// ReplaceDir puts the complete directory tmp in the place of dst (both in
// one directory, so the renames are atomic): a previous dst is first moved
// aside, put back if tmp cannot take its place, and removed only once tmp
// has. dst is thus never missing nor half-populated.
func ReplaceDir(tmp, dst string) error {
	old := ""
	if _, err := os.Lstat(dst); err == nil {
		old = tmp + ".old"
		if err := os.Rename(dst, old); err != nil {
			return fmt.Errorf("replace %s: %w", dst, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace %s: %w", dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		if old != "" {
			os.Rename(old, dst)
		}
		return fmt.Errorf("replace %s: %w", dst, err)
	}
	if old != "" {
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("replace %s: remove the previous copy: %w", dst, err)
		}
	}
	return nil
}
