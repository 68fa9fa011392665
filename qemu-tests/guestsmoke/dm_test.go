// Package guestsmoke holds the smallest in-guest test: it proves the path
// every device-mapper test takes (a Go test binary in the QEMU guest opening
// /dev/mapper/control on the real kernel).
package guestsmoke

import (
	"os"
	"os/exec"
	"testing"
	"unsafe"

	"github.com/cpinit/cpinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestVMDeviceMapperVersion issues DM_VERSION (include/uapi/linux/dm-ioctl.h)
// and checks the kernel answers with interface major version 4, the only one
// Linux has shipped since 2.6.
func TestVMDeviceMapperVersion(t *testing.T) {
	testutil.RequireVM(t)
	f, err := os.OpenFile("/dev/mapper/control", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open /dev/mapper/control: %v (is dm-mod loaded?)", err)
	}
	defer f.Close()
	var io unix.DmIoctl
	io.Version = [3]uint32{unix.DM_VERSION_MAJOR, 0, 0}
	io.Data_size = uint32(unsafe.Sizeof(io))
	io.Data_start = uint32(unsafe.Sizeof(io))
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.DM_VERSION, uintptr(unsafe.Pointer(&io))); e != 0 {
		t.Fatalf("DM_VERSION: %v", e)
	}
	t.Logf("device-mapper interface version %d.%d.%d", io.Version[0], io.Version[1], io.Version[2])
	if io.Version[0] != 4 {
		t.Fatalf("dm interface major version %d, want 4", io.Version[0])
	}
}

// TestVMSkipTwin exists to be skipped: qemu-tests runs it with
// GUESTSMOKE_SKIP=1 and checks the runner reports the skip as a failure
// (the negative twin of every in-guest run).
func TestVMSkipTwin(t *testing.T) {
	testutil.RequireVM(t)
	if os.Getenv("GUESTSMOKE_SKIP") == "1" {
		t.Skip("asked to skip: the runner must treat this as a failure")
	}
}

// TestVMGuestTools checks the tools the test initramfs promises are there and
// run (a dangling mkfs.ext4 symlink once slipped through).
func TestVMGuestTools(t *testing.T) {
	testutil.RequireVM(t)
	img := t.TempDir() + "/fs.img"
	if err := os.WriteFile(img, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{
		{"mkfs.ext4", "-q", "-F", img},
		{"e2fsck", "-fn", img},
		{"dmsetup", "version"},
		{"sha256sum", img},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Errorf("%v: %v\n%s", c, err, out)
		}
	}
}
