package bootstate

import (
	"errors"
	"strings"

	"io"
	"os"
	"path/filepath"
	"pgregory.net/rapid"
	"reflect"
	"testing"
)

var errPowerCut = errors.New("simulated power cut")

// memDev is an in-memory Device that can lose power: after budget more
// bytes have been written, the write in progress stops part-way and every
// later call fails. pages is what survives (the "disk" after reboot); it is
// sparse because the copies sit CopyStride apart.
type memDev struct {
	pages  map[int64]*[pageSize]byte
	size   int64
	budget int // bytes still writable; < 0 means unlimited
	dead   bool
	// garbage: on a cut, the rest of the 512-byte sector being written
	// gets junk instead of keeping its old contents, as a device that
	// tears inside a sector may leave.
	garbage bool
	writes  int
	syncs   int
}

const pageSize = 4096

func newMemDev() *memDev { return &memDev{pages: map[int64]*[pageSize]byte{}, budget: -1} }

func (d *memDev) byteAt(off int64) byte {
	if p := d.pages[off/pageSize]; p != nil {
		return p[off%pageSize]
	}
	return 0
}

func (d *memDev) setByte(off int64, v byte) {
	p := d.pages[off/pageSize]
	if p == nil {
		p = new([pageSize]byte)
		d.pages[off/pageSize] = p
	}
	p[off%pageSize] = v
	d.size = max(d.size, off+1)
}

func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	if d.dead {
		return 0, errPowerCut
	}
	// Page by page: a store with no valid copy is scanned whole.
	n := 0
	for n < len(p) && off+int64(n) < d.size {
		at := off + int64(n)
		m := min(len(p)-n, int(pageSize-at%pageSize), int(d.size-at))
		if pg := d.pages[at/pageSize]; pg != nil {
			copy(p[n:n+m], pg[at%pageSize:])
		} else {
			clear(p[n : n+m])
		}
		n += m
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d *memDev) WriteAt(p []byte, off int64) (int, error) {
	if d.dead {
		return 0, errPowerCut
	}
	d.writes++
	n := len(p)
	cut := d.budget >= 0 && n > d.budget
	if cut {
		n = d.budget
	}
	for i := 0; i < n; i++ {
		d.setByte(off+int64(i), p[i])
	}
	if cut {
		if d.garbage {
			c := off + int64(n)
			end := min((c/512+1)*512, off+int64(len(p)))
			for i := c; i < end; i++ {
				d.setByte(i, byte(i*7+0x5a))
			}
		}
		d.dead = true
		return n, errPowerCut
	}
	if d.budget >= 0 {
		d.budget -= len(p)
	}
	return len(p), nil
}

func (d *memDev) Sync() error {
	if d.dead {
		return errPowerCut
	}
	d.syncs++
	return nil
}

// reboot returns the surviving image as a fresh, powered device.
func (d *memDev) reboot() *memDev {
	n := newMemDev()
	n.size = d.size
	for k, p := range d.pages {
		c := *p
		n.pages[k] = &c
	}
	return n
}

// flip xors one byte of the image, to simulate media rot.
func (d *memDev) flip(off int64, mask byte) { d.setByte(off, d.byteAt(off)^mask) }

// snapshot returns the whole image, for before/after comparisons.
func (d *memDev) snapshot() map[int64][pageSize]byte {
	m := map[int64][pageSize]byte{}
	for k, p := range d.pages {
		m[k] = *p
	}
	return m
}

func sameRecord(a, b *Record) bool {
	x, y := *a, *b
	x.Generation, y.Generation = 0, 0
	return reflect.DeepEqual(x, y)
}

func mustSave(t testing.TB, s *Store, r *Record) uint64 {
	t.Helper()
	g, err := s.Save(r)
	if err != nil {
		t.Fatalf("save: %v", err)
	}
	return g
}

func mustLoad(t testing.TB, s *Store) (*Record, LoadInfo) {
	t.Helper()
	r, info, err := s.Load()
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return r, info
}

func TestStoreFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "metadata")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, f, err := OpenStore(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, _, err = s.Load()
	var se *StoreError
	if !errors.Is(err, ErrNoRecord) || !errors.As(err, &se) || se.Name != p {
		t.Fatalf("empty file: %v", err)
	}
	fresh := NewFreshRecord()
	if g := mustSave(t, s, &fresh); g != 1 {
		t.Fatalf("first generation %d", g)
	}
	r := activeRecord(t, CounterAndroid, "_b")
	if g := mustSave(t, s, &r); g != 2 {
		t.Fatalf("second generation %d", g)
	}
	got, info := mustLoad(t, s)
	if !sameRecord(got, &r) || got.Generation != 2 || info.Degraded {
		t.Fatalf("load: %+v %+v", got, info)
	}
	// Both copies hold the newest record after a completed Save.
	for i, off := range copyOffsets {
		b := make([]byte, 4096)
		if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		c, err := DecodeRecord(b)
		if err != nil || c.Generation != 2 {
			t.Fatalf("copy %s: %v %v", copyNames[i], c, err)
		}
	}
	if _, _, err := OpenStore(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing store: %v", err)
	}
}

func TestStoreDegradedAndRepair(t *testing.T) {
	for bad := range 2 {
		d := newMemDev()
		s := NewStore(d, "mem")
		r1 := armedRecord(t, CounterNative, "")
		mustSave(t, s, &r1)
		d.flip(copyOffsets[bad]+70, 0xff) // rot one copy
		got, info := mustLoad(t, s)
		if !sameRecord(got, &r1) || !info.Degraded || info.Copies[bad].Err == nil {
			t.Fatalf("bad=%d: %+v %+v", bad, got, info)
		}
		r2 := mustApply(t, r1, Step{Event: EventBootAttempt})
		mustSave(t, s, &r2)
		got, info = mustLoad(t, s)
		if !sameRecord(got, &r2) || info.Degraded {
			t.Fatalf("bad=%d after repair: %+v %+v", bad, got, info)
		}
	}
}

func TestStoreRefusesToOverwriteCorrupt(t *testing.T) {
	d := newMemDev()
	s := NewStore(d, "mem")
	r := armedRecord(t, CounterNative, "")
	mustSave(t, s, &r)
	d.flip(5, 1)
	d.flip(CopyStride+5, 1)
	_, _, err := s.Load()
	if !errors.Is(err, ErrStoreCorrupt) {
		t.Fatalf("load: %v", err)
	}
	before := d.snapshot()
	fresh := NewFreshRecord()
	if _, err := s.Save(&fresh); !errors.Is(err, ErrStoreCorrupt) {
		t.Fatalf("save over corrupt store: %v", err)
	}
	if !reflect.DeepEqual(before, d.snapshot()) {
		t.Fatal("refused save still wrote")
	}
	keep := RecoveryKeepCurrent("/data/.cpinit/cow")
	if _, err := s.Format(&keep); err != nil {
		t.Fatal(err)
	}
	got, _ := mustLoad(t, s)
	if got.State != StateCommitted || got.Reason != ReasonOperator {
		t.Fatalf("after format: %+v", got)
	}
}

func TestStoreAmbiguous(t *testing.T) {
	d := newMemDev()
	s := NewStore(d, "mem")
	a, b := armedRecord(t, CounterNative, ""), activeRecord(t, CounterNative, "")
	ea, eb := encodeT(t, &a, 9), encodeT(t, &b, 9)
	d.WriteAt(ea, copyOffsets[0])
	d.WriteAt(eb, copyOffsets[1])
	if _, _, err := s.Load(); !errors.Is(err, ErrStoreAmbiguous) {
		t.Fatalf("same generation, different records: %v", err)
	}
}

// TestTornWrite cuts Save at every byte offset of both copy writes (and,
// separately, with junk after the cut inside the sector) and checks that
// the store then loads either the old record or the new one, exactly, and
// that a further Save works.
func TestTornWrite(t *testing.T) {
	old := activeRecord(t, CounterAndroid, "_b")
	neu := mustApply(t, old, Step{Event: EventRollback, Reason: ReasonSlotFallback})
	next := mustApply(t, neu, Step{Event: EventMergeAttempt})
	size := len(encodeT(t, &neu, 1))

	// Start states: both copies good; copy A rotten; copy B rotten.
	for _, start := range []string{"both", "A-rotten", "B-rotten"} {
		base := newMemDev()
		s := NewStore(base, "mem")
		mustSave(t, s, &old)
		switch start {
		case "A-rotten":
			base.flip(copyOffsets[0]+100, 1)
		case "B-rotten":
			base.flip(copyOffsets[1]+100, 1)
		}
		for _, garbage := range []bool{false, true} {
			sawOld, sawNew := 0, 0
			for cut := 0; cut <= 2*size; cut++ {
				d := base.reboot()
				d.budget, d.garbage = cut, garbage
				_, err := NewStore(d, "mem").Save(&neu)
				if cut < 2*size && !errors.Is(err, errPowerCut) {
					t.Fatalf("%s cut %d: save err %v", start, cut, err)
				}
				if cut == 2*size && err != nil {
					t.Fatalf("%s uncut save: %v", start, err)
				}
				d = d.reboot()
				s2 := NewStore(d, "mem")
				got, _, err := s2.Load()
				if err != nil {
					t.Fatalf("%s garbage=%v cut %d: load: %v", start, garbage, cut, err)
				}
				switch {
				case cut > size && !sameRecord(got, &neu):
					// The first copy was complete and flushed: the new
					// record is durable from then on.
					t.Fatalf("%s cut %d in the second write: lost the flushed new record", start, cut)
				case cut == 0 && !sameRecord(got, &old):
					t.Fatalf("%s: nothing written but old record lost", start)
				case sameRecord(got, &old):
					sawOld++
				case sameRecord(got, &neu):
					sawNew++
				default:
					t.Fatalf("%s cut %d: loaded neither old nor new: %+v", start, cut, got)
				}
				mustSave(t, s2, &next)
				if got, _ := mustLoad(t, s2); !sameRecord(got, &next) {
					t.Fatalf("%s cut %d: save after recovery lost", start, cut)
				}
			}
			t.Logf("%s garbage=%v: %d cuts recovered old, %d new", start, garbage, sawOld, sawNew)
		}
	}
}

// A large record, cut at every sector boundary and a few odd offsets.
func TestTornWriteLargeRecord(t *testing.T) {
	b := &BeginArgs{COWPath: "/data/.cpinit/cow", Map: testMap(5000), Counter: CounterNative}
	old := mustApply(t, NewFreshRecord(), Step{Event: EventBegin, Begin: b})
	neu := mustApply(t, old, Step{Event: EventBootAttempt})
	base := newMemDev()
	mustSave(t, NewStore(base, "mem"), &old)
	size := len(encodeT(t, &neu, 1))
	for cut := 0; cut <= 2*size; cut += 1021 {
		d := base.reboot()
		d.budget = cut
		NewStore(d, "mem").Save(&neu)
		got, _, err := NewStore(d.reboot(), "mem").Load()
		if err != nil || !(sameRecord(got, &old) || sameRecord(got, &neu)) {
			t.Fatalf("cut %d: %v", cut, err)
		}
	}
}

func TestStoreFlushBetweenCopies(t *testing.T) {
	d := newMemDev()
	s := NewStore(d, "mem")
	r := NewFreshRecord()
	mustSave(t, s, &r)
	if d.writes != 2 || d.syncs != 2 {
		t.Fatalf("writes %d syncs %d, want 2/2", d.writes, d.syncs)
	}
}

// The very first write to a blank store, cut anywhere, leaves a store that
// loads as blank (ErrNoRecord) or as the new record, never as corrupt.
// One exception: a device that leaves junk after a cut inside the record
// magic (its first 8 bytes) leaves a sector of junk that nothing tells
// from someone else's data, and that is refused (ErrStoreForeign; a human
// wipes it), as a partition table in the first sector must be.
func TestTornFirstWrite(t *testing.T) {
	r := NewFreshRecord()
	size := len(encodeT(t, &r, 1))
	for _, garbage := range []bool{false, true} {
		for cut := 0; cut <= 2*size; cut++ {
			d := newMemDev()
			d.budget, d.garbage = cut, garbage
			NewStore(d, "mem").Format(&r)
			got, _, err := NewStore(d.reboot(), "mem").Load()
			switch {
			case err == nil && sameRecord(got, &r):
			case errors.Is(err, ErrNoRecord) && cut < size:
			case errors.Is(err, ErrStoreForeign) && garbage && cut < len(recordMagic):
			default:
				t.Fatalf("cut %d garbage=%v: %v %v", cut, garbage, got, err)
			}
		}
	}
	// A blank, B invalid cannot come from our writes: a damaged record in
	// B is corrupt, anything else in B is foreign.
	d := newMemDev()
	d.WriteAt([]byte("CPINITMD junk"), CopyStride)
	if _, _, err := NewStore(d, "mem").Load(); !errors.Is(err, ErrStoreCorrupt) {
		t.Fatalf("A blank, B a damaged record: %v", err)
	}
	d = newMemDev()
	d.WriteAt([]byte("junk"), CopyStride)
	if _, _, err := NewStore(d, "mem").Load(); !errors.Is(err, ErrStoreForeign) {
		t.Fatalf("A blank, B junk: %v", err)
	}
}

func TestCheckStoreSize(t *testing.T) {
	if err := checkStoreSize("/dev/x", StoreSize-1); err == nil || !strings.Contains(err.Error(), "/dev/x") {
		t.Fatalf("small device: %v", err)
	}
	if err := checkStoreSize("/dev/x", StoreSize); err != nil {
		t.Fatal(err)
	}
}

// Random records survive encode/decode unchanged.
func TestPropertyRecordRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 50).Draw(t, "segments")
		m := ExtentMap{
			DevMajor:    rapid.Uint32().Draw(t, "major"),
			DevMinor:    rapid.Uint32().Draw(t, "minor"),
			ChunkSector: 1 << rapid.IntRange(0, 7).Draw(t, "chunk shift"),
		}
		var logical, phys uint64
		for range n {
			gap := rapid.Uint64Range(0, 1<<20).Draw(t, "gap")
			l := rapid.Uint64Range(1, 1<<32-1).Draw(t, "len")
			phys += gap
			m.Segments = append(m.Segments, Segment{Logical: logical, Physical: phys, Length: l})
			logical += l
			phys += l
		}
		m.DevSectors = phys + rapid.Uint64Range(0, 1<<30).Draw(t, "tail")
		// Shuffle physical order: segments need not be sorted on disk.
		perm := rapid.Permutation(m.Segments).Draw(t, "perm")
		logical = 0
		for i := range perm {
			perm[i].Logical = logical
			logical += perm[i].Length
		}
		m.Segments = perm
		if logical < 2*uint64(m.ChunkSector) {
			t.Skip("COW smaller than two chunks")
		}
		b := &BeginArgs{
			TargetSlot: rapid.StringMatching(`_?[a-d]?`).Draw(t, "slot"),
			COWPath:    rapid.StringMatching(`/[a-z][a-z.]{0,29}(/[a-z]{1,10}){0,3}`).Draw(t, "path"),
			Map:        m,
			Counter:    CounterNative,
			Tries:      uint8(rapid.IntRange(0, MaxNativeTries).Draw(t, "tries")),
		}
		r, err := Apply(NewFreshRecord(), Step{Event: EventBegin, Begin: b})
		if err != nil {
			t.Fatalf("begin: %v", err)
		}
		for range rapid.IntRange(0, 3).Draw(t, "attempts") {
			if n, err := Apply(r, Step{Event: EventBootAttempt}); err == nil {
				r = n
			}
		}
		gen := rapid.Uint64Range(1, 1<<63).Draw(t, "gen")
		enc, err := EncodeRecord(&r, gen)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		got, err := DecodeRecord(enc)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		r.Generation = gen
		if !reflect.DeepEqual(*got, r) {
			t.Fatalf("round trip differs")
		}
	})
}

// Format over a store whose only valid copy is A writes B first, so a cut
// anywhere keeps a valid record.
func TestTornFormatKeepsValidCopy(t *testing.T) {
	old := activeRecord(t, CounterNative, "")
	keep := RecoveryKeepCurrent(old.COWPath)
	base := newMemDev()
	mustSave(t, NewStore(base, "mem"), &old)
	base.flip(copyOffsets[1]+10, 1)
	size := len(encodeT(t, &keep, 1))
	for cut := 0; cut <= 2*size; cut++ {
		d := base.reboot()
		d.budget = cut
		NewStore(d, "mem").Format(&keep)
		got, _, err := NewStore(d.reboot(), "mem").Load()
		if err != nil || !(sameRecord(got, &old) || sameRecord(got, &keep)) {
			t.Fatalf("cut %d: %v %v", cut, got, err)
		}
	}
}
