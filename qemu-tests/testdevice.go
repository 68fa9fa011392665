package qemutests

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// The test helpers the QEMU test packages share (qemu-tests,
// qemu-tests/cachecutvm, qemu-tests/bootloadervm, qemu-tests/f2fsvm):
// devices, boots, records, manifests.

// NeedQEMU gates every VM test: skip with the reason on a laptop without
// QEMU, fail in CI.
func NeedQEMU(t testing.TB) Kernel {
	t.Helper()
	testutil.LookPath(t, "qemu-system-x86_64")
	testutil.LookPath(t, "mkfs.ext4")
	k, err := FetchKernel()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// EnvArm64 opts into the arm64 VM tests: CPINIT_ARM64=1, which `make
// test-arm64` and `make soak` set.
const EnvArm64 = "CPINIT_ARM64"

// NeedArm64 gates the arm64 VM tests (qemu-system-aarch64 -M virt under
// TCG, the arm64 kernel initramfs.Arm64Kernel) and returns that kernel.
// Without CPINIT_ARM64=1 they skip and say so, under CI too: `make test`
// leaves them out on purpose, for time (it must stay within 20 minutes on
// the 2-core machines it runs on), as -short leaves out long tests; they
// are selected, not missing. With it set, a missing qemu-system-aarch64
// or mkfs.ext4 skips with the reason, and fails under CI
// (testutil.LookPath).
func NeedArm64(t testing.TB) Kernel {
	t.Helper()
	if os.Getenv(EnvArm64) != "1" {
		t.Skipf("arm64 VM test: runs with %s=1 (make test-arm64, make soak); make test runs only the lifecycle (%s=core), for time", EnvArm64, EnvArm64)
	}
	return needArm64Tools(t)
}

// NeedArm64Core gates the arm64 tests `make test` runs (CPINIT_ARM64=core,
// besides 1): the lifecycle with exact manifests, about 2 minutes of one
// core; the rest of the arm64 suite (its power cuts among it, since
// 2026-12-07, for make test's time) stays in make test-arm64 and make soak.
func NeedArm64Core(t testing.TB) Kernel {
	t.Helper()
	if v := os.Getenv(EnvArm64); v != "1" && v != "core" {
		t.Skipf("arm64 VM test: runs with %s=core (make test) or 1 (make test-arm64, make soak)", EnvArm64)
	}
	return needArm64Tools(t)
}

// needArm64Tools is NeedArm64 without the CPINIT_ARM64 gate: the tools
// and the kernel.
func needArm64Tools(t testing.TB) Kernel {
	t.Helper()
	return needKernelTools(t, "arm64", initramfs.Arm64Kernel)
}

// needKernelTools looks up the QEMU that boots arch and mkfs.ext4, and
// fetches the pinned kernel of env.
func needKernelTools(t testing.TB, arch, env string) Kernel {
	t.Helper()
	testutil.LookPath(t, QEMUBinary(arch))
	testutil.LookPath(t, "mkfs.ext4")
	k, err := initramfs.FetchPinnedKernel(env)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// EnvArm32 opts into the 32-bit ARM VM tests: CPINIT_ARM32=1, which `make
// test-arm32` and `make soak` set.
const EnvArm32 = "CPINIT_ARM32"

// NeedArm32 gates the 32-bit ARM VM tests (qemu-system-arm -M virt under
// TCG, the armmp kernel initramfs.Arm32Kernel) as NeedArm64 gates the
// arm64 ones, and returns that kernel.
func NeedArm32(t testing.TB) Kernel {
	t.Helper()
	if os.Getenv(EnvArm32) != "1" {
		t.Skipf("32-bit ARM VM test: runs with %s=1 (make test-arm32, make soak); make test leaves it out for time", EnvArm32)
	}
	return needArm32Tools(t)
}

func needArm32Tools(t testing.TB) Kernel {
	t.Helper()
	return needKernelTools(t, "arm", initramfs.Arm32Kernel)
}

// CpinitImage is the product initramfs (CpinitInitramfs) for t.
func CpinitImage(t testing.TB) string {
	t.Helper()
	p, err := CpinitInitramfs()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// EnvArch is the architecture of the devices NewTestDevice makes:
// CPINIT_ARCH unset or amd64, the cloud kernel's; arm64, the arm64
// kernel's (asking for it selects the tests: CPINIT_ARM64 is not needed).
// So every test built on NewTestDevice (the lifecycle, bad inputs, issue
// 14's safety tests, watch, TestCacheCut) runs on arm64 with
//
//	CPINIT_ARCH=arm64 go test -p 1 -parallel 1 ./qemu-tests -run ...
const EnvArch = "CPINIT_ARCH"

// NewTestDevice is an A/B device (NewABDevice) in t's temporary directory:
// 60 seeded files in ext4 userdata, the cloud kernel (or the arm64 one:
// EnvArch), the product initramfs.
func NewTestDevice(t testing.TB, seed uint64) *ABDevice {
	t.Helper()
	switch a := os.Getenv(EnvArch); a {
	case "", "amd64":
		return newTestDevice(t, seed)
	case "arm64":
		needArm64Tools(t)
		return NewTestDeviceFor(t, seed, initramfs.Arm64Kernel)
	case "arm":
		needArm32Tools(t)
		return NewTestDeviceFor(t, seed, initramfs.Arm32Kernel)
	default:
		t.Fatalf("%s=%q: amd64, arm64 or arm", EnvArch, a)
		return nil
	}
}

// newTestDevice is NewTestDevice on the cloud kernel.
func newTestDevice(t testing.TB, seed uint64) *ABDevice {
	t.Helper()
	k := NeedQEMU(t)
	testutil.LookPath(t, "debugfs")
	testutil.LookPath(t, "e2fsck")
	d, err := NewABDevice(t.TempDir(), k, CpinitImage(t), 60, seed)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// NewTestDeviceFor is NewTestDevice booting the pinned kernel of env with
// the product initramfs built for it (CpinitInitramfsFor); for
// initramfs.Arm64Kernel an arm64 device, whose slots' programs are built
// for arm64 too. Gate the test first (NeedArm64 for arm64).
func NewTestDeviceFor(t testing.TB, seed uint64, env string) *ABDevice {
	t.Helper()
	if env == initramfs.CloudKernel {
		return newTestDevice(t, seed)
	}
	testutil.LookPath(t, "mkfs.ext4")
	testutil.LookPath(t, "debugfs")
	testutil.LookPath(t, "e2fsck")
	k, initrd, err := CpinitInitramfsFor(env)
	if err != nil {
		t.Fatal(err)
	}
	testutil.LookPath(t, QEMUBinary(k.Arch))
	d, err := NewABDevice(t.TempDir(), k, initrd, 60, seed)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// UserdataManifestT is d's userdata manifest, read from the host.
func UserdataManifestT(t testing.TB, d *ABDevice) Manifest {
	t.Helper()
	m, err := d.UserdataManifest()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// WantRecord fails t unless d's metadata record is in state.
func WantRecord(t testing.TB, d *ABDevice, state bootstate.State) *bootstate.Record {
	t.Helper()
	r, err := d.Record()
	if err != nil {
		t.Fatalf("metadata store: %v", err)
	}
	if r.State != state {
		t.Fatalf("metadata state %v (reason %v), want %v", r.State, r.Reason, state)
	}
	return r
}

// NewTestF2FSDevice is NewTestDevice with f2fs userdata (NewF2FSABDevice,
// the generic kernel), checked with fsck.f2fs as made.
func NewTestF2FSDevice(t testing.TB, seed uint64) *ABDevice {
	t.Helper()
	testutil.LookPath(t, "qemu-system-x86_64")
	for _, tool := range []string{"mkfs.ext4", "mkfs.f2fs", "sload.f2fs", "fsck.f2fs"} {
		testutil.LookPath(t, tool)
	}
	k, initrd, err := CpinitInitramfsFor(initramfs.GenericKernel)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewF2FSABDevice(t.TempDir(), k, initrd, 60, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CheckF2FS(); err != nil {
		t.Fatalf("userdata as made: %v", err)
	}
	return d
}

// ManifestRe matches sysinit's manifest lines, checking /data is the f2fs.
// It ends at the line's end: the console arrives in pieces, and without it
// a match can end inside the digest or the count ("files=6" of "files=65").
const ManifestRe = `sysinit: datafs=f2fs\r?\nsysinit: manifest=([0-9a-f]+) files=(\d+)\r?\n`

// EnvInt is the integer in environment variable name, or def.
func EnvInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}

// RecString is a metadata record in one line, for logs and failures.
func RecString(r bootstate.Record) string {
	s := r.State.String()
	if r.Active {
		s += "/active"
	}
	s += fmt.Sprintf(" reason=%s attempts=%d mergetries=%d", r.Reason, r.Attempts, r.MergeTries)
	if r.TargetSlot != "" {
		s += " target=" + r.TargetSlot
	}
	if r.COWPath != "" {
		s += " cow=" + r.COWPath
	}
	return s
}

// CopyFile copies an image file, sparse: only its data extents are read
// and written (SEEK_DATA/SEEK_HOLE), the holes stay holes. The images are
// mostly holes (a 256 MiB userdata holds a few MiB), and the cut
// campaigns copy them for every cut: dense copies wrote gigabytes per
// make test for the host to write back.
func CopyFile(t testing.TB, src, dst string) {
	t.Helper()
	if err := copySparse(src, dst); err != nil {
		t.Fatal(err)
	}
}

// Whence values of lseek(2) beyond io.Seek*: the next data, the next hole.
const (
	seekData = 3
	seekHole = 4
)

func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	size := fi.Size()
	for off := int64(0); off < size; {
		data, err := in.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break // no data past off
		}
		if err != nil {
			return err
		}
		hole, err := in.Seek(data, seekHole)
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data)); err != nil {
			return fmt.Errorf("copy %s to %s: %w", src, dst, err)
		}
		off = hole
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	return out.Close()
}

// OTABegin boots the current slot a, whose system runs `cpinit begin` as an
// OTA agent would after staging the update in slot b.
func OTABegin(t testing.TB, d *ABDevice, cowSize string) {
	t.Helper()
	d.Slot[0] = "sysinit.action=ota sysinit.cowsize=" + cowSize
	vm, slot := d.Boot(t, "")
	if slot != 0 {
		t.Fatalf("bootloader picked slot %d before the update, want 0", slot)
	}
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/vdc action=mount-plain`, SlotBootTimeout)
	vm.ExpectT(t, `checkpoint armed: COW /.cpinit/cow, \d+ MiB in \d+ extents, chunk 4 KiB, target slot "_b" \(android counter\)`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: ota begin ok`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	r := WantRecord(t, d, bootstate.StateCheckpointing)
	if r.Active || r.TargetSlot != "_b" {
		t.Fatalf("after begin: active=%v target=%q", r.Active, r.TargetSlot)
	}
}

// TrialBoot boots the update's slot once with the given system action and
// waits for the snapshot line; the checkpoint is active afterwards.
func TrialBoot(t testing.TB, d *ABDevice, action string, extra ...string) *VM {
	t.Helper()
	d.Slot[1] = action
	vm, slot := d.Boot(t, strings.Join(extra, " "))
	if slot != 1 {
		t.Fatalf("bootloader picked slot %d for the trial, want 1", slot)
	}
	vm.ExpectT(t, `cpinit: state=checkpointing/active userdata=/dev/vdc mounted=/newroot/data via=/dev/mapper/cp-origin action=create-snapshot`, SlotBootTimeout)
	return vm
}

// BootUntilFallback boots the device until the bootloader falls back to
// slot 0 (the old slot; its action should be sysinit.action=report), and
// checks that that boot rolls userdata back; fallback, if set, then reads
// more of that boot's console before it ends. Each boot of the update's
// slot is the trial boot n (from 1): its snapshot line is checked, then
// trial runs, which must wait for the VM. before, if set, runs before each
// boot. It returns the number of trial boots.
func BootUntilFallback(t testing.TB, d *ABDevice, maxTrials int, before func(), trial func(vm *VM, n int), fallback func(vm *VM)) int {
	t.Helper()
	for n := 0; ; {
		if before != nil {
			before()
		}
		vm, slot := d.Boot(t, "")
		if slot == 0 {
			vm.ExpectT(t, `cpinit: rolling back userdata \(slot-fallback, booted "_a", target "_b"\)`, SlotBootTimeout)
			vm.ExpectT(t, `cpinit: (merge|restore): 0\.0 MiB left of \d+\.\d MiB`, SlotBootTimeout)
			vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=\S+ action=start-or-resume-merge`, SlotBootTimeout)
			vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, SlotBootTimeout)
			if fallback != nil {
				fallback(vm)
			}
			if err := vm.Wait(SlotBootTimeout); err != nil {
				t.Fatal(err)
			}
			return n
		}
		n++
		if n > maxTrials {
			t.Fatalf("bootloader still picks the update's slot after %d trial boots", n-1)
		}
		action := "reattach-snapshot"
		if n == 1 {
			action = "create-snapshot"
		}
		vm.ExpectT(t, `cpinit: state=checkpointing/active userdata=/dev/vdc mounted=/newroot/data via=/dev/mapper/cp-origin action=`+action, SlotBootTimeout)
		trial(vm, n)
	}
}
