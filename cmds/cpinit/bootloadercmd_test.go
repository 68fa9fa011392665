package main

import (
	"errors"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

func TestParseBootloaderArgs(t *testing.T) {
	for _, c := range []struct {
		args  []string
		want  blRequest
		usage bool
	}{
		{[]string{"get-primary"}, blRequest{verb: "get-primary"}, false},
		{[]string{"get-current"}, blRequest{verb: "get-current"}, false},
		{[]string{"set-primary", "B"}, blRequest{verb: "set-primary", slot: "B"}, false},
		{[]string{"get-state", "A"}, blRequest{verb: "get-state", slot: "A"}, false},
		{[]string{"set-state", "A", "good"}, blRequest{verb: "set-state", slot: "A", state: "good"}, false},
		{[]string{"set-state", "A", "bad"}, blRequest{verb: "set-state", slot: "A", state: "bad"}, false},
		{nil, blRequest{}, true},
		{[]string{"frob"}, blRequest{}, true},
		{[]string{"get-primary", "A"}, blRequest{}, true},
		{[]string{"set-primary"}, blRequest{}, true},
		{[]string{"set-primary", ""}, blRequest{}, true},
		{[]string{"set-state", "A"}, blRequest{}, true},
		{[]string{"set-state", "A", "maybe"}, blRequest{}, true},
		{[]string{"set-state", "A", "good", "now"}, blRequest{}, true},
	} {
		got, err := parseBootloaderArgs(c.args)
		if c.usage {
			if exitStatus(err) != exitUsage {
				t.Errorf("%q: %v (exit %d), want a usage error", c.args, err, exitStatus(err))
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: %+v, %v; want %+v", c.args, got, err, c.want)
		}
	}
}

// TestDecideBootloaderOp is the table of docs/rauc.md: every set request
// in every checkpoint state, from the old slot a or the update's slot b.
func TestDecideBootloaderOp(t *testing.T) {
	fresh := bootstate.NewFreshRecord()
	armed := bootstate.Record{State: bootstate.StateCheckpointing, TargetSlot: "_b"}
	trial := bootstate.Record{State: bootstate.StateCheckpointing, TargetSlot: "_b", Active: true}
	pending := bootstate.Record{State: bootstate.StateRollbackPending, TargetSlot: "_b", Reason: bootstate.ReasonAbort}
	const refused = blOp(-1)
	for _, c := range []struct {
		name   string
		r      bootstate.Record
		booted string
		req    blRequest
		want   blOp
	}{
		// RAUC's install on the old slot: target bad, write, target primary.
		{"install: mark target bad", fresh, "a", blRequest{"set-state", "b", "bad"}, opSetUnbootable},
		{"install: activate target", fresh, "a", blRequest{"set-primary", "b", ""}, opBegin},
		{"install again: target bad", armed, "a", blRequest{"set-state", "b", "bad"}, opSetUnbootable},
		{"install again: target primary", armed, "a", blRequest{"set-primary", "b", ""}, opSetActive},
		{"mark-good of the old slot, armed", armed, "a", blRequest{"set-state", "a", "good"}, opMarkGood},
		{"mark-bad of the old slot, armed", armed, "a", blRequest{"set-state", "a", "bad"}, refused},
		{"mark-good of the target, armed", armed, "a", blRequest{"set-state", "b", "good"}, refused},
		{"mark-active booted, armed: cancel", armed, "a", blRequest{"set-primary", "a", ""}, opRollback},
		// The trial on b.
		{"trial: mark-good", trial, "b", blRequest{"set-state", "b", "good"}, opCommit},
		{"trial: mark-bad", trial, "b", blRequest{"set-state", "b", "bad"}, opRollback},
		{"trial: mark-active other", trial, "b", blRequest{"set-primary", "a", ""}, opRollback},
		{"trial: mark-active booted", trial, "b", blRequest{"set-primary", "b", ""}, opSetActive},
		{"trial: mark-bad other", trial, "b", blRequest{"set-state", "a", "bad"}, refused},
		{"trial: mark-good other", trial, "b", blRequest{"set-state", "a", "good"}, opMarkGood},
		{"trial: commit from the old slot", trial, "a", blRequest{"set-state", "b", "good"}, refused},
		// A rollback pending.
		{"pending: target primary", pending, "b", blRequest{"set-primary", "b", ""}, refused},
		{"pending: old slot primary", pending, "b", blRequest{"set-primary", "a", ""}, opNothing},
		{"pending: target good", pending, "b", blRequest{"set-state", "b", "good"}, refused},
		{"pending: target bad", pending, "b", blRequest{"set-state", "b", "bad"}, opNothing},
		{"pending: old slot bad", pending, "b", blRequest{"set-state", "a", "bad"}, refused},
		// No update: the bootloader as it is.
		{"fresh: mark-good booted", fresh, "a", blRequest{"set-state", "a", "good"}, opMarkGood},
		{"fresh: mark-active booted", fresh, "a", blRequest{"set-primary", "a", ""}, opKeepCurrent},
		{"fresh: mark-bad booted", fresh, "a", blRequest{"set-state", "a", "bad"}, opSetUnbootable},
	} {
		t.Run(c.name, func(t *testing.T) {
			op, msg, err := decideBootloaderOp(c.req, c.req.slot, &c.r, c.booted)
			if c.want == refused {
				if err == nil || exitStatus(err) != exitError {
					t.Fatalf("%v (%s), want refused with exit 1", op, msg)
				}
				return
			}
			if err != nil || op != c.want {
				t.Fatalf("%v, %v; want %v", op, err, c.want)
			}
			if op == opNothing && msg == "" {
				t.Fatal("nothing to do without saying why")
			}
		})
	}
}

func TestResolveBootSlot(t *testing.T) {
	env, err := bootstate.NewUBootEnv("BOOT_ORDER", "B A", "BOOT_A_LEFT", "3", "BOOT_B_LEFT", "0")
	if err != nil {
		t.Fatal(err)
	}
	st, err := bootstate.NewUBootState(env, bootstate.UBootSchemeConfig{Scheme: bootstate.UBootSchemeRAUC})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"A": "a", "B": "b", "a": "a", "_b": "b"} {
		si, err := resolveBootSlot(st, name)
		if err != nil || si.Name != want || bootName(si) != map[string]string{"a": "A", "b": "B"}[want] {
			t.Errorf("%s: %+v, %v", name, si, err)
		}
	}
	if _, err := resolveBootSlot(st, "C"); !errors.Is(err, bootstate.ErrUnknownSlot) {
		t.Errorf("C: %v", err)
	}
}
