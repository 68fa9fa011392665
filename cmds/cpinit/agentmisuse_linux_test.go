package main

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// TestAgentMisuse: what an update agent (or its integration script) can
// get wrong, on real loop devices with misc: each gets a clear message and
// loses nothing (record, misc, userdata as they were).
func TestAgentMisuse(t *testing.T) {
	type state struct {
		r    bootstate.Record
		misc []byte
		tree []string
	}
	snap := func(s *hostSystem) state { return state{s.record(), readFile(t, s.misc), s.tree()} }
	same := func(t *testing.T, s *hostSystem, before state) {
		t.Helper()
		after := snap(s)
		if !reflect.DeepEqual(after.r, before.r) {
			t.Errorf("record changed:\nbefore %+v\nafter  %+v", before.r, after.r)
		}
		if !bytes.Equal(after.misc, before.misc) {
			t.Error("misc changed")
		}
		if !reflect.DeepEqual(after.tree, before.tree) {
			t.Errorf("userdata changed: %v -> %v", before.tree, after.tree)
		}
	}
	runCmd := func(s *hostSystem, slot, cmd string, extra ...string) (string, error) {
		var out bytes.Buffer
		err := runCLI(s.args(cmd, slot, true, extra...), &out)
		return out.String(), err
	}
	for _, c := range []struct {
		name     string
		setup    func(s *hostSystem)
		slot     string
		cmd      []string
		wantExit int
		want     []string
	}{
		{"begin twice", func(s *hostSystem) {
			if err := s.begin(true); err != nil {
				t.Fatal(err)
			}
		}, "_a", []string{"begin", "--size", "16M", "--reserve", "1M"}, exitError,
			[]string{"refusing to begin", "a checkpoint already exists", "armed for slot _b", "cpinit rollback"}},
		{"begin during the trial", func(s *hostSystem) { s.trial(true) }, "_b", []string{"begin", "--size", "16M", "--reserve", "1M"}, exitError,
			[]string{"refusing to begin", "the trial of slot _b is running", "fallback", "commit or roll it back first"}},
		{"commit without begin", func(*hostSystem) {}, "_a", []string{"commit"}, exitOK,
			[]string{"nothing to commit: no checkpoint"}},
		{"rollback without begin", func(*hostSystem) {}, "_a", []string{"rollback"}, exitError,
			[]string{"refusing to roll back", "no checkpoint"}},
		{"rollback after a commit", func(s *hostSystem) {
			s.trial(true)
			s.apply(bootstate.Step{Event: bootstate.EventCommit}, bootstate.Step{Event: bootstate.EventCleanupDone})
		}, "_b", []string{"rollback"}, exitError,
			[]string{"refusing to roll back", "the update was committed", "nothing older is kept"}},
		{"rollback after a rollback", func(s *hostSystem) {
			s.trial(true)
			s.apply(bootstate.Step{Event: bootstate.EventRollback, Reason: bootstate.ReasonAbort})
		}, "_b", []string{"rollback"}, exitOK,
			[]string{"rollback already pending"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newHostSystem(t, true)
			c.setup(s)
			before := snap(s)
			out, err := runCmd(s, c.slot, c.cmd[0], c.cmd[1:]...)
			msg := out
			if err != nil {
				msg += err.Error()
			}
			if exitStatus(err) != c.wantExit {
				t.Fatalf("cpinit %v: exit %d (%v), want %d", c.cmd, exitStatus(err), err, c.wantExit)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			same(t, s, before)
		})
	}
}
