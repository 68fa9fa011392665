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

func (a StopAction) cmd() int {
	switch a {
	case Reboot:
		return unix.LINUX_REBOOT_CMD_RESTART
	case Halt:
		return unix.LINUX_REBOOT_CMD_HALT
	default:
		return unix.LINUX_REBOOT_CMD_POWER_OFF
	}
}

// Stop syncs all filesystems and powers off, halts or reboots. It never
// returns: if reboot(2) fails (it cannot for root, but PID 1 must not exit
// on any path) it sleeps forever, which leaves the machine stopped.
func Stop(a StopAction) {
	unix.Sync()
	_ = unix.Reboot(a.cmd())
	for {
		time.Sleep(time.Hour)
	}
}
