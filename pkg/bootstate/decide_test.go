package bootstate

import (
	"errors"
	"strings"
	"testing"
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
		{"io error", DecideInput{RecordErr: errors.New("EIO")}, StopForRecovery, "", "", 0, "EIO"},
		{"nil record", DecideInput{}, StopForRecovery, "", "", 0, ""},
		{"fresh", DecideInput{Record: ptr(NewFreshRecord())}, MountPlain, "", "", 0, "no checkpoint"},
		{"fresh leftover", DecideInput{Record: &leftover}, MountPlain, "", "", 0, "leftover"},
		{"committed", DecideInput{Record: ptr(mustApply(t, active, Step{Event: EventCommit}))}, FinishCommitCleanup, "", "cleanup-done", ReasonCommit, ""},
		{"overflow", DecideInput{Record: &overflow}, FinishCommitCleanup, "", "cleanup-done", ReasonOverflow, "WARNING"},
		{"armed first boot", DecideInput{Record: &armed, BootedSlot: "_b"}, CreateSnapshot, "boot-attempt", "activate", 0, ""},
		{"armed booted old slot", DecideInput{Record: &armed, BootedSlot: "_a"}, FinishCommitCleanup, "cancel", "cleanup-done", ReasonSlotFallback, "abandoned"},
		{"active trial", DecideInput{Record: &active, BootedSlot: "b"}, ReattachSnapshot, "boot-attempt", "", 0, ""},
		{"active fallback", DecideInput{Record: &active, BootedSlot: "_a"}, VerifyExtents, "rollback(slot-fallback)", "", ReasonSlotFallback, ""},
		{"active abort", DecideInput{Record: &active, BootedSlot: "_b", Params: Params{Abort: true}}, VerifyExtents, "rollback(abort)", "", ReasonAbort, ""},
		{"native exhausted", DecideInput{Record: &nativeDone}, VerifyExtents, "rollback(tries-exhausted)", "", ReasonTriesExhausted, ""},
		{"attempt cap", DecideInput{Record: &capped, BootedSlot: "_b"}, VerifyExtents, "rollback(attempt-cap)", "", ReasonAttemptCap, ""},
		{"slot unknown", DecideInput{Record: &active}, StopForRecovery, "", "", 0, "unknown"},
		{"slot from misc", DecideInput{Record: &active, BootControl: bcA}, VerifyExtents, "rollback(slot-fallback)", "", ReasonSlotFallback, ""},
		{"cmdline beats misc", DecideInput{Record: &active, BootedSlot: "_b", BootControl: bcA}, ReattachSnapshot, "boot-attempt", "", 0, ""},
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
