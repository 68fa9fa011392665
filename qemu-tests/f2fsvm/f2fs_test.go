// Package f2fsvm boots Debian's generic kernel (initramfs/kernel-generic.env;
// the cloud kernel every other QEMU test boots has no f2fs) and runs
// pkg/fiemap's in-guest f2fs tests (TestVMF2FS*) there: allocation and
// pinning of the COW file on a real f2fs, its map checked against filefrag
// and the raw device, across remounts, and under forced garbage collection.
//
// The guest is the test-only initramfs of qemu-tests (guestinit as PID 1,
// qemu-tests.GuestTools), built for the generic kernel with its module list
// (initramfs/modules-generic.list) and with f2fs-tools' mkfs.f2fs and
// fsck.f2fs and e2fsprogs' filefrag added.
package f2fsvm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/internal/testutil"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// f2fsTools are the host binaries the f2fs guest adds to qt.GuestTools.
var f2fsTools = []string{"/usr/sbin/mkfs.f2fs", "/usr/sbin/fsck.f2fs", "/usr/sbin/filefrag"}

var (
	guestOnce sync.Once
	guestK    initramfs.Kernel
	guestPath string
	guestErr  error
)

// genericGuest fetches the generic kernel and builds the test-only
// initramfs for it, once per process.
func genericGuest() (initramfs.Kernel, string, error) {
	guestOnce.Do(func() {
		guestK, guestErr = initramfs.FetchPinnedKernel(initramfs.GenericKernel)
		if guestErr != nil {
			return
		}
		var files []string
		for _, f := range append(append([]string(nil), qt.GuestTools...), f2fsTools...) {
			if _, err := os.Stat(f); err != nil {
				guestErr = fmt.Errorf("guest tool %s missing on the host (make deps installs f2fs-tools, e2fsprogs, dmsetup): %w", f, err)
				return
			}
			files = append(files, f+":"+strings.TrimPrefix(f, "/"))
		}
		guestPath = filepath.Join(qt.OutDir(), "guest-generic.cpio")
		start := time.Now()
		guestErr = initramfs.Build(initramfs.BuildOptions{
			Modules: guestK.Modules,
			List:    guestK.ModuleList,
			Out:     guestPath,
			InitCmd: "guestinit",
			Files:   files,
			Pkgs:    []string{"./qemu-tests/guestinit"},
		})
		if guestErr == nil {
			fmt.Fprintf(os.Stderr, "f2fsvm: guest initramfs for %s built in %v\n", guestK.Release, time.Since(start).Round(100*time.Millisecond))
		}
	})
	return guestK, guestPath, guestErr
}

var (
	exitRe  = regexp.MustCompile(`VMTEST: exit=(\d+)`)
	startRe = regexp.MustCompile(`=== RUN`)
)

// runGuest runs pkg/fiemap's test binary in the generic-kernel guest with
// args and fails t like qt.RunGuestTests does: on a failing binary, a skip
// inside the guest, or no test run. It returns the console output.
func runGuest(t *testing.T, args []string, disks []string, timeout time.Duration) string {
	t.Helper()
	testutil.LookPath(t, "qemu-system-x86_64")
	k, base, err := genericGuest()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "fiemap.test")
	if err := qt.BuildTestBinary("./pkg/fiemap", bin); err != nil {
		t.Fatal(err)
	}
	args = append([]string{"-test.v", fmt.Sprintf("-test.timeout=%s", timeout-20*time.Second)}, args...)
	overlay := filepath.Join(t.TempDir(), "overlay.cpio")
	if err := qt.TestOverlay(overlay, bin, args, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest (%s) runs pkg/fiemap %s", k.Release, strings.Join(args, " "))
	start := time.Now()
	vm := qt.StartT(t, qt.Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{base, overlay},
		Append: fmt.Sprintf("vmtest.disks=%d", len(disks)),
		Disks:  disks,
	})
	if _, err := vm.Expect(startRe, timeout); err != nil {
		t.Fatalf("guest did not start the tests: %v\n%s", err, vm.Output())
	}
	t.Logf("generic kernel booted to the first test in %v", time.Since(start).Round(10*time.Millisecond))
	m, err := vm.Expect(exitRe, timeout)
	out := vm.Output()
	t.Logf("guest output:\n%s", guestLines(out))
	if err != nil {
		t.Fatalf("guest tests: %v", err)
	}
	if code, _ := strconv.Atoi(m[1]); code != 0 {
		t.Fatalf("guest tests failed (exit %d)", code)
	}
	if strings.Contains(out, "--- SKIP") {
		t.Fatal("a test skipped inside the VM, where everything must run")
	}
	if !strings.Contains(out, "--- PASS") {
		t.Fatal("no test ran in the guest (check -test.run)")
	}
	return out
}

// guestLines drops kernel messages from the console output, except f2fs's
// own (its GC and pin warnings are part of what the tests show).
func guestLines(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimRight(l, "\r")
		if strings.HasPrefix(l, "[") && strings.Contains(l, "]") && !strings.Contains(l, "F2FS") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

func scratchDisk(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "vda.img")
	if err := qt.MakeDisk(d, 256<<20); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestF2FSInGuest runs every TestVMF2FS* test of pkg/fiemap in one boot of
// the generic kernel, each on a fresh f2fs made by mkfs.f2fs on the one
// 256 MiB scratch disk.
func TestF2FSInGuest(t *testing.T) {
	out := runGuest(t, []string{"-test.run=^TestVMF2FS"}, []string{scratchDisk(t)}, 4*time.Minute)
	for _, name := range []string{"TestVMF2FSAllocate", "TestVMF2FSGarbageCollection", "TestVMF2FSAllocateRefused", "TestVMF2FSAllocateReserveCountsSections"} {
		if !strings.Contains(out, "--- PASS: "+name) {
			t.Errorf("%s did not pass in the guest", name)
		}
	}
}

// TestLinearMapsFileOnGenericKernel runs pkg/fiemap's ext4 dm-linear test
// (the one qemu-tests/fiemapvm runs on the cloud kernel) on the generic
// kernel: its module list loads ext4 and device-mapper as well as f2fs, so
// the whole lifecycle can run on it. The disk is a 16 MiB ext4 with 1 KiB
// blocks made on the host, as fiemapvm makes it.
func TestLinearMapsFileOnGenericKernel(t *testing.T) {
	mkfs := testutil.LookPath(t, "mkfs.ext4")
	disk := scratchDisk(t)
	if out, err := exec.Command(mkfs, "-q", "-F", "-b", "1024", "-m", "0", "-N", "256", disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	out := runGuest(t, []string{"-test.run=^TestVMLinearMapsFile$"}, []string{disk}, 3*time.Minute)
	if !strings.Contains(out, "--- PASS: TestVMLinearMapsFile") {
		t.Error("TestVMLinearMapsFile did not pass on the generic kernel")
	}
}
