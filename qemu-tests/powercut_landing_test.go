package qemutests

import (
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// The power-cut suite names where each cut of a rollback boot landed from
// the record and the console. With the offline restore (the default) the
// record stays at merge-attempt until merge-done, so only the console tells
// a cut inside the restore from one before it: the 2026-12-06 soak counted
// all 30 of its restore-phase cuts as "merge not started", because the
// classifier looked for the kernel merge's "cpinit: merge:" lines only.
func TestPowerCutLandingRollback(t *testing.T) {
	pending := bootstate.Record{State: bootstate.StateRollbackPending, MergeTries: 1}
	tried := bootstate.Record{State: bootstate.StateRollbackPending, MergeTries: 2}
	const (
		restoreStart = "cpinit: restore: 24.1 MiB left of 24.1 MiB (0.0%), 0.0 MiB/s, time left unknown, 3ms elapsed\n"
		restoreDone  = "cpinit: restore: 0.0 MiB left of 24.1 MiB (100.0%), 110.2 MiB/s, 0s left, 219ms elapsed\n"
		mergeStart   = "cpinit: merge: 24.1 MiB left of 24.1 MiB (0.0%), 0.0 MiB/s, time left unknown, 3ms elapsed\n"
		mergeDone    = "cpinit: merge: 0.0 MiB left of 24.1 MiB (100.0%), 9.5 MiB/s, 0s left, 2.5s elapsed\n"
	)
	for _, c := range []struct {
		out, want string
	}{
		{"cpinit: verifying the COW\n", "merge-attempt persisted, merge/restore not started"},
		{restoreStart, "restore running, copies not yet flushed"},
		{restoreStart + restoreDone, "restore flushed, merge-done not persisted"},
		{mergeStart, "merge running"},
		{mergeStart + mergeDone, "merge complete, merge-done not persisted"},
	} {
		if got := (&pcDevice{}).landing(phMerge, pending, tried, bootResult{out: c.out, cut: true}); got != c.want {
			t.Errorf("console %q: landed %q, want %q", c.out, got, c.want)
		}
	}
}
