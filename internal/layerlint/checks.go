package layerlint

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// MetadataFiles lists the BitBake files of a layer (.bb, .bbappend,
// .bbclass, .inc, and the .conf files under a conf/ directory), sorted, with
// their statements. A .conf elsewhere (a recipe's files/, say an sshd or
// journald drop-in) is a file the recipe installs, not BitBake syntax.
func MetadataFiles(root string) (map[string][]Statement, []string, error) {
	files := map[string][]Statement{}
	var names []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !isMetadata(root, p) {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sts, err := ParseStatements(p, data)
		if err != nil {
			return err
		}
		files[p] = sts
		names = append(names, p)
		return nil
	})
	sort.Strings(names)
	return files, names, err
}

// isMetadata says whether BitBake parses the file at p in the layer at root.
func isMetadata(root, p string) bool {
	switch filepath.Ext(p) {
	case ".bb", ".bbappend", ".bbclass", ".inc":
		return true
	case ".conf":
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return false
		}
		for _, part := range strings.Split(filepath.ToSlash(filepath.Dir(rel)), "/") {
			if part == "conf" {
				return true
			}
		}
	}
	return false
}

// OrigEnvProblems reports every use of BB_ORIGENV (BitBake's copy of the
// environment it was started in) that would make a task hash depend on it.
// BB_ORIGENV is a datastore object whose text holds a memory address, so a
// variable or function reading it has a signature that differs between
// BitBake processes ("the basehash value changed ... The metadata is not
// deterministic") unless it excludes BB_ORIGENV from its dependencies
// (VAR[vardepsexclude]) and, for a variable, gives a stable
// VAR[vardepvalue] in place of the value taken from the environment.
func OrigEnvProblems(path string, sts []Statement) []string {
	flags := map[string]string{}
	for _, s := range sts {
		if s.Var != "" && s.Flag != "" {
			flags[s.Var+"["+s.Flag+"]"] += " " + s.Value
		}
	}
	var out []string
	for _, s := range sts {
		var owner, text string
		switch {
		case s.Func != "" || s.Python:
			owner, text = s.Func, s.Body
		case s.Var != "" && s.Flag == "":
			owner, text = s.Var, s.Value
		default:
			continue
		}
		if !strings.Contains(text, "BB_ORIGENV") {
			continue
		}
		if owner == "" {
			out = append(out, fmt.Sprintf("%s:%d: an anonymous python function reads BB_ORIGENV; do it in a named function with [vardepsexclude] = \"BB_ORIGENV\"", path, s.Line))
			continue
		}
		if !containsWord(flags[owner+"[vardepsexclude]"], "BB_ORIGENV") {
			out = append(out, fmt.Sprintf("%s:%d: %s reads BB_ORIGENV without %s[vardepsexclude] += \"BB_ORIGENV\": its task hashes change between BitBake processes", path, s.Line, owner, owner))
		}
		if s.Var != "" && strings.TrimSpace(flags[owner+"[vardepvalue]"]) == "" {
			out = append(out, fmt.Sprintf("%s:%d: %s reads BB_ORIGENV without a stable %s[vardepvalue]", path, s.Line, owner, owner))
		}
	}
	return out
}

func containsWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if f == w {
			return true
		}
	}
	return false
}

// AppendProblems reports every statement of a .bbappend that is not scoped
// by one of the given overrides (the layer's machine or distro): a layer
// someone adds to their build must change nothing in the recipes it appends
// until its machine or distro is selected. An assignment or function counts
// as scoped when one of its override components (after the first ':') is
// one of overrides; directives (inherit, require, addtask, ...) and
// anonymous python cannot be scoped this way and are reported.
func AppendProblems(path string, sts []Statement, overrides []string) []string {
	ok := map[string]bool{}
	for _, o := range overrides {
		ok[o] = true
	}
	scoped := func(name string) bool {
		parts := strings.Split(name, ":")
		for _, p := range parts[1:] {
			if ok[p] {
				return true
			}
		}
		return false
	}
	var out []string
	for _, s := range sts {
		switch {
		case s.Directive != "":
			out = append(out, fmt.Sprintf("%s:%d: %s in a bbappend applies to every machine and distro", path, s.Line, s.Directive))
		case s.Func != "" || s.Python:
			if !scoped(s.Func) {
				name := s.Func
				if name == "" {
					name = "anonymous python"
				}
				out = append(out, fmt.Sprintf("%s:%d: function %s is not scoped to %s (add :%s to its name)", path, s.Line, name, strings.Join(overrides, " or "), overrides[0]))
			}
		case s.Var != "":
			if !scoped(s.Var) {
				out = append(out, fmt.Sprintf("%s:%d: %s is not scoped to %s (write %s)", path, s.Line, s.Var, strings.Join(overrides, " or "), suggest(s, overrides[0])))
			}
		}
	}
	return out
}

func suggest(s Statement, o string) string {
	v := s.Var + ":" + o
	if s.Flag != "" {
		v += "[" + s.Flag + "]"
	}
	return v + " " + s.Op + " ..."
}

// TaskAfter reports whether an `addtask task after ... dep ...` statement
// orders task after dep.
func TaskAfter(sts []Statement, task, dep string) bool {
	for _, s := range sts {
		if s.Directive != "addtask" {
			continue
		}
		f := strings.Fields(s.Value)
		if len(f) == 0 || strings.TrimPrefix(f[0], "do_") != strings.TrimPrefix(task, "do_") {
			continue
		}
		after := false
		for _, w := range f[1:] {
			switch w {
			case "after":
				after = true
			case "before":
				after = false
			default:
				if after && strings.TrimPrefix(w, "do_") == strings.TrimPrefix(dep, "do_") {
					return true
				}
			}
		}
	}
	return false
}

// FuncBody returns the body of the function named name, "" if none.
func FuncBody(sts []Statement, name string) string {
	for _, s := range sts {
		if s.Func == name {
			return s.Body
		}
	}
	return ""
}
