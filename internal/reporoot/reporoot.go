// Package reporoot finds the meta-dstack repository's root: the nearest
// directory at or above a starting point whose go.mod declares this module.
package reporoot

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Module is the module path the root's go.mod must declare.
const Module = "github.com/Dstack-TEE/meta-dstack"

// Find returns the repository root at or above dir. A go.mod of another
// module (a nested or unrelated one) is passed over.
func Find(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("repository root: %w", err)
	}
	for {
		if declares(filepath.Join(d, "go.mod")) {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", fmt.Errorf("repository root (a go.mod of module %s) not found at or above %s", Module, dir)
		}
		d = p
	}
}

// declares reports whether the go.mod at path declares Module.
func declares(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if f := strings.Fields(s.Text()); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`) == Module
		}
	}
	return false
}
