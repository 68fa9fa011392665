package fiemap

// This is the only file of the package that uses unsafe: the raw ioctls that
// golang.org/x/sys/unix does not wrap (FS_IOC_FIEMAP, the f2fs pin ioctl) and
// the inode-flags ioctls. Encoding and decoding of the fiemap buffer is pure
// and lives in buffer.go.

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl request numbers, computed with the generic _IOC encoding
// (include/uapi/asm-generic/ioctl.h: dir<<30 | size<<16 | type<<8 | nr), which
// x86, arm and riscv share. (powerpc, mips and sparc encode differently; there
// these calls fail with ENOTTY rather than do anything else.)
const (
	// FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap) (include/uapi/linux/fs.h);
	// sizeof(struct fiemap) == 32.
	fsIocFiemap = 0xC020660B
	// F2FS_IOC_SET_PIN_FILE = _IOW(0xf5, 13, __u32) (include/uapi/linux/f2fs.h).
	// F2FS_IOC_GET_PIN_FILE is not used: it returns the GC failure count,
	// which is 0 for a pinned file too; FS_NOCOW_FL tells the pin state.
	f2fsIocSetPinFile = 0x4004F50D
)

// FS_IMMUTABLE_FL (include/uapi/linux/fs.h): "Immutable file". The kernel
// refuses to open such an inode for writing (inode_permission: EPERM for
// MAY_WRITE on IS_IMMUTABLE), to truncate, unlink, rename or fallocate it. On
// ext4 that also rules out EXT4_IOC_MOVE_EXT (e4defrag) in both roles: the
// ioctl wants the original and the donor open for writing (fs/ext4/ioctl.c,
// EBADF otherwise) and mext_check_arguments refuses an immutable donor.
// A descriptor opened for writing *before* the flag was set keeps working,
// which is why Allocate creates the file O_EXCL in a root-only directory and
// closes its own descriptor.
const fsImmutableFl = 0x00000010

// FS_NOCOW_FL (include/uapi/linux/fs.h). f2fs reports a pinned file
// (FI_PIN_FILE) with this flag in FS_IOC_GETFLAGS (fs/f2fs/file.c,
// f2fs_fileattr_get); AOSP libfiemap's IsFilePinned checks the same.
const fsNocowFl = 0x00800000

// fiemapBatch is how many extents one FS_IOC_FIEMAP call returns at most. The
// kernel caps a request at FIEMAP_MAX_EXTENTS (UINT_MAX/sizeof(extent)); 8192
// keeps the buffer at 448 KiB and a 100k-extent file at 13 calls.
const fiemapBatch = 8192

// readExtents returns the raw FIEMAP extent list of f, paging in batches of
// fiemapBatch until the extent flagged LAST.
func readExtents(f *os.File) ([]Extent, error) {
	return readExtentsBatch(f, fiemapBatch)
}

func readExtentsBatch(f *os.File, batch uint32) ([]Extent, error) {
	buf := make([]byte, headerSize+int(batch)*extentSize)
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var tmp []Extent
	return collect(func(start uint64) ([]Extent, error) {
		if err := encodeRequest(buf, start, fiemapFlagSync, batch); err != nil {
			return nil, err
		}
		var errno unix.Errno
		if err := rc.Control(func(fd uintptr) {
			_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, fsIocFiemap, uintptr(unsafe.Pointer(&buf[0])))
		}); err != nil {
			return nil, err
		}
		if errno != 0 {
			return nil, os.NewSyscallError("ioctl FS_IOC_FIEMAP", errno)
		}
		tmp, err = decodeReply(tmp[:0], buf)
		return tmp, err
	})
}

// ioctlUint32 performs an ioctl whose argument is a pointer to a 32-bit value,
// reading or writing *v.
func ioctlUint32(f *os.File, name string, req uintptr, v *uint32) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(unsafe.Pointer(v)))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return os.NewSyscallError("ioctl "+name, errno)
	}
	return nil
}

// getFlags/setFlags use FS_IOC_GETFLAGS/FS_IOC_SETFLAGS. Their numbers say
// "long" but every filesystem reads and writes an int (fs/ioctl.c
// ioctl_getflags: put_user(fa.flags, argp) with argp an unsigned int *), so a
// 32-bit value is right on 64-bit kernels too.
func getFlags(f *os.File) (uint32, error) {
	var v uint32
	err := ioctlUint32(f, "FS_IOC_GETFLAGS", unix.FS_IOC_GETFLAGS, &v)
	return v, err
}

func setFlags(f *os.File, v uint32) error {
	return ioctlUint32(f, "FS_IOC_SETFLAGS", unix.FS_IOC_SETFLAGS, &v)
}

func f2fsSetPin(f *os.File, pin bool) error {
	var v uint32
	if pin {
		v = 1
	}
	return ioctlUint32(f, "F2FS_IOC_SET_PIN_FILE", f2fsIocSetPinFile, &v)
}
