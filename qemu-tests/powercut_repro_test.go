package qemutests

import (
	"os"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// TestPowerCutInsideRollback replays, deterministically, a power cut inside
// `cpinit rollback`, which writes two things: misc (make the old slot
// active) and the record (rollback-pending). The host makes the disk state
// of a cut between the two by putting back, after a complete rollback, the
// image the cut would have left unwritten:
//
//   - misc-written: the record is put back (still checkpointing, active),
//     misc has the old slot active. This is the window of the current order
//     (misc first): the old slot boots and cpinit rolls back as a slot
//     fallback.
//   - record-written: misc is put back (the update's slot still active with
//     tries), the record says rollback-pending. This was the window of the
//     first implementation (record first), found by the power-cut suite: the
//     failed update booted again and cpinit merged the old data under it.
//     cpinit now switches misc away from the update before it merges
//     there, and reboots into the old slot without starting the update.
//
// Either way userdata must end exactly as before the update, with the old
// slot running and the bootloader's next pick the old slot.
func TestPowerCutInsideRollback(t *testing.T) {
	for _, c := range []struct {
		name    string
		restore func(d *ABDevice) string // which image to put back
	}{
		{"misc-written", func(d *ABDevice) string { return d.Metadata }},
		{"record-written", func(d *ABDevice) string { return d.Misc }},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := NewTestDevice(t, 5)
			before := UserdataManifestT(t, d)
			OTABegin(t, d, "32M")

			d.Slot[0] = "sysinit.action=report"
			d.Slot[1] = "sysinit.action=workload sysinit.seed=5 sysinit.mib=2 sysinit.then=rollback"
			slot, err := d.SelectSlot()
			if err != nil || slot != 1 {
				t.Fatalf("bootloader picked slot %d (%v) for the trial, want 1", slot, err)
			}
			vm := StartT(t, d.Options(slot, ""))
			vm.ExpectT(t, `sysinit: workload done`, SlotBootTimeout)
			// The image to put back is taken once the trial's own writes
			// (boot-attempt, activate) are durable and before rollback.
			restore := c.restore(d)
			snapshot, err := os.ReadFile(restore)
			if err != nil {
				t.Fatal(err)
			}
			vm.ExpectT(t, `rollback scheduled`, SlotBootTimeout)
			vm.ExpectT(t, `sysinit: rollback ok`, SlotBootTimeout)
			if err := vm.Wait(SlotBootTimeout); err != nil {
				t.Fatal(err)
			}
			WantRecord(t, d, bootstate.StateRollbackPending)
			if err := os.WriteFile(restore, snapshot, 0o644); err != nil {
				t.Fatal(err)
			}

			d.Slot[1] = "sysinit.action=report"
			for boots := 0; ; boots++ {
				if boots == 3 {
					t.Fatal("no boot of the old slot after three boots")
				}
				vm, slot = d.Boot(t, "")
				t.Logf("after the cut the bootloader boots slot %s", bootstate.SlotSuffixes[slot])
				if slot == 0 {
					break
				}
				// The update's slot: cpinit must roll back and hand over
				// to the old slot without starting the update's system.
				vm.ExpectT(t, `slot _a made active, slot _b unbootable`, SlotBootTimeout)
				vm.ExpectT(t, `not starting slot _b on the data from before its update: rebooting into the other slot`, SlotBootTimeout)
				vm.Wait(SlotBootTimeout)
				if strings.Contains(vm.Output(), "sysinit: pid=1") {
					t.Fatal("the failed update's system was started on rolled-back userdata")
				}
			}
			vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, SlotBootTimeout)
			if err := vm.Wait(SlotBootTimeout); err != nil {
				t.Fatal(err)
			}
			WantRecord(t, d, bootstate.StateFresh)
			if diff := UserdataManifestT(t, d).Diff(before, 10); len(diff) > 0 {
				t.Fatalf("userdata after the rollback differs from before the update:\n%s", strings.Join(diff, "\n"))
			}
			bc, err := d.ReadMisc()
			if err != nil {
				t.Fatal(err)
			}
			if pick := bc.BootloaderSelect(); pick != 0 {
				t.Fatalf("bootloader's next pick after the rollback is slot %d, want the old slot 0 (misc %+v)", pick, bc.Slots[:2])
			}
		})
	}
}
