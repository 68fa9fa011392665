package qemutests

import (
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// TestUpdateCommits: a good update. The new slot boots on the snapshot,
// changes userdata and commits; the next boot is plain, the new data is
// kept, the COW file is gone, the state is fresh.
func TestUpdateCommits(t *testing.T) { testUpdateCommits(t, NewTestDevice(t, 1)) }

func testUpdateCommits(t *testing.T, d *ABDevice) {
	before := UserdataManifestT(t, d)
	OTABegin(t, d, "64M")

	vm := TrialBoot(t, d, "sysinit.action=workload sysinit.seed=1 sysinit.mib=8 sysinit.then=commit")
	vm.ExpectT(t, `sysinit: workload done`, SlotBootTimeout)
	vm.ExpectT(t, `committed: the update's data is kept`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: commit ok`, SlotBootTimeout)
	vm.ExpectT(t, `state: +fresh`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}

	d.Slot[1] = "sysinit.action=report"
	vm, slot := d.Boot(t, "")
	if slot != 1 {
		t.Fatalf("bootloader picked slot %d after commit, want 1", slot)
	}
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/vdc action=mount-plain`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written by the update"`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}

	WantRecord(t, d, bootstate.StateFresh)
	after := UserdataManifestT(t, d)
	if len(after.Diff(before, 1)) == 0 {
		t.Fatal("userdata unchanged after a committed update")
	}
	if _, ok := after["new/file000"]; !ok {
		t.Fatal("the update's new file is gone after commit")
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after commit (err %v)", err)
	}
	bc, err := d.ReadMisc()
	if err != nil {
		t.Fatal(err)
	}
	if s := bc.Slots[1]; !s.SuccessfulBoot || s.TriesRemaining < 1 {
		t.Fatalf("slot b after commit: %+v, want successful with tries >= 1", s)
	}
}

// TestUpdateFailsRollsBack: a bad update. The new slot changes userdata and
// crashes on every try; the bootloader falls back to slot a; cpinit merges
// the checkpoint back, and userdata is exactly what it was before the update
// (paths, sizes, modes, sha256), with a clean e2fsck. The fallback boot
// asks for the kernel's merge (cpinit.merge=kernel; the default restore
// rolls back in the other lifecycle tests), and the rolled-back system's
// `cpinit status` reports the kernel merge PID 1 ran.
func TestUpdateFailsRollsBack(t *testing.T) { testUpdateFailsRollsBack(t, NewTestDevice(t, 2)) }

func testUpdateFailsRollsBack(t *testing.T, d *ABDevice) {
	before := UserdataManifestT(t, d)
	OTABegin(t, d, "64M")

	d.Slot[1] = "sysinit.action=workload sysinit.seed=2 sysinit.mib=4 sysinit.then=crash"
	d.Slot[0] = "sysinit.action=report cpinit.merge=kernel"
	trials := BootUntilFallback(t, d, 8, nil, func(vm *VM, n int) {
		vm.ExpectT(t, `sysinit: crashing`, SlotBootTimeout)
		vm.ExpectT(t, `Kernel panic`, SlotBootTimeout)
		vm.Wait(SlotBootTimeout)
	}, func(vm *VM) {
		// The system's `cpinit status` shows the rollback PID 1 ran in
		// this boot: its progress file moved with /run at switch_root.
		vm.ExpectT(t, `last rollback: +kernel merge of /dev/vdc \(boot, pid 1\) done at \S+: \d+\.\d MiB in \S+, \d+\.\d MiB/s`, SlotBootTimeout)
	})
	t.Logf("slot b crashed %d times before the bootloader fell back", trials)

	r := WantRecord(t, d, bootstate.StateFresh)
	if r.COWPath != "" {
		t.Fatalf("record still names COW file %q after rollback", r.COWPath)
	}
	after := UserdataManifestT(t, d)
	if diff := after.Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after rollback differs from before the update:\n%s", strings.Join(diff, "\n"))
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after rollback (err %v)", err)
	}
}

// TestAbortFromBootMenu: the operator boots the update's slot with
// cpinit.abort=1 (a boot menu entry). cpinit rolls userdata back, and since
// the booted system is the update being rolled back, it makes the old slot
// active and reboots into it instead of starting the new system on old data.
// The abort boot also has cpinit.merge=restore: PID 1 copies the saved
// chunks home itself (dmsnap.Restore) with no device-mapper table; the other
// rollback tests take the kernel's merge.
func TestAbortFromBootMenu(t *testing.T) { testAbortFromBootMenu(t, NewTestDevice(t, 3)) }

func testAbortFromBootMenu(t *testing.T, d *ABDevice) {
	before := UserdataManifestT(t, d)
	OTABegin(t, d, "64M")

	d.Slot[1] = "sysinit.action=workload sysinit.seed=3 sysinit.mib=4"
	vm, slot := d.Boot(t, "")
	if slot != 1 {
		t.Fatalf("trial booted slot %d, want 1", slot)
	}
	vm.ExpectT(t, `sysinit: workload done`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}

	d.Slot[1] = "sysinit.action=report"
	vm, slot = d.Boot(t, "cpinit.abort=1 cpinit.merge=restore")
	if slot != 1 {
		t.Fatalf("abort boot picked slot %d, want 1", slot)
	}
	vm.ExpectT(t, `cpinit: rolling back userdata \(abort, booted "_b", target "_b"\)`, SlotBootTimeout)
	// Write-ahead: the bootloader is switched away from the update
	// before the rollback is recorded.
	vm.ExpectT(t, `cpinit: the COW file's extents match the record: recording the rollback \(abort\)`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: A/B boot control on /dev/vde: slot _a made active, slot _b unbootable`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: merging the checkpoint back into userdata \(abort\), attempt 1`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: restoring the saved chunks offline \(cpinit.merge=restore\)`, SlotBootTimeout)
	// The console progress, in the merge's format, named restore: at
	// least the end.
	p := vm.ExpectT(t, `cpinit: restore: 0\.0 MiB left of (\d+\.\d) MiB \(100\.0%\), \d+\.\d MiB/s, 0s left, \S+ elapsed`, SlotBootTimeout)
	m := vm.ExpectT(t, `cpinit: restore: (\d+) chunks \((\d+\.\d) MiB\) copied home in (\d+) reads and (\d+) writes and flushed`, SlotBootTimeout)
	t.Logf("restored %s chunks (%s MiB) in %s reads and %s writes", m[1], m[2], m[3], m[4])
	if p[1] != m[2] {
		t.Errorf("the progress line counted %s MiB, the restore copied %s MiB", p[1], m[2])
	}
	vm.ExpectT(t, `cpinit: the update of slot _b was rolled back and userdata holds the data from before it`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: not starting slot _b on the data from before its update: rebooting into the other slot`, SlotBootTimeout)
	vm.ExpectT(t, `reboot: Restarting system`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(vm.Output(), "sysinit: pid=1") {
		t.Fatal("the rolled-back update's system was started on the old data")
	}
	if out := vm.Output(); strings.Contains(out, "no offline restore") || strings.Contains(out, "snapshot-merge") {
		t.Fatalf("the rollback went through the kernel's merge:\n%s", Tail(out, 40))
	}

	d.Slot[0] = "sysinit.action=report"
	vm, slot = d.Boot(t, "")
	if slot != 0 {
		t.Fatalf("after the abort the bootloader picked slot %d, want 0", slot)
	}
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	WantRecord(t, d, bootstate.StateFresh)
	if diff := UserdataManifestT(t, d).Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after the abort differs from before the update:\n%s", strings.Join(diff, "\n"))
	}
}

// TestArm64Lifecycle runs the three lifecycle tests above, with the same
// seeds and checks, on an arm64 device: the arm64 kernel
// (initramfs/kernel-arm64.env) on qemu-system-aarch64's virt board, cpinit
// and the slots' programs built for arm64. Userdata's manifest is read on
// the host with debugfs as on amd64, so "exactly as before" is checked by
// the same independent reader. commit: begin, a trial boot, commit.
// rollback: begin, crashes until the bootloader falls back, the kernel's
// merge. abort: cpinit.abort=1 on the update's slot, the offline restore.
// Gated by CPINIT_ARM64=core or 1 (NeedArm64Core): make test runs it.
func TestArm64Lifecycle(t *testing.T) {
	NeedArm64Core(t)
	testLifecycleOn(t, initramfs.Arm64Kernel, "arm64")
}

// testLifecycleOn runs the three lifecycle tests with their seeds and
// checks on a device booting the pinned kernel of env.
func testLifecycleOn(t *testing.T, env, label string) {
	for _, c := range []struct {
		name string
		seed uint64
		run  func(*testing.T, *ABDevice)
	}{
		{"commit", 1, testUpdateCommits},
		{"rollback", 2, testUpdateFailsRollsBack},
		{"abort", 3, testAbortFromBootMenu},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			c.run(t, NewTestDeviceFor(t, c.seed, env))
			t.Logf("%s %s: %v", label, c.name, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestArm32Lifecycle is TestArm64Lifecycle on a 32-bit ARM device (issue
// 18 point 5): the armmp kernel (initramfs/kernel-armhf.env) on
// qemu-system-arm's virt board, cpinit and the slots' programs built with
// GOARCH=arm GOARM=7, where int is 32 bits. Gated by CPINIT_ARM32=1
// (NeedArm32): make test-arm32.
func TestArm32Lifecycle(t *testing.T) {
	NeedArm32(t)
	testLifecycleOn(t, initramfs.Arm32Kernel, "arm")
}
