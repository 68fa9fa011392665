package bootloadervm

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The systemd tests: slot b runs the host's systemd as its init, with
// dist/systemd/cpinit-commit.service and the example health check enabled
// (systemdimage.go). Slot a is the usual sysinit slot whose OTA agent runs
// `cpinit begin`.

// requireHostSystemd skips (fails under CI) when the host cannot provide
// the systemd slot's files.
func requireHostSystemd(t *testing.T) {
	t.Helper()
	if m := qt.HostSystemdMissing(); m != "" {
		if testutil.InCI() {
			t.Fatalf("%s; CI must install them", m)
		}
		t.Skipf("SKIPPING the systemd slot tests: %s", m)
	}
}

// newSystemdABDevice is newABDevice with slot b replaced by the systemd slot.
func newSystemdABDevice(t *testing.T, seed uint64) *qt.ABDevice {
	t.Helper()
	requireHostSystemd(t)
	d := qt.NewTestDevice(t, seed)
	img, err := qt.MakeSystemdImage(d.Dir, "system_b")
	if err != nil {
		t.Fatal(err)
	}
	d.Systems[1] = img
	return d
}

// slotStatus is the part of `cpinit status --json` the tests read.
type slotStatus struct {
	State      string `json:"state"`
	Phase      string `json:"phase"`
	Reason     string `json:"reason"`
	TargetSlot string `json:"target_slot"`
	BootedSlot string `json:"booted_slot"`
	COWPath    string `json:"cow_path"`
}

// expectReport waits for the report unit's output: how cpinit-commit.service
// fared (systemctl show: ActiveState, Result, ConditionResult,
// ConditionTimestampMonotonic, which stays 0 until the condition is
// evaluated) and `cpinit status --json`, decoded.
func expectReport(t *testing.T, vm *qt.VM) (map[string]string, slotStatus) {
	t.Helper()
	// The JSON is indented: from "{" to the "}" that starts a line.
	m := vm.ExpectT(t, `(?s)cpinit-test: commit unit\r?\n(.*?)cpinit-test: status\r?\n(\{.*?\n\})`, qt.SlotBootTimeout)
	unit := map[string]string{}
	for _, l := range strings.Fields(m[1]) {
		if k, v, ok := strings.Cut(l, "="); ok {
			unit[k] = v
		}
	}
	var s slotStatus
	if err := json.Unmarshal([]byte(m[2]), &s); err != nil {
		t.Fatalf("status JSON %q: %v", m[2], err)
	}
	return unit, s
}

// setTries plays a bootloader that gives a new slot n tries (update_engine
// and cpinit begin leave 6): fewer systemd boots under TCG.
func setTries(t *testing.T, d *qt.ABDevice, slot int, n uint8) {
	t.Helper()
	bc, err := d.ReadMisc()
	if err != nil {
		t.Fatal(err)
	}
	bc.Slots[slot].TriesRemaining = n
	if err := d.WriteMisc(bc); err != nil {
		t.Fatal(err)
	}
}

// TestSystemdUpdateCommits: the update's slot boots systemd; the health
// check passes, boot-complete.target is reached, cpinit-commit.service runs
// `cpinit commit --if-trial`. The update's data is kept, the COW file is
// gone, the slot is marked successful, and systemd's clean power off leaves
// userdata clean (e2fsck -fn before the manifest). Then the unit, still
// enabled, does nothing at a boot that is no trial, and is skipped by its
// condition in recovery mode.
func TestSystemdUpdateCommits(t *testing.T) {
	d := newSystemdABDevice(t, 11)
	before := qt.UserdataManifestT(t, d)
	qt.OTABegin(t, d, "64M")

	vm := qt.TrialBoot(t, d, "systemd.setenv=CPINIT_TEST_HEALTH=ok")
	vm.ExpectT(t, `systemd \d+[^\r\n]* running in system mode`, qt.SlotBootTimeout)
	vm.ExpectT(t, `cpinit-test: workload done`, qt.SlotBootTimeout)
	// systemd's status lines ([  OK  ] ...), in order: the health check,
	// the target, the commit unit and what cpinit printed.
	vm.ExpectT(t, `\[  OK  \] Finished cpinit-health-check\.service - Test health check\.`, qt.SlotBootTimeout)
	vm.ExpectT(t, `\[  OK  \] Reached target boot-complete\.target`, qt.SlotBootTimeout)
	vm.ExpectT(t, `committed: the update's data is kept, the checkpoint is gone`, qt.SlotBootTimeout)
	// (systemd shortens status lines to 80 columns: match the start)
	vm.ExpectT(t, `\[  OK  \] Finished cpinit-commit\.service`, qt.SlotBootTimeout)
	u, st := expectReport(t, vm)
	if u["ActiveState"] != "active" || u["Result"] != "success" || u["ConditionResult"] != "yes" {
		t.Fatalf("cpinit-commit.service after the commit: %v, want active, success, condition yes", u)
	}
	if st.State != "fresh" || st.Reason != "cleaned" || st.BootedSlot != "_b" {
		t.Fatalf("status after the commit unit: %+v, want state fresh (reason cleaned: committed, COW deleted) on slot _b", st)
	}
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if out := vm.Output(); strings.Contains(out, "Dependency failed") || strings.Contains(out, "Ordering cycle") {
		t.Fatalf("systemd reported a failed dependency or an ordering cycle:\n%s", qt.Tail(out, 80))
	}
	// cpinit-watch.service started on the trial ($CPINIT_WATCH_ARGS
	// expanded: policy abort) and ended with it (or was stopped by the
	// report unit first), or found it committed already.
	if !regexp.MustCompile(`cpinit watch: (watching the checkpoint of slot _b: COW [\d.]+ MiB; warn at 75%, abort at 90%[^\n]*\n(.*\n)*cpinit watch: (the trial ended|stopped by a signal)|nothing to watch: no checkpoint)`).MatchString(vm.Output()) {
		t.Errorf("cpinit-watch.service did not watch the trial and end with it:\n%s", qt.Tail(vm.Output(), 60))
	}

	qt.WantRecord(t, d, bootstate.StateFresh)
	after := qt.UserdataManifestT(t, d)
	for path, want := range map[string]bool{"new-systemd.bin": true, "d1/f001.bin": false} {
		if _, ok := after[path]; ok != want {
			t.Errorf("after the commit, %s present=%v, want %v", path, ok, want)
		}
	}
	if after["d0/f000.bin"] == before["d0/f000.bin"] {
		t.Error("d0/f000.bin not overwritten by the update's workload")
	}
	if got := debugfsCat(t, d, "/hello.txt"); got != qt.SystemdHello {
		t.Errorf("hello.txt after the commit = %q, want %q", got, qt.SystemdHello)
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after commit (err %v)", err)
	}
	bc, err := d.ReadMisc()
	if err != nil {
		t.Fatal(err)
	}
	if s := bc.Slots[1]; !s.SuccessfulBoot {
		t.Fatalf("slot b after the commit unit: %+v, want successful", s)
	}

	// The unit stays enabled: at a boot that is no trial, the commit does
	// nothing and succeeds.
	vm, slot := d.Boot(t, "")
	if slot != 1 {
		t.Fatalf("bootloader picked slot %d after the commit, want 1", slot)
	}
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/vdc action=mount-plain`, qt.SlotBootTimeout)
	vm.ExpectT(t, `nothing to commit: no checkpoint`, qt.SlotBootTimeout)
	vm.ExpectT(t, `\[  OK  \] Finished cpinit-commit\.service`, qt.SlotBootTimeout)
	if u, st := expectReport(t, vm); st.State != "fresh" || u["ActiveState"] != "active" || u["Result"] != "success" {
		t.Fatalf("at the boot after the commit: status %+v, commit unit %v; want fresh, active, success", st, u)
	}
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}

	// Recovery mode: userdata is not mounted and the unit is skipped by
	// its condition.
	vm, _ = d.Boot(t, "cpinit.recovery=1")
	vm.ExpectT(t, `cpinit: recovery mode \(cpinit.recovery=1\)`, qt.SlotBootTimeout)
	if u, _ := expectReport(t, vm); u["ActiveState"] != "inactive" || u["ConditionResult"] != "no" || u["ConditionTimestampMonotonic"] == "0" {
		t.Fatalf("cpinit-commit.service in recovery mode: %v, want inactive with its condition evaluated and false (skipped)", u)
	}
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if out := vm.Output(); strings.Contains(out, "nothing to commit") || strings.Contains(out, "Starting cpinit-commit.service") {
		t.Fatalf("cpinit-commit.service ran in recovery mode:\n%s", qt.Tail(out, 80))
	}
}

// TestSystemdHealthCheckVetoes: the health check fails on every boot of the
// update's slot. boot-complete.target fails, cpinit-commit.service does not
// run ("Dependency failed"), the slot is never marked successful, the
// bootloader's tries count down, it falls back to slot a, and cpinit rolls
// userdata back to exactly what it was before the update.
func TestSystemdHealthCheckVetoes(t *testing.T) {
	d := newSystemdABDevice(t, 12)
	before := qt.UserdataManifestT(t, d)
	qt.OTABegin(t, d, "64M")
	setTries(t, d, 1, 3)

	d.Slot[1] = "systemd.setenv=CPINIT_TEST_HEALTH=fail"
	d.Slot[0] = "sysinit.action=report"
	var tries []uint8
	trials := qt.BootUntilFallback(t, d, 4, func() {
		bc, err := d.ReadMisc()
		if err != nil {
			t.Fatal(err)
		}
		tries = append(tries, bc.Slots[1].TriesRemaining)
	}, func(vm *qt.VM, n int) {
		vm.ExpectT(t, `cpinit-test: workload done`, qt.SlotBootTimeout)
		vm.ExpectT(t, `cpinit-health-check\.service: Failed with result 'exit-code'\.`, qt.SlotBootTimeout)
		vm.ExpectT(t, `\[FAILED\] Failed to start cpinit-health-check\.service - Test health check\.`, qt.SlotBootTimeout)
		vm.ExpectT(t, `cpinit-commit\.service: Job cpinit-commit\.service/start failed with result 'dependency'\.`, qt.SlotBootTimeout)
		u, st := expectReport(t, vm)
		if u["ActiveState"] != "inactive" || u["ConditionTimestampMonotonic"] != "0" {
			t.Fatalf("cpinit-commit.service after a vetoed boot: %v, want inactive and never started (condition not even evaluated)", u)
		}
		if st.State != "checkpointing" || st.Phase != "active" {
			t.Fatalf("status after a vetoed boot: %+v, want checkpointing/active", st)
		}
		if err := vm.Wait(qt.SlotBootTimeout); err != nil {
			t.Fatal(err)
		}
		out := vm.Output()
		if !strings.Contains(out, "boot-complete.target: Job boot-complete.target/start failed with result 'dependency'.") {
			t.Fatalf("boot-complete.target did not fail on the failed health check:\n%s", qt.Tail(out, 80))
		}
		if strings.Contains(out, "committed:") || strings.Contains(out, "nothing to commit") || strings.Contains(out, "Starting cpinit-commit.service") {
			t.Fatalf("cpinit-commit.service ran although the health check failed:\n%s", qt.Tail(out, 80))
		}
	}, nil)
	t.Logf("slot b vetoed %d times; its tries before each boot: %v", trials, tries)
	if trials != int(tries[0]) {
		t.Errorf("slot b booted %d times with %d tries", trials, tries[0])
	}
	for i := 1; i < len(tries); i++ {
		if tries[i] != tries[i-1]-1 {
			t.Errorf("tries did not count down by one per vetoed boot: %v", tries)
		}
	}

	r := qt.WantRecord(t, d, bootstate.StateFresh)
	if r.COWPath != "" {
		t.Fatalf("record still names COW file %q after rollback", r.COWPath)
	}
	if diff := qt.UserdataManifestT(t, d).Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after rollback differs from before the update:\n%s", strings.Join(diff, "\n"))
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after rollback (err %v)", err)
	}
}

// TestSystemdSlotUnitsVerify runs systemd-analyze verify over the systemd
// slot's tree (cpinit's units as installed there, the test units and the
// health check's drop-in), so a unit error shows here and not as a
// mysterious boot. Any output is a failure (warnings exit 0).
func TestSystemdSlotUnitsVerify(t *testing.T) {
	requireHostSystemd(t)
	analyze := testutil.LookPath(t, "systemd-analyze")
	root := filepath.Join(t.TempDir(), "root")
	if err := qt.SystemdSlotRoot(root); err != nil {
		t.Fatal(err)
	}
	units := []string{"cpinit-commit.service", "cpinit-health-check.service", "cpinit-test.target", "cpinit-test-workload.service", "cpinit-test-report.service"}
	out, err := exec.Command(analyze, append([]string{"--root=" + root, "--man=no", "verify"}, units...)...).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// debugfsCat reads a file of userdata from the host.
func debugfsCat(t *testing.T, d *qt.ABDevice, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, d.Userdata).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}
