package bootstate

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cpinit/cpinit/internal/cmdline"
)

// ActionKind is what init must do this boot. Every kind except
// StopForRecovery and MountPlain uses the COW geometry in Action.Map.
type ActionKind uint8

const (
	// MountPlain: no checkpoint. Map userdata directly and mount it. If
	// Action.RemoveLeftover is set, delete that file after mounting (clear
	// its immutable/pin flag first): it is a COW file that no record needs
	// any more (left by a merge whose cleanup was cut, or by a begin cut
	// after prepare). Then persist After (cleanup-done) if set: it also
	// forgets the slot a rollback left behind (Record.TargetSlot in
	// fresh), once another slot booted. If Action.FormatStore is set the
	// store was blank: write NewFreshRecord() with Store.Format so later
	// saves have a valid copy to fall back on.
	MountPlain ActionKind = iota + 1

	// CreateSnapshot: first trial boot. Persist Before (boot-attempt),
	// build cp-cow from Map, zero its first chunk through cp-cow (stale
	// blocks could look like a COW header), load the snapshot and
	// snapshot-origin, then persist After (activate) and only then mount
	// the origin read-write. A power cut before After is harmless: nothing
	// was written through the origin, and the next boot zeroes again.
	CreateSnapshot

	// ReattachSnapshot: a later trial boot. Persist Before (boot-attempt),
	// build cp-cow and load the snapshot with the existing COW (never
	// zero it), then snapshot-origin, mount the origin. If the kernel
	// reports the snapshot Invalid (COW overflow), persist
	// Step{Event: EventOverflow}, tear the devices down and call Decide
	// again: rollback is impossible and the current data is kept.
	ReattachSnapshot

	// VerifyExtents: a merge is next. Re-derive the COW file's extent map
	// through a read-only dm view (never the raw origin: even a read-only
	// ext4 mount replays the journal), compute ExtentMap.Fingerprint of
	// it, and call Decide again with DecideInput.Verified set. Decide
	// compares it with the record; a mismatch stops for recovery. If the
	// kernel reports the snapshot Invalid, persist EventOverflow (unless a
	// merge had started: then stop) and call Decide again.
	VerifyExtents

	// RecordRollback: the COW was verified this boot. Switch the
	// bootloader away from the update's slot if FallBack says so, persist
	// Before (rollback: the point of no return) and call Decide again,
	// which merges.
	RecordRollback

	// StartOrResumeMerge: persist Before (merge-attempt), load
	// snapshot-merge on the origin with cp-cow from Map, wait until
	// allocated == metadata sectors (snapshot.rst), remove the devices,
	// persist After (merge-done: fresh, with the COW path kept as a
	// leftover), then mount userdata directly, delete the COW file and
	// persist cleanup-done. Reloading after a power cut resumes the merge. If the kernel refuses because the snapshot is Invalid,
	// persist EventOverflow instead and call Decide again.
	StartOrResumeMerge

	// FinishCommitCleanup: the current data is authoritative. No snapshot
	// is loaded; mount userdata directly, clear the immutable/pin flag of
	// COWPath, delete it (a missing file is success: a previous attempt
	// got that far), then persist After (cleanup-done). If Before is set
	// (cancel: the snapshot was never created), persist it first. If
	// Reason is ReasonOverflow, show Message as a warning: the checkpoint
	// was lost, the update's data was kept.
	FinishCommitCleanup

	// StopForRecovery: the state is ambiguous, unreadable or a cap was hit.
	// Do not map userdata, do not touch the COW file. Print Message and
	// Command on the console and kmsg and halt (or enter recovery).
	StopForRecovery

	// RebootOtherSlot: userdata holds the data from before the update of
	// the slot that is booting now (it was rolled back, or the update was
	// abandoned before it ran). Starting that slot's system on it is what
	// the rollback exists to prevent. Tell the bootloader to boot the
	// other slot (Action.FallBack, Env.FallBack) and reboot without
	// mounting or handing over. If the bootloader cannot be told
	// (ErrNoSlotSwitch), stop instead.
	RebootOtherSlot
)

func (k ActionKind) String() string {
	switch k {
	case MountPlain:
		return "mount-plain"
	case CreateSnapshot:
		return "create-snapshot"
	case ReattachSnapshot:
		return "reattach-snapshot"
	case VerifyExtents:
		return "verify-extents"
	case RecordRollback:
		return "record-rollback"
	case StartOrResumeMerge:
		return "start-or-resume-merge"
	case FinishCommitCleanup:
		return "finish-commit-cleanup"
	case StopForRecovery:
		return "stop-for-recovery"
	case RebootOtherSlot:
		return "reboot-other-slot"
	}
	return fmt.Sprintf("action(%d)", uint8(k))
}

// Recovery commands named in StopForRecovery actions. cmds/cpinit
// implements them.
const (
	// CmdStatus shows both store copies, the boot control block and the
	// decision inputs.
	CmdStatus = "cpinit status"
	// CmdKeepCurrent declares the current userdata authoritative: writes a
	// committed record (Store.Format with RecoveryKeepCurrent), so the next
	// boot tears the checkpoint down. Only an operator may decide this.
	CmdKeepCurrent = "cpinit recover keep-current"
)

// Action is Decide's answer. Before and After are FSM steps: apply them
// with Apply and persist the result with Store.Save at the points the Kind
// documents, Before ahead of any side effect. Steps are idempotent with
// respect to power cuts: if power is lost anywhere, the next boot's Decide
// on the stored record redoes or continues the same work.
type Action struct {
	Kind    ActionKind
	Before  *Step
	After   *Step
	COWPath string     // the COW file (cleanup, merge, leftover)
	Map     *ExtentMap // COW geometry for create/reattach/verify/merge
	Reason  Reason     // why this action (rollback cause, overflow...)
	// RemoveLeftover: MountPlain only, a COW file nothing needs any more.
	RemoveLeftover string
	// FormatStore: MountPlain only, the store was blank.
	FormatStore bool
	// FallBack names the update's slot when this boot runs it and the
	// update is being abandoned: before anything else (before Before is
	// persisted), tell the bootloader to boot the other slot and not this
	// one (Env.FallBack). Write-ahead: the switch is durable before the
	// record leaves checkpointing, so no power cut can leave a rolled-back
	// userdata under a bootloader that still boots the update.
	FallBack string
	// SettleFallBack: FallBack on a boot of the old slot, which the
	// bootloader already fell back to. It only makes the bootloader's
	// state say so for good: RAUC's GRUB scheme leaves a failed slot
	// x_OK=1, and its reset rule would try it again one day, on the
	// rolled-back data. Set for CounterBootloader (Android's bootloaders
	// leave a failed slot at 0 tries). A failure is logged, not fatal:
	// the old slot is already the one that boots.
	SettleFallBack bool
	// Message is one line for the console, always set.
	Message string
	// Command: StopForRecovery only, what to run in recovery mode.
	Command string
}

// DeviceID identifies the userdata device cpinit found from the
// cpinit.userdata kernel parameter.
type DeviceID struct {
	Major, Minor uint32
	Sectors      uint64
}

// Params are the kernel parameters that bear on the decision.
type Params struct {
	// Abort is cpinit.abort=1: the operator asks to roll back now (e.g.
	// chosen from a bootloader menu).
	Abort bool
	// Userdata is the device named by cpinit.userdata. If set (Sectors
	// != 0), it must match the record's map, or Decide stops: a map
	// applied to another device writes over unrelated blocks.
	Userdata DeviceID
}

// DecideInput is everything Decide looks at. Decide does no I/O.
type DecideInput struct {
	// Record is the stored record, nil if RecordErr is set.
	Record *Record
	// RecordErr is Store.Load's error: ErrNoRecord (blank store) or any
	// other error (unreadable: stop).
	RecordErr error
	// BootedSlot is the slot this kernel was booted from, from the kernel
	// command line (SlotFromCmdline). "" if none given.
	BootedSlot string
	// Boot is the bootloader's A/B state if readable (Android misc, a
	// U-Boot or GRUB environment, systemd-boot's entries); BootErr why
	// not. See the corruption policy in the package doc: a bad state is
	// never a reason for a merge or a deletion on its own.
	Boot    ABState
	BootErr error
	Params  Params
	// Verified is the fingerprint of the extent map re-derived this boot
	// (after a VerifyExtents action); nil before that.
	Verified *[32]byte
}

// Decide returns the next action. It is pure and total: every input gives
// an action, and anything it cannot vouch for gives StopForRecovery.
func Decide(in DecideInput) Action {
	if in.RecordErr != nil || in.Record == nil {
		err := in.RecordErr
		if err == nil {
			err = errors.New("no record and no error")
		}
		if errors.Is(err, ErrNoRecord) {
			return Action{Kind: MountPlain, FormatStore: true,
				Message: "metadata store is blank: no checkpoint, initialising it"}
		}
		if errors.Is(err, ErrStoreForeign) {
			// Not a damaged store but most likely another partition:
			// keep-current refuses it too, so say what fixes it.
			a := stop(fmt.Sprintf("%v: this is not a cpinit metadata store; refusing to format it, merge or delete anything", err))
			a.Command = fmt.Sprintf("make cpinit.metadata= name the metadata partition (inspect in recovery mode, cpinit.recovery=1, with `%s`); "+
				"if this device really is meant to be the store and nothing on it is needed, zero its first %d MiB and boot again "+
				"(`%s` refuses a device that holds no cpinit record)", CmdStatus, StoreSize>>20, CmdKeepCurrent)
			return a
		}
		return stop(fmt.Sprintf("metadata store unreadable (%v); refusing to merge or delete anything", err))
	}
	r := *in.Record
	if err := r.validate(); err != nil {
		return stop(fmt.Sprintf("metadata record invalid (%v)", err))
	}
	mp := &r.Map
	switch r.State {
	case StateFresh:
		if r.TargetSlot != "" {
			// The update of TargetSlot was rolled back (or abandoned)
			// and the bootloader may not have moved away from it yet.
			switch {
			case in.BootedSlot == "":
				return stop(fmt.Sprintf("userdata was rolled back from the update of slot %s but the booted slot is unknown (no cpinit.slot, androidboot.slot_suffix or androidboot.slot on the kernel command line)", r.TargetSlot))
			case SameSlot(in.BootedSlot, r.TargetSlot):
				what := "was abandoned before it ran"
				if r.Reason == ReasonMerged {
					what = "was rolled back"
				}
				return Action{Kind: RebootOtherSlot, FallBack: r.TargetSlot, Reason: r.Reason,
					Message: fmt.Sprintf("the update of slot %s %s and userdata holds the data from before it; slot %s is booting now: not starting it, switching the bootloader to the other slot and rebooting", r.TargetSlot, what, r.TargetSlot)}
			}
		}
		a := Action{Kind: MountPlain, Message: "no checkpoint"}
		if r.COWPath != "" {
			a.RemoveLeftover = r.COWPath
			a.Message = "no checkpoint; removing leftover COW file " + r.COWPath
		}
		if r.COWPath != "" || r.TargetSlot != "" {
			a.After = &Step{Event: EventCleanupDone}
		}
		return a
	case StateCommitted:
		a := Action{Kind: FinishCommitCleanup, After: &Step{Event: EventCleanupDone},
			COWPath: r.COWPath, Reason: r.Reason,
			Message: fmt.Sprintf("checkpoint %s: deleting %s", r.Reason, r.COWPath)}
		if r.Reason == ReasonOverflow {
			a.Message = fmt.Sprintf("WARNING: the COW store %s overflowed; rollback is impossible, keeping the current data and deleting the checkpoint", r.COWPath)
		}
		return a
	case StateCheckpointing:
		if a, bad := checkDevice(&r, in.Params); bad {
			return a
		}
		// The kernel command line is the truth about the booted slot. Misc's
		// slot_suffix (what a bootloader records of its pick) is not: a bootloader that falls back without
		// rewriting it would make the old slot look like the update's
		// (CheckBootedSlot reports a disagreement).
		booted := in.BootedSlot
		if !in.Params.Abort && r.Active && r.Counter.Bootloader() && r.TargetSlot != "" &&
			SameSlot(booted, r.TargetSlot) && slotSuccessful(in.Boot, r.TargetSlot) {
			// The trial slot is marked successful by the bootloader
			// (Android's successful_boot, a blessed entry): `cpinit commit`
			// does that first and was cut before it recorded the commit
			// (or the system marked itself good through the boot control
			// HAL, as update_verifier does). begin clears the bit, so
			// nothing else sets it during a trial. Finish the commit:
			// otherwise the bootloader keeps booting this slot while
			// cpinit's attempt cap would eventually roll it back.
			return Action{Kind: FinishCommitCleanup, Before: &Step{Event: EventCommit},
				After: &Step{Event: EventCleanupDone}, COWPath: r.COWPath, Reason: ReasonCommit,
				Message: fmt.Sprintf("slot %s is marked successful: finishing its commit", r.TargetSlot)}
		}
		why := ReasonNone
		switch {
		case in.Params.Abort:
			why = ReasonAbort
		case r.TargetSlot != "" && booted == "":
			return stop(fmt.Sprintf("checkpoint for slot %s pending but the booted slot is unknown (no cpinit.slot, androidboot.slot_suffix or androidboot.slot on the kernel command line)", r.TargetSlot))
		case r.TargetSlot != "" && !SameSlot(booted, r.TargetSlot):
			why = ReasonSlotFallback
		case r.Counter == CounterNative && r.TriesLeft == 0:
			why = ReasonTriesExhausted
		case r.Attempts >= MaxBootAttempts:
			why = ReasonAttemptCap
		}
		if why != ReasonNone {
			// Abandoning the update on a boot of the update's own slot:
			// the bootloader must stop booting it before the record says
			// so (Action.FallBack).
			fallBack, settle := fallBackFor(&r, booted)
			if !r.Active {
				// The snapshot never existed: the trial never wrote
				// userdata, so there is nothing to merge.
				return Action{Kind: FinishCommitCleanup, Before: &Step{Event: EventCancel},
					After: &Step{Event: EventCleanupDone}, COWPath: r.COWPath, Reason: why, FallBack: fallBack, SettleFallBack: settle,
					Message: fmt.Sprintf("update abandoned before first use (%s): dropping the unused checkpoint", why)}
			}
			// Verify first, record after: only a rollback that can run
			// switches the bootloader away from the update. A COW found
			// Invalid (overflowed) here keeps the update's data, and the
			// bootloader still boots the update's slot.
			if in.Verified == nil {
				return Action{Kind: VerifyExtents, COWPath: r.COWPath, Map: mp, Reason: why,
					Message: fmt.Sprintf("rolling back userdata (%s, booted %q, target %q)", why, booted, r.TargetSlot)}
			}
			if *in.Verified != r.Fingerprint {
				return stop(fmt.Sprintf("the extents of %s no longer match the recorded map; merging would write to the wrong blocks", r.COWPath))
			}
			return Action{Kind: RecordRollback, Before: &Step{Event: EventRollback, Reason: why},
				COWPath: r.COWPath, Map: mp, Reason: why, FallBack: fallBack, SettleFallBack: settle,
				Message: fmt.Sprintf("the COW file's extents match the record: recording the rollback (%s)", why)}
		}
		if !r.Active {
			return Action{Kind: CreateSnapshot, Before: &Step{Event: EventBootAttempt},
				After: &Step{Event: EventActivate}, COWPath: r.COWPath, Map: mp,
				Message: fmt.Sprintf("first boot of slot %q: creating the checkpoint", r.TargetSlot)}
		}
		return Action{Kind: ReattachSnapshot, Before: &Step{Event: EventBootAttempt},
			COWPath: r.COWPath, Map: mp,
			Message: fmt.Sprintf("trial boot %d of slot %q: reattaching the checkpoint", r.Attempts+1, r.TargetSlot)}
	case StateRollbackPending:
		if a, bad := checkDevice(&r, in.Params); bad {
			return a
		}
		if r.MergeTries >= MaxMergeAttempts {
			return stop(fmt.Sprintf("merge attempted %d times without finishing", r.MergeTries))
		}
		// Whoever recorded the rollback switched the bootloader first; it
		// may have been reset since. Again, idempotently. (With the booted
		// slot unknown the merge still runs: the data must be restored
		// whatever boots next; the fresh record then stops the boot until
		// the slot is known.)
		fallBack, settle := "", false
		if in.BootedSlot != "" {
			fallBack, settle = fallBackFor(&r, in.BootedSlot)
		}
		if in.Verified == nil {
			return Action{Kind: VerifyExtents, COWPath: r.COWPath, Map: mp, Reason: r.Reason, FallBack: fallBack, SettleFallBack: settle,
				Message: "verifying the COW extent map before merging"}
		}
		if *in.Verified != r.Fingerprint {
			return stop(fmt.Sprintf("the extents of %s no longer match the recorded map; merging would write to the wrong blocks", r.COWPath))
		}
		return Action{Kind: StartOrResumeMerge, Before: &Step{Event: EventMergeAttempt},
			After: &Step{Event: EventMergeDone}, COWPath: r.COWPath, Map: mp, Reason: r.Reason,
			Message: fmt.Sprintf("merging the checkpoint back into userdata (%s), attempt %d", r.Reason, r.MergeTries+1)}
	}
	return stop(fmt.Sprintf("unknown state %v", r.State))
}

// fallBackFor is the FallBack of an update being abandoned on a boot of
// booted: the update's slot when it is the one running (the bootloader must
// stop booting it), and with a bootloader backend other than Android's also
// on the old slot, to settle (Action.SettleFallBack).
func fallBackFor(r *Record, booted string) (slot string, settle bool) {
	switch {
	case r.TargetSlot == "":
		return "", false
	case SameSlot(booted, r.TargetSlot):
		return r.TargetSlot, false
	case r.Counter == CounterBootloader:
		return r.TargetSlot, true
	}
	return "", false
}

// slotSuccessful reports whether the bootloader's state marks the slot
// successful. A scheme that does not record success apart from its try
// count (SlotInfo.TracksSuccess false: RAUC's BOOT_x_LEFT) never reports
// it: a commit is never inferred from a counter.
func slotSuccessful(s ABState, slot string) bool {
	if s == nil {
		return false
	}
	si, err := SlotOf(s, slot)
	return err == nil && si.TracksSuccess && si.Successful
}

func stop(msg string) Action {
	return Action{Kind: StopForRecovery, Message: msg,
		Command: fmt.Sprintf("boot recovery mode (cpinit.recovery=1), inspect with `%s`, then fix the cause or run `%s --yes` to keep the current data", CmdStatus, CmdKeepCurrent)}
}

func checkDevice(r *Record, p Params) (Action, bool) {
	u, m := p.Userdata, r.Map
	if u.Sectors == 0 {
		return Action{}, false
	}
	if u.Major != m.DevMajor || u.Minor != m.DevMinor || u.Sectors != m.DevSectors {
		return stop(fmt.Sprintf("userdata device is %d:%d (%d sectors) but the checkpoint was taken on %d:%d (%d sectors)",
			u.Major, u.Minor, u.Sectors, m.DevMajor, m.DevMinor, m.DevSectors)), true
	}
	return Action{}, false
}

// SameSlot compares slot names, accepting "_a" and "a" as equal (newer
// bootloaders pass androidboot.slot=a, older androidboot.slot_suffix=_a).
func SameSlot(a, b string) bool {
	return strings.TrimPrefix(a, "_") == strings.TrimPrefix(b, "_")
}

// SlotFromCmdline returns the booted slot from a kernel command line:
// cpinit.slot=, else androidboot.slot_suffix=, else androidboot.slot=.
// The line is split as the kernel splits it (internal/cmdline): quotes are
// dropped, the last occurrence of a key wins, and words after "--" are
// init's, not kernel parameters. An empty last value (cpinit.slot=) counts
// as absent.
func SlotFromCmdline(line string) string {
	c := cmdline.Parse(line)
	for _, k := range []string{"cpinit.slot", "androidboot.slot_suffix", "androidboot.slot"} {
		if v := c.Value(k); v != "" {
			return v
		}
	}
	return ""
}

// CheckBootedSlot compares the booted slot from the kernel command line with
// the slot the bootloader recorded as booted (a BootRecorder: misc's
// slot_suffix) and returns a warning when they disagree ("" when they agree
// or there is nothing to compare). The command line wins: it is what the
// bootloader passed to this kernel, while slot_suffix is only what the
// bootloader last wrote, and not every bootloader rewrites it on a
// fallback.
func CheckBootedSlot(cmdlineSlot string, s ABState) string {
	br, ok := s.(BootRecorder)
	if !ok || cmdlineSlot == "" {
		return ""
	}
	rec, where := br.RecordedBoot()
	if rec == "" || SameSlot(cmdlineSlot, rec) {
		return ""
	}
	return fmt.Sprintf("the kernel command line says slot %s booted, %s says %s: trusting the command line", cmdlineSlot, where, rec)
}

// RecoveryKeepCurrent is the record `cpinit recover keep-current` writes
// with Store.Format: committed by the operator, so the next boot deletes
// cowPath and returns to fresh. It discards any checkpoint.
func RecoveryKeepCurrent(cowPath string) Record {
	r := NewFreshRecord()
	r.State, r.Reason, r.COWPath = StateCommitted, ReasonOperator, cowPath
	return r
}
