package agentvm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The Mender tests: the real mender-client 3.4 of Debian bookworm in
// standalone mode (`mender install FILE`, `mender commit`, `mender
// rollback`) on U-Boot's environment with Mender's variables
// (envDevice, scheme uboot-mender: meta-mender's defaults, bootlimit 1),
// with dist/mender installed by its install.sh and its state scripts in
// the Artifact, which the real mender-artifact 3.9 writes on the host.

// menderGuestScript is raucGuestScript's counterpart: "workload",
// "health", and "report" (agenttest.action=install: mender install the
// Artifact from /dev/vde; agenttest.health=bad: mender rollback).
const menderGuestScript = `#!/bin/sh
set -u
arg() { sed -n "s/.*agenttest\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
say() { echo "agent-test: $*"; }
action=$(arg action)
health=$(arg health)
case $1 in
workload)
	[ "$action" = trial ] || exit 0
	echo "written by the update" >/data/hello.txt
	dd if=/dev/urandom of=/data/update-new.bin bs=1M count=4 status=none
	rm -f /data/d3/f003.bin
	sync
	say "workload done"
	;;
health)
	[ "$health" != bad ]
	;;
report)
	say "slot version $(cat /etc/cpinit-test/version) action $action"
	if [ "$action" = install ]; then
		mkdir -p /run/update && mount -o ro /dev/vde /run/update || say "mount failed"
		if mender install /run/update/update.mender; then say "install ok"; else say "install failed $?"; fi
	fi
	if [ "$health" = bad ]; then
		if mender rollback; then say "rollback ok"; else say "rollback failed $?"; fi
	fi
	say "env $(fw_printenv mender_boot_part upgrade_available bootcount | tr '\n' ' ')"
	# One line, written at once: other services write to the console
	# too, and a line of theirs inside the JSON would break it.
	say "status $(cpinit status --json | tr -d '\n')"
	say "report done"
	;;
esac
`

// menderSlot returns MakeDebianSlotImage's extra function for a Mender
// slot: dist/mender installed, Mender's configuration (the slots are
// partitions 2 and 3 of /dev/vda; its state in /data/mender, as
// meta-mender links /var/lib/mender to the data partition), the test
// units (raucUnits' workload and health check; the report unit after
// mender-commit.service).
func menderSlot(t *testing.T, version string) func(root string) error {
	return func(root string) error {
		run(t, "sh", filepath.Join(qt.RepoRoot(), "dist/mender/install.sh"), root)
		files := map[string]string{
			"etc/mender/mender.conf":            `{"RootfsPartA": "/dev/vda2", "RootfsPartB": "/dev/vda3", "DeviceTypeFile": "/etc/mender/device_type"}` + "\n",
			"etc/mender/device_type":            "device_type=cpinit-test\n",
			"etc/mender/artifact_info":          "artifact_name=v" + version + "\n",
			"etc/fw_env.config":                 FWEnvConfig,
			"etc/cpinit/mender.conf":            "CPINIT_BEGIN_ARGS=\"--size 48M --reserve 8M\"\n",
			"etc/cpinit-test/version":           version + "\n",
			"usr/local/sbin/cpinit-agent-test":  menderGuestScript,
			"etc/tmpfiles.d/cpinit-mender.conf": "d /data/mender 0700 root root -\n",
		}
		for p, s := range files {
			full := filepath.Join(root, p)
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(full, []byte(s), 0o755); err != nil {
				return err
			}
		}
		if err := os.RemoveAll(filepath.Join(root, "var/lib/mender")); err != nil {
			return err
		}
		if err := os.Symlink("/data/mender", filepath.Join(root, "var/lib/mender")); err != nil {
			return err
		}
		units := map[string]string{
			"cpinit-agent-workload.service": raucUnits["cpinit-agent-workload.service"],
			"cpinit-agent-health.service":   raucUnits["cpinit-agent-health.service"],
			"cpinit-agent-report.service": strings.Replace(raucUnits["cpinit-agent-report.service"],
				"After=rauc-mark-good.service", "After=mender-commit.service", 1),
		}
		for name, unit := range units {
			if err := qt.EnableDebianTestUnit(root, name, unit); err != nil {
				return err
			}
		}
		return gateAndCommitUnit(root, "mender-commit.service")
	}
}

// gateAndCommitUnit wires the test's health check into
// boot-complete.target (gateHealth), disables the image's
// cpinit-commit.service, so that the commit the test sees is the agent's,
// and enables the agent's commit unit in the test target, which stands in
// for multi-user.target.
func gateAndCommitUnit(root, commitUnit string) error {
	if err := gateHealth(root); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(root, "etc/systemd/system/basic.target.wants/cpinit-commit.service")); err != nil {
		return err
	}
	return os.Symlink("/usr/lib/systemd/system/"+commitUnit,
		filepath.Join(root, "etc/systemd/system", qt.DebianTestTarget+".wants", commitUnit))
}

// gateHealth makes boot-complete.target require the test's health check,
// as systemctl enable does from its [Install] RequiredBy=.
func gateHealth(root string) error {
	req := filepath.Join(root, "etc/systemd/system/boot-complete.target.requires")
	if err := os.MkdirAll(req, 0o755); err != nil {
		return err
	}
	return os.Symlink("/etc/systemd/system/cpinit-agent-health.service", filepath.Join(req, "cpinit-agent-health.service"))
}

// menderEnvVars are meta-mender's defaults (env_mender.h) for a device
// running partition 2.
const menderEnvVars = "altbootcmd=run mender_altbootcmd; run bootcmd\nbootlimit=1\nbootcount=0\nupgrade_available=0\nmender_boot_part=2\nmender_boot_part_hex=2\nbootcmd=run mender_setup; run mender_try_to_recover; boot\n"

// newMenderDevice makes the device: slot a Mender's v1, the Artifact of v2
// (its image, cpinit's state scripts) on the update disk.
func newMenderDevice(t *testing.T, seed uint64) *envDevice {
	t.Helper()
	root := qt.EnsureDebianRoot(t)
	dir := t.TempDir()
	a, err := qt.MakeDebianSlotImage(dir, "system_a", menderSlot(t, "1"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := qt.MakeDebianSlotImage(dir, "system_b", menderSlot(t, "2"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	art := filepath.Join(dir, "update.mender")
	scripts := filepath.Join(qt.RepoRoot(), "dist/mender")
	args := []string{"--library-path", filepath.Join(root, "usr/lib/x86_64-linux-gnu"), filepath.Join(root, "usr/bin/mender-artifact"),
		"write", "rootfs-image", "-t", "cpinit-test", "-n", "v2", "-f", b, "-o", art, "--compression", "none"}
	for _, s := range []string{"ArtifactInstall_Enter_50_cpinit", "ArtifactCommit_Enter_50_cpinit", "ArtifactRollback_Enter_50_cpinit", "ArtifactFailure_Enter_50_cpinit"} {
		args = append(args, "-s", filepath.Join(scripts, s))
	}
	run(t, filepath.Join(root, "lib64/ld-linux-x86-64.so.2"), args...)
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	e := newEnvDevice(t, seed, bootstate.UBootSchemeMender, a, fi.Size(), menderEnvVars, map[string]string{"update.mender": art})
	return e
}

// menderInstall boots slot a, whose report unit runs `mender install`:
// Mender writes partition 3, runs ArtifactInstall_Enter_50_cpinit (begin
// --no-activate: armed), then switches the environment to partition 3.
func menderInstall(t *testing.T, e *envDevice) {
	t.Helper()
	vm, slot := e.boot(t, "agenttest.action=install agenttest.health=ok")
	if slot != 0 {
		t.Fatalf("U-Boot picked slot %d before the update, want a", slot)
	}
	vm.ExpectT(t, `agent-test: slot version 1 action install`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: install ok`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: env mender_boot_part=3 upgrade_available=1 bootcount=0`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "checkpointing" || st.TargetSlot != "_b" {
		t.Fatalf("after mender install: cpinit status %+v, want armed for _b", st)
	}
	if r := qt.WantRecord(t, e.ABDevice, bootstate.StateCheckpointing); r.Active || r.Counter != bootstate.CounterBootloader {
		t.Fatalf("after mender install: record %s, want armed with the bootloader counter", qt.RecString(*r))
	}
}

// menderTrial boots the update (U-Boot picks partition 3 on trial).
func menderTrial(t *testing.T, e *envDevice, health string) *qt.VM {
	t.Helper()
	vm, slot := e.boot(t, "agenttest.action=trial agenttest.health="+health)
	if slot != 1 {
		t.Fatalf("U-Boot picked slot %d after mender install, want b", slot)
	}
	vm.ExpectT(t, `cpinit: state=checkpointing/active userdata=/dev/vdb mounted=/newroot/data via=/dev/mapper/cp-origin action=create-snapshot`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: workload done`, qt.SlotBootTimeout)
	return vm
}

// TestMenderUpdateCommits: mender install arms the checkpoint (through
// the Artifact's ArtifactInstall_Enter script) before Mender switches
// U-Boot to the new partition; in the trial, the health check passes and
// mender-commit.service's `mender commit` commits cpinit's checkpoint
// (ArtifactCommit_Enter) and clears upgrade_available: no COW left, the
// update's changes kept, U-Boot keeps booting partition 3.
func TestMenderUpdateCommits(t *testing.T) {
	qt.NeedDebianSlots(t, false)
	e := newMenderDevice(t, 1903)
	menderInstall(t, e)
	vm := menderTrial(t, e, "ok")
	vm.ExpectT(t, `committed: the update's data is kept`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: slot version 2 action trial`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: env mender_boot_part=3 upgrade_available=0 bootcount=1`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "fresh" || st.Reason != "cleaned" {
		t.Fatalf("after mender commit: cpinit status %+v, want fresh, cleaned", st)
	}
	qt.WantRecord(t, e.ABDevice, bootstate.StateFresh)
	if ok, err := e.COWFileExists(); err != nil || ok {
		t.Fatalf("COW file after the commit: exists=%v %v", ok, err)
	}
	if next := e.state(t).Next(); next != "b" {
		t.Fatalf("U-Boot would boot slot %q after the commit, want b", next)
	}
	m := qt.UserdataManifestT(t, e.ABDevice)
	if _, ok := m["update-new.bin"]; !ok {
		t.Fatal("the update's new file is missing after the commit")
	}
	if _, ok := m["d3/f003.bin"]; ok {
		t.Fatal("the file the update deleted is back after the commit")
	}
}

// TestMenderUpdateRollsBack: the health check fails in the trial, so
// mender-commit.service does not run; the system runs `mender rollback`,
// whose ArtifactRollback_Enter script schedules cpinit's rollback before
// Mender switches U-Boot back to partition 2. The next boot restores
// userdata, exactly as the update's first boot found it.
func TestMenderUpdateRollsBack(t *testing.T) {
	qt.NeedDebianSlots(t, false)
	e := newMenderDevice(t, 1904)
	menderInstall(t, e)
	before := qt.UserdataManifestT(t, e.ABDevice)
	vm := menderTrial(t, e, "bad")
	vm.ExpectT(t, `mender-commit.service: Job mender-commit.service/start failed with result 'dependency'`, qt.SlotBootTimeout)
	vm.ExpectT(t, `rollback scheduled`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: rollback ok`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: env mender_boot_part=2 upgrade_available=0`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "rollback-pending" {
		t.Fatalf("after mender rollback: cpinit status %+v, want rollback-pending", st)
	}
	// The restoring boot stops after PID 1's work (no next init: cpinit
	// unmounts userdata and powers off): slot a's system would change
	// userdata at once, Mender's own store (/data/mender) first.
	vm, slot := e.boot(t, "cpinit.init=/cpinit-test-no-init")
	if slot != 0 {
		t.Fatalf("U-Boot picked slot %d after mender rollback, want a", slot)
	}
	vm.ExpectT(t, `cpinit: merging the checkpoint back into userdata \(abort\)`, qt.SlotBootTimeout)
	vm.ExpectT(t, `cpinit: restore: \d+ chunks \([0-9.]+ MiB\) copied home`, qt.SlotBootTimeout)
	vm.ExpectT(t, `next init /cpinit-test-no-init not found`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	qt.WantRecord(t, e.ABDevice, bootstate.StateFresh)
	after := qt.UserdataManifestT(t, e.ABDevice)
	if diff := before.Diff(after, 20); len(diff) != 0 {
		t.Fatalf("userdata after the rollback differs from before the update:\n%s", strings.Join(diff, "\n"))
	}
}
