//go:build ignore

// Zero-install entry point for Mage: `go run mage.go <target>` (`-l` lists targets).
package main

import (
	"os"

	"github.com/magefile/mage/mage"
)

func main() { os.Exit(mage.Main()) }
