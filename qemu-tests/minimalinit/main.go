// Command minimalinit is the baseline of the boot benchmark
// (qemu-tests/bench, section boot): the least an initramfs init must do to
// start an A/B system with userdata, and nothing of cpinit's checkpoint
// work. It mounts /proc, /sys, /dev, /run and /tmp (pid1.EarlyMounts, as
// cpinit does), loads the modules listed in its initramfs (virtio-blk only,
// modules.list here), mounts cpinit.root= read-only at /newroot and
// cpinit.userdata= at /newroot/data the way cpinit does (same kernel
// parameters, same device lookup, same mount flags) and switch_roots to the
// next init. It reads no metadata store or misc partition and loads no
// device-mapper.
//
// It logs three milestones to the kernel log only (not the console), so
// the benchmark can tell its phases apart at almost no cost. On failure it
// prints the error on the console and powers off.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/internal/pid1"
	"github.com/u-root/u-root/pkg/mount"
	"golang.org/x/sys/unix"
)

const newRoot = "/newroot"

var kmsg *os.File

// mark writes one line to the kernel log (it carries the kernel's
// timestamp).
func mark(format string, args ...any) {
	if kmsg != nil {
		fmt.Fprintf(kmsg, "<6>minimalinit: "+format+"\n", args...)
	}
}

func main() {
	err := run()
	fmt.Fprintf(os.Stderr, "minimalinit: FATAL: %v\n", err)
	pid1.Stop(pid1.PowerOff)
}

// run returns only on failure.
func run() error {
	if err := pid1.MountAll(pid1.EarlyMounts); err != nil {
		return err
	}
	kmsg, _ = os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	mark("started")
	if _, _, err := pid1.LoadModuleList(pid1.ModuleListPath); err != nil {
		return err
	}
	mark("loaded kernel modules")
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	p := map[string]string{"rootfstype": "ext4", "fstype": "ext4", "datadir": "/data", "init": "/sbin/init"}
	for _, w := range strings.Fields(string(b)) {
		if k, v, ok := strings.Cut(w, "="); ok && strings.HasPrefix(k, "cpinit.") {
			p[strings.TrimPrefix(k, "cpinit.")] = v
		}
	}
	// cpinit's defaults: cpinit.rootwait=10s, polling every 50 ms.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	root, err := waitDev(ctx, p["root"])
	if err != nil {
		return fmt.Errorf("cpinit.root=%s: %w", p["root"], err)
	}
	if err := mountDev(root, newRoot, p["rootfstype"], unix.MS_RDONLY); err != nil {
		return err
	}
	data, err := waitDev(ctx, p["userdata"])
	if err != nil {
		return fmt.Errorf("cpinit.userdata=%s: %w", p["userdata"], err)
	}
	if err := mountDev(data, filepath.Join(newRoot, p["datadir"]), p["fstype"], unix.MS_NODEV|unix.MS_NOSUID); err != nil {
		return err
	}
	mark("switch_root to %s, exec %s", newRoot, p["init"])
	return mount.SwitchRoot(newRoot, p["init"])
}

func waitDev(ctx context.Context, spec string) (string, error) {
	s, err := devspec.Parse(spec)
	if err != nil {
		return "", err
	}
	return devspec.WaitResolve(ctx, s, 50*time.Millisecond)
}

func mountDev(dev, target, fstype string, flags uintptr) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, target, fstype, flags, ""); err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", dev, target, fstype, err)
	}
	return nil
}
