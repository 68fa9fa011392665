package main

import (
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
