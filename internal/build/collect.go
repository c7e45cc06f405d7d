package build

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
)

// DeployDirs lists where the image class leaves imgpost dist output in every
// multiconfig's TMPDIR: <BuildDir>/tmp*/deploy/images/<Machine>/dstack-dist
// (the class's sstate output directory) and the deploy directory itself,
// sorted.
func (c *Collect) DeployDirs() ([]string, error) {
	base := filepath.Join(c.BuildDir, "tmp*", "deploy", "images", c.Machine)
	var dirs []string
	for _, pat := range []string{base, filepath.Join(base, "dstack-dist")} {
		m, err := filepath.Glob(pat)
		if err != nil {
			return nil, err
		}
		for _, d := range m {
			if st, err := os.Stat(d); err == nil && st.IsDir() {
				dirs = append(dirs, d)
			}
		}
	}
	sort.Strings(dirs)
	return dirs, nil
}

// CollectOutputs copies the imgpost dist outputs of every deploy directory
// into ImagesDir in the seed's layout: each <dist>-<ver>/ directory holding a
// metadata.json, plus <dist>-<ver>.tar.gz and (unless SkipGCP)
// <dist>-<ver>-gcp.tar.gz beside it. Files are hard-linked when possible,
// else copied; each lands under its final name only when complete. It returns
// one line per collected item.
func CollectOutputs(c *Collect) ([]string, error) {
	dirs, err := c.DeployDirs()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.ImagesDir, 0o755); err != nil {
		return nil, fmt.Errorf("images directory %s: %w", c.ImagesDir, err)
	}
	var done []string
	from := map[string]string{} // collected name -> its source, to catch two flavors clashing
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			return nil, fmt.Errorf("deploy directory %s: %w", d, err)
		}
		for _, e := range ents {
			src := filepath.Join(d, e.Name())
			st, err := os.Stat(src) // follows BitBake's "latest" symlinks
			if err != nil || !st.IsDir() {
				continue
			}
			if _, err := os.Stat(filepath.Join(src, "metadata.json")); err != nil {
				continue
			}
			name := e.Name()
			if prev, dup := from[name]; dup {
				return nil, fmt.Errorf("two builds produced %s: %s and %s (give the flavors distinct dist names)", name, prev, src)
			}
			from[name] = src
			if err := copyTree(src, filepath.Join(c.ImagesDir, name), c.SkipGCP); err != nil {
				return nil, err
			}
			done = append(done, fmt.Sprintf("%s/ <- %s", filepath.Join(c.ImagesDir, name), src))
			tars := []string{name + ".tar.gz"}
			if !c.SkipGCP {
				tars = append(tars, name+"-gcp.tar.gz")
			}
			for _, t := range tars {
				ts := filepath.Join(d, t)
				if _, err := os.Stat(ts); err != nil {
					continue
				}
				if err := placeFile(ts, filepath.Join(c.ImagesDir, t)); err != nil {
					return nil, err
				}
				done = append(done, fmt.Sprintf("%s <- %s", filepath.Join(c.ImagesDir, t), ts))
			}
		}
	}
	if len(done) == 0 {
		return nil, fmt.Errorf("BitBake finished but no imgpost dist output was found (a <dist>-<version>/metadata.json) in %s",
			filepath.Join(c.BuildDir, "tmp*", "deploy", "images", c.Machine, "dstack-dist"))
	}
	return done, nil
}

// copyTree copies directory src to dst: it builds a temporary sibling and
// swaps it in, so dst is never half-populated.
func copyTree(src, dst string, skipGCP bool) error {
	parent := filepath.Dir(dst)
	tmp, forget, err := atomicfile.MkdirTemp(parent, "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return fmt.Errorf("collect %s: %w", dst, err)
	}
	defer forget()
	defer os.RemoveAll(tmp)
	err = filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("collect %s: %w", p, err)
		}
		r, _ := filepath.Rel(src, p)
		if r == "." {
			return nil
		}
		if skipGCP && (r == "gcp" || strings.HasPrefix(r, "gcp"+string(filepath.Separator))) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		out := filepath.Join(tmp, r)
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("collect %s: %w", p, err)
		}
		if st.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		return placeFile(p, out)
	})
	if err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := atomicfile.ReplaceDir(tmp, dst); err != nil {
		return fmt.Errorf("collect: %w", err)
	}
	return nil
}

// placeFile puts a copy of src at dst: a hard link when both are on one
// filesystem (disk images are large), else a streamed copy; atomically.
func placeFile(src, dst string) error {
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return fmt.Errorf("collect %s: %w", src, err)
	}
	err = atomicfile.Link(real, dst)
	var le *os.LinkError
	if !errors.As(err, &le) {
		if err != nil {
			return fmt.Errorf("collect: %w", err)
		}
		return nil
	}
	st, err := os.Stat(real)
	if err != nil {
		return fmt.Errorf("collect %s: %w", src, err)
	}
	if _, err := atomicfile.Copy(dst, real, st.Mode().Perm(), nil); err != nil {
		return fmt.Errorf("collect: %w", err)
	}
	return nil
}
