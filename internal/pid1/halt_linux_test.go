package pid1

import (
	"testing"

	"golang.org/x/sys/unix"
)

// The reboot command words are 32-bit values; two of them (HALT
// 0xcdef0123, and RESTART2 which we do not use) do not fit a 32-bit int.
// Whatever int size the test runs with (go test under qemu-arm and
// qemu-i386 covers 32 bits), the int handed to unix.Reboot must carry the
// exact word to the kernel's unsigned int.
func TestRebootCommandWord(t *testing.T) {
	for _, tc := range []struct {
		a    StopAction
		want uint32
	}{
		{PowerOff, unix.LINUX_REBOOT_CMD_POWER_OFF},
		{Halt, unix.LINUX_REBOOT_CMD_HALT},
		{Reboot, unix.LINUX_REBOOT_CMD_RESTART},
	} {
		got := rebootArg(tc.a.cmd())
		// What the syscall passes: uintptr(int), truncated by the kernel
		// to unsigned int.
		if w := uint32(uintptr(got)); w != tc.want {
			t.Errorf("%s: reboot(2) would get %#x, want %#x", tc.a, w, tc.want)
		}
	}
}
