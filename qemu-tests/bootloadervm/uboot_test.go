package bootloadervm

import (
	"encoding/binary"
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

// The real U-Boot (Debian's u-boot-qemu, its qemu-x86 board: U-Boot as the
// BIOS of QEMU's i440fx PC) under RAUC's U-Boot scheme. U-Boot's distro
// boot finds boot.scr on the first virtio disk (an MBR disk whose one
// partition is FAT) and runs it: RAUC's contrib/uboot.sh (BOOT_ORDER, BOOT_x_LEFT), with the
// environment in a raw area of its own disk, as on a board that keeps it
// at an offset of its eMMC. That board's U-Boot keeps its environment
// nowhere (CONFIG_ENV_IS_NOWHERE) and has no setexpr, so the script does
// what saveenv and setexpr would: it imports the area with `env import -c`
// (CRC-32 + data: the single-copy format of libubootenv and mkenvimage),
// exports the variables back with `env export -c` and writes the area with
// `virtio write`, and spells the decrement out for the attempt counts the
// scheme uses (3, 2, 1). The initramfs goes to 256 MiB, not to the
// board's ramdisk_addr_r (64 MiB), which the kernel's decompression
// overwrites ("Initramfs unpacking failed: invalid magic"). cpinit reads and writes the same area
// (cpinit.bootloader=uboot-rauc cpinit.ubootenv=/dev/vdf:0x0:0x4000); the
// host reads it with the real fw_printenv. No boot in these tests is
// chosen by the harness: U-Boot picks every slot.

// ubootEnvSize is the environment area: one copy, 16 KiB at the start of
// the environment disk.
const ubootEnvSize = 0x4000

// ubootScript is boot.scr's source. COMMON is replaced by the kernel
// command line every slot shares.
const ubootScript = `echo "uboot: cpinit test boot script"
virtio dev 5
virtio read ${loadaddr} 0 0x20
if env import -c ${loadaddr} 0x4000; then echo "uboot: environment loaded"; else echo "uboot: no valid environment"; fi
setenv dec_A 'if test ${BOOT_A_LEFT} = 3; then setenv BOOT_A_LEFT 2; elif test ${BOOT_A_LEFT} = 2; then setenv BOOT_A_LEFT 1; else setenv BOOT_A_LEFT 0; fi'
setenv dec_B 'if test ${BOOT_B_LEFT} = 3; then setenv BOOT_B_LEFT 2; elif test ${BOOT_B_LEFT} = 2; then setenv BOOT_B_LEFT 1; else setenv BOOT_B_LEFT 0; fi'
setenv save_env 'env export -c -s 0x4000 ${loadaddr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT; virtio dev 5; virtio write ${loadaddr} 0 0x20'

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

setenv rauc_slot
for BOOT_SLOT in "${BOOT_ORDER}"; do
  if test "x${rauc_slot}" != "x"; then
    # skip remaining slots
  elif test "x${BOOT_SLOT}" = "xA"; then
    if test 0x${BOOT_A_LEFT} -gt 0; then
      echo "Found valid slot A, ${BOOT_A_LEFT} attempts remaining"
      run dec_A
      setenv rauc_slot A
      setenv cpinit_slot a
    fi
  elif test "x${BOOT_SLOT}" = "xB"; then
    if test 0x${BOOT_B_LEFT} -gt 0; then
      echo "Found valid slot B, ${BOOT_B_LEFT} attempts remaining"
      run dec_B
      setenv rauc_slot B
      setenv cpinit_slot b
    fi
  fi
done

if test -n "${rauc_slot}"; then
  run save_env
else
  echo "No valid slot found, resetting tries to 3"
  setenv BOOT_A_LEFT 3
  setenv BOOT_B_LEFT 3
  run save_env
  reset
fi

load virtio 0:1 ${scriptaddr} test.txt
env import -t ${scriptaddr} ${filesize}
echo "uboot: boots slot ${rauc_slot}"
load virtio 0:1 ${kernel_addr_r} vmlinuz
setenv ramdisk_addr_r 0x10000000
load virtio 0:1 ${ramdisk_addr_r} initrd.img
setenv bootargs "COMMON cpinit.slot=${cpinit_slot} cpinit.root=LABEL=system_${cpinit_slot} ${extra}"
zboot ${kernel_addr_r} 0 ${ramdisk_addr_r} ${filesize}
`

// ubootCommon is every slot's kernel command line before its part. The
// boot FAT is /dev/vda, the systems vdb and vdc, userdata vdd, the
// metadata store vde, the environment's disk vdf.
const ubootCommon = qt.KernelConsoleArgs + " cpinit.userdata=LABEL=userdata cpinit.metadata=/dev/vde" +
	" cpinit.bootloader=uboot-rauc cpinit.ubootenv=/dev/vdf:0x0:0x4000 cpinit.on_fatal=reboot"

// ubootROM is the qemu-x86 board's U-Boot from Debian's u-boot-qemu.
const ubootROM = "/usr/lib/u-boot/qemu-x86/u-boot.rom"

// ubootDevice is a qt.ABDevice (its systems, userdata and metadata images)
// booted by U-Boot from a boot disk instead of by the harness.
type ubootDevice struct {
	*qt.ABDevice
	BootDisk, EnvDisk string
}

func newUBootDevice(t *testing.T, seed uint64) *ubootDevice {
	t.Helper()
	d := qt.NewTestDevice(t, seed)
	mkimage := testutil.LookPath(t, "mkimage")
	mkenvimage := testutil.LookPath(t, "mkenvimage")
	testutil.LookPath(t, "fw_printenv")
	for _, tool := range []string{"mkfs.vfat", "mcopy", "mmd"} {
		testutil.LookPath(t, tool)
	}
	if _, err := os.Stat(ubootROM); err != nil {
		t.Fatalf("U-Boot for QEMU's PC (Debian package u-boot-qemu): %v", err)
	}
	src := filepath.Join(d.Dir, "boot.cmd")
	if err := os.WriteFile(src, []byte(strings.ReplaceAll(ubootScript, "COMMON", ubootCommon)), 0o644); err != nil {
		t.Fatal(err)
	}
	scr := filepath.Join(d.Dir, "boot.scr")
	if out, err := exec.Command(mkimage, "-A", "x86", "-O", "linux", "-T", "script", "-C", "none", "-n", "cpinit test", "-d", src, scr).CombinedOutput(); err != nil {
		t.Fatalf("mkimage: %v\n%s", err, out)
	}
	// RAUC's variables for a device running slot A with nothing in B yet
	// (docs/bootloader-uboot.md), made by the real mkenvimage: one copy,
	// padded with 0xff, the rest of the disk blank.
	vars := filepath.Join(d.Dir, "uboot-env.txt")
	if err := os.WriteFile(vars, []byte("BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u := &ubootDevice{ABDevice: d, BootDisk: filepath.Join(d.Dir, "boot.img"), EnvDisk: filepath.Join(d.Dir, "env.img")}
	if out, err := exec.Command(mkenvimage, "-s", fmt.Sprint(ubootEnvSize), "-o", u.EnvDisk, vars).CombinedOutput(); err != nil {
		t.Fatalf("mkenvimage: %v\n%s", err, out)
	}
	if err := os.Truncate(u.EnvDisk, 1<<20); err != nil {
		t.Fatal(err)
	}
	testTxt := filepath.Join(d.Dir, "test.txt")
	if err := os.WriteFile(testTxt, []byte("extra=\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	part := filepath.Join(d.Dir, "bootpart.img")
	if err := qt.MakeFAT(part, 63<<20, map[string]string{
		"/boot.scr":   scr,
		"/vmlinuz":    d.Kernel.Vmlinuz,
		"/initrd.img": d.Initrd,
		"/test.txt":   testTxt,
	}); err != nil {
		t.Fatal(err)
	}
	// U-Boot's distro boot looks in partitions only ("No partition table
	// - virtio 0" on a whole-disk FAT): an MBR with one bootable FAT (LBA)
	// partition at 1 MiB.
	fat, err := os.ReadFile(part)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(u.BootDisk, append(mbrOnePartition(ubootPartOffset/512, len(fat)/512), fat...), 0o644); err != nil {
		t.Fatal(err)
	}
	return u
}

// ubootPartOffset is where the boot partition starts on the boot disk.
const ubootPartOffset = 1 << 20

// mbrOnePartition is the first start sectors of a disk with an MBR
// partition table of one bootable FAT32 (LBA) partition, type 0x0c, of size
// sectors (CHS fields 0xfe/0xff/0xff: LBA only, as fdisk writes beyond
// 8 GiB).
func mbrOnePartition(start, size int) []byte {
	b := make([]byte, start*512)
	e := b[446:462]
	e[0] = 0x80 // bootable
	copy(e[1:4], []byte{0xfe, 0xff, 0xff})
	e[4] = 0x0c
	copy(e[5:8], []byte{0xfe, 0xff, 0xff})
	binary.LittleEndian.PutUint32(e[8:12], uint32(start))
	binary.LittleEndian.PutUint32(e[12:16], uint32(size))
	b[510], b[511] = 0x55, 0xaa
	return b
}

// bootFS names the boot partition for mtools (image@@offset).
func (u *ubootDevice) bootFS() string { return fmt.Sprintf("%s@@%d", u.BootDisk, ubootPartOffset) }

// boot sets the system's parameters for the next boot (sysinit.*, read by
// the script from test.txt, which only the harness writes) and starts the
// machine; U-Boot picks the slot.
func (u *ubootDevice) boot(t *testing.T, sysinit string) *qt.VM {
	t.Helper()
	if err := qt.FATWrite(u.bootFS(), "/test.txt", []byte("extra="+sysinit+"\n")); err != nil {
		t.Fatal(err)
	}
	return qt.StartT(t, qt.Options{BIOS: ubootROM, Disks: []string{u.BootDisk, u.Systems[0], u.Systems[1], u.Userdata, u.Metadata, u.EnvDisk}})
}

// env is the environment as the real fw_printenv lists it.
func (u *ubootDevice) env(t *testing.T) map[string]string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "fw_env.config")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("%s 0x0 0x%x\n", u.EnvDisk, ubootEnvSize)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("fw_printenv", "-c", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("fw_printenv: %v\n%s", err, out)
	}
	return listedVars(out)
}

func (u *ubootDevice) wantEnv(t *testing.T, when string, want map[string]string) {
	t.Helper()
	wantVars(t, "U-Boot environment "+when, u.env(t), want)
}

// ubootSlot waits for U-Boot's pick and checks it.
func ubootSlot(t *testing.T, vm *qt.VM, slot string) {
	t.Helper()
	vm.ExpectT(t, `uboot: boots slot `+strings.ToUpper(slot), qt.SlotBootTimeout)
	vm.ExpectT(t, `cpinit: booted slot "`+slot+`"; u-boot env /dev/vdf:0x0:0x4000 \(single copy, not power-cut safe\), scheme uboot-rauc`, qt.SlotBootTimeout)
}

// ubootBegin boots slot A, whose system runs `cpinit begin`: the checkpoint
// is armed and U-Boot is told to try B next (BOOT_ORDER="B A",
// BOOT_B_LEFT=3). A's attempt at this boot stays counted (2 left): on a
// RAUC system its mark-good service puts it back to 3 at every boot; this
// test's system has none, and begin only marks the running slot good when
// it would not be bootable otherwise (GRUB's A_TRY).
func ubootBegin(t *testing.T, u *ubootDevice) {
	t.Helper()
	vm := u.boot(t, "sysinit.action=ota sysinit.cowsize=64M")
	ubootSlot(t, vm, "a")
	vm.ExpectT(t, `checkpoint armed: COW /.cpinit/cow, \d+ MiB in \d+ extents, chunk 4 KiB, target slot "_b" \(bootloader counter\)`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: ota begin ok`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	u.wantEnv(t, "after begin", map[string]string{"BOOT_ORDER": "B A", "BOOT_B_LEFT": "3", "BOOT_A_LEFT": "2"})
}

// TestUBootUpdateCrashFallsBack: the update's system crashes on every
// boot; U-Boot counts B's attempts down (3, 2, 1) and then boots A; cpinit
// rolls userdata back to the checkpoint (exact manifest) and takes B out
// of BOOT_ORDER; U-Boot keeps booting A.
func TestUBootUpdateCrashFallsBack(t *testing.T) {
	u := newUBootDevice(t, 24)
	before := qt.UserdataManifestT(t, u.ABDevice)
	ubootBegin(t, u)

	for i, left := range []string{"2", "1", "0"} {
		vm := u.boot(t, fmt.Sprintf("sysinit.action=workload sysinit.seed=%d sysinit.mib=4 sysinit.then=crash", 4+i))
		ubootSlot(t, vm, "b")
		vm.ExpectT(t, `sysinit: crashing`, qt.SlotBootTimeout)
		vm.ExpectT(t, `Kernel panic`, qt.SlotBootTimeout)
		vm.Wait(qt.SlotBootTimeout)
		u.wantEnv(t, fmt.Sprintf("after crash %d", i+1), map[string]string{"BOOT_ORDER": "B A", "BOOT_B_LEFT": left})
	}

	vm := u.boot(t, "sysinit.action=report")
	ubootSlot(t, vm, "a")
	vm.ExpectT(t, `cpinit: rolling back userdata \(slot-fallback, booted "a", target "_b"\)`, qt.SlotBootTimeout)
	vm.ExpectT(t, `cpinit: (merge|restore): 0\.0 MiB left of \d+\.\d MiB`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, qt.SlotBootTimeout)
	wantStatusFellBack(t, vm, `u-boot env /dev/vdf:0x0:0x4000 \(single copy, not power-cut safe\), scheme uboot-rauc`)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	u.wantEnv(t, "after the rollback", map[string]string{"BOOT_ORDER": "A", "BOOT_B_LEFT": "0"})
	qt.WantRecord(t, u.ABDevice, bootstate.StateFresh)
	if diff := qt.UserdataManifestT(t, u.ABDevice).Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after the rollback differs from the checkpoint:\n%s", strings.Join(diff, "\n"))
	}

	vm = u.boot(t, "sysinit.action=report")
	ubootSlot(t, vm, "a")
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
}

// TestUBootUpdateCommits: U-Boot boots the update's slot B (BOOT_B_LEFT
// 3 -> 2), the system commits (cpinit marks B good, as `rauc status
// mark-good` does: BOOT_B_LEFT=3), and the next boot U-Boot picks B again,
// cpinit finishes the commit and the update's data stays.
func TestUBootUpdateCommits(t *testing.T) {
	u := newUBootDevice(t, 25)
	ubootBegin(t, u)

	vm := u.boot(t, "sysinit.action=workload sysinit.seed=1 sysinit.mib=8 sysinit.then=commit")
	ubootSlot(t, vm, "b")
	vm.ExpectT(t, `cpinit: first boot of slot "_b": creating the checkpoint`, qt.SlotBootTimeout)
	vm.ExpectT(t, `committed: the update's data is kept`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: commit ok`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	u.wantEnv(t, "after the commit", map[string]string{"BOOT_ORDER": "B A", "BOOT_B_LEFT": "3"})

	vm = u.boot(t, "sysinit.action=report")
	ubootSlot(t, vm, "b")
	vm.ExpectT(t, `sysinit: hello.txt="written by the update"`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if r := qt.WantRecord(t, u.ABDevice, bootstate.StateFresh); r.COWPath != "" {
		t.Fatalf("record after the commit's cleanup: %+v", r)
	}
	if exists, err := u.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after commit (err %v)", err)
	}
}

// TestUBootRollbackCommand: the update's system runs `cpinit rollback`,
// which takes B out of BOOT_ORDER before recording the rollback; U-Boot
// boots A, whose boot merges: userdata is the checkpoint.
func TestUBootRollbackCommand(t *testing.T) {
	u := newUBootDevice(t, 26)
	before := qt.UserdataManifestT(t, u.ABDevice)
	ubootBegin(t, u)

	vm := u.boot(t, "sysinit.action=workload sysinit.seed=3 sysinit.mib=4 sysinit.then=rollback")
	ubootSlot(t, vm, "b")
	vm.ExpectT(t, `sysinit: rollback ok`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	u.wantEnv(t, "after cpinit rollback", map[string]string{"BOOT_ORDER": "A", "BOOT_B_LEFT": "0"})
	qt.WantRecord(t, u.ABDevice, bootstate.StateRollbackPending)

	vm = u.boot(t, "sysinit.action=report")
	ubootSlot(t, vm, "a")
	vm.ExpectT(t, `cpinit: (merge|restore): 0\.0 MiB left of \d+\.\d MiB`, qt.SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, qt.SlotBootTimeout)
	if err := vm.Wait(qt.SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	qt.WantRecord(t, u.ABDevice, bootstate.StateFresh)
	if diff := qt.UserdataManifestT(t, u.ABDevice).Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after the rollback differs from the checkpoint:\n%s", strings.Join(diff, "\n"))
	}
}
