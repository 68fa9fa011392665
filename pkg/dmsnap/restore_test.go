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
// copy reads the COW blocks and writes the chunk's home.
func (p *RestorePlan) apply(dev []byte) {
	for _, op := range p.ops {
		copy(dev[op.dst:op.dst+op.n], bytes.Clone(dev[op.src:op.src+op.n]))
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
	for i := 1; i < len(p.ops); i++ {
		if p.ops[i].dst < p.ops[i-1].dst+p.ops[i-1].n {
			t.Fatalf("copies not sorted by destination: %+v then %+v", p.ops[i-1], p.ops[i])
		}
	}
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
	if p.Copies() != 7 {
		t.Fatalf("%d copies for 100 sequential chunks at 64 KiB each, want 7: %+v", p.Copies(), p.ops)
	}
	p.apply(f.dev)
	if !f.restored() {
		t.Fatal("restore differs")
	}
	// maxIO below a chunk still copies whole chunks.
	p, err = PlanRestore(bytes.NewReader(f.dev), f.cfg, 100)
	if err != nil || p.Copies() != 100 {
		t.Fatalf("%v, %d copies", err, p.Copies())
	}
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
	if p.Copies() != 1 || p.ops[0].n != 3*512 || p.ops[0].dst != 63*4096 {
		t.Fatalf("plan %+v", p.ops)
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
