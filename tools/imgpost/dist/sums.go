package dist

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"sync"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/gcptar"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/sha256x2"
)

// sumChunk is how much of a complete file the summer hashes per step.
const sumChunk = 1 << 20

// zeroChunk is a hole's data: sumChunk zero bytes, never written.
var zeroChunk [sumChunk]byte

// errStopped ends the jobs still running when the summer is stopped.
var errStopped = errors.New("checksums stopped")

// summer computes the sha256 of dist's artifacts for sha256sum.txt and the
// summary. One goroutine hashes the big files two at a time, in the two lanes
// of sha256x2.Write2, which costs about what hashing one of them costs.
//
// There are two kinds of jobs: complete files (file, fileCRC), read in
// chunks, and archives while they are being written (follow), whose bytes
// the writer hands over with each write (not read back from the file). At
// most one archive is hashed at a time, paired with a complete file when
// there is one: the file lane takes as many bytes as the writer handed over
// and, while the writer has nothing waiting, goes on alone a small step at
// a time (so no file is left to hash when the writers are done).
// Small values are hashed on the spot (setBytes).
type summer struct {
	mu     sync.Mutex
	m      map[string]string
	errs   []error
	queue  []*sumJob     // jobs not started, or put back (files only)
	kick   chan struct{} // a job was queued, or the summer was closed
	closed bool          // no more jobs
	quit   chan struct{} // closed by stop
	done   chan struct{} // the goroutine has returned

	// plain (plainSums) hashes each complete file in a goroutine of its own
	// with crypto/sha256, and each archive in its writer's goroutine: the
	// baseline the scheduler above is measured against (BenchmarkDistAB).
	plain bool
	wg    sync.WaitGroup
}

// plainSums makes newSummer use the plain strategy (benchmarks set it).
var plainSums = false

func newSummer() *summer {
	s := &summer{m: map[string]string{}, kick: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{}), plain: plainSums}
	go s.run()
	return s
}

// stopped reports whether stop was called.
func (s *summer) stopped() bool {
	select {
	case <-s.quit:
		return true
	default:
		return false
	}
}

// sumJob is one file being hashed.
type sumJob struct {
	name string
	d    *sha256x2.Digest

	// A complete file: its data regions (holes are hashed as zeros
	// without being read), size, and the offset reached.
	f       *os.File
	regions []gcptar.Region
	size    int64
	off     int64
	buf     []byte

	// A file being written: each write's bytes come on in, and are
	// acknowledged on ack once hashed; in is closed after the last
	// (werr, set before, says whether the writer failed).
	follow bool
	in     chan []byte
	ack    chan struct{}
	werr   error

	// With fileCRC, the file's CRC-32 is computed too and sent to crcOut
	// when the job ends.
	crc    hash.Hash32
	crcOut chan crcResult
}

// crcResult is a CRC-32 computed in the background.
type crcResult struct {
	crc uint32
	err error
}

func (s *summer) set(name, sum string) {
	s.mu.Lock()
	s.m[name] = sum
	s.mu.Unlock()
}

// setBytes records the sha256 of b under name.
func (s *summer) setBytes(name string, b []byte) {
	d := sha256.Sum256(b)
	s.set(name, hex.EncodeToString(d[:]))
}

// get returns the sha256 recorded under name ("" if none yet).
func (s *summer) get(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[name]
}

func (s *summer) fail(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

func (s *summer) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// enqueue hands j to the hashing goroutine.
func (s *summer) enqueue(j *sumJob) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		panic("dist: summer used after close")
	}
	s.queue = append(s.queue, j)
	s.mu.Unlock()
	s.wake()
}

// file hashes the complete file at path under name, in the background.
func (s *summer) file(name, path string) {
	s.fileJob(name, path, nil)
}

// fileCRC is file, and also computes the file's CRC-32 (IEEE), which it
// sends to the channel it returns.
func (s *summer) fileCRC(name, path string) <-chan crcResult {
	c := make(chan crcResult, 1)
	s.fileJob(name, path, c)
	return c
}

func (s *summer) fileJob(name, path string, crcOut chan crcResult) {
	if s.plain {
		s.plainFile(name, path, crcOut)
		return
	}
	j := &sumJob{name: name, d: sha256x2.NewDigest(), crcOut: crcOut}
	if crcOut != nil {
		j.crc = crc32.NewIEEE()
	}
	f, err := os.Open(path)
	if err != nil {
		j.close(s, err)
		return
	}
	regions, size, err := gcptar.SparseMap(f)
	if err != nil {
		f.Close()
		j.close(s, fmt.Errorf("%s: %w", path, err))
		return
	}
	j.f, j.regions, j.size = f, regions, size
	s.enqueue(j)
}

// close finishes j: err io.EOF when all of it was hashed.
func (j *sumJob) close(s *summer, err error) {
	if j.f != nil {
		j.f.Close()
	}
	j.buf = nil
	switch {
	case err == io.EOF:
		s.set(j.name, hex.EncodeToString(j.d.Sum(nil)))
	case err != errStopped:
		err = fmt.Errorf("sha256 %s: %w", j.name, err)
		s.fail(err)
	}
	if j.crcOut != nil {
		if err == io.EOF {
			j.crcOut <- crcResult{crc: j.crc.Sum32()}
		} else {
			j.crcOut <- crcResult{err: err}
		}
	}
}

// follow returns a writer that writes to w and hashes under name what it
// wrote, beside the writes. The caller must call finish once it has
// written everything, or failed.
func (s *summer) follow(name string, w io.Writer) *followWriter {
	// ack is buffered: the summer never waits for a writer to take it (a
	// writer that saw stop first never will).
	if s.plain {
		return &followWriter{w: w, s: s, name: name, h: sha256.New()}
	}
	j := &sumJob{name: name, d: sha256x2.NewDigest(), follow: true, in: make(chan []byte), ack: make(chan struct{}, 1)}
	s.enqueue(j)
	return &followWriter{w: w, j: j, s: s}
}

// plainFile hashes the file at path in a goroutine of its own.
func (s *summer) plainFile(name, path string, crcOut chan crcResult) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		h := sha256.New()
		var w io.Writer = h
		var c hash.Hash32
		if crcOut != nil {
			c = crc32.NewIEEE()
			w = io.MultiWriter(h, c)
		}
		f, err := os.Open(path)
		if err == nil {
			_, err = io.CopyBuffer(w, f, make([]byte, sumChunk))
			f.Close()
		}
		if err != nil {
			err = fmt.Errorf("sha256 %s: %w", name, err)
			s.fail(err)
		} else {
			s.set(name, hex.EncodeToString(h.Sum(nil)))
		}
		if crcOut != nil {
			if err != nil {
				crcOut <- crcResult{err: err}
			} else {
				crcOut <- crcResult{crc: c.Sum32()}
			}
		}
	}()
}

// followWriter is the writer side of a follow job.
type followWriter struct {
	w    io.Writer
	j    *sumJob
	s    *summer
	done bool

	name string    // plain: the name to record the sum under
	h    hash.Hash // plain: hashed in the writer's goroutine
}

// Write hands p to the summer, writes it, and returns once both are done:
// the hash of p runs while the kernel copies it.
func (fw *followWriter) Write(p []byte) (int, error) {
	if fw.done {
		return 0, errors.New("write after finish")
	}
	if len(p) == 0 {
		return fw.w.Write(p)
	}
	if fw.h != nil {
		n, err := fw.w.Write(p)
		fw.h.Write(p[:n])
		return n, err
	}
	select {
	case fw.j.in <- p:
	case <-fw.s.quit:
		return 0, errStopped
	}
	n, err := fw.w.Write(p)
	select {
	case <-fw.j.ack:
	case <-fw.s.quit:
		<-fw.s.done // the summer no longer reads p
		if err == nil {
			err = errStopped
		}
	}
	return n, err
}

// finish says that the writer is done: err nil if the file is complete.
func (fw *followWriter) finish(err error) {
	if fw.done {
		return
	}
	fw.done = true
	if fw.h != nil {
		if err == nil {
			fw.s.set(fw.name, hex.EncodeToString(fw.h.Sum(nil)))
		}
		return
	}
	fw.j.werr = err
	close(fw.j.in)
}

// wait stops accepting jobs and returns once the queued ones are hashed,
// with the errors of those that failed. Every follow writer must have
// finished.
func (s *summer) wait() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wake()
	<-s.done
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

// stop abandons the jobs (a stage failed) and waits for the goroutine;
// writers still writing get errStopped.
func (s *summer) stop() {
	s.mu.Lock()
	if s.stopped() {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.quit)
	s.mu.Unlock()
	<-s.done
	s.wg.Wait()
	s.mu.Lock()
	q := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, j := range q {
		if !j.follow {
			j.close(s, errStopped)
		}
	}
}

// admit fills the lanes: a queued archive first (in place of a file, which
// goes back to the head of the queue: it can wait, a writer cannot), then
// files. With block, it waits for a job when none is active. It returns
// false when the summer is done: closed, nothing queued, nothing active.
func (s *summer) admit(active []*sumJob, block bool) ([]*sumJob, bool) {
	for {
		if s.stopped() {
			return active, false
		}
		s.mu.Lock()
		hasFollow := len(active) > 0 && active[0].follow
		if !hasFollow {
			for i, j := range s.queue {
				if !j.follow {
					continue
				}
				s.queue = append(s.queue[:i:i], s.queue[i+1:]...)
				if len(active) == 2 {
					s.queue = append([]*sumJob{active[1]}, s.queue...)
					active = active[:1]
				}
				active = append([]*sumJob{j}, active...)
				hasFollow = true
				break
			}
		}
		for i := 0; len(active) < 2 && i < len(s.queue); {
			if j := s.queue[i]; !j.follow {
				s.queue = append(s.queue[:i:i], s.queue[i+1:]...)
				active = append(active, j)
				continue
			}
			i++
		}
		closed := s.closed && len(s.queue) == 0
		s.mu.Unlock()
		for _, j := range active {
			if !j.follow && j.buf == nil {
				j.buf = make([]byte, sumChunk) // only once the file is hashed
			}
		}
		if len(active) > 0 || !block {
			return active, true
		}
		if closed {
			return active, false
		}
		select {
		case <-s.kick:
		case <-s.quit:
		}
	}
}

// run is the hashing goroutine. An active archive, if any, is active[0].
func (s *summer) run() {
	defer close(s.done)
	var active []*sumJob
	defer func() {
		for _, j := range active {
			if !j.follow {
				j.close(s, errStopped)
			}
		}
	}()
	for {
		var ok bool
		if active, ok = s.admit(active, true); !ok {
			return
		}
		a := active[0]
		var pa []byte
		var ea error
		if a.follow {
			var more bool
			select {
			case pa, more = <-a.in:
			default:
				if len(active) == 2 {
					// No write waiting: a step of the file lane alone
					// meanwhile, small so that a write waits little.
					b := active[1]
					pb, eb := b.chunk(sumChunk / 4)
					b.d.Write(pb)
					if b.crc != nil {
						b.crc.Write(pb)
					}
					if eb != nil {
						b.close(s, eb)
						active = active[:1]
					}
					continue
				}
				select {
				case pa, more = <-a.in:
				case <-s.kick:
					continue // a file was queued: into the lane beside a
				case <-s.quit:
					return
				}
			}
			if !more {
				ea = io.EOF
				if a.werr != nil {
					ea = a.werr
				}
			}
		} else {
			pa, ea = a.chunk(sumChunk)
		}
		var b *sumJob
		var eb error
		rest := pa
		if len(active) == 2 && len(pa) > 0 {
			// The file lane takes as many bytes as a has, a chunk at a
			// time, until it ends.
			b = active[1]
			for len(rest) > 0 && eb == nil {
				var pb []byte
				pb, eb = b.chunk(min(len(rest), sumChunk))
				sha256x2.Write2(a.d, b.d, rest[:len(pb)], pb)
				rest = rest[len(pb):]
				if b.crc != nil {
					b.crc.Write(pb)
				}
			}
		}
		a.d.Write(rest)
		if a.crc != nil {
			a.crc.Write(pa)
		}
		if a.follow && ea == nil {
			a.ack <- struct{}{}
		}
		// Jobs that ended leave the lanes.
		keep := func(j *sumJob, err error) bool {
			if err != nil {
				j.close(s, err)
			}
			return err == nil
		}
		var next []*sumJob
		if keep(a, ea) {
			next = append(next, a)
		}
		if len(active) == 2 && (b == nil || keep(b, eb)) {
			next = append(next, active[1])
		}
		active = next
	}
}

// chunk returns the next bytes of a complete file, at most max (at most
// sumChunk; at least one byte unless it returns an error or the file is
// empty), and io.EOF with the last ones.
func (j *sumJob) chunk(max int) ([]byte, error) {
	for len(j.regions) > 0 && j.off >= j.regions[0].Offset+j.regions[0].Size {
		j.regions = j.regions[1:]
	}
	var p []byte
	switch {
	case len(j.regions) == 0:
		p = zeroChunk[:min(int64(max), j.size-j.off)]
	case j.off < j.regions[0].Offset:
		p = zeroChunk[:min(int64(max), j.regions[0].Offset-j.off)]
	default:
		r := j.regions[0]
		p = j.buf[:min(int64(max), r.Offset+r.Size-j.off)]
		if _, err := j.f.ReadAt(p, j.off); err != nil {
			if err == io.EOF {
				err = fmt.Errorf("%s: %w (file shrank while being hashed)", j.f.Name(), io.ErrUnexpectedEOF)
			}
			return nil, err
		}
	}
	j.off += int64(len(p))
	if j.off >= j.size {
		return p, io.EOF
	}
	return p, nil
}
