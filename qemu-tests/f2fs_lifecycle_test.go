package qemutests

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// The lifecycle on f2fs userdata (issue 10): Debian's generic kernel
// (initramfs.GenericKernel; the cloud kernel has no f2fs), cpinit built with
// its module list, userdata made with mkfs.f2fs and sload.f2fs and booted
// with cpinit.fstype=f2fs. The system slots stay ext4 (a module there).
// There is no debugfs for f2fs, so userdata is compared through the guest:
// sysinit prints the manifest digest of /data (internal/manifest, the same
// as UserdataManifest's); fsck.f2fs --dry-run checks the image on the host.

func newF2FSDevice(t *testing.T, seed uint64) *ABDevice {
	t.Helper()
	testutil.LookPath(t, "qemu-system-x86_64")
	for _, tool := range []string{"mkfs.ext4", "mkfs.f2fs", "sload.f2fs", "fsck.f2fs"} {
		testutil.LookPath(t, tool)
	}
	k, initrd, err := CpinitInitramfsFor(initramfs.GenericKernel)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewF2FSABDevice(t.TempDir(), k, initrd, 60, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CheckF2FS(); err != nil {
		t.Fatalf("userdata as made: %v", err)
	}
	return d
}

// manifestRe matches sysinit's manifest lines, checking /data is the f2fs.
// It ends at the line's end: the console arrives in pieces, and without it
// a match can end inside the digest or the count ("files=6" of "files=65").
const manifestRe = `sysinit: datafs=f2fs\r?\nsysinit: manifest=([0-9a-f]+) files=(\d+)\r?\n`

// f2fsOTABegin is otaBegin on f2fs: slot a prints the manifest of userdata
// before the update, then runs `cpinit begin`, which allocates and pins the
// COW file on f2fs. It returns the manifest line's digest and file count.
func f2fsOTABegin(t *testing.T, d *ABDevice, cowSize string) (digest, files string) {
	t.Helper()
	d.Slot[0] = "sysinit.action=ota sysinit.manifest=1 sysinit.cowsize=" + cowSize
	vm, slot := d.Boot(t, "")
	if slot != 0 {
		t.Fatalf("bootloader picked slot %d before the update, want 0", slot)
	}
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/vdc action=mount-plain`, slotBootTimeout)
	m := vm.ExpectT(t, manifestRe, slotBootTimeout)
	vm.ExpectT(t, `checkpoint armed: COW /.cpinit/cow, \d+ MiB in \d+ extents, chunk 4 KiB, target slot "_b" \(android counter\)`, slotBootTimeout)
	vm.ExpectT(t, `sysinit: ota begin ok`, slotBootTimeout)
	if err := vm.Wait(slotBootTimeout); err != nil {
		t.Fatal(err)
	}
	r := wantRecord(t, d, bootstate.StateCheckpointing)
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
	d := newF2FSDevice(t, 1)
	before, _ := f2fsOTABegin(t, d, "64M")

	vm := trialBoot(t, d, "sysinit.action=workload sysinit.seed=1 sysinit.mib=8 sysinit.then=commit sysinit.manifest=1")
	vm.ExpectT(t, `sysinit: workload done`, slotBootTimeout)
	vm.ExpectT(t, `committed: the update's data is kept`, slotBootTimeout)
	vm.ExpectT(t, `sysinit: commit ok`, slotBootTimeout)
	trial := vm.ExpectT(t, manifestRe, slotBootTimeout)
	vm.ExpectT(t, `state: +fresh`, slotBootTimeout)
	if err := vm.Wait(slotBootTimeout); err != nil {
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
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/vdc action=mount-plain`, slotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written by the update"`, slotBootTimeout)
	after := vm.ExpectT(t, manifestRe, slotBootTimeout)
	vm.ExpectT(t, `sysinit: cow=absent`, slotBootTimeout)
	if err := vm.Wait(slotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if after[1] != trial[1] || after[2] != trial[2] {
		t.Fatalf("userdata after commit: manifest %s (%s files), the trial left %s (%s files)", after[1], after[2], trial[1], trial[2])
	}

	wantRecord(t, d, bootstate.StateFresh)
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
	d := newF2FSDevice(t, 2)
	before, beforeFiles := f2fsOTABegin(t, d, "64M")

	d.Slot[1] = "sysinit.action=workload sysinit.seed=2 sysinit.mib=4 sysinit.then=crash"
	d.Slot[0] = "sysinit.action=report sysinit.manifest=1"
	trials := bootUntilFallback(t, d, 8, nil, func(vm *VM, n int) {
		vm.ExpectT(t, `sysinit: crashing`, slotBootTimeout)
		vm.ExpectT(t, `Kernel panic`, slotBootTimeout)
		vm.Wait(slotBootTimeout)
	}, func(vm *VM) {
		after := vm.ExpectT(t, manifestRe, slotBootTimeout)
		vm.ExpectT(t, `sysinit: cow=absent`, slotBootTimeout)
		if after[1] != before || after[2] != beforeFiles {
			t.Fatalf("userdata after rollback: manifest %s (%s files), before the update %s (%s files)", after[1], after[2], before, beforeFiles)
		}
	})
	t.Logf("slot b crashed %d times before the bootloader fell back", trials)

	r := wantRecord(t, d, bootstate.StateFresh)
	if r.COWPath != "" {
		t.Fatalf("record still names COW file %q after rollback", r.COWPath)
	}
	if err := d.CheckF2FS(); err != nil {
		t.Fatalf("userdata after rollback: %v", err)
	}
}

// TestF2FSPowerCutDuringMerge: power cuts during the rollback merge on f2fs
// (issue 10). The trial writes 32 MiB on the snapshot and runs `cpinit
// rollback` (its health check failed), which makes slot a active again;
// every boot of slot a then merges, and the host cuts the power
// (vm.Kill, as the power-cut suite does) at f2fsMergeCuts' delays after the
// first merge progress line, rebooting with the same disks. A cut that
// lands while the kernel merges shows at the next boot as a merge resumed
// with data left; at least one must. The last boot is left to finish: the
// guest's manifest of userdata equals the one printed before the update,
// the COW file is gone, the state is fresh, and fsck.f2fs finds the image
// clean.
func TestF2FSPowerCutDuringMerge(t *testing.T) {
	start := time.Now()
	d := newF2FSDevice(t, 4)
	before, beforeFiles := f2fsOTABegin(t, d, "64M")
	t.Logf("begin done at %v", time.Since(start).Round(100*time.Millisecond))

	d.Slot[1] = "sysinit.action=workload sysinit.seed=4 sysinit.mib=32 sysinit.then=rollback"
	vm, slot := d.Boot(t, "")
	if slot != 1 {
		t.Fatalf("bootloader picked slot %d for the trial, want 1", slot)
	}
	vm.ExpectT(t, `cpinit: state=checkpointing/active userdata=/dev/vdc mounted=/newroot/data via=/dev/mapper/cp-origin action=create-snapshot`, slotBootTimeout)
	vm.ExpectT(t, `sysinit: workload done`, slotBootTimeout)
	vm.ExpectT(t, `rollback scheduled`, slotBootTimeout)
	vm.ExpectT(t, `sysinit: rollback ok`, slotBootTimeout)
	if err := vm.Wait(slotBootTimeout); err != nil {
		t.Fatal(err)
	}
	wantRecord(t, d, bootstate.StateRollbackPending)
	t.Logf("trial done at %v", time.Since(start).Round(100*time.Millisecond))

	d.Slot[0] = "sysinit.action=report sysinit.manifest=1"
	progress := `cpinit: merge: ([\d.]+) MiB left of ([\d.]+) MiB`
	midMerge := 0   // cuts the next boot resumed with data left
	cutMid := false // the last cut left the merge unfinished
	lastLeft := 0.0 // MiB left at the start of the last merge boot
	cuts := 0
	for i, delay := range f2fsMergeCuts {
		cuts++
		r := wantRecord(t, d, bootstate.StateRollbackPending)
		vm, slot := d.Boot(t, "")
		if slot != 0 {
			t.Fatalf("bootloader picked slot %d for merge boot %d, want 0", slot, i+1)
		}
		vm.ExpectT(t, `cpinit: verifying the COW extent map before merging`, slotBootTimeout)
		vm.ExpectT(t, fmt.Sprintf(`cpinit: merging the checkpoint back into userdata \(abort\), attempt %d`, r.MergeTries+1), slotBootTimeout)
		m := vm.ExpectT(t, progress, slotBootTimeout)
		time.Sleep(delay)
		missed := vm.hasExited()
		vm.Kill()
		checkF2FSConsole(t, vm)
		left, _ := strconv.ParseFloat(m[1], 64)
		if cutMid && left > 0 {
			midMerge++
			t.Logf("merge boot %d resumed with %s MiB left (the previous boot started with %.1f): the previous cut landed mid-merge", i+1, m[1], lastLeft)
		}
		lastLeft = left
		after, err := d.Record()
		if err != nil {
			t.Fatalf("metadata store after cut %d: %v", i+1, err)
		}
		rest := vm.Output()
		rest = rest[strings.LastIndex(rest, m[0]):]
		done := regexp.MustCompile(`cpinit: merge: 0\.0 MiB left`).MatchString(rest)
		cutMid = after.State == bootstate.StateRollbackPending && !done
		t.Logf("cut %d: %v after %q (at %v): the console showed the merge's end: %v, boot ended: %v, record now %s",
			i+1, delay, m[0], time.Since(start).Round(100*time.Millisecond), done, missed, recString(*after))
		for _, l := range regexp.MustCompile(`cpinit: merge: .*`).FindAllString(vm.Output(), -1) {
			t.Logf("  %s", strings.TrimSpace(l))
		}
		if after.State != bootstate.StateRollbackPending {
			t.Logf("the merge was recorded done: no more cuts")
			break
		}
	}

	// The last boot finishes.
	r, err := d.Record()
	if err != nil {
		t.Fatalf("metadata store after the cuts: %v", err)
	}
	vm, slot = d.Boot(t, "")
	if slot != 0 {
		t.Fatalf("bootloader picked slot %d after the cuts, want 0", slot)
	}
	if r.State == bootstate.StateRollbackPending {
		m := vm.ExpectT(t, progress, slotBootTimeout)
		left, _ := strconv.ParseFloat(m[1], 64)
		if cutMid && left > 0 {
			midMerge++
			t.Logf("the last boot resumed with %s MiB left (the previous boot started with %.1f): the previous cut landed mid-merge", m[1], lastLeft)
		}
		if left > 0 {
			vm.ExpectT(t, `cpinit: merge: 0\.0 MiB left of \d+\.\d MiB`, slotBootTimeout)
		}
		vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/mapper/cp-origin action=start-or-resume-merge`, slotBootTimeout)
	} else {
		// A cut after merge-done: the COW file is deleted now, or was
		// already.
		if r.COWPath != "" {
			vm.ExpectT(t, `cpinit: no checkpoint; removing leftover COW file /\.cpinit/cow`, slotBootTimeout)
		} else {
			vm.ExpectT(t, `cpinit: no checkpoint\r?\n`, slotBootTimeout)
		}
		vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/vdc action=mount-plain`, slotBootTimeout)
	}
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, slotBootTimeout)
	after := vm.ExpectT(t, manifestRe, slotBootTimeout)
	vm.ExpectT(t, `sysinit: cow=absent`, slotBootTimeout)
	if err := vm.Wait(slotBootTimeout); err != nil {
		t.Fatal(err)
	}
	checkF2FSConsole(t, vm)
	t.Logf("%d of %d cuts landed mid-merge; settled at %v", midMerge, cuts, time.Since(start).Round(100*time.Millisecond))
	if after[1] != before || after[2] != beforeFiles {
		t.Fatalf("userdata after the interrupted rollback: manifest %s (%s files), before the update %s (%s files)", after[1], after[2], before, beforeFiles)
	}
	rec := wantRecord(t, d, bootstate.StateFresh)
	if rec.COWPath != "" {
		t.Fatalf("record still names COW file %q after rollback", rec.COWPath)
	}
	if err := d.CheckF2FS(); err != nil {
		t.Fatalf("userdata after rollback: %v", err)
	}
	if midMerge == 0 {
		t.Fatalf("no cut landed mid-merge (delays %v): the merge is faster than the cuts", f2fsMergeCuts)
	}
}

// f2fsMergeCuts are TestF2FSPowerCutDuringMerge's cut delays after a merge
// boot's first progress line, one boot each. They are short: under TCG the
// kernel merges the trial's 32 MiB in about 100 ms (one cut 100 ms after
// the start of a 24 MiB merge found it finished), and cpinit prints the
// first line a few ms into the merge. The last delay usually lets the
// little left finish before the cut, before cpinit records it (the next
// boot's merge then finds nothing left).
var f2fsMergeCuts = []time.Duration{0, 25 * time.Millisecond, 50 * time.Millisecond, 150 * time.Millisecond}

// checkF2FSConsole fails on error lines in a boot's console.
func checkF2FSConsole(t *testing.T, vm *VM) {
	t.Helper()
	out := vm.Output()
	for _, bad := range []string{"FATAL", "sysinit: error", "WARNING", "Kernel panic", "F2FS-fs (vdc): .*[Ee]rror"} {
		if loc := regexp.MustCompile(bad).FindStringIndex(out); loc != nil {
			t.Fatalf("console shows %q\n--- console ---\n%s", out[loc[0]:loc[1]], tail(out, 80))
		}
	}
}
