package f2fsvm

import (
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The lifecycle on f2fs userdata (issue 10): Debian's generic kernel
// (initramfs.GenericKernel; the cloud kernel has no f2fs), cpinit built with
// its module list, userdata made with mkfs.f2fs and sload.f2fs and booted
// with cpinit.fstype=f2fs. The system slots stay ext4 (a module there).
// There is no debugfs for f2fs, so userdata is compared through the guest:
// sysinit prints the manifest digest of /data (internal/manifest, the same
// as UserdataManifest's); fsck.f2fs --dry-run checks the image on the host.

// f2fsOTABegin is qt.OTABegin on f2fs: slot a prints the manifest of userdata
// before the update, then runs `cpinit begin`, which allocates and pins the
// COW file on f2fs. It returns the manifest line's digest and file count.
func f2fsOTABegin(t *testing.T, d *qt.ABDevice, cowSize string) (digest, files string) {
	t.Helper()
	d.Slot[0] = "sysinit.action=ota sysinit.manifest=1 sysinit.cowsize=" + cowSize
	vm, slot := d.Boot(t, "")
	if slot != 0 {
		t.Fatalf("bootloader picked slot %d before the update, want 0", slot)
	}
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/vdc action=mount-plain`, qt.SlotBootTimeout)
	m := vm.ExpectT(t, qt.ManifestRe, qt.SlotBootTimeout)
	vm.ExpectT(t, `checkpoint armed: COW /.cpinit/cow, \d+ MiB in \d+ extents, chunk 4 KiB, target slot "_b" \(android counter\)`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: ota begin ok`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	r := qt.WantRecord(t, d, bootstate.StateCheckpointing)
	if r.Active || r.TargetSlot != "_b" {
		t.Fatalf("after begin: active=%v target=%q", r.Active, r.TargetSlot)
	}
	if err := d.CheckF2FS(); err != nil {
		t.Fatalf("userdata after begin: %v", err)
	}
	return m[1], m[2]
}

// TestF2FSUpdateCommits: TestUpdateCommits on f2fs. The trial boot creates
// the snapshot over the f2fs userdata with its pinned COW file, the new
// system changes userdata and commits; the next boot is plain, userdata is
// what the trial left (the guest's manifest digest after = the trial's),
// the COW file is gone, fsck.f2fs finds the image clean.
func TestF2FSUpdateCommits(t *testing.T) {
	d := qt.NewTestF2FSDevice(t, 1)
	before, _ := f2fsOTABegin(t, d, "64M")

	vm := qt.TrialBoot(t, d, "sysinit.action=workload sysinit.seed=1 sysinit.mib=8 sysinit.then=commit sysinit.manifest=1")
	vm.ExpectT(t, `sysinit: workload done`, qt.SlotBootTimeout)
	vm.ExpectT(t, `committed: the update's data is kept`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: commit ok`, qt.SlotBootTimeout)
	trial := vm.ExpectT(t, qt.ManifestRe, qt.SlotBootTimeout)
	vm.ExpectT(t, `state: +fresh`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if trial[1] == before {
		t.Fatal("the trial's workload left userdata unchanged")
	}

	d.Slot[1] = "sysinit.action=report sysinit.manifest=1"
	vm, slot := d.Boot(t, "")
	if slot != 1 {
		t.Fatalf("bootloader picked slot %d after commit, want 1", slot)
	}
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/vdc action=mount-plain`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written by the update"`, qt.SlotBootTimeout)
	after := vm.ExpectT(t, qt.ManifestRe, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: cow=absent`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if after[1] != trial[1] || after[2] != trial[2] {
		t.Fatalf("userdata after commit: manifest %s (%s files), the trial left %s (%s files)", after[1], after[2], trial[1], trial[2])
	}

	qt.WantRecord(t, d, bootstate.StateFresh)
	if err := d.CheckF2FS(); err != nil {
		t.Fatalf("userdata after commit: %v", err)
	}
	bc, err := d.ReadMisc()
	if err != nil {
		t.Fatal(err)
	}
	if s := bc.Slots[1]; !s.SuccessfulBoot || s.TriesRemaining < 1 {
		t.Fatalf("slot b after commit: %+v, want successful with tries >= 1", s)
	}
}

// TestF2FSUpdateFailsRollsBack: TestUpdateFailsRollsBack on f2fs. The new
// slot changes userdata and crashes on every try (a kernel panic after a
// sync, with the f2fs on the snapshot still mounted; each later trial
// reattaches the snapshot and mounts it again); the bootloader falls back to
// slot a after
// SetActive's six tries; cpinit merges the checkpoint back, and the guest's
// manifest of userdata equals the one printed before the update, the COW
// file is gone, fsck.f2fs finds the image clean.
func TestF2FSUpdateFailsRollsBack(t *testing.T) {
	d := qt.NewTestF2FSDevice(t, 2)
	before, beforeFiles := f2fsOTABegin(t, d, "64M")

	d.Slot[1] = "sysinit.action=workload sysinit.seed=2 sysinit.mib=4 sysinit.then=crash"
	d.Slot[0] = "sysinit.action=report sysinit.manifest=1"
	trials := qt.BootUntilFallback(t, d, 8, nil, func(vm *qt.VM, n int) {
		vm.ExpectT(t, `sysinit: crashing`, qt.SlotBootTimeout)
		vm.ExpectT(t, `Kernel panic`, qt.SlotBootTimeout)
		vm.Wait(qt.SlotBootTimeout)
	}, func(vm *qt.VM) {
		after := vm.ExpectT(t, qt.ManifestRe, qt.SlotBootTimeout)
		vm.ExpectT(t, `sysinit: cow=absent`, qt.SlotBootTimeout)
		if after[1] != before || after[2] != beforeFiles {
			t.Fatalf("userdata after rollback: manifest %s (%s files), before the update %s (%s files)", after[1], after[2], before, beforeFiles)
		}
	})
	t.Logf("slot b crashed %d times before the bootloader fell back", trials)

	r := qt.WantRecord(t, d, bootstate.StateFresh)
	if r.COWPath != "" {
		t.Fatalf("record still names COW file %q after rollback", r.COWPath)
	}
	if err := d.CheckF2FS(); err != nil {
		t.Fatalf("userdata after rollback: %v", err)
	}
}
