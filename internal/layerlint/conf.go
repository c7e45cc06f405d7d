package layerlint

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// Statement is one logical line of BitBake metadata outside function
// bodies: an assignment (Var, Flag, Op, Value), or a directive such as
// inherit, require, addtask (Directive, Value), or a function header (Func).
type Statement struct {
	Line int // 1-based line where the statement starts

	Var   string // variable name with overrides, e.g. SRC_URI:append:tdx-guest
	Flag  string // flag name for VAR[flag] = ...
	Op    string // =, ?=, ??=, :=, +=, =+, .=, =.
	Value string // the value between the quotes (continuations joined)

	Directive string // inherit, require, include, addtask, export, ...
	Func      string // function name (shell or python) when this is a function header
	Python    bool   // the function is a python function
	Body      string // the function's body
}

var (
	assignLine = regexp.MustCompile(`^(?:export\s+)?([A-Za-z_][A-Za-z0-9_\-${}./+@]*(?::[A-Za-z0-9_\-${}./+@]+)*)(?:\[([a-zA-Z0-9\-_+.][a-zA-Z0-9\-_+.@/]*)\])?\s*(\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=)\s*((?s).*)$`)
	pyFunc     = regexp.MustCompile(`^(?:fakeroot\s+)?python\s+([A-Za-z_][A-Za-z0-9_\-${}:.]*)?\s*\(\)\s*\{\s*$`)
	defFunc    = regexp.MustCompile(`^def\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(`)
	directive  = regexp.MustCompile(`^(inherit|inherit_defer|require|include|include_all|addtask|deltask|addhandler|EXPORT_FUNCTIONS|export|unset|addfragments)\b\s*((?s).*)$`)
)

// ParseStatements splits BitBake metadata (a .conf, .bb, .bbappend,
// .bbclass or .inc file) into statements. It understands what this layer
// writes: quoted assignments with backslash continuations, flags, override
// syntax, directives, shell and python functions; anything else is an error
// naming the file and line.
func ParseStatements(path string, data []byte) ([]Statement, error) {
	var out []Statement
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i := 0; i < len(lines); i++ {
		line := strings.TrimRight(lines[i], " \t")
		start := i + 1
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		// Functions: shell `name() {`, python `python name() {`, `def name(...):`.
		if m := pyFunc.FindStringSubmatch(line); m != nil || funcStart.MatchString(line) {
			st := Statement{Line: start}
			if m != nil {
				st.Func, st.Python = m[1], true
			} else {
				st.Func = funcStart.FindStringSubmatch(line)[2]
			}
			var body strings.Builder
			j := i + 1
			for ; j < len(lines) && lines[j] != "}"; j++ {
				body.WriteString(lines[j])
				body.WriteByte('\n')
			}
			if j == len(lines) {
				return nil, fmt.Errorf("%s:%d: function %s has no closing \"}\" line", path, start, st.Func)
			}
			st.Body = body.String()
			out = append(out, st)
			i = j
			continue
		}
		if m := defFunc.FindStringSubmatch(line); m != nil {
			st := Statement{Line: start, Func: m[1], Python: true}
			var body strings.Builder
			j := i + 1
			for ; j < len(lines) && (lines[j] == "" || strings.HasPrefix(lines[j], " ") || strings.HasPrefix(lines[j], "\t")); j++ {
				body.WriteString(lines[j])
				body.WriteByte('\n')
			}
			st.Body = body.String()
			out = append(out, st)
			i = j - 1
			continue
		}
		// Join continuation lines.
		logical := line
		for strings.HasSuffix(logical, "\\") && i+1 < len(lines) {
			i++
			logical = logical[:len(logical)-1] + "\n" + lines[i]
		}
		if m := assignLine.FindStringSubmatch(logical); m != nil {
			v := strings.TrimSpace(m[4])
			q := v
			if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
				q = v[1 : len(v)-1]
			} else {
				return nil, fmt.Errorf("%s:%d: value of %s is not quoted", path, start, m[1])
			}
			out = append(out, Statement{Line: start, Var: m[1], Flag: m[2], Op: m[3], Value: q})
			continue
		}
		if m := directive.FindStringSubmatch(logical); m != nil {
			out = append(out, Statement{Line: start, Directive: m[1], Value: m[2]})
			continue
		}
		return nil, fmt.Errorf("%s:%d: cannot read %q", path, start, trimmed)
	}
	return out, nil
}

// Vars is a BitBake datastore in miniature: the values of plain variables
// (no overrides) after a sequence of assignments, with lazy expansion as
// BitBake does it (`=` keeps ${...} references, `:=` expands at once).
type Vars map[string]string

// Apply performs the assignments among sts (flags and variables with
// overrides are ignored) in order.
func (v Vars) Apply(sts []Statement) {
	for _, s := range sts {
		if s.Var == "" || s.Flag != "" || strings.Contains(s.Var, ":") {
			continue
		}
		old, set := v[s.Var]
		switch s.Op {
		case "=":
			v[s.Var] = s.Value
		case "?=", "??=":
			if !set {
				v[s.Var] = s.Value
			}
		case ":=":
			v[s.Var] = v.Expand(s.Value)
		case "+=":
			v[s.Var] = strings.TrimPrefix(old+" "+s.Value, " ")
		case "=+":
			v[s.Var] = strings.TrimSuffix(s.Value+" "+old, " ")
		case ".=":
			v[s.Var] = old + s.Value
		case "=.":
			v[s.Var] = s.Value + old
		}
	}
}

var varRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_\-]*)\}`)

// Expand replaces ${VAR} references by their values, recursively; unknown
// variables and inline python ${@...} stay as written.
func (v Vars) Expand(s string) string {
	for n := 0; n < 32; n++ {
		x := varRef.ReplaceAllStringFunc(s, func(r string) string {
			if val, ok := v[r[2:len(r)-1]]; ok {
				return val
			}
			return r
		})
		if x == s {
			return s
		}
		s = x
	}
	return s
}
