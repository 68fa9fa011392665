package bootloadervm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The real GRUB (grub-efi-amd64-bin's x86_64-efi modules, made into one
// EFI program by grub-mkstandalone) booted by the real UEFI firmware (OVMF)
// under RAUC's GRUB scheme: its grub.cfg is RAUC's contrib/grub.conf (the
// slot choice, the reset rule, save_env), reading and writing the grubenv
// on the ESP that cpinit changes (cpinit.bootloader=grub-rauc). No boot in
// these tests is chosen by the harness: GRUB picks every slot.

// grubCfg is RAUC's contrib/grub.conf with the paths of this device: the
// grubenv, kernel and initramfs on the ESP (a whole-disk FAT, /dev/vda in
// Linux), the per-boot parameters of the test's system (sysinit.*) from
// test.cfg on the ESP, which only the harness writes. Each entry passes
// cpinit.slot=, from which cpinit knows which slot booted.
const grubCfg = `set timeout=0
search --no-floppy --set=envdev --file /grub/grubenv
export envdev
set default=0
set ORDER="A B"
set A_OK=0
set B_OK=0
set A_TRY=0
set B_TRY=0
load_env -f ($envdev)/grub/grubenv
for SLOT in $ORDER; do
    if [ "$SLOT" == "A" ]; then
        INDEX=1
        OK=$A_OK
        TRY=$A_TRY
        A_TRY=1
    fi
    if [ "$SLOT" == "B" ]; then
        INDEX=2
        OK=$B_OK
        TRY=$B_TRY
        B_TRY=1
    fi
    if [ "$OK" -eq 1 -a "$TRY" -eq 0 ]; then
        default=$INDEX
        break
    fi
done
if [ "$default" -eq 0 ]; then
    if [ "$A_OK" -eq 1 -a "$A_TRY" -eq 1 ]; then
        A_TRY=0
    fi
    if [ "$B_OK" -eq 1 -a "$B_TRY" -eq 1 ]; then
        B_TRY=0
    fi
fi
save_env -f ($envdev)/grub/grubenv A_TRY A_OK B_TRY B_OK ORDER
source ($envdev)/test.cfg
export extra
echo "grub: boots entry $default"
menuentry "Rescue" {
    echo "grub: rescue entry: no slot to boot"
    halt
}
menuentry "Slot A" {
    linux ($envdev)/vmlinuz COMMON cpinit.slot=a cpinit.root=LABEL=system_a $extra
    initrd ($envdev)/initrd.img
}
menuentry "Slot B" {
    linux ($envdev)/vmlinuz COMMON cpinit.slot=b cpinit.root=LABEL=system_b $extra
    initrd ($envdev)/initrd.img
}
`

// grubCommon is every entry's kernel command line before the slot's part.
// The ESP is /dev/vda, the systems vdb and vdc, userdata vdd, the metadata
// store vde.
const grubCommon = qt.KernelConsoleArgs + " cpinit.userdata=LABEL=userdata cpinit.metadata=/dev/vde" +
	" cpinit.bootloader=grub-rauc cpinit.bootpart=/dev/vda cpinit.on_fatal=reboot"

// grubDevice is a qt.ABDevice (its systems, userdata and metadata images)
// booted through OVMF and GRUB from an ESP instead of by the harness.
type grubDevice struct {
	*qt.ABDevice
	ESP, Vars string
}

func newGrubDevice(t *testing.T, seed uint64) *grubDevice {
	t.Helper()
	d := qt.NewTestDevice(t, seed)
	mkstandalone := testutil.LookPath(t, "grub-mkstandalone")
	editenv := testutil.LookPath(t, "grub-editenv")
	for _, tool := range []string{"mkfs.vfat", "mcopy", "mmd", "mdir"} {
		testutil.LookPath(t, tool)
	}
	if _, err := os.Stat("/usr/lib/grub/x86_64-efi/linux.mod"); err != nil {
		t.Fatalf("GRUB's x86_64-efi modules (Debian package grub-efi-amd64-bin): %v", err)
	}
	cfg := filepath.Join(d.Dir, "grub.cfg")
	if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(grubCfg, "COMMON", grubCommon)), 0o644); err != nil {
		t.Fatal(err)
	}
	efi := filepath.Join(d.Dir, "BOOTX64.EFI")
	if out, err := exec.Command(mkstandalone, "-O", "x86_64-efi", "-o", efi,
		"--modules=fat part_gpt part_msdos loadenv test echo normal linux search search_fs_file configfile halt",
		"--locales=", "--fonts=", "--themes=", "boot/grub/grub.cfg="+cfg).CombinedOutput(); err != nil {
		t.Fatalf("grub-mkstandalone: %v\n%s", err, out)
	}
	// RAUC's initial variables for a device running slot A with nothing in
	// B yet (docs/bootloader-grub.md), made by the real grub-editenv.
	env := filepath.Join(d.Dir, "grubenv")
	for _, args := range [][]string{{env, "create"}, {env, "set", "ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0"}} {
		if out, err := exec.Command(editenv, args...).CombinedOutput(); err != nil {
			t.Fatalf("grub-editenv %q: %v\n%s", args, err, out)
		}
	}
	testCfg := filepath.Join(d.Dir, "test.cfg")
	if err := os.WriteFile(testCfg, []byte("set extra=\"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := &grubDevice{ABDevice: d, ESP: filepath.Join(d.Dir, "esp.img")}
	if err := qt.MakeFAT(g.ESP, 96<<20, map[string]string{
		"/EFI/BOOT/BOOTX64.EFI": efi,
		"/grub/grubenv":         env,
		"/vmlinuz":              d.Kernel.Vmlinuz,
		"/initrd.img":           d.Initrd,
		"/test.cfg":             testCfg,
	}); err != nil {
		t.Fatal(err)
	}
	var err error
	if g.Vars, err = qt.NewOVMFVars(d.Dir); err != nil {
		t.Fatal(err)
	}
	return g
}

// boot sets the system's parameters for the next boot (sysinit.*) and
// starts the machine; GRUB picks the slot.
func (g *grubDevice) boot(t *testing.T, sysinit string) *qt.VM {
	t.Helper()
	if err := qt.FATWrite(g.ESP, "/test.cfg", []byte(fmt.Sprintf("set extra=\"%s\"\n", sysinit))); err != nil {
		t.Fatal(err)
	}
	return qt.StartT(t, qt.Options{Firmware: g.Vars, Disks: []string{g.ESP, g.Systems[0], g.Systems[1], g.Userdata, g.Metadata}})
}

// env is the grubenv as the real grub-editenv lists it.
func (g *grubDevice) env(t *testing.T) map[string]string {
	t.Helper()
	b, err := qt.FATRead(g.ESP, "/grub/grubenv")
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "grubenv")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("grub-editenv", f, "list").CombinedOutput()
	if err != nil {
		t.Fatalf("grub-editenv list: %v\n%s", err, out)
	}
	return listedVars(out)
}

func (g *grubDevice) wantEnv(t *testing.T, when string, want map[string]string) {
	t.Helper()
	wantVars(t, "grubenv "+when, g.env(t), want)
}

// listedVars parses the name=value lines that grub-editenv list and
// fw_printenv print.
func listedVars(out []byte) map[string]string {
	vars := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(l, "=")
		vars[k] = v
	}
	return vars
}

// wantVars fails t unless got holds every name=value of want; what names
// the variables and when they were read.
func wantVars(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%s: %s=%q, want %q (all: %v)", what, k, got[k], v, got)
		}
	}
}

// wantStatusFellBack waits for the system's `cpinit status` (sysinit runs
// it at the end of every boot) to show the bootloader's view after a
// rollback: where its state is (matching where), slot a next, slot b not
// bootable.
func wantStatusFellBack(t *testing.T, vm *qt.VM, where string) {
	t.Helper()
	vm.ExpectT(t, `bootloader state:  `+where+`, next boot: a\r?\n`, qt.SlotBootTimeout)
	vm.ExpectT(t, `  slot b:\s+not bootable`, qt.SlotBootTimeout)
}

// bootSlot waits for GRUB's pick and checks it.
func bootSlot(t *testing.T, vm *qt.VM, slot string) {
	t.Helper()
	entry := map[string]string{"a": "1", "b": "2"}[slot]
	vm.ExpectT(t, `grub: boots entry `+entry, qt.SlotBootTimeout)
	vm.ExpectT(t, `cpinit: booted slot "`+slot+`"; grub-rauc grubenv`, qt.SlotBootTimeout)
}

// grubBegin boots slot A, whose system runs `cpinit begin`: the checkpoint
// is armed and GRUB is told to try B next (ORDER="B A", B_OK=1, B_TRY=0).
func grubBegin(t *testing.T, g *grubDevice) {
	t.Helper()
	vm := g.boot(t, "sysinit.action=ota sysinit.cowsize=64M")
	bootSlot(t, vm, "a")
	vm.ExpectT(t, `checkpoint armed: COW /.cpinit/cow, \d+ MiB in \d+ extents, chunk 4 KiB, target slot "_b" \(bootloader counter\)`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: ota begin ok`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	// A, which GRUB counted as tried at this boot (A_TRY=1), is marked
	// good again by begin: it is the update's fallback.
	g.wantEnv(t, "after begin", map[string]string{"ORDER": "B A", "B_OK": "1", "B_TRY": "0", "A_OK": "1", "A_TRY": "0"})
}

// TestGRUBUpdateCommits: GRUB boots the update's slot B on trial (B_TRY=1),
// the system commits (cpinit marks B good: B_TRY=0), and the next boot GRUB
// picks B again, cpinit finishes the commit and the update's data stays.
func TestGRUBUpdateCommits(t *testing.T) {
	g := newGrubDevice(t, 21)
	grubBegin(t, g)

	vm := g.boot(t, "sysinit.action=workload sysinit.seed=1 sysinit.mib=8 sysinit.then=commit")
	bootSlot(t, vm, "b")
	vm.ExpectT(t, `cpinit: first boot of slot "_b": creating the checkpoint`, qt.SlotBootTimeout)
	vm.ExpectT(t, `committed: the update's data is kept`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: commit ok`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	g.wantEnv(t, "after the commit", map[string]string{"ORDER": "B A", "B_OK": "1", "B_TRY": "0"})

	vm = g.boot(t, "sysinit.action=report")
	bootSlot(t, vm, "b")
	vm.ExpectT(t, `sysinit: hello.txt="written by the update"`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if r := qt.WantRecord(t, g.ABDevice, bootstate.StateFresh); r.COWPath != "" {
		t.Fatalf("record after the commit's cleanup: %+v", r)
	}
	if exists, err := g.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after commit (err %v)", err)
	}
}

// TestGRUBUpdateCrashFallsBack: the update's system crashes on its first
// boot; GRUB skips B (B_TRY=1) and boots A; cpinit rolls userdata back to
// the checkpoint (exact manifest) and makes B bad for good (B_OK=0: RAUC's
// reset rule would otherwise try it again); GRUB keeps booting A.
func TestGRUBUpdateCrashFallsBack(t *testing.T) {
	g := newGrubDevice(t, 22)
	before := qt.UserdataManifestT(t, g.ABDevice)
	grubBegin(t, g)

	vm := g.boot(t, "sysinit.action=workload sysinit.seed=2 sysinit.mib=4 sysinit.then=crash")
	bootSlot(t, vm, "b")
	vm.ExpectT(t, `sysinit: crashing`, qt.SlotBootTimeout)
	vm.ExpectT(t, `Kernel panic`, qt.SlotBootTimeout)
	vm.Wait(qt.SlotBootTimeout)

	vm = g.boot(t, "sysinit.action=report")
	bootSlot(t, vm, "a")
	vm.ExpectT(t, `cpinit: rolling back userdata \(slot-fallback, booted "a", target "_b"\)`, qt.SlotBootTimeout)
	vm.ExpectT(t, `cpinit: (merge|restore): 0\.0 MiB left of \d+\.\d MiB`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, qt.SlotBootTimeout)
	wantStatusFellBack(t, vm, `grub-rauc grubenv /grub/grubenv \([^)]*\) on /dev/vda`)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	g.wantEnv(t, "after the rollback", map[string]string{"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0"})
	qt.WantRecord(t, g.ABDevice, bootstate.StateFresh)
	if diff := qt.UserdataManifestT(t, g.ABDevice).Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after the rollback differs from the checkpoint:\n%s", strings.Join(diff, "\n"))
	}

	vm = g.boot(t, "sysinit.action=report")
	bootSlot(t, vm, "a")
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
}

// TestGRUBRollbackCommand: the update's system runs `cpinit rollback`,
// which makes A primary and B bad in the grubenv before recording the
// rollback; GRUB boots A, whose boot merges: userdata is the checkpoint.
func TestGRUBRollbackCommand(t *testing.T) {
	g := newGrubDevice(t, 23)
	before := qt.UserdataManifestT(t, g.ABDevice)
	grubBegin(t, g)

	vm := g.boot(t, "sysinit.action=workload sysinit.seed=3 sysinit.mib=4 sysinit.then=rollback")
	bootSlot(t, vm, "b")
	vm.ExpectT(t, `sysinit: rollback ok`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	g.wantEnv(t, "after cpinit rollback", map[string]string{"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0"})
	qt.WantRecord(t, g.ABDevice, bootstate.StateRollbackPending)

	vm = g.boot(t, "sysinit.action=report")
	bootSlot(t, vm, "a")
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
