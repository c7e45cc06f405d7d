package disk

import (
	"fmt"
	"io/fs"
	"os"

	"github.com/diskfs/go-diskfs/backend"
)

// pageSize is the granularity of hole tracking.
const pageSize = 4096

// sparseBackend is the go-diskfs storage for a freshly truncated (all-hole)
// file. It keeps the file sparse and the writes few:
//   - contiguous writes (go-diskfs writes file data one 512-byte cluster at
//     a time) are coalesced in a buffer and written in one call;
//   - all-zero pages never written before are skipped: a hole already reads
//     as zeros, so writing them would only allocate blocks.
//
// Reads flush the buffer first, so they always see every write.
type sparseBackend struct {
	f       *os.File
	size    int64
	dirty   map[int64]bool // pages that hold written data
	pend    []byte         // buffered contiguous write
	pendOff int64
}

const maxPending = 8 * MiB

func newSparseBackend(f *os.File, size int64) *sparseBackend {
	return &sparseBackend{f: f, size: size, dirty: map[int64]bool{}, pend: make([]byte, 0, maxPending)}
}

var _ backend.Storage = (*sparseBackend)(nil)
var _ backend.WritableFile = (*sparseBackend)(nil)

func (s *sparseBackend) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("write of %d bytes at %d: outside the disk (%d bytes)", len(p), off, s.size)
	}
	if len(s.pend) > 0 && off == s.pendOff+int64(len(s.pend)) && len(s.pend)+len(p) <= maxPending {
		s.pend = append(s.pend, p...)
		return len(p), nil
	}
	if err := s.flush(); err != nil {
		return 0, err
	}
	if len(p) > maxPending {
		if err := s.writeSparse(p, off); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	s.pend = append(s.pend[:0], p...)
	s.pendOff = off
	return len(p), nil
}

// flush writes the buffered run.
func (s *sparseBackend) flush() error {
	if len(s.pend) == 0 {
		return nil
	}
	err := s.writeSparse(s.pend, s.pendOff)
	s.pend = s.pend[:0]
	return err
}

// writeSparse writes p at off, skipping all-zero pieces of clean pages and
// merging the rest into as few writes as possible.
func (s *sparseBackend) writeSparse(p []byte, off int64) error {
	runStart := -1 // index in p of the current run to write
	i := 0
	for i < len(p) {
		page := (off + int64(i)) / pageSize
		end := min(len(p), int((page+1)*pageSize-off))
		skip := !s.dirty[page] && allZero(p[i:end])
		if skip {
			if runStart >= 0 {
				if err := s.pwrite(p[runStart:i], off+int64(runStart)); err != nil {
					return err
				}
				runStart = -1
			}
		} else {
			s.dirty[page] = true
			if runStart < 0 {
				runStart = i
			}
		}
		i = end
	}
	if runStart >= 0 {
		return s.pwrite(p[runStart:], off+int64(runStart))
	}
	return nil
}

func (s *sparseBackend) pwrite(p []byte, off int64) error {
	if _, err := s.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", len(p), off, err)
	}
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (s *sparseBackend) ReadAt(p []byte, off int64) (int, error) {
	if err := s.flush(); err != nil {
		return 0, err
	}
	return s.f.ReadAt(p, off)
}

func (s *sparseBackend) Read(p []byte) (int, error) {
	if err := s.flush(); err != nil {
		return 0, err
	}
	return s.f.Read(p)
}

func (s *sparseBackend) Seek(offset int64, whence int) (int64, error) {
	if err := s.flush(); err != nil {
		return 0, err
	}
	return s.f.Seek(offset, whence)
}

func (s *sparseBackend) Stat() (fs.FileInfo, error)              { return s.f.Stat() }
func (s *sparseBackend) Close() error                            { return s.flush() }
func (s *sparseBackend) Sys() (*os.File, error)                  { return nil, backend.ErrNotSuitable }
func (s *sparseBackend) Writable() (backend.WritableFile, error) { return s, nil }
func (s *sparseBackend) Path() string                            { return s.f.Name() }
