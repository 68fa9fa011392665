//go:build linux

package dmsnap

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
)

// restoreRegion is the part of the data region the differential test's
// workloads write (64 MiB): smaller than the whole, to keep the test's
// fills and checks short under TCG; the comparison covers the whole data
// region all the same.
const restoreRegion = 64 << 20 / blockSize

// writeBlocks writes pattern seed over each block of blks through path, in
// the order given, one block per write, and records it in e. The writes
// are buffered and synced at the end, as a filesystem's writeback sends
// them: many at once, so the kernel commits its exceptions in batches (one
// O_DIRECT write at a time would cost a metadata commit each).
func writeBlocks(t *testing.T, path string, e *expectation, seed uint64, blks []uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, blockSize)
	for _, b := range blks {
		patternBlock(buf, seed, b)
		if _, err := f.WriteAt(buf, int64(b)*blockSize); err != nil {
			t.Fatalf("write %s block %d: %v", path, b, err)
		}
		e.overrides[b] = seed
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// copyRuns copies each run of blocks [from, to) of src to dst.
func copyRuns(t *testing.T, src, dst string, runs [][2]uint64) {
	t.Helper()
	s, d := openDirect(t, src, false), openDirect(t, dst, true)
	defer s.Close()
	defer d.Close()
	const batch = 256
	buf := alignedBuf(t, batch*blockSize)
	for _, r := range runs {
		for blk := r[0]; blk < r[1]; blk += batch {
			n := min(batch, r[1]-blk)
			b := buf[:n*blockSize]
			if _, err := s.f.ReadAt(b, int64(blk)*blockSize); err != nil {
				t.Fatal(err)
			}
			if _, err := d.f.WriteAt(b, int64(blk)*blockSize); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := d.f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestVMRestoreMatchesMerge is the differential test of the offline
// restore (issue 17): for each workload, one checkpoint is taken on disk a
// and filled by the workload through the kernel's snapshot-origin; the
// COW and the changed blocks are then copied to disk b, so that both
// disks hold the same bytes. Disk a is rolled back by Restore, with no
// device-mapper table, disk b by the kernel's snapshot-merge, and the two
// data regions must be equal byte for byte (cmp) and equal to the
// pattern from before the checkpoint.
func TestVMRestoreMatchesMerge(t *testing.T) {
	c, _ := vmSetup(t)
	disks := testutil.TestDisks(t, 2)
	a, b := disks[0], disks[1]
	cmp := testutil.LookPath(t, "cmp")
	const seed = 31
	// Both disks get the same pattern over the workloads' region. The rest
	// of the data region is what the harness's fresh disks hold, zeros:
	// qemu-tests runs this test in a boot of its own. (In a boot shared
	// with tests that leave other data on disk a, cmp fails: loudly.)
	fillPattern(t, a, seed, 0, restoreRegion)
	fillPattern(t, b, seed, 0, restoreRegion)
	orig := expectation{base: seed}
	seq := make([]uint64, 0, 8192)
	for i := uint64(0); i < 8192; i++ {
		seq = append(seq, 1000+i)
	}
	for _, w := range []struct {
		name string
		// cowExtents limits the COW to its first extents (1 MiB each);
		// 0: all 64.
		cowExtents int
		blocks     func(rng *rand.Rand) [][]uint64 // per pass, each with its own seed
	}{
		{"sequential", 0, func(*rand.Rand) [][]uint64 { return [][]uint64{seq} }},
		{"scattered", 0, func(rng *rand.Rand) [][]uint64 {
			var p []uint64
			for range 4000 {
				p = append(p, rng.Uint64N(restoreRegion))
			}
			return [][]uint64{p}
		}},
		{"overwritten", 0, func(rng *rand.Rand) [][]uint64 {
			var passes [][]uint64
			for range 5 {
				var p []uint64
				for _, i := range rng.Perm(600) {
					p = append(p, 5000+uint64(i))
				}
				passes = append(passes, p)
			}
			return passes
		}},
		{"near-full", 8, func(rng *rand.Rand) [][]uint64 {
			// An 8 MiB COW: 2048 chunks, of which the header and 8
			// metadata areas; 1980 data chunks fill 97% of it.
			var p []uint64
			for _, i := range rng.Perm(restoreRegion)[:1980] {
				p = append(p, uint64(i))
			}
			return [][]uint64{p}
		}},
	} {
		t.Run(w.name, func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := testConfig(t, a), testConfig(t, b)
			if w.cowExtents > 0 {
				cfgA.Cow, cfgB.Cow = cfgA.Cow[:w.cowExtents], cfgB.Cow[:w.cowExtents]
			}
			k := newCheckpoint(t, c, cfgA)
			if err := k.StartCheckpoint(ctx); err != nil {
				t.Fatal(err)
			}
			now := expectation{base: seed, overrides: map[uint64]uint64{}}
			rng := rand.New(rand.NewPCG(seed, uint64(len(w.name))))
			for i, p := range w.blocks(rng) {
				writeBlocks(t, c.NodePath(DefaultNames.Origin), &now, seed+1+uint64(i), p)
			}
			st, err := k.SnapshotStatus()
			if err != nil || st.State != SnapActive {
				t.Fatalf("snapshot after the workload: %+v %v", st, err)
			}
			t.Logf("%d blocks changed; COW %d of %d sectors used (%.0f%%)", len(now.overrides), st.Allocated, st.Total, 100*float64(st.Allocated)/float64(st.Total))
			if err := k.Teardown(ctx); err != nil {
				t.Fatal(err)
			}
			// Disk b: the same bytes. Both held the same data region, so
			// copying the COW's used part and the changed blocks is
			// enough.
			var runs [][2]uint64
			used := st.Allocated // sectors from the COW's start
			for _, s := range cfgA.Cow {
				if used == 0 {
					break
				}
				n := min(used, s.Length)
				runs = append(runs, [2]uint64{s.Start / 8, (s.Start + n) / 8})
				used -= n
			}
			blks := slices.Sorted(maps.Keys(now.overrides))
			for _, blk := range blks {
				if k := len(runs) - 1; k >= 0 && runs[k][1] == blk {
					runs[k][1]++
				} else {
					runs = append(runs, [2]uint64{blk, blk + 1})
				}
			}
			copyRuns(t, a, b, runs)
			t0 := time.Now()
			plan, err := Restore(ctx, a, cfgA, RestoreOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(plan.Table.Exceptions) != len(now.overrides) {
				t.Errorf("restored %d chunks, the workload changed %d blocks", len(plan.Table.Exceptions), len(now.overrides))
			}
			tRestore := time.Since(t0)
			t0 = time.Now()
			kb := newCheckpoint(t, c, cfgB)
			mergeAll(t, kb, nil)
			if err := kb.Teardown(ctx); err != nil {
				t.Fatal(err)
			}
			tMerge := time.Since(t0)
			if out, err := exec.Command(cmp, "-n", fmt.Sprint(dataSectors*512), a, b).CombinedOutput(); err != nil {
				t.Fatalf("the restored and the merged disk differ: %v %s", err, out)
			}
			verifyPattern(t, a, orig, 0, restoreRegion)
			t.Logf("restore: %d chunks in %d copies, %v (kernel merge %v); equal to the kernel's merge over %d MiB",
				len(plan.Table.Exceptions), plan.Copies(), tRestore.Round(time.Millisecond), tMerge.Round(time.Millisecond), dataSectors/2048)
		})
	}
}
