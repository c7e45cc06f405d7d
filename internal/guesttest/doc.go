// Package guesttest holds the systemd boot test of the dstack guest runtime:
// the layer's runtime files (dstack-runtime, dstack-prepare, devspec.sh, the
// guest agent's units), installed unchanged by running their recipes'
// do_install into a root filesystem built from Debian packages (mmdebstrap:
// systemd, docker.io, docker-compose, cryptsetup, jq, chrony, ...), squashed,
// turned into a dist set by `imgpost dist` and booted through the layer's
// initramfs /init and dm-verity under QEMU (TCG), with a data disk and a 9p
// host-shared directory holding app-compose.json.
//
// The guest agent and dstack-util are Rust programs of the dstack
// repository and are not built here: the test installs two named test
// doubles in their place (testdata/agentdouble, a Go program serving the
// socket-activated sockets; testdata/dstack-util-double, a bash script doing
// setup's documented work with a fixed disk key). Nothing else is faked.
//
// The Debian root filesystem is cached as a tar file under the system's
// temporary directory (DSTACK_GUESTTEST_CACHE overrides), never in the
// checkout. The package has no non-test code.
package guesttest
