//go:build !linux

package atomicfile

const canWriteback = false

func startWriteOut(uintptr) {}
