package dmsnap

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// areaProbe wraps a COW image's reader: it fails reads of chosen metadata
// areas, counts reads in flight, and can hold the first read until a
// second one has started.
type areaProbe struct {
	r        io.ReaderAt
	chunk    int64
	epa      uint64
	fail     map[uint64]bool // area numbers whose reads fail
	inFlight atomic.Int64
	maxSeen  atomic.Int64
	// barrier: the first area read waits for a second to start (or gives up).
	barrier  bool
	once     sync.Once
	second   chan struct{}
	reads    atomic.Int64
	timedOut atomic.Bool
}

var errInjected = errors.New("injected read error")

func (p *areaProbe) ReadAt(b []byte, off int64) (int, error) {
	n := p.inFlight.Add(1)
	defer p.inFlight.Add(-1)
	for m := p.maxSeen.Load(); n > m && !p.maxSeen.CompareAndSwap(m, n); m = p.maxSeen.Load() {
	}
	c := uint64(off / p.chunk)
	isArea := c > 0 && (c-1)%(p.epa+1) == 0
	if p.barrier && isArea { // the header is read alone, before the areas
		if p.reads.Add(1) == 1 {
			select {
			case <-p.second:
			case <-time.After(20 * time.Second):
				p.timedOut.Store(true)
			}
		} else {
			p.once.Do(func() { close(p.second) })
		}
	}
	if isArea && p.fail[(c-1)/(p.epa+1)] {
		return 0, errInjected
	}
	return p.r.ReadAt(b, off)
}

func probedImage(t *testing.T, n uint64) (*cowImage, []Exception) {
	t.Helper()
	c := newCowImage(8, 4000)
	var want []Exception
	for i := uint64(0); i < n; i++ {
		old := (i*7919 + 3) % (testOrigin / c.chunkBytes())
		want = append(want, Exception{old, c.add(old)})
	}
	return c, want
}

// The areas are read ahead, in parallel: with a reader whose first read
// waits for a second one to start, reading one area at a time would never
// get past the first. (No timing: the wait ends as soon as the second read
// comes, and only a reader that never issues one waits out the 20 s.)
func TestReadCowTableReadsAreasAhead(t *testing.T) {
	c, want := probedImage(t, 5*256+17) // 6 areas
	p := &areaProbe{r: bytes.NewReader(c.b), chunk: int64(c.chunkBytes()), epa: c.epa(), barrier: true, second: make(chan struct{})}
	got, err := ReadCowTable(p, int64(len(c.b)), testOrigin)
	if err != nil {
		t.Fatal(err)
	}
	if p.timedOut.Load() {
		t.Fatal("the first read waited 20 s for a second: areas are not read ahead")
	}
	if !slices.Equal(got.Exceptions, want) || got.Areas != 6 {
		t.Fatalf("read %d exceptions in %d areas, want %d in 6", len(got.Exceptions), got.Areas, len(want))
	}
	if p.maxSeen.Load() < 2 || p.maxSeen.Load() > cowReadAhead {
		t.Errorf("at most %d reads in flight, want 2..%d", p.maxSeen.Load(), cowReadAhead)
	}
	if n := p.inFlight.Load(); n != 0 {
		t.Errorf("%d reads still running after ReadCowTable returned", n)
	}
}

// Only the areas the table reaches count: an error reading an area past
// its end (read ahead in vain) is dropped, one reading an area inside it
// fails the whole table, naming the area. Nothing is returned in part.
func TestReadCowTableReadAheadErrors(t *testing.T) {
	c, want := probedImage(t, 3*256+5) // areas 0..3; 4.. are read in vain
	chunk, epa := int64(c.chunkBytes()), c.epa()
	p := &areaProbe{r: bytes.NewReader(c.b), chunk: chunk, epa: epa, fail: map[uint64]bool{4: true, 5: true, 9: true}}
	got, err := ReadCowTable(p, int64(len(c.b)), testOrigin)
	if err != nil {
		t.Fatalf("errors past the table's end: %v", err)
	}
	if !slices.Equal(got.Exceptions, want) {
		t.Fatalf("read %d exceptions, want %d", len(got.Exceptions), len(want))
	}
	p = &areaProbe{r: bytes.NewReader(c.b), chunk: chunk, epa: epa, fail: map[uint64]bool{2: true}}
	got, err = ReadCowTable(p, int64(len(c.b)), testOrigin)
	if !errors.Is(err, errInjected) || got != nil || !bytes.Contains([]byte(err.Error()), []byte("metadata area 2")) {
		t.Fatalf("error in area 2: got %v, %v", got, err)
	}
	if n := p.inFlight.Load(); n != 0 {
		t.Errorf("%d reads still running after ReadCowTable returned", n)
	}
}
