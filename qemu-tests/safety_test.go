package qemutests

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
)

// Issue 14's QEMU tests: slot and data in step under power cuts, recovery
// mode, and `cpinit merge` run from it.

// cloneABDevice copies d's images into a new directory: one prepared state
// (an update begun and tried) serves several cuts, each on its own copy.
func cloneABDevice(t *testing.T, d *ABDevice) *ABDevice {
	t.Helper()
	c := *d
	c.Dir = t.TempDir()
	cp := func(src string) string {
		dst := filepath.Join(c.Dir, filepath.Base(src))
		CopyFile(t, src, dst)
		return dst
	}
	c.Systems = [2]string{cp(d.Systems[0]), cp(d.Systems[1])}
	c.Userdata, c.Metadata, c.Misc = cp(d.Userdata), cp(d.Metadata), cp(d.Misc)
	return &c
}

// cutAt boots the slot the bootloader picks with extra kernel parameters,
// waits for anchor on the console, waits delay more and cuts the power
// (SIGKILL). It returns the slot and the console up to the cut.
func cutAt(t *testing.T, d *ABDevice, extra, anchor string, delay time.Duration) (int, string) {
	t.Helper()
	vm, slot := d.Boot(t, extra)
	if _, err := vm.Expect(regexp.MustCompile(anchor), SlotBootTimeout); err != nil {
		t.Fatalf("waiting for the cut's anchor %q: %v\n--- console ---\n%s", anchor, err, Tail(vm.Output(), 60))
	}
	time.Sleep(delay)
	vm.Kill()
	return slot, vm.Output()
}

// settleAfterRollback boots the device until the rollback of slot b's update
// is finished (fresh, no leftover COW path, no slot named), at most maxBoots
// times, and checks what must hold at every boot and at the end: the
// update's slot never starts its system again, nothing fails, userdata is
// exactly before (e2fsck clean), the COW file is gone and the bootloader's
// next pick is the old slot.
func settleAfterRollback(t *testing.T, d *ABDevice, before Manifest, extra string) {
	t.Helper()
	bothSlots(d, "sysinit.action=report")
	for boot := 0; ; boot++ {
		r, err := d.Record()
		if err != nil {
			t.Fatalf("metadata store: %v", err)
		}
		if boot > 0 && r.State == bootstate.StateFresh && r.COWPath == "" && r.TargetSlot == "" {
			break
		}
		if boot == 6 {
			t.Fatalf("not settled after %d boots: %s", boot, RecString(*r))
		}
		vm, slot := d.Boot(t, extra)
		if err := vm.Wait(SlotBootTimeout); err != nil {
			t.Fatalf("boot %d (slot %d): %v\n--- console ---\n%s", boot, slot, err, Tail(vm.Output(), 60))
		}
		out := vm.Output()
		for _, bad := range []string{"FATAL", "sysinit: error", "WARNING", "Kernel panic"} {
			if strings.Contains(out, bad) {
				t.Fatalf("boot %d (slot %d) shows %q\n--- console ---\n%s", boot, slot, bad, Tail(out, 80))
			}
		}
		if slot == 1 && strings.Contains(out, "sysinit: pid=1") {
			t.Fatalf("boot %d: the rolled-back update's system started (record was %s)\n--- console ---\n%s", boot, RecString(*r), Tail(out, 60))
		}
		t.Logf("settle boot %d: slot %d, record before %s", boot, slot, RecString(*r))
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after the rollback (err %v)", err)
	}
	if diff := UserdataManifestT(t, d).Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata differs from before the update:\n%s", strings.Join(diff, "\n"))
	}
	bc, err := d.ReadMisc()
	if err != nil {
		t.Fatal(err)
	}
	if pick := bc.BootloaderSelect(); pick != 0 {
		t.Fatalf("the bootloader's next pick is slot %d, want the old slot 0 (misc %+v)", pick, bc.Slots[:2])
	}
}

// TestPowerCutAbandonOnUpdateSlot cuts the power at fixed points of a
// rollback that runs on a boot of the update's own slot, the path where the
// bootloader has to be switched (issue 14, finding 1): cpinit.abort=1 from a
// boot menu, and cpinit's attempt cap. The anchors are the console lines
// PID 1 prints at each step: the decision (the COW is then being verified),
// the record's message (before the misc switch), the misc switch (the
// rollback not yet recorded), the merge's start (the rollback recorded),
// the merge, and the fresh record after merge-done (before the reboot). After each cut
// the device boots until settled: the update's system must never start,
// userdata must be exactly as before and the bootloader must pick the old
// slot. A crashing update's fallback adds a cut after merge-done on the old
// slot (the cleanup).
func TestPowerCutAbandonOnUpdateSlot(t *testing.T) {
	type cutPoint struct {
		name, anchor string
		delay        time.Duration
	}
	onUpdateSlot := func(reason string) []cutPoint {
		return []cutPoint{
			{"verifying", `cpinit: rolling back userdata \(` + reason, 150 * time.Millisecond},
			{"before-misc-switch", `recording the rollback \(` + reason, 0},
			{"after-misc-switch", `slot _a made active, slot _b unbootable`, 0},
			{"rollback-recorded", `merging the checkpoint back into userdata \(` + reason, 0},
			{"mid-merge", `merging the checkpoint back into userdata \(` + reason, 100 * time.Millisecond},
			{"after-merge-done", `the update of slot _b was rolled back and userdata holds`, 0},
		}
	}
	for _, sc := range []struct {
		name   string
		extra  string
		prep   func(t *testing.T, d *ABDevice)
		points []cutPoint
	}{
		{name: "abort", extra: "cpinit.abort=1", points: onUpdateSlot("abort")},
		{name: "attempt-cap", prep: func(t *testing.T, d *ABDevice) {
			// 16 trial boots counted: cpinit's cap, which a bootloader
			// that keeps the slot bootable (a re-activation, or one that
			// does not count) would reach.
			rewriteRecord(t, d, func(r *bootstate.Record) { r.Attempts = bootstate.MaxBootAttempts })
		}, points: onUpdateSlot("attempt-cap")},
		{name: "fallback", prep: func(t *testing.T, d *ABDevice) {
			// The bootloader gave up on the update: slot b unbootable.
			bc, err := d.ReadMisc()
			if err != nil {
				t.Fatal(err)
			}
			if err := bc.SetUnbootable(1); err != nil {
				t.Fatal(err)
			}
			if err := d.WriteMisc(bc); err != nil {
				t.Fatal(err)
			}
		}, points: []cutPoint{
			{"after-merge-done", `cpinit: no checkpoint; removing leftover COW file`, 0},
		}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			d := NewTestDevice(t, 41)
			before := UserdataManifestT(t, d)
			OTABegin(t, d, "48M")
			vm := TrialBoot(t, d, "sysinit.action=workload sysinit.seed=41 sysinit.mib=16")
			vm.ExpectT(t, `sysinit: workload done`, SlotBootTimeout)
			if err := vm.Wait(SlotBootTimeout); err != nil {
				t.Fatal(err)
			}
			if sc.prep != nil {
				sc.prep(t, d)
			}
			for _, p := range sc.points {
				t.Run(p.name, func(t *testing.T) {
					c := cloneABDevice(t, d)
					bothSlots(c, "sysinit.action=report")
					slot, out := cutAt(t, c, sc.extra, p.anchor, p.delay)
					r, err := c.Record()
					if err != nil {
						t.Fatal(err)
					}
					bc, _ := c.ReadMisc()
					t.Logf("cut in slot %d after %q (+%v): record %s, misc slots %+v", slot, p.anchor, p.delay, RecString(*r), bc.Slots[:2])
					if strings.Contains(out, "sysinit: pid=1") {
						t.Fatalf("the update's system started in the abandoning boot\n--- console ---\n%s", Tail(out, 60))
					}
					// A cut before the rollback was recorded loses the
					// request with it: the operator picks the abort entry
					// again (sc.extra on every boot); the attempt cap is
					// in the record and holds by itself.
					settleAfterRollback(t, c, before, sc.extra)
				})
			}
		})
	}
}

// TestRecoveryModeMerge: a rollback recorded by the update (`cpinit
// rollback`), then recovery mode instead of a normal boot (issue 14,
// findings 3 and 4). PID 1 leaves userdata unmounted and makes it read-only
// because a checkpoint is recorded: a raw write from the recovery shell
// fails. `cpinit merge --method=restore` then runs the rollback to the end
// from there (it lifts the flag for its own writes), copying the saved
// chunks home itself, and the next normal boot finds userdata exactly as
// before the update. `cpinit status --json` right after reports that
// rollback from its progress file: method restore, done, the bytes the
// COW's table names (read on the host). The negative twin: with no
// checkpoint recorded, recovery mode leaves userdata writable.
func TestRecoveryModeMerge(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 42)
	before := UserdataManifestT(t, d)

	bothSlots(d, "sysinit.action=cmd sysinit.probe=1 sysinit.args=status")
	vm, _ := d.Boot(t, "cpinit.recovery=1")
	vm.ExpectT(t, `cpinit: recovery mode: no checkpoint recorded: userdata stays writable`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: raw before /dev/vdc ro=0 write=<nil>`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}

	OTABegin(t, d, "48M")
	vm = TrialBoot(t, d, "sysinit.action=workload sysinit.seed=42 sysinit.mib=16 sysinit.then=rollback")
	vm.ExpectT(t, `sysinit: rollback ok`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	r := WantRecord(t, d, bootstate.StateRollbackPending)
	restoreBytes := restorePlanBytes(t, d, r)

	bothSlots(d, "sysinit.action=cmd sysinit.probe=1 sysinit.args=merge,--method=restore+status,--json")
	vm, slot := d.Boot(t, "cpinit.recovery=1")
	if slot != 0 {
		t.Fatalf("recovery booted slot %d, want the old slot 0 (cpinit rollback switched misc)", slot)
	}
	vm.ExpectT(t, `cpinit: recovery mode: userdata /dev/vdc is READ-ONLY: the metadata store /dev/vdd records a checkpoint \(state rollback-pending\)`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: raw before /dev/vdc ro=1 write=.*operation not permitted`, SlotBootTimeout)
	vm.ExpectT(t, `verifying the COW extent map before merging`, SlotBootTimeout)
	vm.ExpectT(t, `merging the checkpoint back into userdata \(abort\), attempt 1`, SlotBootTimeout)
	vm.ExpectT(t, `restoring the saved chunks offline \(--method=restore\)`, SlotBootTimeout)
	// sysinit gives cpinit the console, a terminal: the progress bar.
	vm.ExpectT(t, `restore \[#{40}\] 100\.0%  0\.0 MiB left  \d+\.\d MiB/s  0s left`, SlotBootTimeout)
	vm.ExpectT(t, `restore: \d+ chunks \(\d+\.\d MiB\) copied home in \d+ reads and \d+ writes and flushed`, SlotBootTimeout)
	vm.ExpectT(t, `done: merging the checkpoint back`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: cmd exit=<nil>`, SlotBootTimeout)
	// status --json: the rollback just run, from /run/cpinit/rollback.json.
	m := vm.ExpectT(t, `(?s)"rollback": \{(.*?)\r?\n  \}`, SlotBootTimeout)
	for _, want := range []string{
		`"method": "restore"`, `"state": "done"`, `"device": "/dev/vdc"`, `"by": "cpinit merge"`,
		fmt.Sprintf(`"bytes_done": %d,`, restoreBytes), fmt.Sprintf(`"bytes_total": %d,`, restoreBytes), `"percent": 100,`,
	} {
		if !strings.Contains(m[1], want) {
			t.Errorf("cpinit status --json after cpinit merge --method=restore: rollback lacks %s:\n%s", want, m[1])
		}
	}
	vm.ExpectT(t, `sysinit: cmd exit=<nil>`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: raw after /dev/vdc ro=0 write=<nil>`, SlotBootTimeout)
	vm.ExpectT(t, `last rollback: +offline restore of /dev/vdc \(cpinit merge, pid \d+\) done at \S+: \d+\.\d MiB in `, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if r := WantRecord(t, d, bootstate.StateFresh); r.COWPath != "" {
		t.Fatalf("after cpinit merge: %s", RecString(*r))
	}
	settleAfterRollback(t, d, before, "")
}

// restorePlanBytes is what an offline restore of r's checkpoint copies
// home: the COW table read from the userdata image on the host.
func restorePlanBytes(t *testing.T, d *ABDevice, r *bootstate.Record) int64 {
	t.Helper()
	f, err := os.Open(d.Userdata)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := &r.Map
	origin := dmsnap.Dev{Major: m.DevMajor, Minor: m.DevMinor}
	cfg := dmsnap.Config{Origin: origin, OriginSectors: m.DevSectors, ChunkSectors: m.ChunkSector}
	for _, s := range m.Segments {
		cfg.Cow = append(cfg.Cow, dmsnap.Segment{Dev: origin, Start: s.Physical, Length: s.Length})
	}
	plan, err := dmsnap.PlanRestore(f, cfg, 1<<20)
	if err != nil {
		t.Fatalf("the COW table in %s: %v", d.Userdata, err)
	}
	if plan.Bytes() == 0 {
		t.Fatal("the trial saved no chunks: nothing to restore")
	}
	return plan.Bytes()
}

// TestRecoveryMergeRefusesChangedCOW: `cpinit merge` refuses what PID 1
// refuses (issue 14, finding 3). A rogue update deletes the COW file and
// writes over its blocks, then asks for the rollback; the snapshot view
// still shows the file, and only the check of the current filesystem
// (which `cpinit merge` skipped before) sees that the saved chunks may be
// gone. Nothing is merged; the record stays rollback-pending with no merge
// attempt.
func TestRecoveryMergeRefusesChangedCOW(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 43)
	OTABegin(t, d, "32M")
	vm := TrialBoot(t, d, "sysinit.action=workload sysinit.unpin=1 sysinit.seed=43 sysinit.mib=8 sysinit.then=rollback")
	vm.ExpectT(t, `sysinit: deleted the COW file`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: rollback ok`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	u := snapshotImages(t, d)
	bothSlots(d, "sysinit.action=cmd sysinit.args=merge")
	vm, _ = d.Boot(t, "cpinit.recovery=1")
	vm.ExpectT(t, `COW file /.cpinit/cow on /dev/vdc changed since .cpinit begin.: .*merging would write garbage into userdata`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: cmd exit=exit status 1`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	u.check(t, d, "a refused cpinit merge")
	if r := WantRecord(t, d, bootstate.StateRollbackPending); r.MergeTries != 0 {
		t.Fatalf("merge attempted %d times", r.MergeTries)
	}
}

// TestPowerCutInsideMergeCommand: the power is cut inside `cpinit merge`
// run from recovery mode (issue 14), at its steps: verification, the
// recorded merge attempt, the copy, the end. The command runs the kernel's
// merge (--method=kernel); the next boot, normal, resumes from the record
// with the default offline restore, reading what the kernel left of the
// exception table (a merged chunk leaves the table after it is home);
// userdata must end exactly as before the update.
func TestPowerCutInsideMergeCommand(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 44)
	before := UserdataManifestT(t, d)
	OTABegin(t, d, "64M")
	vm := TrialBoot(t, d, "sysinit.action=workload sysinit.seed=44 sysinit.mib=24 sysinit.then=rollback")
	vm.ExpectT(t, `sysinit: rollback ok`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		name, anchor string
		delay        time.Duration
	}{
		{"verifying", `verifying the COW extent map before merging`, 100 * time.Millisecond},
		{"merging", `merging the checkpoint back into userdata`, 50 * time.Millisecond},
		{"merging-late", `merging the checkpoint back into userdata`, 400 * time.Millisecond},
		{"after-merge", `done: merging the checkpoint back`, 0},
	} {
		t.Run(p.name, func(t *testing.T) {
			c := cloneABDevice(t, d)
			bothSlots(c, "sysinit.action=cmd sysinit.args=merge,--method=kernel")
			_, _ = cutAt(t, c, "cpinit.recovery=1", p.anchor, p.delay)
			r, err := c.Record()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("cut inside cpinit merge after %q (+%v): record %s", p.anchor, p.delay, RecString(*r))
			settleAfterRollback(t, c, before, "")
		})
	}
}
