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
}

// StopError is returned by RunBoot for a StopForRecovery action.
type StopError struct{ Action Action }

func (e *StopError) Error() string {
	return fmt.Sprintf("cpinit: stopped: %s; %s", e.Action.Message, e.Action.Command)
}

// maxDecisions bounds RunBoot's loop. The longest chain is rollback:
// verify (checkpointing) → verify is done → merge → overflow → cleanup.
const maxDecisions = 6

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
		switch a.Kind {
		case StopForRecovery:
			return a, &StopError{a}

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
					return nonFatal(env, a, err)
				}
				if err := persist(&Step{Event: EventCleanupDone}); err != nil {
					return fail("persist", err)
				}
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
			overflow, err := env.ReattachSnapshot(a.Map)
			if err != nil {
				return fail("reattach snapshot", err)
			}
			if overflow {
				if err := persist(&Step{Event: EventOverflow}); err != nil {
					return fail("persist", err)
				}
				continue
			}
			if err := env.MountOrigin(); err != nil {
				return fail("mount origin", err)
			}
			return a, nil

		case VerifyExtents:
			if err := persist(a.Before); err != nil {
				return fail("persist", err)
			}
			fp, overflow, err := env.VerifyExtents(a.COWPath, a.Map)
			if err != nil {
				return fail("verify extents", err)
			}
			if overflow {
				if err := persist(&Step{Event: EventOverflow}); err != nil {
					return fail("persist", err)
				}
				in.Verified = nil
				continue
			}
			in.Verified = &fp
			continue

		case StartOrResumeMerge:
			if err := persist(a.Before); err != nil {
				return fail("persist", err)
			}
			overflow, err := env.Merge(a.Map)
			if err != nil {
				return fail("merge", err)
			}
			if overflow {
				if err := persist(&Step{Event: EventOverflow}); err != nil {
					return fail("persist", err)
				}
				in.Verified = nil
				continue
			}
			// Merge complete: fresh, with the COW path kept as a leftover,
			// before the file is deleted.
			if err := persist(a.After); err != nil {
				return fail("persist", err)
			}
			if err := env.MountPlain(); err != nil {
				return fail("mount", err)
			}
			if err := env.RemoveCOW(a.COWPath); err != nil {
				return nonFatal(env, a, err)
			}
			if err := persist(&Step{Event: EventCleanupDone}); err != nil {
				return fail("persist", err)
			}
			return a, nil

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
