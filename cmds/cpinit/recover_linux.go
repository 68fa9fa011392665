package main

import (
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/cpinit/cpinit/internal/cmdline"
	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
)

// recoverAbout is recover's --help.
const recoverAbout = `keep-current declares the current userdata authoritative: it writes a
"committed by the operator" record to both copies of the metadata store,
whatever cpinit record they hold now (an unreadable one included), so the
next normal boot mounts userdata as it is, deletes the COW file (--cow-path,
default /.cpinit/cow inside userdata) and returns to fresh. Any rollback the
checkpoint still offered is given up. It refuses a device that holds no
cpinit record header at all (a filesystem, other data): that is not a
damaged store but most likely the wrong device.

Run it in recovery mode: boot with cpinit.recovery=1 on the kernel command
line (PID 1 then neither maps nor mounts userdata), inspect with
` + "`cpinit status`" + `, run this, then boot normally. It only writes the
metadata store; userdata stays untouched until that next boot.

It refuses when the record shows that a rollback merge has started (userdata
is then part old, part new; only ` + "`cpinit merge`" + ` makes it consistent) and
while a merge is mapped. With an unreadable record cpinit cannot tell: if a
merge had started, run e2fsck on userdata after the next boot.

Without --yes it only explains what it would do.
`

// keepCurrentPlan is what keep-current would do with the store as read.
type keepCurrentPlan struct {
	// Write: format the store with RecoveryKeepCurrent. When false,
	// Explain says why nothing needs doing (no error) or Err why not.
	Write   bool
	Explain string
	Err     error
}

// planKeepCurrent decides keep-current from Store.Load's result. Pure.
func planKeepCurrent(r *bootstate.Record, loadErr error, cowPath string) keepCurrentPlan {
	if loadErr != nil {
		var se *bootstate.StoreError
		switch {
		case errors.Is(loadErr, bootstate.ErrNoRecord):
			return keepCurrentPlan{Explain: "the metadata store is blank: there is no checkpoint, nothing to recover (the next boot initialises the store)"}
		case errors.Is(loadErr, bootstate.ErrStoreForeign):
			// checkStoreDevice refused it already; Format would too.
			return keepCurrentPlan{Err: refusef("refusing to recover: %w; this is not a cpinit metadata store: check --metadata / cpinit.metadata=", loadErr)}
		case errors.As(loadErr, &se):
			return keepCurrentPlan{Write: true, Explain: fmt.Sprintf(
				"the metadata store is unreadable (%v): cpinit cannot tell which state the checkpoint was in. "+
					"Keeping the current data drops any rollback; the next boot deletes %s. "+
					"If a rollback merge had already started, userdata is inconsistent: check it with e2fsck after that boot", loadErr, cowPath)}
		}
		// Not a verdict on the contents: the device could not be read.
		return keepCurrentPlan{Err: refusef("refusing to recover: %w; fix access to the metadata store first", loadErr)}
	}
	switch r.State {
	case bootstate.StateFresh:
		msg := "no checkpoint: nothing to recover"
		if r.COWPath != "" {
			msg += fmt.Sprintf(" (the next boot deletes the leftover %s)", r.COWPath)
		}
		return keepCurrentPlan{Explain: msg}
	case bootstate.StateCommitted:
		return keepCurrentPlan{Explain: fmt.Sprintf("already committed (%s): the next boot deletes %s", r.Reason, r.COWPath)}
	case bootstate.StateRollbackPending:
		if r.MergeTries > 0 {
			return keepCurrentPlan{Err: refusef("refusing to keep the current data: a rollback merge has started (%d attempts, %s); "+
				"userdata is now part old, part new and only finishing the merge makes it consistent: fix the cause shown at boot and run `cpinit merge`",
				r.MergeTries, r.Reason)}
		}
		return keepCurrentPlan{Write: true, Explain: fmt.Sprintf(
			"a rollback is pending (%s) but has not started merging: keeping the current data cancels it; the update's changes to userdata stay and the next boot deletes %s",
			r.Reason, r.COWPath)}
	case bootstate.StateCheckpointing:
		return keepCurrentPlan{Write: true, Explain: fmt.Sprintf(
			"a checkpoint for slot %q exists (active=%v, %d trial boots): keeping the current data drops it like a commit; the next boot deletes %s",
			r.TargetSlot, r.Active, r.Attempts, r.COWPath)}
	}
	return keepCurrentPlan{Write: true, Explain: fmt.Sprintf("unknown state %v: keeping the current data", r.State)}
}

func cmdRecover(args []string, stdout io.Writer) error {
	fs := newFlags("recover keep-current")
	cmdline := fs.String("cmdline", "", "kernel command line to take cpinit.metadata= from (default /proc/cmdline)")
	metadata := fs.String("metadata", "", "metadata store device (default cpinit.metadata=)")
	cowPath := fs.String("cow-path", DefaultCOWPath, "the COW file, relative to the root of userdata")
	yes := fs.Bool("yes", false, "really write the store")
	var lockWait time.Duration
	registerLockWait(fs, &lockWait)
	switch {
	case len(args) == 0:
		return usagef("no verb: recover has one, keep-current")
	case strings.HasPrefix(args[0], "-"):
		// recover --help; any other flag is out of place.
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		return usagef("the verb keep-current comes first")
	case args[0] != "keep-current":
		return usagef("unknown verb %q: recover has one, keep-current", args[0])
	}
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if err := noArgs(fs.Args()); err != nil {
		return err
	}
	if !path.IsAbs(*cowPath) || path.Clean(*cowPath) != *cowPath || *cowPath == "/" {
		return usagef("--cow-path %q: want a clean absolute path inside userdata, such as %s", *cowPath, DefaultCOWPath)
	}
	if *metadata != "" {
		if _, err := devspec.Parse(*metadata); err != nil {
			return usagef("--metadata: %v", err)
		}
	}
	storeDev, err := metadataDevice(*cmdline, *metadata)
	if err != nil {
		return err
	}
	store, f, err := bootstate.OpenStore(storeDev)
	if err != nil {
		return fmt.Errorf("metadata store %s: %w", storeDev, err)
	}
	defer f.Close()
	if err := lockStore(f, storeDev, lockWait, "--lock-wait", stderrf); err != nil {
		return err
	}
	if err := checkStoreDevice(store, f, storeDev); err != nil {
		return err
	}
	r, _, loadErr := store.Load()
	plan := planKeepCurrent(r, loadErr, *cowPath)
	if plan.Err != nil {
		return plan.Err
	}
	fmt.Fprintf(stdout, "%s\n", plan.Explain)
	if !plan.Write {
		return nil
	}
	if err := noMergeMapped(); err != nil {
		return err
	}
	if !*yes {
		return refusef("refusing to write the metadata store %s without --yes: this gives up the rollback; rerun as `%s --yes`", storeDev, bootstate.CmdKeepCurrent)
	}
	rec := bootstate.RecoveryKeepCurrent(*cowPath)
	gen, err := store.Format(&rec)
	if err != nil {
		return fmt.Errorf("write metadata store %s: %w", storeDev, err)
	}
	fmt.Fprintf(stdout, "kept the current data: metadata store %s now says committed (operator), generation %d; "+
		"boot normally (without cpinit.recovery): the next boot deletes %s and returns to fresh\n", storeDev, gen, *cowPath)
	return nil
}

// metadataDevice resolves the metadata store from --metadata or the kernel
// command line. Unlike the other commands it needs nothing else: recovery
// must work whatever else is wrong.
func metadataDevice(line, flagVal string) (string, error) {
	spec := flagVal
	if spec == "" {
		if line == "" {
			var err error
			if line, err = readCmdline(); err != nil {
				return "", err
			}
		}
		spec = cmdline.Parse(line).Value("cpinit.metadata")
	}
	if spec == "" {
		return "", errNoMetadata
	}
	s, err := devspec.Parse(spec)
	if err != nil {
		return "", fmt.Errorf("metadata store %q: %w", spec, err)
	}
	dev, err := devspec.Resolve(s)
	if err != nil {
		return "", fmt.Errorf("metadata store %s: %w", s, err)
	}
	return dev, nil
}

// noMergeMapped refuses while this kernel runs a snapshot-merge of
// userdata: the origin is then mid-merge. No device-mapper is fine.
func noMergeMapped() error {
	c, err := dmsnap.Open()
	if err != nil {
		return nil
	}
	defer c.Close()
	tbl, err := c.Table(dmsnap.DefaultNames.Origin)
	if err != nil {
		return nil
	}
	for _, t := range tbl {
		if t.Type == "snapshot-merge" {
			return refusef("refusing to keep the current data: %s is merging (%s); let the merge finish (`cpinit status` shows progress)",
				dmsnap.DefaultNames.Origin, dmsnap.FormatTable(tbl))
		}
	}
	return nil
}
