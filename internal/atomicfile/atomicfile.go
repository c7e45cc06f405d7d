// Package atomicfile writes a file under a temporary name in its final
// directory and renames it into place only once it is complete, so a failure
// never leaves a half-written artifact that looks finished. It is this
// module's one writer of outputs: Create (a file to fill, WriteAt included),
// WriteFile (bytes), Copy (another file, optionally hashed on the way), Link
// (a hard link) and ReplaceDir (a complete directory swapped in). Temporary
// names are tracked (Track) so that CleanupOnSignal removes them when the
// process is interrupted, and CheckNotInput refuses an output that is one of
// the inputs. While a File is open its dirty pages are handed to the disk as
// it grows (writeback.go), so Commit's fsync waits only for the tail.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// File is an output being written. Call Commit to publish it or Abort to
// discard it; Abort after Commit is a no-op, so `defer f.Abort()` is safe.
type File struct {
	*os.File
	final  string
	done   bool
	forget func()
	stopWB func() // ends the early writeback (writeback.go)
}

// Create opens a temporary file beside path (same directory, so the final
// rename is atomic) with the given permissions.
func Create(path string, perm os.FileMode) (*File, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("output directory %s: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("output directory %s: not a directory", dir)
	}
	tmp, forget, err := createTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		forget()
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return &File{File: tmp, final: path, forget: forget, stopWB: startWriteback(tmp)}, nil
}

// Path is the final name the file will have after Commit.
func (f *File) Path() string { return f.final }

// Commit syncs and closes the temporary file and renames it to its final name.
func (f *File) Commit() error {
	if f.done {
		return fmt.Errorf("commit %s: already finished", f.final)
	}
	f.done = true
	defer f.forget()
	f.stopWB()
	tmp := f.File.Name()
	if err := f.File.Sync(); err != nil {
		f.File.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", f.final, err)
	}
	if err := f.File.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", f.final, err)
	}
	if err := os.Rename(tmp, f.final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename into %s: %w", f.final, err)
	}
	return nil
}

// Abort closes and removes the temporary file unless Commit already ran.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	defer f.forget()
	f.stopWB()
	f.File.Close()
	os.Remove(f.File.Name())
}

// WriteFile writes data to path atomically.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	f, err := Create(path, perm)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Commit()
}
