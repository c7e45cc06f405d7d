// Command compare checks that two builds' image trees are bit-identical and
// prints a report: which files differ and, for each, the first differing byte.
// On success, given -commit, it writes the instructions a third party runs to
// reproduce the release. repro-build.sh runs it as `go run ./repro-build/compare`.
//
// Exit status: 0 identical, 1 different (or unreadable), 2 bad command line.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/Dstack-TEE/meta-dstack/internal/repro"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	commit := fs.String("commit", "", "git commit that was built (needed for -reproduce)")
	repoURL := fs.String("repo", repro.DefaultRepoURL, "repository URL a third party clones")
	reproduce := fs.String("reproduce", "", "on success, write the third-party reproduce script here")
	sums := fs.String("sums", "", "on success, write the agreed SHA-256 sums (sha256sum -c format) here")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: compare [-commit C -reproduce FILE -sums FILE] IMAGES_A IMAGES_B")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return 2
	}
	r, err := repro.Compare(fs.Arg(0), fs.Arg(1))
	if err != nil {
		fmt.Fprintln(stderr, "compare:", err)
		return 1
	}
	if err := r.WriteText(stdout); err != nil {
		fmt.Fprintln(stderr, "compare:", err)
		return 1
	}
	if !r.Same() {
		return 1
	}
	if *commit == "" {
		if *reproduce != "" {
			fmt.Fprintln(stdout, "no -commit (working tree not clean?): reproduce instructions not written")
		}
		return 0
	}
	if err := repro.WriteReproduce(r, *repoURL, *commit, *reproduce, *sums); err != nil {
		fmt.Fprintln(stderr, "compare:", err)
		return 1
	}
	if *reproduce != "" {
		fmt.Fprintf(stdout, "reproduce instructions written to %s\n", *reproduce)
	}
	return 0
}
