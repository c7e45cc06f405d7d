// Package gcptar writes the Google Compute Engine image-import archive: a
// gzip-compressed tar with ONE member, disk.raw, stored as a GNU "oldgnu"
// sparse file — byte for byte the tar stream `tar --format=oldgnu -S` writes
// for the same file, owner and time (type 'S' header with up to 4 sparse map
// entries, extension headers for the rest, the terminating (size, 0) entry,
// 10240-byte records).
//
// Holes are found with SEEK_DATA/SEEK_HOLE and never read; the stream is
// compressed in parallel on all CPUs into a single gzip member whose header
// carries no name and no time. Member metadata: mode 0644, uid/gid 0,
// uname/gname "root", mtime SOURCE_DATE_EPOCH (default 0).
package gcptar

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/internal/epoch"
)

// Region is one data (non-hole) range of the input file.
type Region struct {
	Offset int64
	Size   int64
}

// seek whence values Go's syscall package lacks on Linux.
const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

func isNXIO(err error) bool { return errors.Is(err, syscall.ENXIO) }

// SparseMap returns the data regions of f, as GNU tar's seek-based hole
// detection finds them: for each SEEK_DATA offset, the range up to the next
// SEEK_HOLE. size is f's size.
func SparseMap(f *os.File) (regions []Region, size int64, err error) {
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	size = st.Size()
	var off int64
	for off < size {
		data, err := f.Seek(off, seekData)
		if err != nil {
			if isNXIO(err) {
				break
			}
			return nil, 0, fmt.Errorf("SEEK_DATA at %d: %w", off, err)
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			return nil, 0, fmt.Errorf("SEEK_HOLE at %d: %w", data, err)
		}
		if hole <= data {
			return nil, 0, fmt.Errorf("SEEK_HOLE at %d returned %d", data, hole)
		}
		regions = append(regions, Region{data, hole - data})
		off = hole
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, 0, err
	}
	return regions, size, nil
}

// Options tune Write. The zero value gives the documented defaults.
type Options struct {
	// Name is the member name (default "disk.raw").
	Name string
	// MTime is the member's modification time (default: SOURCE_DATE_EPOCH,
	// else the Unix epoch).
	MTime *time.Time
	// Level is the DEFLATE level 1-9 (default 6).
	Level int
	// Workers is the number of compressing goroutines (default: all CPUs).
	Workers int
	// BlockSize is the unit of parallel compression (default 1 MiB).
	BlockSize int
	// Progress, if set, is called with the data bytes read so far and the
	// total to read.
	Progress func(done, total int64)
}

// Segment is one data region of the disk as the archive holds it: every
// region is compressed on its own (GzipWriter.SetCuts at its start and end),
// so its compressed bytes decode without what precedes them and can be
// reused in another archive (the bare-metal tarball reuses the rootfs
// partition's). Cutting at regions, a property of the disk alone, keeps the
// archive the same whoever writes it (`imgpost gcp` or `imgpost dist`).
type Segment struct {
	Region        // the disk bytes (Region.Size of them)
	Offset int64  // first compressed byte, from the start of the archive
	Size   int64  // compressed bytes
	CRC    uint32 // CRC-32 of the disk bytes
}

// Result describes a written archive.
type Result struct {
	DiskSize int64    // apparent size of the input (tar realsize)
	DataSize int64    // bytes of data regions stored
	Regions  []Region // sparse map, without the terminating (size, 0) entry
	TarSize  int64    // uncompressed tar stream size
	Size     int64    // compressed archive size
	// Segments locate each data region's compressed bytes, in disk order.
	Segments []Segment
}

// Segment returns the segment holding exactly the disk bytes of reg.
func (r *Result) Segment(reg Region) (Segment, bool) {
	for _, s := range r.Segments {
		if s.Region == reg {
			return s, true
		}
	}
	return Segment{}, false
}

func (o *Options) name() string {
	if o.Name == "" {
		return "disk.raw"
	}
	return o.Name
}

func (o *Options) mtime() (int64, error) {
	if o.MTime != nil {
		return o.MTime.Unix(), nil
	}
	t, set, err := epoch.FromEnv()
	if err != nil || !set {
		return 0, err
	}
	return t.Unix(), nil
}

// WriteFile writes the archive of the disk image at diskPath to out,
// atomically (temporary name, renamed when complete).
func WriteFile(out, diskPath string, opts Options) (Result, error) {
	if err := atomicfile.CheckNotInput(out, diskPath); err != nil {
		return Result{}, err
	}
	f, err := os.Open(diskPath)
	if err != nil {
		return Result{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Result{}, err
	}
	if !st.Mode().IsRegular() {
		return Result{}, fmt.Errorf("%s: not a regular file", diskPath)
	}
	o, err := atomicfile.Create(out, 0o644)
	if err != nil {
		return Result{}, err
	}
	defer o.Abort()
	res, err := Write(o.File, f, opts)
	if err != nil {
		return Result{}, fmt.Errorf("%s from %s: %w", out, diskPath, err)
	}
	if err := o.Commit(); err != nil {
		return Result{}, err
	}
	return res, nil
}

// Write writes the gzip-compressed sparse tar of disk to w.
func Write(w io.Writer, disk *os.File, opts Options) (Result, error) {
	regions, size, err := SparseMap(disk)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", disk.Name(), err)
	}
	cw := &countWriter{w: w}
	z, err := NewGzipWriter(cw, opts.Level, opts.Workers, opts.BlockSize)
	if err != nil {
		return Result{}, err
	}
	r, err := newStream(disk, regions, size, opts)
	if err != nil {
		z.Close()
		return Result{}, err
	}
	// A cut at the start and at the end of each region's data in the stream
	// (regions are padded to a tar block, so an end never passes the next start).
	var cuts []int64
	at := int64(len(r.hdr))
	for _, reg := range regions {
		cuts = append(cuts, at, at+reg.Size)
		at += roundBlock(reg.Size)
	}
	if err := z.SetCuts(cuts...); err != nil {
		z.Close()
		return Result{}, err
	}
	tarSize, err := copyStream(z, r)
	if cerr := z.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Result{}, err
	}
	m := z.Marks()
	if len(m) != len(cuts) {
		return Result{}, fmt.Errorf("gzip: %d marks for %d cuts", len(m), len(cuts))
	}
	res := Result{DiskSize: size, Regions: regions, TarSize: tarSize, Size: cw.n}
	for i, reg := range regions {
		start, end := m[2*i], m[2*i+1]
		res.Segments = append(res.Segments, Segment{Region: reg, Offset: start.Out, Size: end.Out - start.Out, CRC: end.CRC})
		res.DataSize += reg.Size
	}
	return res, nil
}

// WriteTar writes the uncompressed sparse tar stream of disk to w (what
// `tar --format=oldgnu -cSf -` writes) and returns its size.
func WriteTar(w io.Writer, disk *os.File, opts Options) (int64, error) {
	regions, size, err := SparseMap(disk)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", disk.Name(), err)
	}
	r, err := newStream(disk, regions, size, opts)
	if err != nil {
		return 0, err
	}
	return copyStream(w, r)
}

// copyStream writes the tar stream r to w.
func copyStream(w io.Writer, r *stream) (int64, error) {
	if rf, ok := w.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		if err == nil {
			err = r.err
		}
		return n, err
	}
	return io.CopyBuffer(w, r, make([]byte, 1<<20))
}

// stream is the uncompressed tar stream as an io.Reader: the headers, each
// data region read from the disk (padded to a block), the end-of-archive
// blocks and the record padding. Reads go straight into the caller's buffer.
type stream struct {
	disk     *os.File
	hdr      []byte
	regions  []Region
	i        int   // current region
	off      int64 // offset within the current region (including padding)
	trailer  int64 // bytes of end-of-archive zeros
	pos      int64 // bytes produced
	done     int64
	total    int64
	progress func(done, total int64)
	err      error
}

func newStream(disk *os.File, regions []Region, size int64, opts Options) (*stream, error) {
	mtime, err := opts.mtime()
	if err != nil {
		return nil, err
	}
	hdr, err := sparseHeaders(opts.name(), mtime, regions, size)
	if err != nil {
		return nil, err
	}
	s := &stream{disk: disk, hdr: hdr, regions: regions, progress: opts.Progress}
	n := int64(len(hdr))
	for _, r := range regions {
		s.total += r.Size
		n += roundBlock(r.Size)
	}
	s.trailer = 2 * blockSize
	if rem := (n + s.trailer) % recordSize; rem != 0 {
		s.trailer += recordSize - rem
	}
	return s, nil
}

func roundBlock(n int64) int64 { return (n + blockSize - 1) / blockSize * blockSize }

func (s *stream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n := 0
	for n < len(p) {
		switch {
		case len(s.hdr) > 0:
			c := copy(p[n:], s.hdr)
			s.hdr = s.hdr[c:]
			n += c
		case s.i < len(s.regions):
			r := s.regions[s.i]
			if s.off < r.Size {
				want := min(int64(len(p)-n), r.Size-s.off)
				m, err := s.disk.ReadAt(p[n:n+int(want)], r.Offset+s.off)
				if int64(m) != want {
					if err == nil || err == io.EOF {
						err = fmt.Errorf("short read at %d (file shrank?)", r.Offset+s.off+int64(m))
					}
					s.err = fmt.Errorf("read %s: %w", s.disk.Name(), err)
					return n, s.err
				}
				n += m
				s.off += want
				s.done += want
				if s.progress != nil {
					s.progress(s.done, s.total)
				}
				continue
			}
			// GNU tar pads each region to a whole block.
			padEnd := roundBlock(r.Size)
			c := int(min(int64(len(p)-n), padEnd-s.off))
			clear(p[n : n+c])
			n += c
			s.off += int64(c)
			if s.off == padEnd {
				s.i++
				s.off = 0
			}
		case s.trailer > 0:
			c := int(min(int64(len(p)-n), s.trailer))
			clear(p[n : n+c])
			n += c
			s.trailer -= int64(c)
		default:
			s.pos += int64(n)
			if n == 0 {
				return 0, io.EOF
			}
			return n, nil
		}
	}
	s.pos += int64(n)
	return n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
