package dist

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/gcptar"
)

// TarballLevel is the gzip level of the bare-metal tarball (tar -z's default).
const TarballLevel = 6

// WriteTarball writes a deterministic gzip-compressed tar to w: a directory
// entry prefix/ and then, sorted by name, each file of dir named in files as
// prefix/name. Owner root (uid/gid 0), mode 0755 for the directory and 0644
// for files, every time mtime, GNU format; the gzip header has no name and no
// time. Files are streamed. It returns the bytes of file data archived.
func WriteTarball(w io.Writer, dir, prefix string, files []string, mtime time.Time) (int64, error) {
	names := append([]string(nil), files...)
	sort.Strings(names)
	z, err := gcptar.NewGzipWriter(w, TarballLevel, 0, 0)
	if err != nil {
		return 0, err
	}
	tw := tar.NewWriter(z)
	hdr := func(name string, typ byte, mode, size int64) *tar.Header {
		return &tar.Header{
			Typeflag: typ, Name: name, Mode: mode, Size: size,
			Uid: 0, Gid: 0, Uname: "root", Gname: "root",
			ModTime: mtime, Format: tar.FormatGNU,
		}
	}
	if err := tw.WriteHeader(hdr(prefix+"/", tar.TypeDir, 0o755, 0)); err != nil {
		return 0, fmt.Errorf("tarball: %w", err)
	}
	var total int64
	for _, n := range names {
		f, err := os.Open(path.Join(dir, n))
		if err != nil {
			return 0, fmt.Errorf("tarball: %w", err)
		}
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			f.Close()
			return 0, fmt.Errorf("tarball: %s: not a regular file", f.Name())
		}
		if err := tw.WriteHeader(hdr(prefix+"/"+n, tar.TypeReg, 0o644, st.Size())); err != nil {
			f.Close()
			return 0, fmt.Errorf("tarball: %w", err)
		}
		c, err := io.Copy(tw, f)
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("tarball: %s: %w", n, err)
		}
		if c != st.Size() {
			return 0, fmt.Errorf("tarball: %s changed size while archiving", n)
		}
		total += c
	}
	if err := tw.Close(); err != nil {
		return 0, fmt.Errorf("tarball: %w", err)
	}
	if err := z.Close(); err != nil {
		return 0, fmt.Errorf("tarball: %w", err)
	}
	return total, nil
}
