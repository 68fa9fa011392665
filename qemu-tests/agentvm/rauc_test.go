package agentvm

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The RAUC tests: the real rauc 1.8 of Debian bookworm, configured as
// dist/rauc says (docs/rauc.md: bootloader=custom, cpinit's backend,
// dist/rauc/install.sh run into the slot as an integrator would), installs
// a signed bundle made by the same rauc on the host. The bootloader is
// Android's misc, which the host plays (qemutests.ABDevice) and which
// passes rauc.slot= with the slot's bootname (a, b); RAUC's own U-Boot and
// GRUB scripts are proven with the real bootloaders in
// qemu-tests/bootloadervm.

// raucGuestScript runs in the Debian slot, in three units (raucUnits):
// "workload" before boot-complete.target, "health" as its requirement,
// "report" after rauc-mark-good.service. What it does comes from the
// kernel command line: agenttest.action=install (report: rauc install the
// bundle from /dev/vdf), trial (workload: change userdata as an updated
// system would), agenttest.health=ok|bad (the health check's verdict; on
// bad, report runs `rauc status mark-bad`).
const raucGuestScript = `#!/bin/sh
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
		mkdir -p /run/bundle && mount -o ro /dev/vdf /run/bundle || say "mount failed"
		if rauc install /run/bundle/update.raucb; then say "install ok"; else say "install failed"; fi
	fi
	if [ "$health" = bad ]; then
		if rauc status mark-bad; then say "mark-bad ok"; else say "mark-bad failed"; fi
	fi
	say "rauc status"
	rauc status --output-format=json
	echo
	# One line, written at once: other services write to the console
	# too, and a line of theirs inside the JSON would break it.
	say "status $(cpinit status --json | tr -d '\n')"
	say "report done"
	;;
esac
`

// raucUnits are the test units (qemutests.EnableDebianTestUnit).
var raucUnits = map[string]string{
	"cpinit-agent-workload.service": `[Unit]
Description=agent test: the updated system changes userdata
Before=boot-complete.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/cpinit-agent-test workload
`,
	"cpinit-agent-health.service": `[Unit]
Description=agent test: health check (agenttest.health=)
After=cpinit-agent-workload.service
Before=boot-complete.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/cpinit-agent-test health
[Install]
RequiredBy=boot-complete.target
`,
	"cpinit-agent-report.service": `[Unit]
Description=agent test: install or report, then power off
After=rauc-mark-good.service boot-complete.target cpinit-agent-workload.service
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/cpinit-agent-test report
`,
}

// raucSystemConf is dist/rauc/system.conf.example with this device's
// names: the slots by path (no udev in the test slot), bootnames a and b
// (Android misc), the test's compatible string.
func raucSystemConf(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(qt.RepoRoot(), "dist/rauc/system.conf.example"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, r := range [][2]string{
		{"compatible=cpinit-example", "compatible=cpinit-test"},
		{"device=/dev/disk/by-partlabel/system_a", "device=/dev/vda"},
		{"device=/dev/disk/by-partlabel/system_b", "device=/dev/vdb"},
		{"bootname=A", "bootname=a"},
		{"bootname=B", "bootname=b"},
	} {
		if !strings.Contains(s, r[0]) {
			t.Fatalf("dist/rauc/system.conf.example no longer has %q", r[0])
		}
		s = strings.Replace(s, r[0], r[1], 1)
	}
	return s
}

// raucSlot returns MakeDebianSlotImage's extra function for a slot whose
// system is version: dist/rauc installed by its install.sh, the system
// configuration, the keyring, begin's options, the test units.
func raucSlot(t *testing.T, version, cert string) func(root string) error {
	conf := raucSystemConf(t)
	return func(root string) error {
		if out, err := exec.Command("sh", filepath.Join(qt.RepoRoot(), "dist/rauc/install.sh"), root).CombinedOutput(); err != nil {
			t.Fatalf("dist/rauc/install.sh %s: %v\n%s", root, err, out)
		}
		files := map[string]string{
			"etc/rauc/system.conf":             conf,
			"etc/cpinit/rauc.conf":             "CPINIT_BEGIN_ARGS=\"--size 48M --reserve 8M\"\n",
			"etc/cpinit-test/version":          version + "\n",
			"usr/local/sbin/cpinit-agent-test": raucGuestScript,
		}
		cb, err := os.ReadFile(cert)
		if err != nil {
			return err
		}
		files["etc/rauc/keyring.pem"] = string(cb)
		for p, s := range files {
			full := filepath.Join(root, p)
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(full, []byte(s), 0o755); err != nil {
				return err
			}
		}
		for name, unit := range raucUnits {
			if err := qt.EnableDebianTestUnit(root, name, unit); err != nil {
				return err
			}
		}
		// The health check gates boot-complete.target, as systemctl enable
		// does from its [Install] RequiredBy=.
		req := filepath.Join(root, "etc/systemd/system/boot-complete.target.requires")
		if err := os.MkdirAll(req, 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/etc/systemd/system/cpinit-agent-health.service", filepath.Join(req, "cpinit-agent-health.service")); err != nil {
			return err
		}
		// rauc-mark-good.service replaces cpinit-commit.service
		// (docs/rauc.md): disabled, so that the commit the test sees is
		// RAUC's, through the backend.
		if err := os.Remove(filepath.Join(root, "etc/systemd/system/basic.target.wants/cpinit-commit.service")); err != nil {
			return err
		}
		// rauc-mark-good.service is enabled in multi-user.target, which the
		// test target stands in for.
		return os.Symlink("/usr/lib/systemd/system/rauc-mark-good.service",
			filepath.Join(root, "etc/systemd/system", qt.DebianTestTarget+".wants", "rauc-mark-good.service"))
	}
}

// raucDevice is the A/B device with Debian slots running RAUC, the bundle
// of the update on its own disk (/dev/vdf).
type raucDevice struct {
	*qt.ABDevice
	bundleDisk string
}

// newRAUCDevice makes the device: slot a the Debian system version 1, the
// bundle holding version 2 for slot b, signed with a fresh key whose
// certificate is both slots' keyring; slot b blank, as big as the image
// RAUC will write to it.
func newRAUCDevice(t *testing.T, seed uint64) *raucDevice {
	t.Helper()
	qt.EnsureDebianRoot(t)
	testutil.LookPath(t, "openssl")
	testutil.LookPath(t, "mksquashfs")
	d := qt.NewTestDevice(t, seed)
	dir := d.Dir
	key, cert := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
	run(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
		"-days", "3650", "-subj", "/O=cpinit test/CN=cpinit test bundle signing")
	a, err := qt.MakeDebianSlotImage(dir, "system_a", raucSlot(t, "1", cert))
	if err != nil {
		t.Fatal(err)
	}
	b, err := qt.MakeDebianSlotImage(dir, "system_b", raucSlot(t, "2", cert))
	if err != nil {
		t.Fatal(err)
	}
	d.Systems[0] = a
	fi, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	// Slot b before the update: blank, the image's size (RAUC refuses an
	// image larger than the slot).
	d.Systems[1] = filepath.Join(dir, "system_b-blank.img")
	if err := qt.MakeDisk(d.Systems[1], fi.Size()); err != nil {
		t.Fatal(err)
	}
	bundle := makeRAUCBundle(t, dir, b, key, cert)
	disk := filepath.Join(dir, "bundle.img")
	bfi, err := os.Stat(bundle)
	if err != nil {
		t.Fatal(err)
	}
	content := filepath.Join(dir, "bundle.content")
	if err := os.MkdirAll(content, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(bundle, filepath.Join(content, "update.raucb")); err != nil {
		t.Fatal(err)
	}
	if err := qt.MakeExt4(disk, bfi.Size()+bfi.Size()/8+32<<20, "bundle", content); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(content)
	os.Remove(b)
	d.Slot[0], d.Slot[1] = "rauc.slot=a", "rauc.slot=b"
	return &raucDevice{ABDevice: d, bundleDisk: disk}
}

// makeRAUCBundle makes a plain bundle of image for slot class rootfs with
// the rauc of the Debian tree (its own loader and libraries: the host need
// not have rauc), mksquashfs from the host, uncompressed (the bundle is
// read once, from a local disk).
func makeRAUCBundle(t *testing.T, dir, image, key, cert string) string {
	t.Helper()
	in := filepath.Join(dir, "bundle.in")
	if err := os.MkdirAll(in, 0o755); err != nil {
		t.Fatal(err)
	}
	manifest := "[update]\ncompatible=cpinit-test\nversion=2\n\n[bundle]\nformat=plain\n\n[image.rootfs]\nfilename=rootfs.ext4\n"
	if err := os.WriteFile(filepath.Join(in, "manifest.raucm"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(image, filepath.Join(in, "rootfs.ext4")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "update.raucb")
	root := qt.EnsureDebianRoot(t)
	run(t, filepath.Join(root, "lib64/ld-linux-x86-64.so.2"), "--library-path", filepath.Join(root, "usr/lib/x86_64-linux-gnu"),
		filepath.Join(root, "usr/bin/rauc"), "bundle", "--cert="+cert, "--key="+key,
		"--mksquashfs-args=-noI -noD -noF -noX", in, out)
	os.RemoveAll(in)
	return out
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// boot picks the slot as the bootloader does and boots it with the bundle
// disk and extra kernel parameters; it returns the VM and the slot.
func (d *raucDevice) boot(t *testing.T, extra string) (*qt.VM, int) {
	t.Helper()
	slot, err := d.SelectSlot()
	if err != nil {
		t.Fatal(err)
	}
	o := d.Options(slot, extra)
	o.Disks = append(o.Disks, d.bundleDisk)
	o.MemoryMB = 1024
	return qt.StartT(t, o), slot
}

// agentStatus is what the tests read of `cpinit status --json`.
type agentStatus struct {
	State      string `json:"state"`
	Reason     string `json:"reason"`
	TargetSlot string `json:"target_slot"`
	BootedSlot string `json:"booted_slot"`
}

// report waits for the report unit's `cpinit status --json` and the end of
// the boot.
func report(t *testing.T, vm *qt.VM) agentStatus {
	t.Helper()
	m := vm.ExpectT(t, `agent-test: status (\{.*\})\r?\n`, qt.SlotBootTimeout)
	var st agentStatus
	if err := json.Unmarshal([]byte(m[1]), &st); err != nil {
		t.Fatalf("cpinit status --json: %v: %s", err, m[1])
	}
	vm.ExpectT(t, `agent-test: report done`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	return st
}

// install boots slot a, whose report unit runs `rauc install`: RAUC marks
// b bad, writes it, makes it primary through cpinit's backend, which
// arms the checkpoint.
func (d *raucDevice) install(t *testing.T) {
	t.Helper()
	vm, slot := d.boot(t, "agenttest.action=install agenttest.health=ok")
	if slot != 0 {
		t.Fatalf("the bootloader picked slot %d before the update, want a", slot)
	}
	vm.ExpectT(t, `agent-test: slot version 1 action install`, qt.SlotBootTimeout)
	vm.ExpectT(t, `checkpoint armed: COW /\.cpinit/cow, 48 MiB in \d+ extents, chunk 4 KiB, target slot "_b" \(android counter\)`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: install ok`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "checkpointing" || st.TargetSlot != "_b" {
		t.Fatalf("after rauc install: cpinit status %+v, want armed for _b", st)
	}
	r := qt.WantRecord(t, d.ABDevice, bootstate.StateCheckpointing)
	if r.Active {
		t.Fatal("armed checkpoint already active before the update booted")
	}
}

// trial boots the update's slot b with the health check's verdict and
// returns the VM after the workload ran.
func (d *raucDevice) trial(t *testing.T, health string) *qt.VM {
	t.Helper()
	vm, slot := d.boot(t, "agenttest.action=trial agenttest.health="+health)
	if slot != 1 {
		t.Fatalf("the bootloader picked slot %d after rauc install, want b", slot)
	}
	vm.ExpectT(t, `cpinit: state=checkpointing/active userdata=/dev/vdc mounted=/newroot/data via=/dev/mapper/cp-origin action=create-snapshot`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: workload done`, qt.SlotBootTimeout)
	return vm
}

// TestRAUCUpdateCommits: rauc install on slot a arms the checkpoint; in
// b's trial the system changes userdata, the health check passes, RAUC's
// mark-good (rauc-mark-good.service) commits through the backend: misc
// marks b successful, the COW file is gone, userdata keeps exactly the
// update's changes.
func TestRAUCUpdateCommits(t *testing.T) {
	qt.NeedDebianSlots(t, false)
	d := newRAUCDevice(t, 1901)
	d.install(t)
	vm := d.trial(t, "ok")
	vm.ExpectT(t, `committed: the update's data is kept`, qt.SlotBootTimeout)
	vm.ExpectT(t, `rauc status: marked slot rootfs.1 as good`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: slot version 2 action trial`, qt.SlotBootTimeout)
	// The commit drops the snapshot and deletes the COW file online:
	// nothing is left for the next boot.
	if st := report(t, vm); st.State != "fresh" || st.Reason != "cleaned" {
		t.Fatalf("after mark-good: cpinit status %+v, want fresh, cleaned", st)
	}
	qt.WantRecord(t, d.ABDevice, bootstate.StateFresh)
	if ok, err := d.COWFileExists(); err != nil || ok {
		t.Fatalf("COW file after the commit: exists=%v %v", ok, err)
	}
	bc, err := d.ReadMisc()
	if err != nil {
		t.Fatal(err)
	}
	if b := bc.Slots[1]; !b.SuccessfulBoot || b.Priority == 0 {
		t.Fatalf("misc slot b after mark-good: %+v, want successful", b)
	}
	if got := bc.BootloaderSelect(); got != 1 {
		t.Fatalf("the bootloader would boot slot %d after the commit, want b", got)
	}
	m := qt.UserdataManifestT(t, d.ABDevice)
	if _, ok := m["update-new.bin"]; !ok {
		t.Fatalf("the update's new file is missing after the commit: %v", keys(m))
	}
	if _, ok := m["d3/f003.bin"]; ok {
		t.Fatal("the file the update deleted is back after the commit")
	}
}

// TestRAUCUpdateRollsBack: the same update, but the health check fails in
// b's trial: boot-complete.target fails, so RAUC's mark-good does not run;
// the system runs `rauc status mark-bad`, which rolls back through the
// backend; the next boot is slot a, PID 1 restores userdata, which is then
// exactly as before the update.
func TestRAUCUpdateRollsBack(t *testing.T) {
	qt.NeedDebianSlots(t, true)
	d := newRAUCDevice(t, 1902)
	d.install(t)
	// The checkpoint is userdata as the update's first boot finds it.
	before := qt.UserdataManifestT(t, d.ABDevice)
	vm := d.trial(t, "bad")
	vm.ExpectT(t, `rauc-mark-good.service: Job rauc-mark-good.service/start failed with result 'dependency'`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: slot version 2 action trial`, qt.SlotBootTimeout)
	vm.ExpectT(t, `rollback scheduled`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: mark-bad ok`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "rollback-pending" {
		t.Fatalf("after mark-bad: cpinit status %+v, want rollback-pending", st)
	}
	vm, slot := d.boot(t, "agenttest.action=check agenttest.health=ok")
	if slot != 0 {
		t.Fatalf("the bootloader picked slot %d after mark-bad, want a", slot)
	}
	vm.ExpectT(t, `cpinit: merging the checkpoint back into userdata \(abort\)`, qt.SlotBootTimeout)
	vm.ExpectT(t, `cpinit: restore: \d+ chunks \([0-9.]+ MiB\) copied home`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: slot version 1 action check`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "fresh" {
		t.Fatalf("after the rollback: cpinit status %+v, want fresh", st)
	}
	after := qt.UserdataManifestT(t, d.ABDevice)
	if diff := before.Diff(after, 20); len(diff) != 0 {
		t.Fatalf("userdata after the rollback differs from before the update:\n%s", strings.Join(diff, "\n"))
	}
}

func keys(m qt.Manifest) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
