package cachecutvm

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
	"github.com/cpinit/cpinit/qemu-tests/cachedisk"
)

// The cache-losing power-cut campaign (TestCacheCut, issue 15). Userdata,
// the metadata store and misc are served by qemu-tests/cachedisk, a disk
// with a volatile write cache: at a cut it keeps only what was flushed
// (DropAll), or for each cached 4 KiB block any prefix of the versions
// written since the last flush (Subset, seeded). Cuts are placed at flush
// boundaries, counted, not timed: "when the n-th flush of disk D arrives",
// before it is performed. So a cut lands at the same step of cpinit in
// every run, whatever the host's speed.
//
// A reference run of two update cycles (one rolled back, one committed)
// records, per boot ("phase"), the images before it and the flushes each
// disk received. The cut points are every flush of the metadata store and
// of misc (only cpinit writes those: each of its saves and misc writes, in
// begin, the trial's first boot, commit, rollback, and the merge boot's
// merge-attempt, merge-done and cleanup), and userdata flushes early, in
// the middle and late in each boot (the merge's among them). Each cut runs
// on a copy of the images before its phase; then the device boots until
// settled, the way the cycle goes on (the update is rolled back, or, in
// the commit phase, committed), and the checks are: every boot came up on
// its own (no FATAL), the store is valid, the update's system never ran
// on rolled-back data and the bootloader picks the slot whose data
// userdata holds, e2fsck is clean, the COW file is gone, and userdata is
// byte for byte the checkpoint (rollback) or exactly what the update had
// synced before its commit.
//
// Flags (or environment variables):
//
//	-cachecuts N       (CPINIT_CACHECUTS)    cuts to make; default 50: a
//	                                         round of every cut point (43
//	                                         today) and the start of the
//	                                         next, modes alternating, at
//	                                         least half of them dropping
//	                                         the whole cache (make soak:
//	                                         200)
//	-cachecut.seed S   (CPINIT_CACHECUT_SEED) seed; default from the clock
//	-cachecuts.arm64 N (CPINIT_ARM64_CACHECUTS) TestArm64CacheCut's cuts
//	                                         over every boot of both
//	                                         cycles; default 0: a round
//	                                         of the rollback's merge
//	                                         boot's points only (make
//	                                         soak: 50)
//
// The seed is printed first; it draws the Subset choices and the userdata
// flushes of the later rounds, so a failure reproduces from it (the cut
// points are counted flushes, not times).
//
// TestCacheCutF2FS is the campaign on f2fs userdata (Debian's generic
// kernel; userdata compared through the guest's manifest, fsck.f2fs on the
// host). By default it cuts only userdata's flushes in the rollback cycle's
// merge boot (the path f2fs adds: the kernel merging into a log-structured
// filesystem; cpinit's own store and misc flushes there are the same on
// ext4), a round of them: the first, the middle and the last. make test
// leaves it to make soak (its reference run alone boots the generic kernel
// eight times); f2fsvm's lifecycle tests run the same paths uncut.
//
//	-cachecuts.f2fs N      (CPINIT_CACHECUTS_F2FS)    cuts; default 0: one
//	                                                  round of the points
//	-cachecut.f2fs.all     (CPINIT_CACHECUT_F2FS_ALL=1) both cycles, every
//	                                                  boot, as on ext4
//	                                                  (make soak)
//
// It takes its seed from -cachecut.seed too.
var (
	flagCacheCuts     = flag.Int("cachecuts", qt.EnvInt("CPINIT_CACHECUTS", 50), "TestCacheCut: power cuts to make (0: a round of the cut points)")
	flagCacheSeed     = flag.Uint64("cachecut.seed", uint64(qt.EnvInt("CPINIT_CACHECUT_SEED", 0)), "TestCacheCut, TestCacheCutF2FS: seed (0: from the clock)")
	flagCacheCutsF2FS = flag.Int("cachecuts.f2fs", qt.EnvInt("CPINIT_CACHECUTS_F2FS", 0), "TestCacheCutF2FS: power cuts to make (0: a round of the cut points)")
	flagCacheF2FSAll  = flag.Bool("cachecut.f2fs.all", qt.EnvInt("CPINIT_CACHECUT_F2FS_ALL", 0) == 1, "TestCacheCutF2FS: cut every boot of both cycles, not only the merge")
	flagCacheCutsArm  = flag.Int("cachecuts.arm64", qt.EnvInt("CPINIT_ARM64_CACHECUTS", 0), "TestArm64CacheCut: cuts over every boot of both cycles (0: a round of the rollback's merge boot's points only)")
)

// ccConfig is one campaign.
type ccConfig struct {
	fs     string   // userdata's filesystem: "" (ext4) or "f2fs"
	kernel string   // the pinned kernel's env file ("": the cloud kernel)
	cycles []string // "rollback", "commit"
	cutIn  string   // cut only the boot ("phase") of this name ("" all)
	udOnly bool     // cut only userdata's flushes
	cuts   int      // cuts to make (0: a round of the points)
}

// The disks served by cachedisk, by their names in the flush log.
const (
	ccUserdata = "userdata"
	ccMetadata = "metadata"
	ccMisc     = "misc"
)

// ccPhase is one boot of a reference cycle.
type ccPhase struct {
	cycle  string // "rollback" or "commit"
	name   string // begin, trial, rollback, merge, commit
	slot   int    // the slot the bootloader picks for it
	action string // the slot's sysinit parameters
	dir    string // the images before this boot
	// flushes per disk in the reference boot, and the sectors each made
	// durable (sectors[disk][n-1] for the n-th)
	flushes map[string]int
	sectors map[string][]int
}

// ccPoint is one cut: the n-th flush of disk in phase, and how the cache is
// lost.
type ccPoint struct {
	phase *ccPhase
	disk  string
	n     int
	mode  cachedisk.Mode
	seed  uint64
}

func (p ccPoint) String() string {
	return fmt.Sprintf("%s/%s %s flush %d/%d %s", p.phase.cycle, p.phase.name, p.disk, p.n, p.phase.flushes[p.disk], p.mode)
}

// ccRef is the reference run's outcome.
type ccRef struct {
	cfg    ccConfig
	before ccData // userdata before the update
	after  ccData // userdata after the committed update
	phases []*ccPhase
	// device: the rollback cycle's device, whose system images every
	// cut's device copies (they are only ever mounted read-only)
	device *qt.ABDevice
}

// ccStats counts the cuts by phase and where they landed.
type ccStats struct {
	mu      sync.Mutex
	byPhase map[string]int
	dropAll int
	missed  int
	points  map[string]int
}

func TestCacheCut(t *testing.T) {
	ccCampaign(t, ccConfig{cycles: []string{"rollback", "commit"}, cuts: max(*flagCacheCuts, 0)})
}

func TestCacheCutF2FS(t *testing.T) {
	cfg := ccConfig{fs: "f2fs", cycles: []string{"rollback"}, cutIn: "merge", udOnly: true, cuts: *flagCacheCutsF2FS}
	if *flagCacheF2FSAll {
		cfg.cycles, cfg.cutIn, cfg.udOnly = []string{"rollback", "commit"}, "", false
	}
	ccCampaign(t, cfg)
}

// TestArm64CacheCut is TestCacheCut on arm64 devices (the arm64 kernel on
// qemu-system-aarch64's virt board, cpinit built for arm64), gated by
// CPINIT_ARM64=1. By default it cuts the rollback's merge boot only, at
// each of its points (the store's merge-attempt, merge-done and cleanup
// saves, userdata's first, middle and last flush: the merge's own); with
// -cachecuts.arm64 N, N cuts over every boot of both cycles, as
// TestCacheCut makes them.
func TestArm64CacheCut(t *testing.T) {
	qt.NeedArm64(t)
	cfg := ccConfig{kernel: initramfs.Arm64Kernel, cycles: []string{"rollback"}, cutIn: "merge"}
	if n := *flagCacheCutsArm; n > 0 {
		cfg.cycles, cfg.cutIn, cfg.cuts = []string{"rollback", "commit"}, "", n
	}
	ccCampaign(t, cfg)
}

func ccCampaign(t *testing.T, cfg ccConfig) {
	seed := *flagCacheSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano()) & (1<<53 - 1)
	}
	fs := cfg.fs
	if fs == "" {
		fs = "ext4"
	}
	if cfg.kernel != "" {
		fs += " (" + cfg.kernel + ")"
	}
	t.Logf("cache-cut campaign on %s userdata: seed %d (replay: -cachecut.seed=%d or CPINIT_CACHECUT_SEED=%d), cycles %v, cuts in %q (\"\": every boot), userdata flushes only: %v", fs, seed, seed, seed, cfg.cycles, cfg.cutIn, cfg.udOnly)
	start := time.Now()
	ref := ccReference(t, cfg)
	points, round := ccPoints(ref, cfg.cuts, seed)
	t.Logf("%d cut points in a round (every store and misc flush of cpinit's, userdata's first, middle and last of each boot); %d cuts", round, len(points))
	if len(points) < round {
		t.Logf("NOTE: %d cuts do not cover a round of %d points", len(points), round)
	}
	st := &ccStats{byPhase: map[string]int{}, points: map[string]int{}}
	t.Run("cuts", func(t *testing.T) {
		for i, p := range points {
			t.Run(fmt.Sprintf("%02d-%s-%s-%s-%d-%s", i, p.phase.cycle, p.phase.name, p.disk, p.n, p.mode), func(t *testing.T) {
				t.Parallel()
				ccCut(t, ref, p, st)
			})
		}
	})
	st.mu.Lock()
	defer st.mu.Unlock()
	t.Logf("%s, seed %d: %d cuts (%d DropAll, %d Subset), %d past the boot's end, %s", fs, seed, len(points), st.dropAll, len(points)-st.dropAll, st.missed, time.Since(start).Round(time.Second))
	var keys []string
	for k := range st.byPhase {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("  %-18s %3d cuts", k, st.byPhase[k])
	}
}

// ccReference runs the cycles uncut on cachedisk, keeping the images
// before each boot and its flush counts.
func ccReference(t *testing.T, cfg ccConfig) *ccRef {
	t.Helper()
	ref := &ccRef{cfg: cfg}
	cow, manifestOpt := "48M", ""
	if cfg.fs == "f2fs" {
		// f2fs writes every change to new blocks: more COW per MiB
		// written than ext4, and begin rounds it to whole sections.
		cow, manifestOpt = "64M", " sysinit.manifest=1"
	}
	for _, cycle := range cfg.cycles {
		var d *qt.ABDevice
		switch {
		case cfg.fs == "f2fs":
			d = qt.NewTestF2FSDevice(t, 51)
		case cfg.kernel != "":
			d = qt.NewTestDeviceFor(t, 51, cfg.kernel)
		default:
			d = qt.NewTestDevice(t, 51)
		}
		if cycle == "rollback" {
			ref.device = d
			if cfg.fs == "" {
				ref.before = ccData{m: qt.UserdataManifestT(t, d)}
			}
		}
		phases := []*ccPhase{
			// On f2fs, slot a prints the guest's manifest of userdata
			// before it runs begin: the data a rollback must restore.
			{cycle: cycle, name: "begin", slot: 0, action: "sysinit.action=ota sysinit.cowsize=" + cow + manifestOpt},
			{cycle: cycle, name: "trial", slot: 1, action: "sysinit.action=workload sysinit.seed=51 sysinit.mib=8"},
		}
		if cycle == "rollback" {
			phases = append(phases,
				&ccPhase{cycle: cycle, name: "rollback", slot: 1, action: "sysinit.action=cmd sysinit.args=rollback"},
				&ccPhase{cycle: cycle, name: "merge", slot: 0, action: "sysinit.action=report"})
		} else {
			phases = append(phases,
				&ccPhase{cycle: cycle, name: "commit", slot: 1, action: "sysinit.action=cmd sysinit.args=commit"})
		}
		if ref.device == nil {
			ref.device = d
		}
		for _, ph := range phases {
			ph.dir = t.TempDir()
			ccSave(t, d, ph.dir)
			vm, m, slot := ccBoot(t, d, ph.action, nil)
			if slot != ph.slot {
				t.Fatalf("reference %s/%s: the bootloader picked slot %d, want %d", cycle, ph.name, slot, ph.slot)
			}
			if err := vm.Wait(qt.SlotBootTimeout); err != nil {
				t.Fatalf("reference %s/%s: %v\n--- console ---\n%s", cycle, ph.name, err, qt.Tail(vm.Output(), 60))
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			ccConsoleOK(t, vm.Output(), fmt.Sprintf("reference %s/%s", cycle, ph.name))
			if cfg.fs == "f2fs" && cycle == "rollback" && ph.name == "begin" {
				mm := regexp.MustCompile(qt.ManifestRe).FindStringSubmatch(vm.Output())
				if mm == nil {
					t.Fatalf("reference begin: no manifest line\n--- console ---\n%s", qt.Tail(vm.Output(), 60))
				}
				ref.before = ccData{line: mm[1] + " files=" + mm[2]}
			}
			ph.flushes, ph.sectors = map[string]int{}, map[string][]int{}
			for _, f := range m.Log() {
				ph.flushes[f.Disk]++
				ph.sectors[f.Disk] = append(ph.sectors[f.Disk], f.Sectors)
			}
			t.Logf("reference %s/%s: flushes %v, sectors made durable %v; record after: %s", cycle, ph.name, ph.flushes, ph.sectors, recStringOf(t, d))
			ref.phases = append(ref.phases, ph)
		}
		r := qt.WantRecord(t, d, bootstate.StateFresh)
		if r.COWPath != "" || r.TargetSlot != "" {
			t.Fatalf("reference %s cycle did not settle: %s", cycle, qt.RecString(*r))
		}
		if cycle == "commit" {
			ref.after = ccUserdataNow(t, d, 1, "")
			if len(ref.after.diff(ref.before)) == 0 {
				t.Fatal("the committed update changed nothing in userdata")
			}
		} else if diff := ccUserdataNow(t, d, 0, "").diff(ref.before); len(diff) > 0 {
			t.Fatalf("the reference rollback did not restore userdata:\n%s", strings.Join(diff, "\n"))
		}
	}
	return ref
}

// ccData is what userdata holds: on ext4 the manifest read from the host
// (debugfs), on f2fs the guest's manifest line, "DIGEST files=N" (there is
// no debugfs for f2fs).
type ccData struct {
	m    qt.Manifest
	line string
}

func (a ccData) diff(want ccData) []string {
	if a.m != nil || want.m != nil {
		return a.m.Diff(want.m, 10)
	}
	if a.line != want.line {
		return []string{fmt.Sprintf("guest manifest %s, want %s", a.line, want.line)}
	}
	return nil
}

// ccUserdataNow checks the settled userdata and returns what it holds. On
// ext4: the COW file is gone (debugfs) and e2fsck -fn is clean. On f2fs:
// fsck.f2fs --dry-run is clean, and the manifest and the COW file gone are
// what settled (the console of the boot that settled the device, if it
// was pick's and printed them: sysinit.manifest=1) shows, or else a boot
// of the slot the bootloader picks (which must be pick) prints.
func ccUserdataNow(t *testing.T, d *qt.ABDevice, pick int, settled string) ccData {
	t.Helper()
	if d.FSType != "f2fs" {
		if exists, err := d.COWFileExists(); err != nil || exists {
			t.Fatalf("COW file still in userdata after settling (err %v)", err)
		}
		return ccData{m: qt.UserdataManifestT(t, d)} // e2fsck -fn first
	}
	if err := d.CheckF2FS(); err != nil {
		t.Fatalf("userdata after settling: %v", err)
	}
	if mm := regexp.MustCompile(qt.ManifestRe).FindStringSubmatch(settled); mm != nil && strings.Contains(settled, "sysinit: cow=absent") {
		return ccData{line: mm[1] + " files=" + mm[2]}
	}
	d.Slot[pick] = "sysinit.action=report sysinit.manifest=1"
	vm, slot := d.Boot(t, "")
	if slot != pick {
		t.Fatalf("the bootloader picked slot %d for the manifest boot, want %d", slot, pick)
	}
	mm := vm.ExpectT(t, qt.ManifestRe, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: cow=absent`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	ccConsoleOK(t, vm.Output(), "the manifest boot")
	return ccData{line: mm[1] + " files=" + mm[2]}
}

// ccPoints chooses the cuts: every flush of the metadata store and of misc
// in every phase that made something durable, and userdata's first, middle
// and last such flush of each phase, in rounds until there are total. It
// returns them and the size of a round.
func ccPoints(ref *ccRef, total int, seed uint64) ([]ccPoint, int) {
	rng := rand.New(rand.NewPCG(seed, 0xcc))
	var all []ccPoint
	seen := map[string]bool{}
	for _, ph := range ref.phases {
		if ph.cycle == "commit" && ph.name != "commit" && slices.Contains(ref.cfg.cycles, "rollback") {
			continue // begin and trial are the rollback cycle's
		}
		if ref.cfg.cutIn != "" && ph.name != ref.cfg.cutIn {
			continue
		}
		// Every flush that made something of the store or misc durable:
		// cpinit's saves and misc writes. (A flush with nothing cached,
		// such as QEMU's own at exit, is no step of cpinit's.)
		for _, disk := range []string{ccMetadata, ccMisc} {
			if ref.cfg.udOnly {
				break
			}
			for n := 1; n <= ph.flushes[disk]; n++ {
				if ph.sectors[disk][n-1] > 0 {
					all = append(all, ccPoint{phase: ph, disk: disk, n: n})
				}
			}
		}
		// Userdata's writers are the filesystem, the system and the
		// kernel's merge: its first flush with data, the one that makes
		// half of the boot's data durable (by sectors, not by count: a
		// merge boot's many small flushes of the mount and of the COW's
		// metadata would put a middle by count near the merge's start),
		// and the last.
		var ud []int
		total, half := 0, 0
		for _, sec := range ph.sectors[ccUserdata] {
			total += sec
		}
		sum := 0
		for n, sec := range ph.sectors[ccUserdata] {
			if sec == 0 {
				continue
			}
			if sum += sec; half == 0 && 2*sum >= total {
				half = n + 1
			}
			ud = append(ud, n+1)
		}
		if u := len(ud); u > 0 {
			for _, n := range []int{ud[0], half, ud[u-1]} {
				if k := fmt.Sprintf("%p/%d", ph, n); !seen[k] {
					seen[k] = true
					all = append(all, ccPoint{phase: ph, disk: ccUserdata, n: n})
				}
			}
		}
	}
	// Rounds over all points; the mode alternates along a round and from
	// one round to the next, so two rounds cut every point both ways and
	// at least half the cuts drop the whole cache. After the first round,
	// userdata's points move to other flushes of the same boot.
	if total == 0 {
		total = len(all)
	}
	var out []ccPoint
	dropAll := 0
	for r := 0; len(out) < total; r++ {
		for i, p := range all {
			if len(out) == total {
				break
			}
			if r > 0 && p.disk == ccUserdata {
				var ud []int
				for n, sec := range p.phase.sectors[ccUserdata] {
					if sec > 0 {
						ud = append(ud, n+1)
					}
				}
				p.n = ud[rng.IntN(len(ud))]
			}
			p.mode = cachedisk.Mode((i + r) % 2)
			p.seed = rng.Uint64()
			if p.mode == cachedisk.DropAll {
				dropAll++
			}
			out = append(out, p)
		}
	}
	// A round of odd length ends where the next starts on the same mode;
	// so that at least half of any number of cuts drop the whole cache
	// (issue 15), the last Subset cuts turn DropAll where it falls short.
	for i := len(out) - 1; i >= 0 && 2*dropAll < len(out); i-- {
		if out[i].mode == cachedisk.Subset {
			out[i].mode = cachedisk.DropAll
			dropAll++
		}
	}
	return out, len(all)
}

// ccCut makes one cut and checks the device settles.
func ccCut(t *testing.T, ref *ccRef, p ccPoint, st *ccStats) {
	d := ccDevice(t, ref.device, p.phase.dir)
	cut := &p
	vm, m, slot := ccBoot(t, d, p.phase.action, cut)
	if slot != p.phase.slot {
		t.Fatalf("the bootloader picked slot %d, want %d", slot, p.phase.slot)
	}
	missed := false
	select {
	case <-m.Reached():
		vm.Kill()
	case <-ccExited(vm):
		missed = true // the boot ended before that flush
	}
	res, err := m.Cut(p.mode, p.seed)
	if err != nil {
		t.Fatal(err)
	}
	disk, n := m.CutWhere()
	lost := 0
	for _, r := range res {
		lost += r.Cached - r.Persisted
	}
	out := vm.Output()
	ccConsoleOK(t, out, "the cut boot")
	t.Logf("cut %s: landed at %s flush %d (missed=%v), %d cached sectors lost; record now %s; last console line %q",
		p, disk, n, missed, lost, recStringOf(t, d), lastLine(out))
	st.mu.Lock()
	st.byPhase[p.phase.cycle+"/"+p.phase.name]++
	if p.mode == cachedisk.DropAll {
		st.dropAll++
	}
	if missed {
		st.missed++
	}
	st.mu.Unlock()
	goal := p.phase.cycle
	if p.phase.name == "begin" || p.phase.name == "trial" {
		goal = "rollback"
	}
	ccSettle(t, d, ref, goal)
}

// ccSettle boots (plain image files: every boot now ends cleanly) until the
// cycle is over, driving it to goal the way a device would go on: the
// update's slot is aborted from the boot menu (cpinit.abort=1, rollback) or
// commits at its next boot (`cpinit commit --if-trial`, commit). Then the
// checks.
func ccSettle(t *testing.T, d *qt.ABDevice, ref *ccRef, goal string) {
	t.Helper()
	// On f2fs the systems print userdata's manifest (there is no debugfs
	// to read it from the host): the boot that settles the device shows
	// what it holds.
	report := "sysinit.action=report"
	if d.FSType == "f2fs" {
		report += " sysinit.manifest=1"
	}
	d.Slot[0], d.Slot[1] = report, report
	extraB := "cpinit.abort=1"
	if goal == "commit" {
		d.Slot[1] = "sysinit.action=cmd sysinit.args=commit,--if-trial"
		extraB = ""
	}
	settled, settledSlot := "", -1 // the console and slot of the last boot
	for boot := 0; ; boot++ {
		r, err := d.Record()
		if err != nil && !strings.Contains(err.Error(), "blank") {
			t.Fatalf("metadata store after the cut: %v", err)
		}
		if boot > 0 && r != nil && r.State == bootstate.StateFresh && r.COWPath == "" && r.TargetSlot == "" {
			break
		}
		if boot == 8 {
			t.Fatalf("not settled after %d boots: %s", boot, recStringOf(t, d))
		}
		bc, err := d.ReadMisc()
		if err != nil {
			t.Fatalf("misc after the cut: %v", err)
		}
		next := *bc
		extra := ""
		if next.BootloaderSelect() == 1 {
			extra = extraB
		}
		vm, slot := d.Boot(t, extra)
		if err := vm.Wait(qt.SlotBootTimeout); err != nil {
			t.Fatalf("settle boot %d (slot %d): %v\n--- console ---\n%s", boot, slot, err, qt.Tail(vm.Output(), 60))
		}
		out := vm.Output()
		ccConsoleOK(t, out, fmt.Sprintf("settle boot %d (slot %d)", boot, slot))
		settled, settledSlot = out, slot
		if goal == "rollback" && slot == 1 && strings.Contains(out, "sysinit: pid=1") {
			// Every boot of the update's slot carries cpinit.abort=1:
			// cpinit rolls back (or cancels) and reboots into the old
			// slot, or finds the rollback done and does the same.
			t.Fatalf("settle boot %d: the update's system started on the way to a rollback (record was %s)\n--- console ---\n%s", boot, recStringOf(t, d), qt.Tail(out, 40))
		}
	}
	pick, want := 0, ref.before
	if goal == "commit" {
		pick, want = 1, ref.after
	}
	bc, err := d.ReadMisc()
	if err != nil {
		t.Fatal(err)
	}
	if s := bc.BootloaderSelect(); s != pick {
		t.Fatalf("the bootloader's next pick is slot %d, want %d after the %s (misc %+v)", s, pick, goal, bc.Slots[:2])
	}
	if settledSlot != pick {
		settled = ""
	}
	if diff := ccUserdataNow(t, d, pick, settled).diff(want); len(diff) > 0 {
		t.Fatalf("userdata after settling (%s) differs from what it must be:\n%s", goal, strings.Join(diff, "\n"))
	}
}

// ccBoot boots the slot the bootloader picks with userdata, the metadata
// store and misc served by a new cachedisk machine, armed with cut.
func ccBoot(t *testing.T, d *qt.ABDevice, action string, cut *ccPoint) (*qt.VM, *cachedisk.Machine, int) {
	t.Helper()
	slot, err := d.SelectSlot()
	if err != nil {
		t.Fatal(err)
	}
	d.Slot[slot] = action
	sock, err := os.MkdirTemp("", "cc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	m := cachedisk.NewMachine()
	t.Cleanup(func() { m.Close() })
	// The disks of the devices cpinit targets (eMMC, UFS, NVMe, 512e and
	// 4Kn disks) write an aligned 4 KiB block whole or not at all, and
	// ext4 relies on it: with 512-byte units a cut tore its superblock
	// (1 KiB inside block 0, checksummed) at a boot's first flush and the
	// next mount failed "bad message" (seed 3976630223851722), with or
	// without cpinit.
	m.SetAtomicUnit(cachedisk.AtomicUnit4K)
	// The harness's console arguments carry no_timer_check on x86 (an
	// x86 parameter: qt.ConsoleArgs).
	o := d.Options(slot, "")
	for i, disk := range []struct{ name, image string }{{ccUserdata, d.Userdata}, {ccMetadata, d.Metadata}, {ccMisc, d.Misc}} {
		cd, err := m.AddDisk(disk.name, disk.image, filepath.Join(sock, disk.name))
		if err != nil {
			t.Fatal(err)
		}
		o.Disks[2+i] = cd.URI()
	}
	if cut != nil {
		m.CutAtDiskFlush(cut.disk, cut.n)
	}
	vm := qt.StartT(t, o)
	return vm, m, slot
}

// ccExited is closed when the qt.VM has exited.
func ccExited(vm *qt.VM) <-chan struct{} {
	c := make(chan struct{})
	go func() {
		vm.Wait(qt.SlotBootTimeout)
		close(c)
	}()
	return c
}

// ccConsoleOK fails on what no boot may show.
func ccConsoleOK(t *testing.T, out, what string) {
	t.Helper()
	for _, bad := range []string{"FATAL", "sysinit: error", "WARNING", "Kernel panic", "cmd exit=exit status", "EXT4-fs error", `F2FS-fs \(vd.\): .*[Ee]rror`} {
		if loc := regexp.MustCompile(bad).FindStringIndex(out); loc != nil {
			t.Fatalf("%s shows %q\n--- console ---\n%s", what, out[loc[0]:loc[1]], qt.Tail(out, 60))
		}
	}
}

// ccSave keeps the state images (userdata, store, misc) in dir.
func ccSave(t *testing.T, d *qt.ABDevice, dir string) {
	t.Helper()
	for _, p := range []string{d.Userdata, d.Metadata, d.Misc} {
		qt.CopyFile(t, p, filepath.Join(dir, filepath.Base(p)))
	}
}

// ccDevice is a device of its own for one cut: ref's system images, and
// userdata, store and misc as ccSave kept them in dir.
func ccDevice(t *testing.T, ref *qt.ABDevice, dir string) *qt.ABDevice {
	t.Helper()
	c := *ref
	c.Dir = t.TempDir()
	cp := func(src, name string) string {
		dst := filepath.Join(c.Dir, name)
		qt.CopyFile(t, src, dst)
		return dst
	}
	c.Systems = [2]string{cp(ref.Systems[0], filepath.Base(ref.Systems[0])), cp(ref.Systems[1], filepath.Base(ref.Systems[1]))}
	for _, p := range []*string{&c.Userdata, &c.Metadata, &c.Misc} {
		name := filepath.Base(*p)
		*p = cp(filepath.Join(dir, name), name)
	}
	return &c
}

func recStringOf(t *testing.T, d *qt.ABDevice) string {
	r, err := d.Record()
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return qt.RecString(*r)
}

func lastLine(out string) string {
	lines := strings.Split(strings.TrimRight(out, "\r\n"), "\n")
	return strings.TrimRight(lines[len(lines)-1], "\r")
}
