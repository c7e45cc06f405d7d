// Package repro compares two trees of release artifacts (two independent
// builds' images/ directories) byte for byte, reports what differs and where,
// and, when they agree, writes the command a third party runs to reproduce
// the release.
package repro

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
)

// Kind says how one path differs between the two trees.
type Kind int

const (
	// MissingInA: the path exists only in tree B.
	MissingInA Kind = iota + 1
	// MissingInB: the path exists only in tree A.
	MissingInB
	// TypeMismatch: the path is a different kind of entry (file, directory,
	// symlink) in each tree.
	TypeMismatch
	// ContentDiffers: a regular file (or a symlink target) differs.
	ContentDiffers
)

func (k Kind) String() string {
	switch k {
	case MissingInA:
		return "missing in A"
	case MissingInB:
		return "missing in B"
	case TypeMismatch:
		return "type mismatch"
	case ContentDiffers:
		return "differs"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Difference is one path that does not agree between the trees.
type Difference struct {
	Path string // slash-separated, relative to the tree roots
	Kind Kind
	// Offset is the first differing byte of a regular file (ContentDiffers);
	// when one file is a prefix of the other it is the shorter one's size.
	// It is -1 when not applicable.
	Offset       int64
	SizeA, SizeB int64  // sizes of regular files (ContentDiffers), else 0
	Detail       string // e.g. the two symlink targets, or the two entry types
}

// File is a regular file that is identical in both trees.
type File struct {
	Path   string // slash-separated, relative to the tree roots
	Size   int64
	SHA256 string // hex
}

// Report is the result of comparing two trees.
type Report struct {
	A, B      string       // the tree roots as given
	Identical []File       // identical regular files, sorted by path
	Links     int          // identical symlinks
	Diffs     []Difference // sorted by path
}

// Same reports whether the trees agree completely and hold at least one file.
func (r *Report) Same() bool { return len(r.Diffs) == 0 && len(r.Identical) > 0 }

type entry struct {
	mode fs.FileMode // type bits only
}

// scan lists every entry below root (not root itself), keyed by
// slash-separated relative path.
func scan(root string) (map[string]entry, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("image tree %s: %w", root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("image tree %s: not a directory", root)
	}
	out := map[string]entry{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("image tree %s: %w", root, err)
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		out[filepath.ToSlash(rel)] = entry{mode: d.Type()}
		return nil
	})
	return out, err
}

func typeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m.IsRegular():
		return "regular file"
	}
	return "special file (" + m.String() + ")"
}

// Compare walks trees a and b and compares every entry: presence, type,
// symlink targets and the bytes of regular files (streamed, never held in
// memory whole). An error is returned only when a tree cannot be read.
func Compare(a, b string) (*Report, error) {
	ea, err := scan(a)
	if err != nil {
		return nil, err
	}
	eb, err := scan(b)
	if err != nil {
		return nil, err
	}
	paths := make([]string, 0, len(ea)+len(eb))
	for p := range ea {
		paths = append(paths, p)
	}
	for p := range eb {
		if _, ok := ea[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	r := &Report{A: a, B: b}
	for _, p := range paths {
		x, inA := ea[p]
		y, inB := eb[p]
		switch {
		case !inA:
			r.Diffs = append(r.Diffs, Difference{Path: p, Kind: MissingInA, Offset: -1, Detail: typeName(y.mode)})
			continue
		case !inB:
			r.Diffs = append(r.Diffs, Difference{Path: p, Kind: MissingInB, Offset: -1, Detail: typeName(x.mode)})
			continue
		case x.mode != y.mode:
			r.Diffs = append(r.Diffs, Difference{Path: p, Kind: TypeMismatch, Offset: -1,
				Detail: typeName(x.mode) + " in A, " + typeName(y.mode) + " in B"})
			continue
		}
		pa := filepath.Join(a, filepath.FromSlash(p))
		pb := filepath.Join(b, filepath.FromSlash(p))
		switch {
		case x.mode.IsDir():
			// children are compared on their own
		case x.mode&fs.ModeSymlink != 0:
			ta, err := os.Readlink(pa)
			if err != nil {
				return nil, fmt.Errorf("read link %s: %w", pa, err)
			}
			tb, err := os.Readlink(pb)
			if err != nil {
				return nil, fmt.Errorf("read link %s: %w", pb, err)
			}
			if ta != tb {
				r.Diffs = append(r.Diffs, Difference{Path: p, Kind: ContentDiffers, Offset: -1,
					Detail: fmt.Sprintf("symlink to %q in A, to %q in B", ta, tb)})
			} else {
				r.Links++
			}
		case x.mode.IsRegular():
			f, d, err := compareFiles(p, pa, pb)
			if err != nil {
				return nil, err
			}
			if d != nil {
				r.Diffs = append(r.Diffs, *d)
			} else {
				r.Identical = append(r.Identical, *f)
			}
		default:
			r.Diffs = append(r.Diffs, Difference{Path: p, Kind: TypeMismatch, Offset: -1,
				Detail: typeName(x.mode) + " is not a release artifact"})
		}
	}
	return r, nil
}

const chunk = 1 << 20

// compareFiles streams both files side by side, hashing A, and stops at the
// first differing byte.
func compareFiles(rel, pa, pb string) (*File, *Difference, error) {
	fa, err := os.Open(pa)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", pa, err)
	}
	defer fa.Close()
	fb, err := os.Open(pb)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", pb, err)
	}
	defer fb.Close()
	sa, err := fa.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("stat %s: %w", pa, err)
	}
	sb, err := fb.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("stat %s: %w", pb, err)
	}
	h := sha256.New()
	ba := make([]byte, chunk)
	bb := make([]byte, chunk)
	var off int64
	for {
		na, erra := io.ReadFull(fa, ba)
		if erra != nil && erra != io.EOF && !errors.Is(erra, io.ErrUnexpectedEOF) {
			return nil, nil, fmt.Errorf("read %s: %w", pa, erra)
		}
		nb, errb := io.ReadFull(fb, bb)
		if errb != nil && errb != io.EOF && !errors.Is(errb, io.ErrUnexpectedEOF) {
			return nil, nil, fmt.Errorf("read %s: %w", pb, errb)
		}
		n := min(na, nb)
		if !bytes.Equal(ba[:n], bb[:n]) {
			i := 0
			for ba[i] == bb[i] {
				i++
			}
			return nil, &Difference{Path: rel, Kind: ContentDiffers, Offset: off + int64(i), SizeA: sa.Size(), SizeB: sb.Size()}, nil
		}
		if na != nb {
			return nil, &Difference{Path: rel, Kind: ContentDiffers, Offset: off + int64(n), SizeA: sa.Size(), SizeB: sb.Size(),
				Detail: "one file is a prefix of the other"}, nil
		}
		h.Write(ba[:n])
		off += int64(n)
		if na < chunk {
			break
		}
	}
	return &File{Path: rel, Size: off, SHA256: hex.EncodeToString(h.Sum(nil))}, nil, nil
}

// WriteText prints the report for a person: one line per identical file, one
// per difference (with the first differing byte of each differing file), and
// a summary line.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "comparing A=%s\n          B=%s\n", r.A, r.B)
	for _, f := range r.Identical {
		fmt.Fprintf(&b, "  same     %s  (%d bytes, sha256 %s)\n", f.Path, f.Size, f.SHA256)
	}
	for _, d := range r.Diffs {
		switch d.Kind {
		case ContentDiffers:
			if d.Offset >= 0 {
				fmt.Fprintf(&b, "  DIFFERS  %s: first differing byte at offset %d (0x%x); size %d in A, %d in B", d.Path, d.Offset, d.Offset, d.SizeA, d.SizeB)
				if d.Detail != "" {
					fmt.Fprintf(&b, "; %s", d.Detail)
				}
				b.WriteString("\n")
			} else {
				fmt.Fprintf(&b, "  DIFFERS  %s: %s\n", d.Path, d.Detail)
			}
		case MissingInA:
			fmt.Fprintf(&b, "  MISSING  %s: %s only in B (%s)\n", d.Path, d.Detail, r.B)
		case MissingInB:
			fmt.Fprintf(&b, "  MISSING  %s: %s only in A (%s)\n", d.Path, d.Detail, r.A)
		default:
			fmt.Fprintf(&b, "  TYPE     %s: %s\n", d.Path, d.Detail)
		}
	}
	switch {
	case r.Same():
		fmt.Fprintf(&b, "REPRODUCIBLE: %d files identical", len(r.Identical))
		if r.Links > 0 {
			fmt.Fprintf(&b, ", %d symlinks identical", r.Links)
		}
		b.WriteString("\n")
	case len(r.Diffs) == 0:
		b.WriteString("NOT CHECKED: the trees hold no files\n")
	default:
		fmt.Fprintf(&b, "NOT REPRODUCIBLE: %d difference(s), %d file(s) identical", len(r.Diffs), len(r.Identical))
		if first := r.firstContentDiff(); first != nil {
			fmt.Fprintf(&b, "; first differing file %s at byte %d", first.Path, first.Offset)
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) firstContentDiff() *Difference {
	for i := range r.Diffs {
		if r.Diffs[i].Kind == ContentDiffers && r.Diffs[i].Offset >= 0 {
			return &r.Diffs[i]
		}
	}
	return nil
}

// DefaultRepoURL is the public repository a third party clones.
const DefaultRepoURL = "https://github.com/Dstack-TEE/meta-dstack.git"

// ReproduceCommand returns the instructions a third party follows to rebuild
// the release at commit and check it: a shell script that clones, checks
// out and builds, then runs `sha256sum -c` over the expected SHA-256 of
// every artifact (paths relative to images/).
func ReproduceCommand(repoURL, commit string, files []File) string {
	if repoURL == "" {
		repoURL = DefaultRepoURL
	}
	var b strings.Builder
	b.WriteString("# Reproduce this release: build it in the pinned container, then check\n")
	b.WriteString("# every artifact against the SHA-256 sums the two reference builds agreed on.\n")
	fmt.Fprintf(&b, "git clone %s meta-dstack\n", repoURL)
	b.WriteString("cd meta-dstack\n")
	fmt.Fprintf(&b, "git checkout %s\n", commit)
	b.WriteString("./repro-build/repro-build.sh -n\n")
	b.WriteString("cd repro-build/build-a/images\n")
	b.WriteString("sha256sum -c <<'EOF'\n")
	for _, f := range files {
		fmt.Fprintf(&b, "%s  %s\n", f.SHA256, f.Path)
	}
	b.WriteString("EOF\n")
	return b.String()
}

// WriteReproduce writes ReproduceCommand's text to path and the bare
// checksum list to sumsPath (either may be empty to skip it), atomically.
// It refuses when the report is not a success.
func WriteReproduce(r *Report, repoURL, commit, path, sumsPath string) error {
	if !r.Same() {
		return errors.New("reproduce instructions are only written when both builds agree")
	}
	if commit == "" {
		return errors.New("reproduce instructions need the commit that was built")
	}
	if path != "" {
		if err := writeText(path, ReproduceCommand(repoURL, commit, r.Identical)); err != nil {
			return err
		}
	}
	if sumsPath != "" {
		var b strings.Builder
		for _, f := range r.Identical {
			fmt.Fprintf(&b, "%s  %s\n", f.SHA256, f.Path)
		}
		if err := writeText(sumsPath, b.String()); err != nil {
			return err
		}
	}
	return nil
}

// writeText writes text to path atomically.
func writeText(path, text string) error { return atomicfile.WriteFile(path, []byte(text), 0o644) }
