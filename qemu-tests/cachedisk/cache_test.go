package cachedisk

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// mem is a durable medium in memory.
type mem []byte

func (m mem) ReadAt(p []byte, off int64) (int, error)  { return copy(p, m[off:]), nil }
func (m mem) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }

func sector(b byte) []byte { return bytes.Repeat([]byte{b}, SectorSize) }

func newMem(t *testing.T, sectors int) (mem, *Cache) {
	t.Helper()
	m := make(mem, sectors*SectorSize)
	for s := 0; s < sectors; s++ {
		copy(m[s*SectorSize:], sector('0'))
	}
	c, err := NewCache(m, int64(len(m)))
	if err != nil {
		t.Fatal(err)
	}
	return m, c
}

func read(t *testing.T, c *Cache, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := c.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t *testing.T, c *Cache, p []byte, off int64, fua bool) {
	t.Helper()
	if err := c.Write(p, off, fua); err != nil {
		t.Fatal(err)
	}
}

// TestCacheReadsNewestFlushPersists: reads see the newest version while the
// medium keeps the durable one; a flush writes the newest versions and
// empties the cache.
func TestCacheReadsNewestFlushPersists(t *testing.T) {
	m, c := newMem(t, 8)
	write(t, c, append(sector('a'), sector('b')...), 1*SectorSize, false)
	write(t, c, sector('c'), 2*SectorSize, false)
	if got := read(t, c, SectorSize, 2*SectorSize); !bytes.Equal(got, append(sector('a'), sector('c')...)) {
		t.Fatalf("read %q", got[:4])
	}
	if !bytes.Equal(m[SectorSize:3*SectorSize], append(sector('0'), sector('0')...)) {
		t.Fatal("unflushed writes reached the medium")
	}
	if v := c.Versions(2); len(v) != 2 || v[0][0] != 'b' || v[1][0] != 'c' {
		t.Fatalf("sector 2 versions %d", len(v))
	}
	n, err := c.Flush()
	if err != nil || n != 2 {
		t.Fatalf("flush wrote %d sectors, %v", n, err)
	}
	if !bytes.Equal(m[SectorSize:3*SectorSize], append(sector('a'), sector('c')...)) {
		t.Fatal("flush did not persist the newest versions")
	}
	if len(c.Sectors()) != 0 {
		t.Fatal("cache not empty after flush")
	}
}

// TestCachePartialSector: a write of part of a sector merges with the
// sector's current (cached) content.
func TestCachePartialSector(t *testing.T) {
	m, c := newMem(t, 4)
	write(t, c, sector('a'), SectorSize, false)
	write(t, c, []byte("xyz"), SectorSize+10, false)
	write(t, c, []byte("12345"), 2*SectorSize-2, false) // spans sectors 1 and 2
	want := sector('a')
	copy(want[10:], "xyz")
	copy(want[SectorSize-2:], "12")
	want2 := sector('0')
	copy(want2, "345")
	if got := read(t, c, SectorSize, 2*SectorSize); !bytes.Equal(got, append(want, want2...)) {
		t.Fatalf("read back %q", got)
	}
	if v := c.Versions(1); len(v) != 3 || !bytes.Equal(v[2], want) {
		t.Fatalf("sector 1 has %d versions", len(v))
	}
	if _, err := c.Cut(DropAll, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m[SectorSize:3*SectorSize], append(sector('0'), sector('0')...)) {
		t.Fatal("DropAll kept unflushed data")
	}
}

// TestCacheFUA: a FUA write is durable at once and drops the sector's older
// cached versions; a cut keeps it.
func TestCacheFUA(t *testing.T) {
	m, c := newMem(t, 4)
	write(t, c, sector('a'), 0, false)
	write(t, c, sector('b'), SectorSize, false)
	write(t, c, sector('f'), 0, true)
	if m[0] != 'f' || len(c.Versions(0)) != 0 || len(c.Versions(1)) != 1 {
		t.Fatalf("after FUA: medium %q, versions %d/%d", m[0], len(c.Versions(0)), len(c.Versions(1)))
	}
	for seed := uint64(0); seed < 20; seed++ {
		// Sector 0 can only ever be 'f' now.
		m2, c2 := newMem(t, 4)
		write(t, c2, sector('a'), 0, false)
		write(t, c2, sector('f'), 0, true)
		write(t, c2, sector('b'), SectorSize, false)
		if _, err := c2.Cut(Subset, rand.New(rand.NewPCG(seed, 1))); err != nil {
			t.Fatal(err)
		}
		if m2[0] != 'f' {
			t.Fatalf("seed %d: the FUA sector reads %q after the cut", seed, m2[0])
		}
	}
}

// TestCacheCutSubset: after a Subset cut every sector holds its durable
// value or one of its cached versions; over seeds each choice occurs, the
// same seed gives the same image, and DropAll keeps only the durable data.
func TestCacheCutSubset(t *testing.T) {
	const sectors = 16
	build := func() (mem, *Cache) {
		m, c := newMem(t, sectors)
		// Flushed: sector s = 'A'+s for even s.
		for s := 0; s < sectors; s += 2 {
			write(t, c, sector(byte('A'+s)), int64(s)*SectorSize, false)
		}
		if _, err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		// Cached: two versions of every sector ('a'+s, then 'a'+s+1),
		// written as one range each time.
		for v := 0; v < 2; v++ {
			b := make([]byte, 0, sectors*SectorSize)
			for s := 0; s < sectors; s++ {
				b = append(b, sector(byte('a'+s+v))...)
			}
			write(t, c, b, 0, false)
		}
		return m, c
	}
	durable := func(s int) byte {
		if s%2 == 0 {
			return byte('A' + s)
		}
		return '0'
	}
	// DropAll: exactly the flushed data.
	m, c := build()
	res, err := c.Cut(DropAll, nil)
	if err != nil || res.Cached != sectors || res.Persisted != 0 {
		t.Fatalf("DropAll: %+v %v", res, err)
	}
	for s := 0; s < sectors; s++ {
		if !bytes.Equal(m[s*SectorSize:(s+1)*SectorSize], sector(durable(s))) {
			t.Fatalf("DropAll: sector %d is %q", s, m[s*SectorSize])
		}
	}
	seen := map[int]map[byte]bool{}
	images := map[uint64]string{}
	for seed := uint64(0); seed < 40; seed++ {
		m, c := build()
		if _, err := c.Cut(Subset, rand.New(rand.NewPCG(seed, 0))); err != nil {
			t.Fatal(err)
		}
		for s := 0; s < sectors; s++ {
			got := m[s*SectorSize : (s+1)*SectorSize]
			ok := false
			for _, allowed := range []byte{durable(s), byte('a' + s), byte('a' + s + 1)} {
				if bytes.Equal(got, sector(allowed)) {
					ok = true
					if seen[s] == nil {
						seen[s] = map[byte]bool{}
					}
					seen[s][allowed] = true
				}
			}
			if !ok {
				t.Fatalf("seed %d: sector %d holds %q, not one of its allowed versions", seed, s, got[:4])
			}
		}
		images[seed] = string(m)
	}
	for s := 0; s < sectors; s++ {
		if len(seen[s]) != 3 {
			t.Errorf("sector %d: over 40 seeds only %d of its 3 allowed states occurred", s, len(seen[s]))
		}
	}
	m, c = build()
	c.Cut(Subset, rand.New(rand.NewPCG(7, 0)))
	if string(m) != images[7] {
		t.Error("the same seed gave a different image")
	}
}

func TestCacheRange(t *testing.T) {
	_, c := newMem(t, 2)
	if err := c.Write(sector('x'), SectorSize+1, false); err != ErrRange {
		t.Errorf("write past the end: %v", err)
	}
	if err := c.Write(sector('x'), 1<<63-100, false); err != ErrRange {
		t.Errorf("write at 2^63-100: %v", err)
	}
	if err := c.ReadAt(make([]byte, 1), -1); err != ErrRange {
		t.Errorf("read at -1: %v", err)
	}
	if _, err := NewCache(mem(make([]byte, 700)), 700); err == nil {
		t.Error("a size that is not a multiple of 512 was accepted")
	}
}

// TestCacheUnit4K: with a 4 KiB unit, writes of single sectors are merged
// into their unit, and a Subset cut keeps each unit at one of its versions
// as written: never the second sector's new data without the first's,
// which a 512-byte unit allows (a torn 4 KiB block).
func TestCacheUnit4K(t *testing.T) {
	seen := map[string]bool{}
	for seed := uint64(0); seed < 64; seed++ {
		m := make(mem, 2*AtomicUnit4K)
		c, err := NewCacheUnit(m, int64(len(m)), AtomicUnit4K)
		if err != nil {
			t.Fatal(err)
		}
		write(t, c, sector('a'), 0, false)
		write(t, c, sector('b'), SectorSize, false)
		if got := read(t, c, 0, 2*SectorSize); !bytes.Equal(got, append(sector('a'), sector('b')...)) {
			t.Fatalf("read back %q", got[:4])
		}
		r, err := c.Cut(Subset, rand.New(rand.NewPCG(seed, 1)))
		if err != nil {
			t.Fatal(err)
		}
		if r.Cached != 1 {
			t.Fatalf("cached units %d, want 1", r.Cached)
		}
		state := string([]byte{m[0], m[SectorSize]})
		switch state {
		case "\x00\x00", "a\x00", "ab":
		default:
			t.Fatalf("seed %d: unit holds %q: torn inside the unit", seed, state)
		}
		seen[state] = true
	}
	if len(seen) != 3 {
		t.Errorf("states seen %v, want all three (old, first write, both)", seen)
	}
	if _, err := NewCacheUnit(mem(make([]byte, 6144)), 6144, AtomicUnit4K); err == nil {
		t.Error("a disk that is not whole units accepted")
	}
}
