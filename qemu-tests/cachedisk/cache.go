// Package cachedisk is a disk with a volatile write cache, for power-cut
// tests: an NBD server of the test harness's own (nbd.go) over a durable
// image file, which QEMU attaches as a guest's virtio disk.
//
// A real disk acknowledges a write once it sits in its cache; only a
// completed flush (or a FUA write) promises that the data survives a power
// cut, and what the cache had not written back is lost, any subset of it, in
// any order across sectors. Cache models exactly that per 512-byte sector;
// Machine (machine.go) groups the disks of one guest, counts their flushes
// and cuts the power at flush number K.
package cachedisk

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
)

// SectorSize is the default unit of the model, a logical sector: a unit is
// written back whole or not at all. A Cache may use a larger unit
// (NewCacheUnit, Machine.SetAtomicUnit).
const SectorSize = 512

// AtomicUnit4K is the unit of 512e and 4Kn disks' physical sectors and of
// flash pages: an aligned 4 KiB block is written whole or not at all.
// Filesystems rely on it: ext4's superblock (1 KiB inside block 0) carries
// a checksum that a torn write breaks, and the kernel then refuses to
// mount until e2fsck repairs it (TestCacheCut found this with 512-byte
// units at the first flush of a boot's first mount).
const AtomicUnit4K = 4096

// Backing is the durable medium under a Cache (an *os.File for a disk, a
// byte slice in the unit tests).
type Backing interface {
	io.ReaderAt
	io.WriterAt
}

// Mode says what a power cut keeps of the volatile cache.
type Mode int

const (
	// DropAll keeps only what was durable: every write since the last
	// flush is lost (unless it was FUA).
	DropAll Mode = iota
	// Subset keeps, for each cached sector independently, a seeded random
	// choice among its durable value and each version written since the
	// last flush: the cache may have written back any prefix of a sector's
	// versions before the cut, sectors in any order.
	Subset
)

func (m Mode) String() string {
	switch m {
	case DropAll:
		return "DropAll"
	case Subset:
		return "Subset"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Cache is one disk's volatile write cache over its durable backing.
// It is not safe for concurrent use (Machine serialises it).
type Cache struct {
	back Backing
	size int64
	unit int64 // bytes written back whole or not at all
	// dirty holds, per sector, the versions written since the last flush,
	// oldest first. A sector absent from it reads from back.
	dirty map[int64][][]byte
}

// ErrRange is returned for an access beyond the end of the disk.
var ErrRange = errors.New("cachedisk: access beyond the end of the disk")

// NewCache returns an empty cache over back, a disk of size bytes (a
// multiple of SectorSize), with SectorSize as its unit.
func NewCache(back Backing, size int64) (*Cache, error) {
	return NewCacheUnit(back, size, SectorSize)
}

// NewCacheUnit is NewCache with another unit (a multiple of SectorSize
// dividing size): writes smaller than a unit are merged into it, and a cut
// keeps or drops each unit whole.
func NewCacheUnit(back Backing, size, unit int64) (*Cache, error) {
	if unit < SectorSize || unit%SectorSize != 0 {
		return nil, fmt.Errorf("cachedisk: unit %d is not a multiple of %d", unit, SectorSize)
	}
	if size <= 0 || size%unit != 0 {
		return nil, fmt.Errorf("cachedisk: disk size %d is not a positive multiple of %d", size, unit)
	}
	return &Cache{back: back, size: size, unit: unit, dirty: map[int64][][]byte{}}, nil
}

// Size is the disk's size in bytes.
func (c *Cache) Size() int64 { return c.size }

func (c *Cache) inRange(off int64, n int) bool {
	// No off+n: a client's offset near 2^63 would overflow it.
	return off >= 0 && n >= 0 && off <= c.size && int64(n) <= c.size-off
}

// ReadAt fills p from off: each sector's newest cached version, or the
// durable value.
func (c *Cache) ReadAt(p []byte, off int64) error {
	if !c.inRange(off, len(p)) {
		return ErrRange
	}
	if len(p) == 0 {
		return nil
	}
	if _, err := c.back.ReadAt(p, off); err != nil && err != io.EOF {
		return err
	}
	if len(c.dirty) == 0 {
		return nil
	}
	end := off + int64(len(p))
	for s := off / c.unit; s*c.unit < end; s++ {
		v, ok := c.dirty[s]
		if !ok {
			continue
		}
		overlay(p, off, v[len(v)-1], s, c.unit)
	}
	return nil
}

// overlay copies the part of unit s (content sec, unit bytes) that falls in
// p, which starts at byte off of the disk.
func overlay(p []byte, off int64, sec []byte, s, unit int64) {
	lo, hi := max(s*unit, off), min((s+1)*unit, off+int64(len(p)))
	copy(p[lo-off:hi-off], sec[lo-s*unit:hi-s*unit])
}

// Write writes p at off. Without fua the data goes to the cache: each sector
// it touches gets a new version (a partial sector is merged with the
// sector's current content). With fua it is durable at once: written to the
// backing, and the sectors' older cached versions are dropped (a cache never
// writes back a sector's older version after a newer one).
func (c *Cache) Write(p []byte, off int64, fua bool) error {
	if !c.inRange(off, len(p)) {
		return ErrRange
	}
	if len(p) == 0 {
		return nil
	}
	first, end := off/c.unit, (off+int64(len(p))+c.unit-1)/c.unit
	// One slab for all the new versions; whole sectors, so partial ones
	// start from their current content.
	slab := make([]byte, (end-first)*c.unit)
	if off%c.unit != 0 {
		if err := c.ReadAt(slab[:c.unit], first*c.unit); err != nil {
			return err
		}
	}
	if last := end - 1; (off+int64(len(p)))%c.unit != 0 && (last != first || off%c.unit == 0) {
		if err := c.ReadAt(slab[int64(len(slab))-c.unit:], last*c.unit); err != nil {
			return err
		}
	}
	copy(slab[off-first*c.unit:], p)
	if fua {
		if _, err := c.back.WriteAt(slab, first*c.unit); err != nil {
			return err
		}
		for s := first; s < end; s++ {
			delete(c.dirty, s)
		}
		return nil
	}
	for s := first; s < end; s++ {
		i := (s - first) * c.unit
		c.dirty[s] = append(c.dirty[s], slab[i:i+c.unit:i+c.unit])
	}
	return nil
}

// Flush makes every cached sector's newest version durable and empties the
// cache. It returns how many sectors it wrote. The backing file is not
// fsync'ed: durability here is the model's (what the next server on the
// file reads), not the host's, so a host crash is out of scope.
func (c *Cache) Flush() (int, error) {
	n := len(c.dirty)
	err := c.writeBack(func(v [][]byte) []byte { return v[len(v)-1] })
	c.dirty = map[int64][][]byte{}
	return n, err
}

// writeBack writes pick(versions) of every cached sector for which pick
// returns non-nil, in sector order, contiguous runs in one write.
func (c *Cache) writeBack(pick func([][]byte) []byte) error {
	var run []byte
	runStart := int64(-1)
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		_, err := c.back.WriteAt(run, runStart*c.unit)
		run = run[:0]
		return err
	}
	for _, s := range c.Sectors() {
		sec := pick(c.dirty[s])
		if sec == nil {
			continue
		}
		if len(run) > 0 && runStart+int64(len(run))/c.unit != s {
			if err := flush(); err != nil {
				return err
			}
		}
		if len(run) == 0 {
			runStart = s
		}
		run = append(run, sec...)
	}
	return flush()
}

// Sectors returns the cached sectors in ascending order.
func (c *Cache) Sectors() []int64 {
	s := make([]int64, 0, len(c.dirty))
	for k := range c.dirty {
		s = append(s, k)
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

// Versions returns copies of sector s's cached versions, oldest first (nil
// if the sector is durable as it reads).
func (c *Cache) Versions(s int64) [][]byte {
	var out [][]byte
	for _, v := range c.dirty[s] {
		out = append(out, append([]byte(nil), v...))
	}
	return out
}

// CutResult says what a power cut did to one disk's cache.
type CutResult struct {
	Cached    int // sectors the cache held
	Persisted int // of them, sectors for which some cached version was kept
}

// Cut is a power cut: the backing is left holding what survives under mode
// (Subset draws from rng; DropAll ignores it) and the cache is emptied.
// Sectors are visited in ascending order, so a seed gives one outcome.
func (c *Cache) Cut(mode Mode, rng *rand.Rand) (CutResult, error) {
	res := CutResult{Cached: len(c.dirty)}
	var err error
	switch mode {
	case DropAll:
	case Subset:
		err = c.writeBack(func(v [][]byte) []byte {
			// 0: none written back; j: the first j versions were, so
			// the j-th is on the medium.
			j := rng.IntN(len(v) + 1)
			if j == 0 {
				return nil
			}
			res.Persisted++
			return v[j-1]
		})
	default:
		err = fmt.Errorf("cachedisk: unknown cut mode %v", mode)
	}
	c.dirty = map[int64][][]byte{}
	return res, err
}
