package dmsnap

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// restoreFixture is an origin device image holding a COW file in chunk-
// aligned extents, with a checkpoint taken the way dm-snapshot does it:
// before the first change of an origin chunk, its content is saved in the
// next free COW chunk and the exception committed. before is the origin as
// it was at the checkpoint, dev the device after the "trial" changed it.
type restoreFixture struct {
	cfg    Config
	dev    []byte
	before []byte
	cow    *cowImage
}

var testOriginDev = Dev{Major: 8, Minor: 16}

// newRestoreFixture: an origin of originChunks 4 KiB chunks filled with a
// pattern, the COW in the given extents (chunk offsets and lengths on the
// origin, in file order).
func newRestoreFixture(t *testing.T, originChunks uint64, extents [][2]uint64) *restoreFixture {
	t.Helper()
	const cs = 8
	f := &restoreFixture{dev: make([]byte, originChunks*4096)}
	for i := range f.dev {
		f.dev[i] = byte(i/4096*7 + i%251)
	}
	var total uint64
	for _, e := range extents {
		f.cfg.Cow = append(f.cfg.Cow, Segment{Dev: testOriginDev, Start: e[0] * cs, Length: e[1] * cs})
		total += e[1]
	}
	f.cfg.Origin, f.cfg.OriginSectors, f.cfg.ChunkSectors = testOriginDev, originChunks*cs, cs
	f.cow = newCowImage(cs, total)
	f.sync()
	f.before = bytes.Clone(f.dev)
	return f
}

// sync writes the COW image into its extents on the device.
func (f *restoreFixture) sync() {
	off := uint64(0)
	for _, s := range f.cfg.Cow {
		n := s.Length * 512
		copy(f.dev[s.Start*512:], f.cow.b[off:off+n])
		off += n
	}
}

// syncChunk writes COW chunk c into its place on the device.
func (f *restoreFixture) syncChunk(c uint64) {
	off := c * 4096
	for _, s := range f.cfg.Cow {
		if n := s.Length * 512; off < n {
			copy(f.dev[s.Start*512+off:s.Start*512+off+4096], f.cow.b[c*4096:(c+1)*4096])
			return
		}
		off -= s.Length * 512
	}
}

func (f *restoreFixture) isCOW(chunk uint64) bool {
	for _, s := range f.cfg.Cow {
		if chunk*8 >= s.Start && chunk*8 < s.Start+s.Length {
			return true
		}
	}
	return false
}

// write changes origin chunk c during the "trial": the first change saves
// its content in the COW.
func (f *restoreFixture) write(c uint64, fill byte, saved map[uint64]bool) {
	if !saved[c] {
		saved[c] = true
		nw := f.cow.add(c)
		copy(f.cow.b[nw*4096:(nw+1)*4096], f.dev[c*4096:(c+1)*4096])
		f.syncChunk(nw)
		f.syncChunk(f.cow.entryOff(f.cow.n-1) / 4096)
	}
	for i := c * 4096; i < (c+1)*4096; i++ {
		f.dev[i] = fill
	}
}

// restored says whether the device outside the COW extents is what it was
// at the checkpoint (the COW file's own blocks hold the saved chunks now).
func (f *restoreFixture) restored() bool {
	for c := uint64(0); c < uint64(len(f.dev))/4096; c++ {
		if !f.isCOW(c) && !bytes.Equal(f.dev[c*4096:(c+1)*4096], f.before[c*4096:(c+1)*4096]) {
			return false
		}
	}
	return true
}

// apply carries the plan out on the image as run does on a device: each
// read copies the COW blocks into a buffer, each write puts its segments
// of the buffer home, one after the other.
func (p *RestorePlan) apply(dev []byte) {
	for _, r := range p.reads {
		buf := bytes.Clone(dev[r.src : r.src+r.n])
		for _, w := range r.writes {
			dst := w.dst
			for _, s := range w.segs {
				dst += int64(copy(dev[dst:dst+s.n], buf[s.off:s.off+s.n]))
			}
		}
	}
}

// checkPlanShape checks what run relies on and the I/O order: reads in
// device order, not overlapping, at most maxIO; each read's writes sorted
// by home, inside the read's buffer; every chunk of the table written home
// exactly once.
func checkPlanShape(t *testing.T, p *RestorePlan, maxIO int64) {
	t.Helper()
	homes := map[int64]bool{}
	writes := 0
	for i, r := range p.reads {
		if r.n <= 0 || r.n > max(maxIO, p.Table.ChunkBytes()) {
			t.Fatalf("read %d: %d bytes, maxIO %d", i, r.n, maxIO)
		}
		if i > 0 && r.src < p.reads[i-1].src+p.reads[i-1].n {
			t.Fatalf("reads out of order or overlapping: %+v then %+v", p.reads[i-1], r)
		}
		for k, w := range r.writes {
			if k > 0 && w.dst < r.writes[k-1].dst+r.writes[k-1].bytes() {
				t.Fatalf("read %d: writes not sorted by home: %+v then %+v", i, r.writes[k-1], w)
			}
			if len(w.segs) > maxIOVs {
				t.Fatalf("write of %d segments", len(w.segs))
			}
			dst := w.dst
			for _, s := range w.segs {
				if s.off < 0 || s.n <= 0 || s.off+s.n > r.n {
					t.Fatalf("segment %+v outside read %+v", s, r)
				}
				for c := dst; c < dst+s.n; c += p.Table.ChunkBytes() {
					if homes[c] {
						t.Fatalf("home %d written twice", c)
					}
					homes[c] = true
				}
				dst += s.n
			}
			writes++
		}
	}
	if writes != p.Copies() {
		t.Fatalf("Copies() = %d, the reads hold %d writes", p.Copies(), writes)
	}
	if len(homes) != len(p.Table.Exceptions) {
		t.Fatalf("%d homes written, the table has %d exceptions", len(homes), len(p.Table.Exceptions))
	}
}

func TestPlanRestoreScattered(t *testing.T) {
	// 1024 chunks; the COW in three extents, not in device order.
	f := newRestoreFixture(t, 1024, [][2]uint64{{900, 60}, {100, 20}, {500, 200}})
	saved := map[uint64]bool{}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 400 {
		c := rng.Uint64N(1024)
		if f.isCOW(c) {
			continue
		}
		f.write(c, byte(rng.Uint32()), saved)
	}
	p, err := PlanRestore(bytes.NewReader(f.dev), f.cfg, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Table.Exceptions) != len(saved) || p.Bytes() != int64(len(saved))*4096 {
		t.Fatalf("%d exceptions, %d bytes; %d chunks saved", len(p.Table.Exceptions), p.Bytes(), len(saved))
	}
	checkPlanShape(t, p, 64<<10)
	if f.restored() {
		t.Fatal("the trial changed nothing")
	}
	p.apply(f.dev)
	if !f.restored() {
		t.Fatal("the device after the restore is not the device at the checkpoint")
	}
	// Again: a restore cut and rerun (here: run twice) gives the same.
	p.apply(f.dev)
	if !f.restored() {
		t.Fatal("a second restore changed the device")
	}
}

// TestPlanRestoreCoalesces: chunks adjacent at both ends (a sequential
// write saved in order) become one copy up to maxIO.
func TestPlanRestoreCoalesces(t *testing.T) {
	f := newRestoreFixture(t, 512, [][2]uint64{{256, 200}})
	saved := map[uint64]bool{}
	for c := uint64(10); c < 110; c++ {
		f.write(c, 0xee, saved)
	}
	p, err := PlanRestore(bytes.NewReader(f.dev), f.cfg, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	// 100 chunks; area 0 holds 256 entries so the data is contiguous in
	// the COW: 16 chunks per 64 KiB copy.
	checkPlanShape(t, p, 64<<10)
	if p.Copies() != 7 || p.Reads() != 7 {
		t.Fatalf("%d writes, %d reads for 100 sequential chunks at 64 KiB each, want 7 and 7: %+v", p.Copies(), p.Reads(), p.reads)
	}
	p.apply(f.dev)
	if !f.restored() {
		t.Fatal("restore differs")
	}
	// maxIO below a chunk still copies whole chunks.
	p, err = PlanRestore(bytes.NewReader(f.dev), f.cfg, 100)
	if err != nil || p.Copies() != 100 || p.Reads() != 100 {
		t.Fatalf("%v, %d writes, %d reads", err, p.Copies(), p.Reads())
	}
}

// TestPlanRestoreGathers: a COW read in device order, its chunks written
// home sorted, chunks with adjacent homes in one gathered write, and small
// gaps in the COW (a metadata chunk) read over, not split.
func TestPlanRestoreGathers(t *testing.T) {
	t.Run("descending", func(t *testing.T) {
		// Written from the top down: the COW holds the chunks in the
		// reverse of their homes' order.
		f := newRestoreFixture(t, 512, [][2]uint64{{256, 200}})
		saved := map[uint64]bool{}
		for c := uint64(109); c >= 10; c-- {
			f.write(c, 0xdd, saved)
		}
		p, err := PlanRestore(bytes.NewReader(f.dev), f.cfg, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		checkPlanShape(t, p, 64<<10)
		// 7 reads of up to 16 chunks; each read's chunks have adjacent
		// homes in reverse buffer order: one write of 16 segments.
		if p.Reads() != 7 || p.Copies() != 7 || len(p.reads[0].writes[0].segs) != 16 {
			t.Fatalf("%d reads, %d writes, first write %+v; want 7, 7, 16 segments", p.Reads(), p.Copies(), p.reads[0].writes[0])
		}
		p.apply(f.dev)
		if !f.restored() {
			t.Fatal("restore differs")
		}
	})
	t.Run("across a metadata chunk", func(t *testing.T) {
		// 300 chunks: area 0's 256 data chunks, area 1's metadata chunk,
		// 44 data chunks. One read over all 301 (the metadata chunk read
		// and ignored), one write of two segments.
		f := newRestoreFixture(t, 1024, [][2]uint64{{512, 400}})
		saved := map[uint64]bool{}
		for c := uint64(100); c < 400; c++ {
			f.write(c, 0x77, saved)
		}
		p, err := PlanRestore(bytes.NewReader(f.dev), f.cfg, 2<<20)
		if err != nil {
			t.Fatal(err)
		}
		checkPlanShape(t, p, 2<<20)
		if p.Reads() != 1 || p.reads[0].n != 301*4096 || p.Copies() != 1 || len(p.reads[0].writes[0].segs) != 2 {
			t.Fatalf("%d reads (first %d bytes), %d writes: want one read of 301 chunks and one write of 2 segments: %+v", p.Reads(), p.reads[0].n, p.Copies(), p.reads[0].writes)
		}
		p.apply(f.dev)
		if !f.restored() {
			t.Fatal("restore differs")
		}
		// With maxIO of 64 KiB the gap is at most 16 KiB: still bridged.
		p, err = PlanRestore(bytes.NewReader(f.dev), f.cfg, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		checkPlanShape(t, p, 64<<10)
	})
	t.Run("far apart", func(t *testing.T) {
		// The COW in two extents 300 chunks apart: no read spans them.
		f := newRestoreFixture(t, 1024, [][2]uint64{{200, 4}, {600, 100}})
		saved := map[uint64]bool{}
		for c := uint64(10); c < 20; c++ {
			f.write(c, 0x11, saved)
		}
		p, err := PlanRestore(bytes.NewReader(f.dev), f.cfg, 4<<20)
		if err != nil {
			t.Fatal(err)
		}
		checkPlanShape(t, p, 4<<20)
		for _, r := range p.reads {
			if r.src < 204*4096 && r.src+r.n > 600*4096 {
				t.Fatalf("read %+v spans 396 chunks between the extents", r)
			}
		}
		p.apply(f.dev)
		if !f.restored() {
			t.Fatal("restore differs")
		}
	})
}

// TestPlanRestorePartialLastChunk: an origin whose size is not a multiple
// of the chunk: its last chunk is restored up to the end, not past it.
func TestPlanRestorePartialLastChunk(t *testing.T) {
	f := newRestoreFixture(t, 64, [][2]uint64{{0, 16}})
	saved := map[uint64]bool{}
	f.write(63, 0x55, saved)
	f.cfg.OriginSectors = 63*8 + 3 // the last chunk is 3 sectors long
	p, err := PlanRestore(bytes.NewReader(f.dev), f.cfg, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if p.Copies() != 1 || p.reads[0].writes[0].bytes() != 3*512 || p.reads[0].writes[0].dst != 63*4096 {
		t.Fatalf("plan %+v", p.reads)
	}
}

func TestPlanRestoreRefuses(t *testing.T) {
	setup := func() *restoreFixture {
		f := newRestoreFixture(t, 256, [][2]uint64{{200, 40}})
		saved := map[uint64]bool{}
		for c := uint64(0); c < 20; c++ {
			f.write(c*3, 1, saved)
		}
		return f
	}
	for _, tc := range []struct {
		name   string
		change func(f *restoreFixture)
		is     error
		says   string
	}{
		{"destination in the COW file", func(f *restoreFixture) {
			f.cow.put(5, Exception{210, 7}) // entry 5 saved chunk 15 in COW chunk 7
			f.sync()
		}, ErrCowCorrupt, "origin chunk 210 (bytes 860160+4096) overlaps the COW file's own extent at sector 1600+320"},
		{"chunk size", func(f *restoreFixture) { f.cfg.ChunkSectors = 16 }, ErrUnexpectedState, "chunk size 8, configured 16"},
		{"COW on another device", func(f *restoreFixture) { f.cfg.Cow[0].Dev = Dev{Major: 8, Minor: 32} }, ErrCowElsewhere, "COW extent 0 is on 8:32"},
		{"table corrupt", func(f *restoreFixture) {
			f.cow.put(3, Exception{9, 9999})
			f.sync()
		}, ErrCowCorrupt, "data chunk past the end of the COW (40 chunks)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup()
			tc.change(f)
			p, err := PlanRestore(bytes.NewReader(f.dev), f.cfg, 1<<20)
			if err == nil {
				t.Fatalf("accepted: %d copies", p.Copies())
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("error %q, want %v saying %q", err, tc.is, tc.says)
			}
		})
	}
}

func TestOverlapsSegment(t *testing.T) {
	segs := []Segment{{Start: 8, Length: 8}, {Start: 32, Length: 16}}
	for _, tc := range []struct {
		off, n int64
		want   bool
	}{
		{0, 4096, false}, {0, 4097, true}, {8 * 512, 1, true}, {16*512 - 1, 1, true}, {16 * 512, 8192, false},
		{16 * 512, 16*512 + 1, true}, {48 * 512, 4096, false}, {47 * 512, 512, true}, {100 * 512, 512, false},
	} {
		if _, got := overlapsSegment(segs, tc.off, tc.n); got != tc.want {
			t.Errorf("overlapsSegment(%d, %d) = %v, want %v", tc.off, tc.n, got, tc.want)
		}
	}
}

// TestPlanRestoreRandom: random COW extents, random changes (single chunks
// and runs written either way), random maxIO: the plan has run's shape and
// applying it, once or twice, gives back the device at the checkpoint.
func TestPlanRestoreRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 8))
	for iter := range 60 {
		// The COW in 1 to 6 extents at random places of a 2048-chunk
		// origin, not overlapping: cut the range [1024, 2048) into pieces.
		var extents [][2]uint64
		at := uint64(1024)
		for len(extents) < 1+rng.IntN(6) && at < 2000 {
			at += rng.Uint64N(20)
			n := 8 + rng.Uint64N(100)
			if at+n > 2048 {
				break
			}
			extents = append(extents, [2]uint64{at, n})
			at += n
		}
		rng.Shuffle(len(extents), func(i, j int) { extents[i], extents[j] = extents[j], extents[i] })
		f := newRestoreFixture(t, 2048, extents)
		var capacity uint64
		for _, e := range extents {
			capacity += e[1]
		}
		saved := map[uint64]bool{}
		// Keep well inside the COW: its header and metadata areas take
		// some of its chunks.
		for len(saved) < int(capacity)*3/4-2 {
			c := rng.Uint64N(1024)
			n := 1 + rng.Uint64N(12)
			down := rng.IntN(2) == 0
			for k := uint64(0); k < n && len(saved) < int(capacity)*3/4-2 && c+k < 1024; k++ {
				x := c + k
				if down {
					x = c + n - 1 - k
					if x >= 1024 {
						continue
					}
				}
				f.write(x, byte(rng.Uint32()), saved)
			}
		}
		maxIO := int64(4096) << rng.IntN(10)
		p, err := PlanRestore(bytes.NewReader(f.dev), f.cfg, maxIO)
		if err != nil {
			t.Fatalf("iteration %d: %v", iter, err)
		}
		checkPlanShape(t, p, maxIO)
		p.apply(f.dev)
		if !f.restored() {
			t.Fatalf("iteration %d (extents %v, maxIO %d): restore differs", iter, extents, maxIO)
		}
		p.apply(f.dev)
		if !f.restored() {
			t.Fatalf("iteration %d: a second restore changed the device", iter)
		}
	}
}
