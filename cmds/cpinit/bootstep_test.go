package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/pid1"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// TestBootStepStatus: boot-step's exit status is what the calling script
// must do: go on, reboot (a reboot the boot step asks for, whatever
// cpinit.on_fatal= says, or a fatal error under on_fatal=reboot), power
// off, or stop (a fatal error under halt, the default).
func TestBootStepStatus(t *testing.T) {
	reboot := fmt.Errorf("boot: %w", &errRebootNow{"not starting slot _b"})
	fatal := errors.New("metadata store: refusing")
	for _, c := range []struct {
		err     error
		onFatal pid1.StopAction
		want    int
	}{
		{nil, pid1.Halt, exitOK},
		{nil, pid1.Reboot, exitOK},
		{reboot, pid1.Halt, exitReboot},
		{reboot, pid1.PowerOff, exitReboot},
		{fatal, pid1.Halt, exitError},
		{fatal, pid1.Reboot, exitReboot},
		{fatal, pid1.PowerOff, exitPowerOff},
	} {
		if got := bootStepStatus(c.err, c.onFatal); got != c.want {
			t.Errorf("bootStepStatus(%v, %s) = %d, want %d", c.err, c.onFatal, got, c.want)
		}
	}
	if got := exitStatus(&bootStepExit{status: exitPowerOff}); got != exitPowerOff {
		t.Errorf("exitStatus(bootStepExit 4) = %d", got)
	}
}

// TestBootStepIgnored: the parameters only cpinit's own initramfs uses are
// named as ignored, in command line order; cpinit.rootwait= is not
// cpinit.root=.
func TestBootStepIgnored(t *testing.T) {
	got := bootStepIgnored(`root=/dev/vda cpinit.root=LABEL=system_a cpinit.rootwait=5 cpinit.userdata=/dev/vdc cpinit.init=/sbin/init cpinit.rootfstype="ext4"`)
	var keys []string
	for _, w := range got {
		keys = append(keys, strings.Fields(w)[3])
	}
	if want := []string{"cpinit.root=LABEL=system_a", "cpinit.init=/sbin/init", "cpinit.rootfstype=ext4"}; !reflect.DeepEqual(keys, want) {
		t.Errorf("ignored %q, want %q (warnings: %q)", keys, want, got)
	}
	if got := bootStepIgnored("cpinit.userdata=/dev/vdc cpinit.rootwait=5 root=/dev/vda init=/bin/sh"); len(got) != 0 {
		t.Errorf("warnings for a distribution's command line: %q", got)
	}
}

// TestCheckMountedRoot: boot-step refuses a root the initramfs has not
// mounted: a directory that is not a mount point, a file, nothing.
func TestCheckMountedRoot(t *testing.T) {
	for _, root := range []string{"/", "/proc"} {
		if err := checkMountedRoot(root); err != nil {
			t.Errorf("checkMountedRoot(%s): %v", root, err)
		}
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for root, want := range map[string]string{
		dir:                            "is not a mount point",
		file:                           "is not a directory",
		filepath.Join(dir, "sysroot"):  "no such file",
		filepath.Join(dir, "./") + "/": "is not a mount point",
	} {
		if err := checkMountedRoot(root); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("checkMountedRoot(%s) = %v, want %q", root, err, want)
		}
	}
}

// TestRunBootStepFatal: a boot step that fails before touching any device
// (a bad command line, a root that is not mounted) ends with the status
// cpinit.on_fatal= asks for.
func TestRunBootStepFatal(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		root, cmdline string
		want          int
	}{
		{"/", "", exitError}, // no cpinit.userdata=
		{"/", "cpinit.on_fatal=reboot", exitReboot},
		{"/", "cpinit.userdata=/dev/vdc cpinit.on_fatal=poweroff cpinit.rootwait=x", exitPowerOff},
		{dir, "cpinit.userdata=/dev/vdc cpinit.on_fatal=reboot", exitReboot}, // not a mount point
		{dir, "cpinit.userdata=/dev/vdc", exitError},
	} {
		if got := runBootStep(c.root, c.cmdline); got != c.want {
			t.Errorf("runBootStep(%s, %q) = %d, want %d", c.root, c.cmdline, got, c.want)
		}
	}
}

// TestBootStepUsage: boot-step needs --root and takes no arguments.
func TestBootStepUsage(t *testing.T) {
	for _, args := range [][]string{
		{"boot-step"},
		{"boot-step", "--root"},
		{"boot-step", "--root", "/sysroot", "extra"},
		{"boot-step", "--bogus", "/sysroot"},
	} {
		if err := runCLI(args, io.Discard); exitStatus(err) != exitUsage {
			t.Errorf("cpinit %s: %v (status %d), want a usage error", strings.Join(args, " "), err, exitStatus(err))
		}
	}
}

// TestDistroDocsCmdline: the kernel command lines of docs/initramfs-tools.md
// and docs/dracut.md parse, name no parameter boot-step ignores, and give
// the booted slot.
func TestDistroDocsCmdline(t *testing.T) {
	for _, doc := range []string{"../../docs/initramfs-tools.md", "../../docs/dracut.md"} {
		lines := fencedBlocks(t, doc, "cmdline")
		if len(lines) == 0 {
			t.Errorf("%s has no cmdline block", doc)
		}
		for _, l := range lines {
			if _, _, err := ParseParams(l); err != nil {
				t.Errorf("%s: %q: %v", doc, l, err)
			}
			if w := bootStepIgnored(l); len(w) != 0 {
				t.Errorf("%s: %q: %q", doc, l, w)
			}
			if s := bootstate.SlotFromCmdline(l); s == "" {
				t.Errorf("%s: %q names no slot", doc, l)
			}
		}
	}
}
