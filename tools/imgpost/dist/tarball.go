package dist

import (
	"archive/tar"
	"bytes"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path"
	"sort"
	"time"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/gcptar"
)

// TarballLevel is the gzip level of the bare-metal tarball (tar -z's default).
const TarballLevel = 6

// Reuse gives one member's data already compressed: a segment of another
// gzip archive (a gcptar.Segment) whose bytes decode to that file.
// dist uses it for rootfs.img.verity, which the GCP archive has just
// compressed as the disk's rootfs partition, so the bare-metal tarball does
// not deflate the same gigabyte a second time.
type Reuse struct {
	Name    string // the file in dir it stands for
	Archive string // the archive holding the compressed bytes
	Segment gcptar.Segment
	// FileCRC, when known, is the file's CRC-32 (else WriteTarball reads
	// the file to compute it).
	FileCRC *uint32
}

// WriteTarball writes a deterministic gzip-compressed tar to w: a directory
// entry prefix/ and then, sorted by name, each file of dir named in files as
// prefix/name. Owner root (uid/gid 0), mode 0755 for the directory and 0644
// for files, every time mtime, GNU format; the gzip header has no name and no
// time. Files are streamed. With reuse, that member's compressed data is
// copied from reuse.Archive after checking that the file's size and CRC-32
// match the segment's. It returns the bytes of file data archived.
func WriteTarball(w io.Writer, dir, prefix string, files []string, mtime time.Time, reuse *Reuse) (int64, error) {
	names := append([]string(nil), files...)
	sort.Strings(names)
	z, err := gcptar.NewGzipWriter(w, TarballLevel, 0, 0)
	if err != nil {
		return 0, err
	}
	var opened []*os.File // read by z until it is closed
	defer func() {
		z.Close()
		for _, f := range opened {
			f.Close()
		}
	}()
	hdr := func(name string, typ byte, mode, size int64) error {
		// archive/tar renders the header (and any GNU long-name entry); the
		// data is written to z directly.
		var b bytes.Buffer
		err := tar.NewWriter(&b).WriteHeader(&tar.Header{
			Typeflag: typ, Name: name, Mode: mode, Size: size,
			Uid: 0, Gid: 0, Uname: "root", Gname: "root",
			ModTime: mtime, Format: tar.FormatGNU,
		})
		if err == nil {
			_, err = z.Write(b.Bytes())
		}
		if err != nil {
			return fmt.Errorf("tarball: %w", err)
		}
		return nil
	}
	if err := hdr(prefix+"/", tar.TypeDir, 0o755, 0); err != nil {
		return 0, err
	}
	var total int64
	for _, n := range names {
		c, err := func() (int64, error) {
			f, err := os.Open(path.Join(dir, n))
			if err != nil {
				return 0, fmt.Errorf("tarball: %w", err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil || !st.Mode().IsRegular() {
				return 0, fmt.Errorf("tarball: %s: not a regular file", f.Name())
			}
			if err := hdr(prefix+"/"+n, tar.TypeReg, 0o644, st.Size()); err != nil {
				return 0, err
			}
			var c int64
			if reuse != nil && reuse.Name == n {
				var a *os.File
				a, err = spliceMember(z, f, st.Size(), reuse)
				if a != nil {
					opened = append(opened, a)
					c = st.Size()
				}
			} else {
				c, err = io.Copy(z, f)
			}
			if err != nil {
				return 0, fmt.Errorf("tarball: %s: %w", n, err)
			}
			if c != st.Size() {
				return 0, fmt.Errorf("tarball: %s changed size while archiving", n)
			}
			if pad := (512 - c%512) % 512; pad > 0 {
				z.Write(make([]byte, pad))
			}
			return c, nil
		}()
		if err != nil {
			return 0, err
		}
		total += c
	}
	z.Write(make([]byte, 2*512)) // end of archive, as archive/tar writes it
	if err := z.Close(); err != nil {
		return 0, fmt.Errorf("tarball: %w", err)
	}
	return total, nil
}

// spliceMember writes f's data as reuse's compressed segment, after checking
// that f is what the segment decodes to (same size and CRC-32). It returns
// the archive it opened, which z reads until it is closed.
func spliceMember(z *gcptar.GzipWriter, f *os.File, size int64, reuse *Reuse) (*os.File, error) {
	seg := reuse.Segment
	if size != seg.Region.Size {
		return nil, fmt.Errorf("is %d bytes, the compressed copy in %s holds %d", size, reuse.Archive, seg.Region.Size)
	}
	var crc uint32
	if reuse.FileCRC != nil {
		crc = *reuse.FileCRC
	} else {
		h := crc32.NewIEEE()
		if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
			return nil, err
		}
		crc = h.Sum32()
	}
	if crc != seg.CRC {
		return nil, fmt.Errorf("CRC-32 %08x differs from its compressed copy's in %s (%08x)", crc, reuse.Archive, seg.CRC)
	}
	a, err := os.Open(reuse.Archive)
	if err != nil {
		return nil, err
	}
	if err := z.WriteCompressed(io.NewSectionReader(a, seg.Offset, seg.Size), size, seg.CRC); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}
