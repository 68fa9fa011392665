package main

import (
	"fmt"
	"strings"

	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
)

// StatusSchema is the version of `cpinit status --json`. Fields are only
// ever added within a version; a rename or a change of meaning bumps it.
const StatusSchema = 1

// Status is what `cpinit status --json` prints.
type Status struct {
	Schema int `json:"schema"`
	// Version is cpinit's (cpinitVersion), the binary that printed this.
	Version    string `json:"version,omitempty"`
	State      string `json:"state"`            // fresh, checkpointing, committed, rollback-pending; unreadable (no valid record)
	Phase      string `json:"phase,omitempty"`  // checkpointing: armed or active
	Reason     string `json:"reason,omitempty"` // why the state was entered
	Counter    string `json:"counter,omitempty"`
	Bootloader string `json:"bootloader,omitempty"` // checkpointing: do commit and rollback tell the bootloader (bootloader* values)
	TargetSlot string `json:"target_slot,omitempty"`
	BootedSlot string `json:"booted_slot,omitempty"`
	// TriesLeft is the trial's tries left whenever they are known, 0
	// included: cpinit's own count (native counter), else, during a
	// trial, the bootloader's for the target slot. nil: not applicable.
	TriesLeft  *int   `json:"tries_left,omitempty"`
	Attempts   int    `json:"attempts"` // trial boots counted
	COWPath    string `json:"cow_path,omitempty"`
	COWBytes   uint64 `json:"cow_bytes,omitempty"`
	ChunkBytes uint64 `json:"chunk_bytes,omitempty"`
	// Snapshot is the live dm-snapshot, when one is mapped.
	Snapshot *SnapshotUsage `json:"snapshot,omitempty"`
	// COWUsedPercent is how full the live snapshot's COW is, for
	// monitoring (cowUsedPercent); nil when no snapshot is mapped.
	COWUsedPercent *float64 `json:"cow_used_percent,omitempty"`
	// Merge is the progress of a running rollback merge.
	Merge *SnapshotUsage `json:"merge,omitempty"`
	// Fill is how fast the live snapshot's COW fills, when known.
	Fill *FillRate `json:"fill,omitempty"`
	// Rollback is the rollback copying data back now, or the last one
	// since this boot (rollbackStatePath, on /run), whichever method.
	Rollback *RollbackProgress `json:"rollback,omitempty"`
	// RollbackPossible: a rollback would restore the checkpoint.
	RollbackPossible bool `json:"rollback_possible"`
	// Store describes each copy of the metadata store when no valid record
	// could be chosen (state "unreadable").
	Store []string `json:"store,omitempty"`
	// StoreCopies is each copy of the metadata store as status read it,
	// whatever the state; StoreDegraded is set when a record was read
	// (nil in state unreadable): true when only one copy holds it.
	StoreCopies   []StoreCopy `json:"store_copies,omitempty"`
	StoreDegraded *bool       `json:"store_degraded,omitempty"`
	Note          string      `json:"note,omitempty"`
	// Boot is the bootloader's own A/B state, as cpinit reads it, when a
	// bootloader is configured (cpinit.bootloader=, cpinit.misc=).
	Boot *BootView `json:"boot,omitempty"`
}

// BootView is the bootloader's A/B state (bootstate.ABState) as status
// shows it.
type BootView struct {
	Scheme string     `json:"scheme,omitempty"` // android-misc, uboot-rauc, grub-rauc, systemd-boot, ...
	Where  string     `json:"where"`            // where the state lives (bootstate.Bootloader.Describe)
	Next   string     `json:"next,omitempty"`   // the slot the bootloader tries next; absent: none bootable
	Error  string     `json:"error,omitempty"`  // the state could not be read (then no slots)
	Slots  []BootSlot `json:"slots,omitempty"`
}

// BootSlot is one slot in BootView (bootstate.SlotInfo).
type BootSlot struct {
	Name     string `json:"name"`
	Bootable bool   `json:"bootable"`
	// Successful is present only where the scheme records success apart
	// from its tries (bootstate.SlotInfo.TracksSuccess).
	Successful *bool `json:"successful,omitempty"`
	// Tries left; absent where the scheme does not count them for this
	// slot (a successful Android slot, a blessed entry).
	Tries *int `json:"tries,omitempty"`
	// Priority is the slot's priority where the scheme keeps one (Android
	// misc's 0..15, 0 unbootable); absent elsewhere.
	Priority *int `json:"priority,omitempty"`
}

// StoreCopy is one copy of the metadata store (bootstate.CopyStatus).
type StoreCopy struct {
	Copy       string `json:"copy"`                 // A or B
	State      string `json:"state"`                // valid, blank, invalid
	Generation uint64 `json:"generation,omitempty"` // valid copies only
	InUse      bool   `json:"in_use"`               // status read the record from this copy
	Error      string `json:"error,omitempty"`      // invalid: why
}

// Values of StoreCopy.State.
const (
	copyValid   = "valid"
	copyBlank   = "blank"
	copyInvalid = "invalid"
)

// storeCopies describes the copies Load saw; inUse is the index of the copy
// the record came from, -1 if none.
func storeCopies(cs [2]bootstate.CopyStatus, inUse int) []StoreCopy {
	out := make([]StoreCopy, len(cs))
	for i, c := range cs {
		sc := StoreCopy{Copy: string(rune('A' + i)), State: copyValid, Generation: c.Generation, InUse: i == inUse}
		switch {
		case c.Blank:
			sc.State, sc.Generation = copyBlank, 0
		case c.Err != nil:
			sc.State, sc.Generation, sc.Error = copyInvalid, 0, c.Err.Error()
		}
		out[i] = sc
	}
	return out
}

// inUseCopy is the index of the copy Load's record came from: the valid
// copy of the record's generation (A when both hold it).
func inUseCopy(cs [2]bootstate.CopyStatus, gen uint64) int {
	for i, c := range cs {
		if !c.Blank && c.Err == nil && c.Generation == gen {
			return i
		}
	}
	return -1
}

// storeWarning is status's line about a degraded store, "" if it is not.
// It says "degraded", not "WARNING", as PID 1 says "warning:": a copy
// left behind by a cut write is what the two copies are for, and the next
// write repairs it. Capital WARNING is kept for data at risk (an
// overflowed COW), which the power-cut campaigns fail on.
// What repairs it is Store.Save: it writes both copies, the one that does
// not hold the newest record first.
func storeWarning(st *Status) string {
	if st.StoreDegraded == nil || !*st.StoreDegraded {
		return ""
	}
	using := "?"
	var bad []string
	for _, c := range st.StoreCopies {
		switch {
		case c.InUse:
			using = "copy " + c.Copy
		case c.State == copyInvalid:
			bad = append(bad, fmt.Sprintf("copy %s is invalid (%s)", c.Copy, c.Error))
		case c.State == copyBlank:
			bad = append(bad, fmt.Sprintf("copy %s is blank", c.Copy))
		default:
			bad = append(bad, fmt.Sprintf("copy %s holds an older record (generation %d: a write was cut short)", c.Copy, c.Generation))
		}
	}
	return fmt.Sprintf("degraded: only one copy of the metadata store holds the record: %s; using %s. "+
		"The next change of the record (begin, commit, rollback, recover keep-current, or a boot that acts on a checkpoint) rewrites both copies; "+
		"until then a fault in %s loses the record. If a copy goes bad again after a write, check the store's device (kernel log: I/O errors)",
		strings.Join(bad, ", "), using, using)
}

// SnapshotUsage is a dm-snapshot's COW usage (snapshot.rst status line).
type SnapshotUsage struct {
	State         string  `json:"state"` // active, invalid, overflow, merge-failed, unknown
	UsedBytes     uint64  `json:"used_bytes"`
	TotalBytes    uint64  `json:"total_bytes"`
	MetadataBytes uint64  `json:"metadata_bytes"`
	UsedPercent   float64 `json:"used_percent"`
}

func snapshotUsage(s *dmsnap.SnapshotStatus) *SnapshotUsage {
	if s == nil {
		return nil
	}
	u := &SnapshotUsage{State: snapStateName(s.State), UsedBytes: s.Allocated * 512, TotalBytes: s.Total * 512, MetadataBytes: s.Metadata * 512}
	if s.Total > 0 {
		u.UsedPercent = 100 * float64(s.Allocated) / float64(s.Total)
	}
	return u
}

// cowUsedPercent is Status.COWUsedPercent for the live snapshot u: its
// used_percent while active; 100 once the kernel dropped it (invalid) or
// it overflowed, as its COW takes no more writes (and the kernel reports
// no usage then); nil when none is mapped or its usage is unknown.
func cowUsedPercent(u *SnapshotUsage) *float64 {
	var p float64
	switch {
	case u == nil:
		return nil
	case u.State == snapActive:
		p = u.UsedPercent
	case u.State == snapStateName(dmsnap.SnapInvalid) || u.State == snapStateName(dmsnap.SnapOverflow):
		p = 100
	default:
		return nil
	}
	return &p
}

// FillRate is the COW's recent fill rate and, at that rate, the time until
// it is full (absent while it is not filling).
type FillRate struct {
	RateBytesPerSec float64  `json:"rate_bytes_per_sec"`
	SecondsToFull   *float64 `json:"seconds_to_full,omitempty"`
	WindowSeconds   float64  `json:"window_seconds"`
	Source          string   `json:"source"` // "watch" (cpinit watch's samples) or "sampled" (by status itself)
}

// RollbackProgress is a rollback's progress or result, as its process
// published it (rollbackFile).
type RollbackProgress struct {
	Method          string   `json:"method"` // restore or kernel
	State           string   `json:"state"`  // running, done, failed, stopped
	Device          string   `json:"device"`
	By              string   `json:"by"` // boot (PID 1) or cpinit merge
	PID             int      `json:"pid"`
	BytesDone       uint64   `json:"bytes_done"`
	BytesTotal      uint64   `json:"bytes_total"`
	Percent         float64  `json:"percent"`
	RateBytesPerSec float64  `json:"rate_bytes_per_sec"`
	SecondsLeft     *float64 `json:"seconds_left,omitempty"` // running, at that rate
	Started         string   `json:"started"`                // RFC 3339, UTC
	Updated         string   `json:"updated"`                // the last report, or the end
	Seconds         float64  `json:"seconds"`                // from started to updated
	Error           string   `json:"error,omitempty"`        // failed
}

const snapActive = "active"

// Values of Status.Bootloader.
const (
	// bootloaderMisc: the bootloader counts the trial's tries in misc;
	// commit marks the slot successful there, rollback makes the old slot
	// active.
	bootloaderMisc = "misc"
	// bootloaderNotTold: no misc (cpinit's native counter): commit and
	// rollback change only cpinit's record; whatever the bootloader does,
	// nobody tells it.
	bootloaderNotTold = "not-told"
	// bootloaderMiscMissing: the bootloader counts in misc, but this
	// command was given no misc (cpinit.misc= or --misc): commit and
	// rollback from here refuse.
	bootloaderMiscMissing = "misc-missing"
	// bootloaderTold: another bootloader (cpinit.bootloader=: U-Boot or
	// GRUB environment, systemd-boot) counts the trial's tries; commit
	// marks the slot successful there, rollback makes the old slot active.
	bootloaderTold = "told"
	// bootloaderMissing: the checkpoint was begun with a bootloader counter
	// this command is not configured for (none, or another one): commit
	// and rollback from here refuse.
	bootloaderMissing = "bootloader-missing"
)

// snapStateName is the schema's stable name of a snapshot state; the kernel
// prints "Invalid", "Merge failed", "Overflow" (dm-snap.c snapshot_status),
// which is neither stable nor convenient as a JSON value.
func snapStateName(s dmsnap.SnapState) string {
	switch s {
	case dmsnap.SnapActive:
		return snapActive
	case dmsnap.SnapInvalid:
		return "invalid"
	case dmsnap.SnapMergeFailed:
		return "merge-failed"
	case dmsnap.SnapOverflow:
		return "overflow"
	}
	return "unknown"
}
