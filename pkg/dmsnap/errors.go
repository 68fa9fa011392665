package dmsnap

import (
	"errors"
	"syscall"
)

var (
	// ErrNoDeviceMapper: the kernel has no device-mapper driver (no
	// /dev/mapper/control and no misc device to create it from).
	ErrNoDeviceMapper = errors.New("device-mapper not available: load dm-mod")
	// ErrNoSnapshotTarget: dm works but the snapshot targets are not
	// registered.
	ErrNoSnapshotTarget = errors.New("kernel has no snapshot target: load dm-snapshot")
	// ErrSnapshotInvalid: the kernel dropped the snapshot (COW full or I/O
	// error): status "Invalid" or a COW header with valid=0. The checkpoint
	// can no longer roll anything back.
	ErrSnapshotInvalid = errors.New("snapshot invalid (COW overflowed or I/O error): rollback impossible")
	// ErrSnapshotOverflow: status "Overflow".
	ErrSnapshotOverflow = errors.New("snapshot overflow")
	// ErrMergeFailed: status "Merge failed" (I/O error during the merge).
	ErrMergeFailed = errors.New("snapshot merge failed (I/O error); reload snapshot-merge to retry")
	// ErrMergeNotDone: FinishMerge before the merge copied everything back.
	ErrMergeNotDone = errors.New("snapshot merge not finished")
	// ErrNoCheckpoint: the COW header is not a snapshot (all zero or not
	// "SnAp"), so there is nothing to reattach or merge.
	ErrNoCheckpoint = errors.New("no checkpoint in COW store")
	// ErrOriginInUse: the origin device is open (mounted) where an
	// operation would change the data under the user's feet.
	ErrOriginInUse = errors.New("origin device is open")
	// ErrUnexpectedState: an existing device has a table or owner this
	// package did not expect; it refuses to guess.
	ErrUnexpectedState = errors.New("unexpected device-mapper state")
)

// IsNoDevice reports whether err says the named device does not exist (the
// kernel answers ENXIO for unknown names).
func IsNoDevice(err error) bool { return errors.Is(err, syscall.ENXIO) }
