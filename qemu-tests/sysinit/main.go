// Command sysinit is the "system" of the test slots: the init cpinit
// switch_roots to in the QEMU tests. It reports what it finds on the console
// in machine-readable lines and powers off. It stands in for the real init
// (systemd, Android init) of an A/B system slot.
package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(); err != nil {
		fmt.Printf("sysinit: error: %v\n", err)
	}
	// PID 1 must not exit: power off, then wait for the kernel to do it.
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}

func run() error {
	fmt.Printf("sysinit: pid=%d\n", os.Getpid())
	b, err := os.ReadFile("/data/hello.txt")
	if err != nil {
		return err
	}
	fmt.Printf("sysinit: hello.txt=%q\n", strings.TrimSpace(string(b)))
	return nil
}
