package main

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fiFreeze and fiThaw are written out with the generic ioctl encoding
// (dir<<30 | size<<16 | type<<8 | nr). The test checks that encoding on the
// architecture it runs on against x/sys's generated FS_IOC_GETFLAGS
// (_IOR('f', 1, long), which also differs by word size), then our numbers.
func TestFreezeIoctlNumbers(t *testing.T) {
	ioc := func(dir, typ, nr, size uintptr) uintptr { return dir<<30 | size<<16 | typ<<8 | nr }
	var long uintptr
	if got, want := ioc(2, 'f', 1, unsafe.Sizeof(long)), uintptr(unix.FS_IOC_GETFLAGS); got != want {
		t.Fatalf("generic _IOR('f', 1, long) = %#x, x/sys FS_IOC_GETFLAGS = %#x: this architecture encodes ioctls differently", got, want)
	}
	var i int32
	if got := ioc(3, 'X', 119, unsafe.Sizeof(i)); got != fiFreeze {
		t.Errorf("FIFREEZE = %#x, want %#x", uintptr(fiFreeze), got)
	}
	if got := ioc(3, 'X', 120, unsafe.Sizeof(i)); got != fiThaw {
		t.Errorf("FITHAW = %#x, want %#x", uintptr(fiThaw), got)
	}
}
