package qemutests

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// The trial writes twice what its 24 MiB COW holds, at 2 MiB/s, each MiB
// synced (a system that keeps writing), while `cpinit watch` looks every
// 250 ms: warn at 50%, act at 75% or when the rate would fill the COW within
// 5 s. Without watch the same trial overflows (TestBadInputOverflow).
const watchWorkload = "sysinit.action=workload sysinit.mib=48 sysinit.pace=2 sysinit.manifest=1 " +
	"sysinit.watchargs=--interval,250ms,--warn,50,--act,75,--lead,5s"

// TestWatchCommitsBeforeOverflow: with policy commit, watch commits the
// update before the COW fills; the trial goes on writing, nothing is lost
// (the system's own manifest of /data equals what the host reads from the
// image afterwards), and the COW never overflowed.
func TestWatchCommitsBeforeOverflow(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 21)
	OTABegin(t, d, "24M")
	vm := TrialBoot(t, d, watchWorkload+" sysinit.seed=21 sysinit.watch=commit sysinit.statusmid=1")
	vm.ExpectT(t, `cpinit watch: watching the checkpoint of slot _b: COW 24\.0 MiB; warn at 50%, commit at 75% or when full within 5s`, SlotBootTimeout)
	// status during the trial: usage, and the fill rate from watch's samples.
	vm.ExpectT(t, `COW used: +\d+\.\d of 24\.0 MiB \(\d+\.\d%\), active`, SlotBootTimeout)
	m0 := vm.ExpectT(t, `COW fill rate: +\d+\.\d\d MiB/s over \d+ s \(watch\), (full in \S+|not filling)`, SlotBootTimeout)
	t.Logf("status: %s", m0[0])
	// And in JSON: the fill level for monitoring, from the live
	// snapshot's dm status line.
	js := vm.ExpectT(t, `sysinit: status-json=(\{[^\r\n]*\})\r?\n`, SlotBootTimeout)[1]
	var st struct {
		State          string   `json:"state"`
		COWUsedPercent *float64 `json:"cow_used_percent"`
		Snapshot       *struct {
			State       string  `json:"state"`
			UsedBytes   uint64  `json:"used_bytes"`
			TotalBytes  uint64  `json:"total_bytes"`
			UsedPercent float64 `json:"used_percent"`
		} `json:"snapshot"`
	}
	if err := json.Unmarshal([]byte(js), &st); err != nil {
		t.Fatalf("status --json in the trial: %v: %s", err, js)
	}
	if p := st.COWUsedPercent; st.Snapshot == nil || st.Snapshot.State != "active" || p == nil || *p <= 0 || *p >= 100 ||
		*p != st.Snapshot.UsedPercent || *p != 100*float64(st.Snapshot.UsedBytes)/float64(st.Snapshot.TotalBytes) || st.Snapshot.TotalBytes != 24<<20 {
		t.Errorf("status --json in the trial: want cow_used_percent in (0, 100), equal to the active snapshot's used/total of 24 MiB: %s", js)
	} else {
		t.Logf("cow_used_percent %.1f", *p)
	}
	m := vm.ExpectT(t, `cpinit watch: WARNING: COW (\d+\.\d)% used .*userdata \d+\.\d MiB free`, SlotBootTimeout)
	t.Logf("warned at %s%%", m[1])
	m = vm.ExpectT(t, `cpinit watch: committing the update \(policy commit; the rollback is given up to keep the data\): (COW .*)`, SlotBootTimeout)
	t.Logf("acted: %s", m[1])
	vm.ExpectT(t, `committed: the update's data is kept, the checkpoint is gone`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: workload done`, SlotBootTimeout)
	m = vm.ExpectT(t, `sysinit: manifest=([0-9a-f]+) files=(\d+)`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: watch exit=<nil>`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if out := vm.Output(); strings.Contains(out, "overflowed") || strings.Contains(out, "snapshot is invalid") {
		t.Fatal("the COW overflowed although watch was running")
	}
	WantRecord(t, d, bootstate.StateFresh)
	got := UserdataManifestT(t, d)
	if got.Digest() != m[1] {
		t.Fatalf("userdata on disk (manifest %s, %d entries) is not what the system wrote (manifest %s, %s entries)", got.Digest(), len(got), m[1], m[2])
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after the commit (err %v)", err)
	}
}

// TestWatchAbortRollsBack: with policy abort, watch rolls back before the
// COW fills: it makes the old slot active, records the rollback, freezes
// userdata so nothing more lands in the COW, and reboots; the bootloader
// boots the old slot, which merges, and userdata is exactly what it was
// before the update.
func TestWatchAbortRollsBack(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 22)
	before := UserdataManifestT(t, d)
	OTABegin(t, d, "24M")
	vm := TrialBoot(t, d, watchWorkload+" sysinit.seed=22 sysinit.watch=abort")
	m := vm.ExpectT(t, `cpinit watch: aborting the update \(policy abort; rolling userdata back\): (COW .*)`, SlotBootTimeout)
	t.Logf("acted: %s", m[1])
	vm.ExpectT(t, `rollback scheduled`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit watch: userdata frozen at /data`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit watch: rebooting into the old slot now`, SlotBootTimeout)
	vm.Wait(SlotBootTimeout)
	if strings.Contains(vm.Output(), "sysinit: workload done") {
		t.Fatal("the workload finished: userdata was not frozen")
	}
	WantRecord(t, d, bootstate.StateRollbackPending)

	d.Slot[0] = "sysinit.action=report"
	vm, slot := d.Boot(t, "")
	if slot != 0 {
		t.Fatalf("after the abort the bootloader picked slot %d, want the old slot 0", slot)
	}
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=\S+ action=start-or-resume-merge`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	WantRecord(t, d, bootstate.StateFresh)
	if diff := UserdataManifestT(t, d).Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after the abort differs from before the update:\n%s", strings.Join(diff, "\n"))
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after the rollback (err %v)", err)
	}
}
