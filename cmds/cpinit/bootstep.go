package main

import (
	"errors"
	"fmt"

	"github.com/cpinit/cpinit/internal/cmdline"
	"github.com/cpinit/cpinit/internal/pid1"
)

// `cpinit boot-step` is PID 1's boot step for a distribution's initramfs
// (initramfs-tools, dracut: dist/initramfs-tools, dist/dracut), whose own
// init mounts the root and switches to it. This file holds what is pure:
// the exit statuses and the parameters that do not apply;
// bootstep_linux.go runs it.

// Exit statuses of `cpinit boot-step` beyond exitOK, exitError (a fatal
// error under cpinit.on_fatal=halt) and exitUsage: what the calling
// script must do next (docs/cli.md). The script acts, not cpinit: the
// distribution's init owns the machine and stops it its own way
// (initramfs-tools' reboot -f after its scripts, systemd's reboot.target).
const (
	// exitReboot: reboot now, userdata not mounted. Either this boot must
	// not start the booted slot's system (a rollback left userdata as it
	// was before that slot's update; the bootloader was switched to the
	// other slot: errRebootNow), or a fatal error under
	// cpinit.on_fatal=reboot.
	exitReboot = 3
	// exitPowerOff: power off, userdata not mounted: a fatal error under
	// cpinit.on_fatal=poweroff.
	exitPowerOff = 4
)

// bootStepStatus is boot-step's exit status for the boot step's result:
// exitOK when the boot goes on; exitReboot when the step asks for a reboot
// (errRebootNow, not a failure); for a fatal error what cpinit.on_fatal=
// says: halt is exitError (the initramfs stops the boot its own way:
// initramfs-tools' panic, dracut's emergency shell, both of which keep the
// message on the screen as PID 1's halt does), reboot is exitReboot,
// poweroff exitPowerOff.
func bootStepStatus(err error, onFatal pid1.StopAction) int {
	var rb *errRebootNow
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &rb):
		return exitReboot
	}
	switch onFatal {
	case pid1.Reboot:
		return exitReboot
	case pid1.PowerOff:
		return exitPowerOff
	}
	return exitError
}

// bootStepIgnored are warnings for the cpinit.* parameters that only
// cpinit's own initramfs uses: under a distribution's initramfs its init
// mounts the root (root=, rootfstype=) and runs the next init (init=), and
// boot-step mounts userdata under the root it is given.
func bootStepIgnored(line string) []string {
	why := map[string]string{
		"cpinit.root":       "the distribution's initramfs mounts the root (root=)",
		"cpinit.rootfstype": "the distribution's initramfs mounts the root (rootfstype=)",
		"cpinit.init":       "the distribution's initramfs runs the next init (init=)",
	}
	var warnings []string
	for _, p := range cmdline.Parse(line).Last() {
		if r, ok := why[p.Key]; ok {
			warnings = append(warnings, fmt.Sprintf("ignoring kernel parameter %s under boot-step: %s", p, r))
		}
	}
	return warnings
}

// bootStepExit ends `cpinit boot-step` with status. Why has already been
// logged on the console and the kernel log, so main prints nothing more.
type bootStepExit struct {
	status int
}

func (e *bootStepExit) Error() string {
	return fmt.Sprintf("boot step: exit status %d", e.status)
}
