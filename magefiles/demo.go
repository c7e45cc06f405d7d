//go:build mage

package main

import (
	"os"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/demo"
)

// Demo assembles a dstack guest image from Debian host parts (kernel, busybox,
// veritysetup, systemd stub, OVMF) with the layer's init and dstack-prepare,
// runs imgpost dist, and boots it under QEMU the GCP way and the bare-metal
// way with the serial console shown. DEMO_DIR sets the work directory
// (default build/demo); DEMO_ACCEL=tcg|kvm|auto picks the accelerator
// (default tcg).
func Demo() error {
	dir := os.Getenv("DEMO_DIR")
	if dir == "" {
		dir = "build/demo"
	}
	return demo.Run(demo.RunOptions{
		RepoRoot:    ".",
		WorkDir:     dir,
		Accel:       os.Getenv("DEMO_ACCEL"),
		Out:         os.Stdout,
		BootTimeout: 10 * time.Minute,
	})
}
