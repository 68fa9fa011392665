package main

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestEstimateFill(t *testing.T) {
	t0 := time.Unix(1000, 0)
	const total = 100 << 20
	s := func(sec float64, used uint64) usageSample {
		return usageSample{At: t0.Add(time.Duration(sec * float64(time.Second))), Used: used, Total: total}
	}
	if _, ok := estimateFill([]usageSample{s(0, 0)}); ok {
		t.Error("an estimate from one sample")
	}
	e, ok := estimateFill([]usageSample{s(0, 10<<20), s(1, 12<<20), s(4, 18<<20)})
	if !ok || e.Rate != 2<<20 || e.Window != 4*time.Second || e.SecondsToFull != 41 {
		t.Errorf("steady 2 MiB/s: %+v", e)
	}
	e, _ = estimateFill([]usageSample{s(0, 10<<20), s(5, 10<<20)})
	if e.Rate != 0 || !math.IsInf(e.SecondsToFull, 1) {
		t.Errorf("idle: %+v", e)
	}
	e, _ = estimateFill([]usageSample{s(0, 10<<20), s(1, total)})
	if e.SecondsToFull != 0 {
		t.Errorf("full: %+v", e)
	}
}

func TestJudge(t *testing.T) {
	c := watchConfig{Warn: 70, Act: 90, Interval: time.Second, Lead: 10 * time.Second, Policy: policyCommit}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	const total = 100 << 20
	for _, tc := range []struct {
		name     string
		used     uint64
		rate     float64 // MiB/s; <0: no estimate
		want     verdict
		whyParts []string
	}{
		{"idle and low", 10 << 20, 0, verdictOK, []string{"COW 10.0% used (10.0 of 100.0 MiB)"}},
		{"no rate yet", 50 << 20, -1, verdictOK, nil},
		{"warn", 75 << 20, 0.1, verdictWarn, []string{"75.0%", "warning threshold"}},
		{"act by threshold", 91 << 20, 0, verdictAct, []string{"91.0%", "action threshold"}},
		{"act by rate", 72 << 20, 5, verdictAct, []string{"filling at 5.00 MiB/s", "full in 6 s", "within the 10s lead"}},
		{"fast but far", 10 << 20, 1, verdictOK, []string{"full in 90 s"}},
		{"a burst below the warning threshold", 10 << 20, 10, verdictOK, []string{"full in 9 s"}},
	} {
		s := usageSample{Used: tc.used, Total: total, FreeBytes: 200 << 20}
		var e fillEstimate
		have := tc.rate >= 0
		if have {
			e = fillEstimate{Rate: tc.rate * (1 << 20), Window: 5 * time.Second, SecondsToFull: math.Inf(1)}
			if tc.rate > 0 {
				e.SecondsToFull = float64(total-tc.used) / e.Rate
			}
		}
		v, why := judge(c, s, e, have)
		if v != tc.want {
			t.Errorf("%s: verdict %d (%s), want %d", tc.name, v, why, tc.want)
		}
		for _, p := range tc.whyParts {
			if !strings.Contains(why, p) {
				t.Errorf("%s: %q lacks %q", tc.name, why, p)
			}
		}
		if !strings.Contains(why, "userdata 200.0 MiB free") {
			t.Errorf("%s: %q does not give the free space", tc.name, why)
		}
	}
	for _, bad := range []watchConfig{
		{Warn: 95, Act: 90, Interval: time.Second},
		{Warn: 50, Act: 100, Interval: time.Second},
		{Warn: 0, Act: 90, Interval: time.Second},
		{Warn: 50, Act: 90},
	} {
		if bad.validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	for _, s := range []string{"abort", "commit", "warn"} {
		if p, err := parseWatchPolicy(s); err != nil || p.String() != s {
			t.Errorf("policy %q: %v %v", s, p, err)
		}
	}
	if _, err := parseWatchPolicy("reboot"); err == nil {
		t.Error("policy reboot accepted")
	}
}

// TestWatcherDeterministic drives watch's step with made-up readings on a
// made-up clock (issue 15: no test may depend on host speed). The QEMU test
// TestWatchCommitsBeforeOverflow once failed on a loaded machine because the
// first reading above the warning threshold already acted by the rate (at
// 56%) and no WARNING line came before the commit it expected. Now the
// warning is always logged first, whichever trigger acts; the same readings
// give the same lines and the same decision.
func TestWatcherDeterministic(t *testing.T) {
	const mibB = 1 << 20
	cfg := watchConfig{Warn: 50, Act: 75, Interval: 250 * time.Millisecond, Lead: 5 * time.Second, Policy: policyCommit}
	t0 := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	run := func(readings []struct {
		at   time.Duration
		used uint64
	}) []string {
		w := newWatcher(cfg)
		var log []string
		for _, r := range readings {
			st := w.step(usageSample{At: t0.Add(r.at), Used: r.used, Total: 24 * mibB, FreeBytes: 100 * mibB})
			switch {
			case st.First:
				log = append(log, "watching")
			case st.Progress:
				log = append(log, "progress: "+st.Why)
			}
			if st.Warning != "" {
				log = append(log, "WARNING: "+st.Warning)
			}
			if st.Verdict == verdictAct {
				log = append(log, "act: "+st.Why)
				break
			}
		}
		return log
	}
	type reading = struct {
		at   time.Duration
		used uint64
	}
	// A machine so slow that watch's readings are 2 s apart: 8 MiB, then
	// 13.5 MiB (56%): the rate (2.75 MiB/s) fills the rest within the 5 s
	// lead, so this first reading above 50% acts at once.
	slow := []reading{{0, 8 * mibB}, {2 * time.Second, 13*mibB + mibB/2}}
	got := run(slow)
	if len(got) != 4 || !strings.HasPrefix(got[1], "progress: COW 56.2% used") || !strings.HasPrefix(got[2], "WARNING: COW 56.2% used") ||
		!strings.Contains(got[3], "full within the 5s lead") {
		t.Fatalf("slow readings: %q\nwant watching, the new tenth, a WARNING at 56.2%%, then the action by the rate", got)
	}
	if again := run(slow); strings.Join(again, "\n") != strings.Join(got, "\n") {
		t.Fatalf("the same readings gave other lines:\n%q\n%q", got, again)
	}
	// Readings every 250 ms at 2 MiB/s: the warning at 50%, then the
	// action by the rate before 75%, never without the warning first.
	var fast []reading
	for i := 0; i <= 48; i++ {
		fast = append(fast, reading{time.Duration(i) * 250 * time.Millisecond, uint64(i) * mibB / 2})
	}
	got = run(fast)
	warn, act := -1, -1
	for i, l := range got {
		if strings.HasPrefix(l, "WARNING: COW 50.0% used") {
			warn = i
		}
		if strings.HasPrefix(l, "act: ") {
			act = i
		}
	}
	if warn < 0 || act < warn || !strings.Contains(got[act], "full within the 5s lead") {
		t.Fatalf("regular readings: %q\nwant a WARNING at 50%%, then the action by the rate", got)
	}
	// The rate window is measured on the readings' clock: after a pause
	// longer than the window, the old readings drop out.
	w := newWatcher(cfg)
	w.step(usageSample{At: t0, Used: 1 * mibB, Total: 24 * mibB})
	w.step(usageSample{At: t0.Add(time.Second), Used: 2 * mibB, Total: 24 * mibB})
	st := w.step(usageSample{At: t0.Add(time.Minute), Used: 3 * mibB, Total: 24 * mibB})
	if !st.HaveRate || st.Est.Window != 59*time.Second {
		t.Fatalf("after a pause: window %v (have %v), want 59s from the newest reading before the pause", st.Est.Window, st.HaveRate)
	}
}

// TestWatchOverflowExitStatus: watch's overflow has its own exit status, 3,
// so that cpinit-watch.service restarts watch after a failure but not
// after an overflow (RestartPreventExitStatus=2 3), which no restart helps.
func TestWatchOverflowExitStatus(t *testing.T) {
	err := fmt.Errorf("cpinit watch: %w", errCOWOverflowed)
	if got := exitStatus(err); got != exitOverflow || exitOverflow != 3 {
		t.Fatalf("exit status of %q = %d, want 3 (exitOverflow = %d)", err, got, exitOverflow)
	}
	if got := exitStatus(errors.New("the metadata store is unreadable")); got != exitError {
		t.Fatalf("exit status of another failure = %d, want %d", got, exitError)
	}
}
