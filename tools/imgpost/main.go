// Command imgpost turns BitBake's outputs (kernel, initramfs, squashfs rootfs,
// systemd EFI stub) into the dstack guest's shippable, reproducible artifacts:
// a dm-verity protected rootfs, a Unified Kernel Image, a GPT disk, a Google
// Cloud import tarball and the metadata a verifier checks.
//
// Each subcommand lives in its own cmd_*.go file and registers itself here.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
)

// command is one imgpost subcommand.
type command struct {
	name    string
	summary string
	// run executes the subcommand with its arguments (without the name).
	run func(args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{}

func register(c command) {
	if _, dup := commands[c.name]; dup {
		panic("imgpost: duplicate command " + c.name)
	}
	commands[c.name] = c
}

// usageError marks errors caused by the command line, not by the inputs.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// newFlagSet returns the flag set of a subcommand: errors and usage go to
// stderr, and -h prints the usage lines followed by the flags' defaults.
func newFlagSet(name string, stderr io.Writer, usage ...string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		for _, l := range usage {
			fmt.Fprintln(stderr, l)
		}
		fs.PrintDefaults()
	}
	return fs
}

// parseArgs parses args into fs, taking flags before and after positional
// arguments, and returns the positional ones. help is true after -h/--help
// (fs has printed its usage); a bad flag, or more than max positional
// arguments, is a usage error.
func parseArgs(fs *flag.FlagSet, args []string, max int) (pos []string, help bool, err error) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, true, nil
			}
			return nil, false, usagef("%v", err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) > max {
		return nil, false, usagef("unexpected argument %q", pos[max])
	}
	return pos, false, nil
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: imgpost <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-13s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nrun 'imgpost <command> -h' for a command's flags")
}

func main() {
	atomicfile.CleanupOnSignal()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches to a subcommand and maps its error to an exit status:
// 0 success, 1 failure, 2 bad command line.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "imgpost: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	if err := c.run(args[1:], stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "imgpost %s: %v\n", c.name, err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}
