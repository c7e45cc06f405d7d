//go:build mage

package main

import (
	"context"
	"github.com/Dstack-TEE/meta-dstack/internal/reporoot"
	"os"

	"github.com/Dstack-TEE/meta-dstack/internal/build"
	"github.com/magefile/mage/mg"
)

// buildEnv is the build's configuration: the repository root, the real host,
// the process environment and output.
func buildEnv() (*build.Env, error) {
	root, err := reporoot.Find(".")
	if err != nil {
		return nil, err
	}
	return &build.Env{Root: root, Stdout: os.Stdout, Stderr: os.Stderr}, nil
}

// buildExitErr turns a build error into mage's exit status: the failing command's own.
func buildExitErr(err error) error {
	if err == nil {
		return nil
	}
	return mg.Fatal(build.ExitCode(err), err)
}

// Build builds the dstack guest images into ./images/: checks the host, fetches
// the pinned layers, writes build/conf, runs BitBake for DSTACK_FLAVORS
// (default "prod") and collects the outputs. DSTACK_DRY_RUN=1 prints every
// command and file instead; DSTACK_CONTAINER=1 runs in the repro-build container.
func Build(ctx context.Context) error {
	e, err := buildEnv()
	if err != nil {
		return err
	}
	return buildExitErr(build.Build(ctx, e))
}

// Gcp builds (or reuses) images/<dist>-<ver>/gcp/disk.raw and
// images/<dist>-<ver>-gcp.tar.gz and prints the gcloud commands that upload
// them and create a TDX-capable image (GCS_BUCKET, GCP_ZONE fill them in).
func Gcp(ctx context.Context) error {
	e, err := buildEnv()
	if err != nil {
		return err
	}
	return buildExitErr(build.GCP(ctx, e))
}
