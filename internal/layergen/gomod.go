package layergen

import (
	"archive/zip"
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
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

// URI is the SRC_URI entry, e.g.
// gomod://github.com/google/uuid;version=v1.6.0;sha256sum=<hex>.
func (m GoModule) URI() string {
	s := "gomod://" + m.Path + ";version=" + m.Version
	if m.Mod {
		s += ";mod=1"
	}
	return s + ";sha256sum=" + m.SHA256
}

// GoModules lists the module files a build of the module described by
// goSum needs, with the checksums the gomod fetcher wants. go.sum carries
// only the "h1:" directory hashes, which are not file checksums; the files
// themselves are read from the Go module download cache modCache
// (`go env GOMODCACHE`), and each one is first checked against its go.sum
// h1: hash, so a corrupt or foreign cache cannot slip a wrong checksum in.
//
// Every module version with a zip hash in go.sum becomes a zip entry; a
// version that has only a go.mod hash becomes a mod=1 entry. The result is
// sorted by path, then version.
func GoModules(goSum, modCache string) ([]GoModule, error) {
	f, err := os.Open(goSum)
	if err != nil {
		return nil, fmt.Errorf("go.sum %s: %w", goSum, err)
	}
	defer f.Close()
	type key struct{ path, version string }
	zipH1 := map[key]string{}
	modH1 := map[key]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 3 || !strings.HasPrefix(fields[2], "h1:") {
			return nil, fmt.Errorf("go.sum %s:%d: malformed line %q", goSum, n, sc.Text())
		}
		if v, ok := strings.CutSuffix(fields[1], "/go.mod"); ok {
			modH1[key{fields[0], v}] = fields[2]
		} else {
			zipH1[key{fields[0], fields[1]}] = fields[2]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("go.sum %s: %w", goSum, err)
	}
	var out []GoModule
	for k, h1 := range zipH1 {
		file := filepath.Join(modCache, "cache", "download", escapePath(k.path), "@v", k.version+".zip")
		got, err := zipHash1(file, k.path+"@"+k.version)
		if err != nil {
			return nil, fmt.Errorf("module %s@%s: %w (run `go mod download` first)", k.path, k.version, err)
		}
		if got != h1 {
			return nil, fmt.Errorf("module %s@%s: %s has hash %s, go.sum %s says %s", k.path, k.version, file, got, goSum, h1)
		}
		sum, err := fileSHA256(file)
		if err != nil {
			return nil, err
		}
		out = append(out, GoModule{Path: k.path, Version: k.version, SHA256: sum})
	}
	for k, h1 := range modH1 {
		if _, ok := zipH1[k]; ok {
			continue
		}
		file := filepath.Join(modCache, "cache", "download", escapePath(k.path), "@v", k.version+".mod")
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("module %s@%s go.mod: %w (run `go mod download -x all` first)", k.path, k.version, err)
		}
		if got := hash1([]hashed{{"go.mod", sha256.Sum256(data)}}); got != h1 {
			return nil, fmt.Errorf("module %s@%s: %s has hash %s, go.sum %s says %s", k.path, k.version, file, got, goSum, h1)
		}
		s := sha256.Sum256(data)
		out = append(out, GoModule{Path: k.path, Version: k.version, Mod: true, SHA256: hex.EncodeToString(s[:])})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Version < out[j].Version
	})
	return out, nil
}

// escapePath is the module cache's case encoding: each upper-case letter
// becomes '!' and its lower-case form.
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

// zipHash1 computes the h1: hash of a module zip whose files all sit under
// prefix@version/.
func zipHash1(file, prefix string) (string, error) {
	zr, err := zip.OpenReader(file)
	if err != nil {
		return "", fmt.Errorf("module zip %s: %w", file, err)
	}
	defer zr.Close()
	var files []hashed
	for _, zf := range zr.File {
		if !strings.HasPrefix(zf.Name, prefix+"/") {
			return "", fmt.Errorf("module zip %s: member %q is outside %s/", file, zf.Name, prefix)
		}
		rc, err := zf.Open()
		if err != nil {
			return "", fmt.Errorf("module zip %s: %s: %w", file, zf.Name, err)
		}
		h := sha256.New()
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return "", fmt.Errorf("module zip %s: %s: %w", file, zf.Name, err)
		}
		var s [32]byte
		copy(s[:], h.Sum(nil))
		files = append(files, hashed{zf.Name, s})
	}
	return hash1(files), nil
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
