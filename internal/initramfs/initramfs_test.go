package initramfs

import (
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// build writes a small archive with every entry kind.
func build(t *testing.T, opts Options, host string) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error { return w.AddDir("/dev", 0o755) },
		func() error { return w.AddFile("/init", []byte("#!/bin/sh\necho hi\n"), 0o755) },
		func() error { return w.AddFile("etc/deep/nested/conf", []byte("x=1"), 0o644) }, // parents implied
		func() error { return w.AddFile("/empty", nil, 0o600) },
		func() error { return w.AddSymlink("/bin/sh", "busybox") },
		func() error { return w.AddFileFrom("/data/blob", host) },
		func() error { return w.AddDir("/etc", 0o700) }, // exists already: no-op
		func() error { return w.AddCharDevice("/dev/console", 0o600, 5, 1) },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestGNUCpioReadsIt checks the archive against GNU cpio: listing, modes,
// ownership, mtime and extracted contents.
func TestGNUCpioReadsIt(t *testing.T) {
	testutil.Need(t, "cpio")
	dir := t.TempDir()
	host := filepath.Join(dir, "host.bin")
	testutil.WriteRandom(t, host, 10007, 3)
	if err := os.Chmod(host, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"plain", Options{}},
		{"gzip", Options{Gzip: true}},
		{"mtime", Options{Mtime: 1700000000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := build(t, tc.opts, host)
			if b := build(t, tc.opts, host); !bytes.Equal(a, b) {
				t.Fatal("two runs differ")
			}
			raw := a
			if tc.opts.Gzip {
				if a[0] != 0x1f || a[1] != 0x8b {
					t.Fatal("not gzip")
				}
				// header: flags (no FNAME), MTIME zero
				if a[3] != 0 || !bytes.Equal(a[4:8], []byte{0, 0, 0, 0}) {
					t.Fatalf("gzip header carries name/mtime: % x", a[:10])
				}
				zr, err := gzip.NewReader(bytes.NewReader(a))
				if err != nil {
					t.Fatal(err)
				}
				var out bytes.Buffer
				if _, err := out.ReadFrom(zr); err != nil {
					t.Fatal(err)
				}
				raw = out.Bytes()
			}
			if len(raw)%512 != 0 {
				t.Fatalf("archive length %d not a 512 multiple", len(raw))
			}
			ext := filepath.Join(t.TempDir(), "x")
			os.Mkdir(ext, 0o755)
			cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
			cmd.Dir = ext
			cmd.Stdin = bytes.NewReader(raw)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("cpio -i: %v\n%s", err, out)
			}
			list := exec.Command("cpio", "-t", "-v", "--quiet", "--numeric-uid-gid")
			list.Stdin = bytes.NewReader(raw)
			lout, err := list.Output()
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(lout)), "\n")
			var names []string
			for _, l := range lines {
				f := strings.Fields(l)
				if f[2] != "0" || f[3] != "0" {
					t.Errorf("owner not 0:0: %s", l)
				}
				names = append(names, f[len(f)-1])
				if f[0][0] == 'c' {
					// crw------- 1 0 0 5, 1 Jan 1 1970 dev/console
					if f[0] != "crw-------" || f[4] != "5," || f[5] != "1" {
						t.Errorf("device node: %s", l)
					}
				}
				if f[0][0] == 'l' {
					names[len(names)-1] = f[len(f)-3]
				}
			}
			want := "dev init etc etc/deep etc/deep/nested etc/deep/nested/conf empty bin bin/sh data data/blob dev/console"
			if got := strings.Join(names, " "); got != want {
				t.Fatalf("order:\n got %s\nwant %s", got, want)
			}
			checks := []struct {
				path string
				mode os.FileMode
				data string
			}{
				{"init", 0o755, "#!/bin/sh\necho hi\n"},
				{"etc/deep/nested/conf", 0o644, "x=1"},
				{"empty", 0o600, ""},
				{"dev", os.ModeDir | 0o755, ""},
				{"etc", os.ModeDir | 0o755, ""},
			}
			for _, c := range checks {
				st, err := os.Lstat(filepath.Join(ext, c.path))
				if err != nil {
					t.Fatal(err)
				}
				if st.Mode() != c.mode {
					t.Errorf("%s: mode %v want %v", c.path, st.Mode(), c.mode)
				}
				// GNU cpio restores directory mtimes before filling them; check files only.
				if !st.IsDir() && st.ModTime().Unix() != int64(tc.opts.Mtime) {
					t.Errorf("%s: mtime %d want %d", c.path, st.ModTime().Unix(), tc.opts.Mtime)
				}
				if !st.IsDir() {
					b, _ := os.ReadFile(filepath.Join(ext, c.path))
					if string(b) != c.data {
						t.Errorf("%s: contents %q", c.path, b)
					}
				}
			}
			if l, err := os.Readlink(filepath.Join(ext, "bin/sh")); err != nil || l != "busybox" {
				t.Errorf("symlink: %q %v", l, err)
			}
			got, _ := os.ReadFile(filepath.Join(ext, "data/blob"))
			want2, _ := os.ReadFile(host)
			if !bytes.Equal(got, want2) {
				t.Error("AddFileFrom contents differ")
			}
			if st, _ := os.Stat(filepath.Join(ext, "data/blob")); st.Mode().Perm() != 0o640 {
				t.Errorf("AddFileFrom perm %v", st.Mode().Perm())
			}
		})
	}
}

func TestBadInputs(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		do   func(w *Writer) error
	}{
		{"duplicate", func(w *Writer) error { w.AddFile("a", nil, 0o644); return w.AddFile("/a", nil, 0o644) }},
		{"root as file", func(w *Writer) error { return w.AddFile("/", nil, 0o644) }},
		{"empty name", func(w *Writer) error { return w.AddFile("", nil, 0o644) }},
		{"NUL", func(w *Writer) error { return w.AddFile("a\x00b", nil, 0o644) }},
		{"empty target", func(w *Writer) error { return w.AddSymlink("l", "") }},
		{"missing host", func(w *Writer) error { return w.AddFileFrom("x", filepath.Join(dir, "nope")) }},
		{"host dir", func(w *Writer) error { return w.AddFileFrom("x", dir) }},
		{"dynamic busybox", func(w *Writer) error { return AddBusyboxFrom(w, "/bin/ls", "bin/busybox") }},
		{"after close", func(w *Writer) error { w.Close(); return w.AddFile("late", nil, 0o644) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, _ := NewWriter(&bytes.Buffer{}, Options{})
			if err := c.do(w); err == nil {
				t.Fatal("accepted")
			} else {
				t.Log(err)
			}
		})
	}
}

func TestBusybox(t *testing.T) {
	testutil.Need(t, "cpio")
	testutil.NeedFile(t, HostBusybox, "busybox-static")
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, Options{})
	if err := w.AddFile("/init", []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := AddBusybox(w, "/bin/busybox"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ext := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = ext
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	list, err := exec.Command(HostBusybox, "--list-full").Output()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range strings.Fields(string(list)) {
		if a == "bin/busybox" {
			continue
		}
		l, err := os.Readlink(filepath.Join(ext, a))
		if err != nil || l != "/bin/busybox" {
			t.Fatalf("applet %s: %q %v", a, l, err)
		}
		n++
	}
	if n < 100 {
		t.Fatalf("only %d applets", n)
	}
	// The extracted binary runs (it is the host's static busybox).
	got, _ := os.ReadFile(filepath.Join(ext, "bin/busybox"))
	want, _ := os.ReadFile(HostBusybox)
	if !bytes.Equal(got, want) {
		t.Fatal("busybox binary differs")
	}
}
