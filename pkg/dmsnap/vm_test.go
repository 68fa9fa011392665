//go:build linux

package dmsnap

// In-guest tests: they need the device-mapper kernel and run in the QEMU
// guest (qemu-tests runs this test binary there with scratch virtio disks;
// on the host testutil.RequireVM skips them). dmsetup, shipped in the test
// initramfs, is the oracle for tables and status.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestVMVersionAndTargets(t *testing.T) {
	c, _ := vmSetup(t)
	v, err := c.Version()
	if err != nil {
		t.Fatal(err)
	}
	if v[0] != 4 {
		t.Fatalf("dm interface %v, want major 4", v)
	}
	t.Logf("dm interface %d.%d.%d", v[0], v[1], v[2])
	if err := c.CheckTargets(); err != nil {
		t.Fatal(err)
	}
	ts, err := c.Targets()
	if err != nil {
		t.Fatal(err)
	}
	// dmsetup targets: "<name> v<a>.<b>.<c>" per line.
	want := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(dmsetup(t, "targets")), "\n") {
		f := strings.Fields(l)
		want[f[0]] = f[1]
	}
	if len(ts) != len(want) {
		t.Errorf("%d targets, dmsetup lists %d", len(ts), len(want))
	}
	for _, tv := range ts {
		if got := fmt.Sprintf("v%d.%d.%d", tv.Version[0], tv.Version[1], tv.Version[2]); want[tv.Name] != got {
			t.Errorf("target %s %s, dmsetup says %q", tv.Name, got, want[tv.Name])
		}
	}
}

// Without udev, a missing control node is made from the misc device number
// the kernel publishes.
func TestVMControlNodeCreated(t *testing.T) {
	vmSetup(t)
	// Under /dev: the guest's /tmp is mounted nodev.
	dir, err := os.MkdirTemp("/dev", "dmsnap-test")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "mapper", "control")
	c, err := OpenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Version(); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 10 {
		t.Fatalf("control node %s: %+v %v", path, st, err)
	}
}

func TestVMClientBasics(t *testing.T) {
	c, disk := vmSetup(t)
	dev, err := DeviceNumber(disk)
	if err != nil {
		t.Fatal(err)
	}
	const name = "dmsnap-basic"
	tb, err := Linear([]Segment{{dev, 2048, 8}, {dev, 0, 16}, {dev, 4096, 1024}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.CreateAndLoad(name, "CPINIT-TEST-basic", tb)
	if err != nil {
		t.Fatal(err)
	}
	if !info.ActivePresent || info.Suspended || info.TargetCount != 3 {
		t.Errorf("after create: %+v", info)
	}
	got, _ := compareWithDmsetup(t, c, name)
	if !SameTargets(got, tb.Targets()) {
		t.Errorf("table reads back as\n%s\nwant\n%s", FormatTable(got), FormatTable(tb.Targets()))
	}
	// Our node, made without udev.
	if nd, err := DeviceNumber(c.NodePath(name)); err != nil || nd != info.Dev {
		t.Errorf("node %s: %v %v, device %v", c.NodePath(name), nd, err, info.Dev)
	}
	l, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range l {
		if d.Name == name {
			found = d.UUID == "CPINIT-TEST-basic" && d.Dev == info.Dev
		}
	}
	if !found {
		t.Errorf("list: %+v", l)
	}
	if !strings.Contains(dmsetup(t, "info", "-c", "--noheadings", "-o", "name,uuid", name), "CPINIT-TEST-basic") {
		t.Error("dmsetup does not see our uuid")
	}
	if err := c.Suspend(name, SuspendOptions{}); err != nil {
		t.Fatal(err)
	}
	if info, err := c.Info(name); err != nil || !info.Suspended {
		t.Errorf("after suspend: %+v %v", info, err)
	}
	if !strings.Contains(dmsetup(t, "info", name), "SUSPENDED") {
		t.Error("dmsetup does not see the suspend")
	}
	// Load a second table while suspended: inactive until resume.
	tb2, _ := Linear([]Segment{{dev, 8192, 64}})
	if info, err := c.Load(name, tb2); err != nil || !info.InactivePresent {
		t.Fatalf("load: %+v %v", info, err)
	}
	if in, err := c.InactiveTable(name); err != nil || !SameTargets(in, tb2.Targets()) {
		t.Errorf("inactive table %v %v", in, err)
	}
	if info, err := c.Resume(name); err != nil || info.Suspended || info.InactivePresent {
		t.Fatalf("resume: %+v %v", info, err)
	}
	compareWithDmsetup(t, c, name)
	// linear takes no messages: the error names the command, the device and
	// the errno.
	_, err = c.Message(name, 0, "hello")
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), `dm message "dmsnap-basic"`) || !strings.Contains(err.Error(), "DM_TARGET_MSG") {
		t.Errorf("message to linear: %v", err)
	}
	// Busy devices are retried, then refused with EBUSY.
	f, err := os.Open(c.NodePath(name))
	if err != nil {
		t.Fatal(err)
	}
	c.RemoveTries = 2
	err = c.Remove(name)
	c.RemoveTries = 50
	if !errors.Is(err, syscall.EBUSY) {
		t.Errorf("remove of open device: %v", err)
	}
	f.Close()
	if err := c.Remove(name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.NodePath(name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("node left behind: %v", err)
	}
	if _, err := c.Info(name); !IsNoDevice(err) {
		t.Errorf("info after remove: %v", err)
	}
	if err := c.Remove(name); !IsNoDevice(err) || !strings.Contains(err.Error(), `dm remove "dmsnap-basic"`) {
		t.Errorf("second remove: %v", err)
	}
}

// A COW file can be fragmented into very many extents: load 100k+ linear
// targets, read them back (the first answer buffers overflow), compare with
// dmsetup, and check data lands where the map says.
func TestVMLargeTable(t *testing.T) {
	c, disk := vmSetup(t)
	dev, err := DeviceNumber(disk)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100_003
	segs := make([]Segment, n)
	for i := range segs {
		segs[i] = Segment{Dev: dev, Start: uint64(2*(n-1-i)) + 1000, Length: 1} // reversed, every other sector
	}
	tb, err := Linear(segs)
	if err != nil {
		t.Fatal(err)
	}
	const name = "dmsnap-large"
	if _, err := c.CreateAndLoad(name, "", tb); err != nil {
		t.Fatal(err)
	}
	got, err := c.Table(name)
	if err != nil {
		t.Fatal(err)
	}
	if !SameTargets(got, tb.Targets()) {
		t.Fatalf("table of %d targets reads back as %d targets", n, len(got))
	}
	if want := parseDmsetupLines(t, dmsetup(t, "table", name)); !SameTargets(got, want) {
		t.Fatalf("dmsetup table differs (%d lines)", len(want))
	}
	// Write sector-numbered data through the map, read it from the disk.
	d := openDirect(t, c.NodePath(name), true)
	defer d.Close()
	buf := alignedBuf(t, n*512)
	for i := 0; i < n; i++ {
		copy(buf[i*512:], fmt.Sprintf("mapped sector %d", i))
	}
	if _, err := d.f.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	d.f.Sync()
	d.Close()
	raw := openDirect(t, disk, false)
	defer raw.Close()
	sec := alignedBuf(t, 512)
	for _, i := range []int{0, 1, 2, 77, n / 2, n - 2, n - 1} {
		if _, err := raw.f.ReadAt(sec, int64(segs[i].Start)*512); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("mapped sector %d", i); !strings.HasPrefix(string(sec), want) {
			t.Errorf("disk sector %d holds %q, want %q", segs[i].Start, sec[:24], want)
		}
	}
	if err := c.Remove(name); err != nil {
		t.Fatal(err)
	}
}

// Our tables and status for all three checkpoint devices read exactly as
// dmsetup prints them, and have the forms snapshot.rst documents.
func TestVMCheckpointTablesMatchDmsetup(t *testing.T) {
	c, disk := vmSetup(t)
	cfg := testConfig(t, disk)
	k := newCheckpoint(t, c, cfg)
	ctx := context.Background()
	if err := k.StartCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	cow, err := c.Info(DefaultNames.Cow)
	if err != nil {
		t.Fatal(err)
	}
	ot, ostat := compareWithDmsetup(t, c, DefaultNames.Origin)
	ct, _ := compareWithDmsetup(t, c, DefaultNames.Cow)
	st, ss := compareWithDmsetup(t, c, DefaultNames.Snap)
	if want := fmt.Sprintf("0 %d snapshot-origin %s\n", diskSectors, cfg.Origin); FormatTable(ot) != want {
		t.Errorf("origin table %q, want %q", FormatTable(ot), want)
	}
	if len(ostat) != 1 || ostat[0].Params != "" {
		t.Errorf("origin status %v", ostat)
	}
	if len(ct) != len(cfg.Cow) {
		t.Errorf("cow table has %d targets, want %d", len(ct), len(cfg.Cow))
	}
	if want := fmt.Sprintf("0 %d snapshot %s %s P 8\n", diskSectors, cfg.Origin, cow.Dev); FormatTable(st) != want {
		t.Errorf("snapshot table %q, want %q", FormatTable(st), want)
	}
	s, err := ParseSnapshotStatus(ss[0].Params)
	if err != nil {
		t.Fatal(err)
	}
	// A new snapshot: header chunk + first metadata area allocated.
	if s.State != SnapActive || s.Total != cowSectors || s.Allocated != 16 || s.Metadata != 16 {
		t.Errorf("fresh snapshot status %+v", s)
	}
	// Start merging: the origin's table becomes snapshot-merge.
	if err := k.StartMerge(ctx); err != nil {
		t.Fatal(err)
	}
	mt, ms := compareWithDmsetup(t, c, DefaultNames.Origin)
	if want := fmt.Sprintf("0 %d snapshot-merge %s %s P 8\n", diskSectors, cfg.Origin, cow.Dev); FormatTable(mt) != want {
		t.Errorf("merge table %q, want %q", FormatTable(mt), want)
	}
	if m, err := ParseSnapshotStatus(ms[0].Params); err != nil || !m.MergeDone() {
		t.Errorf("merge of an empty checkpoint: %+v %v", m, err)
	}
	if _, err := c.Info(DefaultNames.Snap); !IsNoDevice(err) {
		t.Errorf("snapshot still there during the merge: %v", err)
	}
	if err := k.WaitMerge(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := k.FinishMerge(ctx); err != nil {
		t.Fatal(err)
	}
	pt, _ := compareWithDmsetup(t, c, DefaultNames.Origin)
	if want := fmt.Sprintf("0 %d linear %s 0\n", diskSectors, cfg.Origin); FormatTable(pt) != want {
		t.Errorf("plain table %q, want %q", FormatTable(pt), want)
	}
}

// The central data test: a known pattern, a checkpoint, overwrites and
// deletes through the origin (also across a reattach, as on a later boot),
// the snapshot showing the old data all along, then a merge that makes the
// disk byte-identical to the pattern outside the COW extents.
func TestVMCheckpointMergeRestoresPattern(t *testing.T) {
	c, disk := vmSetup(t)
	cfg := testConfig(t, disk)
	k := newCheckpoint(t, c, cfg)
	ctx := context.Background()
	const seed = 1
	fillPattern(t, disk, seed, 0, diskSectors/8)
	orig := expectation{base: seed}

	if err := k.StartCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.StartCheckpoint(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
	originNode := c.NodePath(DefaultNames.Origin)
	snapNode := c.NodePath(DefaultNames.Snap)
	now := expectation{base: seed, overrides: map[uint64]uint64{}}
	rng := rand.New(rand.NewPCG(1, 2))
	scribble(t, originNode, &now, 2, rng, 3000)
	verifyPattern(t, originNode, now, 0, dataSectors/8)
	verifyPattern(t, snapNode, orig, 0, dataSectors/8)
	st, err := k.SnapshotStatus()
	if err != nil || st.DataSectors() == 0 {
		t.Fatalf("after writes: %+v %v", st, err)
	}
	t.Logf("after first writes: %s", describe(t, k))

	// "Reboot": all dm state gone, the checkpoint reattached from disk.
	if err := k.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Reattach(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Reattach(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
	st2, err := k.SnapshotStatus()
	if err != nil || st2.Allocated != st.Allocated {
		t.Errorf("reattached snapshot %+v, before %+v (%v)", st2, st, err)
	}
	verifyPattern(t, snapNode, orig, 0, dataSectors/8)
	scribble(t, originNode, &now, 3, rng, 3000)
	verifyPattern(t, originNode, now, 0, dataSectors/8)
	verifyPattern(t, snapNode, orig, 0, dataSectors/8)
	checkCowTable(t, k, now.overrides, seed)

	// Roll back while attached (the in-system path: suspend the origin,
	// drop the snapshot, load snapshot-merge, resume).
	var calls []Progress
	mergeAll(t, k, func(p Progress) { calls = append(calls, p) })
	if len(calls) == 0 || !calls[len(calls)-1].Done || calls[len(calls)-1].BytesLeft != 0 {
		t.Errorf("progress reports %+v", calls)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i].BytesLeft > calls[i-1].BytesLeft {
			t.Errorf("bytes left grew: %d then %d", calls[i-1].BytesLeft, calls[i].BytesLeft)
		}
	}
	t.Logf("merge: %d polls, first %d bytes left, last %+v", len(calls), calls[0].BytesLeft, calls[len(calls)-1])
	if err := k.FinishMerge(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
	verifyPattern(t, originNode, orig, 0, dataSectors/8)
	if err := k.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if l, _ := c.List(); len(l) != 0 {
		t.Errorf("devices left: %+v", l)
	}
	// The raw disk, outside the COW extents, is the pattern again.
	verifyPattern(t, disk, orig, 0, cowStart/8)
}

// Commit keeps the new data, drops snapshot and COW, and leaves the origin
// mapped plain; it refuses to be undone.
func TestVMCommit(t *testing.T) {
	c, disk := vmSetup(t)
	cfg := testConfig(t, disk)
	k := newCheckpoint(t, c, cfg)
	ctx := context.Background()
	fillPattern(t, disk, 1, 0, dataSectors/8)
	if err := k.StartCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	node := c.NodePath(DefaultNames.Origin)
	before, err := c.Info(DefaultNames.Origin)
	if err != nil {
		t.Fatal(err)
	}
	now := expectation{base: 1, overrides: map[uint64]uint64{}}
	scribble(t, node, &now, 2, rand.New(rand.NewPCG(3, 4)), 500)
	// Keep the origin open across the commit, as a mounted filesystem would.
	held := openDirect(t, node, false)
	defer held.Close()
	if err := k.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Commit(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
	held.Close()
	after, err := c.Info(DefaultNames.Origin)
	if err != nil || after.Dev != before.Dev || after.Suspended {
		t.Errorf("origin before %+v after %+v (%v)", before, after, err)
	}
	pt, _ := compareWithDmsetup(t, c, DefaultNames.Origin)
	if want := fmt.Sprintf("0 %d linear %s 0\n", diskSectors, cfg.Origin); FormatTable(pt) != want {
		t.Errorf("committed origin %q, want %q", FormatTable(pt), want)
	}
	for _, n := range []string{DefaultNames.Snap, DefaultNames.Cow} {
		if _, err := c.Info(n); !IsNoDevice(err) {
			t.Errorf("%s after commit: %v", n, err)
		}
	}
	verifyPattern(t, node, now, 0, dataSectors/8)
	if err := k.Reattach(ctx); !errors.Is(err, ErrUnexpectedState) {
		t.Errorf("reattach after commit: %v", err)
	}
	if err := k.StartMerge(ctx); !errors.Is(err, ErrUnexpectedState) {
		t.Errorf("merge after commit: %v", err)
	}
	if err := k.MapPlain(ctx); err != nil {
		t.Errorf("map plain after commit: %v", err)
	}
}

// A COW too small for the writes: the snapshot becomes Invalid (as dmsetup
// also says), an event is raised, writes to the origin keep working, and
// the checkpoint can be neither reattached nor merged.
func TestVMOverflow(t *testing.T) {
	c, disk := vmSetup(t)
	cfg := testConfig(t, disk)
	cfg.Cow = cfg.Cow[:1] // 1 MiB: header, one metadata area, 254 data chunks
	cfg.Cow[0].Length = 256 * 8
	k := newCheckpoint(t, c, cfg)
	ctx := context.Background()
	fillPattern(t, disk, 1, 0, dataSectors/8)
	if err := k.StartCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(DefaultNames.Snap)
	if err != nil {
		t.Fatal(err)
	}
	now := expectation{base: 1, overrides: map[uint64]uint64{}}
	scribble(t, c.NodePath(DefaultNames.Origin), &now, 2, rand.New(rand.NewPCG(5, 6)), 2000)
	// The invalidation raised a dm event: the wait returns at once.
	winfo, wst, err := c.WaitEvent(DefaultNames.Snap, info.EventNr)
	if err != nil || winfo.EventNr == info.EventNr || len(wst) != 1 {
		t.Errorf("wait event: %+v %v %v", winfo, wst, err)
	}
	st, err := k.SnapshotStatus()
	if err != nil || st.State != SnapInvalid {
		t.Fatalf("status after overflow: %+v %v", st, err)
	}
	if _, ss := compareWithDmsetup(t, c, DefaultNames.Snap); ss[0].Params != "Invalid" {
		t.Errorf("dmsetup status %v", ss)
	}
	verifyPattern(t, c.NodePath(DefaultNames.Origin), now, 0, dataSectors/8)
	if h, err := k.readCowHeader(); err != nil || h.State != CowInvalidated {
		t.Errorf("COW header after overflow: %+v %v", h, err)
	}
	if err := k.Reattach(ctx); !errors.Is(err, ErrSnapshotInvalid) {
		t.Errorf("reattach of the attached invalid snapshot: %v", err)
	}
	if err := k.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Reattach(ctx); !errors.Is(err, ErrSnapshotInvalid) {
		t.Errorf("reattach of an invalidated COW: %v", err)
	}
	if err := k.StartMerge(ctx); !errors.Is(err, ErrSnapshotInvalid) {
		t.Errorf("merge of an invalidated COW: %v", err)
	}
}

// Half-done states an interrupted run can leave behind in the same boot:
// each operation must converge from them.
func TestVMConvergesFromPartialStates(t *testing.T) {
	c, disk := vmSetup(t)
	cfg := testConfig(t, disk)
	ctx := context.Background()
	fillPattern(t, disk, 1, 0, dataSectors/8)
	cowTable, _ := Linear(cfg.Cow)

	t.Run("cow only", func(t *testing.T) {
		resetDM(t, c)
		k := newCheckpoint(t, c, cfg)
		if _, err := c.CreateAndLoad(DefaultNames.Cow, UUIDPrefix+DefaultNames.Cow, cowTable); err != nil {
			t.Fatal(err)
		}
		if err := k.StartCheckpoint(ctx); err != nil {
			t.Fatal(err)
		}
		if got := describe(t, k); got != "origin=snapshot-origin cow=COW map snap=snapshot snapshot=16/131072 16" {
			t.Errorf("state %s", got)
		}
	})
	t.Run("empty devices", func(t *testing.T) {
		resetDM(t, c)
		k := newCheckpoint(t, c, cfg)
		for _, n := range []string{DefaultNames.Cow, DefaultNames.Snap, DefaultNames.Origin} {
			if _, err := c.Create(n, UUIDPrefix+n); err != nil {
				t.Fatal(err)
			}
		}
		if err := k.StartCheckpoint(ctx); err != nil {
			t.Fatal(err)
		}
		if got := describe(t, k); !strings.HasPrefix(got, "origin=snapshot-origin cow=COW map snap=snapshot") {
			t.Errorf("state %s", got)
		}
	})
	t.Run("origin left suspended", func(t *testing.T) {
		resetDM(t, c)
		k := newCheckpoint(t, c, cfg)
		if err := k.StartCheckpoint(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Suspend(DefaultNames.Origin, SuspendOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := k.Reattach(ctx); err != nil {
			t.Fatal(err)
		}
		if info, _ := c.Info(DefaultNames.Origin); info.Suspended {
			t.Error("origin still suspended")
		}
	})
	t.Run("stale inactive table", func(t *testing.T) {
		resetDM(t, c)
		k := newCheckpoint(t, c, cfg)
		if err := k.StartCheckpoint(ctx); err != nil {
			t.Fatal(err)
		}
		// A run that died after loading the merge table, before resuming.
		cow, _ := c.Info(DefaultNames.Cow)
		mt, _ := SnapshotMerge(cfg.Origin, cow.Dev, cfg.OriginSectors, cfg.ChunkSectors)
		c.Suspend(DefaultNames.Origin, SuspendOptions{})
		c.Remove(DefaultNames.Snap)
		if _, err := c.Load(DefaultNames.Origin, mt); err != nil {
			t.Fatal(err)
		}
		mergeAll(t, k, nil)
		if got := describe(t, k); got != "origin=plain linear cow=absent snap=absent" {
			t.Errorf("state %s", got)
		}
	})
	t.Run("finish interrupted", func(t *testing.T) {
		resetDM(t, c)
		k := newCheckpoint(t, c, cfg)
		if err := k.StartCheckpoint(ctx); err != nil {
			t.Fatal(err)
		}
		if err := k.StartMerge(ctx); err != nil {
			t.Fatal(err)
		}
		if err := k.StartMerge(ctx); err != nil { // idempotent
			t.Fatal(err)
		}
		if err := k.WaitMerge(ctx, nil); err != nil {
			t.Fatal(err)
		}
		// Died in FinishMerge: origin suspended with the plain table loaded.
		c.Suspend(DefaultNames.Origin, SuspendOptions{})
		if _, err := c.Load(DefaultNames.Origin, plainTable{k.plainTable()}); err != nil {
			t.Fatal(err)
		}
		if err := k.FinishMerge(ctx); err != nil {
			t.Fatal(err)
		}
		if got := describe(t, k); got != "origin=plain linear cow=absent snap=absent" {
			t.Errorf("state %s", got)
		}
	})
	t.Run("foreign device", func(t *testing.T) {
		resetDM(t, c)
		k := newCheckpoint(t, c, cfg)
		if _, err := c.Create(DefaultNames.Origin, ""); err != nil {
			t.Fatal(err)
		}
		if err := k.StartCheckpoint(ctx); !errors.Is(err, ErrUnexpectedState) {
			t.Errorf("start over a foreign device: %v", err)
		}
	})
	t.Run("different extents", func(t *testing.T) {
		resetDM(t, c)
		k := newCheckpoint(t, c, cfg)
		if err := k.StartCheckpoint(ctx); err != nil {
			t.Fatal(err)
		}
		other := cfg
		other.Cow = append([]Segment(nil), cfg.Cow...)
		other.Cow[0], other.Cow[1] = other.Cow[1], other.Cow[0]
		k2 := newCheckpoint(t, c, other)
		if err := k2.StartMerge(ctx); !errors.Is(err, ErrUnexpectedState) {
			t.Errorf("merge with another extent list: %v", err)
		}
	})
	t.Run("origin open at merge", func(t *testing.T) {
		resetDM(t, c)
		k := newCheckpoint(t, c, cfg)
		if err := k.StartCheckpoint(ctx); err != nil {
			t.Fatal(err)
		}
		held := openDirect(t, c.NodePath(DefaultNames.Origin), false)
		defer held.Close()
		if err := k.StartMerge(ctx); !errors.Is(err, ErrOriginInUse) {
			t.Errorf("merge under an open origin: %v", err)
		}
		if got := describe(t, k); got != "origin=snapshot-origin cow=COW map snap=snapshot snapshot=16/131072 16" {
			t.Errorf("refused merge changed the state: %s", got)
		}
		if info, _ := c.Info(DefaultNames.Origin); info.Suspended {
			t.Error("origin left suspended")
		}
		held.Close()
		if err := k.StartMerge(ctx); err != nil {
			t.Fatal(err)
		}
		// Once merging, the origin may be opened.
		held = openDirect(t, c.NodePath(DefaultNames.Origin), false)
		if err := k.StartMerge(ctx); err != nil {
			t.Errorf("StartMerge again with the merging origin open: %v", err)
		}
		held.Close()
	})
	t.Run("no checkpoint", func(t *testing.T) {
		resetDM(t, c)
		k := newCheckpoint(t, c, cfg)
		cw := openDirect(t, disk, true)
		defer cw.Close()
		z := alignedBuf(t, blockSize)
		for _, s := range cfg.Cow[:1] {
			if _, err := cw.f.WriteAt(z, int64(s.Start)*512); err != nil {
				t.Fatal(err)
			}
		}
		cw.f.Sync()
		if err := k.Reattach(ctx); !errors.Is(err, ErrNoCheckpoint) {
			t.Errorf("reattach of a zeroed COW: %v", err)
		}
		if err := k.StartMerge(ctx); !errors.Is(err, ErrNoCheckpoint) {
			t.Errorf("merge of a zeroed COW: %v", err)
		}
	})
}

// TestVMOriginRefusesDiscard: during a checkpoint, a discard (fstrim, or a
// filesystem mounted with -o discard) must not reach the origin: it would
// drop blocks of files the new system deleted without copying them to the
// COW first, and the rollback would bring the files back without their
// data. snapshot-origin advertises no discard support (dm-snap.c
// origin_ctr sets no num_discard_bios), so the block layer refuses every
// discard to it; the disk below does support discard (the check is not
// vacuous).
func TestVMOriginRefusesDiscard(t *testing.T) {
	c, disk := vmSetup(t)
	k := newCheckpoint(t, c, testConfig(t, disk))
	if err := k.StartCheckpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	discardMax := func(dev string) string {
		var st unix.Stat_t
		if err := unix.Stat(dev, &st); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/queue/discard_max_bytes", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if got := discardMax(disk); got == "0" {
		t.Fatalf("%s supports no discard: the test would prove nothing (QEMU virtio-blk advertises discard)", disk)
	}
	node := c.NodePath(DefaultNames.Origin)
	if got := discardMax(node); got != "0" {
		t.Fatalf("%s (snapshot-origin) advertises discard_max_bytes=%s: a trim would bypass the COW", node, got)
	}
	t.Logf("discard_max_bytes: %s %s, %s 0 (BLKDISCARD and filesystem discards get EOPNOTSUPP: block/ioctl.c blk_ioctl_discard, bdev_max_discard_sectors)", disk, discardMax(disk), node)
}
