package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The setup section: cmds/cpinit's TestBenchSetupInGuest in one boot: how
// long the first boot of a trial takes to set up the checkpoint (map the
// origin plain, look at the COW file through a ro,noload mount with FIEMAP,
// COW table, header zeroing, snapshot and origin) for a 1 GiB COW file of
// 10, 10k and 200k extents, step by step, as ratios to the 10-extent file.

var (
	setupExtents = flag.String("setup.extents", "10,10000,200000", "setup: extent counts to aim for (the first is the ratios' baseline)")
	setupReps    = flag.Int("setup.reps", 3, "setup: rounds per extent count (tables show medians and ranges)")
)

// setupDiskBytes holds the largest case: the 1 GiB file in holes of ~1.3
// blocks, one donor block between holes, plus 256 MiB. The image is sparse
// and the benchmark only fallocates, so little of it is ever written.
const setupDiskBytes = 2560 << 20

func init() { register("setup", runSetup) }

func runSetup(tmp string) error {
	k, err := qt.FetchKernel()
	if err != nil {
		return err
	}
	fmt.Println("building the guest initramfs and cmds/cpinit's test binary...")
	var files []string
	for _, f := range qt.GuestTools { // mkfs.ext4 makes the filesystems
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s missing on the host (make deps installs the packages): %w", f, err)
		}
		files = append(files, f+":"+strings.TrimPrefix(f, "/"))
	}
	base := filepath.Join(tmp, "guest.cpio")
	if err := qt.BuildInitramfs(base, "guestinit", files, "./qemu-tests/guestinit"); err != nil {
		return err
	}
	bin := filepath.Join(tmp, "cpinit.test")
	if err := qt.BuildTestBinary("./cmds/cpinit", bin); err != nil {
		return err
	}
	args := []string{
		"-test.v", "-test.run=^TestBenchSetupInGuest$", fmt.Sprintf("-test.timeout=%s", *timeout-time.Minute),
		"-cpinit.bench.setup", "-cpinit.bench.setup.extents=" + *setupExtents, fmt.Sprintf("-cpinit.bench.setup.reps=%d", *setupReps),
	}
	overlay := filepath.Join(tmp, "overlay.cpio")
	if err := qt.TestOverlay(overlay, bin, args, nil); err != nil {
		return err
	}
	disk := filepath.Join(tmp, "vda.img")
	if err := qt.MakeDisk(disk, setupDiskBytes); err != nil {
		return err
	}
	accel := "tcg"
	if os.Getenv("CPINIT_QEMU_ACCEL") == "kvm" {
		accel = "kvm"
	}
	fmt.Printf("host: %s, %d CPUs, %s; guest: kernel %s, 1 vCPU, 512 MiB, accel %s, virtio-blk cache=writeback on a sparse %d MiB image in %s\n",
		cpuModel(), runtime.NumCPU(), loadAvg(), k.Release, accel, setupDiskBytes>>20, tmp)
	fmt.Printf("guest runs: cpinit.test %s\n", strings.Join(args, " "))
	started := time.Now()
	vm, err := qt.Start(qt.Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{base, overlay},
		Append: "vmtest.disks=1",
		Disks:  []string{disk},
		Log:    newSetupConsole(),
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
	if code, _ := strconv.Atoi(m[1]); code != 0 || !strings.Contains(out, "--- PASS: TestBenchSetupInGuest") {
		return fmt.Errorf("the benchmark failed in the guest (exit %s); rerun with -v for the whole console", m[1])
	}
	fmt.Printf("\nguest run took %v; host %s\n", time.Since(started).Round(time.Second), loadAvg())
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), "SETUP-BENCH|"); ok {
			fmt.Println(rest)
		}
	}
	return nil
}

// newSetupConsole prints the guest's progress lines as they arrive (the
// whole console with -v).
func newSetupConsole() io.Writer {
	r, w := io.Pipe()
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			l := strings.TrimRight(s.Text(), "\r")
			if *verbose || strings.HasPrefix(l, "SETUP-BENCH-LOG ") || strings.Contains(l, "--- ") || strings.Contains(l, "bench_setup_vm_test.go") || strings.Contains(l, "panic:") {
				fmt.Printf("  | %s\n", strings.TrimPrefix(l, "SETUP-BENCH-LOG "))
			}
		}
	}()
	return w
}
