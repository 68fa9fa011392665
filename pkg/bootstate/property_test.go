package bootstate

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

// The property test plays a whole device: a bootloader (U-Boot's slot
// selection on a simulated misc block, or none for the native counter), the
// metadata store on a memDev, userdata with its COW file, the kernel's
// snapshot/merge behaviour, and an OTA agent and user who begin, commit
// and abort at random between boots. Power is cut at a random operation
// of a boot: any store write (torn at a random byte), any dm or file
// operation, or in the middle of a merge. It drives the production loop,
// RunBoot, and asserts at each side effect:
//
//   - never a merge without a verified extent map (VerifyExtents ran this
//     boot, its fingerprint matches the record and the file's real extents),
//     and never a merge of a COW whose snapshot was never created or whose
//     origin was written behind its back;
//   - never deleting the COW file while a rollback may still be needed
//     (the durable state must be fresh or committed, and once
//     rollback-pending was durable the merge must have finished or the
//     snapshot be Invalid);
//   - never re-zeroing a COW that holds the trial's saved chunks, never
//     mounting userdata plainly while a checkpoint is live;
//   - never a stop for recovery (nothing in this world is ambiguous);
//   - and after the random phase, a few calm boots always converge to
//     fresh with no leftover COW file.
type simWorld struct {
	t      *rapid.T
	native bool
	img    *memDev      // metadata store image: survives power cuts
	bc     *BootControl // misc: survives power cuts (android mode)

	// Userdata model; survives power cuts.
	cowExists   bool
	liveMap     ExtentMap // the COW file's real extents
	headerValid bool      // the COW holds a snapshot header written by the kernel
	trialWrote  bool      // the trial wrote through the origin since the snapshot was created
	cowStale    bool      // userdata was written plainly while a snapshot header existed
	invalid     bool      // the snapshot overflowed
	merging     bool      // a merge started and has not finished
	merged      bool      // the merge finished (origin holds the checkpoint again)
	noReturn    bool      // rollback-pending was durable for this checkpoint
	// rolledBack is the slot whose update was rolled back (-1: none): its
	// system must never run on userdata again until a new begin.
	rolledBack int
	// fellBack: cpinit switched the bootloader away from the update's
	// slot during this checkpoint; the update's data must not be kept
	// after that (the old system would start on it).
	fellBack bool
	// ended: the run reached a state only a human can resolve (the
	// snapshot went invalid in the middle of a merge) and stopped there.
	ended       bool
	origin      int // userdata content version
	snapVersion int // content the snapshot preserves
	nextMapSize int

	// Per boot, volatile.
	opsLeft    int // operations until the power cut; 0 = no cut this boot
	torn       int
	dead       bool
	verifiedFP *[32]byte
	calm       bool
	trace      []string
}

var errSimCut = errors.New("power cut")

// simStats counts interesting situations across all runs, to show that
// the generator reaches them (go test -v -run TestPropertyPowerCuts).
var simStats = map[string]int{}

func (w *simWorld) logf(format string, a ...any) {
	w.trace = append(w.trace, fmt.Sprintf(format, a...))
}

func (w *simWorld) fail(format string, a ...any) {
	w.t.Fatalf("%s\ntrace:\n%s", fmt.Sprintf(format, a...), joinLines(w.trace))
}

func joinLines(l []string) string {
	s := ""
	start := max(0, len(l)-400)
	for _, x := range l[start:] {
		s += "  " + x + "\n"
	}
	return s
}

// op accounts one operation; it reports false when power is lost before it.
func (w *simWorld) op(name string) bool {
	if w.dead {
		return false
	}
	if w.opsLeft > 0 {
		w.opsLeft--
		if w.opsLeft == 0 {
			w.dead = true
			w.logf("  ** power cut before/inside %s", name)
			simStats["cut: "+strings.Fields(name)[0]]++
			return false
		}
	}
	return true
}

// durable is the record a reboot would see.
func (w *simWorld) durable() (*Record, error) {
	r, _, err := NewStore(w.img.reboot(), "sim").Load()
	return r, err
}

// simDev is the store's Device: every WriteAt is an operation that may be
// torn by the power cut; every Sync updates the noReturn tracking.
type simDev struct{ w *simWorld }

func (d simDev) ReadAt(p []byte, off int64) (int, error) {
	if d.w.dead {
		return 0, errSimCut
	}
	return d.w.img.ReadAt(p, off)
}

func (d simDev) WriteAt(p []byte, off int64) (int, error) {
	w := d.w
	if w.dead {
		return 0, errSimCut
	}
	if !w.op(fmt.Sprintf("store write @%d", off)) {
		w.img.budget = w.torn % (len(p) + 1)
		w.img.dead = false
		n, _ := w.img.WriteAt(p, off)
		w.img.budget, w.img.dead = -1, false
		w.logf("  ** store write torn after %d of %d bytes", n, len(p))
		return n, errSimCut
	}
	return w.img.WriteAt(p, off)
}

func (d simDev) Sync() error {
	w := d.w
	if w.dead {
		return errSimCut
	}
	r, err := w.durable()
	if err == nil && r.State == StateRollbackPending {
		w.noReturn = true
	}
	if err == nil && w.merging && r.State != StateRollbackPending {
		w.fail("recorded %s while a merge was part-way: userdata is half restored and the COW holds the rest", describe(r))
	}
	if err == nil && w.fellBack && r.State == StateCommitted && r.Reason == ReasonOverflow {
		w.fail("switched the bootloader away from the update, then kept the update's data (overflow): the old system would start on it")
	}
	return nil
}

// Env implementation: the kernel and filesystem as far as the invariants
// care.

func (w *simWorld) Log(msg string) { w.logf("  init: %s", msg) }

func (w *simWorld) MountPlain() error {
	if !w.op("mount plain") {
		return errSimCut
	}
	if r, err := w.durable(); err != nil || (r.State != StateFresh && r.State != StateCommitted) {
		w.fail("mounted userdata plainly with durable state %v (%v)", r, err)
	}
	if w.headerValid {
		w.cowStale = true
	}
	w.origin++
	return nil
}

func (w *simWorld) RemoveCOW(path string) error {
	if !w.op("remove COW") {
		return errSimCut
	}
	r, err := w.durable()
	if err != nil || (r.State != StateFresh && r.State != StateCommitted) {
		w.fail("deleted the COW file with durable state %v (%v)", r, err)
	}
	if w.noReturn && !w.merged && !w.invalid {
		w.fail("deleted the COW file after the point of no return, before the merge finished")
	}
	w.cowExists, w.headerValid = false, false
	w.logf("  COW file deleted")
	return nil
}

func (w *simWorld) checkMap(what string, m *ExtentMap) {
	if !w.cowExists {
		w.fail("%s: the COW file does not exist", what)
	}
	if m.Fingerprint() != w.liveMap.Fingerprint() {
		w.fail("%s with a map that is not the file's", what)
	}
}

func (w *simWorld) CreateSnapshot(m *ExtentMap) error {
	if !w.op("create snapshot") {
		return errSimCut
	}
	w.checkMap("create snapshot", m)
	if w.trialWrote {
		w.fail("re-zeroed a COW that holds the trial's saved chunks")
	}
	w.headerValid, w.invalid, w.cowStale = true, false, false
	w.snapVersion = w.origin
	return nil
}

func (w *simWorld) ReattachSnapshot(m *ExtentMap) (bool, error) {
	if !w.op("reattach snapshot") {
		return false, errSimCut
	}
	w.checkMap("reattach snapshot", m)
	if !w.headerValid || w.cowStale {
		w.fail("reattached a COW without a valid, consistent header (valid=%v stale=%v)", w.headerValid, w.cowStale)
	}
	return w.invalid, nil
}

func (w *simWorld) MountOrigin() error {
	if !w.op("mount origin") {
		return errSimCut
	}
	w.trialWrote = true
	w.origin++
	if !w.calm && rapid.IntRange(0, 9).Draw(w.t, "overflow") == 0 {
		w.invalid = true
		w.logf("  COW overflowed during the trial")
	}
	return nil
}

func (w *simWorld) VerifyExtents(path string, want *ExtentMap) ([32]byte, bool, error) {
	if !w.op("verify extents") {
		return [32]byte{}, false, errSimCut
	}
	if !w.cowExists {
		w.fail("verify: COW file %s is gone", path)
	}
	if w.invalid {
		// The kernel refuses to map an Invalid snapshot, so the view the
		// extents are read through cannot be had.
		simStats["overflow found at verify"]++
		if w.merging {
			simStats["invalid mid-merge found at verify"]++
		}
		return [32]byte{}, true, nil
	}
	fp := w.liveMap.Fingerprint()
	w.verifiedFP = &fp
	return fp, false, nil
}

func (w *simWorld) Merge(m *ExtentMap) (bool, error) {
	r, err := w.durable()
	if err != nil || r.State != StateRollbackPending {
		w.fail("merge with durable state %v (%v)", r, err)
	}
	if w.verifiedFP == nil || *w.verifiedFP != r.Fingerprint || m.Fingerprint() != r.Fingerprint {
		w.fail("merge without a verified extent map")
	}
	w.checkMap("merge", m)
	if !w.headerValid || w.cowStale {
		w.fail("merge of a COW without a valid, consistent snapshot (valid=%v stale=%v)", w.headerValid, w.cowStale)
	}
	if w.invalid {
		// The kernel will not merge an Invalid snapshot ("Snapshot is
		// invalid: can't merge", dm-snap.c), whether or not an earlier
		// boot had started merging it.
		simStats["overflow found at merge"]++
		return true, nil
	}
	if !w.op("merge") {
		// Cut part-way: the kernel's progress is in the COW; resumable.
		w.merging = true
		simStats["merge cut part-way"]++
		if rapid.IntRange(0, 7).Draw(w.t, "invalid mid-merge") == 0 {
			// An I/O error on the COW during the merge: the kernel marks
			// the snapshot invalid with half of it merged.
			w.invalid = true
			w.logf("  the snapshot went invalid part-way through the merge")
		}
		return false, errSimCut
	}
	if w.merging {
		simStats["merge resumed to completion"]++
	}
	simStats["merge complete"]++
	w.merging, w.merged = false, true
	w.origin = w.snapVersion
	if !w.native {
		w.rolledBack = SlotIndex(r.TargetSlot)
	}
	w.logf("  merge complete: userdata back at version %d", w.origin)
	return false, nil
}

func (w *simWorld) FallBack(slot string) error {
	if w.native {
		return ErrNoSlotSwitch
	}
	if !w.op("fall back") {
		return errSimCut
	}
	simStats["fall back from the update's slot"]++
	w.fellBack = true
	return w.bc.FallBackFrom(SlotIndex(slot), SlotIndex(slot))
}

// User-space actions on the running system.

func (w *simWorld) store() *Store { return NewStore(simDev{w}, "sim") }

func (w *simWorld) begin(booted int) {
	r, err := w.durable()
	if err != nil || r.State != StateFresh {
		return
	}
	const path = "/data/.cpinit/cow"
	if r.COWPath != "" && r.COWPath != path {
		w.fail("unexpected leftover %q", r.COWPath)
	}
	// cpinit begin: record the path first, so a crash after allocating
	// leaves a fresh record that names the file.
	p, err := Apply(*r, Step{Event: EventPrepare, Path: path})
	if err != nil {
		w.fail("prepare refused: %v", err)
	}
	if _, err := w.store().Save(&p); err != nil {
		return
	}
	if w.cowExists && w.RemoveCOW(path) != nil {
		return // a leftover from an earlier attempt: start clean
	}
	r = &p
	if !w.op("allocate COW") {
		return
	}
	// A new file: new extents, garbage content, no header.
	w.nextMapSize++
	w.cowExists, w.liveMap = true, testMap(2+w.nextMapSize%5)
	// Each allocation lands somewhere else on the device.
	w.liveMap.DevSectors += 512
	for i := range w.liveMap.Segments {
		w.liveMap.Segments[i].Physical += uint64(w.nextMapSize%64) * 8
	}
	w.headerValid, w.trialWrote, w.cowStale, w.invalid = false, false, false, false
	w.merging, w.merged, w.noReturn, w.rolledBack, w.fellBack = false, false, false, -1, false
	b := &BeginArgs{COWPath: path, Map: cloneMap(w.liveMap), Counter: CounterNative, Tries: 3}
	target := -1
	if !w.native {
		target = 1 - booted
		b.Counter, b.TargetSlot = CounterAndroid, SlotSuffixes[target]
	}
	n, err := Apply(*r, Step{Event: EventBegin, Begin: b})
	if err != nil {
		w.fail("begin refused: %v", err)
	}
	if _, err := w.store().Save(&n); err != nil {
		return
	}
	w.logf("  user: begin (target %q)", b.TargetSlot)
	if target >= 0 && w.op("set active") {
		_ = w.bc.SetActive(target, booted)
	}
}

func (w *simWorld) commit(booted int) {
	r, err := w.durable()
	if err != nil || r.State != StateCheckpointing {
		return
	}
	if !w.native {
		if SlotIndex(r.TargetSlot) != booted {
			return // commit only from the slot under trial
		}
		// Mark the slot good first: if power is lost before the record
		// says committed, the bootloader keeps this slot and cpinit's
		// attempt cap ends the trial; the other order could let the
		// bootloader fall back to the old slot with committed data.
		if !w.op("mark successful") {
			return
		}
		_ = w.bc.MarkSuccessful(booted)
	}
	n, err := Apply(*r, Step{Event: EventCommit})
	if err != nil {
		w.fail("commit refused: %v", err)
	}
	if _, err := w.store().Save(&n); err != nil {
		return
	}
	w.logf("  user: commit")
	if rapid.Bool().Draw(w.t, "cleanup now") {
		if w.RemoveCOW(n.COWPath) != nil {
			return
		}
		c, err := Apply(n, Step{Event: EventCleanupDone})
		if err != nil {
			w.fail("cleanup-done refused: %v", err)
		}
		_, _ = w.store().Save(&c)
	}
}

func (w *simWorld) abort(booted int) {
	r, err := w.durable()
	if err != nil || r.State != StateCheckpointing {
		return
	}
	// cpinit rollback (cmds/cpinit sysCtx.rollback): the bootloader is
	// switched away from the update first (old slot active, the update's
	// unbootable), then the rollback (or cancel) is recorded, so a cut in
	// between boots the old slot on a checkpointing record: a slot
	// fallback, the same rollback.
	if r.Active && w.invalid {
		// It refuses when the live snapshot is Invalid: the rollback is
		// impossible, and switching slots would start the old system on
		// the update's data.
		simStats["rollback refused: snapshot invalid"]++
		return
	}
	if !w.native {
		if !w.op("fall back") {
			return
		}
		if err := w.bc.FallBackFrom(SlotIndex(r.TargetSlot), booted); err != nil {
			w.fail("fall back: %v", err)
		}
		w.fellBack = true
	}
	s := Step{Event: EventRollback, Reason: ReasonAbort}
	if !r.Active {
		s = Step{Event: EventCancel}
	}
	n, err := Apply(*r, s)
	if err != nil {
		w.fail("%v refused: %v", s, err)
	}
	if _, err := w.store().Save(&n); err != nil {
		return
	}
	w.logf("  user: %v", s)
}

func (w *simWorld) boot(i int) {
	w.dead, w.verifiedFP, w.opsLeft = false, nil, 0
	if !w.calm {
		w.opsLeft = rapid.IntRange(0, 14).Draw(w.t, "cut at op")
		w.torn = rapid.IntRange(0, 1<<20).Draw(w.t, "torn bytes")
	}
	in := DecideInput{}
	booted := -1
	if !w.native {
		booted = w.bc.BootloaderSelect()
		if booted < 0 {
			w.fail("bootloader found no bootable slot: %+v", w.bc)
		}
		in.BootedSlot = SlotSuffixes[booted]
		bc := *w.bc
		in.Boot = &AndroidState{BC: &bc, Current: booted}
		// cpinit.abort=1, chosen from a boot menu entry of any slot.
		in.Params.Abort = !w.calm && rapid.IntRange(0, 9).Draw(w.t, "abort param") == 0
	}
	r, _ := w.durable()
	w.logf("boot %d: slot %q abort=%v, durable %s (calm=%v cut=%d)", i, in.BootedSlot, in.Params.Abort, describe(r), w.calm, w.opsLeft)
	a, err := RunBoot(w.store(), in, w)
	w.checkCounters(r)
	var stop *StopError
	if errors.As(err, &stop) {
		if w.merging && w.invalid {
			// Defined behaviour: a snapshot that went invalid part-way
			// through its merge stops the boot for a human; nothing is
			// dropped or deleted (checked by Sync and RemoveCOW).
			simStats["stopped: snapshot invalid mid-merge"]++
			w.logf("  -> stopped for recovery: %v", err)
			w.ended = true
			return
		}
		w.fail("stopped for recovery: %v", err)
	}
	if err != nil && !w.dead {
		w.fail("boot failed without a power cut: %v", err)
	}
	if err != nil {
		return
	}
	w.logf("  -> %v", a.Kind)
	simStats["action: "+a.Kind.String()+" "+a.Reason.String()]++
	if a.Kind == RebootOtherSlot {
		// PID 1 reboots without starting this slot's system.
		simStats["rebooted into the other slot"]++
		return
	}
	// Handover: the booted slot's system starts on userdata.
	if booted >= 0 && booted == w.rolledBack {
		w.fail("slot %s starts on userdata that was rolled back from its own update", SlotSuffixes[booted])
	}
	if now, err := w.durable(); err == nil && !w.native && now.State != StateCheckpointing && w.op("mark successful") {
		// An Android system marks its slot successful once it runs
		// (update_verifier, the boot control HAL). During a trial that
		// is the commit (modelled by commit below); otherwise it keeps
		// a slot that runs from being counted down to unbootable.
		_ = w.bc.MarkSuccessful(booted)
	}
	if w.calm {
		return
	}
	switch rapid.IntRange(0, 5).Draw(w.t, "user") {
	case 0, 1:
		w.begin(booted)
	case 2:
		w.commit(booted)
	case 3:
		w.abort(booted)
	}
}

// checkCounters: boot attempts are counted only while a trial is pending,
// at most one per boot, and a commit leaves tries >= 1.
func (w *simWorld) checkCounters(before *Record) {
	after, err := w.durable()
	if err != nil || before == nil {
		return
	}
	if after.State == StateCommitted && after.Reason == ReasonCommit && after.TriesLeft < 1 {
		w.fail("committed with tries %d", after.TriesLeft)
	}
	if before.State == StateCheckpointing && after.State == StateCheckpointing {
		if after.Attempts > before.Attempts+1 {
			w.fail("one boot counted %d attempts", after.Attempts-before.Attempts)
		}
		return
	}
	if before.State != StateCheckpointing && after.State == before.State &&
		(after.Attempts != before.Attempts || after.TriesLeft != before.TriesLeft) {
		w.fail("boot counter moved in state %v", before.State)
	}
}

func describe(r *Record) string {
	if r == nil {
		return "none"
	}
	s := r.State.String()
	if r.State == StateCheckpointing {
		if r.Active {
			s += "/active"
		} else {
			s += "/armed"
		}
		s += fmt.Sprintf(" attempts=%d tries=%d", r.Attempts, r.TriesLeft)
	}
	if r.Reason != ReasonNone {
		s += " (" + r.Reason.String() + ")"
	}
	if r.COWPath != "" && r.State == StateFresh {
		s += " leftover"
	}
	return s
}

func runSim(t *rapid.T) {
	w := &simWorld{t: t, native: rapid.Bool().Draw(t, "native"), img: newMemDev(), rolledBack: -1}
	if !w.native {
		w.bc, _ = NewBootControl(2, 0)
	}
	random := rapid.IntRange(1, 40).Draw(t, "random boots")
	for i := range random {
		w.boot(i)
		if w.ended {
			return
		}
	}
	// Calm: no cuts, no user. Bound: a trial slot has at most 6 bootloader
	// tries (or 3 native) and cpinit's cap is 16 boots; then one boot to
	// merge or clean up, one to drop a leftover.
	w.calm = true
	for i := range MaxBootAttempts + 4 {
		w.boot(random + i)
		if w.ended {
			return
		}
	}
	r, err := w.durable()
	if err != nil || r.State != StateFresh || r.COWPath != "" {
		w.fail("did not converge to fresh: %s (%v)", describe(r), err)
	}
	if w.cowExists {
		w.fail("converged to fresh but the COW file still exists")
	}
}

func TestPropertyPowerCuts(t *testing.T) {
	rapid.Check(t, runSim)
	keys := slices.Sorted(maps.Keys(simStats))
	for _, k := range keys {
		t.Logf("%6d %s", simStats[k], k)
	}
}
