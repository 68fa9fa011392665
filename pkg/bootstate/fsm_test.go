package bootstate

import (
	"errors"
	"testing"
)

// Every (state, event) pair not in the table is refused with a typed error
// naming the state and event, and the record is returned unchanged.
func TestTransitionTable(t *testing.T) {
	records := map[State]Record{
		StateFresh:           NewFreshRecord(),
		StateCheckpointing:   activeRecord(t, CounterNative, "_b"),
		StateCommitted:       mustApply(t, activeRecord(t, CounterNative, "_b"), Step{Event: EventCommit}),
		StateRollbackPending: mustApply(t, activeRecord(t, CounterNative, "_b"), Step{Event: EventRollback, Reason: ReasonAbort}),
	}
	allowed := map[State][]Event{}
	for _, e := range fsmEvents {
		for _, src := range e.Src {
			st, _ := ParseState(src)
			allowed[st] = append(allowed[st], Event(e.Name))
		}
	}
	for st, r := range records {
		for _, ev := range Events() {
			s := Step{Event: ev}
			switch ev {
			case EventBegin:
				s.Begin = testBegin(CounterNative, "")
			case EventPrepare:
				s.Path = "/data/.cpinit/cow"
			case EventRollback:
				s.Reason = ReasonAbort
			}
			inTable := false
			for _, a := range allowed[st] {
				inTable = inTable || a == ev
			}
			n, err := Apply(r, s)
			var te *TransitionError
			switch {
			case !inTable:
				if !errors.As(err, &te) || te.From != st || te.Event != ev || !errors.Is(err, ErrEventNotAllowed) {
					t.Errorf("%v --%v-->: want ErrEventNotAllowed, got %v", st, ev, err)
				}
				if !sameRecord(&n, &r) {
					t.Errorf("%v --%v-->: refused event changed the record", st, ev)
				}
			case ev == EventCleanupDone && st == StateFresh:
				if !errors.Is(err, ErrNothingToClean) {
					t.Errorf("cleanup-done on fresh without leftover: %v", err)
				}
			case ev == EventActivate || ev == EventCancel:
				// Guarded: the checkpointing record here is active.
				if !errors.Is(err, ErrAlreadyActive) {
					t.Errorf("%v --%v--> on active record: %v", st, ev, err)
				}
			default:
				if err != nil {
					t.Errorf("%v --%v-->: %v", st, ev, err)
				}
			}
		}
	}
	if _, err := Apply(NewFreshRecord(), Step{Event: "reboot"}); !errors.Is(err, ErrUnknownEvent) {
		t.Errorf("unknown event: %v", err)
	}
}

func TestGuards(t *testing.T) {
	armed := armedRecord(t, CounterNative, "_b")
	active := activeRecord(t, CounterNative, "_b")
	cases := []struct {
		name string
		r    Record
		s    Step
		want error
	}{
		{"rollback armed", armed, Step{Event: EventRollback, Reason: ReasonAbort}, ErrNotActive},
		{"overflow armed", armed, Step{Event: EventOverflow}, ErrNotActive},
		{"activate twice", active, Step{Event: EventActivate}, ErrAlreadyActive},
		{"cancel active", active, Step{Event: EventCancel}, ErrAlreadyActive},
		{"rollback no reason", active, Step{Event: EventRollback}, ErrBadReason},
		{"rollback reason commit", active, Step{Event: EventRollback, Reason: ReasonCommit}, ErrBadReason},
		{"commit with reason", active, Step{Event: EventCommit, Reason: ReasonAbort}, ErrBadReason},
		{"begin without args", NewFreshRecord(), Step{Event: EventBegin}, ErrBadBegin},
		{"begin relative path", NewFreshRecord(), Step{Event: EventBegin, Begin: &BeginArgs{COWPath: "cow", Map: testMap(2), Counter: CounterNative}}, ErrBadBegin},
		{"begin empty map", NewFreshRecord(), Step{Event: EventBegin, Begin: &BeginArgs{COWPath: "/cow", Counter: CounterNative}}, ErrBadBegin},
		{"begin android no slot", NewFreshRecord(), Step{Event: EventBegin, Begin: &BeginArgs{COWPath: "/cow", Map: testMap(2), Counter: CounterAndroid}}, ErrBadBegin},
		{"begin android bad slot", NewFreshRecord(), Step{Event: EventBegin, Begin: &BeginArgs{TargetSlot: "_z", COWPath: "/cow", Map: testMap(2), Counter: CounterAndroid}}, ErrBadBegin},
		{"begin control char slot", NewFreshRecord(), Step{Event: EventBegin, Begin: &BeginArgs{TargetSlot: "a\n", COWPath: "/cow", Map: testMap(2), Counter: CounterNative}}, ErrBadBegin},
		{"begin control char path", NewFreshRecord(), Step{Event: EventBegin, Begin: &BeginArgs{COWPath: "/co\x00w", Map: testMap(2), Counter: CounterNative}}, ErrBadBegin},
		{"begin tries 8", NewFreshRecord(), Step{Event: EventBegin, Begin: &BeginArgs{COWPath: "/cow", Map: testMap(2), Counter: CounterNative, Tries: 8}}, ErrBadBegin},
		{"args on commit", active, Step{Event: EventCommit, Begin: testBegin(CounterNative, "")}, ErrBadBegin},
	}
	for _, c := range cases {
		_, err := Apply(c.r, c.s)
		var te *TransitionError
		if !errors.Is(err, c.want) || !errors.As(err, &te) || te.Event != c.s.Event {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestCounters(t *testing.T) {
	r := armedRecord(t, CounterNative, "") // 3 tries
	for i := 0; i < 3; i++ {
		r = mustApply(t, r, Step{Event: EventBootAttempt})
	}
	if r.TriesLeft != 0 || r.Attempts != 3 {
		t.Fatalf("after 3 attempts: %+v", r)
	}
	if _, err := Apply(r, Step{Event: EventBootAttempt}); !errors.Is(err, ErrTriesExhausted) {
		t.Fatalf("4th attempt: %v", err)
	}
	// Success on the last try leaves tries >= 1 (as MarkBootSuccessful).
	c := mustApply(t, r, Step{Event: EventCommit})
	if c.TriesLeft < 1 || c.State != StateCommitted || c.Reason != ReasonCommit {
		t.Fatalf("commit: %+v", c)
	}
	// Android counter: only the hard cap stops boot-attempt.
	a := armedRecord(t, CounterAndroid, "_b")
	for i := 0; i < MaxBootAttempts; i++ {
		a = mustApply(t, a, Step{Event: EventBootAttempt})
	}
	if _, err := Apply(a, Step{Event: EventBootAttempt}); !errors.Is(err, ErrAttemptCap) {
		t.Fatalf("past cap: %v", err)
	}
	// Merge attempts are capped too.
	m := mustApply(t, activeRecord(t, CounterAndroid, "_b"), Step{Event: EventRollback, Reason: ReasonAbort})
	for i := 0; i < MaxMergeAttempts; i++ {
		m = mustApply(t, m, Step{Event: EventMergeAttempt})
	}
	if _, err := Apply(m, Step{Event: EventMergeAttempt}); !errors.Is(err, ErrMergeCap) {
		t.Fatalf("past merge cap: %v", err)
	}
	// Counters do not move outside their states.
	f := mustApply(t, m, Step{Event: EventMergeDone})
	if f.Attempts != 0 || f.MergeTries != 0 || f.State != StateFresh || f.COWPath == "" {
		t.Fatalf("merge-done: %+v", f)
	}
}

func TestMergeDoneKeepsLeftoverCleanupDoesNot(t *testing.T) {
	r := activeRecord(t, CounterNative, "_b")
	m := mustApply(t, mustApply(t, r, Step{Event: EventRollback, Reason: ReasonAbort}), Step{Event: EventMergeDone})
	if m.COWPath != r.COWPath || len(m.Map.Segments) != 0 || m.Reason != ReasonMerged {
		t.Fatalf("merge-done: %+v", m)
	}
	c := mustApply(t, mustApply(t, r, Step{Event: EventCommit}), Step{Event: EventCleanupDone})
	if c.COWPath != "" || c.Reason != ReasonCleaned {
		t.Fatalf("cleanup-done: %+v", c)
	}
	m2 := mustApply(t, m, Step{Event: EventCleanupDone})
	if m2.COWPath != "" || m2.Reason != ReasonMerged || m2.State != StateFresh {
		t.Fatalf("cleanup-done from fresh: %+v", m2)
	}
	// A new checkpoint can begin from either.
	mustApply(t, m, Step{Event: EventBegin, Begin: testBegin(CounterNative, "")})
	mustApply(t, c, Step{Event: EventBegin, Begin: testBegin(CounterNative, "")})
}

func TestPrepare(t *testing.T) {
	p := mustApply(t, NewFreshRecord(), Step{Event: EventPrepare, Path: "/data/.cpinit/cow"})
	if p.State != StateFresh || p.COWPath != "/data/.cpinit/cow" {
		t.Fatalf("%+v", p)
	}
	// Idempotent, and a leftover under another name blocks it.
	mustApply(t, p, Step{Event: EventPrepare, Path: "/data/.cpinit/cow"})
	if _, err := Apply(p, Step{Event: EventPrepare, Path: "/data/other"}); !errors.Is(err, ErrBadBegin) {
		t.Fatalf("other path: %v", err)
	}
	if _, err := Apply(p, Step{Event: EventBegin, Begin: &BeginArgs{COWPath: "/data/other", Map: testMap(2), Counter: CounterNative}}); !errors.Is(err, ErrBadBegin) {
		t.Fatalf("begin with other leftover: %v", err)
	}
	if _, err := Apply(NewFreshRecord(), Step{Event: EventPrepare, Path: "rel"}); !errors.Is(err, ErrBadBegin) {
		t.Fatalf("relative: %v", err)
	}
	// Decide removes a prepared-but-never-begun file on the next boot.
	a := Decide(DecideInput{Record: &p})
	if a.Kind != MountPlain || a.RemoveLeftover != p.COWPath {
		t.Fatalf("%+v", a)
	}
	b := mustApply(t, p, Step{Event: EventBegin, Begin: testBegin(CounterNative, "")})
	if b.State != StateCheckpointing {
		t.Fatalf("%+v", b)
	}
}

// After cleanup, status must still be able to say that the checkpoint was
// lost to an overflow or given up by an operator: the rollback a user may
// expect never happened.
func TestCleanupKeepsLostCheckpointReason(t *testing.T) {
	active := activeRecord(t, CounterAndroid, "_b")
	for _, c := range []struct {
		rec  Record
		want Reason
	}{
		{mustApply(t, active, Step{Event: EventOverflow}), ReasonOverflow},
		{RecoveryKeepCurrent("/.cpinit/cow"), ReasonOperator},
		{mustApply(t, active, Step{Event: EventCommit}), ReasonCleaned},
	} {
		got := mustApply(t, c.rec, Step{Event: EventCleanupDone})
		if got.State != StateFresh || got.Reason != c.want {
			t.Errorf("cleanup-done from %v/%v: %v/%v, want fresh/%v", c.rec.State, c.rec.Reason, got.State, got.Reason, c.want)
		}
	}
}
