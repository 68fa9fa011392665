//go:build linux

package dmsnap

// The only file of the package that uses unsafe or issues syscalls on raw
// buffers. Everything it sends or receives is built and parsed by codec.go.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

var ioctlRequests = [...]uintptr{
	cmdVersion:        unix.DM_VERSION,
	cmdRemoveAll:      unix.DM_REMOVE_ALL,
	cmdListDevices:    unix.DM_LIST_DEVICES,
	cmdDevCreate:      unix.DM_DEV_CREATE,
	cmdDevRemove:      unix.DM_DEV_REMOVE,
	cmdDevRename:      unix.DM_DEV_RENAME,
	cmdDevSuspend:     unix.DM_DEV_SUSPEND,
	cmdDevStatus:      unix.DM_DEV_STATUS,
	cmdDevWait:        unix.DM_DEV_WAIT,
	cmdTableLoad:      unix.DM_TABLE_LOAD,
	cmdTableClear:     unix.DM_TABLE_CLEAR,
	cmdTableDeps:      unix.DM_TABLE_DEPS,
	cmdTableStatus:    unix.DM_TABLE_STATUS,
	cmdListVersions:   unix.DM_LIST_VERSIONS,
	cmdTargetMsg:      unix.DM_TARGET_MSG,
	cmdDevSetGeometry: unix.DM_DEV_SET_GEOMETRY,
}

// sysIoctl hands buf (a complete struct dm_ioctl parameter block) to the
// kernel, which reads data_size bytes and writes its answer back in place.
func sysIoctl(fd int, c cmd, buf []byte) error {
	if len(buf) < sizeofIoctl {
		return fmt.Errorf("dm ioctl buffer of %d bytes", len(buf))
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlRequests[c], uintptr(unsafe.Pointer(&buf[0])))
	runtime.KeepAlive(buf)
	if errno != 0 {
		return errno
	}
	return nil
}

// misc device numbers of the dm control node: MISC_MAJOR and, where sysfs
// or /proc/misc do not say, MAPPER_CTRL_MINOR (include/linux/miscdevice.h).
const (
	miscMajor       = 10
	mapperCtrlMinor = 236
)

var (
	sysMiscDev = "/sys/class/misc/device-mapper/dev"
	procMisc   = "/proc/misc"
)

func openControl(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		return fd, nil
	}
	switch {
	case errors.Is(err, unix.ENOENT):
		dev, derr := controlDev()
		if derr != nil {
			return -1, fmt.Errorf("dm control %s: %w", path, derr)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return -1, fmt.Errorf("dm control %s: %w", path, err)
		}
		if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(dev.Major, dev.Minor))); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("dm control %s: %w", path, os.NewSyscallError("mknod", err))
		}
		fd, err = unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err == nil {
			return fd, nil
		}
	case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		// The node exists but no driver answers behind it.
		return -1, fmt.Errorf("dm control %s: %w: %w", path, os.NewSyscallError("open", err), ErrNoDeviceMapper)
	}
	return -1, fmt.Errorf("dm control %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
}

// controlDev finds the control node's device number, or says dm is absent.
func controlDev() (Dev, error) {
	if b, err := os.ReadFile(sysMiscDev); err == nil {
		if d, err := ParseDev(strings.TrimSpace(string(b))); err == nil {
			return d, nil
		}
	}
	if b, err := os.ReadFile(procMisc); err == nil {
		if minor, ok := parseProcMisc(string(b)); ok {
			return Dev{Major: miscMajor, Minor: minor}, nil
		}
		// /proc/misc is there and lists no device-mapper: the driver is not
		// loaded (or built).
		return Dev{}, ErrNoDeviceMapper
	}
	if _, err := os.Stat("/sys/class/misc"); err == nil {
		return Dev{}, ErrNoDeviceMapper
	}
	// Neither /proc nor /sys is mounted: we cannot tell; try the
	// well-known number and let open fail with ENODEV if dm is absent.
	return Dev{Major: miscMajor, Minor: mapperCtrlMinor}, nil
}

func closeFD(fd int) error { return unix.Close(fd) }

// makeBlockNode makes path a block device node for dev, replacing whatever
// else is there (a stale node from an earlier device with the same name).
func makeBlockNode(path string, dev Dev) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFBLK && unix.Major(st.Rdev) == dev.Major && unix.Minor(st.Rdev) == dev.Minor {
			return nil
		}
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(unix.Mkdev(dev.Major, dev.Minor))); err != nil {
		return &os.PathError{Op: "mknod", Path: path, Err: err}
	}
	return nil
}

// DeviceNumber returns the device number of the block device node at path.
func DeviceNumber(path string) (Dev, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Dev{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return Dev{}, fmt.Errorf("%s: not a block device", path)
	}
	return Dev{Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev)}, nil
}

// DeviceSectors returns the size of the block device at path in 512-byte
// sectors (BLKGETSIZE64).
func DeviceSectors(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	size, err := deviceBytes(f)
	if err != nil {
		return 0, err
	}
	return size / 512, nil
}

// deviceBytes is BLKGETSIZE64 on an open block device. The kernel writes a
// u64 (block/ioctl.c put_u64), so the result needs a uint64, not an int:
// unix.IoctlGetInt would let it write 8 bytes into a 4-byte int on arm and
// 386 and return a size truncated to 32 bits.
func deviceBytes(f *os.File) (uint64, error) {
	var size uint64
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
	if errno != 0 {
		return 0, &os.PathError{Op: "ioctl BLKGETSIZE64", Path: f.Name(), Err: errno}
	}
	return size, nil
}

func lockFD(fd int) error {
	for {
		err := unix.Flock(fd, unix.LOCK_EX)
		if err != unix.EINTR {
			return err
		}
	}
}

func unlockFD(fd int) error { return unix.Flock(fd, unix.LOCK_UN) }
