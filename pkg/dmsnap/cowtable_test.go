package dmsnap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// cowImage lays out a persistent store as the kernel writes it
// (dm-snap-persistent.c): the header, then exceptions committed in order,
// each given the next free data chunk (persistent_prepare_exception, which
// skips metadata chunks), and the area after a full one zeroed. cs is the
// chunk size in sectors, chunks the COW's size in chunks.
type cowImage struct {
	cs       uint32
	chunks   uint64
	b        []byte
	nextFree uint64
	n        uint64 // exceptions committed
}

func newCowImage(cs uint32, chunks uint64) *cowImage {
	c := &cowImage{cs: cs, chunks: chunks, b: make([]byte, chunks*uint64(cs)*512), nextFree: 2}
	binary.LittleEndian.PutUint32(c.b[0:], cowMagic)
	binary.LittleEndian.PutUint32(c.b[4:], 1)
	binary.LittleEndian.PutUint32(c.b[8:], cowDiskVersion)
	binary.LittleEndian.PutUint32(c.b[12:], cs)
	return c
}

func (c *cowImage) chunkBytes() uint64 { return uint64(c.cs) * 512 }
func (c *cowImage) epa() uint64        { return exceptionsPerArea(c.cs) }

// entryOff is the byte offset of the table's i-th entry.
func (c *cowImage) entryOff(i uint64) uint64 {
	return cowAreaChunk(c.epa(), i/c.epa())*c.chunkBytes() + i%c.epa()*cowExceptionSize
}

// add commits an exception for origin chunk old and fills its data chunk
// with a byte derived from old; it returns the data chunk.
func (c *cowImage) add(old uint64) uint64 {
	nw := c.nextFree
	if nw >= c.chunks {
		panic(fmt.Sprintf("test COW full at %d exceptions", c.n))
	}
	c.nextFree++
	if isCowMetadataChunk(c.epa(), c.nextFree) {
		c.nextFree++
	}
	c.put(c.n, Exception{old, nw})
	c.n++
	copy(c.b[nw*c.chunkBytes():(nw+1)*c.chunkBytes()], bytes.Repeat([]byte{byte(old) | 1}, int(c.chunkBytes())))
	return nw
}

func (c *cowImage) put(i uint64, e Exception) {
	off := c.entryOff(i)
	binary.LittleEndian.PutUint64(c.b[off:], e.Old)
	binary.LittleEndian.PutUint64(c.b[off+8:], e.New)
}

func (c *cowImage) read(originSize int64) (*CowTable, error) {
	return ReadCowTable(bytes.NewReader(c.b), int64(len(c.b)), originSize)
}

const testOrigin = 64 << 20

func TestReadCowTableLayouts(t *testing.T) {
	for _, tc := range []struct {
		cs uint32
		n  uint64
	}{
		{8, 0}, {8, 1}, {8, 255}, {8, 256}, {8, 257}, {8, 600}, {1, 31}, {1, 32}, {1, 100}, {16, 700},
	} {
		t.Run(fmt.Sprintf("cs%d_n%d", tc.cs, tc.n), func(t *testing.T) {
			c := newCowImage(tc.cs, 2000)
			var want []Exception
			for i := uint64(0); i < tc.n; i++ {
				old := (i*7919 + 3) % (testOrigin / c.chunkBytes())
				want = append(want, Exception{old, c.add(old)})
			}
			got, err := c.read(testOrigin)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Exceptions, want) || got.ChunkSectors != tc.cs {
				t.Fatalf("read %d exceptions (chunk %d), want %d (chunk %d)", len(got.Exceptions), got.ChunkSectors, len(want), tc.cs)
			}
			if wantAreas := tc.n/c.epa() + 1; got.Areas != wantAreas {
				t.Fatalf("areas %d, want %d", got.Areas, wantAreas)
			}
			// Every entry's data chunk holds what add put there: the
			// reader's chunk numbers address the right bytes.
			for _, e := range got.Exceptions {
				if b := c.b[e.New*c.chunkBytes()]; b != byte(e.Old)|1 {
					t.Fatalf("%+v: data byte %#x", e, b)
				}
			}
			s := got.SortedByOrigin()
			if !slices.IsSortedFunc(s, func(a, b Exception) int { return int(a.Old) - int(b.Old) }) || len(s) != len(want) {
				t.Fatal("SortedByOrigin")
			}
		})
	}
}

// TestReadCowTableEndMarker: the table ends at the first entry whose
// data chunk is 0, whatever follows it in that area; a merge clears
// entries from the end, and what is left reads as the exceptions still to
// merge.
func TestReadCowTableEndMarker(t *testing.T) {
	c := newCowImage(8, 2000)
	for i := uint64(0); i < 300; i++ {
		c.add(i)
	}
	// Stale bytes after the end marker in the last area: ignored.
	c.put(300, Exception{0, 0})
	c.put(301, Exception{5, 77})
	got, err := c.read(testOrigin)
	if err != nil || len(got.Exceptions) != 300 {
		t.Fatalf("%v, %d exceptions", err, len(got.Exceptions))
	}
	// A merge that cleared the last 60 entries (all of area 1, some of
	// area 0): area 1 now starts with the end marker.
	for i := uint64(240); i < 300; i++ {
		c.put(i, Exception{0, 0})
	}
	got, err = c.read(testOrigin)
	if err != nil || len(got.Exceptions) != 240 || got.Areas != 1 {
		t.Fatalf("after a partial merge: %v, %d exceptions in %d areas", err, len(got.Exceptions), got.Areas)
	}
	// An entry with origin chunk 0 is a real one: only new_chunk ends it.
	c2 := newCowImage(8, 100)
	c2.add(0)
	if got, err := c2.read(testOrigin); err != nil || len(got.Exceptions) != 1 || got.Exceptions[0].Old != 0 {
		t.Fatalf("origin chunk 0: %v %+v", err, got)
	}
}

func TestReadCowTableRefuses(t *testing.T) {
	base := func() *cowImage {
		c := newCowImage(8, 600)
		for i := uint64(0); i < 260; i++ { // two areas
			c.add(i * 2)
		}
		return c
	}
	for _, tc := range []struct {
		name   string
		change func(c *cowImage) *cowImage
		size   int64 // the COW size the caller gives; 0: len(c.b)
		is     error
		says   string
	}{
		{"zero header", func(c *cowImage) *cowImage { clear(c.b[:16]); return c }, 0, ErrNoCheckpoint, "zero"},
		{"bad magic", func(c *cowImage) *cowImage { c.b[0] ^= 1; return c }, 0, ErrCowCorrupt, "magic"},
		{"version 2", func(c *cowImage) *cowImage { c.b[8] = 2; return c }, 0, ErrCowUnsupported, "version 2"},
		{"invalidated", func(c *cowImage) *cowImage { clear(c.b[4:8]); return c }, 0, ErrSnapshotInvalid, "invalidated"},
		{"chunk size 0", func(c *cowImage) *cowImage { clear(c.b[12:16]); return c }, 0, ErrCowCorrupt, "chunk size 0"},
		{"chunk size 24", func(c *cowImage) *cowImage { c.b[12] = 24; return c }, 0, ErrCowCorrupt, "chunk size 24"},
		{"data past the COW", func(c *cowImage) *cowImage { c.put(10, Exception{20, 600}); return c }, 0, ErrCowCorrupt, "area 0 entry 10 (origin chunk 20, COW chunk 600): data chunk past the end"},
		{"data in the header", func(c *cowImage) *cowImage { c.put(3, Exception{6, 1}); return c }, 0, ErrCowCorrupt, "metadata chunk"},
		{"data in area 1", func(c *cowImage) *cowImage { c.put(3, Exception{6, cowAreaChunk(c.epa(), 1)}); return c }, 0, ErrCowCorrupt, "COW chunk 258): data chunk is a metadata chunk"},
		{"origin past its end", func(c *cowImage) *cowImage { c.put(257, Exception{testOrigin / 4096, 300}); return c }, 0, ErrCowCorrupt, "area 1 entry 1 (origin chunk 16384, COW chunk 300): origin chunk past the end"},
		{"origin chunk twice", func(c *cowImage) *cowImage { c.put(200, Exception{4, 202}); return c }, 0, ErrCowCorrupt, "area 0 entry 200 (origin chunk 4, COW chunk 202): origin chunk saved twice (also area 0 entry 2)"},
		{"data chunk twice", func(c *cowImage) *cowImage { c.put(259, Exception{9999, 5}); return c }, 0, ErrCowCorrupt, "data chunk used twice (also area 0 entry 3)"},
		{"table never ends", func(c *cowImage) *cowImage {
			// 512 exceptions fill areas 0 and 1 of a COW that ends right
			// after: area 2 would lie past its end.
			c = newCowImage(8, cowAreaChunk(256, 2))
			for i := uint64(0); i < 512; i++ {
				c.add(i)
			}
			return c
		}, 0, ErrCowCorrupt, "metadata area 2 (chunk 515) lies past the end of the COW (515 chunks)"},
		{"truncated file", func(c *cowImage) *cowImage { c.b = c.b[:cowAreaChunk(c.epa(), 1)*4096+100]; return c }, 0, nil, "metadata area 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.change(base())
			size := tc.size
			if size == 0 {
				size = int64(len(c.b))
			}
			got, err := ReadCowTable(bytes.NewReader(c.b), size, testOrigin)
			if err == nil {
				t.Fatalf("accepted: %d exceptions", len(got.Exceptions))
			}
			if got != nil {
				t.Fatal("a table came back with the error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("error %q does not say %q", err, tc.says)
			}
		})
	}
}

// TestReadCowTablePartialLastOriginChunk: an origin whose size is not a
// multiple of the chunk has a last, partial chunk the kernel saves like any
// other; one chunk further is refused.
func TestReadCowTablePartialLastOriginChunk(t *testing.T) {
	c := newCowImage(8, 100)
	origin := int64(10*4096 + 512)
	c.add(10)
	if _, err := c.read(origin); err != nil {
		t.Fatal(err)
	}
	c.add(11)
	if _, err := c.read(origin); !errors.Is(err, ErrCowCorrupt) {
		t.Fatalf("origin chunk 11 of a 10.125-chunk origin: %v", err)
	}
}

// FuzzReadCowTable: arbitrary bytes never panic the reader, and a table it
// accepts holds every promise ReadCowTable makes.
func FuzzReadCowTable(f *testing.F) {
	c := newCowImage(1, 200)
	for i := uint64(0); i < 40; i++ {
		c.add(i * 3)
	}
	f.Add(c.b, int64(len(c.b)), int64(1<<20))
	f.Add(newCowImage(1, 4).b, int64(4*512), int64(512))
	f.Fuzz(func(t *testing.T, b []byte, cowSize, originSize int64) {
		if len(b) > 1<<20 {
			return
		}
		tab, err := ReadCowTable(bytes.NewReader(b), cowSize, originSize)
		if err != nil {
			if tab != nil {
				t.Fatal("table with error")
			}
			return
		}
		chunk := tab.ChunkBytes()
		epa := exceptionsPerArea(tab.ChunkSectors)
		old, nw := map[uint64]bool{}, map[uint64]bool{}
		for _, e := range tab.Exceptions {
			if e.New == 0 || isCowMetadataChunk(epa, e.New) || int64(e.New+1)*chunk > cowSize || int64(e.Old)*chunk >= originSize || old[e.Old] || nw[e.New] {
				t.Fatalf("accepted bad entry %+v (chunk %d, COW %d, origin %d)", e, chunk, cowSize, originSize)
			}
			old[e.Old], nw[e.New] = true, true
		}
		if uint64(len(tab.Exceptions)) >= tab.Areas*epa {
			t.Fatalf("%d exceptions in %d areas of %d", len(tab.Exceptions), tab.Areas, epa)
		}
	})
}
