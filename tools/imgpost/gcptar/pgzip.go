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
	wg      sync.WaitGroup
	pool    sync.Pool // input blocks
	outPool sync.Pool // *bytes.Buffer for compressed blocks
}

type job struct {
	in    []byte
	dict  []byte
	final bool
	out   *bytes.Buffer
	crc   uint32
	err   error
	ready chan struct{}
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
	z.pool.New = func() any { return make([]byte, 0, blockSize) }
	z.outPool.New = func() any { return new(bytes.Buffer) }
	z.buf = z.pool.Get().([]byte)[:0]
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
		if !failed {
			if j.err != nil {
				z.setErr(fmt.Errorf("deflate: %w", j.err))
				failed = true
			} else {
				z.crc = crc32Combine(z.crc, j.crc, int64(len(j.in)))
				z.size += uint64(len(j.in))
				failed = z.emit(j.out.Bytes())
			}
		}
		z.pool.Put(j.in[:0])
		z.outPool.Put(j.out)
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

// dispatch sends the current block to the workers.
func (z *GzipWriter) dispatch(final bool) {
	j := &job{in: z.buf, dict: z.dict, final: final, ready: make(chan struct{})}
	if len(z.buf) >= dictSize {
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
		z.buf = z.pool.Get().([]byte)[:0]
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
		c := min(len(p), z.blockSize-len(z.buf))
		z.buf = append(z.buf, p[:c]...)
		p = p[c:]
		if len(z.buf) == z.blockSize {
			z.dispatch(false)
		}
	}
	return n, nil
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
		n, err := io.ReadFull(r, z.buf[len(z.buf):z.blockSize])
		z.buf = z.buf[:len(z.buf)+n]
		total += int64(n)
		if len(z.buf) == z.blockSize {
			z.dispatch(false)
		}
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
// of A and B and the length of B (zlib's crc32_combine).
func crc32Combine(crc1, crc2 uint32, len2 int64) uint32 {
	if len2 <= 0 {
		return crc1
	}
	var even, odd [32]uint32
	odd[0] = 0xedb88320 // reflected polynomial
	row := uint32(1)
	for n := 1; n < 32; n++ {
		odd[n] = row
		row <<= 1
	}
	gf2MatrixSquare(even[:], odd[:]) // 2 zero bits
	gf2MatrixSquare(odd[:], even[:]) // 4 zero bits
	for {
		gf2MatrixSquare(even[:], odd[:])
		if len2&1 != 0 {
			crc1 = gf2MatrixTimes(even[:], crc1)
		}
		len2 >>= 1
		if len2 == 0 {
			break
		}
		gf2MatrixSquare(odd[:], even[:])
		if len2&1 != 0 {
			crc1 = gf2MatrixTimes(odd[:], crc1)
		}
		len2 >>= 1
		if len2 == 0 {
			break
		}
	}
	return crc1 ^ crc2
}

func gf2MatrixTimes(mat []uint32, vec uint32) uint32 {
	var sum uint32
	for i := 0; vec != 0; i, vec = i+1, vec>>1 {
		if vec&1 != 0 {
			sum ^= mat[i]
		}
	}
	return sum
}

func gf2MatrixSquare(square, mat []uint32) {
	for n := 0; n < 32; n++ {
		square[n] = gf2MatrixTimes(mat, mat[n])
	}
}
