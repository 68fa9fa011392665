package dmsnap

// The operations cpinit runs on the userdata partition. Device layout
// (DESIGN.md):
//
//	origin partition ──► Names.Origin  "snapshot-origin <origin>"     (mounted as /data)
//	COW file extents ──► Names.Cow     "linear ..." one target per extent
//	                     Names.Snap    "snapshot <origin> <cow> P <chunk>"
//
// Rollback replaces the table of Names.Origin by "snapshot-merge <origin>
// <cow> P <chunk>"; Commit and FinishMerge replace it by a plain "linear
// <origin> 0" so the device number (and a mounted filesystem) stays.
//
// Every operation first looks at what exists (DM_DEV_STATUS and
// DM_TABLE_STATUS) and then does only what is missing, so re-running it
// after a crash of this process, or from the start after a power cut (which
// leaves no dm devices, only the COW contents on disk), converges. A device
// with one of our names but a table or uuid we would not have made stops the
// operation with ErrUnexpectedState: we never guess over someone else's
// mapping.
//
// Suspend ordering, from Documentation/admin-guide/device-mapper/snapshot.rst:
// "When loading or unloading the snapshot target, the corresponding
// snapshot-origin or snapshot-merge target must be suspended. A failure to
// suspend the origin target could result in data corruption." So whenever
// the origin device exists, it is suspended (with flush and fs freeze, so
// every write already issued has completed its copy-out into the COW) around
// creating or removing Names.Snap and around changing its own table, and
// resumed afterwards; resuming snapshot-origin also recomputes its I/O split
// boundary from the registered snapshots' chunk size (dm-snap.c
// origin_resume). snapshot-merge "assumes the role of the snapshot-origin
// target and must not be loaded if the snapshot-origin is still present":
// we load it into the origin device itself, in place of snapshot-origin.
//
// The raw origin partition is never opened here: all I/O goes through dm
// devices (the COW header through Names.Cow).

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Names are the dm device names of a checkpoint.
type Names struct {
	Origin string // snapshot-origin / snapshot-merge / plain mapping of the partition
	Cow    string // linear map of the COW file's extents
	Snap   string // the snapshot
}

// DefaultNames are the names DESIGN.md uses.
var DefaultNames = Names{Origin: "cp-origin", Cow: "cp-cow", Snap: "cp-snap"}

// UUIDPrefix marks devices this package creates: uuid = UUIDPrefix + name.
const UUIDPrefix = "CPINIT-"

// Config describes one checkpoint.
type Config struct {
	Origin        Dev       // the userdata partition
	OriginSectors uint64    // its size in 512-byte sectors
	Cow           []Segment // the COW file's extents, in file order
	ChunkSectors  uint32    // snapshot chunk size in sectors (power of two; 8 = 4 KiB)
	Names         Names     // zero value: DefaultNames
	// PollInterval is how often WaitMerge reads the merge status
	// (default 250ms): the merge target raises no event as it progresses.
	PollInterval time.Duration
}

// Checkpoint runs the checkpoint operations for one Config.
type Checkpoint struct {
	c         *Client
	cfg       Config
	cow       *LinearTable
	cowDev    Dev // of Names.Cow, known once it exists
	targetsOK bool
}

// New validates cfg and returns the operations for it. It talks to the
// kernel only when an operation runs.
func New(c *Client, cfg Config) (*Checkpoint, error) {
	if cfg.Names == (Names{}) {
		cfg.Names = DefaultNames
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 250 * time.Millisecond
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cow, err := Linear(cfg.Cow)
	if err != nil {
		return nil, fmt.Errorf("COW map: %w", err)
	}
	return &Checkpoint{c: c, cfg: cfg, cow: cow}, nil
}

// Config returns the normalised configuration.
func (k *Checkpoint) Config() Config { return k.cfg }

func (cfg Config) validate() error {
	n := cfg.Names
	if n.Origin == "" || n.Cow == "" || n.Snap == "" || n.Origin == n.Cow || n.Origin == n.Snap || n.Cow == n.Snap {
		return fmt.Errorf("checkpoint names %+v: want three distinct names", n)
	}
	if cfg.Origin.IsZero() || cfg.OriginSectors == 0 {
		return fmt.Errorf("checkpoint: origin device and size are required")
	}
	if err := validChunk(cfg.ChunkSectors); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	chunk := uint64(cfg.ChunkSectors)
	if len(cfg.Cow) == 0 {
		return fmt.Errorf("checkpoint: no COW extents")
	}
	var total uint64
	segs := append([]Segment(nil), cfg.Cow...)
	for i, s := range segs {
		if s.Length == 0 || s.Start+s.Length < s.Start {
			return fmt.Errorf("checkpoint: COW extent %d (%+v) is empty or overflows", i, s)
		}
		if s.Dev == cfg.Origin {
			if s.Start+s.Length > cfg.OriginSectors {
				return fmt.Errorf("checkpoint: COW extent %d ends at sector %d, beyond the origin's %d", i, s.Start+s.Length, cfg.OriginSectors)
			}
			// The COW file lives inside the origin. If an extent shared a
			// chunk with other data, a write to that data would copy the
			// whole chunk (COW blocks included) and a merge would later
			// write that stale copy over live COW blocks. Chunk-aligned
			// extents make COW blocks and origin chunks disjoint.
			if s.Start%chunk != 0 || s.Length%chunk != 0 {
				return fmt.Errorf("checkpoint: COW extent %d (sectors %d+%d) is not aligned to the %d-sector chunk", i, s.Start, s.Length, chunk)
			}
		}
		total += s.Length
	}
	sort.Slice(segs, func(i, j int) bool {
		if segs[i].Dev != segs[j].Dev {
			return segs[i].Dev.Major < segs[j].Dev.Major || (segs[i].Dev.Major == segs[j].Dev.Major && segs[i].Dev.Minor < segs[j].Dev.Minor)
		}
		return segs[i].Start < segs[j].Start
	})
	for i := 1; i < len(segs); i++ {
		a, b := segs[i-1], segs[i]
		if a.Dev == b.Dev && a.Start+a.Length > b.Start {
			return fmt.Errorf("checkpoint: COW extents overlap on %s at sector %d", b.Dev, b.Start)
		}
	}
	// Header chunk + one metadata area + at least one data chunk.
	if total < 3*chunk {
		return fmt.Errorf("checkpoint: COW of %d sectors is smaller than 3 chunks of %d", total, chunk)
	}
	return nil
}

// kind of the table found on a device.
type kind int

const (
	kindNone   kind = iota // no such device
	kindEmpty              // device without a live table
	kindPlain              // linear <origin> 0 over the whole origin
	kindOrigin             // snapshot-origin <origin>
	kindMerge              // snapshot-merge <origin> <cow> P <chunk>
	kindSnap               // snapshot <origin> <cow> P <chunk>
	kindCow                // our COW linear map
	kindOther
)

func (k kind) String() string {
	return [...]string{"absent", "without table", "plain linear", "snapshot-origin", "snapshot-merge", "snapshot", "COW map", "foreign table"}[k]
}

type devState struct {
	name  string
	kind  kind
	info  DeviceInfo
	table []TargetSpec
}

func (d devState) exists() bool { return d.kind != kindNone }

// observe reads a device's state. A leftover inactive table (loaded by an
// earlier run that died before resuming it) is cleared: a snapshot or merge
// table registers itself with the origin as soon as it is loaded, and every
// operation loads what it needs afresh anyway.
func (k *Checkpoint) observe(name string) (devState, error) { return k.look(name, true) }

// look reads a device's state; clear says whether to drop a stale inactive
// table (operations do, under the lock; read-only reports must not, since
// another process may be between its load and its resume).
func (k *Checkpoint) look(name string, clear bool) (devState, error) {
	info, err := k.c.Info(name)
	if IsNoDevice(err) {
		return devState{name: name, kind: kindNone}, nil
	}
	if err != nil {
		return devState{}, err
	}
	if want := UUIDPrefix + name; info.UUID != want {
		return devState{}, fmt.Errorf("device %q has uuid %q, not %q: not ours: %w", name, info.UUID, want, ErrUnexpectedState)
	}
	if info.InactivePresent && clear {
		if err := k.c.ClearInactive(name); err != nil {
			return devState{}, err
		}
	}
	st := devState{name: name, info: info, kind: kindEmpty}
	if !info.ActivePresent {
		return st, nil
	}
	if st.table, err = k.c.Table(name); err != nil {
		return devState{}, err
	}
	st.kind = k.classify(st.table)
	return st, nil
}

func (k *Checkpoint) plainTable() []TargetSpec {
	return []TargetSpec{{Start: 0, Length: k.cfg.OriginSectors, Type: "linear", Params: k.cfg.Origin.String() + " 0"}}
}

func (k *Checkpoint) classify(t []TargetSpec) kind {
	switch {
	case SameTargets(t, k.plainTable()):
		return kindPlain
	case SameTargets(t, k.cow.Targets()):
		return kindCow
	case len(t) != 1 || t[0].Start != 0 || t[0].Length != k.cfg.OriginSectors:
		return kindOther
	case t[0].Type == "snapshot-origin" && t[0].Params == k.cfg.Origin.String():
		return kindOrigin
	case t[0].Type == "snapshot" || t[0].Type == "snapshot-merge":
		p, err := ParseSnapshotParams(t[0].Params)
		if err != nil || p.Origin != k.cfg.Origin || p.Store != "P" || p.ChunkSectors != k.cfg.ChunkSectors || len(p.Features) != 0 {
			return kindOther
		}
		if !k.cowDev.IsZero() && p.Cow != k.cowDev {
			return kindOther
		}
		if t[0].Type == "snapshot" {
			return kindSnap
		}
		return kindMerge
	}
	return kindOther
}

func unexpected(d devState, doing string) error {
	return fmt.Errorf("%s: device %q is %s: %w", doing, d.name, d.kind, ErrUnexpectedState)
}

func (k *Checkpoint) checkTargets() error {
	if k.targetsOK {
		return nil
	}
	if err := k.c.CheckTargets(); err != nil {
		return err
	}
	k.targetsOK = true
	return nil
}

// ensureCow makes Names.Cow exist, live and running with our extent map.
func (k *Checkpoint) ensureCow() error {
	d, err := k.observe(k.cfg.Names.Cow)
	if err != nil {
		return err
	}
	switch d.kind {
	case kindNone:
		info, err := k.c.CreateAndLoad(d.name, UUIDPrefix+d.name, k.cow)
		if err != nil {
			return err
		}
		k.cowDev = info.Dev
		return nil
	case kindEmpty:
		// Created by a run that died before loading: finish the job.
		if _, err := k.c.Load(d.name, k.cow); err != nil {
			return err
		}
	case kindCow:
	default:
		// A different extent list: the recorded geometry and the device
		// disagree. Never write through a map we did not verify.
		return unexpected(d, "COW map")
	}
	info, err := k.c.Resume(d.name) // no-op when already running
	if err != nil {
		return err
	}
	k.cowDev = info.Dev
	if _, err := k.c.EnsureNode(d.name); err != nil {
		return err
	}
	return nil
}

func (k *Checkpoint) chunkBytes() int64 { return int64(k.cfg.ChunkSectors) * 512 }

// readCowHeader reads the persistent store header through Names.Cow.
func (k *Checkpoint) readCowHeader() (CowHeader, error) {
	n := max(k.chunkBytes(), 4096)
	n = min(n, 1<<20)
	b, err := k.c.sysops().readDirect(k.c.NodePath(k.cfg.Names.Cow), int(n))
	if err != nil {
		return CowHeader{}, fmt.Errorf("COW header: %w", err)
	}
	return ParseCowHeader(b)
}

// requireCheckpoint checks that the COW holds a valid snapshot of our chunk
// size: what Reattach and StartMerge need before loading a table over it.
func (k *Checkpoint) requireCheckpoint(doing string) error {
	h, err := k.readCowHeader()
	if err != nil {
		return err
	}
	switch h.State {
	case CowValid:
		if h.ChunkSectors != k.cfg.ChunkSectors {
			return fmt.Errorf("%s: COW header chunk size %d, configured %d: %w", doing, h.ChunkSectors, k.cfg.ChunkSectors, ErrUnexpectedState)
		}
		return nil
	case CowInvalidated:
		return fmt.Errorf("%s: COW header says the snapshot was invalidated: %w", doing, ErrSnapshotInvalid)
	default:
		return fmt.Errorf("%s: COW header is %s: %w", doing, h.State, ErrNoCheckpoint)
	}
}

// suspended runs fn with the origin device suspended (if it has a live
// table) and resumes it afterwards, which also swaps in a table fn loaded.
// If fn fails, resume is still attempted unless fn says the origin must stay
// suspended (keepSuspendedError), because resuming would let writes reach
// the origin without the copy-out that protects the checkpoint.
func (k *Checkpoint) suspended(origin devState, fn func() error) error {
	if !origin.exists() {
		return fn()
	}
	if origin.info.ActivePresent {
		if err := k.c.Suspend(origin.name, SuspendOptions{}); err != nil {
			return err
		}
	}
	err := fn()
	var keep *keepSuspendedError
	if errors.As(err, &keep) {
		return err
	}
	info, ierr := k.c.Info(origin.name)
	if ierr != nil {
		return errors.Join(err, ierr)
	}
	if info.ActivePresent || info.InactivePresent {
		if _, rerr := k.c.Resume(origin.name); rerr != nil {
			return errors.Join(err, rerr)
		}
	}
	return err
}

type keepSuspendedError struct{ err error }

func (e *keepSuspendedError) Error() string {
	return e.err.Error() + " (origin left suspended: resuming it would let writes bypass the checkpoint)"
}
func (e *keepSuspendedError) Unwrap() error { return e.err }

// checkNotOpen refuses to go on when a device we are about to remove is
// open, before anything is suspended: removing would fail with EBUSY while
// the origin (and a filesystem on it) stays frozen.
func checkNotOpen(d devState, doing string) error {
	if d.exists() && d.info.OpenCount > 0 {
		return fmt.Errorf("%s: device %q is open (%d users); unmount or close it first", doing, d.name, d.info.OpenCount)
	}
	return nil
}

func (k *Checkpoint) snapTable() (Table, error) {
	return Snapshot(k.cfg.Origin, k.cowDev, k.cfg.OriginSectors, k.cfg.ChunkSectors)
}

// attach makes the snapshot and the snapshot-origin live, zeroing the COW
// header first when fresh is set. Shared by StartCheckpoint and Reattach.
func (k *Checkpoint) attach(ctx context.Context, fresh bool) error {
	doing := "reattach checkpoint"
	if fresh {
		doing = "start checkpoint"
	}
	unlock, origin, snap, err := k.lockAndObserve(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	switch origin.kind {
	case kindNone, kindEmpty, kindOrigin:
	case kindPlain:
		if !fresh {
			// A plain origin means this boot committed or merged: the COW
			// no longer describes the origin. Reattaching it would make a
			// later merge write stale chunks over current data.
			return fmt.Errorf("%s: origin %q is mapped plain (checkpoint committed or merged): %w", doing, origin.name, ErrUnexpectedState)
		}
	default:
		return unexpected(origin, doing)
	}
	if err := k.ensureCow(); err != nil {
		return err
	}
	if snap.table != nil {
		snap.kind = k.classify(snap.table) // now that the COW device is known
	}
	if fresh && snap.kind == kindSnap && origin.kind == kindPlain {
		// A snapshot beside a running plain mapping of its origin (an
		// earlier run died between creating the snapshot and loading
		// snapshot-origin): writes may have bypassed it. Start over.
		if err := checkNotOpen(snap, doing); err != nil {
			return err
		}
		if err := k.suspended(origin, func() error { return k.c.Remove(snap.name) }); err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
		snap.kind = kindNone
	}
	needSnap := false
	switch snap.kind {
	case kindSnap:
		// Already attached by an earlier run in this boot.
	case kindNone, kindEmpty:
		needSnap = true
		if !fresh && origin.kind == kindOrigin && origin.info.ActivePresent && !origin.info.Suspended {
			// snapshot-origin running without its snapshot: writes may
			// have reached the origin without a copy-out. Our operations
			// never leave this state; the checkpoint can't be trusted.
			return fmt.Errorf("%s: %q runs snapshot-origin without snapshot %q: %w", doing, origin.name, snap.name, ErrUnexpectedState)
		}
		if fresh {
			// dm-snap-persistent.c read_header: a zero magic starts a new
			// snapshot; anything else is parsed as an existing one. The COW
			// file's blocks hold whatever the disk had: zero them.
			if err := k.c.sysops().zeroDirect(k.c.NodePath(k.cfg.Names.Cow), k.chunkBytes()); err != nil {
				return fmt.Errorf("%s: zero COW header: %w", doing, err)
			}
		} else if err := k.requireCheckpoint(doing); err != nil {
			return err
		}
	default:
		return unexpected(snap, doing)
	}
	st, err := k.snapTable()
	if err != nil {
		return err
	}
	ot, err := SnapshotOrigin(k.cfg.Origin, k.cfg.OriginSectors)
	if err != nil {
		return err
	}
	makeSnap := func() error {
		if !needSnap {
			return nil
		}
		if snap.kind == kindEmpty {
			if _, err := k.c.Load(snap.name, st); err != nil {
				return err
			}
			_, err := k.c.Resume(snap.name)
			return err
		}
		_, err := k.c.CreateAndLoad(snap.name, UUIDPrefix+snap.name, st)
		return err
	}
	if !origin.exists() {
		// Nothing maps the origin yet, so nothing can write to it: create
		// the snapshot, then the origin device on top.
		if err := makeSnap(); err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
		if _, err := k.c.CreateAndLoad(origin.name, UUIDPrefix+origin.name, ot); err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	} else {
		// snapshot.rst: the origin must be suspended while the snapshot
		// target is loaded. It stays suspended until snapshot-origin is
		// live (the resume in suspended swaps it in): a write passing
		// between the snapshot taking its view and the origin target
		// knowing of it would change the origin without a copy-out.
		err := k.suspended(origin, func() error {
			if err := makeSnap(); err != nil {
				if !fresh && origin.kind == kindOrigin {
					return &keepSuspendedError{err}
				}
				return err
			}
			if origin.kind != kindOrigin {
				if _, err := k.c.Load(origin.name, ot); err != nil {
					if origin.kind == kindPlain {
						// Don't resume the plain mapping beside the new
						// snapshot: writes would bypass it. Drop it; the
						// checkpoint has not started.
						if rerr := k.c.Remove(snap.name); rerr != nil {
							return &keepSuspendedError{errors.Join(err, rerr)}
						}
					}
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	}
	if fresh {
		// The snapshot constructor wrote the new header without a cache
		// flush (dm-snap-persistent.c write_header); exceptions are later
		// committed with REQ_PREFLUSH|REQ_FUA, but until the first one a
		// power cut could lose the header while the caller has already
		// recorded "checkpoint active". Make it durable now (also when a
		// re-run finds the snapshot made by a run that failed here).
		if err := k.c.sysops().flush(k.c.NodePath(k.cfg.Names.Cow)); err != nil {
			return fmt.Errorf("%s: flush COW: %w", doing, err)
		}
	}
	if _, err := k.c.EnsureNode(origin.name); err != nil {
		return err
	}
	ss, err := k.SnapshotStatus()
	if err != nil {
		return err
	}
	return statusError(ss, doing)
}

// observeOriginSnap reads the origin and snapshot devices, after learning
// the COW device number (if the COW map exists) so tables referencing
// another COW device are recognised as foreign.
// lockAndObserve starts every operation the same way: take the control-node
// lock (released by the returned unlock), stop if ctx is done, check the
// snapshot targets when the operation loads one, and read what is mapped now,
// so that the operation does only what is missing.
func (k *Checkpoint) lockAndObserve(ctx context.Context, needTargets bool) (unlock func(), origin, snap devState, err error) {
	unlock, err = k.c.Lock()
	if err != nil {
		return nil, devState{}, devState{}, err
	}
	fail := func(err error) (func(), devState, devState, error) {
		unlock()
		return nil, devState{}, devState{}, err
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if needTargets {
		if err := k.checkTargets(); err != nil {
			return fail(err)
		}
	}
	if origin, snap, err = k.observeOriginSnap(); err != nil {
		return fail(err)
	}
	return unlock, origin, snap, nil
}

func (k *Checkpoint) observeOriginSnap() (origin, snap devState, err error) {
	if cow, err := k.c.Info(k.cfg.Names.Cow); err == nil {
		k.cowDev = cow.Dev
	} else if !IsNoDevice(err) {
		return devState{}, devState{}, err
	}
	if origin, err = k.observe(k.cfg.Names.Origin); err != nil {
		return devState{}, devState{}, err
	}
	if snap, err = k.observe(k.cfg.Names.Snap); err != nil {
		return devState{}, devState{}, err
	}
	return origin, snap, nil
}

func statusError(st SnapshotStatus, doing string) error {
	switch st.State {
	case SnapInvalid:
		return fmt.Errorf("%s: %w", doing, ErrSnapshotInvalid)
	case SnapOverflow:
		return fmt.Errorf("%s: %w", doing, ErrSnapshotOverflow)
	case SnapMergeFailed:
		return fmt.Errorf("%s: %w", doing, ErrMergeFailed)
	}
	return nil
}

// StartCheckpoint starts a new, empty checkpoint: it maps the COW, zeroes
// its header chunk through that map, creates the snapshot and then puts
// snapshot-origin on the origin device (creating it, or replacing a plain
// mapping with the origin suspended).
//
// Re-running it in the same boot converges without touching an attached
// snapshot. Across a power cut it zeroes the header again, discarding
// whatever the checkpoint had recorded: the caller must persist "checkpoint
// active" after StartCheckpoint returns and before anything writes to the
// origin device, and from then on use Reattach.
func (k *Checkpoint) StartCheckpoint(ctx context.Context) error { return k.attach(ctx, true) }

// Reattach maps an existing checkpoint on a later boot: COW map, snapshot
// (after checking the COW header is a valid snapshot of our chunk size) and
// snapshot-origin. It fails with ErrNoCheckpoint if the COW holds no
// snapshot and ErrSnapshotInvalid if the kernel had dropped it.
func (k *Checkpoint) Reattach(ctx context.Context) error { return k.attach(ctx, false) }

// Commit keeps the current data: it drops the snapshot and the COW map and
// leaves the origin device mapped plain (linear over the whole partition),
// creating it if needed. With the origin suspended it removes the snapshot
// and swaps snapshot-origin for linear, as LVM does after removing the last
// snapshot (a snapshot-origin with no snapshot would still split every
// write). The COW file may be deleted once Commit returns.
func (k *Checkpoint) Commit(ctx context.Context) error {
	const doing = "commit checkpoint"
	unlock, origin, snap, err := k.lockAndObserve(ctx, false)
	if err != nil {
		return err
	}
	defer unlock()
	switch origin.kind {
	case kindNone, kindEmpty, kindPlain, kindOrigin:
	default:
		// A merge has started: the origin already holds a mix; only
		// finishing the merge makes it consistent.
		return unexpected(origin, doing)
	}
	if snap.exists() && snap.kind != kindSnap && snap.kind != kindEmpty {
		return unexpected(snap, doing)
	}
	if err := checkNotOpen(snap, doing); err != nil {
		return err
	}
	plain := plainTable{k.plainTable()}
	switch {
	case origin.kind == kindNone:
		if snap.exists() {
			if err := k.c.Remove(snap.name); err != nil {
				return fmt.Errorf("%s: %w", doing, err)
			}
		}
		if _, err := k.c.CreateAndLoad(origin.name, UUIDPrefix+origin.name, plain); err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	case origin.kind != kindPlain || snap.exists() || origin.info.Suspended:
		err := k.suspended(origin, func() error {
			if snap.exists() {
				if err := k.c.Remove(snap.name); err != nil {
					return err
				}
			}
			if origin.kind != kindPlain {
				if _, err := k.c.Load(origin.name, plain); err != nil {
					return k.restoreSnapshot(origin, snap, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	}
	if _, err := k.c.EnsureNode(origin.name); err != nil {
		return err
	}
	return k.removeIfExists(k.cfg.Names.Cow, doing)
}

func (k *Checkpoint) removeIfExists(name, doing string) error {
	d, err := k.observe(name)
	if err != nil {
		return err
	}
	if !d.exists() {
		return nil
	}
	if err := k.c.Remove(name); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	return nil
}

// plainTable is the whole-origin linear mapping; the origin device keeps
// its number when its table is swapped between this and the snapshot targets.
type plainTable struct{ specs []TargetSpec }

func (t plainTable) Targets() []TargetSpec { return t.specs }
func (t plainTable) Sectors() uint64       { return t.specs[0].Length }
func (plainTable) sealed()                 {}

// StartMerge starts rolling the origin back to the checkpoint: it loads
// snapshot-merge into the origin device in place of snapshot-origin. When
// a snapshot is attached (rollback in the running system) the origin is
// suspended, the snapshot removed, the merge table loaded (its constructor
// reads the COW metadata, complete on disk since the suspend flushed every
// copy-out) and the origin resumed, which starts the merge. At boot (no
// devices) it maps the COW and creates the origin device with the merge
// table. If the merge is already loaded it only makes sure it runs, so after
// a power cut calling StartMerge again resumes the merge from the progress
// the kernel committed in the COW metadata.
//
// The COW header must be a valid snapshot (ErrNoCheckpoint,
// ErrSnapshotInvalid otherwise): merging a zeroed or invalidated COW would
// do nothing while the caller believes it rolled back. The origin device must
// not be open when the merge starts (ErrOriginInUse): the data changes under
// it at once.
func (k *Checkpoint) StartMerge(ctx context.Context) error {
	const doing = "start merge"
	unlock, origin, snap, err := k.lockAndObserve(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	switch origin.kind {
	case kindNone, kindEmpty, kindOrigin:
	case kindMerge:
		if err := k.ensureCow(); err != nil {
			return err
		}
		if origin.info.Suspended {
			if _, err := k.c.Resume(origin.name); err != nil {
				return fmt.Errorf("%s: %w", doing, err)
			}
		}
		st, err := k.MergeStatus()
		if err != nil {
			return err
		}
		return statusError(st, doing)
	default:
		// kindPlain: this boot already committed or finished a merge.
		return unexpected(origin, doing)
	}
	if origin.info.OpenCount > 0 {
		// Starting a merge rewrites, at once, every block the checkpoint
		// saved: a filesystem mounted on the origin would keep its cached
		// metadata and write it back over the rolled-back blocks. LVM
		// likewise defers the merge of an open origin to its next
		// activation. Once started, the merging origin may be opened
		// (snapshot.rst): reads of unmerged chunks come from the COW.
		return fmt.Errorf("%s: %q has %d users (mounted?); unmount it or merge at the next boot: %w", doing, origin.name, origin.info.OpenCount, ErrOriginInUse)
	}
	if err := k.ensureCow(); err != nil {
		return err
	}
	if err := k.requireCheckpoint(doing); err != nil {
		return err
	}
	if snap.table != nil {
		snap.kind = k.classify(snap.table) // now that the COW device is known
	}
	if snap.exists() && snap.kind != kindSnap && snap.kind != kindEmpty {
		return unexpected(snap, doing)
	}
	if err := checkNotOpen(snap, doing); err != nil {
		return err
	}
	mt, err := SnapshotMerge(k.cfg.Origin, k.cowDev, k.cfg.OriginSectors, k.cfg.ChunkSectors)
	if err != nil {
		return err
	}
	switch origin.kind {
	case kindNone:
		if snap.exists() {
			if err := k.c.Remove(snap.name); err != nil {
				return fmt.Errorf("%s: %w", doing, err)
			}
		}
		if _, err := k.c.CreateAndLoad(origin.name, UUIDPrefix+origin.name, mt); err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	default:
		err := k.suspended(origin, func() error {
			if snap.exists() {
				if err := k.c.Remove(snap.name); err != nil {
					return err
				}
			}
			if _, err := k.c.Load(origin.name, mt); err != nil {
				return k.restoreSnapshot(origin, snap, err)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	}
	if _, err := k.c.EnsureNode(origin.name); err != nil {
		return err
	}
	st, err := k.MergeStatus()
	if err != nil {
		return err
	}
	return statusError(st, doing)
}

// restoreSnapshot runs when replacing snapshot-origin failed after the
// snapshot was removed (origin suspended): snapshot-origin is still the live
// table, so before the origin resumes the snapshot must be back, or writes
// would reach the origin without a copy-out and the COW, still on disk,
// would no longer describe it. If that fails too the origin stays suspended.
func (k *Checkpoint) restoreSnapshot(origin, snap devState, err error) error {
	if origin.kind != kindOrigin || !snap.exists() {
		return err
	}
	if rerr := k.reloadSnapshot(snap.name); rerr != nil {
		return &keepSuspendedError{errors.Join(err, rerr)}
	}
	return err
}

// reloadSnapshot re-creates the snapshot (origin suspended by the caller).
func (k *Checkpoint) reloadSnapshot(name string) error {
	t, err := k.snapTable()
	if err != nil {
		return err
	}
	d, err := k.observe(name)
	if err != nil {
		return err
	}
	switch d.kind {
	case kindSnap:
		return nil
	case kindNone:
		_, err = k.c.CreateAndLoad(name, UUIDPrefix+name, t)
		return err
	case kindEmpty:
		if _, err := k.c.Load(name, t); err != nil {
			return err
		}
		_, err = k.c.Resume(name)
		return err
	}
	return unexpected(d, "restore snapshot")
}

// SnapshotStatus returns the status of the attached snapshot.
func (k *Checkpoint) SnapshotStatus() (SnapshotStatus, error) {
	return k.targetStatus(k.cfg.Names.Snap, "snapshot")
}

// MergeStatus returns the status of the merging origin.
func (k *Checkpoint) MergeStatus() (SnapshotStatus, error) {
	return k.targetStatus(k.cfg.Names.Origin, "snapshot-merge")
}

func (k *Checkpoint) targetStatus(name, typ string) (SnapshotStatus, error) {
	specs, err := k.c.Status(name)
	if err != nil {
		return SnapshotStatus{}, err
	}
	if len(specs) != 1 || specs[0].Type != typ {
		return SnapshotStatus{}, fmt.Errorf("status of %q: want one %s target, have %v: %w", name, typ, specs, ErrUnexpectedState)
	}
	st, err := ParseSnapshotStatus(specs[0].Params)
	if err != nil {
		return SnapshotStatus{}, fmt.Errorf("status of %q: %w", name, err)
	}
	return st, nil
}

// Progress reports a running merge.
type Progress struct {
	BytesLeft  uint64        // COW data still to copy back
	BytesTotal uint64        // BytesLeft when WaitMerge started
	Rate       float64       // bytes per second since WaitMerge started
	Elapsed    time.Duration // since WaitMerge started
	ETA        time.Duration // at Rate; 0 when unknown
	Status     SnapshotStatus
	Done       bool
}

// WaitMerge polls the merge status every PollInterval until the merge is
// done (allocated == metadata, snapshot.rst), calling progress (if not nil)
// after every poll. It returns ErrSnapshotInvalid / ErrMergeFailed when the
// kernel reports those, and ctx's error when cancelled (the merge goes on in
// the kernel regardless).
func (k *Checkpoint) WaitMerge(ctx context.Context, progress func(Progress)) error {
	start := time.Now()
	var first uint64
	t := time.NewTicker(k.cfg.PollInterval)
	defer t.Stop()
	for i := 0; ; i++ {
		st, err := k.MergeStatus()
		if err != nil {
			return err
		}
		if err := statusError(st, "merge"); err != nil {
			return err
		}
		left := st.DataSectors() * 512
		if i == 0 {
			first = left
		}
		p := Progress{BytesLeft: left, BytesTotal: first, Elapsed: time.Since(start), Status: st, Done: st.MergeDone()}
		if secs := p.Elapsed.Seconds(); secs > 0 && first > left {
			p.Rate = float64(first-left) / secs
			p.ETA = time.Duration(float64(left) / p.Rate * float64(time.Second))
		}
		if progress != nil {
			progress(p)
		}
		if p.Done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// FinishMerge ends a completed merge: with the origin suspended it replaces
// snapshot-merge by the plain mapping, then removes the COW map. It refuses
// (ErrMergeNotDone) while chunks remain. Re-running it after it succeeded is
// a no-op; after a power cut, run StartMerge first (the merge then completes
// at once, its progress being on disk).
func (k *Checkpoint) FinishMerge(ctx context.Context) error {
	const doing = "finish merge"
	unlock, origin, _, err := k.lockAndObserve(ctx, false)
	if err != nil {
		return err
	}
	defer unlock()
	switch origin.kind {
	case kindMerge:
		st, err := k.MergeStatus()
		if err != nil {
			return err
		}
		if err := statusError(st, doing); err != nil {
			return err
		}
		if !st.MergeDone() {
			return fmt.Errorf("%s: %d bytes left: %w", doing, st.DataSectors()*512, ErrMergeNotDone)
		}
		// The merge target's presuspend stops its (finished) merge
		// thread; the swap then drops it (dm-snap.c snapshot_merge_presuspend).
		err = k.suspended(origin, func() error {
			_, err := k.c.Load(origin.name, plainTable{k.plainTable()})
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	case kindPlain:
		if origin.info.Suspended {
			if _, err := k.c.Resume(origin.name); err != nil {
				return fmt.Errorf("%s: %w", doing, err)
			}
		}
	default:
		return unexpected(origin, doing)
	}
	if err := k.removeIfExists(k.cfg.Names.Snap, doing); err != nil {
		return err
	}
	return k.removeIfExists(k.cfg.Names.Cow, doing)
}

// MapPlain maps the origin without any checkpoint (linear over the whole
// partition), for boots in the fresh state. It refuses when a snapshot or
// merge is mapped: use Commit or FinishMerge.
func (k *Checkpoint) MapPlain(ctx context.Context) error {
	const doing = "map origin"
	unlock, origin, snap, err := k.lockAndObserve(ctx, false)
	if err != nil {
		return err
	}
	defer unlock()
	if snap.exists() {
		return unexpected(snap, doing)
	}
	plain := plainTable{k.plainTable()}
	switch origin.kind {
	case kindNone:
		if _, err := k.c.CreateAndLoad(origin.name, UUIDPrefix+origin.name, plain); err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	case kindEmpty:
		if _, err := k.c.Load(origin.name, plain); err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
		fallthrough
	case kindPlain:
		if _, err := k.c.Resume(origin.name); err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	default:
		return unexpected(origin, doing)
	}
	_, err = k.c.EnsureNode(origin.name)
	return err
}

// Teardown removes all three devices and leaves the disk as it is: a
// checkpoint stays recorded in the COW and can be reattached or merged on a
// later boot; a merge stops where it is and resumes when StartMerge runs
// again. Nothing may have the devices open. The origin is suspended before
// the snapshot is removed (snapshot.rst).
func (k *Checkpoint) Teardown(ctx context.Context) error {
	const doing = "tear down"
	unlock, origin, snap, err := k.lockAndObserve(ctx, false)
	if err != nil {
		return err
	}
	defer unlock()
	if err := checkNotOpen(origin, doing); err != nil {
		return err
	}
	if err := checkNotOpen(snap, doing); err != nil {
		return err
	}
	if snap.exists() {
		if origin.info.ActivePresent {
			if err := k.c.Suspend(origin.name, SuspendOptions{}); err != nil {
				return fmt.Errorf("%s: %w", doing, err)
			}
		}
		if err := k.c.Remove(snap.name); err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	}
	if origin.exists() {
		if err := k.c.Remove(origin.name); err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
	}
	return k.removeIfExists(k.cfg.Names.Cow, doing)
}

// State summarises what is mapped, for status reports.
type State struct {
	Origin, Cow, Snap string          // kind of each device: "absent", "snapshot-origin", ...
	Snapshot          *SnapshotStatus // of the snapshot, when attached
	Merge             *SnapshotStatus // of the origin, when merging
}

// Observe reports the current mapping without changing anything. It takes
// no lock, so it can run while another process merges.
func (k *Checkpoint) Observe() (State, error) {
	var s State
	cow, err := k.look(k.cfg.Names.Cow, false)
	if err != nil {
		return s, err
	}
	if cow.exists() {
		k.cowDev = cow.info.Dev
	}
	origin, err := k.look(k.cfg.Names.Origin, false)
	if err != nil {
		return s, err
	}
	snap, err := k.look(k.cfg.Names.Snap, false)
	if err != nil {
		return s, err
	}
	s.Origin, s.Cow, s.Snap = origin.kind.String(), cow.kind.String(), snap.kind.String()
	if snap.kind == kindSnap {
		st, err := k.SnapshotStatus()
		if err != nil {
			return s, err
		}
		s.Snapshot = &st
	}
	if origin.kind == kindMerge {
		st, err := k.MergeStatus()
		if err != nil {
			return s, err
		}
		s.Merge = &st
	}
	return s, nil
}
