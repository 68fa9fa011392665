package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// FIFREEZE and FITHAW (include/uapi/linux/fs.h: _IOWR('X', 119/120, int)),
// missing from golang.org/x/sys/unix.
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

// freezeFS freezes the filesystem mounted at dir and leaves it frozen:
// writers block, and everything written so far is on the device (freeze_super
// syncs the filesystem and, on ext4, flushes the journal). `cpinit watch`
// uses it before rebooting into a rollback, so nothing more lands in a COW
// that is about to overflow.
func freezeFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), fiFreeze, 0); err != nil {
		return &os.PathError{Op: "FIFREEZE", Path: dir, Err: err}
	}
	return nil
}

// checkpointJournal freezes and thaws the filesystem mounted at dir. On ext4
// a freeze flushes the journal into the filesystem proper (ext4_freeze calls
// jbd2_journal_flush), so a later read-only "noload" mount of the snapshot,
// which skips journal replay, sees the COW file that begin just allocated.
func checkpointJournal(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), fiFreeze, 0); err != nil {
		return &os.PathError{Op: "FIFREEZE", Path: dir, Err: err}
	}
	if err := unix.IoctlSetInt(int(f.Fd()), fiThaw, 0); err != nil {
		return &os.PathError{Op: "FITHAW", Path: dir, Err: err}
	}
	return nil
}

// setBlockRO sets or clears a block device's read-only flag (BLKROSET).
func setBlockRO(dev string, ro bool) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	v := 0
	if ro {
		v = 1
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.BLKROSET, v); err != nil {
		return &os.PathError{Op: "BLKROSET", Path: dev, Err: err}
	}
	return nil
}
