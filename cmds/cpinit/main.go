// Command cpinit checkpoints the userdata partition before an A/B update's
// new slot first boots and rolls it back if the update fails.
//
// As PID 1 (the /init of an initramfs) it mounts /proc, /sys and /dev, loads
// the kernel modules listed in /etc/cpinit/modules, reads its cpinit.*
// kernel parameters (see Params), maps and mounts userdata, prints one
// machine-readable status line on the console and switch_roots to the next
// init. PID 1 never exits: a fatal error is logged to the console and the
// kernel log, then the machine halts, reboots or powers off
// (cpinit.on_fatal=).
//
// Run as any other PID it is the command line tool for the running system
// and recovery mode, and, as `cpinit boot-step`, the same boot step run
// by a distribution's initramfs (initramfs-tools, dracut) before it
// switches to the root it mounted.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	if os.Getpid() == 1 {
		pid1Main() // never returns
	}
	if err := runCLI(os.Args[1:], os.Stdout); err != nil {
		// boot-step has logged why it stops the boot on the console and
		// the kernel log already.
		var bs *bootStepExit
		if !errors.As(err, &bs) {
			fmt.Fprintf(os.Stderr, "cpinit: %v\n", err)
		}
		os.Exit(exitStatus(err))
	}
}
