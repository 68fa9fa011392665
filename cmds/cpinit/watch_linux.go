package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"golang.org/x/sys/unix"
)

// watchStatePath is where watch leaves its latest reading and fill rate for
// `cpinit status` (tmpfs: it describes this boot only).
const watchStatePath = "/run/cpinit/watch.json"

// watchState is the file at watchStatePath.
type watchState struct {
	At            time.Time `json:"at"`
	Used          uint64    `json:"used_bytes"`
	Total         uint64    `json:"total_bytes"`
	Rate          float64   `json:"rate_bytes_per_sec"`
	SecondsToFull *float64  `json:"seconds_to_full,omitempty"`
	Window        float64   `json:"window_seconds"`
	Interval      float64   `json:"interval_seconds"`
}

// cmdWatch guards a trial against a COW overflow: it samples the snapshot's
// usage and userdata's free space, warns at one threshold and applies the
// policy at the next, or earlier when the current rate would fill the COW
// within --lead. It exits 0 when there is no trial to watch (so its unit can
// run on every boot) or when the trial ends, and 3 (errCOWOverflowed) if
// the COW overflowed.
func cmdWatch(args []string, stdout io.Writer) error {
	var policyS *string
	var warn, act *float64
	var interval, lead *time.Duration
	var once, noReboot *bool
	var cfg watchConfig
	sc, err := openCmd("watch", args, func(fs *flag.FlagSet) {
		policyS = fs.String("policy", "abort", "at the action threshold: abort (roll back: reboot into the old slot), commit (keep the data, give up the rollback) or warn")
		warn = fs.Float64("warn", 75, "warn when the COW is this many percent full")
		act = fs.Float64("act", 90, "apply the policy when the COW is this many percent full")
		interval = fs.Duration("interval", 2*time.Second, "time between samples")
		lead = fs.Duration("lead", 30*time.Second, "also act when the current rate would fill the COW within this time")
		once = fs.Bool("once", false, "take one decision and exit (needs an earlier sample for a rate)")
		noReboot = fs.Bool("no-reboot", false, "abort: record the rollback and freeze userdata, but leave the reboot to the caller")
	}, func(rest []string) error {
		policy, err := parseWatchPolicy(*policyS)
		if err != nil {
			return usagef("%v", err)
		}
		cfg = watchConfig{Warn: *warn, Act: *act, Interval: *interval, Lead: *lead, Policy: policy}
		if err := cfg.validate(); err != nil {
			return usagef("%v", err)
		}
		return noArgs(rest)
	})
	logf := func(format string, a ...any) { fmt.Fprintf(stdout, "cpinit watch: "+format+"\n", a...) }
	if errors.Is(err, errNoMetadata) {
		logf("checkpoints are off (no cpinit.metadata=): nothing to watch")
		return nil
	}
	if err != nil {
		return err
	}
	defer sc.close()
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()

	w := newWatcher(cfg)
	started, warnedAct := false, false
	for {
		r, err := sc.load()
		if err != nil {
			return err
		}
		if skip := notATrial(r, sc.bootedSlot()); skip != "" || r.State != bootstate.StateCheckpointing {
			if skip == "" {
				skip = fmt.Sprintf("state %s (%s)", r.State, r.Reason)
			}
			if started {
				logf("the trial ended: %s; watch exits", skip)
			} else {
				logf("nothing to watch: %s", skip)
			}
			return nil
		}
		snap, err := sc.observeSnapshot(&r.Map)
		if err != nil {
			return err
		}
		if snap.State != dmsnap.SnapActive {
			logf("the COW overflowed (snapshot %s): rollback is no longer possible; the next boot keeps the current data, records reason overflow and deletes the COW file", snapStateName(snap.State))
			return errCOWOverflowed
		}
		var st unix.Statfs_t
		if err := unix.Statfs(sc.dataDir, &st); err != nil {
			return &os.PathError{Op: "statfs", Path: sc.dataDir, Err: err}
		}
		s := usageSample{At: time.Now(), Used: snap.Allocated * 512, Total: snap.Total * 512, FreeBytes: st.Bavail * uint64(st.Bsize)}
		step := w.step(s)
		writeWatchState(s, step.Est, step.HaveRate, cfg.Interval)
		why := step.Why
		switch {
		case step.First:
			logf("watching the checkpoint of slot %s: COW %.1f MiB; warn at %g%%, %s at %g%% or when full within %s; %s",
				r.TargetSlot, mib(s.Total), cfg.Warn, cfg.Policy, cfg.Act, cfg.Lead, why)
			started = true
		case step.Progress:
			logf("%s", why)
		}
		if step.Warning != "" {
			logf("WARNING: %s", step.Warning)
		}
		switch {
		case step.Verdict == verdictAct && cfg.Policy == policyWarn:
			// Policy warn acts by saying so, once, and keeps watching:
			// an overflow must still be seen and reported (exit 3,
			// which cpinit-watch.service does not restart on).
			if !warnedAct {
				logf("WARNING: %s; policy warn: doing nothing, the checkpoint will be lost if the COW fills up", why)
				warnedAct = true
			}
		case step.Verdict == verdictAct:
			// Watch samples without the store lock (lock_linux.go) and
			// takes it only to act: on the record as it is now, which a
			// commit or rollback may have changed since the sample.
			if err := sc.lockStore(); err != nil {
				if !errors.Is(err, errStoreLocked) {
					return err
				}
				logf("cannot act yet: %v; trying again at the next sample", err)
				break
			}
			if r, err = sc.load(); err != nil {
				return err
			}
			if skip := notATrial(r, sc.bootedSlot()); skip != "" || r.State != bootstate.StateCheckpointing {
				if skip == "" {
					skip = fmt.Sprintf("state %s (%s)", r.State, r.Reason)
				}
				logf("the trial ended before watch could act: %s; watch exits", skip)
				return nil
			}
			return sc.watchAct(cfg.Policy, r, why, *noReboot, logf, stdout)
		}
		if *once {
			return nil
		}
		select {
		case <-ctx.Done():
			logf("stopped by a signal")
			return nil
		case <-time.After(cfg.Interval):
		}
	}
}

// observeSnapshot reads the live snapshot's dm status.
func (sc *sysCtx) observeSnapshot(m *bootstate.ExtentMap) (*dmsnap.SnapshotStatus, error) {
	k, c, err := sc.checkpoint(m)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	o, err := k.Observe()
	if err != nil {
		return nil, err
	}
	if o.Snapshot == nil {
		return nil, fmt.Errorf("the trial is active but no snapshot is mapped (%s): was userdata mounted without cpinit's initramfs?", dmsnap.DefaultNames.Snap)
	}
	return o.Snapshot, nil
}

// watchAct applies the policy, logging the numbers that caused it.
func (sc *sysCtx) watchAct(p watchPolicy, r *bootstate.Record, why string, noReboot bool, logf func(string, ...any), stdout io.Writer) error {
	switch p {
	case policyCommit:
		logf("committing the update (policy commit; the rollback is given up to keep the data): %s", why)
		return sc.commit(r, stdout)
	}
	logf("aborting the update (policy abort; rolling userdata back): %s", why)
	if err := sc.rollback(r, stdout); err != nil {
		return err
	}
	// Nothing more may land in the COW: every write from now on would be
	// thrown away by the merge anyway, and an overflow before the reboot
	// would lose the rollback. Freezing flushes what was written and blocks
	// every writer (a failure to freeze is logged: the reboot follows).
	unix.Sync()
	if err := freezeFS(sc.dataDir); err != nil {
		logf("freezing %s failed, rebooting anyway: %v", sc.dataDir, err)
	} else {
		logf("userdata frozen at %s", sc.dataDir)
	}
	if noReboot {
		logf("rollback recorded; reboot to run it (--no-reboot)")
		return nil
	}
	logf("rebooting into the old slot now")
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		return os.NewSyscallError("reboot", err)
	}
	return nil
}

// writeWatchState leaves the latest reading for `cpinit status`. Best
// effort: status samples by itself without it.
func writeWatchState(s usageSample, e fillEstimate, have bool, interval time.Duration) {
	ws := watchState{At: s.At, Used: s.Used, Total: s.Total, Interval: interval.Seconds()}
	if have {
		ws.Rate, ws.Window = e.Rate, e.Window.Seconds()
		if !math.IsInf(e.SecondsToFull, 1) {
			v := e.SecondsToFull
			ws.SecondsToFull = &v
		}
	}
	b, err := json.Marshal(ws)
	if err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(watchStatePath), 0o755); err != nil {
		return
	}
	tmp := watchStatePath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		os.Rename(tmp, watchStatePath)
	}
}

// readWatchState returns watch's latest reading if it is recent.
func readWatchState(now time.Time) (*watchState, bool) {
	b, err := os.ReadFile(watchStatePath)
	if err != nil {
		return nil, false
	}
	var ws watchState
	if json.Unmarshal(b, &ws) != nil || ws.Window == 0 {
		return nil, false
	}
	if age := now.Sub(ws.At); age < 0 || age.Seconds() > 3*ws.Interval+1 {
		return nil, false
	}
	return &ws, true
}
