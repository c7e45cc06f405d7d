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

// sumChunk is how much of a file the summer hashes per step.
const sumChunk = 1 << 20

// errStopped ends the jobs still running when the summer is stopped.
var errStopped = errors.New("checksums stopped")

// summer computes the sha256 of dist's artifacts for sha256sum.txt and the
// summary. One goroutine hashes the big files two at a time, in the two lanes
// of sha256x2.Write2, which costs about what hashing one of them costs: files
// once they are complete (file), and archives while they are being written
// (follow), reading back what the writer has written so far. Small values
// are hashed on the spot (setBytes).
type summer struct {
	mu      sync.Mutex
	m       map[string]string
	errs    []error
	queue   []*sumJob
	follows []*sumJob     // every follow job, to end them on stop
	kick    chan struct{} // a job was queued, or the summer was closed
	closed  bool
	stopped bool
	done    chan struct{} // the goroutine has returned
	zero    []byte        // sumChunk zero bytes: a hole's data
}

func newSummer() *summer {
	s := &summer{m: map[string]string{}, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go s.run()
	return s
}

// sumJob is one file being hashed.
type sumJob struct {
	name string
	f    *os.File
	d    *sha256x2.Digest
	buf  []byte
	off  int64

	// With crc (fileCRC), the file's CRC-32 is computed too and sent to
	// crcOut when the job ends.
	crc    hash.Hash32
	crcOut chan crcResult

	// A complete file: its data regions (holes are hashed as zeros
	// without being read) and size.
	regions []gcptar.Region
	size    int64

	// A file still being written (follow): avail bytes may be read; after
	// end, nothing more will come (werr says why, if it failed).
	follow bool
	fmu    sync.Mutex
	fcond  *sync.Cond
	avail  int64
	end    bool
	werr   error
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

// enqueue hands j to the hashing goroutine.
func (s *summer) enqueue(j *sumJob) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		panic("dist: summer used after close")
	}
	s.queue = append(s.queue, j)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
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
	j := &sumJob{name: name, crcOut: crcOut}
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

// follow returns a writer that writes to w, the file at path (open for
// writing), and hashes under name what was written, in the background. The
// caller must call finish once it has written everything, or failed.
func (s *summer) follow(name, path string, w io.Writer) (*followWriter, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	j := &sumJob{name: name, f: f, follow: true}
	j.fcond = sync.NewCond(&j.fmu)
	s.mu.Lock()
	s.follows = append(s.follows, j)
	s.mu.Unlock()
	s.enqueue(j)
	return &followWriter{w: w, j: j}, nil
}

// followWriter is the writer side of a follow job.
type followWriter struct {
	w io.Writer
	j *sumJob
}

func (fw *followWriter) Write(p []byte) (int, error) {
	n, err := fw.w.Write(p)
	if n > 0 {
		j := fw.j
		j.fmu.Lock()
		j.avail += int64(n)
		if j.avail-j.off >= sumChunk {
			j.fcond.Signal()
		}
		j.fmu.Unlock()
	}
	return n, err
}

// finish says that the writer is done: err nil if the file is complete.
func (fw *followWriter) finish(err error) {
	fw.j.stop(err)
}

func (j *sumJob) stop(err error) {
	j.fmu.Lock()
	if !j.end {
		j.end, j.werr = true, err
	}
	j.fcond.Signal()
	j.fmu.Unlock()
}

// wait stops accepting jobs and returns once the queued ones are hashed,
// with the errors of those that failed.
func (s *summer) wait() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

// stop abandons the jobs (a stage failed) and waits for the goroutine.
func (s *summer) stop() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped, s.closed = true, true
	for _, j := range s.follows {
		j.stop(errStopped)
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	<-s.done
	s.mu.Lock()
	q := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, j := range q {
		j.close(s, errStopped)
	}
}

// next takes the next queued job; with block it waits for one. It returns
// nil if there is none (and, with block, the summer is closed).
func (s *summer) next(block bool) *sumJob {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			j := s.queue[0]
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return j
		}
		closed := s.closed
		s.mu.Unlock()
		if !block || closed {
			return nil
		}
		<-s.kick
	}
}

// run is the hashing goroutine: it keeps up to two jobs going, and feeds
// one chunk of each to Write2 per step, as long as the two have data.
func (s *summer) run() {
	defer close(s.done)
	var active []*sumJob
	for {
		for len(active) < 2 {
			j := s.next(len(active) == 0)
			if j == nil {
				break
			}
			j.d = sha256x2.NewDigest()
			j.buf = make([]byte, sumChunk)
			active = append(active, j)
		}
		if len(active) == 0 {
			return
		}
		s.mu.Lock()
		stopped := s.stopped
		s.mu.Unlock()
		if stopped {
			for _, j := range active {
				j.close(s, errStopped)
			}
			return
		}
		// A job that is being written goes first: how much it has decides
		// how much of the other one to take, so that both lanes are fed
		// the same length.
		if len(active) == 2 && active[1].follow && !active[0].follow {
			active[0], active[1] = active[1], active[0]
		}
		a := active[0]
		pa, ea := a.chunk(sumChunk, s.zeroes())
		var b *sumJob
		var pb []byte
		var eb error
		if len(active) == 2 {
			b = active[1]
			want := sumChunk
			if a.follow && len(pa) > 0 {
				want = len(pa)
			}
			pb, eb = b.chunk(want, s.zeroes())
			sha256x2.Write2(a.d, b.d, pa, pb)
			if b.crc != nil {
				b.crc.Write(pb)
			}
		} else {
			a.d.Write(pa)
		}
		if a.crc != nil {
			a.crc.Write(pa)
		}
		active = active[:0:0]
		for _, x := range []struct {
			j   *sumJob
			err error
		}{{a, ea}, {b, eb}} {
			if x.j == nil {
				continue
			}
			if x.err == nil {
				active = append(active, x.j)
				continue
			}
			x.j.close(s, x.err)
		}
	}
}

func (s *summer) zeroes() []byte {
	if s.zero == nil {
		s.zero = make([]byte, sumChunk)
	}
	return s.zero
}

// chunk returns the job's next bytes, at most max (and at least one byte
// unless it returns an error), and io.EOF with the last ones. A follow job
// waits until a whole chunk was written, or the writer finished.
func (j *sumJob) chunk(max int, zero []byte) ([]byte, error) {
	if j.follow {
		j.fmu.Lock()
		for !j.end && j.avail-j.off < int64(max) {
			j.fcond.Wait()
		}
		n := min(j.avail-j.off, int64(max))
		end, werr := j.end, j.werr
		j.fmu.Unlock()
		if werr != nil {
			return nil, werr
		}
		p := j.buf[:n]
		if err := readAt(j.f, p, j.off); err != nil {
			return nil, err
		}
		j.fmu.Lock()
		j.off += n
		last := end && j.off == j.avail
		j.fmu.Unlock()
		if last {
			return p, io.EOF
		}
		return p, nil
	}
	// A complete file: the region holding off, or the hole before it.
	for len(j.regions) > 0 && j.off >= j.regions[0].Offset+j.regions[0].Size {
		j.regions = j.regions[1:]
	}
	var p []byte
	switch {
	case len(j.regions) == 0:
		p = zero[:min(int64(max), j.size-j.off)]
	case j.off < j.regions[0].Offset:
		p = zero[:min(int64(max), j.regions[0].Offset-j.off)]
	default:
		r := j.regions[0]
		p = j.buf[:min(int64(max), r.Offset+r.Size-j.off)]
		if err := readAt(j.f, p, j.off); err != nil {
			return nil, err
		}
	}
	j.off += int64(len(p))
	if j.off >= j.size {
		return p, io.EOF
	}
	return p, nil
}

// readAt fills p from f at off; a file shorter than expected is an error.
func readAt(f *os.File, p []byte, off int64) error {
	_, err := f.ReadAt(p, off)
	if err == io.EOF {
		return fmt.Errorf("%s: %w (file shrank while being hashed)", f.Name(), io.ErrUnexpectedEOF)
	}
	return err
}

// crcResult is a CRC-32 computed in the background.
type crcResult struct {
	crc uint32
	err error
}
