package bootstate

import (
	"errors"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func stepOf(s *Step) string {
	if s == nil {
		return ""
	}
	return s.String()
}

func TestDecide(t *testing.T) {
	armed := armedRecord(t, CounterAndroid, "_b")
	active := activeRecord(t, CounterAndroid, "_b")
	nativeDone := activeRecord(t, CounterNative, "")
	nativeDone.TriesLeft = 0
	capped := active
	capped.Attempts = MaxBootAttempts
	pending := mustApply(t, active, Step{Event: EventRollback, Reason: ReasonSlotFallback})
	mergeCapped := pending
	mergeCapped.MergeTries = MaxMergeAttempts
	overflow := mustApply(t, active, Step{Event: EventOverflow})
	leftover := mustApply(t, pending, Step{Event: EventMergeDone})
	fp := active.Fingerprint
	wrongFP := fp
	wrongFP[0] ^= 1
	bcA, _ := NewBootControl(2, 0)
	dev := DeviceID{active.Map.DevMajor, active.Map.DevMinor, active.Map.DevSectors}
	otherDev := DeviceID{8, 0, active.Map.DevSectors}

	cases := []struct {
		name         string
		in           DecideInput
		kind         ActionKind
		before, afte string
		reason       Reason
		msg          string
	}{
		{"blank store", DecideInput{RecordErr: &StoreError{Err: ErrNoRecord}}, MountPlain, "", "", 0, "blank"},
		{"corrupt store", DecideInput{RecordErr: &StoreError{Err: ErrStoreCorrupt}}, StopForRecovery, "", "", 0, "unreadable"},
		{"foreign store", DecideInput{RecordErr: &StoreError{Name: "/dev/vdb", Err: &ForeignDataError{Offset: 1080, Data: []byte{0x53, 0xef}}}}, StopForRecovery, "", "", 0, "offset 1080: 53 ef"},
		{"io error", DecideInput{RecordErr: errors.New("EIO")}, StopForRecovery, "", "", 0, "EIO"},
		{"nil record", DecideInput{}, StopForRecovery, "", "", 0, ""},
		{"fresh", DecideInput{Record: ptr(NewFreshRecord())}, MountPlain, "", "", 0, "no checkpoint"},
		{"fresh leftover", DecideInput{Record: &leftover, BootedSlot: "_a"}, MountPlain, "", "cleanup-done", 0, "leftover"},
		{"fresh leftover, rolled-back slot boots", DecideInput{Record: &leftover, BootedSlot: "_b"}, RebootOtherSlot, "", "", ReasonMerged, "not starting it"},
		{"fresh leftover, slot unknown", DecideInput{Record: &leftover}, StopForRecovery, "", "", 0, "booted slot is unknown"},
		{"committed", DecideInput{Record: ptr(mustApply(t, active, Step{Event: EventCommit}))}, FinishCommitCleanup, "", "cleanup-done", ReasonCommit, ""},
		{"overflow", DecideInput{Record: &overflow}, FinishCommitCleanup, "", "cleanup-done", ReasonOverflow, "WARNING"},
		{"armed first boot", DecideInput{Record: &armed, BootedSlot: "_b"}, CreateSnapshot, "boot-attempt", "activate", 0, ""},
		{"armed booted old slot", DecideInput{Record: &armed, BootedSlot: "_a"}, FinishCommitCleanup, "cancel", "cleanup-done", ReasonSlotFallback, "abandoned"},
		{"active trial", DecideInput{Record: &active, BootedSlot: "b"}, ReattachSnapshot, "boot-attempt", "", 0, ""},
		{"active fallback", DecideInput{Record: &active, BootedSlot: "_a"}, VerifyExtents, "", "", ReasonSlotFallback, ""},
		{"active fallback verified", DecideInput{Record: &active, BootedSlot: "_a", Verified: &fp}, RecordRollback, "rollback(slot-fallback)", "", ReasonSlotFallback, "recording the rollback"},
		{"active fallback map moved", DecideInput{Record: &active, BootedSlot: "_a", Verified: &wrongFP}, StopForRecovery, "", "", 0, "no longer match"},
		{"active abort", DecideInput{Record: &active, BootedSlot: "_b", Params: Params{Abort: true}}, VerifyExtents, "", "", ReasonAbort, ""},
		{"native exhausted", DecideInput{Record: &nativeDone}, VerifyExtents, "", "", ReasonTriesExhausted, ""},
		{"attempt cap", DecideInput{Record: &capped, BootedSlot: "_b"}, VerifyExtents, "", "", ReasonAttemptCap, ""},
		{"slot unknown", DecideInput{Record: &active}, StopForRecovery, "", "", 0, "unknown"},
		// Issue 14, finding 7: misc's slot_suffix is not the booted slot
		// (a bootloader may fall back without rewriting it); before the
		// fix this rolled back on the strength of misc alone.
		{"slot not from misc", DecideInput{Record: &active, Boot: &AndroidState{BC: bcA, Current: -1}}, StopForRecovery, "", "", 0, "booted slot is unknown"},
		{"cmdline beats misc", DecideInput{Record: &active, BootedSlot: "_b", Boot: &AndroidState{BC: bcA, Current: -1}}, ReattachSnapshot, "boot-attempt", "", 0, ""},
		{"device matches", DecideInput{Record: &active, BootedSlot: "_b", Params: Params{Userdata: dev}}, ReattachSnapshot, "boot-attempt", "", 0, ""},
		{"device differs", DecideInput{Record: &active, BootedSlot: "_b", Params: Params{Userdata: otherDev}}, StopForRecovery, "", "", 0, "8:0"},
		{"pending unverified", DecideInput{Record: &pending}, VerifyExtents, "", "", ReasonSlotFallback, ""},
		{"pending verified", DecideInput{Record: &pending, Verified: &fp}, StartOrResumeMerge, "merge-attempt", "merge-done", ReasonSlotFallback, ""},
		{"pending map moved", DecideInput{Record: &pending, Verified: &wrongFP}, StopForRecovery, "", "", 0, "no longer match"},
		{"pending other device", DecideInput{Record: &pending, Verified: &fp, Params: Params{Userdata: otherDev}}, StopForRecovery, "", "", 0, ""},
		{"merge cap", DecideInput{Record: &mergeCapped, Verified: &fp}, StopForRecovery, "", "", 0, "merge attempted"},
	}
	for _, c := range cases {
		a := Decide(c.in)
		if a.Kind != c.kind || stepOf(a.Before) != c.before || stepOf(a.After) != c.afte || a.Reason != c.reason {
			t.Errorf("%s: got %v before=%q after=%q reason=%v; want %v %q %q %v (%s)",
				c.name, a.Kind, stepOf(a.Before), stepOf(a.After), a.Reason, c.kind, c.before, c.afte, c.reason, a.Message)
		}
		if !strings.Contains(a.Message, c.msg) || a.Message == "" {
			t.Errorf("%s: message %q does not mention %q", c.name, a.Message, c.msg)
		}
		if a.Kind == StopForRecovery && !strings.Contains(a.Command, CmdKeepCurrent) {
			t.Errorf("%s: stop without a recovery command", c.name)
		}
		if (a.Kind == ReattachSnapshot || a.Kind == CreateSnapshot || a.Kind == VerifyExtents || a.Kind == StartOrResumeMerge) && a.Map == nil {
			t.Errorf("%s: %v without a map", c.name, a.Kind)
		}
		if c.in.Record != nil && a.Before != nil {
			if _, err := Apply(*c.in.Record, *a.Before); err != nil {
				t.Errorf("%s: Before step refused: %v", c.name, err)
			}
		}
	}
}

func TestDecideLeftoverFormat(t *testing.T) {
	a := Decide(DecideInput{RecordErr: &StoreError{Err: ErrNoRecord}})
	if !a.FormatStore || a.RemoveLeftover != "" {
		t.Fatalf("%+v", a)
	}
}

func TestSlotFromCmdline(t *testing.T) {
	cases := map[string]string{
		"":                                 "",
		"console=ttyS0 androidboot.slot=b": "b",
		"androidboot.slot_suffix=_a quiet": "_a",
		"androidboot.slot_suffix=_a cpinit.slot=_b": "_b",
		"cpinit.slot=_a cpinit.slot=_b":             "_b",
		"cpinit.slot= androidboot.slot=a":           "a",
		// Split as the kernel splits: quotes dropped, words after
		// "--" are init's.
		`cpinit.slot="_b"`:                     "_b",
		"androidboot.slot=a\tcpinit.slot=b\n":  "b",
		"androidboot.slot=a -- cpinit.slot=_b": "a",
		"cpinit.slot=_b cpinit.slot":           "",
	}
	for in, want := range cases {
		if got := SlotFromCmdline(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
	if !SameSlot("_a", "a") || SameSlot("_a", "_b") {
		t.Fatal("SameSlot")
	}
}

func ptr[T any](v T) *T { return &v }

// Decide's contract on random reachable records and random inputs: total,
// every Before step is accepted by Apply, merges only with a matching
// verified fingerprint, deletions only when the resulting state is
// committed or fresh, and every stop carries a recovery command.
func TestPropertyDecideContract(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		r := NewFreshRecord()
		events := Events()
		for range rapid.IntRange(0, 30).Draw(t, "steps") {
			s := Step{Event: rapid.SampledFrom(events).Draw(t, "event")}
			switch s.Event {
			case EventBegin:
				mode := rapid.SampledFrom([]CounterMode{CounterNative, CounterAndroid}).Draw(t, "mode")
				s.Begin = testBegin(mode, rapid.SampledFrom([]string{"_a", "_b"}).Draw(t, "target"))
			case EventPrepare:
				s.Path = "/data/.cpinit/cow"
			case EventRollback:
				s.Reason = rapid.SampledFrom([]Reason{ReasonAbort, ReasonSlotFallback, ReasonTriesExhausted, ReasonAttemptCap}).Draw(t, "reason")
			}
			if n, err := Apply(r, s); err == nil {
				r = n
			} else {
				var te *TransitionError
				if !errors.As(err, &te) {
					t.Fatalf("untyped Apply error: %v", err)
				}
			}
		}
		in := DecideInput{
			Record:     &r,
			BootedSlot: rapid.SampledFrom([]string{"", "_a", "_b", "a", "b", "_c"}).Draw(t, "booted"),
			Params:     Params{Abort: rapid.Bool().Draw(t, "abort")},
		}
		if rapid.Bool().Draw(t, "misc") {
			bc, _ := NewBootControl(2, rapid.IntRange(0, 1).Draw(t, "misc slot"))
			in.Boot = &AndroidState{BC: bc, Current: -1}
		}
		if rapid.Bool().Draw(t, "verified") {
			fp := r.Fingerprint
			if rapid.Bool().Draw(t, "verified wrong") {
				fp[5] ^= 1
			}
			in.Verified = &fp
		}
		a := Decide(in)
		after := r
		if a.Before != nil {
			n, err := Apply(r, *a.Before)
			if err != nil {
				t.Fatalf("Decide's Before %v refused in %v: %v", a.Before, r.State, err)
			}
			after = n
		}
		if a.After != nil {
			if _, err := Apply(after, *a.After); err != nil && a.Kind != StartOrResumeMerge {
				t.Fatalf("Decide's After %v refused: %v", a.After, err)
			}
		}
		switch a.Kind {
		case StartOrResumeMerge:
			if in.Verified == nil || *in.Verified != r.Fingerprint || r.State != StateRollbackPending {
				t.Fatalf("merge without a verified map")
			}
		case FinishCommitCleanup:
			if after.State != StateCommitted {
				t.Fatalf("cleanup with state %v after Before", after.State)
			}
		case MountPlain:
			if r.State != StateFresh {
				t.Fatalf("plain mount in %v", r.State)
			}
		case StopForRecovery:
			if a.Command == "" || a.Message == "" {
				t.Fatalf("stop without message or command")
			}
		}
		if a.Message == "" {
			t.Fatalf("%v without a message", a.Kind)
		}
	})
}

// A commit cut after it marked the slot successful in misc but before it
// recorded the commit: the next boot of that slot finishes the commit instead
// of continuing (and eventually capping) the trial.
func TestDecideFinishesCommitMarkedInMisc(t *testing.T) {
	active := activeRecord(t, CounterAndroid, "_b")
	bc, err := NewBootControl(2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := bc.SetUnbootable(1); err != nil {
		t.Fatal(err)
	}
	if err := bc.SetActive(1, 0); err != nil {
		t.Fatal(err)
	}
	in := DecideInput{Record: &active, BootedSlot: "_b", Boot: &AndroidState{BC: bc, Current: -1}}
	if a := Decide(in); a.Kind != ReattachSnapshot {
		t.Fatalf("trial slot not yet successful: %v, want reattach", a.Kind)
	}
	if err := bc.MarkSuccessful(1); err != nil {
		t.Fatal(err)
	}
	a := Decide(in)
	if a.Kind != FinishCommitCleanup || a.Before == nil || a.Before.Event != EventCommit {
		t.Fatalf("successful trial slot: %v %+v, want finish-commit-cleanup with a commit first", a.Kind, a.Before)
	}
	// Not when the old slot boots (its successful bit is old news), nor on
	// an abort.
	if a := Decide(DecideInput{Record: &active, BootedSlot: "_a", Boot: &AndroidState{BC: bc, Current: -1}}); a.Kind != VerifyExtents {
		t.Fatalf("old slot booted: %v, want the rollback's verify", a.Kind)
	}
	in.Params.Abort = true
	if a := Decide(in); a.Kind != VerifyExtents {
		t.Fatalf("abort on a successful slot: %v, want the rollback's verify", a.Kind)
	}
}

// Issue 14, finding 1: abandoning an update on a boot of its own slot asks
// for the bootloader switch (Action.FallBack) ahead of the record; on a boot
// of the old slot the bootloader already moved, so nothing is asked.
func TestDecideFallBack(t *testing.T) {
	armed := armedRecord(t, CounterAndroid, "_b")
	active := activeRecord(t, CounterAndroid, "_b")
	capped := active
	capped.Attempts = MaxBootAttempts
	pending := mustApply(t, active, Step{Event: EventRollback, Reason: ReasonAbort})
	fp := active.Fingerprint
	merged := mustApply(t, pending, Step{Event: EventMergeDone})
	for _, c := range []struct {
		name string
		in   DecideInput
		kind ActionKind
		want string
	}{
		{"abort on the update's slot", DecideInput{Record: &active, BootedSlot: "b", Params: Params{Abort: true}}, VerifyExtents, ""},
		{"abort on the update's slot, verified", DecideInput{Record: &active, BootedSlot: "b", Params: Params{Abort: true}, Verified: &fp}, RecordRollback, "_b"},
		{"abort armed on the update's slot", DecideInput{Record: &armed, BootedSlot: "_b", Params: Params{Abort: true}}, FinishCommitCleanup, "_b"},
		{"attempt cap, verified", DecideInput{Record: &capped, BootedSlot: "_b", Verified: &fp}, RecordRollback, "_b"},
		{"abort on the old slot, verified", DecideInput{Record: &active, BootedSlot: "_a", Params: Params{Abort: true}, Verified: &fp}, RecordRollback, ""},
		{"slot fallback, verified", DecideInput{Record: &active, BootedSlot: "_a", Verified: &fp}, RecordRollback, ""},
		{"pending on the update's slot", DecideInput{Record: &pending, BootedSlot: "_b"}, VerifyExtents, "_b"},
		{"pending verified on the update's slot", DecideInput{Record: &pending, BootedSlot: "_b", Verified: &fp}, StartOrResumeMerge, ""},
		{"pending on the old slot", DecideInput{Record: &pending, BootedSlot: "_a"}, VerifyExtents, ""},
		{"pending, slot unknown", DecideInput{Record: &pending}, VerifyExtents, ""},
		{"merged, the update's slot boots", DecideInput{Record: &merged, BootedSlot: "_b"}, RebootOtherSlot, "_b"},
		{"merged, the old slot boots", DecideInput{Record: &merged, BootedSlot: "_a"}, MountPlain, ""},
		{"trial", DecideInput{Record: &active, BootedSlot: "_b"}, ReattachSnapshot, ""},
	} {
		a := Decide(c.in)
		if a.Kind != c.kind || a.FallBack != c.want {
			t.Errorf("%s: got %v fallback %q, want %v %q (%s)", c.name, a.Kind, a.FallBack, c.kind, c.want, a.Message)
		}
	}
}

func TestCheckBootedSlot(t *testing.T) {
	bc, _ := NewBootControl(2, 0) // slot_suffix "_a"
	if w := CheckBootedSlot("_b", &AndroidState{BC: bc, Current: -1}); !strings.Contains(w, "says slot _b booted, misc's slot_suffix says _a") {
		t.Errorf("disagreement: %q", w)
	}
	android := &AndroidState{BC: bc, Current: -1}
	for _, c := range []struct {
		slot string
		s    ABState
	}{{"_a", android}, {"a", android}, {"", android}, {"_b", nil}} {
		if w := CheckBootedSlot(c.slot, c.s); w != "" {
			t.Errorf("CheckBootedSlot(%q): %q, want none", c.slot, w)
		}
	}
}

// stateView is an ABState that only shows fixed slots: Decide reads the
// bootloader's state and never changes it.
type stateView []SlotInfo

func (v stateView) Scheme() string                 { return "test-view" }
func (v stateView) Slots() []SlotInfo              { return v }
func (v stateView) Next() string                   { return "" }
func (v stateView) SetActive(string) error         { return errors.New("read-only view") }
func (v stateView) MarkSuccessful(string) error    { return errors.New("read-only view") }
func (v stateView) SetUnbootable(string) error     { return errors.New("read-only view") }
func (v stateView) FallBackFrom(slot string) error { return errors.New("read-only view") }

// A commit is finished from the bootloader's state only where the scheme
// records success apart from its tries: RAUC's U-Boot scheme shows a good
// slot and one on trial alike (BOOT_x_LEFT > 0), and taking that for a
// commit would keep an update's data that nobody committed.
func TestDecideSuccessOnlyWhereTracked(t *testing.T) {
	active := activeRecord(t, CounterBootloader, "_b")
	for _, c := range []struct {
		name string
		b    SlotInfo
		want ActionKind
	}{
		{"tracked, successful", SlotInfo{Name: "b", Bootable: true, Successful: true, TracksSuccess: true, Tries: -1}, FinishCommitCleanup},
		{"tracked, on trial", SlotInfo{Name: "b", Bootable: true, TracksSuccess: true, Tries: 2}, ReattachSnapshot},
		{"untracked, looks successful", SlotInfo{Name: "b", Bootable: true, Successful: true, Tries: 3}, ReattachSnapshot},
	} {
		view := stateView{{Name: "a", Bootable: true, Successful: true, TracksSuccess: c.b.TracksSuccess, Tries: -1}, c.b}
		if a := Decide(DecideInput{Record: &active, BootedSlot: "b", Boot: view}); a.Kind != c.want {
			t.Errorf("%s: %v (%s), want %v", c.name, a.Kind, a.Message, c.want)
		}
	}
	// A state without the target slot is no evidence either way.
	if a := Decide(DecideInput{Record: &active, BootedSlot: "b", Boot: stateView{{Name: "a", TracksSuccess: true, Successful: true}}}); a.Kind != ReattachSnapshot {
		t.Errorf("target slot missing from the state: %v, want reattach", a.Kind)
	}
}
