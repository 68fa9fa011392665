package dmsnap

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The persistent exception store of a COW device, as the kernel lays it out
// and reads it back (drivers/md/dm-snap-persistent.c, Linux 6.1):
//
//   - chunk 0 is the header (cowheader.go);
//   - metadata area k is the chunk at 1 + k*(epa+1), where epa, the
//     exceptions per area, is chunk bytes / 16 (area_location);
//   - the epa chunks after an area hold the data of its exceptions;
//   - an area is an array of little-endian {old_chunk, new_chunk uint64}
//     (struct disk_exception). The table ends at the first entry whose
//     new_chunk is 0 (it would point at the header): read_exceptions reads
//     area after area while each is full, and insert_exceptions stops at
//     that entry. A full last area is followed by an area the kernel
//     zeroed before committing it (persistent_commit_exception), so a
//     valid store always ends inside the device.
//
// A merge takes exceptions from the end of the table and clears them
// (persistent_commit_merge), so a store whose merge was cut reads as the
// exceptions still to merge.
const cowExceptionSize = 16 // sizeof(struct disk_exception)

var (
	// ErrCowCorrupt: the COW's exception table is not one the kernel
	// wrote for this origin. Nothing may be restored from it.
	ErrCowCorrupt = errors.New("COW exception store is corrupt")
	// ErrCowUnsupported: a store in a format this reader does not know
	// (another on-disk version). Not corruption: the kernel that wrote it
	// may still merge it.
	ErrCowUnsupported = errors.New("COW exception store format not supported")
)

// Exception is one entry of the table: origin chunk Old was saved to COW
// chunk New before its first change.
type Exception struct {
	Old, New uint64
}

// CowTable is a persistent store's exception table as the kernel would load
// it.
type CowTable struct {
	ChunkSectors uint32
	// Areas is how many metadata areas were read; the last is the one
	// whose end marker ended the table.
	Areas uint64
	// Exceptions in table order (the order the kernel committed them).
	Exceptions []Exception
}

// ChunkBytes is the chunk size in bytes.
func (t *CowTable) ChunkBytes() int64 { return int64(t.ChunkSectors) * 512 }

// SortedByOrigin returns the exceptions sorted by origin chunk.
func (t *CowTable) SortedByOrigin() []Exception {
	s := slices.Clone(t.Exceptions)
	slices.SortFunc(s, func(a, b Exception) int { return cmp.Compare(a.Old, b.Old) })
	return s
}

// exceptionsPerArea is epa for a chunk size (persistent_read_metadata).
func exceptionsPerArea(chunkSectors uint32) uint64 {
	return uint64(chunkSectors) * 512 / cowExceptionSize
}

// cowAreaChunk is the chunk of metadata area k (area_location).
func cowAreaChunk(epa, k uint64) uint64 { return 1 + (epa+1)*k }

// isCowMetadataChunk says whether COW chunk c holds the header or an area.
func isCowMetadataChunk(epa, c uint64) bool { return c == 0 || (c-1)%(epa+1) == 0 }

// ReadCowTable reads the exception table of the persistent store on cow, a
// COW device (or a view of it) of cowSize bytes, for an origin of
// originSize bytes. It checks what the kernel does not, because a restore
// writes where the table points: every entry's data chunk lies inside the
// COW and is not a metadata chunk, every origin chunk starts inside the
// origin, and no origin or COW chunk appears twice. Any breach, a bad
// header, an invalidated snapshot (ErrSnapshotInvalid) or a table that runs
// past the end of the COW is an error naming the entry; the table is
// never returned in part.
func ReadCowTable(cow io.ReaderAt, cowSize, originSize int64) (*CowTable, error) {
	var hb [cowHeaderSize]byte
	if err := readFullAt(cow, hb[:], 0); err != nil {
		return nil, fmt.Errorf("COW header: %w", err)
	}
	magic := binary.LittleEndian.Uint32(hb[0:])
	valid := binary.LittleEndian.Uint32(hb[4:])
	version := binary.LittleEndian.Uint32(hb[8:])
	cs := binary.LittleEndian.Uint32(hb[12:])
	switch {
	case magic == 0:
		return nil, fmt.Errorf("COW header is zero (no snapshot was ever loaded on it): %w", ErrNoCheckpoint)
	case magic != cowMagic:
		return nil, fmt.Errorf("COW header magic %#08x, want %#08x (\"SnAp\"): %w", magic, uint32(cowMagic), ErrCowCorrupt)
	case version != cowDiskVersion:
		return nil, fmt.Errorf("COW store version %d, this reader knows %d: %w", version, cowDiskVersion, ErrCowUnsupported)
	case valid == 0:
		return nil, fmt.Errorf("COW header says the snapshot was invalidated: %w", ErrSnapshotInvalid)
	case validChunk(cs) != nil:
		return nil, fmt.Errorf("COW header: %v: %w", validChunk(cs), ErrCowCorrupt)
	}
	if originSize <= 0 || cowSize <= 0 {
		return nil, fmt.Errorf("COW table: origin size %d, COW size %d: %w", originSize, cowSize, ErrCowCorrupt)
	}
	t := &CowTable{ChunkSectors: cs}
	chunk := t.ChunkBytes()
	epa := exceptionsPerArea(cs)
	cowChunks := uint64(cowSize / chunk) // whole chunks only: the kernel maps no partial one
	originChunks := uint64((originSize + chunk - 1) / chunk)
	area := make([]byte, chunk)
	for k := uint64(0); ; k++ {
		ac := cowAreaChunk(epa, k)
		if ac >= cowChunks || ac < k { // the second: overflow on absurd sizes
			return nil, fmt.Errorf("COW table: metadata area %d (chunk %d) lies past the end of the COW (%d chunks): the store is truncated or its table never ends: %w", k, ac, cowChunks, ErrCowCorrupt)
		}
		if err := readFullAt(cow, area, int64(ac)*chunk); err != nil {
			return nil, fmt.Errorf("COW table: metadata area %d: %w", k, err)
		}
		t.Areas = k + 1
		for i := uint64(0); i < epa; i++ {
			e := Exception{
				Old: binary.LittleEndian.Uint64(area[i*cowExceptionSize:]),
				New: binary.LittleEndian.Uint64(area[i*cowExceptionSize+8:]),
			}
			if e.New == 0 {
				if err := t.checkDuplicates(epa); err != nil {
					return nil, err
				}
				return t, nil
			}
			where := func(what string) error {
				return fmt.Errorf("COW table: area %d entry %d (origin chunk %d, COW chunk %d): %s: %w", k, i, e.Old, e.New, what, ErrCowCorrupt)
			}
			switch {
			case e.New >= cowChunks:
				return nil, where(fmt.Sprintf("data chunk past the end of the COW (%d chunks)", cowChunks))
			case isCowMetadataChunk(epa, e.New):
				return nil, where("data chunk is a metadata chunk")
			case e.Old >= originChunks:
				return nil, where(fmt.Sprintf("origin chunk past the end of the origin (%d chunks)", originChunks))
			}
			t.Exceptions = append(t.Exceptions, e)
		}
	}
}

// checkDuplicates refuses a table that saves an origin chunk twice or puts
// two entries' data in one COW chunk. It sorts (positions, not maps: a
// table of a few GiB of 4 KiB chunks has a million entries, and PID 1 may
// run on a device with little memory).
func (t *CowTable) checkDuplicates(epa uint64) error {
	type keyed struct {
		key uint64
		pos int
	}
	ks := make([]keyed, len(t.Exceptions))
	for _, what := range []string{"origin chunk saved twice", "data chunk used twice"} {
		for i, e := range t.Exceptions {
			k := e.Old
			if what == "data chunk used twice" {
				k = e.New
			}
			ks[i] = keyed{k, i}
		}
		slices.SortFunc(ks, func(a, b keyed) int { return cmp.Or(cmp.Compare(a.key, b.key), cmp.Compare(a.pos, b.pos)) })
		for i := 1; i < len(ks); i++ {
			if ks[i].key == ks[i-1].key {
				a, b := uint64(ks[i-1].pos), uint64(ks[i].pos)
				e := t.Exceptions[b]
				return fmt.Errorf("COW table: area %d entry %d (origin chunk %d, COW chunk %d): %s (also area %d entry %d): %w",
					b/epa, b%epa, e.Old, e.New, what, a/epa, a%epa, ErrCowCorrupt)
			}
		}
	}
	return nil
}

// readFullAt reads len(b) bytes at off; a short read is io.ErrUnexpectedEOF.
func readFullAt(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}
