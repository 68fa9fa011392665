// Command sysinit is the "system" of the test slots: the init cpinit
// switch_roots to in the QEMU tests, standing in for the real init (systemd,
// Android init) of an A/B system slot. It reports on the console in
// machine-readable "sysinit: " lines.
//
// Kernel parameters (it reads /proc/cmdline, which switch_root moved into
// its root):
//
//	sysinit.action=report (default)  print every /data/*.txt, power off
//	sysinit.action=write             write sysinit.token= to /data/cut.txt,
//	                                 fsync it and the directory, print
//	                                 "sysinit: wrote cut.txt", then wait
//	                                 forever (the host cuts the power)
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
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

func params() map[string]string {
	p := map[string]string{}
	b, _ := os.ReadFile("/proc/cmdline")
	for _, w := range strings.Fields(string(b)) {
		if k, v, ok := strings.Cut(w, "="); ok && strings.HasPrefix(k, "sysinit.") {
			p[strings.TrimPrefix(k, "sysinit.")] = v
		}
	}
	return p
}

func run() error {
	fmt.Printf("sysinit: pid=%d\n", os.Getpid())
	p := params()
	switch p["action"] {
	case "", "report":
		return report()
	case "write":
		if err := writeSynced("/data/cut.txt", p["token"]+"\n"); err != nil {
			return err
		}
		fmt.Println("sysinit: wrote cut.txt")
		for {
			time.Sleep(time.Hour)
		}
	}
	return fmt.Errorf("unknown sysinit.action=%q", p["action"])
}

func report() error {
	files, err := filepath.Glob("/data/*.txt")
	if err != nil {
		return err
	}
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		fmt.Printf("sysinit: %s=%q\n", filepath.Base(f), strings.TrimSpace(string(b)))
	}
	return nil
}

func writeSynced(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
