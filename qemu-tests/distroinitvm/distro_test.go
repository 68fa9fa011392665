package distroinitvm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// distroGuestScript runs in the Debian slot, in three units (distroUnits):
// "workload" before boot-complete.target, "health" as its requirement,
// "report" after cpinit-commit.service (dist/systemd, enabled in every
// Debian slot: it commits at boot-complete.target). What it does comes
// from the kernel command line: distrotest.action=begin (report: `cpinit
// begin`, as an OTA agent would after writing slot b) or trial (workload:
// change userdata as an updated system would), distrotest.health=ok|bad
// (the health check's verdict), distrotest.then=rollback (report: `cpinit
// rollback`, the system giving up its update) or crash (workload: crash
// the kernel once userdata is changed, before boot-complete).
const distroGuestScript = `#!/bin/sh
set -u
arg() { sed -n "s/.*distrotest\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
say() { echo "distro-test: $*"; }
action=$(arg action)
health=$(arg health)
then=$(arg then)
case $1 in
workload)
	[ "$action" = trial ] || exit 0
	echo "written by the update" >/data/hello.txt
	head -c 4194304 /dev/zero | tr '\0' u >/data/update-new.bin
	rm -f /data/d3/f003.bin
	sync
	say "workload done"
	if [ "$then" = crash ]; then
		say "crashing"
		echo c >/proc/sysrq-trigger
	fi
	;;
health)
	[ "$health" != bad ]
	;;
report)
	say "root $(findmnt -n -o SOURCE /) data $(findmnt -n -o SOURCE,FSTYPE /data | tr -s ' ' ' ')"
	if [ "$action" = begin ]; then
		if cpinit begin --size 32M --reserve 8M; then say "begin ok"; else say "begin failed"; fi
	fi
	if [ "$then" = rollback ]; then
		if cpinit rollback; then say "rollback ok"; else say "rollback failed"; fi
	fi
	# One line: other units write to the console meanwhile.
	say "status $(cpinit status --json | tr -d '\n')"
	say "report done"
	;;
esac
`

// distroUnits are the test units (qemutests.EnableDebianTestUnit).
var distroUnits = map[string]string{
	"distro-test-workload.service": `[Unit]
Description=distro test: the updated system changes userdata
Before=boot-complete.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/distro-test workload
`,
	"distro-test-health.service": `[Unit]
Description=distro test: health check (distrotest.health=)
After=distro-test-workload.service
Before=boot-complete.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/distro-test health
[Install]
RequiredBy=boot-complete.target
`,
	"distro-test-report.service": `[Unit]
Description=distro test: begin, roll back or report, then power off
After=cpinit-commit.service boot-complete.target distro-test-workload.service
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/distro-test report
`,
}

// distroSlot is MakeDebianSlotImage's extra function: the script, the
// units, the health check required by boot-complete.target (as systemctl
// enable does from its [Install] RequiredBy=).
func distroSlot(root string) error {
	p := filepath.Join(root, "usr/local/sbin/distro-test")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, []byte(distroGuestScript), 0o755); err != nil {
		return err
	}
	for name, unit := range distroUnits {
		if err := qt.EnableDebianTestUnit(root, name, unit); err != nil {
			return err
		}
	}
	req := filepath.Join(root, "etc/systemd/system/boot-complete.target.requires")
	if err := os.MkdirAll(req, 0o755); err != nil {
		return err
	}
	return os.Symlink("/etc/systemd/system/distro-test-health.service", filepath.Join(req, "distro-test-health.service"))
}

// distroDevice is the A/B device (qemutests.ABDevice: the host plays the
// bootloader with Android's misc) booting the pinned kernel with a
// distribution's initramfs and Debian slots.
type distroDevice struct {
	*qt.ABDevice
	f      *flavor
	initrd string
}

func newDistroDevice(t *testing.T, f *flavor, seed uint64) *distroDevice {
	t.Helper()
	k := qt.NeedQEMU(t)
	// Selected by CPINIT_DEBIAN=1 (make test-initramfs, make soak); none
	// is in make test, whose 20 minutes could not also pay for this
	// package's debootstrap and image builds.
	qt.NeedDebianSlots(t, false)
	qt.EnsureDebianInitramfsRoot(t)
	for _, tool := range []string{"debugfs", "e2fsck", "e2label", "unshare", "cp"} {
		testutil.LookPath(t, tool)
	}
	initrd := f.image(t)
	a, b := slotImages(t)
	// No product initramfs: the device boots f's.
	d, err := qt.NewABDevice(t.TempDir(), k, "", 60, seed)
	if err != nil {
		t.Fatal(err)
	}
	d.Systems[0], d.Systems[1] = filepath.Join(d.Dir, "system_a.img"), filepath.Join(d.Dir, "system_b.img")
	qt.CopyFile(t, a, d.Systems[0])
	qt.CopyFile(t, b, d.Systems[1])
	return &distroDevice{ABDevice: d, f: f, initrd: initrd}
}

// boot plays the bootloader (qemutests.ABDevice.SelectSlot) and boots the
// slot with the flavor's initramfs: root= names the slot's filesystem by
// label, read-only as Debian boots it, and the cpinit.* parameters are
// those of cpinit's own initramfs but cpinit.root= (the distribution's
// initramfs mounts the root).
func (d *distroDevice) boot(t *testing.T, extra string) (*qt.VM, int) {
	t.Helper()
	slot, err := d.SelectSlot()
	if err != nil {
		t.Fatal(err)
	}
	return d.bootSlot(t, slot, extra), slot
}

// bootSlot boots slot whatever misc says: a person picking it from the
// bootloader's menu.
func (d *distroDevice) bootSlot(t *testing.T, slot int, extra string) *qt.VM {
	t.Helper()
	suffix := bootstate.SlotSuffixes[slot]
	vm := qt.StartT(t, qt.Options{
		Kernel:   d.Kernel.Vmlinuz,
		Initrd:   []string{d.initrd},
		Disks:    []string{d.Systems[0], d.Systems[1], d.Userdata, d.Metadata, d.Misc},
		MemoryMB: 1024,
		Append: strings.Join([]string{
			"root=LABEL=system" + suffix, "ro", d.f.cmdline,
			"cpinit.userdata=LABEL=userdata", "cpinit.metadata=/dev/vdd", "cpinit.misc=/dev/vde",
			"cpinit.slot=" + suffix, "cpinit.on_fatal=reboot", extra,
		}, " "),
	})
	return vm
}

// stepLine is the boot step's one status line for the flavor's root.
func (d *distroDevice) stepLine(state, via, action string) string {
	return `cpinit: state=` + state + ` userdata=/dev/vdc mounted=` + d.f.rootMnt + `/data via=` + via + ` action=` + action
}

// distroStatus is what the tests read of `cpinit status --json`.
type distroStatus struct {
	State      string `json:"state"`
	Reason     string `json:"reason"`
	TargetSlot string `json:"target_slot"`
	BootedSlot string `json:"booted_slot"`
}

// report waits for the report unit's `cpinit status --json` and the end
// of the boot.
func report(t *testing.T, vm *qt.VM) distroStatus {
	t.Helper()
	m := vm.ExpectT(t, `distro-test: status (\{[^\r\n]*\})\r?\n`, qt.SlotBootTimeout)
	vm.ExpectT(t, `distro-test: report done`, qt.SlotBootTimeout)
	var st distroStatus
	if err := json.Unmarshal([]byte(m[1]), &st); err != nil {
		t.Fatalf("cpinit status --json: %v: %s", err, m[1])
	}
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	return st
}

// timed runs one boot and logs how long it took, QEMU's start to its end.
func timed(t *testing.T, what string, boot func()) {
	t.Helper()
	start := time.Now()
	boot()
	t.Logf("%s: %v", what, time.Since(start).Round(100*time.Millisecond))
}

// begin boots slot a, whose report unit runs `cpinit begin`: the boot step
// mounted userdata plainly, begin arms the checkpoint for slot b.
func (d *distroDevice) begin(t *testing.T) {
	t.Helper()
	timed(t, "slot a, begin", func() {
		vm, slot := d.boot(t, "distrotest.action=begin")
		if slot != 0 {
			t.Fatalf("the bootloader picked slot %d before the update, want a", slot)
		}
		vm.ExpectT(t, d.stepLine("fresh", "/dev/vdc", "mount-plain"), qt.SlotBootTimeout)
		vm.ExpectT(t, `distro-test: root /dev/vda data /dev/vdc ext4`, qt.SlotBootTimeout)
		vm.ExpectT(t, `checkpoint armed: COW /\.cpinit/cow, 32 MiB in \d+ extents, chunk 4 KiB, target slot "_b" \(android counter\)`, qt.SlotBootTimeout)
		vm.ExpectT(t, `distro-test: begin ok`, qt.SlotBootTimeout)
		if st := report(t, vm); st.State != "checkpointing" || st.TargetSlot != "_b" {
			t.Fatalf("after begin: cpinit status %+v, want armed for _b", st)
		}
	})
	if r := qt.WantRecord(t, d.ABDevice, bootstate.StateCheckpointing); r.Active {
		t.Fatal("armed checkpoint already active before the update booted")
	}
}

// trial boots the update's slot b with the given parameters and returns
// the VM once the boot step created the snapshot and the workload ran.
func (d *distroDevice) trial(t *testing.T, n int, params string) *qt.VM {
	t.Helper()
	vm, slot := d.boot(t, "distrotest.action=trial "+params)
	if slot != 1 {
		t.Fatalf("the bootloader picked slot %d for trial boot %d, want b", slot, n)
	}
	action := "reattach-snapshot"
	if n == 1 {
		action = "create-snapshot"
	}
	vm.ExpectT(t, d.stepLine("checkpointing/active", "/dev/mapper/cp-origin", action), qt.SlotBootTimeout)
	vm.ExpectT(t, `distro-test: workload done`, qt.SlotBootTimeout)
	return vm
}

// updateManifest is before with the trial's workload applied: hello.txt
// rewritten, update-new.bin (4 MiB of 'u') added, d3/f003.bin deleted.
func updateManifest(before qt.Manifest) qt.Manifest {
	entry := func(b []byte) string {
		h := sha256.Sum256(b)
		return fmt.Sprintf("%v %d %s", os.FileMode(0o644), len(b), hex.EncodeToString(h[:]))
	}
	want := qt.Manifest{}
	for k, v := range before {
		want[k] = v
	}
	want["hello.txt"] = entry([]byte("written by the update\n"))
	want["update-new.bin"] = entry([]byte(strings.Repeat("u", 4<<20)))
	delete(want, "d3/f003.bin")
	return want
}

// testCommit: begin on slot a arms the checkpoint; slot b's first boot
// creates the snapshot in the distribution's initramfs; the system changes
// userdata, its health check passes, cpinit-commit.service commits at
// boot-complete.target: the record is fresh, the COW file gone, misc
// marks b successful, and userdata is exactly the update's.
func testCommit(t *testing.T, f *flavor, seed uint64) {
	d := newDistroDevice(t, f, seed)
	d.begin(t)
	before := qt.UserdataManifestT(t, d.ABDevice)
	timed(t, "slot b, trial and commit", func() {
		vm := d.trial(t, 1, "distrotest.health=ok")
		vm.ExpectT(t, `committed: the update's data is kept`, qt.SlotBootTimeout)
		vm.ExpectT(t, `distro-test: root /dev/vdb data /dev/mapper/cp-origin ext4`, qt.SlotBootTimeout)
		if st := report(t, vm); st.State != "fresh" || st.Reason != "cleaned" {
			t.Fatalf("after the commit: cpinit status %+v, want fresh, cleaned", st)
		}
	})
	qt.WantRecord(t, d.ABDevice, bootstate.StateFresh)
	if ok, err := d.COWFileExists(); err != nil || ok {
		t.Fatalf("COW file after the commit: exists=%v %v", ok, err)
	}
	bc, err := d.ReadMisc()
	if err != nil {
		t.Fatal(err)
	}
	if b := bc.Slots[1]; !b.SuccessfulBoot || b.Priority == 0 {
		t.Fatalf("misc slot b after the commit: %+v, want successful", b)
	}
	if got := bc.BootloaderSelect(); got != 1 {
		t.Fatalf("the bootloader would boot slot %d after the commit, want b", got)
	}
	after := qt.UserdataManifestT(t, d.ABDevice)
	if diff := updateManifest(before).Diff(after, 20); len(diff) != 0 {
		t.Fatalf("userdata after the commit is not the update's:\n%s", strings.Join(diff, "\n"))
	}
}

// rollbackBoot boots the old slot a after the update was given up: the
// boot step merges the checkpoint back (why: the log's reason) before
// mounting userdata, and the system starts on the old data.
func (d *distroDevice) rollbackBoot(t *testing.T, why string) {
	t.Helper()
	timed(t, "slot a, rollback", func() {
		vm, slot := d.boot(t, "distrotest.action=check")
		if slot != 0 {
			t.Fatalf("the bootloader picked slot %d after the update was given up, want a", slot)
		}
		vm.ExpectT(t, why, qt.SlotBootTimeout)
		vm.ExpectT(t, `cpinit: restore: \d+ chunks \([0-9.]+ MiB\) copied home`, qt.SlotBootTimeout)
		vm.ExpectT(t, d.stepLine("fresh", `\S+`, "start-or-resume-merge"), qt.SlotBootTimeout)
		vm.ExpectT(t, `distro-test: root /dev/vda data /dev/\S+ ext4`, qt.SlotBootTimeout)
		if st := report(t, vm); st.State != "fresh" {
			t.Fatalf("after the rollback: cpinit status %+v, want fresh", st)
		}
	})
}

// testRollbackCommand: the same update, but the health check fails in
// b's trial: boot-complete.target fails, so cpinit-commit.service does not
// run; the system gives up with `cpinit rollback` and powers off. The
// bootloader boots slot a, whose boot step restores userdata, which is
// then exactly as the update's first boot found it.
//
// If forceB, a person first boots slot b from the bootloader's menu
// after the rollback was recorded: the boot step restores userdata there,
// then exits 3 rather than start b's system on the data from before b's
// update, and the initramfs reboots (exitReboot). Slot a then mounts the
// restored data plainly.
func testRollbackCommand(t *testing.T, f *flavor, seed uint64, forceB bool) {
	d := newDistroDevice(t, f, seed)
	d.begin(t)
	// The checkpoint is userdata as the update's first boot finds it.
	before := qt.UserdataManifestT(t, d.ABDevice)
	timed(t, "slot b, trial and cpinit rollback", func() {
		vm := d.trial(t, 1, "distrotest.health=bad distrotest.then=rollback")
		vm.ExpectT(t, `cpinit-commit.service: Job cpinit-commit.service/start failed with result 'dependency'`, qt.SlotBootTimeout)
		vm.ExpectT(t, `rollback scheduled`, qt.SlotBootTimeout)
		vm.ExpectT(t, `distro-test: rollback ok`, qt.SlotBootTimeout)
		if st := report(t, vm); st.State != "rollback-pending" {
			t.Fatalf("after cpinit rollback: cpinit status %+v, want rollback-pending", st)
		}
	})
	if !forceB {
		d.rollbackBoot(t, `cpinit: merging the checkpoint back into userdata \(abort\)`)
		wantRolledBack(t, d, before)
		return
	}
	timed(t, "slot b from the menu, rollback and reboot", func() {
		vm := d.bootSlot(t, 1, "distrotest.action=check")
		vm.ExpectT(t, `cpinit: merging the checkpoint back into userdata \(abort\)`, qt.SlotBootTimeout)
		vm.ExpectT(t, `cpinit: restore: \d+ chunks \([0-9.]+ MiB\) copied home`, qt.SlotBootTimeout)
		vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=`+f.rootMnt+`/data via=\(not mounted\) action=reboot-other-slot`, qt.SlotBootTimeout)
		vm.ExpectT(t, `cpinit: not starting slot _b on the data from before its update: rebooting into the other slot \(exit status 3: the initramfs reboots\)`, qt.SlotBootTimeout)
		wantNoSystem(t, vm)
	})
	timed(t, "slot a, restored data", func() {
		vm, slot := d.boot(t, "distrotest.action=check")
		if slot != 0 {
			t.Fatalf("the bootloader picked slot %d after the rollback, want a", slot)
		}
		vm.ExpectT(t, d.stepLine("fresh", "/dev/vdc", "mount-plain"), qt.SlotBootTimeout)
		if st := report(t, vm); st.State != "fresh" {
			t.Fatalf("after the rollback: cpinit status %+v, want fresh", st)
		}
	})
	wantRolledBack(t, d, before)
}

// wantNoSystem waits for the end of a boot that must stop in the
// initramfs, and fails if the slot's system started.
func wantNoSystem(t *testing.T, vm *qt.VM) {
	t.Helper()
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	// The slot's systemd names its hostname first thing after the switch.
	if out := vm.Output(); strings.Contains(out, "Hostname set to <cpinit-debian>") || strings.Contains(out, "distro-test:") {
		t.Fatalf("the slot's system started:\n%s", qt.Tail(out, 60))
	}
}

// testFatal: a boot step that fails (userdata not found within
// cpinit.rootwait=) stops the boot before the root's init, userdata not
// mounted, as cpinit.on_fatal= says, through the flavor's script: under
// halt (exit status 1) the distribution's own failure path, initramfs-tools'
// panic or dracut's emergency mode (both reboot here: the kernel's
// panic=-1, rd.emergency=reboot); if withReboot, also under reboot (exit
// status 3), where the script reboots at once. The metadata store is
// never read: it stays blank.
func testFatal(t *testing.T, f *flavor, failure string, withReboot bool) {
	d := newDistroDevice(t, f, 1960)
	cases := []struct {
		onFatal, status, then string
	}{
		{"halt", "1", failure},
		{"reboot", "3", `reboot: Restarting system`},
	}
	if !withReboot {
		cases = cases[:1]
	}
	for _, c := range cases {
		timed(t, "slot a, cpinit.on_fatal="+c.onFatal, func() {
			vm, _ := d.boot(t, "cpinit.userdata=LABEL=nosuch cpinit.rootwait=1 cpinit.on_fatal="+c.onFatal)
			vm.ExpectT(t, `cpinit: FATAL: userdata device \(cpinit\.userdata=LABEL=nosuch\): `, qt.SlotBootTimeout)
			vm.ExpectT(t, `cpinit: stopping the boot, userdata not mounted: exit status `+c.status+`, cpinit\.on_fatal=`+c.onFatal, qt.SlotBootTimeout)
			vm.ExpectT(t, c.then, qt.SlotBootTimeout)
			wantNoSystem(t, vm)
		})
	}
	if r, err := d.Record(); err == nil {
		t.Fatalf("the metadata store was written: %s", qt.RecString(*r))
	}
}

// testCrashFallback: the update's system crashes on every boot once it
// has changed userdata, before boot-complete. The bootloader counts the
// tries and falls back to slot a, whose boot step rolls userdata back.
// The host's bootloader gives the update 2 tries (its tries_remaining set
// after begin) to keep the test short: every trial boot after the first
// reattaches the snapshot the same way, and the full count is the
// lifecycle tests' (qemu-tests, BootUntilFallback).
func testCrashFallback(t *testing.T, f *flavor, seed uint64) {
	d := newDistroDevice(t, f, seed)
	d.begin(t)
	before := qt.UserdataManifestT(t, d.ABDevice)
	bc, err := d.ReadMisc()
	if err != nil {
		t.Fatal(err)
	}
	bc.Slots[1].TriesRemaining = 2
	if err := d.WriteMisc(bc); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 2; n++ {
		timed(t, fmt.Sprintf("slot b, trial boot %d, crash", n), func() {
			vm := d.trial(t, n, "distrotest.health=ok distrotest.then=crash")
			vm.ExpectT(t, `distro-test: crashing`, qt.SlotBootTimeout)
			// panic=-1 reboots at once, and QEMU's -no-reboot ends.
			if err := vm.Wait(qt.SlotBootTimeout); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(vm.Output(), "Kernel panic - not syncing: sysrq triggered crash") {
				t.Fatalf("trial boot %d ended without the crash:\n%s", n, qt.Tail(vm.Output(), 40))
			}
		})
		if r := qt.WantRecord(t, d.ABDevice, bootstate.StateCheckpointing); !r.Active || r.Attempts != uint16(n) {
			t.Fatalf("after trial boot %d: %s", n, qt.RecString(*r))
		}
	}
	d.rollbackBoot(t, `cpinit: rolling back userdata \(slot-fallback, booted "_a", target "_b"\)`)
	wantRolledBack(t, d, before)
}

// wantRolledBack checks the end of a rollback on the host: the record
// fresh, the COW file gone, userdata exactly as before.
func wantRolledBack(t *testing.T, d *distroDevice, before qt.Manifest) {
	t.Helper()
	qt.WantRecord(t, d.ABDevice, bootstate.StateFresh)
	if ok, err := d.COWFileExists(); err != nil || ok {
		t.Fatalf("COW file after the rollback: exists=%v %v", ok, err)
	}
	after := qt.UserdataManifestT(t, d.ABDevice)
	if diff := before.Diff(after, 20); len(diff) != 0 {
		t.Fatalf("userdata after the rollback differs from before the update:\n%s", strings.Join(diff, "\n"))
	}
}

// TestInitramfsToolsCommit: testCommit through initramfs-tools'
// local-bottom script.
func TestInitramfsToolsCommit(t *testing.T) {
	t.Parallel()
	testCommit(t, initramfsTools, 1941)
}

// TestInitramfsToolsCrashFallback: testCrashFallback through
// initramfs-tools.
func TestInitramfsToolsCrashFallback(t *testing.T) {
	t.Parallel()
	testCrashFallback(t, initramfsTools, 1942)
}

// TestDracutCommit: testCommit through dracut's systemd-based initramfs
// and cpinit-boot-step.service.
func TestDracutCommit(t *testing.T) {
	t.Parallel()
	testCommit(t, dracut, 1951)
}

// TestDracutRollbackCommand: testRollbackCommand through dracut, with a
// boot of slot b from the menu after the rollback was recorded.
func TestDracutRollbackCommand(t *testing.T) {
	t.Parallel()
	testRollbackCommand(t, dracut, 1952, true)
}

// TestDracutShellCommit: testCommit through dracut's shell-based image
// and cpinit's pre-pivot hook.
func TestDracutShellCommit(t *testing.T) {
	t.Parallel()
	testCommit(t, dracutShell, 1971)
}

// TestInitramfsToolsFatal: testFatal through initramfs-tools, whose panic
// reboots under the kernel's panic=-1, and under cpinit.on_fatal=reboot.
func TestInitramfsToolsFatal(t *testing.T) {
	t.Parallel()
	testFatal(t, initramfsTools, `Rebooting automatically due to panic= boot argument`, true)
}

// TestDracutFatal: testFatal through dracut: cpinit-boot-step.service
// fails, so initrd-fs.target, whose OnFailure= is emergency.target, and
// initrd-switch-root.service. Its exit status 3 (reboot) is
// TestDracutRollbackCommand's boot of slot b.
func TestDracutFatal(t *testing.T) {
	t.Parallel()
	testFatal(t, dracut, `Dependency failed for .*Initrd File Systems`, false)
}
