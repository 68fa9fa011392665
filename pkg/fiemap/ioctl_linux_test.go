package fiemap

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// genericIOC is include/uapi/asm-generic/ioctl.h's _IOC: dir<<30 |
// size<<16 | type<<8 | nr, with _IOC_WRITE 1 and _IOC_READ 2.
func genericIOC(dir, typ, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | typ<<8 | nr
}

// Our hand-written ioctl numbers assume the generic encoding. The test
// checks that assumption on the architecture it runs on (make cross runs it
// on arm64, arm and 386) against numbers golang.org/x/sys/unix generated
// from that architecture's headers: FS_IOC_GETFLAGS is _IOR('f', 1, long),
// so it also differs by word size (0x80086601 on 64-bit, 0x80046601 on
// 32-bit). An architecture with another encoding (powerpc, mips, sparc)
// fails here before FIEMAP gets a wrong request number.
func TestIoctlNumbersMatchArchitecture(t *testing.T) {
	var long uintptr
	if got, want := genericIOC(2, 'f', 1, unsafe.Sizeof(long)), uintptr(unix.FS_IOC_GETFLAGS); got != want {
		t.Fatalf("generic _IOR('f', 1, long) = %#x, x/sys FS_IOC_GETFLAGS = %#x: this architecture encodes ioctls differently", got, want)
	}
	if got, want := genericIOC(1, 'f', 2, unsafe.Sizeof(long)), uintptr(unix.FS_IOC_SETFLAGS); got != want {
		t.Fatalf("generic _IOW('f', 2, long) = %#x, x/sys FS_IOC_SETFLAGS = %#x", got, want)
	}
	if got := genericIOC(3, 'f', 11, 32); got != fsIocFiemap {
		t.Errorf("FS_IOC_FIEMAP: %#x, want %#x", uintptr(fsIocFiemap), got)
	}
	if got := genericIOC(1, 0xf5, 13, 4); got != f2fsIocSetPinFile {
		t.Errorf("F2FS_IOC_SET_PIN_FILE: %#x, want %#x", uintptr(f2fsIocSetPinFile), got)
	}
}
