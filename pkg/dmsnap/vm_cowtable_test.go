//go:build linux

package dmsnap

import (
	"bytes"
	"testing"
)

// checkCowTable reads the COW's exception table with ReadCowTable, as the
// offline restore will, and checks it against the kernel and the test's
// own writes: one exception per block written since the checkpoint began
// (the test's chunk is one block), each saved chunk holding that block's
// pattern from before (seed orig), and the allocation and metadata the
// snapshot's status reports equal to what the table implies
// (persistent_usage: next_free and current_area).
func checkCowTable(t *testing.T, k *Checkpoint, written map[uint64]uint64, orig uint64) *CowTable {
	t.Helper()
	d := openDirect(t, k.c.NodePath(k.cfg.Names.Cow), false)
	defer d.Close()
	st, err := k.SnapshotStatus()
	if err != nil {
		t.Fatal(err)
	}
	cowSize := int64(st.Total) * 512
	// O_DIRECT, through Restore's aligned reader: the COW node's page
	// cache could hold stale copies of chunks the snapshot target wrote
	// underneath it.
	r := &alignedReader{f: d.f}
	defer r.free()
	tab, err := ReadCowTable(r, cowSize, int64(k.cfg.OriginSectors)*512)
	if err != nil {
		t.Fatalf("ReadCowTable: %v", err)
	}
	if tab.ChunkSectors != k.cfg.ChunkSectors || tab.ChunkBytes() != blockSize {
		t.Fatalf("table chunk %d sectors, configured %d", tab.ChunkSectors, k.cfg.ChunkSectors)
	}
	if len(tab.Exceptions) != len(written) {
		t.Errorf("table has %d exceptions, the test wrote %d blocks", len(tab.Exceptions), len(written))
	}
	saved := make([]byte, blockSize)
	want := make([]byte, blockSize)
	nextFree := uint64(2)
	for _, e := range tab.Exceptions {
		if _, ok := written[e.Old]; !ok {
			t.Errorf("exception for block %d, which the test never wrote", e.Old)
			continue
		}
		if _, err := r.ReadAt(saved, int64(e.New)*blockSize); err != nil {
			t.Fatal(err)
		}
		patternBlock(want, orig, e.Old)
		if !bytes.Equal(saved, want) {
			t.Errorf("COW chunk %d (origin block %d) does not hold the block's old pattern", e.New, e.Old)
		}
		nextFree = max(nextFree, e.New+1)
	}
	epa := exceptionsPerArea(tab.ChunkSectors)
	if nextFree%(epa+1) == 1 { // skip_metadata
		nextFree++
	}
	cs := uint64(tab.ChunkSectors)
	if st.Allocated != nextFree*cs || st.Metadata != (tab.Areas+1)*cs {
		t.Errorf("kernel status %d/%d metadata %d; the table implies %d allocated, %d metadata (%d exceptions, %d areas)",
			st.Allocated, st.Total, st.Metadata, nextFree*cs, (tab.Areas+1)*cs, len(tab.Exceptions), tab.Areas)
	}
	t.Logf("COW table: %d exceptions in %d areas, status %d/%d %d", len(tab.Exceptions), tab.Areas, st.Allocated, st.Total, st.Metadata)
	return tab
}
