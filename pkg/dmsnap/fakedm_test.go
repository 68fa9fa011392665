package dmsnap

// A fake device-mapper for host tests of the checkpoint operations. It
// answers the ioctls through the real codec, keeps devices with live and
// inactive tables, suspension and open counts, emulates what the snapshot
// constructor does to the COW header, and checks the ordering rules of
// snapshot.rst on every change. It can fail the n-th state-changing step,
// either once (the operation's error path runs) or for good (the process
// "dies" there), so every operation can be interrupted at every point and
// re-run.

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
)

type fakeDev struct {
	name, uuid     string
	dev            Dev
	live, inactive []TargetSpec
	suspended      bool
	open           int
	eventNr        uint32
}

type fakeDM struct {
	devs      map[string]*fakeDev
	nextMinor uint32
	header    []byte // the COW's first 16 bytes, on "disk": survives reboots
	cowSize   uint64
	nodeDir   string

	steps      int  // state-changing steps so far
	failAt     int  // fail this step (1-based); 0: never
	die        bool // after failing, fail everything (a crash)
	dead       bool
	violations []string
}

func newFakeDM(t *testing.T, cowSectors uint64) *fakeDM {
	return &fakeDM{devs: map[string]*fakeDev{}, header: make([]byte, 16), cowSize: cowSectors, nodeDir: t.TempDir()}
}

// client returns a Client wired to the fake: a new "process".
func (f *fakeDM) client() *Client {
	return &Client{fd: 3, NodeDir: f.nodeDir, RemoveTries: 1, sys: &sysOps{
		ioctl:      f.ioctl,
		makeNode:   func(string, Dev) error { return f.step("mknod") },
		readDirect: f.readDirect,
		zeroDirect: f.zeroDirect,
		flush:      func(string) error { return f.step("flush") },
		lock:       func(int) error { return nil },
		unlock:     func(int) error { return nil },
	}}
}

// reboot drops all dm state; the disk (COW header) stays.
func (f *fakeDM) reboot() {
	f.devs = map[string]*fakeDev{}
}

func (f *fakeDM) step(what string) error {
	if f.dead {
		return syscall.EIO
	}
	f.steps++
	if f.steps == f.failAt {
		f.dead = f.die
		return fmt.Errorf("injected failure at step %d (%s): %w", f.steps, what, syscall.EIO)
	}
	return nil
}

func (f *fakeDM) violate(format string, args ...any) {
	f.violations = append(f.violations, fmt.Sprintf(format, args...))
}

func (f *fakeDM) byDev(d Dev) *fakeDev {
	for _, x := range f.devs {
		if x.dev == d {
			return x
		}
	}
	return nil
}

func snapArgs(s TargetSpec) (SnapshotParams, bool) {
	if s.Type != "snapshot" && s.Type != "snapshot-merge" {
		return SnapshotParams{}, false
	}
	p, err := ParseSnapshotParams(s.Params)
	return p, err == nil
}

func firstType(t []TargetSpec) string {
	if len(t) == 0 {
		return ""
	}
	return t[0].Type
}

// originTargets are the live snapshot-origin / snapshot-merge devices of the
// raw origin o: what snapshot.rst says must be suspended while a snapshot
// table is loaded or unloaded.
func (f *fakeDM) checkOriginSuspended(o Dev, doing string) {
	for _, d := range f.devs {
		if len(d.live) == 0 || d.suspended {
			continue
		}
		typ := firstType(d.live)
		if typ == "snapshot-origin" && d.live[0].Params == o.String() {
			f.violate("%s while origin target %q is running", doing, d.name)
		}
		if p, ok := snapArgs(d.live[0]); ok && typ == "snapshot-merge" && p.Origin == o {
			f.violate("%s while merge target %q is running", doing, d.name)
		}
	}
}

// checkProtected: a running snapshot-origin must have a live snapshot, and
// while a snapshot lives no plain mapping of its origin may run; otherwise
// writes reach the origin without a copy-out.
func (f *fakeDM) checkProtected(doing string) {
	for _, d := range f.devs {
		if len(d.live) != 1 || d.suspended || d.live[0].Type != "linear" {
			continue
		}
		for _, s := range f.devs {
			if p, ok := snapArgs(firstOr(s.live)); ok && firstType(s.live) == "snapshot" && d.live[0].Params == p.Origin.String()+" 0" {
				f.violate("%s: plain mapping %q of the origin runs beside snapshot %q", doing, d.name, s.name)
			}
		}
	}
	for _, d := range f.devs {
		if len(d.live) == 0 || d.suspended || firstType(d.live) != "snapshot-origin" {
			continue
		}
		ok := false
		for _, s := range f.devs {
			if p, isSnap := snapArgs(firstOr(s.live)); isSnap && firstType(s.live) == "snapshot" && p.Origin.String() == d.live[0].Params {
				ok = true
			}
		}
		if !ok {
			f.violate("%s: origin target %q runs without a snapshot", doing, d.name)
		}
	}
}

func firstOr(t []TargetSpec) TargetSpec {
	if len(t) == 0 {
		return TargetSpec{}
	}
	return t[0]
}

func (f *fakeDM) answer(buf []byte, d *fakeDev, flags uint32) {
	h := ioctlHeader{Version: [3]uint32{4, 47, 0}, DataStart: dataStart, DataSize: ioctlDataOffset, Flags: flags}
	if d != nil {
		h.Name, h.UUID, h.Dev, h.OpenCount, h.EventNr = d.name, d.uuid, encodeDev(d.dev), int32(d.open), d.eventNr
		h.TargetCount = uint32(len(d.live))
		if d.suspended {
			h.Flags |= flagSuspend
		}
		if d.live != nil {
			h.Flags |= flagActivePresent
		}
		if d.inactive != nil {
			h.Flags |= flagInactivePresent
		}
	}
	if err := putHeader(buf, &h); err != nil {
		panic(err)
	}
}

func (f *fakeDM) ioctl(_ int, c cmd, buf []byte) error {
	if f.dead {
		return syscall.EIO
	}
	req, err := parseHeader(buf)
	if err != nil {
		return syscall.EINVAL
	}
	d := f.devs[req.Name]
	mutating := map[cmd]bool{cmdDevCreate: true, cmdTableLoad: true, cmdTableClear: true, cmdDevSuspend: true, cmdDevRemove: true}
	if mutating[c] {
		if err := f.step(c.String() + " " + req.Name); err != nil {
			return syscall.EIO
		}
	}
	switch c {
	case cmdVersion:
		f.answer(buf, nil, 0)
	case cmdListVersions:
		copy(buf, kernelVersions([]TargetVersion{{"snapshot-merge", [3]uint32{1, 5, 0}}, {"snapshot-origin", [3]uint32{1, 9, 0}}, {"snapshot", [3]uint32{1, 16, 0}}, {"linear", [3]uint32{1, 4, 0}}}, len(buf)))
	case cmdDevCreate:
		if d != nil {
			return syscall.EBUSY
		}
		d = &fakeDev{name: req.Name, uuid: req.UUID, dev: Dev{254, f.nextMinor}}
		f.nextMinor++
		f.devs[req.Name] = d
		f.answer(buf, d, 0)
	case cmdDevStatus:
		if d == nil {
			return syscall.ENXIO
		}
		f.answer(buf, d, 0)
	case cmdTableLoad:
		if d == nil {
			return syscall.ENXIO
		}
		specs, err := kernelPopulate(buf)
		if err != nil {
			return syscall.EINVAL
		}
		if err := f.construct(d, specs); err != nil {
			return err
		}
		d.inactive = specs
		f.answer(buf, d, 0)
	case cmdTableClear:
		if d == nil {
			return syscall.ENXIO
		}
		d.inactive = nil
		f.answer(buf, d, 0)
	case cmdDevSuspend:
		if d == nil {
			return syscall.ENXIO
		}
		if req.Flags&flagSuspend != 0 {
			d.suspended = true
		} else {
			if d.inactive != nil {
				if p, ok := snapArgs(firstOr(d.inactive)); ok && firstType(d.inactive) == "snapshot" {
					f.checkOriginSuspended(p.Origin, "resuming snapshot "+d.name)
				}
				if p, ok := snapArgs(firstOr(d.live)); ok && firstType(d.live) == "snapshot" {
					f.checkOriginSuspended(p.Origin, "swapping out snapshot "+d.name)
				}
				if firstType(d.inactive) == "snapshot-merge" && firstType(d.live) != "snapshot-merge" && d.open > 0 {
					f.violate("merge swapped in under open device %q", d.name)
				}
				d.live, d.inactive = d.inactive, nil
			} else if d.live == nil && d.suspended {
				return syscall.EINVAL
			}
			d.suspended = false
			d.eventNr++
			f.checkProtected("resume " + d.name)
		}
		f.answer(buf, d, 0)
	case cmdDevRemove:
		if d == nil {
			return syscall.ENXIO
		}
		if d.open > 0 {
			return syscall.EBUSY
		}
		for _, o := range f.devs {
			for _, t := range [][]TargetSpec{o.live, o.inactive} {
				for _, s := range t {
					if strings.Contains(" "+s.Params+" ", " "+d.dev.String()+" ") {
						return syscall.EBUSY
					}
				}
			}
		}
		if p, ok := snapArgs(firstOr(d.live)); ok && firstType(d.live) == "snapshot" {
			f.checkOriginSuspended(p.Origin, "removing snapshot "+d.name)
		}
		delete(f.devs, req.Name)
		f.checkProtected("remove " + d.name)
		f.answer(buf, nil, 0)
	case cmdTableStatus:
		if d == nil {
			return syscall.ENXIO
		}
		table := d.live
		if req.Flags&flagQueryInactive != 0 {
			table = d.inactive
		}
		out := make([]TargetSpec, len(table))
		copy(out, table)
		if req.Flags&flagStatusTable == 0 {
			for i := range out {
				_, isSnap := snapArgs(out[i])
				out[i].Params = ""
				if isSnap {
					out[i].Params = f.snapStatus()
				}
			}
		}
		h := ioctlHeader{Name: d.name, UUID: d.uuid, Dev: encodeDev(d.dev), OpenCount: int32(d.open), EventNr: d.eventNr}
		if d.suspended {
			h.Flags |= flagSuspend
		}
		if d.live != nil {
			h.Flags |= flagActivePresent
		}
		if d.inactive != nil {
			h.Flags |= flagInactivePresent
		}
		copy(buf, kernelStatusAnswer(h, out, len(buf)))
	default:
		return syscall.ENOTTY
	}
	return nil
}

func (f *fakeDM) snapStatus() string {
	h, _ := ParseCowHeader(f.header)
	if h.State == CowInvalidated {
		return "Invalid"
	}
	// Everything merged at once: allocated == metadata.
	return fmt.Sprintf("16/%d 16", f.cowSize)
}

// construct emulates the table constructors' checks and side effects.
func (f *fakeDM) construct(d *fakeDev, specs []TargetSpec) error {
	for _, s := range specs {
		p, ok := snapArgs(s)
		if !ok {
			continue
		}
		cow := f.byDev(p.Cow)
		if cow == nil || cow.live == nil {
			return syscall.ENXIO
		}
		// dm-snap-persistent.c read_header.
		h, _ := ParseCowHeader(f.header)
		switch h.State {
		case CowFresh:
			ne.PutUint32(f.header[0:], cowMagic)
			ne.PutUint32(f.header[4:], 1)
			ne.PutUint32(f.header[8:], cowDiskVersion)
			ne.PutUint32(f.header[12:], p.ChunkSectors)
		case CowGarbage:
			return syscall.EINVAL
		}
		if s.Type == "snapshot" {
			f.checkOriginSuspended(p.Origin, "loading snapshot into "+d.name)
		}
		if s.Type == "snapshot-merge" {
			for _, o := range f.devs {
				if q, ok := snapArgs(firstOr(o.live)); ok && firstType(o.live) == "snapshot" && q.Cow == p.Cow {
					f.violate("snapshot-merge loaded into %q while snapshot %q still uses the COW (handover)", d.name, o.name)
				}
			}
		}
	}
	return nil
}

func (f *fakeDM) cowNode(path string) error {
	d := f.devs[filepath.Base(path)]
	if d == nil || d.live == nil || d.suspended {
		return syscall.ENOENT
	}
	return nil
}

func (f *fakeDM) readDirect(path string, n int) ([]byte, error) {
	if f.dead {
		return nil, syscall.EIO
	}
	if err := f.cowNode(path); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	copy(b, f.header)
	return b, nil
}

func (f *fakeDM) zeroDirect(path string, n int64) error {
	if err := f.step("zero " + path); err != nil {
		return err
	}
	if err := f.cowNode(path); err != nil {
		return err
	}
	clear(f.header)
	return nil
}

// state renders the devices with device numbers replaced by names, so
// states reached along different paths compare equal.
func (f *fakeDM) state() string {
	names := map[string]string{}
	for _, d := range f.devs {
		names[d.dev.String()] = d.name
	}
	render := func(t []TargetSpec) string {
		var parts []string
		for _, s := range t {
			w := strings.Fields(s.Params)
			for i, x := range w {
				if n, ok := names[x]; ok {
					w[i] = "<" + n + ">"
				}
			}
			parts = append(parts, fmt.Sprintf("%d+%d %s %s", s.Start, s.Length, s.Type, strings.Join(w, " ")))
		}
		return strings.Join(parts, "; ")
	}
	var lines []string
	for _, d := range f.devs {
		lines = append(lines, fmt.Sprintf("%s uuid=%s suspended=%v open=%d live=[%s] inactive=[%s]", d.name, d.uuid, d.suspended, d.open, render(d.live), render(d.inactive)))
	}
	sort.Strings(lines)
	h, _ := ParseCowHeader(f.header)
	return strings.Join(lines, "\n") + "\nheader=" + h.State.String()
}
