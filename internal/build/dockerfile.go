package build

import (
	"fmt"
	"regexp"
	"strings"
)

var (
	fromRE     = regexp.MustCompile(`^(?i:FROM)\s+(\S+)`)
	digestRE   = regexp.MustCompile(`@sha256:[0-9a-f]{64}$`)
	snapshotRE = regexp.MustCompile(`https?://snapshot\.debian\.org/archive/[a-z-]+/\d{8}T\d{6}Z\b`)
	aptLineRE  = regexp.MustCompile(`^deb(-src)?\s`)
	pinnedPkg  = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]*=[0-9A-Za-z.+~:-]+$`)
	plainPkg   = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]*$`)
)

// instructions joins a Dockerfile's continuation lines and drops comments.
func instructions(dockerfile string) []string {
	var out []string
	var cur strings.Builder
	for _, l := range strings.Split(dockerfile, "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "#") && cur.Len() == 0 {
			continue
		}
		if strings.HasPrefix(t, "#") {
			continue
		}
		if strings.HasSuffix(t, "\\") {
			cur.WriteString(strings.TrimSuffix(t, "\\") + " ")
			continue
		}
		cur.WriteString(t)
		if s := strings.TrimSpace(cur.String()); s != "" {
			out = append(out, s)
		}
		cur.Reset()
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

// CheckDockerfile lists what keeps a Dockerfile from being reproducible:
// a base image not pinned by @sha256 digest, package installs from a moving
// mirror (neither every package pinned to an exact version nor every apt
// source a dated snapshot.debian.org archive), package lists built from
// variables, upgrades, and downloads piped into a shell. It also returns the
// packages installed with apt-get.
func CheckDockerfile(dockerfile string) (problems, packages []string) {
	ins := instructions(dockerfile)
	snapshotOnly := false
	for _, in := range ins {
		if m := fromRE.FindStringSubmatch(in); m != nil {
			if !digestRE.MatchString(m[1]) {
				problems = append(problems, fmt.Sprintf("base image %s is not pinned by @sha256 digest", m[1]))
			}
			if strings.Contains(m[1], "$") {
				problems = append(problems, fmt.Sprintf("base image %s comes from a variable", m[1]))
			}
			continue
		}
		if !strings.HasPrefix(strings.ToUpper(in), "RUN ") {
			continue
		}
		// apt sources written by this RUN: every one must be a dated snapshot,
		// and the image's own (moving) sources must be removed.
		if strings.Contains(in, "sources.list") {
			var debs []string
			for _, q := range regexp.MustCompile(`'([^']*)'`).FindAllStringSubmatch(in, -1) {
				if aptLineRE.MatchString(q[1]) {
					debs = append(debs, q[1])
				}
			}
			ok := len(debs) > 0 && strings.Contains(in, "debian.sources")
			for _, d := range debs {
				if !snapshotRE.MatchString(d) {
					ok = false
					problems = append(problems, fmt.Sprintf("apt source %q is not a dated snapshot.debian.org archive", d))
				}
			}
			snapshotOnly = ok
		}
		for _, cmd := range regexp.MustCompile(`&&|;|\|\|`).Split(in, -1) {
			f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(cmd), "RUN "))
			if len(f) >= 2 && (f[0] == "apt-get" || f[0] == "apt") && (f[1] == "upgrade" || f[1] == "dist-upgrade") {
				problems = append(problems, "the package set is upgraded ("+strings.Join(f[:2], " ")+"): versions float")
			}
			if len(f) < 2 || (f[0] != "apt-get" && f[0] != "apt") || f[1] != "install" {
				continue
			}
			if !snapshotOnly {
				problems = append(problems, "apt-get install runs before (or without) apt sources pinned to a snapshot.debian.org date")
			}
			for _, a := range f[2:] {
				switch {
				case strings.HasPrefix(a, "-"):
				case strings.Contains(a, "$"):
					problems = append(problems, fmt.Sprintf("package list uses the variable %s: it must be written out", a))
				case pinnedPkg.MatchString(a):
					packages = append(packages, a[:strings.Index(a, "=")])
				case plainPkg.MatchString(a):
					if !snapshotOnly {
						problems = append(problems, fmt.Sprintf("package %s has neither an exact version nor a snapshot date", a))
					}
					packages = append(packages, a)
				default:
					problems = append(problems, fmt.Sprintf("package argument %q is not a package name", a))
				}
			}
		}
		if regexp.MustCompile(`(curl|wget)[^|]*\|\s*(ba)?sh`).MatchString(in) {
			problems = append(problems, "a download is piped into a shell")
		}
	}
	return problems, packages
}
