// Package fiemapvm boots the QEMU guest and runs pkg/fiemap's in-guest tests
// (TestVM*) there: the host kernel has no device-mapper, and those tests
// check the dm-linear table end to end; it also cuts the guest's power in
// the middle of Allocate/Release and checks the next boot recovers.
package fiemapvm

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/internal/testutil"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// makeDisk creates a 256 MiB disk image holding an ext4 of fsSize at its
// start, formatted on the host (the guest has no working mkfs.ext4).
func makeDisk(t *testing.T, fsSize string, mkfsArgs ...string) string {
	t.Helper()
	mkfs := testutil.LookPath(t, "mkfs.ext4")
	disk := filepath.Join(t.TempDir(), "vda.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 256<<20); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-q", "-F"}, mkfsArgs...)
	if out, err := exec.Command(mkfs, append(args, disk, fsSize)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return disk
}

// TestFiemapInGuest: a 16 MiB ext4 with 1 KiB blocks (many small extents),
// no root reserve, few inodes; the guest maps a COW file with dm-linear.
func TestFiemapInGuest(t *testing.T) {
	testutil.LookPath(t, "qemu-system-x86_64")
	testFiemapInGuest(t, initramfs.CloudKernel)
}

// TestArm64FiemapInGuest is TestFiemapInGuest in an arm64 guest: FIEMAP's
// extents (pkg/fiemap built for arm64) mapped with dm-linear on the arm64
// kernel. Gated by CPINIT_ARM64=1.
func TestArm64FiemapInGuest(t *testing.T) {
	qt.NeedArm64(t)
	testFiemapInGuest(t, initramfs.Arm64Kernel)
}

func testFiemapInGuest(t *testing.T, env string) {
	disk := makeDisk(t, "16M", "-b", "1024", "-m", "0", "-N", "256")
	out := qt.RunGuestTests(t, qt.GuestRun{
		Pkg:    "./pkg/fiemap",
		Args:   []string{"-test.run=^TestVMLinearMapsFile$"},
		Disks:  []string{disk},
		Kernel: env,
	})
	if !strings.Contains(out, "--- PASS: TestVMLinearMapsFile") {
		t.Errorf("TestVMLinearMapsFile did not pass in the guest")
	}
}

// TestAllocatePowerCut cuts the power (SIGKILL to QEMU) at a random moment
// while the guest allocates and releases the COW file in a loop, then boots
// again on the same disk: Allocate must succeed from whatever was left,
// never replace a complete pinned file, and leave e2fsck clean.
// FIEMAP_POWERCUTS sets the number of cuts (default 4; ~7 s each under TCG).
func TestAllocatePowerCut(t *testing.T) {
	testutil.LookPath(t, "qemu-system-x86_64")
	testAllocatePowerCut(t, initramfs.CloudKernel)
}

// TestArm64AllocatePowerCut is TestAllocatePowerCut in an arm64 guest
// (pkg/fiemap built for arm64, the arm64 kernel). Gated by CPINIT_ARM64=1.
func TestArm64AllocatePowerCut(t *testing.T) {
	qt.NeedArm64(t)
	testAllocatePowerCut(t, initramfs.Arm64Kernel)
}

func testAllocatePowerCut(t *testing.T, env string) {
	cuts := 4
	if v := os.Getenv("FIEMAP_POWERCUTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("FIEMAP_POWERCUTS=%q: %v", v, err)
		}
		cuts = n
	}
	k, base, err := qt.GuestInitramfsFor(env)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "fiemap.test")
	if err := qt.BuildTestBinaryFor("./pkg/fiemap", bin, k.Arch); err != nil {
		t.Fatal(err)
	}
	loop := filepath.Join(dir, "loop.cpio")
	if err := qt.TestOverlay(loop, bin, []string{"-test.v", "-test.run=^TestVMAllocateCrashLoop$"}, nil); err != nil {
		t.Fatal(err)
	}
	disk := makeDisk(t, "96M", "-b", "4096")
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d (delays after the guest's 3rd cycle)", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	found := regexp.MustCompile(`fiemap-crash: found (\w+)`)
	seen := map[string]int{}
	for i := 0; i < cuts; i++ {
		vm := qt.StartT(t, qt.Options{
			Arch:   k.Arch,
			Kernel: k.Vmlinuz,
			Initrd: []string{base, loop},
			Append: "vmtest.disks=1",
			Disks:  []string{disk},
		})
		vm.ExpectT(t, `fiemap-crash: cycle 3\b`, 3*time.Minute)
		delay := time.Duration(rng.IntN(400)) * time.Millisecond
		time.Sleep(delay)
		if strings.Contains(vm.Output(), "VMTEST: exit=") {
			t.Fatalf("the allocate/release loop ended by itself:\n%s", vm.Output())
		}
		vm.Kill()
		out := qt.RunGuestTests(t, qt.GuestRun{
			Pkg:    "./pkg/fiemap",
			Args:   []string{"-test.run=^TestVMAllocateAfterCrash$"},
			Disks:  []string{disk},
			Kernel: env,
		})
		m := found.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("cut %d: guest did not report what it found", i)
		}
		t.Logf("cut %d after %v: found %s", i, delay, m[1])
		seen[m[1]]++
	}
	t.Logf("states left by %d power cuts: %v", cuts, seen)
}
