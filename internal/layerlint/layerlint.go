// Package layerlint finds the shell code in a Yocto layer so it can be
// checked with `sh -n` and shellcheck: the shell functions of recipes and
// classes (.bb, .bbappend, .bbclass, .inc) and standalone scripts.
package layerlint

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Snippet is one shell function taken out of BitBake metadata, or a whole script.
type Snippet struct {
	File   string // path of the file it comes from
	Line   int    // 1-based line of the function header (1 for scripts)
	Name   string // function name as written (e.g. do_deploy:append:class-target), or "" for a script
	Script string // a POSIX sh script ready for sh -n / shellcheck
}

var (
	funcStart = regexp.MustCompile(`^(fakeroot\s+)?([A-Za-z_][A-Za-z0-9_\-]*(?::[A-Za-z0-9_\-${}.]+)*)\s*\(\)\s*\{\s*$`)
	inlinePy  = regexp.MustCompile(`\$\{@[^}]*\}`)
	bbVar     = regexp.MustCompile(`\$\{([^}]*)\}`)
	shName    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*([:#%/-].*|\[.*|)$`)
)

// header is put on top of every snippet: BitBake expands ${VAR} before the
// shell runs, so variables that look unassigned to shellcheck are fine.
const header = "#!/bin/sh\n# shellcheck disable=SC2154\n"

// Functions extracts the shell functions of one BitBake file.
func Functions(path string, data []byte) ([]Snippet, error) {
	var out []Snippet
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var cur *Snippet
	var body strings.Builder
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if cur == nil {
			if strings.HasPrefix(line, "python") || strings.HasPrefix(line, "def ") {
				continue
			}
			if m := funcStart.FindStringSubmatch(line); m != nil {
				cur = &Snippet{File: path, Line: n, Name: m[2]}
				body.Reset()
			}
			continue
		}
		if line == "}" {
			name := strings.NewReplacer(":", "_", "-", "_", "$", "_", "{", "_", "}", "_", ".", "_").Replace(cur.Name)
			cur.Script = header + fmt.Sprintf("# %s:%d %s\n%s() {\n%s}\n", path, cur.Line, cur.Name, name, body.String())
			out = append(out, *cur)
			cur = nil
			continue
		}
		body.WriteString(shellSafe(line))
		body.WriteByte('\n')
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: shell function %s has no closing \"}\" line", path, cur.Line, cur.Name)
	}
	return out, sc.Err()
}

// shellSafe rewrites BitBake-only syntax that is not shell: inline python
// ${@...} becomes a plain word, ${VAR:override} and ${VAR-with-dash} become
// ${BB_VAR} (BitBake expands them before the shell sees them).
func shellSafe(line string) string {
	line = inlinePy.ReplaceAllString(line, "BBPYTHON")
	return bbVar.ReplaceAllStringFunc(line, func(s string) string {
		inner := s[2 : len(s)-1]
		if shName.MatchString(inner) && !strings.ContainsAny(strings.SplitN(inner, ":", 2)[0], "-") {
			name := regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*`).FindString(inner)
			rest := inner[len(name):]
			if rest == "" || strings.HasPrefix(rest, ":-") || strings.HasPrefix(rest, ":=") || strings.HasPrefix(rest, ":+") ||
				strings.HasPrefix(rest, ":?") || strings.HasPrefix(rest, "#") || strings.HasPrefix(rest, "%") {
				return s
			}
			if strings.HasPrefix(rest, ":") { // ${VAR:override}
				return "${BB_" + name + "}"
			}
			return s
		}
		return "${BB_VAR}"
	})
}

// Collect walks a layer and returns every snippet: the shell functions of
// its BitBake files and every script (*.sh, files named init, and files
// starting with a #!/bin/sh or #!/bin/bash line).
func Collect(root string) ([]Snippet, error) {
	var out []Snippet
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch filepath.Ext(p) {
		case ".bb", ".bbappend", ".bbclass", ".inc":
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fns, err := Functions(p, data)
			if err != nil {
				return err
			}
			out = append(out, fns...)
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if filepath.Ext(p) == ".sh" || bytes.HasPrefix(data, []byte("#!/bin/sh")) || bytes.HasPrefix(data, []byte("#!/bin/bash")) || bytes.HasPrefix(data, []byte("#!/usr/bin/env sh")) {
			out = append(out, Snippet{File: p, Line: 1, Script: string(data)})
		}
		return nil
	})
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].File != out[j].File {
			return out[i].File < out[j].File
		}
		return out[i].Line < out[j].Line
	})
	return out, err
}

var assignRE = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)\s*(=|\?=|\?\?=|:=)\s*"([^"\\]*)"\s*$`)

// Assignments collects the single-line `VAR = "value"` assignments of the
// BitBake files (.bb, .bbappend, .bbclass, .inc, .conf) in dir, so a
// function can be checked with the values BitBake will put in it.
func Assignments(dir string) (map[string]string, error) {
	vars := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".bb", ".bbappend", ".bbclass", ".inc", ".conf":
		default:
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(data), "\n") {
			if m := assignRE.FindStringSubmatch(line); m != nil {
				vars[m[1]] = m[3]
			}
		}
	}
	return vars, nil
}

// Expand replaces ${VAR} in a snippet's script by the values in vars (other
// references stay), giving the text BitBake's own shell parser will see.
func Expand(script string, vars map[string]string) string {
	return bbVar.ReplaceAllStringFunc(script, func(s string) string {
		if v, ok := vars[s[2:len(s)-1]]; ok {
			return v
		}
		return s
	})
}
