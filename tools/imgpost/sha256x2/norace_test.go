//go:build !race

package sha256x2

const raceEnabled = false
