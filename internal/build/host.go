package build

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Host is what the host check looks at. DefaultHost reads the real machine;
// tests substitute their own.
type Host struct {
	LookPath  func(file string) (string, error) // find a program on PATH
	Locales   func() ([]string, error)          // `locale -a`
	FreeBytes func(path string) (uint64, error) // free space of the filesystem holding path
	EUID      int                               // effective user id
	// EngineWorks checks that a container engine answers (its daemon runs);
	// nil assumes it does.
	EngineWorks func(engine string) error
}

// DefaultHost returns the Host of the running machine.
func DefaultHost() Host {
	return Host{
		LookPath: exec.LookPath,
		Locales: func() ([]string, error) {
			out, err := exec.Command("locale", "-a").Output()
			if err != nil {
				return nil, err
			}
			return strings.Fields(string(out)), nil
		},
		FreeBytes: freeBytes,
		EUID:      os.Geteuid(),
		EngineWorks: func(engine string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, engine, "version").CombinedOutput()
			if err != nil {
				msg := strings.TrimSpace(string(out))
				if i := strings.LastIndex(msg, "\n"); i >= 0 {
					msg = msg[i+1:]
				}
				return fmt.Errorf("%s version: %v: %s", engine, err, msg)
			}
			return nil
		},
	}
}

// freeBytes reports the space available to an unprivileged user on the
// filesystem holding path, or its nearest existing parent.
func freeBytes(path string) (uint64, error) {
	p, err := filepath.Abs(path)
	if err != nil {
		return 0, err
	}
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(p, &st)
		if err == nil {
			return st.Bavail * uint64(st.Bsize), nil
		}
		parent := filepath.Dir(p)
		if parent == p {
			return 0, fmt.Errorf("free space of %s: %w", path, err)
		}
		p = parent
	}
}

// Tool is a program BitBake needs on the host and the Debian package that
// provides it.
type Tool struct{ Program, Package string }

// RequiredTools are the host programs a native build needs: the
// non-trivial entries of HOSTTOOLS in the pinned openembedded-core's
// bitbake.conf (BitBake stops when one is missing), plus lz4 from the Yocto
// manual's host package list.
var RequiredTools = []Tool{
	{"git", "git"}, {"python3", "python3"}, {"gcc", "gcc"}, {"g++", "g++"}, {"make", "make"},
	{"chrpath", "chrpath"}, {"diffstat", "diffstat"}, {"lz4", "lz4"}, {"zstd", "zstd"}, {"pzstd", "zstd"},
	{"file", "file"}, {"cpio", "cpio"}, {"gawk", "gawk"}, {"wget", "wget"}, {"patch", "patch"},
	{"perl", "perl"}, {"bzip2", "bzip2"}, {"xz", "xz-utils"}, {"tar", "tar"}, {"which", "debianutils"},
	{"rpcgen", "rpcsvc-proto"},
}

// Problem is one thing that keeps the host from running BitBake natively,
// with the command that fixes it.
type Problem struct {
	What    string // what is missing or wrong
	Fix     string // the command (or action) that fixes it
	Package string // the Debian package that provides a missing tool, if any
}

// DefaultMinFreeGB is the free disk space a first build needs: a full
// dstack build with its downloads and sstate takes on the order of 100 GB.
const DefaultMinFreeGB = 100

// CheckHost lists what keeps the host from running BitBake natively: missing
// tools (each with its Debian package), the en_US.UTF-8 locale, free disk
// space at dir (at least minFreeGB), and a non-root user. An empty list
// means the host is ready.
func CheckHost(h Host, dir string, minFreeGB uint64) []Problem {
	var ps []Problem
	for _, t := range RequiredTools {
		if _, err := h.LookPath(t.Program); err != nil {
			ps = append(ps, Problem{
				What:    fmt.Sprintf("program %s is not on PATH", t.Program),
				Fix:     "sudo apt-get install -y " + t.Package,
				Package: t.Package,
			})
		}
	}
	locs, err := h.Locales()
	if err != nil || !hasUTF8Locale(locs, "en_US") {
		ps = append(ps, Problem{
			What:    "the en_US.UTF-8 locale is not generated (BitBake needs it)",
			Fix:     `sudo apt-get install -y locales && sudo sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && sudo locale-gen`,
			Package: "locales",
		})
	}
	if free, err := h.FreeBytes(dir); err != nil {
		ps = append(ps, Problem{What: fmt.Sprintf("cannot tell the free disk space at %s: %v", dir, err), Fix: "make the build directory's parent exist and be readable"})
	} else if free < minFreeGB*1e9 {
		ps = append(ps, Problem{
			What: fmt.Sprintf("only %.1f GB free at %s; a build needs about %d GB", float64(free)/1e9, dir, minFreeGB),
			Fix:  "free space, or point DSTACK_BUILD_DIR (and DL_DIR/SSTATE_DIR) at a larger disk",
		})
	}
	if h.EUID == 0 {
		ps = append(ps, Problem{
			What: "running as root: BitBake refuses to run as root",
			Fix:  "sudo useradd -m builder && sudo chown -R builder: . && sudo -u builder -i  (then build from that user's shell)",
		})
	}
	return ps
}

func hasUTF8Locale(locs []string, lang string) bool {
	for _, l := range locs {
		l = strings.ToLower(l)
		if l == strings.ToLower(lang)+".utf8" || l == strings.ToLower(lang)+".utf-8" {
			return true
		}
	}
	return false
}

// FormatProblems renders the host check for a person: one line per problem
// with its fix, then a single apt-get line installing every missing package.
func FormatProblems(ps []Problem) string {
	if len(ps) == 0 {
		return "host check: ready for a native BitBake build\n"
	}
	var b strings.Builder
	b.WriteString("host check: this host cannot run BitBake natively:\n")
	pkgs := map[string]bool{}
	for _, p := range ps {
		fmt.Fprintf(&b, "  - %s\n      fix: %s\n", p.What, p.Fix)
		if p.Package != "" {
			pkgs[p.Package] = true
		}
	}
	if len(pkgs) > 0 {
		names := make([]string, 0, len(pkgs))
		for n := range pkgs {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(&b, "  all packages at once: sudo apt-get install -y %s\n", strings.Join(names, " "))
	}
	return b.String()
}
