package pid1

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// StopAction is what PID 1 does when it has nothing left to do or hits a
// fatal error.
type StopAction string

const (
	PowerOff StopAction = "poweroff"
	Halt     StopAction = "halt"
	Reboot   StopAction = "reboot"
)

// ParseStopAction accepts "poweroff", "halt" or "reboot".
func ParseStopAction(s string) (StopAction, error) {
	switch a := StopAction(s); a {
	case PowerOff, Halt, Reboot:
		return a, nil
	}
	return "", fmt.Errorf("unknown stop action %q (want poweroff, halt or reboot)", s)
}

// cmd is the reboot(2) command word. The kernel takes it as an unsigned
// int (kernel/reboot.c SYSCALL_DEFINE4(reboot, ..., unsigned int cmd, ...));
// x/sys/unix.Reboot takes a Go int, which on arm and 386 is 32 bits and
// cannot hold LINUX_REBOOT_CMD_HALT (0xcdef0123) as a positive value:
// rebootArg passes the same 32 bits through an int of either size.
func (a StopAction) cmd() uint32 {
	switch a {
	case Reboot:
		return unix.LINUX_REBOOT_CMD_RESTART
	case Halt:
		return unix.LINUX_REBOOT_CMD_HALT
	default:
		return unix.LINUX_REBOOT_CMD_POWER_OFF
	}
}

// rebootArg reinterprets a 32-bit command word as the int unix.Reboot
// takes: negative on every architecture for words at or above 1<<31, which
// the syscall's register (truncated to unsigned int by the kernel) carries
// unchanged.
func rebootArg(c uint32) int {
	return int(int32(c))
}

// Stop syncs all filesystems and powers off, halts or reboots. It never
// returns: if reboot(2) fails (it cannot for root, but PID 1 must not exit
// on any path) it sleeps forever, which leaves the machine stopped.
func Stop(a StopAction) {
	unix.Sync()
	_ = unix.Reboot(rebootArg(a.cmd()))
	for {
		time.Sleep(time.Hour)
	}
}
