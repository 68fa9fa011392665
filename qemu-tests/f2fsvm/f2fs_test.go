// Package f2fsvm boots Debian's generic kernel (initramfs/kernel-generic.env;
// the cloud kernel every other QEMU test boots has no f2fs) and runs
// pkg/fiemap's in-guest f2fs tests (TestVMF2FS*) there: allocation and
// pinning of the COW file on a real f2fs, its map checked against filefrag
// and the raw device, across remounts, and under forced garbage collection.
// lifecycle_test.go boots cpinit's lifecycle on f2fs userdata with the same
// kernel (an update that commits, one that crashes and is rolled back).
//
// The guest is the test-only initramfs of qemu-tests (guestinit as PID 1,
// qemu-tests.GuestTools), built for the generic kernel with its module list
// (initramfs/modules-generic.list) and with f2fs-tools' mkfs.f2fs and
// fsck.f2fs and e2fsprogs' filefrag added.
package f2fsvm

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/internal/testutil"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// f2fsTools are the host binaries the f2fs guest adds to qt.GuestTools.
var f2fsTools = []string{"/usr/sbin/mkfs.f2fs", "/usr/sbin/fsck.f2fs", "/usr/sbin/filefrag"}

// runGuest runs pkg/fiemap's tests in the generic-kernel guest
// (qt.RunGuestTests: it fails on a failing binary, a skip inside the guest,
// or no test run) and returns the console output.
func runGuest(t *testing.T, args []string, disks []string, timeout time.Duration) string {
	t.Helper()
	testutil.LookPath(t, "qemu-system-x86_64")
	return qt.RunGuestTests(t, qt.GuestRun{
		Pkg:     "./pkg/fiemap",
		Args:    args,
		Disks:   disks,
		Timeout: timeout,
		Kernel:  initramfs.GenericKernel,
		Tools:   f2fsTools,
	})
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
