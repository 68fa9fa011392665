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
	fallBackErr    error
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
func (e *recEnv) FallBack(slot string) error {
	e.ops = append(e.ops, "fallback:"+slot)
	return e.fallBackErr
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
		abort    bool
	}{
		{"blank", nil, "_a", false, "save:fresh mount-plain", false},
		{"fresh", ptr(NewFreshRecord()), "_a", false, "mount-plain", false},
		{"leftover", &leftover, "_a", false, "mount-plain remove save:fresh", false},
		{"first trial", &armed, "_b", false, "save:checkpointing create save:checkpointing/active mount-origin", false},
		{"trial", &active, "_b", false, "save:checkpointing/active reattach mount-origin", false},
		{"overflow at reattach", &active, "_b", true, "save:checkpointing/active reattach save:committed mount-plain remove save:fresh", false},
		{"fallback", &active, "_a", false, "verify save:rollback-pending/active save:rollback-pending/active merge save:fresh/leftover mount-plain remove save:fresh", false},
		// The cancelled update's slot stays named until another slot
		// boots: here it already has, so the next decision forgets it.
		{"fallback armed", &armed, "_a", false, "save:committed mount-plain remove save:fresh mount-plain save:fresh", false},
		// On the update's own slot: the bootloader is switched before
		// anything is recorded, and the boot ends in a reboot.
		{"resume merge", &pending, "_b", false, "fallback:_b verify save:rollback-pending/active merge save:fresh/leftover fallback:_b", false},
		{"resume merge on the old slot", &pending, "_a", false, "verify save:rollback-pending/active merge save:fresh/leftover mount-plain remove save:fresh", false},
		{"overflow at merge", &pending, "_b", true, "fallback:_b verify save:rollback-pending/active merge save:committed mount-plain remove save:fresh", false},
		{"committed", &committed, "_b", false, "mount-plain remove save:fresh", false},
		{"abort on the update's slot", &active, "_b", false, "verify fallback:_b save:rollback-pending/active save:rollback-pending/active merge save:fresh/leftover fallback:_b", true},
		{"abort armed on the update's slot", &armed, "_b", false, "fallback:_b save:committed mount-plain remove save:fresh fallback:_b", true},
		{"rolled back, the update's slot boots", &leftover, "_b", false, "fallback:_b", false},
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
			_, err := RunBoot(NewStore(recDev{dev, env}, "mem"), DecideInput{BootedSlot: c.slot, Params: Params{Abort: c.abort}}, env)
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

// A COW found Invalid before the rollback is recorded keeps the update's
// data, and the bootloader is left booting the update's slot: switching it
// first would start the old system on the update's data.
func TestRunBootOverflowBeforeFallBack(t *testing.T) {
	active := activeRecord(t, CounterAndroid, "_b")
	env := &recEnv{verifyOverflow: true}
	dev := newMemDev()
	mustSave(t, NewStore(dev, ""), &active)
	dev.syncs = 0
	if _, err := RunBoot(NewStore(recDev{dev, env}, "mem"), DecideInput{BootedSlot: "_b", Params: Params{Abort: true}}, env); err != nil {
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

// Issue 14, finding 9: once a boot has recorded a merge attempt, the kernel
// may have copied part of the COW back; a snapshot reported Invalid from then
// on (an I/O error on the COW, say) must stop the boot. Dropping it like an
// overflow would record committed and delete the COW file, which holds the
// only copy of the rest of the old data. Before the fix RunBoot recorded
// committed(overflow) and removed the file here.
func TestRunBootInvalidAfterMergeStarted(t *testing.T) {
	active := activeRecord(t, CounterAndroid, "_b")
	pending := mustApply(t, active, Step{Event: EventRollback, Reason: ReasonAbort})
	started := mustApply(t, pending, Step{Event: EventMergeAttempt})
	for _, c := range []struct {
		name string
		env  *recEnv
		want string
	}{
		{"invalid at verify", &recEnv{verifyOverflow: true}, "verify"},
		{"invalid at merge", &recEnv{overflow: true, fp: active.Fingerprint}, "verify save:rollback-pending/active merge"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dev := newMemDev()
			mustSave(t, NewStore(dev, ""), &started)
			dev.syncs = 0
			a, err := RunBoot(NewStore(recDev{dev, c.env}, "mem"), DecideInput{BootedSlot: "_a"}, c.env)
			var se *StopError
			if !errors.As(err, &se) || a.Kind != StopForRecovery || !strings.Contains(a.Message, "part restored") {
				t.Fatalf("got %v, %v; want a stop for recovery saying userdata is part restored", a.Kind, err)
			}
			if got := strings.Join(c.env.ops, " "); got != c.want {
				t.Errorf("\n got %s\nwant %s", got, c.want)
			}
			r, _ := mustLoad(t, NewStore(dev, ""))
			if r.State != StateRollbackPending {
				t.Errorf("record %v after the stop, want rollback-pending kept", r.State)
			}
		})
	}
}

// Issue 14, finding 1: a rollback on a boot of the update's own slot switches
// the bootloader before anything is recorded; if the switch cannot be made
// for another reason than "no bootloader cpinit can tell", nothing is
// recorded and the boot fails (the next boot retries, or the bootloader
// falls back by itself). With no bootloader to tell, the rollback still runs
// (it is needed) and the boot then stops instead of starting the update's
// system on the rolled-back data.
func TestRunBootFallBackFailures(t *testing.T) {
	active := activeRecord(t, CounterNative, "b")
	in := DecideInput{BootedSlot: "b", Params: Params{Abort: true}}

	env := &recEnv{fallBackErr: errors.New("misc: EIO"), fp: active.Fingerprint}
	dev := newMemDev()
	mustSave(t, NewStore(dev, ""), &active)
	dev.syncs = 0
	if _, err := RunBoot(NewStore(recDev{dev, env}, "mem"), in, env); err == nil || !strings.Contains(err.Error(), "EIO") {
		t.Fatalf("fallback EIO: err %v", err)
	}
	if got := strings.Join(env.ops, " "); got != "verify fallback:b" {
		t.Errorf("fallback EIO: ops %s, want the read-only verification and the attempt, nothing saved", got)
	}

	env = &recEnv{fallBackErr: fmt.Errorf("no misc: %w", ErrNoSlotSwitch), fp: active.Fingerprint}
	a, err := RunBoot(NewStore(recDev{dev, env}, "mem"), in, env)
	var se *StopError
	if !errors.As(err, &se) || !strings.Contains(a.Command, "boot the other slot") {
		t.Fatalf("no slot switch: got %v, %v", a.Kind, err)
	}
	want := "verify fallback:b save:rollback-pending/active save:rollback-pending/active merge save:fresh/leftover fallback:b"
	if got := strings.Join(env.ops, " "); got != want {
		t.Errorf("no slot switch:\n got %s\nwant %s", got, want)
	}
	// Every later boot of that slot stops the same way; another slot
	// boots normally and forgets it.
	env.ops = nil
	if _, err := RunBoot(NewStore(recDev{dev, env}, "mem"), DecideInput{BootedSlot: "b"}, env); !errors.As(err, &se) {
		t.Fatalf("the rolled-back slot booted again: %v", err)
	}
	env.ops = nil
	if _, err := RunBoot(NewStore(recDev{dev, env}, "mem"), DecideInput{BootedSlot: "a"}, env); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(env.ops, " "); got != "mount-plain remove save:fresh" {
		t.Errorf("the other slot: ops %s", got)
	}
	if r, _ := mustLoad(t, NewStore(dev, "")); r.TargetSlot != "" || r.COWPath != "" {
		t.Errorf("after the other slot booted: %+v", r)
	}
}

// With a bootloader backend other than Android's, a rollback on the old
// slot (the bootloader fell back) also makes the update's slot unbootable
// for good (RAUC's GRUB scheme would retry it after its reset rule); that
// write failing does not stop the rollback, the old slot already boots.
func TestRunBootSettlesFallBackOnOldSlot(t *testing.T) {
	active := activeRecord(t, CounterBootloader, "b")
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"written", nil, "verify fallback:b save:rollback-pending/active save:rollback-pending/active merge save:fresh/leftover"},
		{"write fails", errors.New("grubenv: EIO"), "verify fallback:b save:rollback-pending/active save:rollback-pending/active merge save:fresh/leftover"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := &recEnv{fallBackErr: c.err, fp: active.Fingerprint}
			dev := newMemDev()
			mustSave(t, NewStore(dev, ""), &active)
			a, err := RunBoot(NewStore(recDev{dev, env}, "mem"), DecideInput{BootedSlot: "a"}, env)
			if err != nil {
				t.Fatalf("%v %v", a.Kind, err)
			}
			if got := strings.Join(env.ops, " "); !strings.HasPrefix(got, c.want) {
				t.Errorf("\n got %s\nwant %s...", got, c.want)
			}
			if r, _ := mustLoad(t, NewStore(dev, "")); r.State != StateFresh || r.Reason != ReasonMerged {
				t.Errorf("after the rollback: %+v", r)
			}
		})
	}
	// Android's counter: the bootloader's own fallback is final, misc is
	// not written on the old slot.
	android := activeRecord(t, CounterAndroid, "_b")
	env := &recEnv{fp: android.Fingerprint}
	dev := newMemDev()
	mustSave(t, NewStore(dev, ""), &android)
	if _, err := RunBoot(NewStore(recDev{dev, env}, "mem"), DecideInput{BootedSlot: "_a"}, env); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(env.ops, " "); strings.Contains(got, "fallback") {
		t.Errorf("android counter, old slot: ops %s, want no fallback write", got)
	}
}
