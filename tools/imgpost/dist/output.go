package dist

import (
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/disk"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/verity"
)

// output is one of dist's big outputs (disk.raw, the two archives), created
// under its temporary name as dist starts, with its space reserved in the
// background (fallocate(2)) while the first stages run.
//
// Why: the data lands in space allocated in one go (contiguous extents on
// ext4, xfs or btrfs) and, on tmpfs, in pages taken as dist starts. On a VM
// whose free memory goes back to the host after a couple of seconds (free
// page reporting), memory freed just before dist (a previous build's
// outputs) is still backed then, and pages taken later cost a fault in the
// host each (measured: 1-2.4 s per GiB against 0.2-0.6 s).
type output struct {
	f        *atomicfile.File
	reserved chan struct{} // closed once the reservation is done (or skipped)
	trim     bool          // the reservation is an estimate: cut the file at what was written
}

// span is a byte range to reserve.
type span struct{ off, n int64 }

// reserveSpace turns the reservations on (tests compare with it off);
// reservedBytes counts what was reserved.
var (
	reserveSpace  = true
	reservedBytes atomic.Int64
)

// newOutput creates the temporary file for path, sized to size when size
// is not 0, and reserves spans of it in the background, after the
// reservation of prev (if any) is done: one reservation at a time. With
// trim, spans are an estimate of what will be written from offset 0, and
// commit cuts the file where the writes ended.
func newOutput(path string, size int64, spans []span, trim bool, prev *output) (*output, error) {
	f, err := atomicfile.Create(path, 0o644)
	if err != nil {
		return nil, err
	}
	if size > 0 {
		if err := f.Truncate(size); err != nil {
			f.Abort()
			return nil, err
		}
	}
	o := &output{f: f, reserved: make(chan struct{}), trim: trim}
	go func() {
		defer close(o.reserved)
		if prev != nil {
			<-prev.reserved
		}
		for _, s := range spans {
			// Best effort: a file system without fallocate, or short of
			// space, gets the writes as they come.
			if unix.Fallocate(int(f.Fd()), 0, s.off, s.n) != nil {
				return
			}
			reservedBytes.Add(s.n)
		}
	}()
	return o, nil
}

// file returns the file once its space is reserved.
func (o *output) file() *atomicfile.File {
	<-o.reserved
	return o.f
}

// commit publishes the file under its name (still in the stage directory),
// first cutting it at the current offset when its reservation was an
// estimate.
func (o *output) commit() error {
	<-o.reserved
	if o.trim {
		end, err := o.f.Seek(0, io.SeekCurrent)
		if err == nil {
			err = o.f.Truncate(end)
		}
		if err != nil {
			o.f.Abort()
			return err
		}
	}
	return o.f.Commit()
}

// abort removes the file unless it was committed.
func (o *output) abort() {
	<-o.reserved
	o.f.Abort()
}

// roomFor reports whether the file system of dir has room for need bytes
// and a tenth more: reservations are made only then, so that an estimate
// never takes space that the outputs themselves need.
func roomFor(dir string, need int64) bool {
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Clean(dir), &fs); err != nil {
		return false
	}
	return int64(fs.Bavail)*int64(fs.Bsize) >= need+need/10
}

// outputs are dist's big outputs; nil when not made.
type outputs struct {
	disk, gcp, tar *output
	// diskReserved is disk.raw's reserved range: the rootfs partition's
	// data as planned from the rootfs size.
	diskReserved disk.Extent
}

// newOutputs creates the big outputs dist will write, and starts reserving
// their space when the file system has room for all of dist's outputs.
func newOutputs(o Options, stage, sdir, name string) (*outputs, error) {
	size := func(p string) int64 {
		if p == "" {
			return 0
		}
		st, err := os.Stat(p)
		if err != nil {
			return 0
		}
		return st.Size()
	}
	image := verity.OutputSize(size(o.Rootfs)) // rootfs.img.verity
	boot := size(o.Kernel) + size(o.Initrd)    // about what the UKI holds
	need := image + 2*boot + size(o.OVMF)      // the bare-metal set
	outs := &outputs{}
	var diskSpans, gcpSpans, tarSpans []span
	var diskSize int64
	if !o.NoGCP {
		// The layout does not depend on the UKI's size (1 here).
		if l, err := disk.Plan(image, 1, disk.Options{ESPSize: o.ESPSize}); err == nil {
			diskSize = l.Size
			outs.diskReserved = disk.Extent{Offset: l.Rootfs.Offset, Size: image}
			diskSpans = []span{{l.Rootfs.Offset, image}}
			gcpSpans = []span{{0, image + boot}} // incompressible data, at worst
		}
	}
	if !o.NoTarball {
		tarSpans = []span{{0, image + 2*boot + size(o.OVMF)}}
	}
	for _, ss := range [][]span{diskSpans, gcpSpans, tarSpans} {
		for _, s := range ss {
			need += s.n
		}
	}
	if !reserveSpace || !roomFor(stage, need) {
		diskSpans, gcpSpans, tarSpans = nil, nil, nil
		outs.diskReserved = disk.Extent{}
	}
	var prev *output
	var err error
	if !o.NoGCP {
		if outs.disk, err = newOutput(filepath.Join(sdir, GCPDir, DiskName), diskSize, diskSpans, false, nil); err != nil {
			return nil, err
		}
		if outs.gcp, err = newOutput(filepath.Join(stage, name+"-gcp.tar.gz"), 0, gcpSpans, true, outs.disk); err != nil {
			outs.abort()
			return nil, err
		}
		prev = outs.gcp
	}
	if !o.NoTarball {
		if outs.tar, err = newOutput(filepath.Join(stage, name+".tar.gz"), 0, tarSpans, true, prev); err != nil {
			outs.abort()
			return nil, err
		}
	}
	return outs, nil
}

// abort removes the outputs not committed.
func (outs *outputs) abort() {
	for _, o := range []*output{outs.disk, outs.gcp, outs.tar} {
		if o != nil {
			o.abort()
		}
	}
}
