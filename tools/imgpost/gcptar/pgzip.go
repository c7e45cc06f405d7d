package gcptar

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/flate"
)

// dictSize is the DEFLATE window: each block is compressed with the previous
// 32 KiB of input as its dictionary, so matches can reach back across block
// boundaries exactly as in a serial stream.
const dictSize = 32 << 10

// GzipWriter is a parallel gzip compressor producing ONE gzip member: the
// input is cut into blocks, each block is deflated on its own goroutine with
// the previous 32 KiB as dictionary and ended with a sync flush (the last one
// with the final block), and the pieces are written in order behind a
// 10-byte header without name or time; the trailer carries the CRC-32
// combined from the blocks' CRCs. The result is a standard gzip stream that
// any gunzip reads.
//
// Two additions let one compression serve two archives: SetCuts ends blocks
// at given input offsets, with no dictionary reaching back across them, and
// records where each cut lands in the output (Marks); WriteCompressed splices
// such a self-contained run of compressed bytes, taken from another stream,
// into this one.
type GzipWriter struct {
	w         io.Writer
	level     int
	blockSize int

	buf  []byte // current block being filled
	dict []byte // last dictSize bytes of the previous block
	jobs chan *job
	// order receives each job as it is dispatched; the writer goroutine
	// takes them in order and waits for each to finish.
	order   chan *job
	done    chan struct{}
	errMu   sync.Mutex
	err     error
	closed  bool
	crc     uint32
	size    uint64
	written int64
	pos     int64   // input bytes dispatched to the workers
	cuts    []int64 // input offsets still to cut at, increasing
	marks   []Mark  // one per cut, recorded by the writer goroutine
	segCRC  uint32  // CRC-32 of the input since the last cut
	wg      sync.WaitGroup
	pool    sync.Pool // *[]byte: input blocks
	outPool sync.Pool // *bytes.Buffer for compressed blocks
}

type job struct {
	in    []byte
	dict  []byte
	final bool
	cut   bool // record a Mark after this job's output
	out   *bytes.Buffer
	crc   uint32
	err   error
	ready chan struct{}
	// raw, when set, is already-compressed output copied through as it is:
	// rawN input bytes whose CRC-32 is rawCRC (see WriteCompressed).
	raw    io.Reader
	rawN   int64
	rawCRC uint32
}

// Mark is a block boundary made by SetCuts: the output before it ends with a
// sync flush (byte-aligned), and no block after it uses input before it as
// dictionary.
type Mark struct {
	In  int64  // input bytes before the mark
	Out int64  // output bytes before the mark (counting the 10-byte gzip header)
	CRC uint32 // CRC-32 of the input between the previous mark (or the start) and this one
}

// NewGzipWriter returns a GzipWriter writing to w at the given DEFLATE level
// (1-9; 0 means 6) with the given number of workers (0: all CPUs) and block
// size (0: 1 MiB).
func NewGzipWriter(w io.Writer, level, workers, blockSize int) (*GzipWriter, error) {
	if level == 0 {
		level = 6
	}
	if level < 1 || level > 9 {
		return nil, fmt.Errorf("gzip level %d: want 1-9", level)
	}
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	if blockSize <= 0 {
		blockSize = 1 << 20
	}
	if blockSize < dictSize {
		blockSize = dictSize
	}
	z := &GzipWriter{
		w: w, level: level, blockSize: blockSize,
		jobs:  make(chan *job, workers),
		order: make(chan *job, 2*workers),
		done:  make(chan struct{}),
	}
	z.pool.New = func() any { b := make([]byte, 0, blockSize); return &b }
	z.outPool.New = func() any { return new(bytes.Buffer) }
	z.buf = (*z.pool.Get().(*[]byte))[:0]
	for i := 0; i < workers; i++ {
		z.wg.Add(1)
		go z.worker()
	}
	go z.writer()
	return z, nil
}

func (z *GzipWriter) worker() {
	defer z.wg.Done()
	var fw *flate.Writer
	for j := range z.jobs {
		j.crc = crc32.ChecksumIEEE(j.in)
		j.out = z.outPool.Get().(*bytes.Buffer)
		j.out.Reset()
		j.out.Grow(len(j.in) + len(j.in)/64 + 64)
		var err error
		if fw == nil {
			fw, err = flate.NewWriterDict(j.out, z.level, j.dict)
		} else {
			fw.ResetDict(j.out, j.dict) // one compressor per worker, reused
		}
		if err == nil {
			_, err = fw.Write(j.in)
		}
		if err == nil {
			if j.final {
				err = fw.Close()
			} else {
				err = fw.Flush()
			}
		}
		j.err = err
		close(j.ready)
	}
}

func (z *GzipWriter) writer() {
	defer close(z.done)
	// gzip header: magic, CM=deflate, no flags, MTIME=0, XFL=0, OS=3 (Unix,
	// as gzip -n writes).
	hdr := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3}
	failed := z.emit(hdr)
	for j := range z.order {
		<-j.ready
		switch {
		case failed:
		case j.raw != nil:
			_, err := io.CopyBuffer(writerFunc(func(b []byte) (int, error) {
				if z.emit(b) {
					return 0, z.getErr()
				}
				return len(b), nil
			}), j.raw, make([]byte, 1<<20))
			if err != nil {
				z.setErr(fmt.Errorf("copy compressed data: %w", err))
				failed = true
				break
			}
			z.crc = crc32Combine(z.crc, j.rawCRC, j.rawN)
			z.segCRC = crc32Combine(z.segCRC, j.rawCRC, j.rawN)
			z.size += uint64(j.rawN)
		case j.in == nil: // a mark with no data before it
		default:
			if j.err != nil {
				z.setErr(fmt.Errorf("deflate: %w", j.err))
				failed = true
			} else {
				z.crc = crc32Combine(z.crc, j.crc, int64(len(j.in)))
				z.segCRC = crc32Combine(z.segCRC, j.crc, int64(len(j.in)))
				z.size += uint64(len(j.in))
				failed = z.emit(j.out.Bytes())
			}
		}
		if j.cut && !failed {
			z.marks = append(z.marks, Mark{In: int64(z.size), Out: z.written, CRC: z.segCRC})
			z.segCRC = 0
		}
		if j.in != nil {
			in := j.in[:0]
			z.pool.Put(&in)
		}
		if j.out != nil {
			z.outPool.Put(j.out)
		}
		if j.final && !failed {
			var tr [8]byte
			binary.LittleEndian.PutUint32(tr[0:4], z.crc)
			binary.LittleEndian.PutUint32(tr[4:8], uint32(z.size))
			z.emit(tr[:])
		}
	}
}

// emit writes b and reports whether writing failed.
func (z *GzipWriter) emit(b []byte) bool {
	n, err := z.w.Write(b)
	z.written += int64(n)
	if err != nil {
		z.setErr(err)
		return true
	}
	return false
}

func (z *GzipWriter) setErr(err error) {
	z.errMu.Lock()
	if z.err == nil {
		z.err = err
	}
	z.errMu.Unlock()
}

func (z *GzipWriter) getErr() error {
	z.errMu.Lock()
	defer z.errMu.Unlock()
	return z.err
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// dispatch sends the current block to the workers.
func (z *GzipWriter) dispatch(final bool) { z.dispatchCut(final, false) }

// dispatchCut sends the current block to the workers; with cut, the block
// ends at a Mark and the next one starts without a dictionary.
func (z *GzipWriter) dispatchCut(final, cut bool) {
	if cut && len(z.buf) == 0 && !final {
		// Nothing to compress: the previous block already ended byte-aligned.
		j := &job{cut: true, ready: make(chan struct{})}
		close(j.ready)
		z.order <- j
		z.dict = nil
		return
	}
	j := &job{in: z.buf, dict: z.dict, final: final, cut: cut, ready: make(chan struct{})}
	z.pos += int64(len(z.buf))
	if cut {
		z.dict = nil
	} else if len(z.buf) >= dictSize {
		z.dict = append([]byte(nil), z.buf[len(z.buf)-dictSize:]...)
	} else {
		d := append(append([]byte(nil), z.dict...), z.buf...)
		if len(d) > dictSize {
			d = d[len(d)-dictSize:]
		}
		z.dict = d
	}
	z.order <- j
	z.jobs <- j
	if !final {
		z.buf = (*z.pool.Get().(*[]byte))[:0]
	}
}

// SetCuts asks for block boundaries at the given input offsets (increasing,
// not before what was already written): at each, the block in progress is
// compressed and sync-flushed, the next starts without a dictionary, and a
// Mark is recorded. The compressed bytes between two marks then decode on
// their own, whatever precedes them: WriteCompressed can splice them into
// another stream.
func (z *GzipWriter) SetCuts(offsets ...int64) error {
	prev := z.pos + int64(len(z.buf))
	for _, o := range offsets {
		if o < prev {
			return fmt.Errorf("gzip: cut at %d: not after %d", o, prev)
		}
		prev = o
	}
	z.cuts = append(z.cuts[:0], offsets...)
	z.cutNow()
	return nil
}

// Marks returns the marks recorded for the cuts reached; complete after Close.
func (z *GzipWriter) Marks() []Mark { return z.marks }

// room is how many more bytes the current block takes before it is full
// or reaches the next cut.
func (z *GzipWriter) room() int {
	r := z.blockSize - len(z.buf)
	if len(z.cuts) > 0 {
		r = int(min(int64(r), z.cuts[0]-z.pos-int64(len(z.buf))))
	}
	return r
}

// cutNow dispatches the current block when it is full or at a cut.
func (z *GzipWriter) cutNow() {
	for len(z.cuts) > 0 && z.cuts[0] == z.pos+int64(len(z.buf)) {
		z.cuts = z.cuts[1:]
		z.dispatchCut(false, true)
	}
	if len(z.buf) == z.blockSize {
		z.dispatch(false)
	}
}

// Write compresses p.
func (z *GzipWriter) Write(p []byte) (int, error) {
	if z.closed {
		return 0, errors.New("gzip: write after close")
	}
	if err := z.getErr(); err != nil {
		return 0, err
	}
	n := len(p)
	for len(p) > 0 {
		c := min(len(p), z.room())
		z.buf = append(z.buf, p[:c]...)
		p = p[c:]
		z.cutNow()
	}
	return n, nil
}

// WriteCompressed appends n input bytes with CRC-32 crc given already
// compressed: r yields DEFLATE blocks that are not final, start on a byte
// boundary, end byte-aligned (a sync flush) and refer to no data before them
// — the output between two Marks of another GzipWriter. What was written
// before is flushed first; what is written after starts without a
// dictionary. r is read by the output goroutine, until Close returns.
func (z *GzipWriter) WriteCompressed(r io.Reader, n int64, crc uint32) error {
	if z.closed {
		return errors.New("gzip: write after close")
	}
	if err := z.getErr(); err != nil {
		return err
	}
	if len(z.cuts) > 0 {
		return errors.New("gzip: WriteCompressed with cuts pending")
	}
	if len(z.buf) > 0 {
		z.dispatch(false)
	}
	j := &job{raw: r, rawN: n, rawCRC: crc, ready: make(chan struct{})}
	close(j.ready)
	z.order <- j
	z.pos += n
	z.dict = nil
	return nil
}

// ReadFrom fills blocks straight from r (no extra copy).
func (z *GzipWriter) ReadFrom(r io.Reader) (int64, error) {
	if z.closed {
		return 0, errors.New("gzip: write after close")
	}
	var total int64
	for {
		if err := z.getErr(); err != nil {
			return total, err
		}
		n, err := io.ReadFull(r, z.buf[len(z.buf):len(z.buf)+z.room()])
		z.buf = z.buf[:len(z.buf)+n]
		total += int64(n)
		z.cutNow()
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Close compresses what is left, writes the trailer and waits for all output
// to be written. It does not close the underlying writer.
func (z *GzipWriter) Close() error {
	if z.closed {
		return z.getErr()
	}
	z.closed = true
	z.dispatch(true)
	close(z.jobs)
	close(z.order)
	z.wg.Wait()
	<-z.done
	return z.getErr()
}

// Written is the number of compressed bytes written so far.
func (z *GzipWriter) Written() int64 { return z.written }

// crc32Combine returns the CRC-32 (IEEE) of A followed by B, given the CRCs
// of A and B and the length of B: crc1 times x^(8*len2) modulo the
// polynomial, plus crc2 (the method of zlib 1.2.12's crc32_combine, about 30
// carry-less products of 32 steps each).
func crc32Combine(crc1, crc2 uint32, len2 int64) uint32 {
	if len2 <= 0 {
		return crc1
	}
	return gf2MulModP(x8nModP(len2), crc1) ^ crc2
}

// x2nModP[k] is x^(2^k) modulo the polynomial, reflected.
var x2nModP = func() (t [32]uint32) {
	p := uint32(1) << 30 // x^1
	for k := range t {
		t[k] = p
		p = gf2MulModP(p, p)
	}
	return t
}()

// gf2MulModP multiplies a and b, reflected polynomials (bit 31 is x^0),
// modulo the CRC-32 polynomial (crc32.IEEE, reflected).
func gf2MulModP(a, b uint32) uint32 {
	var p uint32
	for m := uint32(1) << 31; m != 0 && a != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
			a ^= m
		}
		if b&1 != 0 {
			b = b>>1 ^ crc32.IEEE
		} else {
			b >>= 1
		}
	}
	return p
}

// x8nModP returns x^(8n) modulo the polynomial, reflected.
func x8nModP(n int64) uint32 {
	p := uint32(1) << 31 // x^0
	for k := 3; n != 0; k, n = k+1, n>>1 {
		if n&1 != 0 {
			p = gf2MulModP(x2nModP[k&31], p)
		}
	}
	return p
}
