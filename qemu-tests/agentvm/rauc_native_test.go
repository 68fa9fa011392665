package agentvm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The RAUC tests with RAUC's own U-Boot backend (docs/rauc.md, "Keeping
// RAUC's bootloader backend"): rauc writes BOOT_ORDER and BOOT_x_LEFT
// itself with fw_setenv, cpinit's pre-install handler arms the checkpoint,
// cpinit-commit.service commits, and a mark-bad is the bootloader's
// fallback, which PID 1 rolls back. The device is envDevice with RAUC's
// variables (scheme uboot-rauc), the host playing RAUC's U-Boot script
// (contrib/uboot.sh, proven with the real U-Boot in qemu-tests/bootloadervm)
// and passing rauc.slot=A or B as the script does.

// raucNativeConf is system.conf.native-example with this device's slots.
func raucNativeConf(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(qt.RepoRoot(), "dist/rauc/system.conf.native-example"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, r := range [][2]string{
		{"compatible=cpinit-example", "compatible=cpinit-test"},
		{"device=/dev/disk/by-partlabel/system_a", "device=/dev/vda2"},
		{"device=/dev/disk/by-partlabel/system_b", "device=/dev/vda3"},
	} {
		if !strings.Contains(s, r[0]) {
			t.Fatalf("dist/rauc/system.conf.native-example no longer has %q", r[0])
		}
		s = strings.Replace(s, r[0], r[1], 1)
	}
	return s
}

// raucNativeSlot is raucSlot for RAUC's U-Boot backend: the native
// configuration, fw_env.config; cpinit-commit.service stays enabled, as
// the native variant needs it; rauc-mark-good.service runs too.
func raucNativeSlot(t *testing.T, version, cert string) func(root string) error {
	conf := raucNativeConf(t)
	return func(root string) error {
		run(t, "sh", filepath.Join(qt.RepoRoot(), "dist/rauc/install.sh"), root)
		cb, err := os.ReadFile(cert)
		if err != nil {
			return err
		}
		script := strings.Replace(raucGuestScript, "/dev/vdf", "/dev/vde", 1)
		files := map[string]string{
			"etc/rauc/system.conf":             conf,
			"etc/rauc/keyring.pem":             string(cb),
			"etc/fw_env.config":                FWEnvConfig,
			"etc/cpinit/rauc.conf":             "CPINIT_BEGIN_ARGS=\"--size 48M --reserve 8M\"\n",
			"etc/cpinit-test/version":          version + "\n",
			"usr/local/sbin/cpinit-agent-test": script,
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
				"After=rauc-mark-good.service", "After=rauc-mark-good.service cpinit-commit.service", 1),
		}
		for name, unit := range units {
			if err := qt.EnableDebianTestUnit(root, name, unit); err != nil {
				return err
			}
		}
		if err := gateHealth(root); err != nil {
			return err
		}
		return os.Symlink("/usr/lib/systemd/system/rauc-mark-good.service",
			filepath.Join(root, "etc/systemd/system", qt.DebianTestTarget+".wants", "rauc-mark-good.service"))
	}
}

// raucEnvVars: RAUC's U-Boot variables for a device running A, B
// bootable (docs/bootloader-uboot.md).
const raucEnvVars = "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n"

func newRAUCNativeDevice(t *testing.T, seed uint64) *envDevice {
	t.Helper()
	qt.EnsureDebianRoot(t)
	dir := t.TempDir()
	key, cert := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
	run(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
		"-days", "3650", "-subj", "/O=cpinit test/CN=cpinit test bundle signing")
	a, err := qt.MakeDebianSlotImage(dir, "system_a", raucNativeSlot(t, "1", cert))
	if err != nil {
		t.Fatal(err)
	}
	b, err := qt.MakeDebianSlotImage(dir, "system_b", raucNativeSlot(t, "2", cert))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	bundle := makeRAUCBundle(t, dir, b, key, cert)
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	e := newEnvDevice(t, seed, bootstate.UBootSchemeRAUC, a, fi.Size(), raucEnvVars, map[string]string{"update.raucb": bundle})
	e.Slot[0], e.Slot[1] = "rauc.slot=A", "rauc.slot=B"
	return e
}

// raucNativeInstall boots A, whose rauc install runs the pre-install
// handler (armed), writes partition 3 and makes B primary itself.
func raucNativeInstall(t *testing.T, e *envDevice) {
	t.Helper()
	vm, slot := e.boot(t, "agenttest.action=install agenttest.health=ok")
	if slot != 0 {
		t.Fatalf("U-Boot picked slot %d before the update, want a", slot)
	}
	vm.ExpectT(t, `checkpoint armed: COW /\.cpinit/cow, 48 MiB in \d+ extents, chunk 4 KiB, target slot "_b" \(bootloader counter\); slot _b stays as it is`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: install ok`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "checkpointing" || st.TargetSlot != "_b" {
		t.Fatalf("after rauc install: cpinit status %+v, want armed for _b", st)
	}
	if v, _ := e.state(t).Env().Get("BOOT_ORDER"); v != "B A" {
		t.Fatalf("after rauc install: BOOT_ORDER=%q, want B A (RAUC made B primary)", v)
	}
}

// TestRAUCNativeBackendCommits: with RAUC's U-Boot backend, the trial's
// health check passes; cpinit-commit.service commits and RAUC's
// mark-good marks B good.
func TestRAUCNativeBackendCommits(t *testing.T) {
	qt.NeedDebianSlots(t, false)
	e := newRAUCNativeDevice(t, 1907)
	raucNativeInstall(t, e)
	vm, slot := e.boot(t, "agenttest.action=trial agenttest.health=ok")
	if slot != 1 {
		t.Fatalf("U-Boot picked slot %d after rauc install, want b", slot)
	}
	vm.ExpectT(t, `action=create-snapshot`, qt.SlotBootTimeout)
	vm.ExpectT(t, `committed: the update's data is kept`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "fresh" || st.Reason != "cleaned" {
		t.Fatalf("after the commit: cpinit status %+v, want fresh, cleaned", st)
	}
	m := qt.UserdataManifestT(t, e.ABDevice)
	if _, ok := m["update-new.bin"]; !ok {
		t.Fatal("the update's new file is missing after the commit")
	}
	if next := e.state(t).Next(); next != "b" {
		t.Fatalf("U-Boot would boot %q after the commit, want b", next)
	}
}

// TestRAUCNativeBackendRollsBack: the health check fails; the system runs
// `rauc status mark-bad`, which RAUC's backend writes to U-Boot (B out of
// the boot order) without cpinit; U-Boot boots A, and PID 1 sees the
// fallback and restores userdata exactly.
func TestRAUCNativeBackendRollsBack(t *testing.T) {
	qt.NeedDebianSlots(t, false)
	e := newRAUCNativeDevice(t, 1908)
	raucNativeInstall(t, e)
	before := qt.UserdataManifestT(t, e.ABDevice)
	vm, slot := e.boot(t, "agenttest.action=trial agenttest.health=bad")
	if slot != 1 {
		t.Fatalf("U-Boot picked slot %d after rauc install, want b", slot)
	}
	vm.ExpectT(t, `agent-test: workload done`, qt.SlotBootTimeout)
	vm.ExpectT(t, `agent-test: mark-bad ok`, qt.SlotBootTimeout)
	if st := report(t, vm); st.State != "checkpointing" {
		t.Fatalf("after rauc mark-bad: cpinit status %+v, want the trial still recorded (RAUC told only U-Boot)", st)
	}
	vm, slot = e.boot(t, "cpinit.init=/cpinit-test-no-init")
	if slot != 0 {
		t.Fatalf("U-Boot picked slot %d after mark-bad, want a", slot)
	}
	vm.ExpectT(t, `cpinit: rolling back userdata \(slot-fallback, booted "_a", target "_b"\)`, qt.SlotBootTimeout)
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
