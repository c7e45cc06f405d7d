// Package boottest holds the QEMU boot tests of the dstack boot chain: the
// layer's initramfs /init and dstack-prepare, packaged by internal/demo from
// Debian's kernel, booted under QEMU+OVMF (TCG) bare-metal style (kernel +
// initramfs + command line, rootfs.img.verity as a disk) and GCP style (the
// GPT disk built by imgpost, attached as NVMe, UKI from the ESP). Each test
// asserts on the serial console and on how QEMU ended. The package has no
// non-test code.
package boottest
