// Package dmsnap drives the Linux device-mapper in pure Go for cpinit's
// userdata checkpoints: a dm-snapshot of the userdata partition whose COW
// store is a file inside that partition, mapped by its extents (see
// DESIGN.md).
//
// Three layers:
//
//   - Client (client.go, ioctl_linux.go): the ioctl interface of
//     /dev/mapper/control: Version, Targets/CheckTargets, Create, Load,
//     Suspend, Resume, Remove (bounded retry on EBUSY), Info, Table,
//     InactiveTable, Status, List, WaitEvent, Message, CreateAndLoad. Errors
//     read `dm <op> "<name>": ioctl DM_...: <errno>` and wrap the errno.
//     Without udev it makes the control node and the /dev/mapper/NAME nodes
//     itself and never waits on udev cookies. A kernel without dm or without
//     dm-snapshot is reported as ErrNoDeviceMapper ("load dm-mod") or
//     ErrNoSnapshotTarget ("load dm-snapshot").
//   - Tables (linear.go, snapshot_origin.go, snapshot.go, snapshot_merge.go):
//     sealed builders that validate their arguments and reference devices
//     as major:minor (Dev), plus the status and COW header parsers
//     (status.go, cowheader.go). The ioctl buffers are packed and unpacked
//     by pure functions in codec.go, unit- and fuzz-tested on the host
//     against an emulation of drivers/md/dm-ioctl.c.
//   - Checkpoint (checkpoint.go): StartCheckpoint, Reattach, Commit,
//     StartMerge, WaitMerge, FinishMerge, MapPlain, Teardown, Observe. Each
//     looks at the existing dm state and does only what is missing, so it
//     can be re-run after a crash or a power cut, and follows the suspend
//     ordering of Documentation/admin-guide/device-mapper/snapshot.rst.
//
// Everything that needs the kernel is tested inside the QEMU guest
// (vm_test.go, vm_powercut_test.go), with dmsetup as the oracle.
package dmsnap
