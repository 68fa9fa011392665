package qemutests

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// The power-cut suite (TestPowerCut). Each simulated device goes through
// update cycles (begin in the current slot, trial boots of the new slot,
// then commit or rollback) and the host cuts the power (SIGKILL to QEMU) at
// seeded random moments inside each phase: during `cpinit begin`, during
// the trial's first boot (snapshot creation and the new system's writes),
// during `cpinit commit` (or `cpinit rollback`), during the rollback merge,
// and during the cleanup that follows. After every cut the host keeps
// booting, choosing each slot's system by the state it reads back from the
// metadata store, until the cycle settles (state fresh, no leftover COW
// path); then it checks what is on disk: e2fsck -fn clean, the COW file
// gone, and userdata either exactly the pre-update manifest (rollback,
// cancel) or the update's data (commit).
//
// Flags (or environment variables, for CI):
//
//	-powercuts N         (CPINIT_POWERCUTS)   cuts in all, at least; default 4
//	                                           (`make soak`: 200; the cuts at counted
//	                                           flushes, with lost disk caches, are
//	                                           TestCacheCut's)
//	-powercut.seed S     (CPINIT_SEED)        seed; default from the clock
//	-powercut.devices D  (CPINIT_POWERCUT_DEVICES) devices booted in parallel; default 2
//	-powercuts.arm64 N   (CPINIT_ARM64_POWERCUTS) cuts of TestArm64PowerCut, the
//	                                           same suite on the arm64 kernel
//	                                           (CPINIT_ARM64=1); default 4
//
// The seed is printed first. Cut delays are seeded, but where a cut lands
// also depends on how fast the guest runs, so a replay with the same seed
// makes the same decisions and cuts at the same delays, not necessarily at
// the same instruction: every cut is logged with the state it left behind
// ("landed: ..."), which is what a reproduction needs.
var (
	flagPowercuts       = flag.Int("powercuts", EnvInt("CPINIT_POWERCUTS", 4), "TestPowerCut: power cuts to make in all (at least)")
	flagPowercutSeed    = flag.Uint64("powercut.seed", uint64(EnvInt("CPINIT_SEED", 0)), "TestPowerCut: seed (0: from the clock)")
	flagPowercutDevices = flag.Int("powercut.devices", EnvInt("CPINIT_POWERCUT_DEVICES", 2), "TestPowerCut: simulated devices booted in parallel")
	flagArm64Powercuts  = flag.Int("powercuts.arm64", EnvInt("CPINIT_ARM64_POWERCUTS", 4), "TestArm64PowerCut: power cuts to make in all (at least)")
)

// Phases of an update cycle the suite cuts into.
const (
	phBegin   = "begin"   // slot a runs `cpinit begin`
	phTrial   = "trial"   // the new slot boots on the snapshot and writes
	phCommit  = "commit"  // the new slot runs `cpinit commit`
	phAbort   = "abort"   // the new slot runs `cpinit rollback`
	phMerge   = "merge"   // cpinit rolls userdata back (verify + merge)
	phCleanup = "cleanup" // cpinit deletes a COW file nothing needs
)

var pcPhases = []string{phBegin, phTrial, phCommit, phAbort, phMerge, phCleanup}

// pcCutProb is the chance that a boot in a phase is cut, and pcCutCap the
// most cuts per phase in one cycle (so every cycle ends).
var (
	pcCutProb = map[string]float64{phBegin: 0.5, phTrial: 0.5, phCommit: 0.8, phAbort: 0.5, phMerge: 0.75, phCleanup: 0.6}
	pcCutCap  = map[string]int{phBegin: 2, phTrial: 2, phCommit: 2, phAbort: 1, phMerge: 3, phCleanup: 1}
)

const (
	// pcMaxBoots bounds the boots of one cycle: a cycle that has not
	// settled by then never will (each phase is cut at most pcCutCap
	// times; crash mode adds the bootloader's 6 tries).
	pcMaxBoots = 24
	// Workloads: commit cycles write little; rollback cycles write more so
	// that the merge lasts long enough to be cut in the middle. The COW
	// covers a trial that runs the workload once in full plus small
	// reruns and the journal, so it never overflows (an overflow would
	// make the expected end state depend on timing).
	pcCommitMiB, pcCommitCOW     = 2, "32M"
	pcRollbackMiB, pcRollbackCOW = 24, "64M"
	pcRerunMiB                   = 1
)

type pcStats struct {
	mu       sync.Mutex
	cuts     int
	boots    int
	cycles   map[string]int // outcome → cycles
	byPhase  map[string]int
	landings map[string]int // "phase: landing" → cuts
	missed   int            // cuts that came after the boot had ended
	midMerge int            // merge cuts the next boot resumed with data left
}

func (s *pcStats) add(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

func TestPowerCut(t *testing.T) {
	t.Parallel()
	testPowerCut(t, initramfs.CloudKernel, *flagPowercuts)
}

// TestArm64PowerCut is TestPowerCut on arm64 devices: the arm64 kernel on
// qemu-system-aarch64's virt board, cpinit and the slots' programs built
// for arm64; the same cycles, cuts and checks. Gated by CPINIT_ARM64=1
// (NeedArm64: make test-arm64 and make soak run it; make test runs the
// arm64 lifecycle only, for time); -powercuts.arm64
// (CPINIT_ARM64_POWERCUTS) cuts, default 4.
func TestArm64PowerCut(t *testing.T) {
	NeedArm64(t)
	t.Parallel()
	testPowerCut(t, initramfs.Arm64Kernel, *flagArm64Powercuts)
}

// testPowerCut makes at least cuts power cuts on devices booting the
// pinned kernel of env.
func testPowerCut(t *testing.T, env string, cuts int) {
	seed := *flagPowercutSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano()) & (1<<53 - 1)
	}
	ndev := max(*flagPowercutDevices, 1)
	total := max(cuts, 1)
	t.Logf("power-cut suite (%s): seed %d (replay: -powercut.seed=%d or CPINIT_SEED=%d), %d cuts on %d devices",
		env, seed, seed, seed, total, ndev)
	start := time.Now()
	st := &pcStats{cycles: map[string]int{}, byPhase: map[string]int{}, landings: map[string]int{}}
	t.Run("devices", func(t *testing.T) {
		for i := 0; i < ndev; i++ {
			quota := total / ndev
			if i < total%ndev {
				quota++
			}
			t.Run(fmt.Sprintf("dev%d", i), func(t *testing.T) {
				t.Parallel()
				w := newPCDevice(t, env, seed, i, st)
				for c := 0; w.cuts < quota; c++ {
					w.cycle(c)
				}
			})
		}
	})
	st.mu.Lock()
	defer st.mu.Unlock()
	t.Logf("seed %d: %d cuts, %d boots, cycles %v, %s", seed, st.cuts, st.boots, st.cycles, time.Since(start).Round(time.Second))
	for _, p := range pcPhases {
		t.Logf("  %-8s %3d cuts", p, st.byPhase[p])
	}
	var keys []string
	for k := range st.landings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("    %3d  %s", st.landings[k], k)
	}
	t.Logf("  cuts inside the offline restore (copies in flight or not yet flushed): %d; kernel-merge cuts that landed mid-merge (the next boot resumed with data left): %d; cuts after the boot ended: %d",
		st.landings[phMerge+": restore running, copies not yet flushed"], st.midMerge, st.missed)
}

// pcDevice is one simulated device and its random source.
type pcDevice struct {
	t     *testing.T
	d     *ABDevice
	rng   *rand.Rand
	st    *pcStats
	cuts  int
	boots int
	// win is the last measured length of each cut window.
	win map[string]time.Duration
}

func newPCDevice(t *testing.T, env string, seed uint64, i int, st *pcStats) *pcDevice {
	d := NewTestDeviceFor(t, seed+uint64(i), env)
	return &pcDevice{t: t, d: d, rng: rand.New(rand.NewPCG(seed, uint64(i))), st: st,
		win: map[string]time.Duration{}}
}

// pcWindowGuess are the cut windows before the first measurement (TCG on
// a loaded 2-core machine).
var pcWindowGuess = map[string]time.Duration{
	"begin": 500 * time.Millisecond, "end-commit": 400 * time.Millisecond, "end-rollback": 300 * time.Millisecond,
	"merge": 250 * time.Millisecond, "verify": 300 * time.Millisecond,
	"trial-1": 1500 * time.Millisecond, "trial-2": 1500 * time.Millisecond, "trial-24": 3 * time.Second,
}

// window returns the last measured length of a cut window (a guess before
// the first measurement).
func (w *pcDevice) window(key string) time.Duration {
	if d, ok := w.win[key]; ok {
		return d
	}
	if d, ok := pcWindowGuess[key]; ok {
		return d
	}
	return time.Second
}

// record reads the metadata store; a blank store is a fresh record.
func (w *pcDevice) record() bootstate.Record {
	w.t.Helper()
	r, err := w.d.Record()
	if errors.Is(err, bootstate.ErrNoRecord) {
		return bootstate.NewFreshRecord()
	}
	if err != nil {
		w.t.Fatalf("metadata store: %v", err)
	}
	return *r
}

func (w *pcDevice) misc() *bootstate.BootControl {
	w.t.Helper()
	bc, err := w.d.ReadMisc()
	if err != nil {
		w.t.Fatalf("misc: %v", err)
	}
	return bc
}

// cut is how one boot is cut: wait for anchor, then delay.
type cut struct {
	phase  string
	anchor string
	delay  time.Duration
}

func (w *pcDevice) uniform(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(w.rng.Int64N(int64(d)))
}

// wantCut draws whether this boot of phase is cut.
func (w *pcDevice) wantCut(phase string, done map[string]int) bool {
	return done[phase] < pcCutCap[phase] && w.rng.Float64() < pcCutProb[phase]
}

// cycle runs one update from a settled device to a settled device.
func (w *pcDevice) cycle(n int) {
	t := w.t
	before := UserdataManifestT(t, w.d)
	goal := phCommit
	if w.rng.Float64() < 0.6 {
		goal = phAbort
	}
	crash := goal == phAbort && w.rng.Float64() < 0.15
	mib, cow := pcCommitMiB, pcCommitCOW
	if goal == phAbort {
		mib, cow = pcRollbackMiB, pcRollbackCOW
	}
	wseed := w.rng.IntN(1 << 20)
	t.Logf("cycle %d: goal %s (crash=%v), workload %d MiB seed %d, COW %s", n, goal, crash, mib, wseed, cow)

	armed := false // the cycle got past begin at least once
	outcome := ""  // "commit", "rollback", "cancel"
	done := map[string]int{}
	mergeCut := false // the last merge cut left a merge to resume
	lastCut := false  // the last boot was cut
	target := -1      // the update's slot
	for boot := 0; ; boot++ {
		r := w.record()
		if r.State != bootstate.StateFresh {
			armed = true
			target = bootstate.SlotIndex(r.TargetSlot)
		}
		// Settled: nothing left to do, and the last boot ended cleanly.
		// After a cut the host cannot judge userdata yet: debugfs and
		// e2fsck -n read the image without replaying the journal, so
		// one more boot (journal replay at mount, sync at power off)
		// comes first.
		if armed && r.State == bootstate.StateFresh && r.COWPath == "" && !lastCut {
			break
		}
		if boot >= pcMaxBoots {
			t.Fatalf("cycle %d not settled after %d boots: %s", n, boot, RecString(r))
		}
		slot, err := w.d.SelectSlot()
		if err != nil {
			t.Fatal(err)
		}
		suffix := bootstate.SlotSuffixes[slot]
		phase, action, c, want := w.plan(r, armed, slot, goal, crash, mib, cow, wseed, done)
		w.d.Slot[slot] = action
		b := w.start(slot)
		res := b.run(t, c, want)
		lastCut = res.cut
		if !res.cut {
			w.measure(b, action)
		}
		w.boots++
		w.st.add(func() { w.st.boots++ })
		after := w.record()

		// What the boot did to the cycle, from the records before and
		// after it.
		if r.State == bootstate.StateCheckpointing && after.State != bootstate.StateCheckpointing {
			switch {
			case after.State == bootstate.StateRollbackPending,
				after.State == bootstate.StateFresh && after.Reason == bootstate.ReasonMerged:
				outcome = "rollback"
			case after.State == bootstate.StateCommitted && after.Reason == bootstate.ReasonCommit,
				after.State == bootstate.StateFresh && bootstate.SameSlot(suffix, r.TargetSlot):
				outcome = "commit"
			case after.State == bootstate.StateCommitted && after.Reason == bootstate.ReasonOverflow:
				t.Fatalf("cycle %d: the COW overflowed (%s): the suite's COW sizing is wrong", n, RecString(after))
			default:
				outcome = "cancel"
			}
		}
		if after.State == bootstate.StateCommitted && after.Reason == bootstate.ReasonCancelled {
			outcome = "cancel"
		}

		if phase == phMerge {
			// The first progress line of the next boot that reaches the
			// kernel's merge says whether it had finished before the cut.
			// (Not the offline restore's: a rerun restore copies
			// everything again and always starts at the full size; its
			// cuts are told apart by landing, "restore running".)
			if m := regexp.MustCompile(`cpinit: merge: ([\d.]+) MiB left of ([\d.]+) MiB`).FindStringSubmatch(res.out); m != nil {
				if left, _ := strconv.ParseFloat(m[1], 64); left > 0 && mergeCut {
					w.st.add(func() { w.st.midMerge++ })
					t.Logf("  the merge resumed with %s MiB left: the previous cut landed mid-merge", m[1])
				}
				mergeCut = false
			}
		}
		if res.cut {
			done[c.phase]++
			if !res.missed { // a cut after power off does not count
				w.cuts++
			}
			landing := w.landing(c.phase, r, after, res)
			if c.phase == phMerge && after.State == bootstate.StateRollbackPending && after.MergeTries > r.MergeTries {
				mergeCut = true
			}
			t.Logf("  boot %d (slot %s, %s) CUT %v after %q: landed: %s; record now %s", w.boots, suffix, c.phase, c.delay, c.anchor, landing, RecString(after))
			w.st.add(func() {
				if !res.missed {
					w.st.cuts++
					w.st.byPhase[c.phase]++
				}
				w.st.landings[c.phase+": "+landing]++
				if res.missed {
					w.st.missed++
				}
			})
			// A commit that did not persist: let the trial succeed on
			// retry, or fail it (both must end consistently).
			if c.phase == phCommit && after.State == bootstate.StateCheckpointing && !w.targetSuccessful(after) && w.rng.Float64() < 0.5 {
				goal, mib = phAbort, pcRerunMiB
				t.Logf("  the commit did not persist: failing the trial instead")
			}
		} else {
			t.Logf("  boot %d (slot %s, %s): %s", w.boots, suffix, phase, RecString(after))
		}
	}

	// Settled: the checks.
	if outcome == "" {
		outcome = "cancel"
	}
	if exists, err := w.d.COWFileExists(); err != nil || exists {
		t.Fatalf("cycle %d (%s): COW file still in userdata after settling (err %v)", n, outcome, err)
	}
	after := UserdataManifestT(t, w.d) // e2fsck -fn first
	switch outcome {
	case "commit":
		if _, ok := after["new/file000"]; !ok {
			t.Fatalf("cycle %d: committed, but the update's new/file000 is gone", n)
		}
		if len(after.Diff(before, 1)) == 0 {
			t.Fatalf("cycle %d: committed, but userdata is unchanged", n)
		}
	default:
		if diff := after.Diff(before, 10); len(diff) > 0 {
			t.Fatalf("cycle %d (%s): userdata differs from before the update:\n%s", n, outcome, strings.Join(diff, "\n"))
		}
	}
	if outcome == "commit" {
		w.checkHello(n, "written by the update")
	}
	// The bootloader's next pick: the update's slot after a commit, the
	// old slot otherwise (a rolled-back update must not boot again on
	// the rolled-back userdata, which no checkpoint protects any more).
	if target >= 0 {
		bc := w.misc()
		next := *bc
		want := 1 - target%2
		if outcome == "commit" {
			want = target
		}
		if pick := next.BootloaderSelect(); pick != want {
			t.Fatalf("cycle %d (%s): the bootloader would next boot slot %d, want %d (misc slots %+v)", n, outcome, pick, want, bc.Slots[:2])
		}
	}
	w.st.add(func() { w.st.cycles[outcome]++ })
	t.Logf("cycle %d settled: %s; e2fsck clean, COW file gone, %d files; windows %v", n, outcome, len(after), w.win)
}

// checkHello reads hello.txt from the host.
func (w *pcDevice) checkHello(n int, want string) {
	w.t.Helper()
	out, err := runDebugfsCat(w.d.Userdata, "/hello.txt")
	if err != nil {
		w.t.Fatal(err)
	}
	if strings.TrimSpace(out) != want {
		w.t.Fatalf("cycle %d: hello.txt = %q, want %q", n, out, want)
	}
}

func runDebugfsCat(img, path string) (string, error) {
	out, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		return "", fmt.Errorf("debugfs cat %s: %v", path, err)
	}
	return string(out), nil
}

// plan picks the phase of the next boot from the stored state, the slot's
// system (sysinit parameters), whether and where to cut it, and the console
// lines an uncut boot must show, in order.
func (w *pcDevice) plan(r bootstate.Record, armed bool, slot int, goal string, crash bool, mib int, cow string, wseed int, done map[string]int) (phase, action string, c *cut, want []string) {
	suffix := bootstate.SlotSuffixes[slot]
	report := "sysinit.action=report"
	fresh := `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=\S+ action=`
	switch {
	case r.State == bootstate.StateFresh && !armed:
		// fresh: begin (a leftover from a cut begin is removed first).
		phase = phBegin
		action = "sysinit.action=ota sysinit.cowsize=" + cow + " sysinit.beginargs=--reserve,16M"
		if r.COWPath != "" {
			want = append(want, `cpinit: no checkpoint; removing leftover COW file /\.cpinit/cow`)
		}
		want = append(want, fresh+`mount-plain`, `checkpoint armed: COW /\.cpinit/cow`, `sysinit: ota begin ok`)
		if w.wantCut(phBegin, done) {
			c = &cut{phase: phBegin, anchor: `sysinit: pid=`, delay: w.uniform(w.window("begin") * 110 / 100)}
			if r.COWPath != "" && w.rng.Float64() < 0.3 {
				c.anchor, c.delay = `removing leftover COW file`, w.uniform(300*time.Millisecond)
			}
		}
	case r.State == bootstate.StateFresh && r.COWPath == "":
		phase, action = "settle", report
		want = append(want, `cpinit: no checkpoint\r?\n`, fresh+`mount-plain`)
	case r.State == bootstate.StateFresh:
		phase, action = phCleanup, report
		want = append(want, `cpinit: no checkpoint; removing leftover COW file /\.cpinit/cow`, fresh+`mount-plain`)
	case r.State == bootstate.StateCommitted:
		phase, action = phCleanup, report
		want = append(want, `cpinit: checkpoint \S+: deleting /\.cpinit/cow`, fresh+`finish-commit-cleanup`)
	case r.State == bootstate.StateCheckpointing && !bootstate.SameSlot(suffix, r.TargetSlot) && !r.Active:
		phase, action = phCleanup, report
		want = append(want, `cpinit: update abandoned before first use \(slot-fallback\)`, fresh+`finish-commit-cleanup`)
	case r.State == bootstate.StateCheckpointing && !bootstate.SameSlot(suffix, r.TargetSlot):
		phase, action = phMerge, report
		want = append(want, regexp.QuoteMeta(fmt.Sprintf(`cpinit: rolling back userdata (slot-fallback, booted %q, target %q)`, suffix, r.TargetSlot)),
			`cpinit: merging the checkpoint back into userdata \(slot-fallback\), attempt 1`,
			`cpinit: (merge|restore): 0\.0 MiB left`, fresh+`start-or-resume-merge`)
	case r.State == bootstate.StateRollbackPending:
		phase, action = phMerge, report
		want = append(want, `cpinit: verifying the COW extent map before merging`,
			fmt.Sprintf(`cpinit: merging the checkpoint back into userdata \(%s\), attempt %d`, regexp.QuoteMeta(r.Reason.String()), r.MergeTries+1),
			`cpinit: (merge|restore): 0\.0 MiB left`, fresh+`start-or-resume-merge`)
	case r.State == bootstate.StateCheckpointing && r.Active && w.targetSuccessful(r):
		// `cpinit commit` marked the slot successful in misc and was cut
		// before it recorded the commit: cpinit finishes the commit.
		phase, action = phCleanup, report
		want = append(want, regexp.QuoteMeta(fmt.Sprintf("cpinit: slot %s is marked successful: finishing its commit", r.TargetSlot)),
			fresh+`finish-commit-cleanup`)
	default: // checkpointing, booted the target slot: a trial boot
		phase = phTrial
		m := mib
		if r.Attempts > 0 {
			m = pcRerunMiB // keep the COW from overflowing over many trial boots
		}
		then := "commit"
		if goal == phAbort {
			then = "rollback"
			if crash {
				then = "crash"
			}
		}
		if r.Active {
			want = append(want, fmt.Sprintf(`cpinit: trial boot %d of slot %q: reattaching the checkpoint`, r.Attempts+1, r.TargetSlot),
				`cpinit: state=checkpointing/active userdata=/dev/vdc mounted=/newroot/data via=/dev/mapper/cp-origin action=reattach-snapshot`)
		} else {
			want = append(want, fmt.Sprintf(`cpinit: first boot of slot %q: creating the checkpoint`, r.TargetSlot),
				`cpinit: state=checkpointing/active userdata=/dev/vdc mounted=/newroot/data via=/dev/mapper/cp-origin action=create-snapshot`)
		}
		want = append(want, `sysinit: workload done`)
		endPhase := goal
		switch {
		case w.wantCut(phTrial, done):
			then = "hang"
			c = &cut{phase: phTrial, anchor: `cpinit: (first boot|trial boot \d+) of slot`}
			if w.rng.Float64() < 0.3 {
				c.delay = w.uniform(400 * time.Millisecond) // snapshot creation, mount
			} else {
				c.delay = w.uniform(w.window(fmt.Sprintf("trial-%d", m)))
			}
		case then != "crash" && w.wantCut(endPhase, done):
			c = &cut{phase: endPhase, anchor: `sysinit: workload done`, delay: w.uniform(w.window("end-"+then) * 110 / 100)}
		}
		switch then {
		case "commit":
			want = append(want, `committed: the update's data is kept`, `sysinit: commit ok`)
		case "rollback":
			want = append(want, `rollback scheduled`, `sysinit: rollback ok`)
		case "crash":
			want = append(want, `sysinit: crashing`, `Kernel panic`)
		}
		action = fmt.Sprintf("sysinit.action=workload sysinit.seed=%d sysinit.mib=%d sysinit.then=%s", wseed+int(r.Attempts), m, then)
		return phase, action, c, want
	}
	if c == nil && phase == phMerge && w.wantCut(phMerge, done) {
		c = &cut{phase: phMerge}
		if w.rng.Float64() < 0.25 {
			c.anchor, c.delay = `cpinit: (rolling back userdata|verifying the COW extent map)`, w.uniform(w.window("verify")*110/100)
		} else {
			// The kernel merges the few MiB of a trial in a fraction of
			// a second under TCG, and the console shows the end only at
			// the next 250 ms poll: most cuts go into the first 150 ms.
			c.anchor = `cpinit: (merge|restore): [\d.]+ MiB left of`
			if w.rng.Float64() < 0.7 {
				c.delay = w.uniform(150 * time.Millisecond)
			} else {
				c.delay = w.uniform(w.window("merge") * 110 / 100)
			}
		}
	}
	if c == nil && phase == phCleanup && w.wantCut(phCleanup, done) {
		// The anchor is the first line of each cleanup path planned above,
		// including a commit cut after misc marked the slot successful.
		c = &cut{phase: phCleanup, anchor: `cpinit: (checkpoint \S+: deleting|no checkpoint; removing leftover|update abandoned|slot \S+ is marked successful: finishing its commit)`, delay: w.uniform(300 * time.Millisecond)}
	}
	if action == report {
		want = append(want, `sysinit: hello\.txt=`)
	}
	return phase, action, c, want
}

// landing says where a cut landed, from the records before and after it and
// the console up to the cut.
func (w *pcDevice) landing(phase string, r, after bootstate.Record, res bootResult) string {
	out := res.out
	has := func(s string) bool { return strings.Contains(out, s) }
	var s string
	switch phase {
	case phBegin:
		switch {
		case after.State == bootstate.StateFresh && after.COWPath == "":
			s = "before prepare (fresh, nothing recorded)"
			if r.COWPath != "" {
				s = "leftover removed, before the new prepare"
			}
		case after.State == bootstate.StateFresh:
			s = "after prepare, before begin (fresh with a COW path to clean up)"
		case after.State == bootstate.StateCheckpointing && !has("checkpoint armed"):
			bc := w.misc()
			if i := bootstate.SlotIndex(after.TargetSlot); i >= 0 && bc.Slots[i].Priority < 15 {
				s = "armed, misc not yet switched to the new slot"
			} else {
				s = "armed and misc switched, before begin returned"
			}
		default:
			s = "after begin completed"
		}
	case phTrial:
		switch {
		case after.Attempts == r.Attempts:
			s = "before boot-attempt was persisted"
		case !after.Active:
			s = "boot-attempt persisted, snapshot being created (armed)"
		case !has("sysinit: pid="):
			s = "snapshot active, before the new system ran"
		case !has("sysinit: workload done"):
			s = "during the new system's writes"
		default:
			s = "after the workload (hang)"
		}
	case phCommit:
		bc := w.misc()
		i := bootstate.SlotIndex(r.TargetSlot)
		switch {
		case after.State == bootstate.StateCheckpointing && i >= 0 && !bc.Slots[i].SuccessfulBoot:
			s = "before misc marked the slot successful"
		case after.State == bootstate.StateCheckpointing:
			s = "slot marked successful, commit not persisted"
		case after.State == bootstate.StateCommitted:
			s = "committed, snapshot/COW file not yet cleaned up"
		case after.COWPath != "":
			s = "fresh with a leftover COW path"
		default:
			s = "after commit completed"
		}
	case phAbort:
		bc := w.misc()
		switch {
		case after.State == bootstate.StateCheckpointing:
			s = "before rollback was persisted"
		case bc.Slots[1-bootstate.SlotIndex(r.TargetSlot)%2].Priority < 15:
			s = "rollback-pending, misc not yet switched back"
		default:
			s = "rollback-pending and misc switched back"
		}
	case phMerge:
		switch {
		case after.State == bootstate.StateCheckpointing:
			s = "before rollback was persisted"
		case after.State == bootstate.StateRollbackPending && after.MergeTries == r.MergeTries && r.State == bootstate.StateRollbackPending,
			after.State == bootstate.StateRollbackPending && after.MergeTries == 0:
			s = "verifying, before merge-attempt"
		case after.State == bootstate.StateRollbackPending && has("cpinit: restore:") && !has("cpinit: restore: 0.0 MiB left"):
			// The offline restore reports 0.0 MiB left only after its
			// final flush (dmsnap.Restore), so this cut came while its
			// copies were in flight or not yet flushed.
			s = "restore running, copies not yet flushed"
		case after.State == bootstate.StateRollbackPending && has("cpinit: restore:"):
			s = "restore flushed, merge-done not persisted"
		case after.State == bootstate.StateRollbackPending && !has("cpinit: merge:"):
			s = "merge-attempt persisted, merge/restore not started"
		case after.State == bootstate.StateRollbackPending && !has("cpinit: merge: 0.0 MiB left"):
			s = "merge running"
		case after.State == bootstate.StateRollbackPending:
			s = "merge complete, merge-done not persisted"
		case after.COWPath != "":
			s = "merged, COW file not yet deleted"
		default:
			s = "after the rollback completed"
		}
	case phCleanup:
		switch {
		case after.State == bootstate.StateFresh && after.COWPath == "":
			s = "after cleanup completed"
		default:
			s = "before cleanup completed"
		}
	}
	if res.missed {
		s += " [the boot had ended]"
	}
	return s
}

// pcBoot is one boot with a timestamped console.
type pcBoot struct {
	vm    *VM
	lines *lineLog
}

type bootResult struct {
	out    string
	cut    bool
	missed bool // the cut came after the boot had ended
}

// start boots slot (already selected) with a timestamped console log kept
// on failure.
func (w *pcDevice) start(slot int) *pcBoot {
	t := w.t
	t.Helper()
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	logPath := filepath.Join(OutDir(), "vmlogs", fmt.Sprintf("%s-boot%d.log", name, w.boots+1))
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	ll := &lineLog{f: f, start: time.Now()}
	// Options gives the harness's console arguments, which on x86 have
	// no_timer_check: under TCG on a loaded host the kernel's early
	// IO-APIC timer check can fail and panic at 0.000000 ("IO-APIC +
	// timer doesn't work!"), which has nothing to do with cpinit.
	o := w.d.Options(slot, "")
	o.Log = ll
	vm, err := Start(o)
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	fmt.Fprintf(f, "# %s\n", vm.Cmdline)
	n := w.boots + 1
	t.Cleanup(func() {
		vm.Kill()
		f.Close()
		if t.Failed() {
			t.Logf("boot %d console log kept: %s", n, logPath)
		} else {
			os.Remove(logPath)
		}
	})
	return &pcBoot{vm: vm, lines: ll}
}

func (vm *VM) hasExited() bool {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.exited
}

// run lets the boot go to its end, or cuts it as c says; it checks the
// console for fatal errors and, if the boot was not cut, for want in order.
// It measures the cut windows of uncut boots.
func (b *pcBoot) run(t *testing.T, c *cut, want []string) bootResult {
	t.Helper()
	var res bootResult
	if c != nil {
		if _, err := b.vm.Expect(regexp.MustCompile(c.anchor), SlotBootTimeout); err != nil {
			t.Fatalf("waiting for the cut's anchor: %v\n--- console ---\n%s", err, Tail(b.vm.Output(), 60))
		}
		time.Sleep(c.delay)
		res.cut = true
		res.missed = b.vm.hasExited()
		b.vm.Kill()
	} else if err := b.vm.Wait(SlotBootTimeout); err != nil {
		var ee interface{ ExitCode() int }
		if !errors.As(err, &ee) {
			t.Fatalf("boot did not end: %v\n--- console ---\n%s", err, Tail(b.vm.Output(), 60))
		}
	}
	res.out = b.vm.Output()
	for _, bad := range []string{"FATAL", "sysinit: error", "WARNING"} {
		if i := strings.Index(res.out, bad); i >= 0 {
			t.Fatalf("console shows %q\n--- console ---\n%s", bad, Tail(res.out, 80))
		}
	}
	if strings.Contains(res.out, "Kernel panic") && !strings.Contains(res.out, "sysinit: crashing") {
		t.Fatalf("kernel panic\n--- console ---\n%s", Tail(res.out, 80))
	}
	if !res.cut {
		rest := res.out
		for _, re := range want {
			loc := regexp.MustCompile(re).FindStringIndex(rest)
			if loc == nil {
				t.Fatalf("console lacks %q (after the lines before it)\n--- console ---\n%s", re, Tail(res.out, 80))
			}
			rest = rest[loc[1]:]
		}
	}
	return res
}

// measure updates the cut windows from an uncut boot's timestamped lines.
func (w *pcDevice) measure(b *pcBoot, action string) {
	mib, then := "", ""
	if m := regexp.MustCompile(`sysinit\.mib=(\d+) sysinit\.then=(\w+)`).FindStringSubmatch(action); m != nil {
		mib, then = m[1], m[2]
	}
	for _, m := range []struct{ name, from, to string }{
		{"begin", `sysinit: pid=`, `sysinit: ota begin ok`},
		{"trial-" + mib, `cpinit: (first boot|trial boot \d+) of slot`, `sysinit: workload done`},
		{"end-" + then, `sysinit: workload done`, `sysinit: (commit|rollback) ok`},
		{"merge", `cpinit: (merge|restore): [\d.]+ MiB left of`, `cpinit: (merge|restore): 0\.0 MiB left`},
		{"verify", `cpinit: (rolling back userdata|verifying the COW extent map)`, `cpinit: (merge|restore): [\d.]+ MiB left of`},
	} {
		if d, ok := b.lines.between(m.from, m.to); ok && d > 0 {
			w.win[m.name] = d
		}
	}
}

// lineLog timestamps console lines as they arrive (and copies them to a
// log file).
type lineLog struct {
	f       *os.File
	start   time.Time
	mu      sync.Mutex
	partial []byte
	lines   []tsLine
}

type tsLine struct {
	at   time.Time
	text string
}

func (l *lineLog) Write(p []byte) (int, error) {
	now := time.Now()
	l.f.Write(p)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, tsLine{now, strings.TrimRight(string(l.partial[:i]), "\r")})
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

// between returns the time from the first line matching from to the first
// later line matching to.
func (l *lineLog) between(from, to string) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fr, tr := regexp.MustCompile(from), regexp.MustCompile(to)
	for i, a := range l.lines {
		if !fr.MatchString(a.text) {
			continue
		}
		for _, b := range l.lines[i+1:] {
			if tr.MatchString(b.text) {
				return b.at.Sub(a.at), true
			}
		}
		return 0, false
	}
	return 0, false
}

// targetSuccessful reports whether misc marks the record's target slot
// successful: then cpinit finishes a commit that was cut before it was
// recorded (bootstate.Decide).
func (w *pcDevice) targetSuccessful(r bootstate.Record) bool {
	bc, err := w.d.ReadMisc()
	i := bootstate.SlotIndex(r.TargetSlot)
	return err == nil && i >= 0 && bc.Slots[i].SuccessfulBoot
}
