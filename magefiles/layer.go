//go:build mage

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/internal/layergen"
	"github.com/Dstack-TEE/meta-dstack/internal/values"
)

// Layer renders the Yocto layer meta-dstack/ (and its build-configuration
// templates in meta-dstack/conf/templates/default) from templates/ and a values
// file. VALUES=path uses your own values file (default templates/values.yaml);
// OUT=dir renders into dir/meta-dstack instead of the repository. Only
// generated files are written; hand-written ones are never touched.
func Layer() error {
	repo, err := os.Getwd()
	if err != nil {
		return err
	}
	vpath := os.Getenv("VALUES")
	if vpath == "" {
		vpath = filepath.Join(repo, values.DefaultPath)
	}
	out := os.Getenv("OUT")
	if out == "" {
		out = repo
	}
	cache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		return fmt.Errorf("go env GOMODCACHE: %w", err)
	}
	opts, err := layergen.Load(repo, vpath, strings.TrimSpace(string(cache)), out)
	if err != nil {
		return err
	}
	res, err := layergen.Write(opts)
	if err != nil {
		return err
	}
	for _, p := range res.Written {
		fmt.Println("wrote  ", p)
	}
	for _, p := range res.Removed {
		fmt.Println("removed", p)
	}
	fmt.Printf("layer: %d files written, %d unchanged, %d stale removed (values %s)\n",
		len(res.Written), len(res.Unchanged), len(res.Removed), vpath)
	return nil
}

// GuestAgentCrates writes meta-dstack/recipes-dstack/dstack-guest-agent/dstack-guest-agent-crates.inc,
// the crate:// (crates.io, with sha256) and git:// entries of every dependency
// of the dstack guest agent, from CARGO_LOCK=path: the Cargo.lock of the dstack
// revision pinned in the values file (guest_agent.commit), e.g.
// `git -C dstack show <commit>:Cargo.lock > /tmp/Cargo.lock`.
func GuestAgentCrates() error {
	lock := os.Getenv("CARGO_LOCK")
	if lock == "" {
		return fmt.Errorf("set CARGO_LOCK to the Cargo.lock of the pinned dstack revision")
	}
	vpath := os.Getenv("VALUES")
	if vpath == "" {
		vpath = values.DefaultPath
	}
	v, err := values.Load(vpath)
	if err != nil {
		return err
	}
	out := filepath.Join("meta-dstack", "recipes-dstack", "dstack-guest-agent", "dstack-guest-agent-crates.inc")
	if err := layergen.WriteCratesInc(lock, v.GuestAgent.Commit, out); err != nil {
		return err
	}
	fmt.Println("wrote", out)
	return nil
}
