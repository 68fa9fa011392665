// Command hookinit is the /init of a stand-in "existing initramfs" for
// TestEarlyHook: after cpinit (built on top of it with initramfs.Build's
// Base) has mapped and mounted userdata, cpinit execs it as PID 1. It
// reports what it finds and powers off.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	fmt.Printf("HOOK: pid=%d\n", os.Getpid())
	if err := report(); err != nil {
		fmt.Printf("HOOK: error: %v\n", err)
	}
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func report() error {
	// /proc is still mounted by cpinit: the initramfs stays the root.
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// mountinfo: ... mount-point ... - fstype source options
		fields := strings.Fields(s.Text())
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if !ok || len(fields) < 5 {
			continue
		}
		if strings.Fields(pre)[4] == "/data" {
			p := strings.Fields(post)
			fmt.Printf("HOOK: /data fstype=%s source=%s\n", p[0], p[1])
		}
	}
	b, err := os.ReadFile("/data/hello.txt")
	if err != nil {
		return err
	}
	fmt.Printf("HOOK: hello=%s\n", strings.TrimSpace(string(b)))
	return nil
}
