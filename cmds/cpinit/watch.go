package main

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// The policy of `cpinit watch`, pure so that it is tested without a
// snapshot: from samples of the COW's usage, estimate how fast it fills and
// decide when to warn and when to act.

// errCOWOverflowed: the trial's COW overflowed, the kernel invalidated the
// snapshot and the rollback is lost (the next boot keeps the data). watch
// exits 3 with it (exitOverflow), which its unit does not restart.
var errCOWOverflowed = errors.New("the checkpoint's COW overflowed: rollback is no longer possible")

// usageSample is one reading of the snapshot's dm status and of userdata.
type usageSample struct {
	At        time.Time
	Used      uint64 // COW bytes in use, metadata included
	Total     uint64 // COW capacity
	FreeBytes uint64 // userdata's free space (statfs f_bavail)
}

func (s usageSample) percent() float64 {
	if s.Total == 0 {
		return 0
	}
	return 100 * float64(s.Used) / float64(s.Total)
}

// fillEstimate is how fast the COW fills, over the samples' window.
type fillEstimate struct {
	Rate          float64       // bytes per second, ≥ 0
	SecondsToFull float64       // +Inf when not filling
	Window        time.Duration // time between the oldest and newest sample
}

// estimateFill is the average fill rate over the window (newest − oldest
// sample): usage only grows during a trial (chunks are never released), so
// the average is the honest rate, and a window of several samples smooths
// bursts like a writeback flush.
func estimateFill(samples []usageSample) (fillEstimate, bool) {
	if len(samples) < 2 {
		return fillEstimate{}, false
	}
	a, b := samples[0], samples[len(samples)-1]
	w := b.At.Sub(a.At)
	if w <= 0 {
		return fillEstimate{}, false
	}
	e := fillEstimate{Window: w, SecondsToFull: math.Inf(1)}
	if b.Used > a.Used {
		e.Rate = float64(b.Used-a.Used) / w.Seconds()
	}
	if e.Rate > 0 && b.Total > b.Used {
		e.SecondsToFull = float64(b.Total-b.Used) / e.Rate
	}
	if b.Total > 0 && b.Used >= b.Total {
		e.SecondsToFull = 0
	}
	return e, true
}

// watchPolicy is what watch does at the action threshold.
type watchPolicy int

const (
	// policyAbort rolls back: the update has not declared itself healthy
	// and would lose its rollback; like vold's checkpoint health check
	// (Checkpoint.cpp cp_healthDaemon reboots with
	// "checkpoint-resources-exhausted"), give up the update.
	policyAbort watchPolicy = iota
	// policyCommit keeps the update's data and gives up the rollback.
	policyCommit
	// policyWarn only warns.
	policyWarn
)

func (p watchPolicy) String() string {
	return [...]string{"abort", "commit", "warn"}[p]
}

func parseWatchPolicy(s string) (watchPolicy, error) {
	for p := policyAbort; p <= policyWarn; p++ {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("--policy %q: want abort (roll back and reboot), commit (keep the data, give up the rollback) or warn", s)
}

// watchConfig are watch's thresholds.
type watchConfig struct {
	Warn     float64       // percent used: warn
	Act      float64       // percent used: apply the policy
	Interval time.Duration // between samples
	// Lead is how long before the COW is full, at the current rate, watch
	// acts once past Warn without waiting for Act: acting takes time (a
	// commit's teardown, a rollback's misc and store writes, a freeze) and
	// the writes go on meanwhile.
	Lead   time.Duration
	Policy watchPolicy
}

func (c watchConfig) validate() error {
	if !(c.Warn > 0 && c.Warn <= c.Act && c.Act < 100) {
		return fmt.Errorf("thresholds --warn %g%% and --act %g%%: want 0 < warn ≤ act < 100", c.Warn, c.Act)
	}
	if c.Interval <= 0 || c.Lead < 0 {
		return fmt.Errorf("--interval %s, --lead %s: want a positive interval and a lead ≥ 0", c.Interval, c.Lead)
	}
	return nil
}

// verdict is watch's decision for the newest sample.
type verdict int

const (
	verdictOK verdict = iota
	verdictWarn
	verdictAct
)

// sampleNums is the numbers of a sample and its estimate, for the log.
func sampleNums(s usageSample, e fillEstimate, haveRate bool) string {
	nums := fmt.Sprintf("COW %.1f%% used (%.1f of %.1f MiB), userdata %.1f MiB free", s.percent(), mib(s.Used), mib(s.Total), mib(s.FreeBytes))
	if haveRate {
		nums += fmt.Sprintf(", filling at %.2f MiB/s over %s", e.Rate/(1<<20), e.Window.Round(time.Millisecond))
		if !math.IsInf(e.SecondsToFull, 1) {
			nums += fmt.Sprintf(", full in %.0f s", e.SecondsToFull)
		}
	}
	return nums
}

// judge decides from the newest sample and the estimate. why carries the
// numbers that caused the verdict, for the log.
func judge(c watchConfig, s usageSample, e fillEstimate, haveRate bool) (verdict, string) {
	pct := s.percent()
	nums := sampleNums(s, e, haveRate)
	switch {
	case pct >= c.Act:
		return verdictAct, fmt.Sprintf("%s: at or above the %g%% action threshold", nums, c.Act)
	case pct >= c.Warn && haveRate && e.SecondsToFull < c.Lead.Seconds():
		// Only above the warning threshold: a burst early in the trial
		// (a boot writing its caches) extrapolates to a fill rate the
		// trial does not sustain, and acting on it would end a healthy
		// trial. Above it the rate gives the lead the action needs.
		return verdictAct, fmt.Sprintf("%s: full within the %s lead", nums, c.Lead)
	case pct >= c.Warn:
		return verdictWarn, fmt.Sprintf("%s: at or above the %g%% warning threshold", nums, c.Warn)
	}
	return verdictOK, nums
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// watcher is what watch remembers between samples: the readings of the rate
// window and what it has said already. Its step is pure and takes the time
// from each reading (usageSample.At), never from the clock, so the same
// readings always give the same lines and the same decision, whatever the
// speed of the machine (the host tests drive it with readings they make
// up; cmdWatch with the snapshot's).
type watcher struct {
	cfg        watchConfig
	window     time.Duration // the rate is the average over this long
	samples    []usageSample
	warned     bool
	started    bool
	lastDecile int
}

func newWatcher(cfg watchConfig) *watcher {
	// The rate is the average over the last ~10 samples (at least 10 s).
	return &watcher{cfg: cfg, window: max(10*cfg.Interval, 10*time.Second), lastDecile: -1}
}

// watchStep is one step's outcome.
type watchStep struct {
	Verdict  verdict
	Why      string       // the numbers behind the verdict
	Est      fillEstimate // the fill rate, if HaveRate
	HaveRate bool
	// First: the first reading (the caller says what it watches). Progress:
	// the usage crossed into another tenth; log Why. Warning: log this
	// warning now: the usage reached the warning threshold for the first
	// time. It comes before any action, also when this very reading acts
	// (by the rate), so the log always shows the warning first.
	First, Progress bool
	Warning         string
}

// step takes one reading.
func (w *watcher) step(s usageSample) watchStep {
	w.samples = append(w.samples, s)
	for len(w.samples) > 2 && s.At.Sub(w.samples[1].At) >= w.window {
		w.samples = w.samples[1:]
	}
	est, have := estimateFill(w.samples)
	v, why := judge(w.cfg, s, est, have)
	st := watchStep{Verdict: v, Why: why, Est: est, HaveRate: have, First: !w.started}
	d := int(s.percent() / 10)
	st.Progress = w.started && d != w.lastDecile
	w.started, w.lastDecile = true, d
	if !w.warned && s.percent() >= w.cfg.Warn {
		w.warned = true
		st.Warning = fmt.Sprintf("%s: at or above the %g%% warning threshold", sampleNums(s, est, have), w.cfg.Warn)
	}
	return st
}
