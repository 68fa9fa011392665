// Command demo is the main job of `make demo`: it builds cpinit's
// initramfs, makes a system slot and a userdata disk, and boots them in QEMU
// with the console on the terminal, narrating what happens.
//
// For now (the walking skeleton) the story is one boot: cpinit runs as
// PID 1, finds userdata, mounts it and hands over to the system, which reads
// back a file the host put there. Later issues grow it into the update demo:
// an update that commits and one that fails and is rolled back.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	qemutests "github.com/cpinit/cpinit/qemu-tests"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: FAILED: %v\n", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) {
	fmt.Printf("\n\033[1m==> "+format+"\033[0m\n", args...)
}

func run() error {
	say("fetching the pinned kernel and building the cpinit initramfs")
	k, err := qemutests.FetchKernel()
	if err != nil {
		return err
	}
	initrd, err := qemutests.CpinitInitramfs()
	if err != nil {
		return err
	}
	fmt.Printf("kernel %s\ninitramfs %s\n", k.Vmlinuz, initrd)

	dir, err := os.MkdirTemp("", "cpinit-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	say("making the disks: system_a (a tiny init) and userdata (ext4, with a note from the host)")
	token := make([]byte, 6)
	rand.Read(token)
	note := "hello from the host " + hex.EncodeToString(token)
	ud := filepath.Join(dir, "userdata")
	if err := os.MkdirAll(ud, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(ud, "hello.txt"), []byte(note+"\n"), 0o644); err != nil {
		return err
	}
	udImg := filepath.Join(dir, "userdata.img")
	if err := qemutests.MakeExt4(udImg, 64<<20, "userdata", ud); err != nil {
		return err
	}
	sysImg, err := qemutests.MakeSystemImage(dir, "system_a")
	if err != nil {
		return err
	}
	fmt.Printf("userdata/hello.txt: %q\n", note)

	say("booting: cpinit is PID 1, mounts userdata, switch_roots to system_a")
	start := time.Now()
	vm, err := qemutests.Start(qemutests.Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Disks:  []string{sysImg, udImg},
		Append: "quiet cpinit.root=LABEL=system_a cpinit.userdata=LABEL=userdata",
		Log:    os.Stdout,
	})
	if err != nil {
		return err
	}
	defer vm.Kill()
	fmt.Printf("# %s\n", vm.Cmdline)
	m, err := vm.Expect(regexp.MustCompile(`sysinit: hello.txt="([^"]*)"`), 2*time.Minute)
	if err != nil {
		return err
	}
	if err := vm.Wait(time.Minute); err != nil {
		return fmt.Errorf("VM did not power off: %w", err)
	}
	if m[1] != note {
		return fmt.Errorf("the system read %q from userdata, the host wrote %q", m[1], note)
	}
	say("done in %.1fs: the system slot read the host's note back from userdata", time.Since(start).Seconds())
	return nil
}
