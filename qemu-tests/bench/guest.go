package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

var exitRe = regexp.MustCompile(`VMTEST: exit=(\d+)`)

// kernelEnv picks the pinned kernel the guest sections boot, so that one
// section can be run on two kernels and compared (e.g. the setup section on
// 6.1 and on 6.12: -kernel kernel-612.env).
var kernelEnv = flag.String("kernel", initramfs.CloudKernel, "guest sections: the pinned kernel to boot, an env file in initramfs/ (kernel.env, kernel-612.env, kernel-generic.env) or a path")

// guestBench is one in-guest Go benchmark: a test of pkg, gated by its own
// flag so that the ordinary in-guest suites never run it, booted once in the
// test guest (qemu-tests/guestinit) with one sparse scratch disk. Lines the
// test prints starting with prefix+"|" are the section's tables;
// prefix+"-LOG " lines are progress, shown as they arrive.
type guestBench struct {
	pkg, test string   // e.g. ./pkg/dmsnap, TestBenchCOWUseInGuest
	args      []string // the test binary's flags besides -test.*
	tools     []string // host binaries to add to the guest besides qt.GuestTools
	diskBytes int64
	prefix    string
}

func (g guestBench) run(tmp string) error {
	k, err := initramfs.FetchPinnedKernel(*kernelEnv)
	if err != nil {
		return err
	}
	var files []string
	for _, f := range append(append([]string(nil), qt.GuestTools...), g.tools...) {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s missing on the host (make deps installs the packages): %w", f, err)
		}
		files = append(files, f+":"+strings.TrimPrefix(f, "/"))
	}
	fmt.Printf("building the guest initramfs and %s's test binary...\n", g.pkg)
	base := filepath.Join(tmp, "guest.cpio")
	// The kernel's own module list: another kernel may have built in what
	// modules.list loads (6.12's cloud kernel has virtio_blk built in).
	if err := initramfs.Build(initramfs.BuildOptions{Modules: k.Modules, List: k.ModuleList, Out: base, InitCmd: "guestinit",
		Files: files, Pkgs: []string{"./qemu-tests/guestinit"}, Cache: qt.ImageCache()}); err != nil {
		return err
	}
	bin := filepath.Join(tmp, "bench.test")
	if err := qt.BuildTestBinary(g.pkg, bin); err != nil {
		return err
	}
	args := append([]string{"-test.v", "-test.run=^" + g.test + "$", fmt.Sprintf("-test.timeout=%s", *timeout-time.Minute)}, g.args...)
	overlay := filepath.Join(tmp, "overlay.cpio")
	if err := qt.TestOverlay(overlay, bin, args, nil); err != nil {
		return err
	}
	disk := filepath.Join(tmp, "vda.img")
	if err := qt.MakeDisk(disk, g.diskBytes); err != nil {
		return err
	}
	accel := "tcg"
	if os.Getenv("CPINIT_QEMU_ACCEL") == "kvm" {
		accel = "kvm"
	}
	fmt.Printf("host: %s, %d CPUs, %s; guest: kernel %s, 1 vCPU, 512 MiB, accel %s, virtio-blk cache=writeback on a sparse %d MiB image in %s\n",
		cpuModel(), runtime.NumCPU(), loadAvg(), k.Release, accel, g.diskBytes>>20, tmp)
	fmt.Printf("guest runs: %s %s\n", filepath.Base(g.pkg)+".test", strings.Join(args, " "))
	started := time.Now()
	vm, err := qt.Start(qt.Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{base, overlay},
		Append: "vmtest.disks=1",
		Disks:  []string{disk},
		Log:    progressConsole(g.prefix + "-LOG "),
	})
	if err != nil {
		return err
	}
	defer vm.Kill()
	m, err := vm.Expect(exitRe, *timeout)
	out := vm.Output()
	if err != nil {
		return fmt.Errorf("%v (QEMU: %s)", err, vm.Cmdline)
	}
	if code, _ := strconv.Atoi(m[1]); code != 0 || !strings.Contains(out, "--- PASS: "+g.test) {
		return fmt.Errorf("the benchmark failed in the guest (exit %s); rerun with -v for the whole console", m[1])
	}
	fmt.Printf("\nguest run took %v; host %s\n\n", time.Since(started).Round(time.Second), loadAvg())
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), g.prefix+"|"); ok {
			fmt.Println(rest)
		}
	}
	return nil
}

// progressConsole prints the guest's progress lines (those starting with
// logPrefix, test results, watchdog dumps and panics) as they arrive; with
// -v the whole console.
func progressConsole(logPrefix string) io.Writer {
	r, w := io.Pipe()
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			l := strings.TrimRight(s.Text(), "\r")
			if *verbose || strings.HasPrefix(l, logPrefix) || strings.Contains(l, "--- ") || strings.Contains(l, "WATCHDOG") || strings.Contains(l, "panic:") || strings.Contains(l, "_test.go:") {
				fmt.Printf("  | %s\n", strings.TrimPrefix(l, logPrefix))
			}
		}
	}()
	return w
}
