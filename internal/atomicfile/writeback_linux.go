package atomicfile

import "syscall"

const canWriteback = true

// syncFileRangeWrite is SYNC_FILE_RANGE_WRITE (<linux/fs.h>): start writing
// the range's dirty pages, without waiting for them.
const syncFileRangeWrite = 0x2

// startWriteOut asks the kernel to start writing every dirty page of fd.
func startWriteOut(fd uintptr) {
	_ = syscall.SyncFileRange(int(fd), 0, 0, syncFileRangeWrite)
}
