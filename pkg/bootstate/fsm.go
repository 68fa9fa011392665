package bootstate

import (
	"context"
	"errors"
	"fmt"
	"path"

	"github.com/looplab/fsm"
)

// Event names an FSM transition. The strings appear in docs/fsm.md and in
// logs; they are not stored on disk.
type Event string

// Events. See the package documentation for who fires each one and what
// must already be true on disk when it is persisted.
const (
	EventPrepare      Event = "prepare"       // fresh → fresh: record the COW path before allocating it
	EventBegin        Event = "begin"         // fresh → checkpointing (armed)
	EventBootAttempt  Event = "boot-attempt"  // checkpointing → checkpointing, counts a trial boot
	EventActivate     Event = "activate"      // checkpointing armed → active: snapshot created
	EventCommit       Event = "commit"        // checkpointing → committed
	EventCancel       Event = "cancel"        // checkpointing (armed only) → committed: nothing to roll back
	EventRollback     Event = "rollback"      // checkpointing (active only) → rollback-pending: point of no return
	EventOverflow     Event = "overflow"      // checkpointing|rollback-pending (active) → committed: COW Invalid
	EventMergeAttempt Event = "merge-attempt" // rollback-pending → rollback-pending, counts a merge boot
	EventMergeDone    Event = "merge-done"    // rollback-pending → fresh
	EventCleanupDone  Event = "cleanup-done"  // committed → fresh; fresh → fresh drops a leftover path
)

// Limits that keep every loop finite.
const (
	// MaxNativeTries bounds the native counter, like the 3-bit
	// tries_remaining of bootloader_control.
	MaxNativeTries = 7
	// DefaultNativeTries is the native counter's start value.
	DefaultNativeTries = 3
	// MaxBootAttempts is cpinit's own hard cap on counted trial boots, in
	// both counter modes. A bootloader gives a trial slot at most 7 tries
	// (libboot_control uses 6 for SetActiveBootSlot); 16 leaves room for a
	// re-activation and still ends a loop with a bootloader that never
	// counts.
	MaxBootAttempts = 16
	// MaxMergeAttempts caps boots that start or resume the merge. Each
	// resume continues where the kernel left off (snapshot.rst: merge
	// progress is kept in the COW), so many cuts still converge; only a
	// merge that fails every time reaches the cap, and then cpinit stops
	// for recovery instead of rebooting forever.
	MaxMergeAttempts = 100
)

// Errors carried by *TransitionError.Err.
var (
	ErrEventNotAllowed = errors.New("event not allowed in this state")
	ErrUnknownEvent    = errors.New("unknown event")
	ErrNotActive       = errors.New("no snapshot exists yet (use cancel or commit)")
	ErrAlreadyActive   = errors.New("snapshot already exists (use rollback or commit)")
	ErrTriesExhausted  = errors.New("native boot counter exhausted")
	ErrAttemptCap      = errors.New("boot attempt cap reached")
	ErrMergeCap        = errors.New("merge attempt cap reached")
	ErrBadBegin        = errors.New("invalid begin arguments")
	ErrBadReason       = errors.New("reason not valid for this event")
	ErrNothingToClean  = errors.New("no leftover COW file recorded")
)

// TransitionError is returned when an event is impossible in the current
// state or a guard rejects it. Use errors.As to get From and Event, and
// errors.Is with the Err* values above.
type TransitionError struct {
	From  State
	Event Event
	Err   error
	Note  string
}

func (e *TransitionError) Error() string {
	s := fmt.Sprintf("bootstate: %s in state %s: %v", e.Event, e.From, e.Err)
	if e.Note != "" {
		s += ": " + e.Note
	}
	return s
}

func (e *TransitionError) Unwrap() error { return e.Err }

// fsmEvents is the transition table of DESIGN.md, with the sub-phase and
// overflow events added. Guards that depend on record fields (armed vs
// active, counters) are in guard below; looplab/fsm enforces the rest.
var fsmEvents = fsm.Events{
	{Name: string(EventPrepare), Src: []string{"fresh"}, Dst: "fresh"},
	{Name: string(EventBegin), Src: []string{"fresh"}, Dst: "checkpointing"},
	{Name: string(EventBootAttempt), Src: []string{"checkpointing"}, Dst: "checkpointing"},
	{Name: string(EventActivate), Src: []string{"checkpointing"}, Dst: "checkpointing"},
	{Name: string(EventCommit), Src: []string{"checkpointing"}, Dst: "committed"},
	{Name: string(EventCancel), Src: []string{"checkpointing"}, Dst: "committed"},
	{Name: string(EventRollback), Src: []string{"checkpointing"}, Dst: "rollback-pending"},
	{Name: string(EventOverflow), Src: []string{"checkpointing", "rollback-pending"}, Dst: "committed"},
	{Name: string(EventMergeAttempt), Src: []string{"rollback-pending"}, Dst: "rollback-pending"},
	{Name: string(EventMergeDone), Src: []string{"rollback-pending"}, Dst: "fresh"},
	{Name: string(EventCleanupDone), Src: []string{"committed", "fresh"}, Dst: "fresh"},
}

// Events lists all events in table order.
func Events() []Event {
	out := make([]Event, 0, len(fsmEvents))
	for _, e := range fsmEvents {
		out = append(out, Event(e.Name))
	}
	return out
}

// BeginArgs are what `cpinit begin` knows once the COW file is allocated,
// pinned, and its extents are taken.
type BeginArgs struct {
	TargetSlot string      // slot the update will boot; "" on systems without slots
	COWPath    string      // absolute path of the COW file inside userdata
	Map        ExtentMap   // its extents on the userdata device
	Counter    CounterMode // who counts trial boots
	Tries      uint8       // native counter start (1..MaxNativeTries); 0 = DefaultNativeTries
}

// Step is one event to apply, with the reason to record where the event
// takes one (rollback) and the arguments of begin.
type Step struct {
	Event  Event
	Reason Reason     // rollback: abort, tries-exhausted, slot-fallback, attempt-cap
	Begin  *BeginArgs // begin only
	Path   string     // prepare only: the COW file about to be allocated
}

func (s Step) String() string {
	if s.Path != "" {
		return fmt.Sprintf("%s(%s)", s.Event, s.Path)
	}
	if s.Reason != ReasonNone {
		return fmt.Sprintf("%s(%s)", s.Event, s.Reason)
	}
	return string(s.Event)
}

// newMachine builds the looplab FSM positioned at state, with a
// before_event callback that runs the record guards and cancels the
// transition with a *TransitionError.
func newMachine(state string, r *Record, s *Step) *fsm.FSM {
	return fsm.NewFSM(state, fsmEvents, fsm.Callbacks{
		"before_event": func(_ context.Context, e *fsm.Event) {
			if err := guard(r, s); err != nil {
				e.Cancel(err)
			}
		},
	})
}

// Apply returns the record after s, or a *TransitionError. It is pure: the
// caller persists the result (Store.Save) before doing anything that
// depends on it. r is not modified.
func Apply(r Record, s Step) (Record, error) {
	terr := func(err error, note string) error {
		return &TransitionError{From: r.State, Event: s.Event, Err: err, Note: note}
	}
	if err := r.validate(); err != nil {
		return r, terr(ErrEventNotAllowed, "current record is invalid: "+err.Error())
	}
	m := newMachine(r.State.String(), &r, &s)
	err := m.Event(context.Background(), string(s.Event))
	var (
		noTrans  fsm.NoTransitionError
		canceled fsm.CanceledError
		invalid  fsm.InvalidEventError
		unknown  fsm.UnknownEventError
	)
	switch {
	case err == nil, errors.As(err, &noTrans) && noTrans.Err == nil:
		// Self-loops (boot-attempt, activate, merge-attempt) report
		// NoTransitionError; that is success here.
	case errors.As(err, &canceled):
		return r, canceled.Err
	case errors.As(err, &invalid):
		return r, terr(ErrEventNotAllowed, "")
	case errors.As(err, &unknown):
		return r, terr(ErrUnknownEvent, "")
	default:
		return r, terr(fmt.Errorf("looplab/fsm: %w", err), "")
	}
	dst, ok := ParseState(m.Current())
	if !ok {
		return r, terr(fmt.Errorf("fsm reached unknown state %q", m.Current()), "")
	}
	n := mutate(r, s, dst)
	if err := n.validate(); err != nil {
		// Unreachable if guard and mutate agree; never hand out a record
		// that EncodeRecord would refuse.
		return r, terr(fmt.Errorf("result invalid: %w", err), "")
	}
	return n, nil
}

// guard checks the conditions the state name alone does not capture.
func guard(r *Record, s *Step) error {
	terr := func(err error, note string) error {
		return &TransitionError{From: r.State, Event: s.Event, Err: err, Note: note}
	}
	switch s.Event {
	case EventPrepare:
		if err := checkCOWPath(s.Path); err != nil {
			return terr(ErrBadBegin, err.Error())
		}
		if r.COWPath != "" && r.COWPath != s.Path {
			return terr(ErrBadBegin, fmt.Sprintf("leftover COW file %s is not cleaned up yet", r.COWPath))
		}
	case EventBegin:
		b := s.Begin
		if b == nil {
			return terr(ErrBadBegin, "missing arguments")
		}
		if r.COWPath != "" && r.COWPath != b.COWPath {
			return terr(ErrBadBegin, fmt.Sprintf("leftover COW file %s is not cleaned up yet", r.COWPath))
		}
		if len(b.Map.Segments) == 0 {
			return terr(ErrBadBegin, "empty extent map")
		}
		if err := b.Map.Validate(); err != nil {
			return terr(ErrBadBegin, err.Error())
		}
		if err := checkCOWPath(b.COWPath); err != nil {
			return terr(ErrBadBegin, err.Error())
		}
		if !b.Counter.Bootloader() && b.Counter != CounterNative {
			return terr(ErrBadBegin, fmt.Sprintf("counter mode %v", b.Counter))
		}
		if b.Counter.Bootloader() && SlotIndex(b.TargetSlot) < 0 {
			return terr(ErrBadBegin, fmt.Sprintf("%v counter needs a target slot _a.._d, got %q", b.Counter, b.TargetSlot))
		}
		if len(b.TargetSlot) > MaxSlotLen || !printable(b.TargetSlot) {
			return terr(ErrBadBegin, fmt.Sprintf("target slot %q: at most %d printable bytes", b.TargetSlot, MaxSlotLen))
		}
		if b.Tries > MaxNativeTries {
			return terr(ErrBadBegin, fmt.Sprintf("tries %d > %d", b.Tries, MaxNativeTries))
		}
	case EventBootAttempt:
		if r.Counter == CounterNative && r.TriesLeft == 0 {
			return terr(ErrTriesExhausted, "")
		}
		if r.Attempts >= MaxBootAttempts {
			return terr(ErrAttemptCap, fmt.Sprintf("%d attempts", r.Attempts))
		}
	case EventActivate, EventCancel:
		if r.Active {
			return terr(ErrAlreadyActive, "")
		}
	case EventRollback, EventOverflow:
		if !r.Active {
			return terr(ErrNotActive, "")
		}
	case EventCleanupDone:
		if r.State == StateFresh && r.COWPath == "" && r.TargetSlot == "" {
			return terr(ErrNothingToClean, "")
		}
	case EventMergeAttempt:
		if r.MergeTries >= MaxMergeAttempts {
			return terr(ErrMergeCap, fmt.Sprintf("%d attempts", r.MergeTries))
		}
	}
	switch s.Event {
	case EventRollback:
		switch s.Reason {
		case ReasonAbort, ReasonTriesExhausted, ReasonSlotFallback, ReasonAttemptCap:
		default:
			return terr(ErrBadReason, s.Reason.String())
		}
	default:
		if s.Reason != ReasonNone {
			return terr(ErrBadReason, s.Reason.String())
		}
	}
	if (s.Event != EventBegin && s.Begin != nil) || (s.Event != EventPrepare && s.Path != "") {
		return terr(ErrBadBegin, "arguments given to "+string(s.Event))
	}
	return nil
}

// mutate applies the field changes of an allowed step.
func mutate(r Record, s Step, dst State) Record {
	src := r.State
	r.State = dst
	switch s.Event {
	case EventPrepare:
		// Written before the file is allocated, so that a crash between
		// allocation and begin leaves a fresh record naming the file, and
		// the next boot deletes it instead of leaking it.
		r.COWPath = s.Path
	case EventBegin:
		b := s.Begin
		tries := b.Tries
		if tries == 0 {
			tries = DefaultNativeTries
		}
		r = Record{
			State:      StateCheckpointing,
			Counter:    b.Counter,
			TriesLeft:  tries,
			TargetSlot: b.TargetSlot,
			COWPath:    b.COWPath,
			Map:        cloneMap(b.Map),
			Generation: r.Generation,
		}
		r.Fingerprint = r.Map.Fingerprint()
	case EventBootAttempt:
		r.Attempts++
		if r.Counter == CounterNative {
			r.TriesLeft--
		}
	case EventActivate:
		r.Active = true
	case EventCommit:
		r.Active, r.Reason = false, ReasonCommit
		// As MarkBootSuccessful: a successful boot leaves tries >= 1.
		r.TriesLeft = max(r.TriesLeft, 1)
	case EventCancel:
		r.Reason = ReasonCancelled
	case EventRollback:
		r.Reason, r.MergeTries = s.Reason, 0
	case EventOverflow:
		r.Active, r.Reason = false, ReasonOverflow
	case EventMergeAttempt:
		r.MergeTries++
	case EventMergeDone:
		// The merged origin holds the pre-update data, which contains the
		// COW file again (it was allocated before the checkpoint). Keep its
		// path so the next step, or the next boot, can delete it: in fresh
		// nothing can need it any more. Keep the target slot too: it is
		// the slot that must not run on this data (Decide reboots a boot
		// of it into the other slot) until another slot has booted.
		target := r.TargetSlot
		r = freshWithLeftover(r, r.COWPath, ReasonMerged)
		r.TargetSlot = target
	case EventCleanupDone:
		why := ReasonCleaned
		if src == StateFresh || r.Reason == ReasonOverflow || r.Reason == ReasonOperator {
			// Keep "merged" visible in status, and that the checkpoint
			// was lost (overflow) or given up (operator): the user must
			// learn that the rollback they may expect never happened.
			why = r.Reason
		}
		target, cancelled := r.TargetSlot, r.Reason == ReasonCancelled
		r = freshWithLeftover(r, "", why)
		if src == StateCommitted && cancelled {
			// An abandoned update: its slot must not start on this data
			// either (see merge-done); a fresh cleanup-done, run once
			// another slot booted, forgets it.
			r.TargetSlot = target
		}
	}
	return r
}

func freshWithLeftover(r Record, leftover string, why Reason) Record {
	n := NewFreshRecord()
	n.COWPath, n.Reason, n.Generation = leftover, why, r.Generation
	return n
}

func cloneMap(m ExtentMap) ExtentMap {
	m.Segments = append([]Segment(nil), m.Segments...)
	return m
}

// Allowed reports whether s would be accepted in r, without the details.
func Allowed(r Record, s Step) bool {
	_, err := Apply(r, s)
	return err == nil
}

// Diagram returns the mermaid flowchart of the transition table, as
// rendered by looplab/fsm's VisualizeWithType. A flowchart rather than a
// stateDiagram because its node ids are generated (id0, id1...), so the
// state name "rollback-pending" needs no escaping.
func Diagram() (string, error) {
	return fsm.VisualizeWithType(fsm.NewFSM("fresh", fsmEvents, nil), fsm.MermaidFlowChart)
}

func checkCOWPath(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || len(p) > MaxPathLen || !printable(p) {
		return fmt.Errorf("COW path %q must be absolute, clean, printable and at most %d bytes", p, MaxPathLen)
	}
	return nil
}
