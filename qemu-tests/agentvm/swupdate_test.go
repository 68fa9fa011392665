package agentvm

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The SWUpdate tests: the real swupdate 2022.12 of Debian bookworm (built
// for signed images; its uboot interface loads libubootenv) installs a
// signed .swu from the command line, configured as dist/swupdate says (its
// conf.d file, sourced as Debian's swupdate.sh sources it: -B uboot and
// cpinit's pre-update command), on U-Boot's environment with the
// bootcount/altbootcmd variables and SWUpdate's ustate (envDevice, scheme
// uboot-bootcount). The commit is dist/systemd's cpinit-commit.service.

// swupdateGuestScript: "workload", "health", "report"
// (agenttest.action=install: swupdate -i the .swu from /dev/vde with the
// arguments of /etc/swupdate/conf.d; agenttest.health=bad: cpinit
// rollback, what a system that knows it is broken runs).
const swupdateGuestScript = `#!/bin/sh
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
		# As /usr/lib/swupdate/swupdate.sh builds swupdate.service's
		# arguments.
		SWUPDATE_ARGS="-v"
		for f in $(ls -1 /etc/swupdate/conf.d/ | sort); do . /etc/swupdate/conf.d/$f; done
		say "swupdate $SWUPDATE_ARGS"
		if swupdate $SWUPDATE_ARGS -i /run/update/update.swu; then say "install ok"; else say "install failed $?"; fi
	fi
	if [ "$health" = bad ]; then
		if cpinit rollback; then say "rollback ok"; else say "rollback failed $?"; fi
	fi
	say "env $(fw_printenv bootpart upgrade_available bootcount ustate | tr '\n' ' ')"
	# One line, written at once: other services write to the console
	# too, and a line of theirs inside the JSON would break it.
	say "status $(cpinit status --json | tr -d '\n')"
	say "report done"
	;;
esac
`

// swupdateSlot returns MakeDebianSlotImage's extra function for an
// SWUpdate slot: dist/swupdate installed, the test's conf.d file (the
// verification key and the copy to install: this test updates partition
// 2 to 3), fw_env.config, the test units; cpinit-commit.service stays
// enabled (the image enables it as a package would).
func swupdateSlot(t *testing.T, version, cert string) func(root string) error {
	return func(root string) error {
		run(t, "sh", filepath.Join(qt.RepoRoot(), "dist/swupdate/install.sh"), root)
		cb, err := os.ReadFile(cert)
		if err != nil {
			return err
		}
		files := map[string]string{
			"etc/swupdate/conf.d/40-cpinit-test": "SWUPDATE_ARGS=\"$SWUPDATE_ARGS -k /etc/swupdate/cert.pem -e stable,copy2\"\n",
			"etc/swupdate/cert.pem":              string(cb),
			"etc/fw_env.config":                  FWEnvConfig,
			"etc/hwrevision":                     "cpinit-test 1.0\n",
			"etc/cpinit/swupdate.conf":           "CPINIT_BEGIN_ARGS=\"--size 48M --reserve 8M\"\n",
			"etc/cpinit-test/version":            version + "\n",
			"usr/local/sbin/cpinit-agent-test":   swupdateGuestScript,
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
		units := map[string]string{
			"cpinit-agent-workload.service": raucUnits["cpinit-agent-workload.service"],
			"cpinit-agent-health.service":   raucUnits["cpinit-agent-health.service"],
			"cpinit-agent-report.service": strings.Replace(raucUnits["cpinit-agent-report.service"],
				"After=rauc-mark-good.service", "After=cpinit-commit.service", 1),
		}
		for name, unit := range units {
			if err := qt.EnableDebianTestUnit(root, name, unit); err != nil {
				return err
			}
		}
		return gateHealth(root)
	}
}

// swupdateEnvVars: a device running partition 2 with U-Boot's bootcount
// scheme as SWUpdate's documentation sets it up, and SWUpdate's ustate.
const swupdateEnvVars = "bootpart=0:2\nupgrade_available=0\nbootcount=0\nbootlimit=1\naltbootcmd=if test ${bootpart} = 0:2; then setenv bootpart 0:3; else setenv bootpart 0:2; fi; setenv upgrade_available 0; saveenv; run bootcmd\nustate=0\n"

// makeSWU makes the signed .swu of image: sw-description from
// dist/swupdate/sw-description.example with the image's sha256, its CMS
// signature (openssl cms, as SWUpdate's docs sign), the image, in a newc
// cpio with CRCs (cpio -H crc, the format SWUpdate reads).
func makeSWU(t *testing.T, dir, image, key, cert string) string {
	t.Helper()
	cpio := testutil.LookPath(t, "cpio")
	in := filepath.Join(dir, "swu.in")
	if err := os.MkdirAll(in, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	desc, err := os.ReadFile(filepath.Join(qt.RepoRoot(), "dist/swupdate/sw-description.example"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(desc), `sha256 = "@rootfs.ext4";`) {
		t.Fatal("dist/swupdate/sw-description.example no longer has the sha256 placeholder")
	}
	desc = []byte(strings.ReplaceAll(string(desc), "@rootfs.ext4", hex.EncodeToString(h.Sum(nil))))
	if err := os.WriteFile(filepath.Join(in, "sw-description"), desc, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "openssl", "cms", "-sign", "-in", filepath.Join(in, "sw-description"), "-out", filepath.Join(in, "sw-description.sig"),
		"-signer", cert, "-inkey", key, "-outform", "DER", "-nosmimecap", "-binary")
	if err := os.Link(image, filepath.Join(in, "rootfs.ext4")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "update.swu")
	cmd := exec.Command("sh", "-c", "printf 'sw-description\\nsw-description.sig\\nrootfs.ext4\\n' | "+cpio+" -o -H crc --quiet > "+out)
	cmd.Dir = in
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, b)
	}
	os.RemoveAll(in)
	return out
}

// newSWUpdateDevice makes the device: slot a version 1, the .swu of
// version 2 on the update disk.
func newSWUpdateDevice(t *testing.T, seed uint64) *envDevice {
	t.Helper()
	qt.EnsureDebianRoot(t)
	testutil.LookPath(t, "openssl")
	dir := t.TempDir()
	key, cert := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
	run(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
		"-days", "3650", "-subj", "/O=cpinit test/CN=cpinit test update signing")
	a, err := qt.MakeDebianSlotImage(dir, "system_a", swupdateSlot(t, "1", cert))
	if err != nil {
		t.Fatal(err)
	}
	b, err := qt.MakeDebianSlotImage(dir, "system_b", swupdateSlot(t, "2", cert))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	swu := makeSWU(t, dir, b, key, cert)
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	return newEnvDevice(t, seed, bootstate.UBootSchemeBootcount, a, fi.Size(), swupdateEnvVars, map[string]string{"update.swu": swu})
}

// swupdateInstall boots slot a, whose report unit runs swupdate -i: the
// pre-update command arms the checkpoint, SWUpdate writes partition 3 and
// its bootenv switches U-Boot to it, with ustate 1 (installed).
func swupdateInstall(t *testing.T, e *envDevice) {
	t.Helper()
	vm, slot := e.boot(t, "agenttest.action=install agenttest.health=ok")
	if slot != 0 {
		t.Fatalf("U-Boot picked slot %d before the update, want a", slot)
	}
	vm.ExpectT(t, `agent-test: slot version 1 action install`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: swupdate -v -k /etc/swupdate/cert.pem -e stable,copy2 -B uboot -P /usr/libexec/cpinit/cpinit-swupdate-preupdate`, qt.SlotBootTimeout)
	vm.ExpectT(t, `checkpoint armed: COW /\.cpinit/cow, 48 MiB in \d+ extents, chunk 4 KiB, target slot "_b" \(bootloader counter\); slot _b stays as it is`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: install ok`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: env bootpart=0:3 upgrade_available=1 bootcount=0 ustate=1`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "checkpointing" || st.TargetSlot != "_b" {
		t.Fatalf("after swupdate: cpinit status %+v, want armed for _b", st)
	}
	if r := qt.WantRecord(t, e.ABDevice, bootstate.StateCheckpointing); r.Active || r.Counter != bootstate.CounterBootloader {
		t.Fatalf("after swupdate: record %s, want armed with the bootloader counter", qt.RecString(*r))
	}
}

// TestSWUpdateUpdateCommits: swupdate -i arms the checkpoint through the
// pre-update command before it writes partition 3; in the trial the
// health check passes and cpinit-commit.service commits: upgrade_available,
// bootcount and ustate back to 0, no COW left, the update's changes kept.
func TestSWUpdateUpdateCommits(t *testing.T) {
	qt.NeedDebianSlots(t, false)
	e := newSWUpdateDevice(t, 1905)
	swupdateInstall(t, e)
	vm, slot := e.boot(t, "agenttest.action=trial agenttest.health=ok")
	if slot != 1 {
		t.Fatalf("U-Boot picked slot %d after swupdate, want b", slot)
	}
	vm.ExpectT(t, `cpinit: state=checkpointing/active userdata=/dev/vdb mounted=/newroot/data via=/dev/mapper/cp-origin action=create-snapshot`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: workload done`, qt.SlotBootTimeout)
	vm.ExpectT(t, `committed: the update's data is kept`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: env bootpart=0:3 upgrade_available=0 bootcount=0 ustate=0`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "fresh" || st.Reason != "cleaned" {
		t.Fatalf("after the commit: cpinit status %+v, want fresh, cleaned", st)
	}
	if ok, err := e.COWFileExists(); err != nil || ok {
		t.Fatalf("COW file after the commit: exists=%v %v", ok, err)
	}
	m := qt.UserdataManifestT(t, e.ABDevice)
	if _, ok := m["update-new.bin"]; !ok {
		t.Fatal("the update's new file is missing after the commit")
	}
	if _, ok := m["d3/f003.bin"]; ok {
		t.Fatal("the file the update deleted is back after the commit")
	}
}

// TestSWUpdateUpdateRollsBack: the health check fails, so
// cpinit-commit.service does not run; the system runs `cpinit rollback`:
// U-Boot back to partition 2, ustate 3 (failed); the next boot restores
// userdata, exactly as the update's first boot found it.
func TestSWUpdateUpdateRollsBack(t *testing.T) {
	qt.NeedDebianSlots(t, false)
	e := newSWUpdateDevice(t, 1906)
	swupdateInstall(t, e)
	before := qt.UserdataManifestT(t, e.ABDevice)
	vm, slot := e.boot(t, "agenttest.action=trial agenttest.health=bad")
	if slot != 1 {
		t.Fatalf("U-Boot picked slot %d after swupdate, want b", slot)
	}
	vm.ExpectT(t, `agent-test: workload done`, qt.SlotBootTimeout)
	vm.ExpectT(t, `cpinit-commit.service: Job cpinit-commit.service/start failed with result 'dependency'`, qt.SlotBootTimeout)
	vm.ExpectT(t, `rollback scheduled`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: env bootpart=0:2 upgrade_available=0 bootcount=1 ustate=3`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "rollback-pending" {
		t.Fatalf("after cpinit rollback: cpinit status %+v, want rollback-pending", st)
	}
	vm, slot = e.boot(t, "cpinit.init=/cpinit-test-no-init")
	if slot != 0 {
		t.Fatalf("U-Boot picked slot %d after the rollback, want a", slot)
	}
	vm.ExpectT(t, `cpinit: merging the checkpoint back into userdata \(abort\)`, qt.SlotBootTimeout)
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
