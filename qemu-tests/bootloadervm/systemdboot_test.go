package bootloadervm

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The real systemd-boot (Debian's systemd-boot-efi) booted by OVMF, counting
// boots by renaming its entries on the ESP (Automatic Boot Assessment);
// cpinit renames them too (cpinit.bootloader=systemd-boot). Every slot is
// systemd-boot's pick.

// sdbootEFI is systemd-boot's EFI program in Debian bookworm.
const sdbootEFI = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// sdbootOptions is every entry's kernel command line before the slot's
// part. The ESP is /dev/vda, the systems vdb and
// vdc, userdata vdd, the metadata store vde.
const sdbootOptions = qt.KernelConsoleArgs + " cpinit.userdata=LABEL=userdata cpinit.metadata=/dev/vde" +
	" cpinit.bootloader=systemd-boot cpinit.bootpart=/dev/vda cpinit.on_fatal=reboot"

type sdbootDevice struct {
	*qt.ABDevice
	ESP, Vars string
}

func newSdbootDevice(t *testing.T, seed uint64) *sdbootDevice {
	t.Helper()
	d := qt.NewTestDevice(t, seed)
	for _, tool := range []string{"mkfs.vfat", "mcopy", "mmd", "mdir"} {
		testutil.LookPath(t, tool)
	}
	if _, err := os.Stat(sdbootEFI); err != nil {
		t.Fatalf("systemd-boot (Debian package systemd-boot-efi): %v", err)
	}
	files := map[string]string{
		"/EFI/BOOT/BOOTX64.EFI": sdbootEFI,
		"/vmlinuz":              d.Kernel.Vmlinuz,
		"/initrd.img":           d.Initrd,
	}
	// Slot a installed and blessed; slot b's entry at 0 tries (nothing
	// installed yet), the name cpinit's begin renames.
	for name, body := range map[string]string{
		"/loader/loader.conf":               "timeout 0\n",
		"/loader/entries/cpinit-1-a.conf":   sdbootEntry("a", ""),
		"/loader/entries/cpinit-0-b+0.conf": sdbootEntry("b", ""),
	} {
		p := filepath.Join(d.Dir, strings.ReplaceAll(strings.TrimPrefix(name, "/"), "/", "_"))
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		files[name] = p
	}
	g := &sdbootDevice{ABDevice: d, ESP: filepath.Join(d.Dir, "esp.img")}
	if err := qt.MakeFAT(g.ESP, 96<<20, files); err != nil {
		t.Fatal(err)
	}
	var err error
	if g.Vars, err = qt.NewOVMFVars(d.Dir); err != nil {
		t.Fatal(err)
	}
	return g
}

func sdbootEntry(slot, sysinit string) string {
	return fmt.Sprintf("title Slot %s\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s cpinit.slot=%s cpinit.root=LABEL=system_%s %s\n",
		slot, sdbootOptions, slot, slot, sysinit)
}

// entries lists loader/entries as the ESP holds them.
func (g *sdbootDevice) entries(t *testing.T) []string {
	t.Helper()
	names, err := qt.FATList(g.ESP, "/loader/entries")
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func (g *sdbootDevice) wantEntries(t *testing.T, when string, want ...string) {
	t.Helper()
	if got := g.entries(t); !slices.Equal(got, want) {
		t.Fatalf("loader/entries %s: %q, want %q", when, got, want)
	}
}

// boot gives both entries the system's parameters for the next boot
// (rewriting their contents, never their names: those are systemd-boot's
// and cpinit's) and starts the machine.
func (g *sdbootDevice) boot(t *testing.T, sysinit string) *qt.VM {
	t.Helper()
	for _, name := range g.entries(t) {
		slot := strings.TrimSuffix(strings.SplitN(name, "+", 2)[0], ".conf")
		slot = slot[len(slot)-1:]
		if err := qt.FATWrite(g.ESP, "/loader/entries/"+name, []byte(sdbootEntry(slot, sysinit))); err != nil {
			t.Fatal(err)
		}
	}
	return qt.StartT(t, qt.Options{Firmware: g.Vars, Disks: []string{g.ESP, g.Systems[0], g.Systems[1], g.Userdata, g.Metadata}})
}

func sdbootSlot(t *testing.T, vm *qt.VM, slot string) {
	t.Helper()
	vm.ExpectT(t, `cpinit: booted slot "`+slot+`"; systemd-boot entries`, qt.SlotBootTimeout)
}

func sdbootBegin(t *testing.T, g *sdbootDevice) {
	t.Helper()
	vm := g.boot(t, "sysinit.action=ota sysinit.cowsize=64M")
	sdbootSlot(t, vm, "a")
	vm.ExpectT(t, `checkpoint armed: COW /.cpinit/cow, \d+ MiB in \d+ extents, chunk 4 KiB, target slot "_b" \(bootloader counter\)`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: ota begin ok`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	g.wantEntries(t, "after begin", "cpinit-1-a.conf", "cpinit-2-b+3.conf")
}

// TestSystemdBootUpdateCommits: systemd-boot boots the update's entry on
// trial (renaming +3 to +2-1), the system commits (cpinit blesses the entry
// as systemd-bless-boot would), and systemd-boot keeps booting it.
func TestSystemdBootUpdateCommits(t *testing.T) {
	g := newSdbootDevice(t, 31)
	sdbootBegin(t, g)

	vm := g.boot(t, "sysinit.action=workload sysinit.seed=1 sysinit.mib=8 sysinit.then=commit")
	sdbootSlot(t, vm, "b")
	vm.ExpectT(t, `cpinit: first boot of slot "_b": creating the checkpoint`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: commit ok`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	g.wantEntries(t, "after the commit", "cpinit-1-a.conf", "cpinit-2-b.conf")

	vm = g.boot(t, "sysinit.action=report")
	sdbootSlot(t, vm, "b")
	vm.ExpectT(t, `sysinit: hello.txt="written by the update"`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if r := qt.WantRecord(t, g.ABDevice, bootstate.StateFresh); r.COWPath != "" {
		t.Fatalf("record after the commit's cleanup: %+v", r)
	}
}

// TestSystemdBootUpdateCrashFallsBack: the update crashes at every boot;
// systemd-boot counts its tries down by renaming (+2-1, +1-2, +0-3), then
// sorts the bad entry last and boots slot a; cpinit rolls userdata back to
// the checkpoint (exact manifest).
func TestSystemdBootUpdateCrashFallsBack(t *testing.T) {
	g := newSdbootDevice(t, 32)
	before := qt.UserdataManifestT(t, g.ABDevice)
	sdbootBegin(t, g)

	for n := 1; n <= 3; n++ {
		vm := g.boot(t, "sysinit.action=workload sysinit.seed=2 sysinit.mib=4 sysinit.then=crash")
		sdbootSlot(t, vm, "b")
		vm.ExpectT(t, `sysinit: crashing`, qt.SlotBootTimeout)
		vm.ExpectT(t, `Kernel panic`, qt.SlotBootTimeout)
		vm.Wait(qt.SlotBootTimeout)
		g.wantEntries(t, fmt.Sprintf("after crash %d", n), "cpinit-1-a.conf", fmt.Sprintf("cpinit-2-b+%d-%d.conf", 3-n, n))
	}

	vm := g.boot(t, "sysinit.action=report")
	sdbootSlot(t, vm, "a")
	vm.ExpectT(t, `cpinit: rolling back userdata \(slot-fallback, booted "a", target "_b"\)`, qt.SlotBootTimeout)
	vm.ExpectT(t, `cpinit: (merge|restore): 0\.0 MiB left of \d+\.\d MiB`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, qt.SlotBootTimeout)
	wantStatusFellBack(t, vm, `systemd-boot entries loader/entries on /dev/vda`)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	qt.WantRecord(t, g.ABDevice, bootstate.StateFresh)
	if diff := qt.UserdataManifestT(t, g.ABDevice).Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after the rollback differs from the checkpoint:\n%s", strings.Join(diff, "\n"))
	}
	if e := g.entries(t); len(e) != 2 || e[0] != "cpinit-1-a.conf" || !strings.HasPrefix(e[1], "cpinit-2-b+0") {
		t.Fatalf("loader/entries after the rollback: %q, want slot b still bad", e)
	}
}

// TestSystemdBootRollbackCommand: `cpinit rollback` from the update's system
// marks its entry bad (+0, as systemd-bless-boot bad does); systemd-boot
// boots slot a, whose boot merges: userdata is the checkpoint.
func TestSystemdBootRollbackCommand(t *testing.T) {
	g := newSdbootDevice(t, 33)
	before := qt.UserdataManifestT(t, g.ABDevice)
	sdbootBegin(t, g)

	vm := g.boot(t, "sysinit.action=workload sysinit.seed=3 sysinit.mib=4 sysinit.then=rollback")
	sdbootSlot(t, vm, "b")
	vm.ExpectT(t, `sysinit: rollback ok`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if e := g.entries(t); len(e) != 2 || !strings.HasPrefix(e[1], "cpinit-2-b+0") {
		t.Fatalf("loader/entries after cpinit rollback: %q, want slot b bad", e)
	}

	vm = g.boot(t, "sysinit.action=report")
	sdbootSlot(t, vm, "a")
	vm.ExpectT(t, `cpinit: (merge|restore): 0\.0 MiB left of \d+\.\d MiB`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	qt.WantRecord(t, g.ABDevice, bootstate.StateFresh)
	if diff := qt.UserdataManifestT(t, g.ABDevice).Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after the rollback differs from the checkpoint:\n%s", strings.Join(diff, "\n"))
	}
}
