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
// came from, with large I/Os, many in flight.
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

// A restore reads the COW in large reads, in the order of the COW's blocks
// on the device, and writes each chunk home from the read's buffer: a
// scattered COW costs one read per maxIO of saved data plus one write per
// run of adjacent homes, where copying chunk by chunk costs a read and a
// write per chunk (under TCG and on flash the I/O count, not the bytes,
// bounds a scattered restore: docs/BENCHMARKS.md, "restore").

// restoreRead reads n bytes from byte src of the origin device (COW file
// blocks, and at most restoreGap bytes between two of them that it
// ignores) into a buffer, then makes its writes from that buffer.
type restoreRead struct {
	src, n int64
	writes []restoreWrite // sorted by dst
}

// restoreWrite writes segs of the read's buffer, in order, to byte dst of
// the device: chunks whose homes are adjacent, in one pwritev.
type restoreWrite struct {
	dst  int64
	segs []restoreSeg
}

// restoreSeg is n bytes at off of a read's buffer.
type restoreSeg struct{ off, n int64 }

func (w restoreWrite) bytes() int64 {
	var n int64
	for _, s := range w.segs {
		n += s.n
	}
	return n
}

// restoreGap is the most a read bridges between two COW blocks it needs
// (a metadata chunk, the gap between two extents of the COW file): reading
// 64 KiB more costs less than another I/O on the devices measured.
const restoreGap = 64 << 10

// maxIOVs bounds the segments of one pwritev (IOV_MAX is 1024 on Linux).
const maxIOVs = 1024

// RestorePlan is the restore of one checkpoint: the table read from the
// COW and the I/Os it takes.
type RestorePlan struct {
	Table  *CowTable
	reads  []restoreRead
	writes int
	bytes  int64
}

// Bytes is how many bytes the restore writes home.
func (p *RestorePlan) Bytes() int64 { return p.bytes }

// Copies is how many writes the restore makes (each at most maxIO bytes).
func (p *RestorePlan) Copies() int { return p.writes }

// Reads is how many reads of the COW the restore makes.
func (p *RestorePlan) Reads() int { return len(p.reads) }

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
// I/Os back: reads of the COW of at most maxIO bytes (a multiple of the
// chunk size, rounded down; at least one chunk) in the order of its blocks
// on the device, each followed by the writes of its chunks home, sorted by
// home, chunks with adjacent homes in one write.
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
	type item struct{ src, dst, n int64 }
	items := make([]item, 0, len(tab.Exceptions))
	for _, e := range tab.Exceptions {
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
		items = append(items, item{src, dst, n})
	}
	// Reads in the order of the COW's blocks on the device; ReadCowTable
	// refused a COW chunk used twice and the extents do not overlap
	// (Config.validate), so no two items share a source.
	slices.SortFunc(items, func(a, b item) int { return cmp.Compare(a.src, b.src) })
	gap := min(restoreGap, maxIO/4)
	p := &RestorePlan{Table: tab}
	for i := 0; i < len(items); {
		r := restoreRead{src: items[i].src}
		j := i
		for ; j < len(items); j++ {
			it := items[j]
			if j > i && (it.src-(r.src+r.n) > gap || it.src+it.n-r.src > maxIO) {
				break
			}
			r.n = it.src + it.n - r.src
		}
		group := items[i:j]
		slices.SortFunc(group, func(a, b item) int { return cmp.Compare(a.dst, b.dst) })
		for _, it := range group {
			seg := restoreSeg{off: it.src - r.src, n: it.n}
			p.bytes += it.n
			if k := len(r.writes) - 1; k >= 0 {
				w := &r.writes[k]
				if w.dst+w.bytes() == it.dst && len(w.segs) < maxIOVs {
					if last := &w.segs[len(w.segs)-1]; last.off+last.n == seg.off {
						last.n += seg.n
					} else {
						w.segs = append(w.segs, seg)
					}
					continue
				}
			}
			r.writes = append(r.writes, restoreWrite{dst: it.dst, segs: []restoreSeg{seg}})
		}
		p.writes += len(r.writes)
		p.reads = append(p.reads, r)
		i = j
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
