package dmsnap

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// maxChunkSectors bounds the chunk size: dm-exception-store.c rejects chunk
// sizes above INT_MAX >> SECTOR_SHIFT bytes; 2^21 sectors (1 GiB) is far
// beyond any sensible COW chunk and keeps arithmetic in range.
const maxChunkSectors = 1 << 21

func validChunk(chunk uint32) error {
	if chunk == 0 || chunk > maxChunkSectors || bits.OnesCount32(chunk) != 1 {
		return fmt.Errorf("chunk size %d sectors: want a power of two in 1..%d", chunk, maxChunkSectors)
	}
	return nil
}

// SnapshotTable is "snapshot <origin> <cow> P <chunk>": a persistent
// snapshot whose exceptions (old chunk contents) live on cow. cpinit only
// uses persistent ("P") stores: the checkpoint must survive reboots and
// snapshot-merge only accepts persistent stores (snapshot.rst). We do not
// ask for "PO" (Overflow status): the snapshot device itself is never
// written, and an origin-write overflow invalidates the snapshot anyway.
type SnapshotTable struct {
	origin, cow Dev
	sectors     uint64
	chunk       uint32
}

// Snapshot builds a one-target snapshot table. sectors must be the size of
// the origin; chunk is the chunk size in sectors (a power of two).
func Snapshot(origin, cow Dev, sectors uint64, chunk uint32) (*SnapshotTable, error) {
	if err := checkSnapshotArgs("snapshot", origin, cow, sectors, chunk); err != nil {
		return nil, err
	}
	return &SnapshotTable{origin: origin, cow: cow, sectors: sectors, chunk: chunk}, nil
}

func checkSnapshotArgs(kind string, origin, cow Dev, sectors uint64, chunk uint32) error {
	if origin.IsZero() || cow.IsZero() {
		return fmt.Errorf("%s: origin and COW devices are required", kind)
	}
	if origin == cow {
		// dm-snap.c snapshot_ctr: "COW device cannot be the same as origin device".
		return fmt.Errorf("%s: COW device %s is the origin", kind, cow)
	}
	if sectors == 0 {
		return fmt.Errorf("%s: zero length", kind)
	}
	if err := validChunk(chunk); err != nil {
		return fmt.Errorf("%s: %w", kind, err)
	}
	return nil
}

func snapshotParams(origin, cow Dev, chunk uint32) string {
	// Same text as snapshot_status(STATUSTYPE_TABLE) + persistent_status:
	// "%s %s" origin, cow, then " P %llu" chunk size.
	return fmt.Sprintf("%s %s P %d", origin, cow, chunk)
}

// Targets implements Table.
func (t *SnapshotTable) Targets() []TargetSpec {
	return []TargetSpec{{Start: 0, Length: t.sectors, Type: "snapshot", Params: snapshotParams(t.origin, t.cow, t.chunk)}}
}

// Sectors implements Table.
func (t *SnapshotTable) Sectors() uint64 { return t.sectors }

func (*SnapshotTable) sealed() {}

// SnapshotParams are the parsed parameters of a snapshot or snapshot-merge
// table line as the kernel prints it.
type SnapshotParams struct {
	Origin, Cow  Dev
	Store        string // "P", "PO" or "N"
	ChunkSectors uint32
	Features     []string
}

// ParseSnapshotParams parses "<origin> <cow> <P|PO|N> <chunk> [<#feat> <feat>...]".
func ParseSnapshotParams(params string) (SnapshotParams, error) {
	f := strings.Fields(params)
	if len(f) < 4 {
		return SnapshotParams{}, fmt.Errorf("snapshot params %q: want origin cow store chunk", params)
	}
	var p SnapshotParams
	var err error
	if p.Origin, err = ParseDev(f[0]); err != nil {
		return SnapshotParams{}, fmt.Errorf("snapshot params %q: origin: %w", params, err)
	}
	if p.Cow, err = ParseDev(f[1]); err != nil {
		return SnapshotParams{}, fmt.Errorf("snapshot params %q: cow: %w", params, err)
	}
	switch s := strings.ToUpper(f[2]); s {
	case "P", "PO", "N":
		p.Store = s
	default:
		return SnapshotParams{}, fmt.Errorf("snapshot params %q: unknown store type %q", params, f[2])
	}
	c, err := strconv.ParseUint(f[3], 10, 32)
	if err != nil {
		return SnapshotParams{}, fmt.Errorf("snapshot params %q: chunk: %w", params, err)
	}
	p.ChunkSectors = uint32(c)
	if len(f) > 4 {
		n, err := strconv.Atoi(f[4])
		if err != nil || n != len(f)-5 {
			return SnapshotParams{}, fmt.Errorf("snapshot params %q: bad feature count", params)
		}
		p.Features = f[5:]
	}
	return p, nil
}
