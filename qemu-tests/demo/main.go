// Command demo is the main job of `make demo`: an A/B device in QEMU gets a
// good update that commits, then a bad update whose new slot keeps
// crashing; the bootloader falls back and cpinit rolls userdata back. The
// terminal shows the console of every boot and the checksums of userdata
// before and after, read from the disk image on the host.
//
// -kernel picks the pinned kernel (an env file in initramfs/); with the
// arm64 kernel the device is an arm64 one on qemu-system-aarch64:
//
//	go run ./qemu-tests/demo -kernel kernel-arm64.env
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/pkg/bootstate"
	qemutests "github.com/cpinit/cpinit/qemu-tests"
)

var kernelEnv = flag.String("kernel", initramfs.CloudKernel, "pinned kernel to boot: its env file in initramfs/ (e.g. "+initramfs.Arm64Kernel+" for an arm64 device)")

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: FAILED: %v\n", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) {
	fmt.Printf("\n\033[1m==> "+format+"\033[0m\n", args...)
}

// consoleFilter passes the lines a person wants to read: cpinit's and the
// system's, not the kernel's printk or switch_root's chatter.
type consoleFilter struct{ w *io.PipeWriter }

func newConsoleFilter() *consoleFilter {
	r, w := io.Pipe()
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			l := strings.TrimRight(s.Text(), "\r")
			if strings.HasPrefix(l, "[") || strings.Contains(l, "switch_root:") || strings.TrimSpace(l) == "" {
				continue
			}
			fmt.Printf("    | %s\n", l)
		}
	}()
	return &consoleFilter{w}
}

func (c *consoleFilter) Write(b []byte) (int, error) { return c.w.Write(b) }

func digest(d *qemutests.ABDevice) (string, int, error) {
	m, err := d.UserdataManifest()
	if err != nil {
		return "", 0, err
	}
	return m.Digest(), len(m), nil
}

func showDigest(d *qemutests.ABDevice, when string) (string, error) {
	sum, n, err := digest(d)
	if err != nil {
		return "", err
	}
	fmt.Printf("userdata %s: %d entries, manifest sha256 %s (e2fsck -fn clean)\n", when, n, sum)
	return sum, nil
}

// boot lets the bootloader pick a slot and boots it until it stops.
func boot(d *qemutests.ABDevice, expect string) (int, error) {
	return bootExpect(d, func(int) string { return expect })
}

// bootExpect is boot with what to expect on the console depending on the
// slot the bootloader picked ("": nothing).
func bootExpect(d *qemutests.ABDevice, expectFor func(slot int) string) (int, error) {
	slot, err := d.SelectSlot()
	if err != nil {
		return -1, err
	}
	expect := expectFor(slot)
	bc, _ := d.ReadMisc()
	fmt.Printf("  bootloader: booting slot %s (tries left %d)\n", bootstate.SlotSuffixes[slot], bc.Slots[slot].TriesRemaining)
	o := d.Options(slot, "quiet")
	o.Log = newConsoleFilter()
	vm, err := qemutests.Start(o)
	if err != nil {
		return slot, err
	}
	defer vm.Kill()
	if expect != "" {
		if _, err := vm.Expect(regexp.MustCompile(expect), 3*time.Minute); err != nil {
			return slot, err
		}
	}
	vm.Wait(3 * time.Minute)
	time.Sleep(50 * time.Millisecond) // let the filter print the last lines
	return slot, nil
}

func run() error {
	say("building: pinned kernel, cpinit initramfs, two system slots, userdata, metadata, misc")
	var k qemutests.Kernel
	var initrd string
	var err error
	if *kernelEnv == initramfs.CloudKernel {
		if k, err = qemutests.FetchKernel(); err != nil {
			return err
		}
		initrd, err = qemutests.CpinitInitramfs()
	} else {
		k, initrd, err = qemutests.CpinitInitramfsFor(*kernelEnv)
	}
	if err != nil {
		return err
	}
	fmt.Printf("kernel %s (%s), initramfs %s\n", k.Release, k.Arch, initrd)
	dir, err := os.MkdirTemp("", "cpinit-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d, err := qemutests.NewABDevice(dir, k, initrd, 60, 1)
	if err != nil {
		return err
	}
	start, err := showDigest(d, "at the start")
	if err != nil {
		return err
	}

	say("update 1 (good): slot a's OTA agent stages slot b and runs `cpinit begin`")
	d.Slot[0] = "sysinit.action=ota sysinit.cowsize=32M"
	if _, err := boot(d, `sysinit: ota begin ok`); err != nil {
		return err
	}
	say("slot b boots on the checkpoint, changes userdata, is healthy and runs `cpinit commit`")
	d.Slot[1] = "sysinit.action=workload sysinit.seed=1 sysinit.mib=8 sysinit.then=commit"
	if _, err := boot(d, `sysinit: commit ok`); err != nil {
		return err
	}
	committed, err := showDigest(d, "after the committed update")
	if err != nil {
		return err
	}
	if committed == start {
		return fmt.Errorf("userdata did not change with a committed update")
	}
	fmt.Println("the update's changes are kept; the COW file is gone")

	say("update 2 (bad): slot b's OTA agent stages slot a and runs `cpinit begin`")
	d.Slot[1] = "sysinit.action=ota sysinit.cowsize=32M"
	if _, err := boot(d, `sysinit: ota begin ok`); err != nil {
		return err
	}
	say("the new slot a changes userdata and crashes, on every try")
	d.Slot[0] = "sysinit.action=workload sysinit.seed=2 sysinit.mib=4 sysinit.then=crash"
	d.Slot[1] = "sysinit.action=report"
	for i := 0; ; i++ {
		if i > 8 {
			return fmt.Errorf("the bootloader never fell back")
		}
		// The fallback boot rolls back with the offline restore (the
		// default, cpinit.merge=restore): cpinit copies the saved chunks
		// home itself, before any device-mapper table exists.
		slot, err := bootExpect(d, func(slot int) string {
			if slot == 1 {
				return `cpinit: restore: \d+ chunks \(\d+\.\d MiB\) copied home in \d+ reads and \d+ writes and flushed`
			}
			return ""
		})
		if err != nil {
			return err
		}
		if slot == 1 {
			break
		}
	}
	say("the bootloader fell back to slot b; cpinit rolled userdata back")
	back, err := showDigest(d, "after the rollback")
	if err != nil {
		return err
	}
	if back != committed {
		return fmt.Errorf("userdata after the rollback (%s) differs from before the bad update (%s)", back, committed)
	}
	say("userdata is exactly as before the bad update: %s == %s", back, committed)
	return nil
}
