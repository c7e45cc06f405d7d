#!/usr/bin/env bash
# Reproducible build of the dstack guest images.
#
# Builds the pinned builder image (Dockerfile), then builds the release twice,
# each time from an empty build directory with every command in a fresh
# container running as the calling user, compares the two images/ trees byte
# for byte and reports the first difference. When they agree and the working
# tree is clean, it writes reproduce.sh (what a third party runs) and
# expected.sha256 next to this script.
#
# Usage: repro-build/repro-build.sh [-n]
#   -n  build once (no second build, no comparison): what a third party runs
#       before checking the published SHA-256 sums.
# Needs: x86_64 Linux, Docker (or DSTACK_CONTAINER_ENGINE=podman), Go 1.26+,
# git, a non-root user, and disk and time for two full Yocto builds.
set -euo pipefail

usage() {
	echo "usage: $0 [-n]" >&2
	echo "  -n  build once, skip the second build and the comparison" >&2
}

NO_CHECK=0
while getopts ":nh" opt; do
	case $opt in
	n) NO_CHECK=1 ;;
	h)
		usage
		exit 0
		;;
	*)
		echo "repro-build.sh: unknown option -$OPTARG" >&2
		usage
		exit 2
		;;
	esac
done
shift $((OPTIND - 1))
if [ $# -ne 0 ]; then
	usage
	exit 2
fi

THIS_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(dirname "$THIS_DIR")
ENGINE=${DSTACK_CONTAINER_ENGINE:-docker}

die() {
	echo "repro-build.sh: $*" >&2
	exit 1
}
command -v "$ENGINE" >/dev/null || die "$ENGINE not found: install Docker (or set DSTACK_CONTAINER_ENGINE=podman)"
command -v go >/dev/null || die "go not found: Go 1.26 or newer runs the build driver and the comparison"
command -v git >/dev/null || die "git not found"
[ "$(id -u)" != 0 ] || die "run as a non-root user: BitBake refuses root, and the containers run as the calling user (sudo useradd -m builder)"

# The builder image, tagged by the Dockerfile's content (as `mage build` does).
TAG="dstack-repro-build:$(sha256sum "$THIS_DIR/Dockerfile" | cut -c1-12)"
echo "==> Building the builder image $TAG"
"$ENGINE" build -t "$TAG" -f "$THIS_DIR/Dockerfile" "$THIS_DIR"

# Same commit, same timestamps: the rootfs timestamp comes from the commit time.
COMMIT=$(git -C "$REPO_ROOT" rev-parse HEAD)
SOURCE_DATE_EPOCH=$(git -C "$REPO_ROOT" log -1 --format=%ct HEAD)
export SOURCE_DATE_EPOCH
export DSTACK_GIT_REVISION="$COMMIT"
export DSTACK_CONTAINER=1 DSTACK_CONTAINER_IMAGE="$TAG" DSTACK_CONTAINER_ENGINE="$ENGINE"
# Downloads (checksummed sources) are shared between the two builds; nothing
# built is: each build has its own sstate and its own local hash-equivalence
# server (BitBake's default BB_HASHSERVE=auto, kept in the build directory).
export DL_DIR="${DL_DIR:-$THIS_DIR/downloads}"
unset SSTATE_DIR SSTATE_MIRRORS BB_HASHSERVE BB_HASHSERVE_UPSTREAM
mkdir -p "$DL_DIR"

build_to() {
	local out=$1
	echo "==> Building commit $COMMIT (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH) into $out"
	rm -rf "$out"
	mkdir -p "$out"
	(cd "$REPO_ROOT" && DSTACK_BUILD_DIR="$out/build" DSTACK_IMAGES_DIR="$out/images" go run mage.go build)
}

rm -f "$THIS_DIR/reproduce.sh" "$THIS_DIR/expected.sha256"
build_to "$THIS_DIR/build-a"
if [ "$NO_CHECK" -eq 1 ]; then
	echo "==> Built once (-n): the images are in $THIS_DIR/build-a/images"
	exit 0
fi
build_to "$THIS_DIR/build-b"

COMPARE_ARGS=()
if [ -z "$(git -C "$REPO_ROOT" status --porcelain)" ]; then
	COMPARE_ARGS=(-commit "$COMMIT" -reproduce "$THIS_DIR/reproduce.sh" -sums "$THIS_DIR/expected.sha256")
else
	echo "==> The working tree is not clean: the reproduce instructions will not be written"
fi
echo "==> Comparing the two builds"
cd "$REPO_ROOT"
go run ./repro-build/compare "${COMPARE_ARGS[@]}" "$THIS_DIR/build-a/images" "$THIS_DIR/build-b/images"
if [ -f "$THIS_DIR/reproduce.sh" ] && [ ${#COMPARE_ARGS[@]} -gt 0 ]; then
	echo "==> A third party reproduces this release with:"
	cat "$THIS_DIR/reproduce.sh"
fi
