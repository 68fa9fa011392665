package qemutests

import (
	"os"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// TestPowerCutRollbackBeforeMisc replays, deterministically, one power cut
// inside `cpinit rollback`: after the rollback-pending record is durable in
// the metadata store and before misc makes the old slot active again. That
// is the state the disks hold when the cut lands between the two writes of
// the current implementation (record first, misc second); the host makes it
// by putting back the misc block the trial boot started with (`cpinit
// rollback` is the only writer of misc in that boot).
//
// What should happen: userdata is rolled back and the device returns to
// the old slot. What happens today: the bootloader boots the failed update
// again (slot b is still active with tries left), cpinit merges there and
// hands the rolled-back userdata to the failed system, with no checkpoint
// any more; the record is fresh, so nothing makes the old slot active, and
// whatever the failed system writes before its tries run out is then
// handed to the old system: the very hazard cpinit exists to prevent.
//
// It is skipped unless CPINIT_KNOWN_BUGS=1 until cmds/cpinit is fixed
// (write misc before the record in cmdRollback, as cmdCommit already does;
// a cut in between then leaves a checkpoint with the old slot active, which
// the next boot rolls back as slot-fallback). After that fix this disk
// state can no longer arise; the test should then restore the metadata
// store instead of misc (old record, new misc) and stay as a regression
// test.
func TestPowerCutRollbackBeforeMisc(t *testing.T) {
	if os.Getenv("CPINIT_KNOWN_BUGS") != "1" {
		t.Skip("known bug: cpinit rollback persists rollback-pending before it makes the old slot active; set CPINIT_KNOWN_BUGS=1 to run")
	}
	d := newABDevice(t, 5)
	before := manifest(t, d)
	otaBegin(t, d, "32M")

	d.Slot[0] = "sysinit.action=report"
	d.Slot[1] = "sysinit.action=workload sysinit.seed=5 sysinit.mib=2 sysinit.then=rollback"
	slot, err := d.SelectSlot()
	if err != nil || slot != 1 {
		t.Fatalf("bootloader picked slot %d (%v) for the trial, want 1", slot, err)
	}
	miscAtBoot, err := os.ReadFile(d.Misc)
	if err != nil {
		t.Fatal(err)
	}
	vm := StartT(t, d.Options(slot, ""))
	vm.ExpectT(t, `sysinit: workload done`, slotBootTimeout)
	vm.ExpectT(t, `rollback scheduled`, slotBootTimeout)
	vm.ExpectT(t, `sysinit: rollback ok`, slotBootTimeout)
	if err := vm.Wait(slotBootTimeout); err != nil {
		t.Fatal(err)
	}
	wantRecord(t, d, bootstate.StateRollbackPending)
	// The cut: the misc write of `cpinit rollback` never happened.
	if err := os.WriteFile(d.Misc, miscAtBoot, 0o644); err != nil {
		t.Fatal(err)
	}

	d.Slot[1] = "sysinit.action=report"
	vm, slot = d.Boot(t, "")
	t.Logf("after the cut the bootloader boots slot %s", bootstate.SlotSuffixes[slot])
	vm.ExpectT(t, `cpinit: merging the checkpoint back into userdata \(abort\), attempt 1`, slotBootTimeout)
	vm.ExpectT(t, `cpinit: merge: 0\.0 MiB left`, slotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, slotBootTimeout)
	if err := vm.Wait(slotBootTimeout); err != nil {
		t.Fatal(err)
	}
	wantRecord(t, d, bootstate.StateFresh)
	if diff := manifest(t, d).Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after the rollback differs from before the update:\n%s", strings.Join(diff, "\n"))
	}
	bc, err := d.ReadMisc()
	if err != nil {
		t.Fatal(err)
	}
	next := *bc
	pick := next.BootloaderSelect()
	if pick < 0 {
		t.Fatalf("no bootable slot after the rollback: %+v", bc.Slots[:2])
	}
	if pick != 0 || slot != 0 {
		t.Fatalf("userdata was rolled back in slot %s's boot, and the bootloader's next pick is slot %s (misc %+v): the failed update keeps running on the rolled-back userdata with no checkpoint",
			bootstate.SlotSuffixes[slot], bootstate.SlotSuffixes[pick], bc.Slots[:2])
	}
}
