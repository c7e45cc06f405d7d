package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
)

// StepError is a step that failed; Code is the exit status of its command
// (1 when it did not get as far as exiting).
type StepError struct {
	Step string
	Code int
	Err  error
}

func (e *StepError) Error() string { return fmt.Sprintf("step %q: %v", e.Step, e.Err) }
func (e *StepError) Unwrap() error { return e.Err }

// ExitCode is the exit status a failed build should end with: the failing
// command's own status when there is one, else 1 (0 for nil).
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var se *StepError
	if errors.As(err, &se) && se.Code > 0 {
		return se.Code
	}
	return 1
}

// Executor runs (or, with Dry, prints) a Plan. Commands' output is passed
// straight through to Stdout/Stderr, so BitBake shows its own progress.
type Executor struct {
	Stdout, Stderr io.Writer
	Dry            bool     // print every command and file instead of acting
	Environ        []string // base environment (default os.Environ())
}

// Run executes the plan's steps in order, announcing each, and stops at the
// first failure.
func (x *Executor) Run(ctx context.Context, p *Plan) error {
	for _, n := range p.Notes {
		fmt.Fprintf(x.Stdout, "note: %s\n", n)
	}
	if x.Dry {
		fmt.Fprintf(x.Stdout, "dry run (DSTACK_DRY_RUN=1): %d steps, nothing is executed or written\n", len(p.Steps))
	}
	for i, s := range p.Steps {
		fmt.Fprintf(x.Stdout, "==> [%d/%d] %s\n", i+1, len(p.Steps), s.Title)
		var err error
		switch s.Kind {
		case RunStep:
			err = x.runStep(ctx, s)
		case WriteStep:
			err = x.writeStep(s)
		case CollectStep:
			err = x.collectStep(s)
		default:
			err = fmt.Errorf("unknown step kind %d", s.Kind)
		}
		if err != nil {
			var se *StepError
			if errors.As(err, &se) {
				return err
			}
			return &StepError{Step: s.Title, Code: 1, Err: err}
		}
	}
	return nil
}

func (x *Executor) environ() []string {
	if x.Environ != nil {
		return x.Environ
	}
	return os.Environ()
}

func getenv(env []string, k string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], k+"="); ok {
			return v
		}
	}
	return ""
}

// stepEnv is the base environment plus the step's variables, with $NAME in
// their values expanded from the base environment.
func (x *Executor) stepEnv(s Step) []string {
	base := x.environ()
	env := append([]string(nil), base...)
	for _, kv := range s.Env {
		k, v, _ := strings.Cut(kv, "=")
		v = os.Expand(v, func(n string) string { return getenv(base, n) })
		env = append(env, k+"="+v)
	}
	return env
}

// lookPath finds name on the PATH of env (exec.Command would use this
// process's PATH instead).
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range filepath.SplitList(getenv(env, "PATH")) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found on PATH", name)
}

func (x *Executor) command(ctx context.Context, argv []string, s Step) (*exec.Cmd, error) {
	env := x.stepEnv(s)
	path, err := lookPath(argv[0], env)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.Dir = s.Dir
	cmd.Env = env
	cmd.Stdout = x.Stdout
	cmd.Stderr = x.Stderr
	return cmd, nil
}

func (x *Executor) runStep(ctx context.Context, s Step) error {
	if x.Dry {
		if s.SkipIf != nil {
			fmt.Fprintf(x.Stdout, "  unless %s\n", ShellLine(s.Dir, nil, s.SkipIf))
		}
		fmt.Fprintf(x.Stdout, "  %s\n", ShellLine(s.Dir, s.Env, s.Argv))
		if s.Fallback != nil {
			fmt.Fprintf(x.Stdout, "  if that fails: %s\n", ShellLine(s.Dir, s.Env, s.Fallback))
		}
		return nil
	}
	if s.Dir != "" {
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			return fmt.Errorf("directory %s: %w", s.Dir, err)
		}
	}
	if s.SkipIf != nil {
		cmd, err := x.command(ctx, s.SkipIf, s)
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if cmd.Run() == nil {
			fmt.Fprintln(x.Stdout, "  already done, skipped")
			return nil
		}
	}
	err := x.exec(ctx, s.Argv, s)
	if err != nil && s.Fallback != nil {
		fmt.Fprintf(x.Stdout, "  %v; trying: %s\n", err, ShellLine(s.Dir, nil, s.Fallback))
		err = x.exec(ctx, s.Fallback, s)
	}
	return err
}

func (x *Executor) exec(ctx context.Context, argv []string, s Step) error {
	cmd, err := x.command(ctx, argv, s)
	if err != nil {
		return &StepError{Step: s.Title, Code: 127, Err: err}
	}
	if err := cmd.Run(); err != nil {
		code := 1
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			code = ee.ExitCode()
		}
		return &StepError{Step: s.Title, Code: code, Err: fmt.Errorf("%s: %w", strings.Join(argv, " "), err)}
	}
	return nil
}

func (x *Executor) writeStep(s Step) error {
	if x.Dry {
		fmt.Fprintf(x.Stdout, "  write %s (%d bytes):\n", s.Path, len(s.Data))
		for _, l := range strings.SplitAfter(string(s.Data), "\n") {
			if l != "" {
				fmt.Fprintf(x.Stdout, "  | %s", l)
			}
		}
		if len(s.Data) > 0 && s.Data[len(s.Data)-1] != '\n' {
			fmt.Fprintln(x.Stdout)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(s.Path), 0o755); err != nil {
		return fmt.Errorf("directory of %s: %w", s.Path, err)
	}
	return atomicfile.WriteFile(s.Path, s.Data, 0o644)
}

func (x *Executor) collectStep(s Step) error {
	c := s.Collect
	if x.Dry {
		fmt.Fprintf(x.Stdout, "  copy every <dist>-<version>/ (holding metadata.json) and its <dist>-<version>.tar.gz")
		if !c.SkipGCP {
			fmt.Fprintf(x.Stdout, ", -gcp.tar.gz")
		}
		fmt.Fprintf(x.Stdout, "\n    from %s\n    into %s\n", filepath.Join(c.BuildDir, "tmp*", "deploy", "images", c.Machine, "dstack-dist"), c.ImagesDir)
		return nil
	}
	got, err := CollectOutputs(c)
	if err != nil {
		return err
	}
	for _, g := range got {
		fmt.Fprintf(x.Stdout, "  %s\n", g)
	}
	return nil
}

var shellSafe = func() [256]bool {
	var t [256]bool
	for _, c := range []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=,+@%^{}") {
		t[c] = true
	}
	return t
}()

// Quote quotes s for a POSIX shell when it needs it.
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	for i := 0; i < len(s); i++ {
		if !shellSafe[s[i]] {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
	}
	return s
}

// ShellLine renders a command as a line a person can paste into a shell:
// `cd DIR && VAR=... argv...` ($PATH in a value is left for the shell).
func ShellLine(dir string, env []string, argv []string) string {
	var parts []string
	if dir != "" {
		parts = append(parts, "cd", Quote(dir), "&&")
	}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		q := Quote(v)
		if strings.Contains(v, "$PATH") {
			q = `"` + v + `"`
		}
		parts = append(parts, k+"="+q)
	}
	for _, a := range argv {
		parts = append(parts, Quote(a))
	}
	return strings.Join(parts, " ")
}
