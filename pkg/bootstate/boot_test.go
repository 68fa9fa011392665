package bootstate

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// recEnv records the order of operations, interleaved with the store
// writes (via recDev), to check the write-ahead order of RunBoot.
type recEnv struct {
	ops            []string
	overflow       bool
	verifyOverflow bool
	fp             [32]byte
	removeErr      error
}

func (e *recEnv) Log(string)         {}
func (e *recEnv) MountPlain() error  { e.ops = append(e.ops, "mount-plain"); return nil }
func (e *recEnv) MountOrigin() error { e.ops = append(e.ops, "mount-origin"); return nil }
func (e *recEnv) RemoveCOW(p string) error {
	e.ops = append(e.ops, "remove")
	return e.removeErr
}
func (e *recEnv) CreateSnapshot(*ExtentMap) error { e.ops = append(e.ops, "create"); return nil }
func (e *recEnv) ReattachSnapshot(*ExtentMap) (bool, error) {
	e.ops = append(e.ops, "reattach")
	return e.overflow, nil
}
func (e *recEnv) VerifyExtents(string, *ExtentMap) ([32]byte, bool, error) {
	e.ops = append(e.ops, "verify")
	return e.fp, e.verifyOverflow, nil
}
func (e *recEnv) Merge(*ExtentMap) (bool, error) {
	e.ops = append(e.ops, "merge")
	return e.overflow, nil
}

type recDev struct {
	*memDev
	env *recEnv
}

func (d recDev) Sync() error {
	// Log the durable state once per Save (after its second copy).
	if d.memDev.syncs%2 == 1 {
		r, _, err := NewStore(d.memDev, "").Load()
		if err != nil {
			d.env.ops = append(d.env.ops, "save:"+err.Error())
		} else {
			d.env.ops = append(d.env.ops, "save:"+describeShort(r))
		}
	}
	return d.memDev.Sync()
}

func describeShort(r *Record) string {
	s := r.State.String()
	if r.Active {
		s += "/active"
	}
	if r.State == StateFresh && r.COWPath != "" {
		s += "/leftover"
	}
	return s
}

func TestRunBootOrder(t *testing.T) {
	active := activeRecord(t, CounterAndroid, "_b")
	armed := armedRecord(t, CounterAndroid, "_b")
	pending := mustApply(t, active, Step{Event: EventRollback, Reason: ReasonAbort})
	committed := mustApply(t, active, Step{Event: EventCommit})
	leftover := mustApply(t, pending, Step{Event: EventMergeDone})
	cases := []struct {
		name     string
		rec      *Record
		slot     string
		overflow bool
		want     string
	}{
		{"blank", nil, "_a", false, "save:fresh mount-plain"},
		{"fresh", ptr(NewFreshRecord()), "_a", false, "mount-plain"},
		{"leftover", &leftover, "_a", false, "mount-plain remove save:fresh"},
		{"first trial", &armed, "_b", false, "save:checkpointing create save:checkpointing/active mount-origin"},
		{"trial", &active, "_b", false, "save:checkpointing/active reattach mount-origin"},
		{"overflow at reattach", &active, "_b", true, "save:checkpointing/active reattach save:committed mount-plain remove save:fresh"},
		{"fallback", &active, "_a", false, "save:rollback-pending/active verify save:rollback-pending/active merge save:fresh/leftover mount-plain remove save:fresh"},
		{"fallback armed", &armed, "_a", false, "save:committed mount-plain remove save:fresh"},
		{"resume merge", &pending, "_b", false, "verify save:rollback-pending/active merge save:fresh/leftover mount-plain remove save:fresh"},
		{"overflow at merge", &pending, "_b", true, "verify save:rollback-pending/active merge save:committed mount-plain remove save:fresh"},
		{"committed", &committed, "_b", false, "mount-plain remove save:fresh"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := &recEnv{overflow: c.overflow, fp: active.Fingerprint}
			dev := newMemDev()
			if c.rec != nil {
				if _, err := NewStore(dev, "").Save(c.rec); err != nil {
					t.Fatal(err)
				}
				dev.syncs = 0
			}
			_, err := RunBoot(NewStore(recDev{dev, env}, "mem"), DecideInput{BootedSlot: c.slot}, env)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(env.ops, " "); got != c.want {
				t.Errorf("\n got %s\nwant %s", got, c.want)
			}
		})
	}
}

// An Invalid snapshot found while mapping the read-only view for
// verification means there is nothing to merge: the record goes to committed
// (rollback impossible, current data kept) and the COW file is released.
func TestRunBootOverflowAtVerify(t *testing.T) {
	active := activeRecord(t, CounterAndroid, "_b")
	pending := mustApply(t, active, Step{Event: EventRollback, Reason: ReasonAbort})
	env := &recEnv{verifyOverflow: true}
	dev := newMemDev()
	if _, err := NewStore(dev, "").Save(&pending); err != nil {
		t.Fatal(err)
	}
	dev.syncs = 0
	if _, err := RunBoot(NewStore(recDev{dev, env}, "mem"), DecideInput{BootedSlot: "_a"}, env); err != nil {
		t.Fatal(err)
	}
	want := "verify save:committed mount-plain remove save:fresh"
	if got := strings.Join(env.ops, " "); got != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
}

func TestRunBootStopsAndTolerates(t *testing.T) {
	env := &recEnv{}
	dev := newMemDev()
	dev.WriteAt([]byte("junk"), 0)
	dev.WriteAt([]byte("junk"), CopyStride)
	a, err := RunBoot(NewStore(dev, "mem"), DecideInput{}, env)
	var se *StopError
	if !errors.As(err, &se) || a.Kind != StopForRecovery || len(env.ops) != 0 {
		t.Fatalf("corrupt store: %v %v %v", a.Kind, err, env.ops)
	}
	// A COW file that cannot be deleted after commit does not fail the
	// boot (that would loop forever); the record stays committed.
	committed := mustApply(t, activeRecord(t, CounterNative, ""), Step{Event: EventCommit})
	dev = newMemDev()
	s := NewStore(dev, "mem")
	mustSave(t, s, &committed)
	env = &recEnv{removeErr: fmt.Errorf("EPERM")}
	if _, err := RunBoot(s, DecideInput{}, env); err != nil {
		t.Fatalf("remove failure was fatal: %v", err)
	}
	if got, _ := mustLoad(t, s); got.State != StateCommitted {
		t.Fatalf("state after failed cleanup: %v", got.State)
	}
	if !reflect.DeepEqual(env.ops, []string{"mount-plain", "remove"}) {
		t.Fatalf("ops %v", env.ops)
	}
}
