// Command guestinit is PID 1 of the test-only initramfs that runs Go test
// binaries inside the QEMU guest (see qemu-tests/guest.go). It is never part
// of a product image.
//
// It mounts /proc, /sys, /dev, /run and /tmp, loads the kernel modules of
// /etc/cpinit/modules, waits for the scratch disks the host attached
// (vmtest.disks=N on the kernel command line), then runs /vmtest/test with
// the arguments in /vmtest/args and the extra environment in /vmtest/env (one
// per line), and CPINIT_IN_VM=1,
// CPINIT_TEST_DISKS=/dev/vda,... in its environment. Its output goes to the
// console; the last line is "VMTEST: exit=N", then the machine powers off.
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/cpinit/cpinit/internal/pid1"
	"github.com/cpinit/cpinit/internal/testutil"
)

var log = pid1.NewLogger("guestinit: ")

func main() {
	code, err := run()
	if err != nil {
		log.Errorf("%v", err)
		code = 125
	}
	fmt.Fprintf(log.Console(), "VMTEST: exit=%d\n", code)
	pid1.Stop(pid1.PowerOff)
}

func run() (int, error) {
	if err := pid1.MountAll(pid1.EarlyMounts); err != nil {
		return 0, err
	}
	log.Reopen()
	if _, absent, err := pid1.LoadModuleList(pid1.ModuleListPath); err != nil {
		return 0, err
	} else if len(absent) > 0 {
		log.Printf("kernel modules with nothing to drive here: %v", absent)
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return 0, err
	}
	ndisks := 0
	for _, w := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(w, "vmtest.disks="); ok {
			if ndisks, err = strconv.Atoi(v); err != nil {
				return 0, fmt.Errorf("bad %s: %w", w, err)
			}
		}
	}
	var disks []string
	for i := 0; i < ndisks; i++ {
		d := "/dev/vd" + string(rune('a'+i))
		if err := waitFor(d, 10*time.Second); err != nil {
			return 0, err
		}
		disks = append(disks, d)
	}
	args, err := readLines("/vmtest/args")
	if err != nil {
		return 0, err
	}
	env, err := readLines("/vmtest/env")
	if err != nil {
		return 0, err
	}
	cmd := exec.Command("/vmtest/test", args...)
	cmd.Dir = "/vmtest"
	cmd.Env = append(os.Environ(),
		testutil.EnvInVM+"=1",
		testutil.EnvTestDisks+"="+strings.Join(disks, ","),
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"TMPDIR=/tmp",
		"HOME=/tmp",
	)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = log.Console(), log.Console()
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("run /vmtest/test: %w", err)
	}
	return 0, nil
}

func waitFor(path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("scratch disk %s did not appear within %v: %w", path, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var args []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		if s.Text() != "" {
			args = append(args, s.Text())
		}
	}
	return args, s.Err()
}
