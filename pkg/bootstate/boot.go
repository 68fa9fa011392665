package bootstate

import (
	"errors"
	"fmt"
)

// Env is the I/O one boot needs. cmds/cpinit implements it with pkg/dmsnap
// and pkg/fiemap; the property tests implement it with a simulation that
// loses power between any two operations. RunBoot calls these in an order
// that keeps the write-ahead rule; an Env only has to do each step
// idempotently (repeating it after a power cut must be harmless).
type Env interface {
	// Log shows one line on the console and in kmsg.
	Log(msg string)
	// MountPlain maps nothing and mounts userdata directly.
	MountPlain() error
	// RemoveCOW clears the immutable/pin flag of path inside the mounted
	// userdata and deletes it. A missing file is success.
	RemoveCOW(path string) error
	// CreateSnapshot builds cp-cow from m, zeroes its first chunk through
	// cp-cow, loads the snapshot and snapshot-origin. It does not mount.
	CreateSnapshot(m *ExtentMap) error
	// ReattachSnapshot builds cp-cow from m and loads the snapshot on the
	// existing COW, then snapshot-origin. overflow reports a snapshot the
	// kernel says is Invalid; then it must leave no devices behind.
	ReattachSnapshot(m *ExtentMap) (overflow bool, err error)
	// MountOrigin mounts the snapshot-origin device read-write.
	MountOrigin() error
	// VerifyExtents re-derives the extent map of path through a
	// read-only dm view (never the raw origin) and returns its
	// ExtentMap.Fingerprint, with the device identity and chunk size of
	// want filled in. It must not write anything. overflow reports that
	// the view cannot be had because the kernel says the snapshot is
	// Invalid (the COW overflowed): there is nothing to merge, and it must
	// leave no devices behind.
	VerifyExtents(path string, want *ExtentMap) (fp [32]byte, overflow bool, err error)
	// Merge loads snapshot-merge with cp-cow from m, waits until the merge
	// is complete, and removes the devices. overflow reports an Invalid
	// snapshot that the kernel refuses to merge.
	Merge(m *ExtentMap) (overflow bool, err error)
	// FallBack tells the bootloader to boot the other slot than slot (the
	// update's) from the next boot on, and not slot: on Android's misc,
	// SetActive(other) and SetUnbootable(slot) (BootControl.FallBackFrom),
	// flushed before it returns. It must be idempotent. If cpinit has no
	// bootloader state it can write for this device (no misc, a slot name
	// that is not an A/B suffix), it returns an error wrapping
	// ErrNoSlotSwitch and writes nothing.
	FallBack(slot string) error
}

// ErrNoSlotSwitch: cpinit cannot tell this device's bootloader which slot to
// boot (Env.FallBack).
var ErrNoSlotSwitch = errors.New("cpinit cannot tell the bootloader to boot another slot")

// StopError is returned by RunBoot for a StopForRecovery action.
type StopError struct{ Action Action }

func (e *StopError) Error() string {
	return fmt.Sprintf("cpinit: stopped: %s; %s", e.Action.Message, e.Action.Command)
}

// maxDecisions bounds RunBoot's loop. The longest chain is rollback:
// verify (checkpointing) → record the rollback → merge → overflow →
// cleanup → fresh (forget the slot, or reboot into the other one).
const maxDecisions = 8

// RunBoot performs one boot: load the record, Decide, persist Before, do
// the side effects through env, persist After, and repeat while an action
// asks for another decision (verification, overflow). in supplies the
// boot inputs; its Record, RecordErr and Verified fields are filled here.
// It returns the last action. Any error means: do not continue booting
// (log, sync, halt or reboot as configured); a *StopError carries the
// recovery message.
func RunBoot(s *Store, in DecideInput, env Env) (Action, error) {
	rec, _, err := s.Load()
	in.Record, in.RecordErr, in.Verified = rec, err, nil
	// mergeStarted: an earlier boot recorded a merge attempt, so the
	// kernel may have copied part of the COW back already. From then on
	// the COW holds the only copy of the rest of the old data: an Invalid
	// snapshot must stop the boot, never be dropped like an overflow
	// (which would delete the COW and keep a half-restored filesystem).
	mergeStarted := rec != nil && rec.State == StateRollbackPending && rec.MergeTries > 0
	// done is the boot's main action once it is complete (a merge, a
	// commit's cleanup) when a follow-up decision only finishes it: that
	// one is what RunBoot reports, unless the follow-up reboots or stops.
	var done *Action
	persist := func(step *Step) error {
		if step == nil {
			return nil
		}
		n, err := Apply(*in.Record, *step)
		if err != nil {
			return err
		}
		gen, err := s.Save(&n)
		if err != nil {
			return fmt.Errorf("persist %v: %w", step, err)
		}
		n.Generation = gen
		in.Record = &n
		return nil
	}
	for range maxDecisions {
		a := Decide(in)
		env.Log(a.Message)
		fail := func(op string, err error) (Action, error) {
			return a, fmt.Errorf("cpinit: %s (%s): %w", a.Kind, op, err)
		}
		invalidSnapshot := func() (Action, error) {
			if mergeStarted {
				st := stop(fmt.Sprintf("the snapshot of %s is Invalid, but a merge of it had already started (%d boots attempted it): "+
					"userdata is part restored and the COW file holds the only copy of the rest; refusing to drop the checkpoint or delete the file", a.COWPath, in.Record.MergeTries))
				st.Command = fmt.Sprintf("boot recovery mode (cpinit.recovery=1), inspect with `%s` and the kernel log (an I/O error on the COW?); "+
					"if the cause can be fixed, reboot to resume the merge; otherwise restore userdata from a backup (docs/recovery.md)", CmdStatus)
				env.Log(st.Message)
				return st, &StopError{st}
			}
			if err := persist(&Step{Event: EventOverflow}); err != nil {
				return fail("persist", err)
			}
			in.Verified = nil
			return a, nil
		}
		if a.FallBack != "" {
			// Before anything is persisted (write-ahead): the bootloader
			// stops booting the update before the record gives it up.
			if err := env.FallBack(a.FallBack); err != nil && a.SettleFallBack {
				env.Log(fmt.Sprintf("warning: the bootloader already boots the old slot, but making slot %s unbootable for good failed: %v", a.FallBack, err))
			} else if err != nil {
				if !errors.Is(err, ErrNoSlotSwitch) {
					return fail("switch slots", err)
				}
				if a.Kind == RebootOtherSlot {
					st := stop(fmt.Sprintf("%s; but %v: not starting slot %s on data rolled back from its update", a.Message, err, a.FallBack))
					st.Command = fmt.Sprintf("boot the other slot (choose it in the bootloader); the update's slot %s must not run on this data", a.FallBack)
					return st, &StopError{st}
				}
				// The rollback is still needed; afterwards Decide keeps
				// this slot from starting on the rolled-back data.
				env.Log(fmt.Sprintf("warning: %v; rolling back anyway, then refusing to start slot %s", err, a.FallBack))
			}
		}
		switch a.Kind {
		case StopForRecovery:
			return a, &StopError{a}

		case RebootOtherSlot:
			return a, nil

		case MountPlain:
			if a.FormatStore {
				fresh := NewFreshRecord()
				if _, err := s.Format(&fresh); err != nil {
					return fail("format store", err)
				}
			}
			if err := env.MountPlain(); err != nil {
				return fail("mount", err)
			}
			if a.RemoveLeftover != "" {
				if err := env.RemoveCOW(a.RemoveLeftover); err != nil {
					if done != nil {
						return nonFatal(env, *done, err)
					}
					return nonFatal(env, a, err)
				}
			}
			if err := persist(a.After); err != nil {
				return fail("persist", err)
			}
			if done != nil {
				return *done, nil
			}
			return a, nil

		case CreateSnapshot:
			if err := persist(a.Before); err != nil {
				return fail("persist", err)
			}
			if err := env.CreateSnapshot(a.Map); err != nil {
				return fail("create snapshot", err)
			}
			// The snapshot exists now and its COW header is the kernel's:
			// record that before the first write through the origin, so a
			// later boot reattaches instead of zeroing saved chunks.
			if err := persist(a.After); err != nil {
				return fail("persist", err)
			}
			if err := env.MountOrigin(); err != nil {
				return fail("mount origin", err)
			}
			return a, nil

		case ReattachSnapshot:
			if err := persist(a.Before); err != nil {
				return fail("persist", err)
			}
			invalid, err := env.ReattachSnapshot(a.Map)
			if err != nil {
				return fail("reattach snapshot", err)
			}
			if invalid {
				if a, err := invalidSnapshot(); err != nil {
					return a, err
				}
				continue
			}
			if err := env.MountOrigin(); err != nil {
				return fail("mount origin", err)
			}
			return a, nil

		case RecordRollback:
			if err := persist(a.Before); err != nil {
				return fail("persist", err)
			}
			continue

		case VerifyExtents:
			fp, invalid, err := env.VerifyExtents(a.COWPath, a.Map)
			if err != nil {
				return fail("verify extents", err)
			}
			if invalid {
				if a, err := invalidSnapshot(); err != nil {
					return a, err
				}
				continue
			}
			in.Verified = &fp
			continue

		case StartOrResumeMerge:
			if err := persist(a.Before); err != nil {
				return fail("persist", err)
			}
			invalid, err := env.Merge(a.Map)
			if err != nil {
				return fail("merge", err)
			}
			if invalid {
				if a, err := invalidSnapshot(); err != nil {
					return a, err
				}
				continue
			}
			// Merge complete: fresh, with the COW path kept as a leftover
			// and the rolled-back slot named, before the file is deleted.
			// The next decision mounts and deletes it, or, on a boot of
			// the rolled-back slot, reboots into the other one.
			if err := persist(a.After); err != nil {
				return fail("persist", err)
			}
			done = &a
			continue

		case FinishCommitCleanup:
			if err := persist(a.Before); err != nil {
				return fail("persist", err)
			}
			if err := env.MountPlain(); err != nil {
				return fail("mount", err)
			}
			if err := env.RemoveCOW(a.COWPath); err != nil {
				return nonFatal(env, a, err)
			}
			if err := persist(a.After); err != nil {
				return fail("persist", err)
			}
			if in.Record.TargetSlot != "" {
				// An abandoned update left its slot named: forget it, or
				// reboot into the other slot (next decision).
				done = &a
				continue
			}
			return a, nil

		default:
			return fail("decide", errors.New("unknown action"))
		}
	}
	return Action{}, fmt.Errorf("cpinit: no final action after %d decisions", maxDecisions)
}

// nonFatal handles a failure to delete a COW file that no rollback needs
// any more (committed, or fresh with a leftover). Userdata is already
// mounted with the data to keep, so failing the boot would only turn a
// stuck file into a boot loop with no counter to end it. The record is
// left as it is, so the next boot tries again, and status shows it.
func nonFatal(env Env, a Action, err error) (Action, error) {
	env.Log(fmt.Sprintf("WARNING: could not delete the COW file (%v); continuing, will retry next boot", err))
	return a, nil
}
