package pid1

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Mount is one early mount. Like u-root's libinit.Mount it names itself in
// errors, so a failure says which mount broke.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

func (m Mount) String() string {
	return fmt.Sprintf("mount -t %s %s %s (flags %#x, %q)", m.FSType, m.Source, m.Target, m.Flags, m.Data)
}

// Create makes the mount point and mounts. An already mounted target is not an
// error: the kernel mounts devtmpfs on /dev itself when built with
// CONFIG_DEVTMPFS_MOUNT, and a re-exec of init finds everything mounted. The
// kernel says so with EBUSY (gokrazy's mount.go accepts it the same way).
func (m Mount) Create() error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return fmt.Errorf("%v: %w", m, err)
	}
	err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
	if err != nil && !errors.Is(err, unix.EBUSY) {
		return &os.PathError{Op: "mount", Path: m.Target, Err: fmt.Errorf("%v: %w", m, err)}
	}
	return nil
}

const nodevExecSuid = unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOSUID

// EarlyMounts is what an initramfs init needs before it can find block
// devices, load modules or log: /proc (cmdline, mounts, misc), /sys (block
// device attributes), /dev (devtmpfs: the kernel creates block and misc
// device nodes without udev), /run and /tmp.
var EarlyMounts = []Mount{
	{Source: "proc", Target: "/proc", FSType: "proc", Flags: nodevExecSuid},
	{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: nodevExecSuid},
	{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
	{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: unix.MS_NODEV | unix.MS_NOSUID, Data: "mode=0755"},
	{Source: "tmpfs", Target: "/tmp", FSType: "tmpfs", Flags: unix.MS_NODEV | unix.MS_NOSUID, Data: "mode=1777"},
}

// MountAll creates the given mounts in order and stops at the first failure.
func MountAll(ms []Mount) error {
	for _, m := range ms {
		if err := m.Create(); err != nil {
			return err
		}
	}
	return nil
}
