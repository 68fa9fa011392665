//go:build linux

package main

// The setup benchmark (docs/BENCHMARKS.md, make bench, section "setup"): how
// long PID 1 takes to set up a checkpoint for a 1 GiB COW file of 10, 10k
// and 200k extents, step by step, with cpinit's own boot code. It runs only
// in the QEMU guest and only with -cpinit.bench.setup: `go run
// ./qemu-tests/bench -only setup` boots the guest with one scratch disk and
// this test alone. Its name does not start with TestVM and on the host
// RequireVM skips it.
//
// For each extent count, on a fresh 4 KiB-block ext4 on the whole scratch
// disk: a donor file fills the free space, holes are punched into it in a
// regular pattern (hole sizes B/E blocks for E extents of B blocks, one
// donor block between holes), and fiemap.Allocate (what `cpinit begin`
// runs, here without its limit of 50,000 segments, which would refuse the
// 200k file) fallocates and pins the 1 GiB COW file, which can only land in
// the holes. The map is bound to the partition and turned into the recorded
// ExtentMap as begin does; the journal is checkpointed (FIFREEZE/FITHAW, as
// begin does) and the filesystem unmounted. Then, per round, with caches
// dropped:
//
//   - the first boot of the trial (state armed, action CreateSnapshot) in
//     the steps bootEnv.CreateSnapshot takes, each timed: open the dm
//     control node and check the targets (bootEnv.client), dmsnap.New on the
//     recorded map (bootEnv.checkpoint: validation, sort, the N-target
//     linear table), Checkpoint.MapPlain (cp-origin as a plain linear),
//     verifyBeforeCreate's look at the COW file (BLKROSET and mount
//     ro,noload of cp-origin; fingerprintIn, i.e. FIEMAP, validation,
//     rebinding and fingerprint; umount), Checkpoint.StartCheckpoint. The
//     look is timed piece by piece, so the test repeats checkCurrentCOW's
//     few lines with its helpers (setBlockRO, mountDev, fingerprintIn)
//     instead of calling it;
//   - teardown (Checkpoint.Teardown, which reads the N-target table back);
//   - a later boot of the trial (action ReattachSnapshot):
//     bootEnv.ReattachSnapshot as PID 1 calls it (Reattach, then the same
//     look at the COW file), and teardown;
//   - in the first round only, bootEnv.CreateSnapshot in one call, as PID 1
//     calls it, to check the sum of the steps, and teardown;
//   - StartCheckpoint's parts, measured apart with the calls it makes: the
//     COW table (Client.CreateAndLoad of the same LinearTable: create, load
//     of N linear targets, resume) and the header zeroing (one chunk written
//     O_DIRECT|O_DSYNC through cp-cow, as dmsnap's zeroDirect does). The
//     snapshot and origin tables, the flush and the status read are the
//     rest of StartCheckpoint. And one flush of cp-cow alone (fsync of the
//     node): dm sends an empty flush to every target of a table, so its
//     cost grows with the extent count, and StartCheckpoint flushes the COW
//     twice (the O_DSYNC header write and the explicit flush);
//   - first writes by fragmentation: -cpinit.bench.setup.writes random
//     4 KiB O_DIRECT writes, each to its own chunk, at queue depth 1 and
//     then 32 (as many goroutines, each with one pwrite in flight), on the
//     raw partition and then, after bootEnv.CreateSnapshot, through
//     cp-origin, where each is a first write (dm-snap.c: read the chunk,
//     copy it into the COW, commit the exception, then the write). The
//     persistent store's commit writes the metadata area with
//     REQ_PREFLUSH|REQ_FUA (dm-snap-persistent.c persistent_commit_exception
//     → area_io), a flush of cp-cow, which kernel 6.1 splits into one empty
//     bio per linear target (dm.c __send_empty_flush, one
//     __send_duplicate_bios per target); so a first write should cost more
//     with a fragmented COW. The writes land in a 64 MiB file written at
//     mkfs time (before the donor), so they touch neither the filesystem's
//     metadata nor the COW file, and the blocks the host image holds for it
//     and for the start of the COW are written beforehand, so the host
//     never allocates during a measurement. Skipped above 50,000 extents,
//     which `cpinit begin` refuses (fiemap.DefaultMaxSegments).
//
// Tables go to stdout on lines starting with "SETUP-BENCH|", progress on
// lines starting with "SETUP-BENCH-LOG ".

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"github.com/cpinit/cpinit/pkg/fiemap"
	"golang.org/x/sys/unix"
)

var (
	setupBenchFlag    = flag.Bool("cpinit.bench.setup", false, "run TestBenchSetupInGuest (in the guest; go run ./qemu-tests/bench -only setup)")
	setupBenchExtents = flag.String("cpinit.bench.setup.extents", "10,10000,200000", "extent counts to aim for, comma separated; the first is the baseline of the ratios (small counts: an unfragmented file)")
	setupBenchReps    = flag.Int("cpinit.bench.setup.reps", 3, "rounds per extent count; the table shows medians and ranges")
	setupBenchCowMiB  = flag.Int("cpinit.bench.setup.cowmib", 1024, "COW file size in MiB")
	setupBenchWrites  = flag.Int("cpinit.bench.setup.writes", 256, "first writes per queue depth and round (0: none)")
)

// setupWriteQDs are the queue depths of the first-write measurement.
var setupWriteQDs = [2]int{1, 32}

// setupTargetBytes is the file the first writes go to, written when the
// filesystem is made.
const setupTargetBytes = 64 << 20

// setupWriteMaxExtents: no first writes above this (begin refuses such a
// COW).
const setupWriteMaxExtents = 50000

const setupBlock = 4096

// setupRound is one round's timings.
type setupRound struct {
	open, config, mapPlain, mount, fiemap, umount, start time.Duration
	teardown, reattach, createWhole, table, zero, flush  time.Duration
	// Elapsed time of the -writes writes at each of setupWriteQDs, on
	// the raw partition and as first writes through cp-origin (zero when
	// not measured).
	raw, first [len(setupWriteQDs)]time.Duration
}

func (r setupRound) firstBoot() time.Duration {
	return r.open + r.config + r.mapPlain + r.mount + r.fiemap + r.umount + r.start
}

// setupCase is one extent count with its rounds.
type setupCase struct {
	aim             int
	raw, segments   int // FIEMAP extents, dm targets
	holes           int // punched
	fragment, alloc time.Duration
	rounds          []setupRound
	// writes are the byte offsets on the partition of the first writes,
	// one set per queue depth (distinct chunks of the target file).
	writes [len(setupWriteQDs)][]int64
}

func TestBenchSetupInGuest(t *testing.T) {
	if !*setupBenchFlag {
		t.Skip("benchmark: runs in the guest with -cpinit.bench.setup (go run ./qemu-tests/bench -only setup, make bench)")
	}
	testutil.RequireVM(t)
	testutil.RequireRoot(t)
	disk := testutil.TestDisks(t, 1)[0]
	var aims []int
	for _, s := range strings.Split(*setupBenchExtents, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			t.Fatalf("-cpinit.bench.setup.extents: bad count %q", s)
		}
		aims = append(aims, n)
	}
	cowBlocks := *setupBenchCowMiB << 20 / setupBlock
	ud, err := findUserdata(disk)
	if err != nil {
		t.Fatal(err)
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Fatal(err)
	}
	var cases []*setupCase
	for _, aim := range aims {
		c := &setupCase{aim: aim}
		em := setupFS(t, mkfs, ud, c, cowBlocks)
		for rep := 0; rep < max(*setupBenchReps, 1); rep++ {
			r := setupMeasure(t, ud, em, rep == 0)
			if len(c.writes[0]) > 0 {
				setupFirstWrites(t, ud, em, c, &r)
				setupf("%d extents, round %d: %d writes, raw %v / %v, first writes through cp-origin %v / %v (QD %d / %d)",
					c.raw, rep+1, len(c.writes[0]), ms(r.raw[0]), ms(r.raw[1]), ms(r.first[0]), ms(r.first[1]), setupWriteQDs[0], setupWriteQDs[1])
			}
			c.rounds = append(c.rounds, r)
			setupf("%d extents, round %d: first boot %v (open %v, New %v, MapPlain %v, mount %v, FIEMAP %v, umount %v, StartCheckpoint %v [COW table %v, zero %v, flush %v]); CreateSnapshot %v; ReattachSnapshot %v; teardown %v",
				c.raw, rep+1, ms(r.firstBoot()), ms(r.open), ms(r.config), ms(r.mapPlain), ms(r.mount), ms(r.fiemap), ms(r.umount), ms(r.start),
				ms(r.table), ms(r.zero), ms(r.flush), ms(r.createWhole), ms(r.reattach), ms(r.teardown))
		}
		cases = append(cases, c)
	}
	setupPrint(cases, cowBlocks)
}

func ms(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }

func setupf(format string, args ...any) {
	fmt.Printf("SETUP-BENCH-LOG "+format+"\n", args...)
}

// setupFS makes a fresh ext4 on the disk holding a COW file of about
// c.aim extents, allocated and recorded as `cpinit begin` does, and leaves
// the filesystem unmounted. It returns the recorded map.
func setupFS(t *testing.T, mkfs string, ud userdata, c *setupCase, cowBlocks int) *bootstate.ExtentMap {
	t.Helper()
	// Hole sizes cowBlocks/aim on average; some holes more, for the extent
	// tree blocks of the donor and of the COW file (both taken from the
	// holes, as nothing else is free) and Allocate's reserve.
	frag := c.aim > 64
	holes := 0
	if frag {
		margin := c.aim/128 + 512
		holes = c.aim + (margin*c.aim+cowBlocks-1)/cowBlocks
	}
	// 256 MiB beyond the holes for the journal, the metadata and a solid
	// part of the donor.
	fsBlocks := cowBlocks + 65536
	if frag {
		fsBlocks = holeEnd(holes-1, c.aim, cowBlocks) + 65536
	}
	if ud.Sectors*512 < uint64(fsBlocks)*setupBlock {
		t.Fatalf("%s has %d MiB, %d extents need a %d MiB filesystem", ud.Path, ud.Sectors>>11, c.aim, fsBlocks>>8)
	}
	start := time.Now()
	if out, err := exec.Command(mkfs, "-q", "-F", "-b", "4096", "-m", "0", "-N", "4096",
		"-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=1", ud.Path, strconv.Itoa(fsBlocks)).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v\n%s", err, out)
	}
	mnt := filepath.Join(os.TempDir(), "setup-bench-ud")
	if err := mountDev(ud.Path, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(mnt, 0)
		}
	}()
	setupf("%d extents: mkfs of %d MiB and mount took %v", c.aim, fsBlocks>>8, ms(time.Since(start)))
	// The first writes' target, made before the donor takes the free
	// space: written (not fallocated) so the host image holds its blocks.
	target := filepath.Join(mnt, "first-write-target")
	if err := writeZeros(target, setupTargetBytes); err != nil {
		t.Fatal(err)
	}
	tm, err := fiemap.MapFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if frag {
		start = time.Now()
		fragmentFree(t, mnt, filepath.Base(ud.Path), holes, c.aim, cowBlocks)
		c.fragment, c.holes = time.Since(start), holes
		setupf("%d extents: donor filled and %d holes punched in %v", c.aim, holes, ms(c.fragment))
	}
	start = time.Now()
	m, err := fiemap.Allocate(filepath.Join(mnt, DefaultCOWPath), uint64(cowBlocks)*setupBlock, fiemap.AllocOptions{Reserve: setupBlock, MaxSegments: -1})
	if err != nil {
		t.Fatal(err)
	}
	c.alloc = time.Since(start)
	// begin: bindToPartition (the filesystem is on the partition itself),
	// extentMapFromFiemap, checkpointJournal.
	if m.Device.Major != ud.Dev.Major || m.Device.Minor != ud.Dev.Minor {
		t.Fatalf("COW file on %s, not on %s", m.Device, ud.Path)
	}
	em, err := extentMapFromFiemap(m, chunkFor(m.BlockSize))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkpointJournal(mnt); err != nil {
		t.Fatal(err)
	}
	c.raw, c.segments = m.RawExtents, len(em.Segments)
	if *setupBenchWrites > 0 && c.segments <= setupWriteMaxExtents {
		c.writes = setupWriteOffsets(t, tm, int64(em.ChunkSector)*512, *setupBenchWrites)
	}
	setupf("%d extents: Allocate of %d MiB took %v: %d FIEMAP extents, %d segments (dm targets), chunk %d sectors",
		c.aim, cowBlocks>>8, ms(c.alloc), c.raw, c.segments, em.ChunkSector)
	if err := testutil.Unmount(mnt); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if len(c.writes[0]) > 0 {
		// The first writes fill the COW from its start (dm-snapshot
		// allocates chunks in order, dm-snap-persistent.c
		// persistent_prepare_exception): write the blocks they will take,
		// through the partition (the file's extents stay unwritten, so
		// its map and fingerprint do not change), so the host image
		// holds them before any measurement.
		need := uint64(len(setupWriteQDs)*len(c.writes[0])+64) * uint64(em.ChunkSector) * 2
		if err := writeSegments(ud.Path, &em, need*512); err != nil {
			t.Fatal(err)
		}
	}
	return &em
}

// writeZeros writes a file of n zero bytes and syncs it.
func writeZeros(path string, n int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := 0; off < n; off += len(buf) {
		if _, err := f.Write(buf[:min(len(buf), n-off)]); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

// writeSegments writes zeros over the first n bytes of the file em maps,
// on dev at the segments' physical places.
func writeSegments(dev string, em *bootstate.ExtentMap, n uint64) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for _, s := range em.Segments {
		if s.Logical*512 >= n {
			break
		}
		for done := uint64(0); done < s.Length*512 && s.Logical*512+done < n; {
			k := min(uint64(len(buf)), s.Length*512-done)
			if _, err := f.WriteAt(buf[:k], int64(s.Physical*512+done)); err != nil {
				f.Close()
				return fmt.Errorf("write %s: %w", dev, err)
			}
			done += k
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", dev, err)
	}
	return f.Close()
}

// setupWriteOffsets picks, for each queue depth, n distinct chunks of the
// target file in random order (fixed seed: every count and round writes the
// same places), as byte offsets on the partition.
func setupWriteOffsets(t *testing.T, tm *fiemap.Map, chunk int64, n int) (sets [len(setupWriteQDs)][]int64) {
	t.Helper()
	slots := int(tm.Size / uint64(chunk))
	if slots < len(sets)*n {
		t.Fatalf("the %d MiB target holds %d chunks, %d writes need %d", tm.Size>>20, slots, n, len(sets)*n)
	}
	perm := rand.New(rand.NewSource(17)).Perm(slots)
	for i := range sets {
		for _, slot := range perm[i*n : (i+1)*n] {
			logical := uint64(slot) * uint64(chunk)
			phys, ok := uint64(0), false
			for _, e := range tm.Extents {
				if logical >= e.Logical && logical+uint64(chunk) <= e.Logical+e.Length {
					phys, ok = e.Physical+logical-e.Logical, true
					break
				}
			}
			if !ok {
				continue // the chunk straddles two extents: not one write
			}
			sets[i] = append(sets[i], int64(phys))
		}
	}
	return sets
}

// setupFirstWrites times the writes of c on the raw partition, then sets
// up the checkpoint as the first boot of a trial does and times the same
// writes through cp-origin, all first writes, and tears it down.
func setupFirstWrites(t *testing.T, ud userdata, em *bootstate.ExtentMap, c *setupCase, r *setupRound) {
	t.Helper()
	for i, qd := range setupWriteQDs {
		d, err := timeWrites(ud.Path, c.writes[i], qd)
		if err != nil {
			t.Fatal(err)
		}
		r.raw[i] = d
	}
	e := setupEnv(ud)
	if err := e.CreateSnapshot(em); err != nil {
		t.Fatal(err)
	}
	origin := e.dm.NodePath(dmsnap.DefaultNames.Origin)
	for i, qd := range setupWriteQDs {
		d, err := timeWrites(origin, c.writes[i], qd)
		if err != nil {
			t.Fatal(err)
		}
		r.first[i] = d
	}
	setupTeardown(t, e, em)
}

// timeWrites writes 4 KiB at each offset with O_DIRECT, qd at a time (qd
// goroutines, each with one pwrite in flight: the depth fio's psync engine
// with qd jobs gives), and returns the elapsed time.
func timeWrites(dev string, offs []int64, qd int) (time.Duration, error) {
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var next atomic.Int64
	errs := make([]error, qd)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < qd; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf, err := unix.Mmap(-1, 0, setupBlock, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err != nil {
				errs[w] = err
				return
			}
			defer unix.Munmap(buf)
			buf[0] = byte(w + 1)
			for {
				i := next.Add(1) - 1
				if i >= int64(len(offs)) {
					return
				}
				if _, err := f.WriteAt(buf, offs[i]); err != nil {
					errs[w] = fmt.Errorf("write %s at %d: %w", dev, offs[i], err)
					return
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	return d, errors.Join(errs...)
}

// holeEnd is where hole i ends, in blocks from the donor's start: holes of
// sizes (i+1)*B/E - i*B/E, each after one donor block.
func holeEnd(i, aim, cowBlocks int) int {
	return (i + 1) + int(int64(i+1)*int64(cowBlocks)/int64(aim))
}

// fragmentFree fills the filesystem at mnt with a donor file and punches
// holes into it, so that the free space is those holes only.
func fragmentFree(t *testing.T, mnt, sysName string, holes, aim, cowBlocks int) {
	t.Helper()
	// ext4 keeps min(2%, 4096 clusters) from fallocate (s_resv_clusters):
	// left in place they would stay one free run, which the COW file would
	// take first. Allow everything for the duration.
	if err := os.WriteFile("/sys/fs/ext4/"+sysName+"/reserved_clusters", []byte("0"), 0); err != nil {
		t.Fatalf("ext4 reserved_clusters: %v", err)
	}
	// With only small free extents, mballoc scans up to mb_max_to_scan (200)
	// of them per allocation for the best one; they are all alike here, and
	// taking the first makes Allocate of 200k extents much faster.
	for _, knob := range []string{"mb_max_to_scan", "mb_min_to_scan"} {
		if err := os.WriteFile("/sys/fs/ext4/"+sysName+"/"+knob, []byte("1"), 0); err != nil {
			t.Fatalf("ext4 %s: %v", knob, err)
		}
	}
	f, err := os.OpenFile(filepath.Join(mnt, "donor"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		t.Fatal(err)
	}
	free := int64(sfs.Bfree)
	off := int64(0)
	for _, step := range []int64{free - free/32, 1024, 64, 1} {
		for {
			if err := unix.Fallocate(fd, 0, off*setupBlock, step*setupBlock); err != nil {
				if errors.Is(err, unix.ENOSPC) {
					break
				}
				t.Fatalf("fallocate donor: %v", err)
			}
			off += step
		}
	}
	if end := int64(holeEnd(holes-1, aim, cowBlocks)); off < end {
		t.Fatalf("donor got %d blocks, the holes need %d", off, end)
	}
	prev, syncs := 0, 0
	for i := 0; i < holes; i++ {
		end := holeEnd(i, aim, cowBlocks)
		from := prev + 1
		punch := func() error {
			return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(from)*setupBlock, int64(end-from)*setupBlock)
		}
		err := punch()
		if errors.Is(err, unix.ENOSPC) {
			// The donor's extent tree needs a new block, and the blocks
			// punched so far are free only once the transaction commits.
			syncs++
			if err = unix.Syncfs(fd); err == nil {
				err = punch()
			}
		}
		if err != nil {
			t.Fatalf("punch hole %d: %v", i, err)
		}
		prev = end
	}
	// Freed blocks go back to the allocator when the transaction commits.
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
	setupf("%d holes punched (%d syncs for the donor's extent tree)", holes, syncs)
}

func dropCaches(t *testing.T) {
	t.Helper()
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Fatal(err)
	}
}

func timed(t *testing.T, d *time.Duration, what string, f func() error) {
	t.Helper()
	start := time.Now()
	err := f()
	*d = time.Since(start)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func setupEnv(ud userdata) *bootEnv {
	return &bootEnv{
		ud:        ud,
		dataDir:   filepath.Join(os.TempDir(), "setup-bench-data"),
		fstype:    "ext4",
		verifyDir: "/run/cpinit/verify",
		logf:      func(string, ...any) {},
		cowPath:   DefaultCOWPath,
	}
}

// setupMeasure runs one round on the recorded map em.
func setupMeasure(t *testing.T, ud userdata, em *bootstate.ExtentMap, whole bool) setupRound {
	t.Helper()
	var r setupRound
	ctx := context.Background()

	// First boot, step by step (bootEnv.CreateSnapshot).
	dropCaches(t)
	e := setupEnv(ud)
	defer func() {
		if e.dm != nil {
			e.dm.Close()
		}
	}()
	timed(t, &r.open, "dm open", func() error { _, err := e.client(); return err })
	var k *dmsnap.Checkpoint
	timed(t, &r.config, "dmsnap.New", func() (err error) { k, err = e.checkpoint(em); return err })
	timed(t, &r.mapPlain, "MapPlain", func() error { return k.MapPlain(ctx) })
	// checkCurrentCOW, piece by piece.
	var dev string
	timed(t, &r.mount, "mount ro,noload", func() (err error) {
		if dev, err = e.dm.EnsureNode(dmsnap.DefaultNames.Origin); err != nil {
			return err
		}
		if err := setBlockRO(dev, true); err != nil {
			return err
		}
		return mountDev(dev, e.verifyDir, e.fstype, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, "noload")
	})
	timed(t, &r.fiemap, "FIEMAP", func() error {
		fp, err := e.fingerprintIn(e.verifyDir, e.cowPath, em)
		if err == nil && fp != em.Fingerprint() {
			err = errors.New("fingerprint differs from the recorded map")
		}
		return err
	})
	timed(t, &r.umount, "umount", func() error {
		if err := unix.Unmount(e.verifyDir, 0); err != nil {
			return err
		}
		return setBlockRO(dev, false)
	})
	timed(t, &r.start, "StartCheckpoint", func() error { return k.StartCheckpoint(ctx) })
	timed(t, &r.teardown, "Teardown", func() error { return k.Teardown(ctx) })

	// A later boot of the trial, as PID 1 calls it.
	dropCaches(t)
	e2 := setupEnv(ud)
	timed(t, &r.reattach, "ReattachSnapshot", func() error {
		invalid, err := e2.ReattachSnapshot(em)
		if err == nil && invalid {
			err = errors.New("snapshot invalid")
		}
		return err
	})
	setupTeardown(t, e2, em)

	// The first boot again, in one call: a check of the steps' sum, in the
	// first round only (at 200k extents it costs as much as the steps).
	if whole {
		dropCaches(t)
		e3 := setupEnv(ud)
		timed(t, &r.createWhole, "CreateSnapshot", func() error { return e3.CreateSnapshot(em) })
		setupTeardown(t, e3, em)
	}

	// StartCheckpoint's COW table and header zeroing, apart.
	c := e.dm
	cow, err := dmsnap.Linear(k.Config().Cow)
	if err != nil {
		t.Fatal(err)
	}
	name := dmsnap.DefaultNames.Cow
	timed(t, &r.table, "COW table", func() error {
		_, err := c.CreateAndLoad(name, dmsnap.UUIDPrefix+name, cow)
		return err
	})
	timed(t, &r.zero, "zero header", func() error {
		return zeroHeader(c.NodePath(name), int(em.ChunkSector)*512)
	})
	timed(t, &r.flush, "flush", func() error { return flushDev(c.NodePath(name)) })
	if err := c.Remove(name); err != nil {
		t.Fatal(err)
	}
	return r
}

func setupTeardown(t *testing.T, e *bootEnv, em *bootstate.ExtentMap) {
	t.Helper()
	k, err := e.checkpoint(em)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Teardown(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.dm.Close()
}

// zeroHeader writes n zero bytes at the start of path as dmsnap's
// zeroDirect does (O_DIRECT|O_DSYNC, page-aligned buffer).
func zeroHeader(path string, n int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		return err
	}
	buf, err := unix.Mmap(-1, 0, max(n, setupBlock), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		f.Close()
		return err
	}
	defer unix.Munmap(buf)
	if _, err := f.WriteAt(buf[:n], 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// flushDev sends one cache flush to the device (fsync of the node: an
// empty REQ_PREFLUSH bio), as dmsnap's flush of the COW device does.
func flushDev(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// setupPrint prints the table: one row per step, one column per extent
// count with the ratio to the first count beside it.
func setupPrint(cases []*setupCase, cowBlocks int) {
	out := func(format string, args ...any) { fmt.Printf("SETUP-BENCH|"+format+"\n", args...) }
	reps := len(cases[0].rounds)
	out("")
	out("Checkpoint setup for a %d MiB COW file on ext4 (4 KiB blocks), virtio disk; ms, median of %d rounds (min–max), and beside it the ratio of medians to the %d-extent file.", cowBlocks>>8, reps, cases[0].raw)
	out("")
	head, rule := "| step |", "|---|"
	for i, c := range cases {
		head += fmt.Sprintf(" %d extents |", c.raw)
		rule += "---|"
		if i > 0 {
			head += " ratio |"
			rule += "---|"
		}
	}
	out("%s", head)
	out("%s", rule)
	// rowOf prints a step over the first n rounds of each count (0: all).
	rowOf := func(n int, name string, f func(setupRound) time.Duration) {
		pick := func(c *setupCase) []setupRound {
			if n > 0 && n < len(c.rounds) {
				return c.rounds[:n]
			}
			return c.rounds
		}
		line := "| " + name + " |"
		base := medianOf(pick(cases[0]), f)
		for i, c := range cases {
			rs := pick(c)
			m := medianOf(rs, f)
			lo, hi := rangeOf(rs, f)
			switch {
			case m <= 0:
				line += " ≤0 (noise) |"
			case len(rs) > 1:
				line += fmt.Sprintf(" %s (%s–%s) |", msStr(m), msStr(lo), msStr(hi))
			default:
				line += fmt.Sprintf(" %s |", msStr(m))
			}
			if i > 0 {
				if base > 0 && m > 0 {
					line += fmt.Sprintf(" %.1fx |", m.Seconds()/base.Seconds())
				} else {
					line += " – |"
				}
			}
		}
		out("%s", line)
	}
	row := func(name string, f func(setupRound) time.Duration) { rowOf(0, name, f) }
	info := func(name string, f func(*setupCase) string) {
		line := "| " + name + " |"
		for i, c := range cases {
			line += " " + f(c) + " |"
			if i > 0 {
				line += " |"
			}
		}
		out("%s", line)
	}
	info("dm targets (segments)", func(c *setupCase) string { return strconv.Itoa(c.segments) })
	row("open dm control, check targets", func(r setupRound) time.Duration { return r.open })
	row("dmsnap.New (validate, build table)", func(r setupRound) time.Duration { return r.config })
	row("MapPlain (cp-origin linear)", func(r setupRound) time.Duration { return r.mapPlain })
	row("mount cp-origin ro,noload", func(r setupRound) time.Duration { return r.mount })
	row("FIEMAP + checks + fingerprint", func(r setupRound) time.Duration { return r.fiemap })
	row("umount", func(r setupRound) time.Duration { return r.umount })
	row("StartCheckpoint", func(r setupRound) time.Duration { return r.start })
	row("… COW table: create, load N, resume¹", func(r setupRound) time.Duration { return r.table })
	row("… header zeroing¹", func(r setupRound) time.Duration { return r.zero })
	row("… snapshot + origin + flush + status²", func(r setupRound) time.Duration {
		return r.start - r.table - r.zero
	})
	row("one flush of cp-cow (fsync)¹", func(r setupRound) time.Duration { return r.flush })
	row("**first boot, sum of the steps**", func(r setupRound) time.Duration { return r.firstBoot() })
	rowOf(1, "first boot, bootEnv.CreateSnapshot in one call (round 1 only)", func(r setupRound) time.Duration { return r.createWhole })
	row("later boot, bootEnv.ReattachSnapshot", func(r setupRound) time.Duration { return r.reattach })
	row("teardown (reads the table back)", func(r setupRound) time.Duration { return r.teardown })
	out("")
	out("¹ measured apart in each round with the same calls (Client.CreateAndLoad of the same LinearTable; one chunk written O_DIRECT|O_DSYNC through cp-cow, which flushes the device; fsync of cp-cow). ² StartCheckpoint minus the COW table and the header zeroing.")
	for _, c := range cases {
		if c.aim == 10000 {
			out("Goal (issue 7): at most 200 ms at 10k extents. Here, first boot: %s ms at %d extents (median).", msStr(medianOf(c.rounds, setupRound.firstBoot)), c.raw)
		}
	}
	out("Making the files (once per count, not timed above): %s.", setupMaking(cases))
	out("")
	setupPrintWrites(out, cases)
}

// setupPrintWrites prints the first writes' table: ms per write (elapsed /
// writes) by queue depth, raw and through cp-origin, and their ratio, one
// column per extent count with the ratio to the first count beside it.
func setupPrintWrites(out func(string, ...any), cases []*setupCase) {
	n := len(cases[0].writes[0])
	if n == 0 {
		return
	}
	reps := len(cases[0].rounds)
	out("First writes: %d random 4 KiB O_DIRECT writes per queue depth, each to its own chunk, on the raw partition and then through cp-origin right after the checkpoint's setup (each a first write: copy the chunk, commit the exception, which flushes cp-cow); ms per write (elapsed / writes), median of %d rounds (min–max), ratio of medians to the %d-extent file beside each.", n, reps, cases[0].raw)
	out("")
	head, rule := "| writes |", "|---|"
	for i, c := range cases {
		head += fmt.Sprintf(" %d extents |", c.raw)
		rule += "---|"
		if i > 0 {
			head += " ratio |"
			rule += "---|"
		}
	}
	out("%s", head)
	out("%s", rule)
	perWrite := func(c *setupCase, d time.Duration) time.Duration {
		if len(c.writes[0]) == 0 {
			return 0
		}
		return d / time.Duration(len(c.writes[0]))
	}
	cell := func(rs []setupRound, f func(setupRound) float64, unit func(float64) string) (string, float64) {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		m := v[len(v)/2]
		if len(v)%2 == 0 {
			m = (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		if m <= 0 {
			return "–", 0
		}
		if len(v) > 1 {
			return fmt.Sprintf("%s (%s–%s)", unit(m), unit(v[0]), unit(v[len(v)-1])), m
		}
		return unit(m), m
	}
	msUnit := func(v float64) string { return msStr(time.Duration(v * float64(time.Millisecond))) }
	xUnit := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) + "x" }
	row := func(name string, f func(*setupCase, setupRound) float64, unit func(float64) string) {
		line := "| " + name + " |"
		var base float64
		for i, c := range cases {
			s, m := cell(c.rounds, func(r setupRound) float64 { return f(c, r) }, unit)
			line += " " + s + " |"
			if i == 0 {
				base = m
			} else if base > 0 && m > 0 {
				line += fmt.Sprintf(" %.1fx |", m/base)
			} else {
				line += " – |"
			}
		}
		out("%s", line)
	}
	for i, qd := range setupWriteQDs {
		row(fmt.Sprintf("raw, QD %d", qd), func(c *setupCase, r setupRound) float64 {
			return float64(perWrite(c, r.raw[i])) / float64(time.Millisecond)
		}, msUnit)
		row(fmt.Sprintf("**first write through cp-origin, QD %d**", qd), func(c *setupCase, r setupRound) float64 {
			return float64(perWrite(c, r.first[i])) / float64(time.Millisecond)
		}, msUnit)
		row(fmt.Sprintf("first write / raw, QD %d", qd), func(c *setupCase, r setupRound) float64 {
			if r.raw[i] <= 0 {
				return 0
			}
			return float64(r.first[i]) / float64(r.raw[i])
		}, xUnit)
	}
	out("")
}

func setupMaking(cases []*setupCase) string {
	var s []string
	for _, c := range cases {
		if c.holes == 0 {
			s = append(s, fmt.Sprintf("%d extents: fresh fs, Allocate %v", c.raw, ms(c.alloc)))
			continue
		}
		s = append(s, fmt.Sprintf("%d extents: %d holes punched in %v, Allocate %v", c.raw, c.holes, ms(c.fragment), ms(c.alloc)))
	}
	return strings.Join(s, "; ")
}

func medianOf(rs []setupRound, f func(setupRound) time.Duration) time.Duration {
	v := make([]time.Duration, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func rangeOf(rs []setupRound, f func(setupRound) time.Duration) (lo, hi time.Duration) {
	lo, hi = f(rs[0]), f(rs[0])
	for _, r := range rs[1:] {
		lo, hi = min(lo, f(r)), max(hi, f(r))
	}
	return lo, hi
}

func msStr(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

// BenchmarkSetupNew is the host-side counterpart of the "dmsnap.New" step
// (bootEnv.checkpoint on a recorded map: dmConfig, validation, sort and the
// linear table), on synthetic maps, to compare with the guest's TCG time:
//
//	go test -run '^$' -bench SetupNew ./cmds/cpinit
func BenchmarkSetupNew(b *testing.B) {
	for _, n := range []int{10, 10000, 200000} {
		b.Run(fmt.Sprintf("segments=%d", n), func(b *testing.B) {
			em := &bootstate.ExtentMap{DevMajor: 254, DevMinor: 0, DevSectors: 1 << 32, ChunkSector: 8}
			per := uint64(1<<21) / uint64(n) &^ 7
			for i := 0; i < n; i++ {
				em.Segments = append(em.Segments, bootstate.Segment{Logical: uint64(i) * per, Physical: uint64(2*i) * per, Length: per})
			}
			for i := 0; i < b.N; i++ {
				if _, err := dmsnap.New(nil, dmConfig(em)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
