package qemutests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

// `cpinit check` (issue 20, point 4) on the running system of the test
// device: once on a supported setup, where every check passes, and once on
// an unsupported one, where the checks that should fail do. One boot each.

// checkReport is `cpinit check --json` (cmds/cpinit CheckReport).
type checkReport struct {
	OK     bool `json:"ok"`
	Checks []struct {
		Name   string `json:"name"`
		Status string `json:"status"`
		OK     bool   `json:"ok"`
		Detail string `json:"detail"`
		Fix    string `json:"fix"`
	} `json:"checks"`
}

// checkJSON cuts the report `cpinit check --json` printed out of the
// console: from the first line that is "{" to the next that is "}".
func checkJSON(t *testing.T, console string) (checkReport, map[string]string, map[string]string) {
	t.Helper()
	console = strings.ReplaceAll(console, "\r\n", "\n")
	m := regexp.MustCompile(`(?ms)^\{\n.*?^\}\n`).FindString(console)
	var r checkReport
	if err := json.Unmarshal([]byte(m), &r); err != nil {
		t.Fatalf("cpinit check --json: %v in %q", err, m)
	}
	status, detail := map[string]string{}, map[string]string{}
	for _, c := range r.Checks {
		status[c.Name], detail[c.Name] = c.Status, c.Detail+" fix: "+c.Fix
		t.Logf("%s %s: %s (fix: %s)", c.Status, c.Name, c.Detail, c.Fix)
	}
	return r, status, detail
}

// withDMModules puts the kernel's device-mapper modules (dm-mod, dm-bufio,
// dm-snapshot) into both system images under /lib/modules/<release>, as a
// system built with its kernel's modules has them. The test slots have none
// otherwise, and a boot that maps nothing does not load them (cpinit loads
// device-mapper from the initramfs only when a checkpoint needs it).
func withDMModules(t *testing.T, d *ABDevice) {
	t.Helper()
	testutil.LookPath(t, "debugfs")
	rel := "lib/modules/" + d.Kernel.Release + "/kernel/drivers/md"
	var cmds []string
	dir := ""
	for _, part := range strings.Split(rel, "/") {
		dir = filepath.Join(dir, part)
		cmds = append(cmds, "mkdir /"+dir)
	}
	for _, m := range []string{"dm-mod.ko", "dm-bufio.ko", "dm-snapshot.ko"} {
		src := filepath.Join(d.Kernel.Modules, "kernel/drivers/md", m)
		if _, err := os.Stat(src); err != nil {
			t.Fatalf("kernel module %s: %v", m, err)
		}
		cmds = append(cmds, "write "+src+" /"+rel+"/"+m)
	}
	script := filepath.Join(d.Dir, "dmmodules.debugfs")
	if err := os.WriteFile(script, []byte(strings.Join(cmds, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, img := range d.Systems {
		if out, err := exec.Command("debugfs", "-w", "-f", script, img).CombinedOutput(); err != nil {
			t.Fatalf("debugfs -w %s: %v\n%s", img, err, out)
		}
	}
}

// TestCheckSupported: the test device, its system carrying the kernel's
// device-mapper modules: every check passes and check exits 0.
func TestCheckSupported(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 71)
	withDMModules(t, d)
	bothSlots(d, "sysinit.action=cmd sysinit.args=check,--json")
	vm, _ := d.Boot(t, "")
	vm.ExpectT(t, `sysinit: cmd exit=<nil>`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	r, status, detail := checkJSON(t, vm.Output())
	if !r.OK {
		t.Error("check: ok false")
	}
	for _, name := range []string{"params", "devices", "device-mapper", "userdata-fs", "cow-size", "metadata", "bootloader", "slot", "checkpoint"} {
		if status[name] != "PASS" {
			t.Errorf("%s: %s, want PASS: %s", name, status[name], detail[name])
		}
	}
	for name, want := range map[string]string{
		"device-mapper": "dm-snapshot (/lib/modules/" + d.Kernel.Release + "/kernel/drivers/md/dm-snapshot.ko)",
		"userdata-fs":   "ext4 on /dev/vdc at /data",
		"metadata":      "/dev/vdd",
		"bootloader":    "android misc /dev/vde",
		"slot":          "running slot _a",
	} {
		if !strings.Contains(detail[name], want) {
			t.Errorf("%s: %q does not say %q", name, detail[name], want)
		}
	}
}

// TestCheckUnsupported: no device-mapper modules on the system (and none
// loaded), userdata on vfat (mounted by cpinit, cpinit.fstype=vfat), and
// `check --metadata` naming a disk that holds an ext4 filesystem: those
// three fail with what they found, the COW size is not judged, and check
// exits 1.
func TestCheckUnsupported(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 72)
	testutil.LookPath(t, "mkfs.vfat")
	if err := os.Remove(d.Userdata); err != nil {
		t.Fatal(err)
	}
	if err := MakeDisk(d.Userdata, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.vfat", d.Userdata).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.vfat: %v\n%s", err, out)
	}
	foreign := filepath.Join(d.Dir, "foreign.img")
	if err := MakeExt4(foreign, 16<<20, "notmeta", ""); err != nil {
		t.Fatal(err)
	}
	bothSlots(d, "sysinit.action=cmd sysinit.args=check,--json,--metadata=/dev/vdf")
	slot, err := d.SelectSlot()
	if err != nil {
		t.Fatal(err)
	}
	o := d.Options(slot, "cpinit.userdata=/dev/vdc cpinit.fstype=vfat")
	o.Disks = append(o.Disks, foreign)
	vm := StartT(t, o)
	vm.ExpectT(t, `sysinit: cmd exit=exit status 1`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	r, status, detail := checkJSON(t, vm.Output())
	if r.OK {
		t.Error("check: ok true")
	}
	for name, want := range map[string]struct{ status, detail string }{
		"params":        {"PASS", ""},
		"devices":       {"PASS", "metadata /dev/vdf"},
		"device-mapper": {"FAIL", "the kernel lacks dm-snapshot"},
		"userdata-fs":   {"FAIL", "/data is vfat"},
		"cow-size":      {"SKIP", ""},
		"metadata":      {"FAIL", `/dev/vdf is not blank and not a cpinit store: wrong device? It holds an ext2/3/4 filesystem labelled "notmeta"`},
		"bootloader":    {"PASS", ""},
		"checkpoint":    {"SKIP", ""},
	} {
		if status[name] != want.status || !strings.Contains(detail[name], want.detail) {
			t.Errorf("%s: %s %q, want %s saying %q", name, status[name], detail[name], want.status, want.detail)
		}
	}
}
