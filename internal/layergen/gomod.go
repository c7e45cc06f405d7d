package layergen

import (
	"archive/zip"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"unicode"
)

// GoModule is one `gomod://` SRC_URI entry for BitBake's gomod fetcher:
// the module zip (Mod false) or only its go.mod file (Mod true), with the
// SHA-256 of that file as downloaded from a module proxy.
type GoModule struct {
	Path    string // module path, e.g. github.com/diskfs/go-diskfs
	Version string // e.g. v1.9.4
	Mod     bool   // only the go.mod file (mod=1)
	SHA256  string // hex SHA-256 of the .zip (or .mod) file
}

// URI is the SRC_URI entry in the form openembedded-core's
// go-mod-update-modules class writes, e.g.
// gomod://github.com/google/uuid;version=v1.6.0;sha256sum=<hex>, or
// gomod://<path>;version=<v>;mod=1;sha256sum=<hex> for a go.mod-only entry.
func (m GoModule) URI() string {
	s := "gomod://" + m.Path + ";version=" + m.Version
	if m.Mod {
		s += ";mod=1"
	}
	return s + ";sha256sum=" + m.SHA256
}

// GoBuild is the build the gomod entries are for: the packages the recipe
// compiles (relative to the module root) and the environment it compiles
// them with.
type GoBuild struct {
	Packages []string
	Env      []string
}

// ImgpostBuild is how the imgpost-native recipe builds imgpost: a static
// linux/amd64 binary without build tags.
var ImgpostBuild = GoBuild{
	Packages: []string{"./tools/imgpost"},
	Env:      []string{"GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0"},
}

// GoModules lists the module files that building b in the Go module at
// repo needs, as `gomod://` entries: a zip entry for every module the build
// compiles packages from, and a go.mod-only (mod=1) entry for every other
// module whose go.mod the go command reads while loading the module graph.
// It follows openembedded-core's go-mod-update-modules class: it runs
// `go list -deps` over the packages with an empty module cache and takes
// the .zip and .mod files the go command put there. So the list depends only
// on go.mod, go.sum and the packages' imports, never on what the user's
// module cache happens to hold.
//
// The user's module cache (`go env GOMODCACHE`) is only a source: a first
// `go list` there downloads what is missing through GOPROXY, and the empty
// cache is then filled from it (a file:// proxy in front of GOPROXY). Both
// runs use GOFLAGS=-mod=readonly and GOWORK=off, so go.mod and go.sum are
// never written. Every file is checked against its go.sum h1: hash (the go
// command does too) and its SHA-256 is what the fetcher checks. The result
// is sorted the way the class sorts it (see SortModules).
func GoModules(repo string, b GoBuild) ([]GoModule, error) {
	goSum := filepath.Join(repo, "go.sum")
	if _, err := os.Stat(goSum); err != nil {
		return nil, fmt.Errorf("go.sum %s: %w", goSum, err)
	}
	envOut, err := goCmd(repo, nil, "env", "GOMODCACHE", "GOPROXY")
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimRight(envOut, "\n"), "\n")
	if len(lines) != 2 || lines[0] == "" {
		return nil, fmt.Errorf("go env GOMODCACHE GOPROXY: unexpected output %q", envOut)
	}
	userCache, userProxy := lines[0], lines[1]

	list := append([]string{"list", "-deps", "-f", "{{with .Module}}{{.Path}}@{{.Version}}{{end}}"}, b.Packages...)
	// Fill the user's cache (downloading what is missing).
	if _, err := goCmd(repo, append(append([]string{}, b.Env...), "GOFLAGS=-mod=readonly", "GOWORK=off"), list...); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "layergen-gomod-")
	if err != nil {
		return nil, err
	}
	defer removeModCache(tmp)
	proxy := "file://" + filepath.ToSlash(filepath.Join(userCache, "cache", "download"))
	if userProxy != "" {
		proxy += "," + userProxy
	}
	env := append(append([]string{}, b.Env...),
		"GOMODCACHE="+tmp, "GOPROXY="+proxy, "GOFLAGS=-mod=readonly -modcacherw", "GOWORK=off")
	if _, err := goCmd(repo, env, list...); err != nil {
		return nil, err
	}
	return CollectModules(filepath.Join(tmp, "cache", "download"), goSum)
}

// goCmd runs the go command in dir with extra environment settings and
// returns its standard output; an error carries its standard error.
func goCmd(dir string, env []string, args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s (in %s, %s): %w\n%s", strings.Join(args, " "), dir, strings.Join(env, " "), err, stderr.Bytes())
	}
	return string(out), nil
}

// removeModCache removes a module cache; the go command leaves its
// extracted module directories read-only unless told otherwise.
func removeModCache(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	os.RemoveAll(dir)
}

// GoSum holds the h1: hashes of a go.sum file.
type GoSum struct {
	File string            // the go.sum file, for messages
	Zip  map[string]string // "path@version" -> h1 of the module zip
	Mod  map[string]string // "path@version" -> h1 of its go.mod
}

// ReadGoSum parses a go.sum file.
func ReadGoSum(file string) (*GoSum, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("go.sum %s: %w", file, err)
	}
	defer f.Close()
	s := &GoSum{File: file, Zip: map[string]string{}, Mod: map[string]string{}}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 3 || !strings.HasPrefix(fields[2], "h1:") {
			return nil, fmt.Errorf("go.sum %s:%d: malformed line %q", file, n, sc.Text())
		}
		if v, ok := strings.CutSuffix(fields[1], "/go.mod"); ok {
			s.Mod[fields[0]+"@"+v] = fields[2]
		} else {
			s.Zip[fields[0]+"@"+fields[1]] = fields[2]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("go.sum %s: %w", file, err)
	}
	return s, nil
}

// CollectModules turns the module files under download (a module cache's
// cache/download directory) into gomod entries, the way the
// go-mod-update-modules class does: each <module>/@v/<version>.zip is a zip
// entry; a <version>.mod without a zip beside it is a go.mod-only entry.
// Every zip must match its go.sum h1: hash and so must its go.mod (the one
// inside the zip, which the gomod fetcher unpacks next to it), and every
// go.mod-only file its go.sum /go.mod hash; a file go.sum does not list is an
// error. The go command's own toolchain downloads (golang.org/toolchain) are
// not module dependencies and are left out.
func CollectModules(download, goSum string) ([]GoModule, error) {
	sum, err := ReadGoSum(goSum)
	if err != nil {
		return nil, err
	}
	var out []GoModule
	err = filepath.WalkDir(download, func(dir string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || d.Name() != "@v" {
			return nil
		}
		rel, err := filepath.Rel(download, filepath.Dir(dir))
		if err != nil {
			return err
		}
		mod, err := unescapePath(filepath.ToSlash(rel))
		if err != nil {
			return fmt.Errorf("module cache %s: %w", dir, err)
		}
		if mod == "golang.org/toolchain" {
			return filepath.SkipDir
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		zips := map[string]bool{}
		for _, e := range ents {
			if v, ok := strings.CutSuffix(e.Name(), ".zip"); ok {
				zips[v] = true
			}
		}
		for _, e := range ents {
			name := e.Name()
			ext := filepath.Ext(name)
			if ext != ".zip" && ext != ".mod" {
				continue
			}
			escVer := strings.TrimSuffix(name, ext)
			if ext == ".mod" && zips[escVer] {
				continue
			}
			ver, err := unescapePath(escVer)
			if err != nil {
				return fmt.Errorf("module cache %s: %w", filepath.Join(dir, name), err)
			}
			m, err := checkFile(sum, filepath.Join(dir, name), mod, ver, ext == ".mod")
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		return filepath.SkipDir
	})
	if err != nil {
		return nil, fmt.Errorf("module files in %s: %w", download, err)
	}
	SortModules(out)
	return out, nil
}

// checkFile verifies one module file against go.sum and returns its entry.
func checkFile(sum *GoSum, file, mod, ver string, modOnly bool) (GoModule, error) {
	key := mod + "@" + ver
	wantMod, hasMod := sum.Mod[key]
	if modOnly {
		if !hasMod {
			return GoModule{}, fmt.Errorf("module %s: go.sum %s has no %s/go.mod line for %s", key, sum.File, ver, file)
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return GoModule{}, err
		}
		if got := hash1([]hashed{{"go.mod", sha256.Sum256(data)}}); got != wantMod {
			return GoModule{}, fmt.Errorf("module %s: %s has hash %s, go.sum %s says %s", key, file, got, sum.File, wantMod)
		}
		s := sha256.Sum256(data)
		return GoModule{Path: mod, Version: ver, Mod: true, SHA256: hex.EncodeToString(s[:])}, nil
	}
	wantZip, ok := sum.Zip[key]
	if !ok {
		return GoModule{}, fmt.Errorf("module %s: go.sum %s has no line for %s", key, sum.File, file)
	}
	got, goMod, err := zipHash1(file, key)
	if err != nil {
		return GoModule{}, fmt.Errorf("module %s: %w", key, err)
	}
	if got != wantZip {
		return GoModule{}, fmt.Errorf("module %s: %s has hash %s, go.sum %s says %s", key, file, got, sum.File, wantZip)
	}
	// The fetcher unpacks the zip's go.mod (or a synthesized one) as the
	// module's .mod file, which the go command checks against go.sum.
	if goMod == nil {
		goMod = []byte("module " + mod + "\n")
	}
	if !hasMod {
		return GoModule{}, fmt.Errorf("module %s: go.sum %s has no %s/go.mod line", key, sum.File, ver)
	}
	if got := hash1([]hashed{{"go.mod", sha256.Sum256(goMod)}}); got != wantMod {
		return GoModule{}, fmt.Errorf("module %s: the go.mod in %s has hash %s, go.sum %s says %s", key, file, got, sum.File, wantMod)
	}
	sha, err := fileSHA256(file)
	if err != nil {
		return GoModule{}, err
	}
	return GoModule{Path: mod, Version: ver, SHA256: sha}, nil
}

// SortModules sorts entries as the go-mod-update-modules class sorts its
// SRC_URI lines: by the URI with ';' read as ' ' and '/' as '!', so a
// module path sorts before the longer paths it is a prefix of.
func SortModules(mods []GoModule) {
	fold := strings.NewReplacer(";", " ", "/", "!")
	sort.Slice(mods, func(i, j int) bool {
		return fold.Replace(mods[i].URI()) < fold.Replace(mods[j].URI())
	})
}

// escapePath is the module cache's (and module proxy protocol's) case
// encoding: each upper-case letter becomes '!' and its lower-case form.
func escapePath(p string) string {
	var b strings.Builder
	for _, r := range p {
		if unicode.IsUpper(r) {
			b.WriteByte('!')
			b.WriteRune(unicode.ToLower(r))
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// unescapePath undoes escapePath.
func unescapePath(p string) (string, error) {
	var b strings.Builder
	bang := false
	for _, r := range p {
		switch {
		case bang:
			if r < 'a' || r > 'z' {
				return "", fmt.Errorf("bad escaped path %q", p)
			}
			b.WriteRune(unicode.ToUpper(r))
			bang = false
		case r == '!':
			bang = true
		case unicode.IsUpper(r):
			return "", fmt.Errorf("bad escaped path %q: unescaped upper-case letter", p)
		default:
			b.WriteRune(r)
		}
	}
	if bang {
		return "", fmt.Errorf("bad escaped path %q", p)
	}
	return b.String(), nil
}

type hashed struct {
	name string
	sum  [32]byte
}

// hash1 is Go's dirhash "h1:" hash: SHA-256 over the lines
// "<hex sha256>  <name>\n" of the files sorted by name, base64-encoded.
func hash1(files []hashed) string {
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%x  %s\n", f.sum, f.name)
	}
	return "h1:" + base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// maxGoMod bounds the go.mod read from a module zip.
const maxGoMod = 16 << 20

// zipHash1 computes the h1: hash of a module zip whose files all sit under
// prefix/ (module@version/), and returns the zip's top-level go.mod (nil if
// it has none).
func zipHash1(file, prefix string) (string, []byte, error) {
	zr, err := zip.OpenReader(file)
	if err != nil {
		return "", nil, fmt.Errorf("module zip %s: %w", file, err)
	}
	defer zr.Close()
	var files []hashed
	var goMod []byte
	for _, zf := range zr.File {
		if !strings.HasPrefix(zf.Name, prefix+"/") {
			return "", nil, fmt.Errorf("module zip %s: member %q is outside %s/", file, zf.Name, prefix)
		}
		rc, err := zf.Open()
		if err != nil {
			return "", nil, fmt.Errorf("module zip %s: %s: %w", file, zf.Name, err)
		}
		h := sha256.New()
		var w io.Writer = h
		var buf bytes.Buffer
		isGoMod := zf.Name == prefix+"/go.mod"
		if isGoMod {
			w = io.MultiWriter(h, &limitedBuffer{&buf, maxGoMod})
		}
		_, err = io.Copy(w, rc)
		rc.Close()
		if err != nil {
			return "", nil, fmt.Errorf("module zip %s: %s: %w", file, zf.Name, err)
		}
		if isGoMod {
			goMod = buf.Bytes()
		}
		var s [32]byte
		copy(s[:], h.Sum(nil))
		files = append(files, hashed{zf.Name, s})
	}
	return hash1(files), goMod, nil
}

// limitedBuffer is a bytes.Buffer that refuses to grow past max bytes.
type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.b.Len()+len(p) > l.max {
		return 0, fmt.Errorf("go.mod larger than %d bytes", l.max)
	}
	return l.b.Write(p)
}

func fileSHA256(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
