package qemutests

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/initramfs"
)

func systemImage(t *testing.T, dir, label string) string {
	t.Helper()
	return systemImageFor(t, dir, label, "amd64")
}

func systemImageFor(t *testing.T, dir, label, arch string) string {
	t.Helper()
	img, err := MakeSystemImageFor(dir, label, arch)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestBootSwitchRoot is the walking skeleton end to end: cpinit boots as
// PID 1, loads its modules, finds userdata by label, mounts it under the
// system root it found by label, and switch_roots to the system's init,
// which reads back a file the host put in userdata.
func TestBootSwitchRoot(t *testing.T) {
	k := NeedQEMU(t)
	testBootSwitchRoot(t, k, CpinitImage(t))
}

// TestArm64BootSwitchRoot is TestBootSwitchRoot on the arm64 kernel
// (qemu-system-aarch64 -M virt, TCG), with cpinit and the system's init
// built for arm64. Gated by CPINIT_ARM64=1 (NeedArm64): make test-arm64.
func TestArm64BootSwitchRoot(t *testing.T) {
	NeedArm64(t)
	k, initrd, err := CpinitInitramfsFor(initramfs.Arm64Kernel)
	if err != nil {
		t.Fatal(err)
	}
	testBootSwitchRoot(t, k, initrd)
}

// TestArm32BootSwitchRoot is TestBootSwitchRoot on a 32-bit ARM device:
// the armmp kernel on qemu-system-arm's virt board, cpinit built with
// GOARCH=arm GOARM=7. Gated by CPINIT_ARM32=1 (make test-arm32).
func TestArm32BootSwitchRoot(t *testing.T) {
	NeedArm32(t)
	k, initrd, err := CpinitInitramfsFor(initramfs.Arm32Kernel)
	if err != nil {
		t.Fatal(err)
	}
	testBootSwitchRoot(t, k, initrd)
}

func testBootSwitchRoot(t *testing.T, k Kernel, initrd string) {
	dir := t.TempDir()

	secret := make([]byte, 8)
	rand.Read(secret)
	want := hex.EncodeToString(secret)
	ud := filepath.Join(dir, "userdata")
	if err := os.MkdirAll(ud, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ud, "hello.txt"), []byte(want+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	udImg := filepath.Join(dir, "userdata.img")
	if err := MakeExt4(udImg, 64<<20, "userdata", ud); err != nil {
		t.Fatal(err)
	}
	sysImg := systemImageFor(t, dir, "system_a", k.Arch)

	start := time.Now()
	vm := StartT(t, Options{
		Arch:   k.Arch,
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Disks:  []string{sysImg, udImg},
		Append: "cpinit.root=LABEL=system_a cpinit.userdata=LABEL=userdata",
	})
	vm.ExpectT(t, `cpinit: starting as PID 1\b`, BootTimeout)
	vm.ExpectT(t, `cpinit: loaded kernel modules: \[virtio.*\]; device-mapper modules load when needed: \[.*dm-snapshot.*\]`, BootTimeout)
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdb mounted=/newroot/data`, BootTimeout)
	vm.ExpectT(t, `cpinit: switch_root to /newroot, exec /sbin/init`, BootTimeout)
	vm.ExpectT(t, `sysinit: pid=1\b`, BootTimeout)
	m := vm.ExpectT(t, `sysinit: hello.txt="([0-9a-f]*)"`, BootTimeout)
	if m[1] != want {
		t.Fatalf("system read %q from userdata, host wrote %q", m[1], want)
	}
	if err := vm.Wait(BootTimeout); err != nil {
		t.Fatalf("VM did not power off cleanly: %v", err)
	}
	if strings.Contains(vm.Output(), "loaded device-mapper modules") || strings.Contains(vm.Output(), "device-mapper: ioctl") {
		t.Error("a boot with no checkpoint loaded device-mapper (it should load only when a mapping is needed)")
	}
	t.Logf("%s boot to switch_root and power off took %v", k.Arch, time.Since(start))
}

// TestBootNoNextInit: with no cpinit.root there is no next init, and cpinit
// unmounts userdata and powers off cleanly instead of exiting (which would
// panic the kernel).
func TestBootNoNextInit(t *testing.T) {
	k := NeedQEMU(t)
	initrd := CpinitImage(t)
	udImg := filepath.Join(t.TempDir(), "userdata.img")
	if err := MakeExt4(udImg, 64<<20, "userdata", ""); err != nil {
		t.Fatal(err)
	}
	vm := StartT(t, Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Disks:  []string{udImg},
		Append: "cpinit.userdata=/dev/vda",
	})
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vda mounted=/data`, BootTimeout)
	vm.ExpectT(t, `cpinit: no next init to run: powering off`, BootTimeout)
	vm.ExpectT(t, `reboot: Power down`, BootTimeout)
	if err := vm.Wait(BootTimeout); err != nil {
		t.Fatalf("VM did not power off cleanly: %v", err)
	}
	assertNoPanic(t, vm)
}

// TestBootMissingUserdata: a userdata device that never appears is a clear
// fatal error naming it, then a halt, never a kernel panic.
func TestBootMissingUserdata(t *testing.T) {
	k := NeedQEMU(t)
	initrd := CpinitImage(t)
	vm := StartT(t, Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Append: "cpinit.userdata=/dev/vdz cpinit.rootwait=2s",
	})
	vm.ExpectT(t, `cpinit: FATAL: userdata device \(cpinit.userdata=/dev/vdz\): userdata device /dev/vdz: no such block device`, BootTimeout)
	vm.ExpectT(t, `cpinit: stopping the machine \(halt`, BootTimeout)
	vm.ExpectT(t, `reboot: System halted`, BootTimeout)
	assertNoPanic(t, vm)
}

// TestBootBadParameter: an unusable kernel parameter stops the boot with a
// message naming it, and cpinit.on_fatal=reboot is honoured even then.
func TestBootBadParameter(t *testing.T) {
	k := NeedQEMU(t)
	initrd := CpinitImage(t)
	vm := StartT(t, Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Append: "cpinit.on_fatal=reboot cpinit.userdata=vda",
	})
	vm.ExpectT(t, `cpinit: FATAL: kernel parameter cpinit.userdata=vda: device specification "vda"`, BootTimeout)
	vm.ExpectT(t, `reboot: Restarting system`, BootTimeout)
	if err := vm.Wait(BootTimeout); err != nil {
		t.Fatalf("VM did not exit on reboot: %v", err)
	}
	assertNoPanic(t, vm)
}

func assertNoPanic(t *testing.T, vm *VM) {
	t.Helper()
	if err := vm.ExpectString("Kernel panic", 0); err == nil {
		t.Fatalf("kernel panicked:\n%s", Tail(vm.Output(), 40))
	}
}

// TestGuestDeviceMapper runs an in-guest Go test that opens
// /dev/mapper/control and reads the dm version: the path pkg/dmsnap's tests
// take.
func TestGuestDeviceMapper(t *testing.T) {
	NeedQEMU(t)
	testGuestDeviceMapper(t, initramfs.CloudKernel)
}

// TestArm64GuestDeviceMapper is TestGuestDeviceMapper in an arm64 guest:
// the test binary and guestinit built for arm64, Debian's arm64 dmsetup and
// e2fsprogs as the tools (guesttools.go). Gated by CPINIT_ARM64=1.
func TestArm64GuestDeviceMapper(t *testing.T) {
	NeedArm64(t)
	testGuestDeviceMapper(t, initramfs.Arm64Kernel)
}

func testGuestDeviceMapper(t *testing.T, env string) {
	out := RunGuestTests(t, GuestRun{
		Pkg:    "./qemu-tests/guestsmoke",
		Args:   []string{"-test.run=^(TestVMDeviceMapperVersion|TestVMGuestTools)$"},
		Kernel: env,
	})
	for _, want := range []string{"--- PASS: TestVMDeviceMapperVersion", "--- PASS: TestVMGuestTools", "device-mapper interface version 4."} {
		if !strings.Contains(out, want) {
			t.Errorf("guest output lacks %q", want)
		}
	}
}

// TestPowerCutAndReboot exercises the harness's power cut: the system writes
// and fsyncs a file, the host kills QEMU without warning, and the next boot
// with the same disks finds the file (and a clean journal replay).
func TestPowerCutAndReboot(t *testing.T) {
	k := NeedQEMU(t)
	initrd := CpinitImage(t)
	dir := t.TempDir()
	udImg := filepath.Join(dir, "userdata.img")
	if err := MakeExt4(udImg, 64<<20, "userdata", ""); err != nil {
		t.Fatal(err)
	}
	sysImg := systemImage(t, dir, "system_a")
	opts := Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Disks:  []string{sysImg, udImg},
	}
	opts.Append = "cpinit.root=LABEL=system_a cpinit.userdata=LABEL=userdata sysinit.action=write sysinit.token=survived"
	vm := StartT(t, opts)
	vm.ExpectT(t, `sysinit: wrote cut.txt`, BootTimeout)
	vm.Kill()

	opts.Append = "cpinit.root=LABEL=system_a cpinit.userdata=LABEL=userdata"
	vm = StartT(t, opts)
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdb`, BootTimeout)
	vm.ExpectT(t, `sysinit: cut.txt="survived"`, BootTimeout)
	if err := vm.Wait(BootTimeout); err != nil {
		t.Fatalf("second boot did not power off cleanly: %v", err)
	}
}

// TestGuestRunnerCatchesSkip is the negative twin of every in-guest run: a
// test that skips inside the VM must fail the run, or a broken gate would
// report untested code as passing.
func TestGuestRunnerCatchesSkip(t *testing.T) {
	NeedQEMU(t)
	_, err := runGuestTests(t, GuestRun{
		Pkg:  "./qemu-tests/guestsmoke",
		Args: []string{"-test.run=^TestVMSkipTwin$"},
		Env:  []string{"GUESTSMOKE_SKIP=1"},
	})
	if err == nil || !strings.Contains(err.Error(), "skipped inside the VM") {
		t.Fatalf("runner accepted a skipped in-guest test: err = %v", err)
	}
}
