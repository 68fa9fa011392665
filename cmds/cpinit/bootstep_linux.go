package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/cpinit/cpinit/internal/pid1"
	"golang.org/x/sys/unix"
)

// cmdBootStep is `cpinit boot-step --root DIR [--cmdline CMDLINE]`: PID
// 1's boot step (bootStep: recovery mode, or the checkpoint decision, the
// snapshot's creation, reattach, verification or merge, and userdata
// mounted at DIR + cpinit.datadir) run by a distribution's initramfs after
// it has mounted the root at DIR and before it switches to it:
// initramfs-tools' local-bottom script with DIR=${rootmnt}
// (dist/initramfs-tools), dracut's cpinit-boot-step.service or pre-pivot
// hook with DIR=/sysroot (dist/dracut). Its exit status says what the
// script does next (bootStepStatus).
func cmdBootStep(args []string) error {
	fs := newFlags("boot-step")
	root := fs.String("root", "", "the root the initramfs has mounted (required)")
	cmdline := fs.String("cmdline", "", "the kernel command line (default: /proc/cmdline)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs.Args()); err != nil {
		return err
	}
	if *root == "" {
		return usagef("--root DIR is required: the directory where the initramfs mounted the root")
	}
	if *cmdline == "" {
		b, err := readCmdline()
		if err != nil {
			return err
		}
		*cmdline = b
	}
	// The initramfs's init has pointed stdout at the console (or systemd
	// at the journal and the console); the kernel log keeps the lines in
	// dmesg, as PID 1's do. Under systemd (JOURNAL_STREAM, systemd.exec(5))
	// journald reads the kernel log as well as stdout: writing both would
	// put every line in the journal twice.
	if os.Getenv("JOURNAL_STREAM") == "" {
		log.OpenKmsg()
	}
	if st := runBootStep(*root, *cmdline); st != exitOK {
		return &bootStepExit{status: st}
	}
	return nil
}

// runBootStep runs the boot step and returns boot-step's exit status,
// after logging why the boot must not go on, if it must not.
func runBootStep(root, cmdline string) (status int) {
	onFatal := pid1.Halt
	defer func() {
		// A panic is a fatal error like any other: the script must still
		// get a status that stops the boot, and the message must reach the
		// console.
		if r := recover(); r != nil {
			status = stopBootStep(fmt.Errorf("panic: %v\n%s", r, debug.Stack()), onFatal)
		}
	}()
	return stopBootStep(bootStepRun(root, cmdline, &onFatal), onFatal)
}

// stopBootStep logs the end of a boot step that did not go on and returns
// its exit status (bootStepStatus).
func stopBootStep(err error, onFatal pid1.StopAction) int {
	st := bootStepStatus(err, onFatal)
	var rb *errRebootNow
	switch {
	case st == exitOK:
		return st
	case errors.As(err, &rb):
		log.Printf("%s (exit status %d: the initramfs reboots)", rb.why, st)
	default:
		log.Errorf("FATAL: %v", err)
		log.Errorf("stopping the boot, userdata not mounted: exit status %d, cpinit.on_fatal=%s (set it to change)", st, onFatal)
	}
	// The script reboots or powers off, maybe with reboot -f, which skips
	// what an init's shutdown would flush. The metadata store and misc
	// were flushed as they were written; this is for anything else.
	unix.Sync()
	return st
}

// bootStepRun is boot-step's work: the parameters, the root the initramfs
// mounted, then bootStep with device-mapper loaded by modprobe.
func bootStepRun(root, cmdline string, onFatal *pid1.StopAction) error {
	log.Printf("boot step in the distribution's initramfs (PID %d), root %s", os.Getpid(), root)
	p, warnings, perr := ParseParams(cmdline)
	*onFatal = p.OnFatal
	for _, w := range append(warnings, bootStepIgnored(cmdline)...) {
		log.Errorf("warning: %s", w)
	}
	if perr != nil {
		return perr
	}
	if err := checkMountedRoot(root); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeoutCause(context.Background(), p.RootWait,
		fmt.Errorf("device did not appear within cpinit.rootwait=%s", p.RootWait))
	defer cancel()
	return bootStep(ctx, p, cmdline, filepath.Join(root, p.DataDir), modprobeDM())
}

// checkMountedRoot refuses a root that is not a mount point: the
// initramfs has not mounted the system there (yet). Userdata mounted on
// it would be hidden by the root's mount coming later, and the system
// would start on an empty data directory of its root filesystem while
// userdata stays mounted out of sight. A mount point is a directory on
// another device than its parent's (the root directory "/" is one too).
func checkMountedRoot(root string) error {
	abs, err := filepath.Abs(root)
	if err != nil {
		return fmt.Errorf("root %s: %w", root, err)
	}
	var st, parent unix.Stat_t
	if err := unix.Stat(abs, &st); err != nil {
		return &os.PathError{Op: "stat", Path: abs, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("root %s is not a directory", abs)
	}
	if abs == "/" {
		return nil
	}
	if err := unix.Stat(filepath.Dir(abs), &parent); err != nil {
		return &os.PathError{Op: "stat", Path: filepath.Dir(abs), Err: err}
	}
	if st.Dev == parent.Dev && st.Ino != parent.Ino {
		return fmt.Errorf("root %s is not a mount point: the initramfs has not mounted the system there; "+
			"run boot-step after it mounts the root (initramfs-tools: local-bottom; dracut: after sysroot.mount)", abs)
	}
	return nil
}

// dmModules are what boot-step loads when a boot first needs
// device-mapper: the snapshot targets and the core they need (dm-bufio
// comes as dm-snapshot's dependency).
var dmModules = []string{"dm-mod", "dm-snapshot"}

// modprobeDM loads device-mapper the distribution's way, with the image's
// modprobe (kmod's, which both initramfs-tools and dracut install): it
// resolves dependencies from the image's modules.dep and applies its
// modprobe.d, and does nothing for a module already loaded or built in.
// An image without modprobe falls back to cpinit's own loader, u-root's
// kmodule, which reads modules.dep itself.
func modprobeDM() dmLoader {
	return dmLoader{
		hint: "the initramfs lacks dm-mod and dm-snapshot: install cpinit's initramfs hook, which adds them " +
			"(dist/initramfs-tools, dist/dracut), and rebuild the image (update-initramfs -u, dracut -f), or build them into the kernel",
		load: func() error {
			path, err := exec.LookPath("modprobe")
			if err != nil {
				if _, err := pid1.LoadModules(dmModules); err != nil {
					return err
				}
				log.Printf("loaded device-mapper modules (no modprobe in PATH): %v", dmModules)
				return nil
			}
			args := append([]string{"-a"}, dmModules...)
			if out, err := exec.Command(path, args...).CombinedOutput(); err != nil {
				return fmt.Errorf("%s %s: %w: %s", path, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
			}
			log.Printf("loaded device-mapper modules with %s: %v", path, dmModules)
			return nil
		},
	}
}
