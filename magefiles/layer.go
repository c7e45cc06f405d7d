//go:build mage

package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/Dstack-TEE/meta-dstack/internal/layergen"
	"github.com/Dstack-TEE/meta-dstack/internal/values"
)

// Layer renders the Yocto layer meta-dstack/ (and its build-configuration
// templates in meta-dstack/conf/templates/default) from templates/ and a values
// file. VALUES=path uses your own values file (default templates/values.yaml);
// OUT=dir renders into dir/meta-dstack instead of the repository. Only
// generated files are written; hand-written ones are never touched.
//
// The imgpost recipe's gomod:// entries (imgpost-go-mods.inc) are what
// building tools/imgpost needs: `go list -deps` in an empty module cache,
// filled from your module cache and GOPROXY, with GOFLAGS=-mod=readonly (go.mod
// and go.sum are never written); each file is checked against go.sum.
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
	opts, err := layergen.Load(repo, vpath, out)
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
