package dmsnap

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Offline restore: the rollback without the kernel's snapshot-merge. At
// boot, before any table is loaded or anything mounted, the saved chunks
// are copied from the COW file's blocks back to the origin chunks they
// came from, with large I/Os, sorted by origin offset, many in flight.
//
// Why a rerun after a power cut gives the same result: the restore reads
// only the COW (the table and the saved chunks) and writes only origin
// chunks the table names, and PlanRestore refuses a table naming a chunk
// that overlaps the COW file's own extents. So no write changes what any
// read sees, and copying a chunk twice writes the same bytes. A cut
// restore is run again from the start, as long as the COW is not changed
// in between (the caller's state machine records the attempt before the
// first write and the COW file is removed only after the restore is
// recorded done).

// ErrCowElsewhere: a COW extent is not on the origin device. The offline
// restore reads the COW through the origin device; such a checkpoint is
// merged by the kernel.
var ErrCowElsewhere = errors.New("COW extent not on the origin device")

// restoreOp copies n bytes from byte src of the origin device (a COW
// file block) to byte dst (the chunk's home).
type restoreOp struct {
	src, dst, n int64
}

// RestorePlan is the restore of one checkpoint: the table read from the
// COW and the copies it takes, sorted by destination.
type RestorePlan struct {
	Table *CowTable
	ops   []restoreOp
	bytes int64
}

// Bytes is how many bytes the restore writes.
func (p *RestorePlan) Bytes() int64 { return p.bytes }

// Copies is how many I/Os of at most maxIO bytes the restore makes.
func (p *RestorePlan) Copies() int { return len(p.ops) }

// cowView reads the COW as the linear table maps it: its segments, in
// order, on the origin device read through dev.
type cowView struct {
	dev    io.ReaderAt
	segs   []Segment
	starts []int64 // byte offset in the COW of each segment
	size   int64
}

func newCowView(dev io.ReaderAt, cfg Config) (*cowView, error) {
	v := &cowView{dev: dev, segs: cfg.Cow}
	for i, s := range cfg.Cow {
		if s.Dev != cfg.Origin {
			return nil, fmt.Errorf("COW extent %d is on %v, the origin is %v: %w", i, s.Dev, cfg.Origin, ErrCowElsewhere)
		}
		v.starts = append(v.starts, v.size)
		v.size += int64(s.Length) * 512
	}
	return v, nil
}

// physical maps byte off of the COW to its byte on the origin device and
// says how many bytes from there are contiguous in the same segment.
func (v *cowView) physical(off int64) (phys, contiguous int64) {
	i, found := slices.BinarySearch(v.starts, off)
	if !found {
		i--
	}
	s := v.segs[i]
	in := off - v.starts[i]
	return int64(s.Start)*512 + in, int64(s.Length)*512 - in
}

func (v *cowView) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("COW read at %d: negative offset", off)
	}
	n := 0
	for n < len(p) {
		if off+int64(n) >= v.size {
			return n, io.EOF
		}
		phys, contiguous := v.physical(off + int64(n))
		want := min(int64(len(p)-n), contiguous)
		m, err := v.dev.ReadAt(p[n:n+int(want)], phys)
		n += m
		if err != nil {
			if err == io.EOF && int64(m) == want {
				continue
			}
			return n, err
		}
	}
	return n, nil
}

// PlanRestore reads the exception table of cfg's COW through dev (the
// origin device, where the COW file's extents cfg.Cow lie) and plans the
// copies back, each at most maxIO bytes (a multiple of the chunk size,
// rounded down; at least one chunk), merging chunks adjacent at both ends.
// Besides ReadCowTable's checks it refuses a table whose chunk size is not
// cfg's and a table that would write over the COW file's own extents.
func PlanRestore(dev io.ReaderAt, cfg Config, maxIO int64) (*RestorePlan, error) {
	if err := validChunk(cfg.ChunkSectors); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	v, err := newCowView(dev, cfg)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	originBytes := int64(cfg.OriginSectors) * 512
	tab, err := ReadCowTable(v, v.size, originBytes)
	if err != nil {
		return nil, err
	}
	if tab.ChunkSectors != cfg.ChunkSectors {
		return nil, fmt.Errorf("restore: COW header chunk size %d, configured %d: %w", tab.ChunkSectors, cfg.ChunkSectors, ErrUnexpectedState)
	}
	chunk := tab.ChunkBytes()
	maxIO = max(chunk, maxIO/chunk*chunk)
	// The COW's own extents, by position on the device, to refuse a
	// destination inside them.
	own := slices.Clone(cfg.Cow)
	slices.SortFunc(own, func(a, b Segment) int { return cmp.Compare(a.Start, b.Start) })
	p := &RestorePlan{Table: tab}
	for _, e := range tab.SortedByOrigin() {
		dst := int64(e.Old) * chunk
		n := min(chunk, originBytes-dst) // the origin's last chunk may be partial
		if i, hit := overlapsSegment(own, dst, n); hit {
			s := own[i]
			return nil, fmt.Errorf("COW table: origin chunk %d (bytes %d+%d) overlaps the COW file's own extent at sector %d+%d: the table is not one this checkpoint wrote: %w",
				e.Old, dst, n, s.Start, s.Length, ErrCowCorrupt)
		}
		src, contiguous := v.physical(int64(e.New) * chunk)
		if contiguous < chunk {
			// Config.validate keeps extents chunk-aligned; a plan must
			// not depend on it silently.
			return nil, fmt.Errorf("restore: COW chunk %d crosses an extent boundary: %w", e.New, ErrUnexpectedState)
		}
		p.bytes += n
		if k := len(p.ops) - 1; k >= 0 {
			last := &p.ops[k]
			if last.dst+last.n == dst && last.src+last.n == src && last.n+n <= maxIO {
				last.n += n
				continue
			}
		}
		p.ops = append(p.ops, restoreOp{src: src, dst: dst, n: n})
	}
	return p, nil
}

// overlapsSegment says whether bytes [off, off+n) of the device overlap one
// of segs (sorted by Start, not overlapping each other), and which.
func overlapsSegment(segs []Segment, off, n int64) (int, bool) {
	// The first segment ending after off.
	i, _ := slices.BinarySearchFunc(segs, off, func(s Segment, off int64) int {
		return cmp.Compare(int64(s.Start+s.Length)*512, off+1)
	})
	if i < len(segs) && int64(segs[i].Start)*512 < off+n {
		return i, true
	}
	return 0, false
}
