// Package initramfs writes deterministic initramfs images: "newc" (SVR4, no
// CRC) cpio archives as the Linux kernel unpacks them, optionally gzipped.
//
// Entries are written in insertion order (the caller decides the order; the
// kernel needs a directory before its contents, which the Writer guarantees by
// adding missing parent directories first). Every entry has uid/gid 0, the
// same mtime (Options.Mtime, default 0), nlink 1 for files and symlinks, 2 for
// directories, and inode numbers counting up from 1, so the same calls give the
// same bytes. The gzip stream carries no file name and mtime 0.
package initramfs

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strings"
)

const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
	trailerName = "TRAILER!!!"
)

// Options tune a Writer.
type Options struct {
	// Gzip compresses the archive (gzip header without name, mtime 0).
	Gzip bool
	// Level is the gzip level; 0 means gzip.BestCompression.
	Level int
	// Mtime is the modification time (seconds since the epoch) of every entry.
	Mtime uint32
}

// Writer writes a newc cpio archive. It is not safe for concurrent use.
type Writer struct {
	out    io.Writer // where entries go: the gzip writer or the caller's writer
	gz     *gzip.Writer
	opts   Options
	ino    uint32
	n      int64 // bytes of cpio written (before compression)
	seen   map[string]bool
	rdev   [2]uint32 // device numbers of the entry being written
	closed bool
	err    error
}

// NewWriter returns a Writer that writes the archive to w. Call Close to write
// the trailer (and finish the gzip stream); Close does not close w.
func NewWriter(w io.Writer, opts Options) (*Writer, error) {
	iw := &Writer{out: w, opts: opts, seen: map[string]bool{}}
	if opts.Gzip {
		level := opts.Level
		if level == 0 {
			level = gzip.BestCompression
		}
		gz, err := gzip.NewWriterLevel(w, level)
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		// The zero gzip.Header: no name, no comment, ModTime zero → MTIME 0.
		gz.OS = 3 // Unix, fixed regardless of host
		iw.gz = gz
		iw.out = gz
	}
	return iw, nil
}

// clean turns an archive path into the kernel's form: no leading "/", no
// "." or ".." components. "/" itself becomes ".".
func clean(name string) (string, error) {
	if name == "" {
		return "", errors.New("initramfs: empty path")
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("initramfs: path %q holds a NUL byte", name)
	}
	c := path.Clean("/" + name)
	if c == "/" {
		return ".", nil
	}
	return c[1:], nil
}

// AddDir adds a directory (and any missing parents) with the given
// permission bits. Adding a directory that exists already is a no-op.
func (w *Writer) AddDir(name string, perm os.FileMode) error {
	n, err := clean(name)
	if err != nil {
		return err
	}
	return w.addDirs(n, perm)
}

func (w *Writer) addDirs(n string, perm os.FileMode) error {
	if n == "." || w.seen[n] {
		return nil
	}
	if parent := path.Dir(n); parent != "." {
		if err := w.addDirs(parent, 0o755); err != nil {
			return err
		}
	}
	w.seen[n] = true
	return w.entry(n, modeDir|uint32(perm.Perm()), 2, nil, 0)
}

func (w *Writer) parents(n string) error {
	if parent := path.Dir(n); parent != "." {
		return w.addDirs(parent, 0o755)
	}
	return nil
}

func (w *Writer) claim(n string) error {
	if n == "." {
		return errors.New("initramfs: the root directory cannot be a file or symlink")
	}
	if w.seen[n] {
		return fmt.Errorf("initramfs: %s added twice", n)
	}
	if err := w.parents(n); err != nil {
		return err
	}
	w.seen[n] = true
	return nil
}

// AddFile adds a regular file with the given contents and permission bits.
func (w *Writer) AddFile(name string, data []byte, perm os.FileMode) error {
	n, err := clean(name)
	if err != nil {
		return err
	}
	if err := w.claim(n); err != nil {
		return err
	}
	return w.entry(n, modeRegular|uint32(perm.Perm()), 1, bytes.NewReader(data), int64(len(data)))
}

// AddFileFrom adds a regular file whose contents are streamed from the host
// file hostPath. The permission bits are taken from the host file; mtime and
// ownership are not (see the package comment).
func (w *Writer) AddFileFrom(name, hostPath string) error {
	n, err := clean(name)
	if err != nil {
		return err
	}
	f, err := os.Open(hostPath)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("initramfs: %s is not a regular file", hostPath)
	}
	if st.Size() > 0xffffffff {
		return fmt.Errorf("initramfs: %s is larger than newc's 4 GiB limit", hostPath)
	}
	if err := w.claim(n); err != nil {
		return err
	}
	return w.entry(n, modeRegular|uint32(st.Mode().Perm()), 1, f, st.Size())
}

// AddSymlink adds a symbolic link name pointing to target.
func (w *Writer) AddSymlink(name, target string) error {
	n, err := clean(name)
	if err != nil {
		return err
	}
	if target == "" || strings.ContainsRune(target, 0) {
		return fmt.Errorf("initramfs: bad symlink target %q for %s", target, n)
	}
	if err := w.claim(n); err != nil {
		return err
	}
	return w.entry(n, modeSymlink|0o777, 1, strings.NewReader(target), int64(len(target)))
}

// AddCharDevice adds a character device node, for example
// AddCharDevice("/dev/console", 0o600, 5, 1): the kernel opens /dev/console
// for init before any devtmpfs is mounted, so an initramfs needs that node.
func (w *Writer) AddCharDevice(name string, perm os.FileMode, major, minor uint32) error {
	n, err := clean(name)
	if err != nil {
		return err
	}
	if err := w.claim(n); err != nil {
		return err
	}
	w.rdev = [2]uint32{major, minor}
	defer func() { w.rdev = [2]uint32{} }()
	return w.entry(n, modeCharDev|uint32(perm.Perm()), 1, nil, 0)
}

var zeros [4]byte

func pad4(n int64) int64 { return (4 - n%4) % 4 }

func (w *Writer) write(p []byte) error {
	if w.err != nil {
		return w.err
	}
	_, err := w.out.Write(p)
	if err != nil {
		w.err = fmt.Errorf("initramfs: write: %w", err)
		return w.err
	}
	w.n += int64(len(p))
	return nil
}

func (w *Writer) entry(name string, mode, nlink uint32, data io.Reader, size int64) error {
	if w.closed {
		return errors.New("initramfs: write after Close")
	}
	if w.err != nil {
		return w.err
	}
	ino := uint32(0)
	if name != trailerName {
		w.ino++
		ino = w.ino
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, w.opts.Mtime, uint32(size), 0, 0, w.rdev[0], w.rdev[1], len(name)+1, 0)
	if err := w.write([]byte(hdr + name + "\x00")); err != nil {
		return err
	}
	if err := w.write(zeros[:pad4(int64(len(hdr)+len(name)+1))]); err != nil {
		return err
	}
	if size > 0 {
		c, err := io.CopyN(w.out, data, size)
		w.n += c
		if err != nil {
			w.err = fmt.Errorf("initramfs: %s: %w", name, err)
			return w.err
		}
		if err := w.write(zeros[:pad4(size)]); err != nil {
			return err
		}
	}
	return nil
}

// Close writes the trailer, pads the archive to a 512-byte multiple (as
// cpio(1) does) and finishes the gzip stream. It does not close the
// underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	if err := w.entry(trailerName, 0, 1, nil, 0); err != nil {
		return err
	}
	w.closed = true
	if rem := w.n % 512; rem != 0 {
		if err := w.write(make([]byte, 512-rem)); err != nil {
			return err
		}
	}
	if w.gz != nil {
		if err := w.gz.Close(); err != nil {
			return fmt.Errorf("initramfs: gzip: %w", err)
		}
	}
	return w.err
}

// HostBusybox is where Debian's busybox-static installs its static binary.
const HostBusybox = "/bin/busybox"

// AddBusybox adds the host's static busybox (HostBusybox) at dest (for
// example "/bin/busybox") and a symlink to it for every applet that
// `busybox --list-full` names (e.g. bin/sh, sbin/poweroff, usr/bin/awk),
// skipping applets whose path is already in the archive. The symlinks are
// absolute (pointing at "/"+dest) and added in the order busybox lists them.
func AddBusybox(w *Writer, dest string) error {
	return AddBusyboxFrom(w, HostBusybox, dest)
}

// AddBusyboxFrom is AddBusybox with the busybox binary taken from hostPath.
// The binary must be statically linked (an initramfs has no libc).
func AddBusyboxFrom(w *Writer, hostPath, dest string) error {
	ef, err := elf.Open(hostPath)
	if err != nil {
		return fmt.Errorf("initramfs: busybox %s: %w", hostPath, err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			ef.Close()
			return fmt.Errorf("initramfs: busybox %s is dynamically linked (install busybox-static)", hostPath)
		}
	}
	ef.Close()
	out, err := exec.Command(hostPath, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("initramfs: %s --list-full: %w", hostPath, err)
	}
	d, err := clean(dest)
	if err != nil {
		return err
	}
	if err := w.AddFileFrom(d, hostPath); err != nil {
		return err
	}
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		n, err := clean(line)
		if err != nil {
			return err
		}
		if w.seen[n] {
			continue
		}
		if err := w.AddSymlink(n, "/"+d); err != nil {
			return err
		}
	}
	return nil
}

// AddSkeleton adds what every initramfs needs before its init runs: the
// given directories (mode 0755) and the /dev/console and /dev/null nodes the
// kernel and a shell expect before devtmpfs is mounted.
func AddSkeleton(w *Writer, dirs ...string) error {
	for _, d := range dirs {
		if err := w.AddDir(d, 0o755); err != nil {
			return err
		}
	}
	if err := w.AddCharDevice("/dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	return w.AddCharDevice("/dev/null", 0o666, 1, 3)
}

// BusyboxImage writes a complete small initramfs to out: /dev/console,
// empty /proc, /sys, /dev, /tmp, /root mount points, the host's static busybox with
// its applet links, and /init holding the given shell script (it should
// start with "#!/bin/sh"). With gz the archive is gzipped.
func BusyboxImage(out io.Writer, init string, gz bool) error {
	w, err := NewWriter(out, Options{Gzip: gz})
	if err != nil {
		return err
	}
	if err := AddSkeleton(w, "/dev", "/proc", "/sys", "/tmp", "/root", "/run"); err != nil {
		return err
	}
	if err := AddBusybox(w, "/bin/busybox"); err != nil {
		return err
	}
	if err := w.AddFile("/init", []byte(init), 0o755); err != nil {
		return err
	}
	return w.Close()
}
