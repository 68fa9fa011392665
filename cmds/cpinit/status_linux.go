package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
)

func collectStatus(sc *sysCtx, window time.Duration) (*Status, error) {
	r, info, err := sc.store.Load()
	var se *bootstate.StoreError
	if errors.Is(err, bootstate.ErrNoRecord) {
		// Blank (or a first write cut short): the fresh record, as sc.load
		// has it; nothing was ever durable, so nothing is degraded either.
		fresh := bootstate.NewFreshRecord()
		r, info = &fresh, bootstate.LoadInfo{}
		if errors.As(err, &se) {
			info.Copies = se.Copies
		}
		err = nil
	}
	if errors.As(err, &se) {
		// Unreadable or ambiguous: this is what recovery mode comes to
		// look at, so show it rather than fail.
		st := &Status{
			Schema:      StatusSchema,
			Version:     cpinitVersion(),
			State:       "unreadable",
			BootedSlot:  sc.bootedSlot(),
			Store:       []string{"A: " + se.Copies[0].String(), "B: " + se.Copies[1].String()},
			StoreCopies: storeCopies(se.Copies, -1),
			Note: fmt.Sprintf("metadata store %s: %v; boot stops for recovery until an operator runs `%s --yes` "+
				"(keeps the current userdata, gives up any rollback; see `cpinit recover`)", sc.storeDev, se.Err, bootstate.CmdKeepCurrent),
		}
		addRollback(st, rollbackStatePath, time.Now())
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	degraded := info.Degraded
	st := &Status{
		Schema:        StatusSchema,
		Version:       cpinitVersion(),
		State:         r.State.String(),
		TargetSlot:    r.TargetSlot,
		BootedSlot:    sc.bootedSlot(),
		Attempts:      int(r.Attempts),
		COWPath:       r.COWPath,
		StoreCopies:   storeCopies(info.Copies, inUseCopy(info.Copies, r.Generation)),
		StoreDegraded: &degraded,
	}
	if r.Reason != bootstate.ReasonNone {
		st.Reason = r.Reason.String()
	}
	if r.State != bootstate.StateFresh {
		st.Counter = r.Counter.String()
		st.COWBytes = r.Map.Sectors() * 512
		st.ChunkBytes = uint64(r.Map.ChunkSector) * 512
		if r.Counter == bootstate.CounterNative {
			n := int(r.TriesLeft)
			st.TriesLeft = &n
		}
	}
	if r.State == bootstate.StateCheckpointing {
		st.Phase = "armed"
		if r.Active {
			st.Phase = "active"
		}
		switch {
		case r.Counter == bootstate.CounterNative:
			st.Bootloader = bootloaderNotTold
		case r.Counter == bootstate.CounterAndroid && sc.bl == nil:
			st.Bootloader = bootloaderMiscMissing
		case r.Counter != counterOf(sc.bl):
			st.Bootloader = bootloaderMissing
		case r.Counter == bootstate.CounterAndroid:
			st.Bootloader = bootloaderMisc
		default:
			st.Bootloader = bootloaderTold
		}
	}
	if r.State == bootstate.StateCheckpointing || r.State == bootstate.StateRollbackPending {
		if k, c, err := sc.checkpoint(&r.Map); err == nil {
			if obs, err := k.Observe(); err == nil {
				st.Snapshot, st.Merge = snapshotUsage(obs.Snapshot), snapshotUsage(obs.Merge)
			}
			c.Close()
		}
	}
	st.COWUsedPercent = cowUsedPercent(st.Snapshot)
	st.Boot = bootView(sc.bl)
	if r.State == bootstate.StateCheckpointing && r.Counter != bootstate.CounterNative && r.Counter == counterOf(sc.bl) {
		st.TriesLeft = bootTries(st.Boot, r.TargetSlot)
	}
	if st.Snapshot != nil && st.Snapshot.State == snapActive && r.State == bootstate.StateCheckpointing {
		st.Fill = sc.fillRate(&r.Map, window)
	}
	invalid := st.Snapshot != nil && st.Snapshot.State != snapActive
	switch {
	case r.State == bootstate.StateRollbackPending:
		st.RollbackPossible = !invalid
		st.Note = "rollback pending: the next boot restores userdata to the checkpoint"
	case r.State == bootstate.StateCheckpointing && r.Active:
		st.RollbackPossible = !invalid
		if invalid {
			st.Note = "the COW overflowed: rollback is no longer possible; the update's data is kept at the next boot"
		}
	case r.State == bootstate.StateCheckpointing:
		st.Note = "armed: the trial starts at the next boot of the target slot"
	case r.State == bootstate.StateCommitted && r.Reason == bootstate.ReasonOverflow:
		st.Note = "the checkpoint overflowed and was dropped: rollback was impossible, the update's data was kept"
	}
	addRollback(st, rollbackStatePath, time.Now())
	return st, nil
}

// addRollback adds the running or last rollback from the progress file at
// path; what is wrong with the file goes to the note.
func addRollback(st *Status, path string, now time.Time) {
	r, note := readRollbackStatus(path, now, writerAlive)
	st.Rollback = r
	if note != "" {
		if st.Note != "" {
			st.Note += "; "
		}
		st.Note += note
	}
}

func cmdStatus(args []string, stdout io.Writer) error {
	var asJSON *bool
	var window *time.Duration
	sc, err := openCmd("status", args, func(fs *flag.FlagSet) {
		asJSON = fs.Bool("json", false, "machine-readable output (schema in docs)")
		window = fs.Duration("window", time.Second, "during a trial without cpinit watch: sample the COW over this long for its fill rate (0: don't)")
	}, func(rest []string) error {
		if *window < 0 {
			return usagef("--window %s: want a duration of 0 or more", *window)
		}
		return noArgs(rest)
	})
	if err != nil {
		return err
	}
	defer sc.close()
	st, err := collectStatus(sc, *window)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printStatus(stdout, st)
	return nil
}

// printStatus is `cpinit status` for a person.
func printStatus(stdout io.Writer, st *Status) {
	const mib = 1 << 20
	fmt.Fprintf(stdout, "state:             %s", st.State)
	if st.Phase != "" {
		fmt.Fprintf(stdout, " (%s)", st.Phase)
	}
	if st.Reason != "" {
		fmt.Fprintf(stdout, ", reason %s", st.Reason)
	}
	fmt.Fprintln(stdout)
	if st.State != "fresh" {
		fmt.Fprintf(stdout, "slot:              booted %q, update %q (%s counter, %d trial boots", st.BootedSlot, st.TargetSlot, st.Counter, st.Attempts)
		if st.TriesLeft != nil {
			by := ""
			if st.Counter != bootstate.CounterNative.String() {
				by = " in the bootloader"
			}
			fmt.Fprintf(stdout, ", %d tries left%s", *st.TriesLeft, by)
		}
		fmt.Fprintln(stdout, ")")
		fmt.Fprintf(stdout, "COW file:          %s, %.0f MiB, chunk %d KiB\n", st.COWPath, float64(st.COWBytes)/mib, st.ChunkBytes/1024)
	}
	switch st.Bootloader {
	case bootloaderMisc:
		fmt.Fprintln(stdout, "bootloader:        told through misc (commit marks the slot successful, rollback makes the old slot active)")
	case bootloaderNotTold:
		fmt.Fprintln(stdout, "bootloader:        not told (no misc; cpinit's native counter counts trial boots)")
	case bootloaderMiscMissing:
		fmt.Fprintln(stdout, "bootloader:        counts tries in misc, but no misc is configured here: commit and rollback refuse; pass --misc or set cpinit.misc=")
	case bootloaderTold:
		fmt.Fprintln(stdout, "bootloader:        told (commit marks the slot successful, rollback makes the old slot active)")
	case bootloaderMissing:
		fmt.Fprintf(stdout, "bootloader:        the checkpoint's %s counter is not the bootloader configured here: commit and rollback refuse; fix cpinit.bootloader=\n", st.Counter)
	}
	if b := st.Boot; b != nil {
		fmt.Fprintf(stdout, "bootloader state:  %s", b.Where)
		if b.Error != "" {
			fmt.Fprintf(stdout, ": unreadable: %s\n", b.Error)
		} else {
			next := b.Next
			if next == "" {
				next = "none bootable"
			}
			fmt.Fprintf(stdout, ", next boot: %s\n", next)
		}
		for _, s := range b.Slots {
			var parts []string
			if !s.Bootable {
				parts = append(parts, "not bootable")
			} else {
				parts = append(parts, "bootable")
			}
			if s.Successful != nil {
				if *s.Successful {
					parts = append(parts, "successful")
				} else {
					parts = append(parts, "not marked successful")
				}
			}
			if s.Tries != nil {
				parts = append(parts, fmt.Sprintf("%d tries left", *s.Tries))
			}
			if s.Priority != nil {
				parts = append(parts, fmt.Sprintf("priority %d", *s.Priority))
			}
			fmt.Fprintf(stdout, "  slot %-13s %s\n", s.Name+":", strings.Join(parts, ", "))
		}
	}
	if u := st.Snapshot; u != nil && u.State != snapActive {
		// The kernel reports no usage for an Invalid snapshot.
		fmt.Fprintf(stdout, "COW used:          unusable: the snapshot is %s (the COW overflowed or hit an I/O error)\n", u.State)
	} else if u != nil {
		fmt.Fprintf(stdout, "COW used:          %.1f of %.1f MiB (%.1f%%), %s\n", float64(u.UsedBytes)/mib, float64(u.TotalBytes)/mib, u.UsedPercent, u.State)
	}
	if f := st.Fill; f != nil {
		full := "not filling"
		if f.SecondsToFull != nil {
			full = "full in " + (time.Duration(*f.SecondsToFull) * time.Second).String()
		}
		fmt.Fprintf(stdout, "COW fill rate:     %.2f MiB/s over %.0f s (%s), %s\n", f.RateBytesPerSec/mib, f.WindowSeconds, f.Source, full)
	}
	if u := st.Merge; u != nil {
		fmt.Fprintf(stdout, "merge:             %.1f MiB left to copy back\n", float64(u.UsedBytes-u.MetadataBytes)/mib)
	}
	if r := st.Rollback; r != nil {
		fmt.Fprintln(stdout, rollbackLine(r))
	}
	for _, c := range st.Store {
		fmt.Fprintf(stdout, "store copy %s\n", c)
	}
	if w := storeWarning(st); w != "" {
		fmt.Fprintf(stdout, "metadata store:    %s\n", w)
	}
	fmt.Fprintf(stdout, "rollback possible: %v\n", st.RollbackPossible)
	if st.Note != "" {
		fmt.Fprintf(stdout, "note:              %s\n", st.Note)
	}
	fmt.Fprintf(stdout, "cpinit version:    %s\n", st.Version)
}

// rollbackLine is status's line about the running or the last rollback.
func rollbackLine(r *RollbackProgress) string {
	const mib = 1 << 20
	what := fmt.Sprintf("%s of %s (%s, pid %d)", methodName(r.Method), r.Device, r.By, r.PID)
	done, total := float64(r.BytesDone)/mib, float64(r.BytesTotal)/mib
	took := time.Duration(r.Seconds * float64(time.Second))
	if took >= time.Second {
		took = took.Round(100 * time.Millisecond)
	} else {
		took = took.Round(time.Millisecond)
	}
	switch r.State {
	case rollbackRunning:
		eta := "time left unknown"
		if r.SecondsLeft != nil {
			eta = "about " + (time.Duration(*r.SecondsLeft) * time.Second).String() + " left"
		}
		return fmt.Sprintf("rollback:          %s running: %.1f%%, %.1f MiB left of %.1f MiB, %.1f MiB/s, %s",
			what, r.Percent, total-done, total, r.RateBytesPerSec/mib, eta)
	case rollbackDone:
		return fmt.Sprintf("last rollback:     %s done at %s: %.1f MiB in %s, %.1f MiB/s",
			what, r.Updated, total, took, r.RateBytesPerSec/mib)
	case rollbackFailed:
		return fmt.Sprintf("last rollback:     %s FAILED at %s after %.1f of %.1f MiB (%s): %s",
			what, r.Updated, done, total, took, r.Error)
	}
	return fmt.Sprintf("last rollback:     %s stopped without finishing after %.1f of %.1f MiB (last report at %s)",
		what, done, total, r.Updated)
}

// cmdMerge runs a pending rollback now, from recovery mode: the same boot
// step PID 1 takes (verify the extents through a read-only snapshot view,
// merge, delete the COW file, record fresh), with a progress bar on a
// terminal. Userdata must not be mounted.
func cmdMerge(args []string, stdout io.Writer) error {
	var method string
	sc, err := openCmd("merge", args, func(fs *flag.FlagSet) {
		// A bad value fails the parse: exit 2 before any device is opened.
		fs.Func("method", "how to copy the saved chunks back: restore (offline, by cpinit) or kernel (snapshot-merge); default: cpinit.merge=, else "+defaultMergeMethod,
			func(v string) error {
				if !validMergeMethod(v) {
					return fmt.Errorf("want %s or %s", mergeRestore, mergeKernel)
				}
				method = v
				return nil
			})
	}, nil)
	if err != nil {
		return err
	}
	defer sc.close()
	methodFrom := "--method=" + method
	if method == "" {
		method, methodFrom = sc.p.Merge, "cpinit.merge="+sc.p.Merge
	}
	r, err := sc.load()
	if err != nil {
		return err
	}
	if r.State != bootstate.StateRollbackPending {
		return refusef("refusing to merge: no rollback pending (state %s); `cpinit rollback` requests one", r.State)
	}
	tmp, err := mergeScratch()
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	logf := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	env := &bootEnv{
		ud:        sc.ud,
		dataDir:   tmp + "/data",
		fstype:    sc.p.FSType,
		mountOpts: sc.p.MountOpts,
		verifyDir: tmp + "/verify",
		logf:      logf,
		progress:  progressBar(stdout),

		restoreOffline: method == mergeRestore,
		methodFrom:     methodFrom,
		publish:        rollbackStatePath,
		publishBy:      rollbackByMerge,
	}
	if err := os.MkdirAll(env.verifyDir, 0o700); err != nil {
		return err
	}
	// Recovery mode made userdata read-only while the checkpoint lives
	// (recoveryGuard): the merge writes it through device-mapper, so lift
	// that, and put it back if the checkpoint is still recorded after.
	if err := setBlockRO(sc.ud.Path, false); err != nil {
		return err
	}
	defer func() {
		if r, _, err := sc.store.Load(); err != nil || r.State == bootstate.StateCheckpointing || r.State == bootstate.StateRollbackPending {
			setBlockRO(sc.ud.Path, true)
		}
	}()
	// The same checks as PID 1 (mapAndMount): the COW file is looked at in
	// the current filesystem too while no merge has started, and a merge
	// on the update's own slot switches the bootloader first.
	env.cowPath = r.COWPath
	env.checkCurrent = r.MergeTries == 0
	env.bl, env.bootedSlot = sc.bl, sc.bootedSlot()
	in := bootstate.DecideInput{BootedSlot: sc.bootedSlot(), Params: bootstate.Params{Userdata: sc.ud.id()}}
	a, err := bootstate.RunBoot(sc.store, in, env)
	if env.mounted != "" {
		unmountForPowerOff(env.dataDir)
	}
	if err != nil {
		return err
	}
	if a.Kind == bootstate.RebootOtherSlot {
		fmt.Fprintf(stdout, "done: userdata is rolled back; %s: reboot now, the bootloader boots the other slot\n", a.Message)
		return nil
	}
	fmt.Fprintf(stdout, "done: %s\n", a.Message)
	return nil
}

// mergeScratch makes the mount points cpinit merge needs. In recovery mode
// the system's root is usually mounted read-only (so is /tmp on it), and
// /run is the tmpfs PID 1 moved there: look there first.
func mergeScratch() (string, error) {
	var errs []error
	for _, base := range []string{"/run/cpinit", os.TempDir()} {
		if err := os.MkdirAll(base, 0o700); err != nil {
			errs = append(errs, err)
			continue
		}
		d, err := os.MkdirTemp(base, "merge-")
		if err == nil {
			return d, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("no writable place for cpinit merge's mount points: %w", errors.Join(errs...))
}

// fillRate is the COW's fill rate: from cpinit watch's latest samples if it
// runs, else from two readings window apart.
func (sc *sysCtx) fillRate(m *bootstate.ExtentMap, window time.Duration) *FillRate {
	if ws, ok := readWatchState(time.Now()); ok {
		return &FillRate{RateBytesPerSec: ws.Rate, SecondsToFull: ws.SecondsToFull, WindowSeconds: ws.Window, Source: "watch"}
	}
	if window <= 0 {
		return nil
	}
	var samples []usageSample
	for i := 0; i < 2; i++ {
		if i > 0 {
			time.Sleep(window)
		}
		snap, err := sc.observeSnapshot(m)
		if err != nil || snap.State != dmsnap.SnapActive {
			return nil
		}
		samples = append(samples, usageSample{At: time.Now(), Used: snap.Allocated * 512, Total: snap.Total * 512})
	}
	e, ok := estimateFill(samples)
	if !ok {
		return nil
	}
	f := &FillRate{RateBytesPerSec: e.Rate, WindowSeconds: e.Window.Seconds(), Source: "sampled"}
	if !math.IsInf(e.SecondsToFull, 1) {
		v := e.SecondsToFull
		f.SecondsToFull = &v
	}
	return f
}

// bootView reads the bootloader's A/B state for status (nil when none is
// configured); a state that cannot be read is shown with the reason.
func bootView(bl bootstate.Bootloader) *BootView {
	if bl == nil {
		return nil
	}
	v := &BootView{Where: bl.Describe()}
	s, err := bl.Load()
	if err != nil {
		v.Error = err.Error()
		return v
	}
	v.Scheme, v.Next = s.Scheme(), s.Next()
	for i, si := range s.Slots() {
		b := BootSlot{Name: si.Name, Bootable: si.Bootable}
		if si.TracksSuccess {
			ok := si.Successful
			b.Successful = &ok
		}
		if si.Tries >= 0 {
			n := si.Tries
			b.Tries = &n
		}
		if as, ok := s.(*bootstate.AndroidState); ok && i < len(as.BC.Slots) {
			// Slots lists bootloader_control's slots in order.
			p := int(as.BC.Slots[i].Priority)
			b.Priority = &p
		}
		v.Slots = append(v.Slots, b)
	}
	return v
}

// bootTries is the bootloader's tries left for slot, nil if it does not
// count them (or its state could not be read).
func bootTries(v *BootView, slot string) *int {
	if v == nil || slot == "" {
		return nil
	}
	for _, s := range v.Slots {
		if bootstate.SameSlot(s.Name, slot) && s.Tries != nil {
			n := *s.Tries
			return &n
		}
	}
	return nil
}
