package qemutests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options describe one boot.
type Options struct {
	Kernel string   // vmlinuz
	Initrd []string // cpio archives, concatenated in order (the kernel unpacks each)
	// Append is added to the kernel command line after the harness's own
	// console parameters.
	Append string
	// Disks are attached as virtio-blk disks, in order: /dev/vda,
	// /dev/vdb, ... Each is a raw image file or an NBD export named by
	// its URI, nbd+unix:///?socket=PATH (a cachedisk.Disk, whose URI
	// method gives it: a disk with a volatile write cache).
	Disks    []string
	MemoryMB int // default 512
	// Firmware, when set, boots through UEFI instead of loading Kernel
	// directly: OVMF's code and this copy of its variable store (NewOVMFVars)
	// as the machine's flash. The bootloader on a disk's ESP then picks the
	// kernel and its command line; Kernel, Initrd and Append are unused.
	Firmware string
	// BIOS, when set, is the machine's firmware image (-bios) on QEMU's
	// i440fx PC instead of the q35 machine: U-Boot's build for it
	// (u-boot-qemu's qemu-x86/u-boot.rom), which then loads the kernel
	// from a disk itself; Kernel, Initrd and Append are unused.
	BIOS string
	// Log receives the serial console as it arrives (in addition to the
	// in-memory copy Expect searches).
	Log io.Writer
	// Arch is the guest's architecture, the GOARCH of its kernel
	// (initramfs.Kernel.Arch): "" or "amd64" boots qemu-system-x86_64's
	// q35 PC, "arm64" qemu-system-aarch64's virt board and "arm"
	// qemu-system-arm's (Kernel, Initrd, Append and Disks only: no
	// Firmware or BIOS).
	Arch string
}

// VM is one running QEMU.
type VM struct {
	Cmdline string // the QEMU command line, shell-quoted, for reproduction

	cmd    *exec.Cmd
	initrd string // temporary concatenation, removed at exit

	mu     sync.Mutex
	cond   *sync.Cond
	out    bytes.Buffer // whole console output
	cursor int          // Expect searches from here
	exited bool
	err    error // QEMU's exit status once exited
}

// qemuBinary is the QEMU for arch: qemu-system-x86_64 (CPINIT_QEMU
// overrides it) or qemu-system-aarch64 (CPINIT_QEMU_ARM64).
func qemuBinary(arch string) string {
	switch arch {
	case "arm64":
		if q := os.Getenv("CPINIT_QEMU_ARM64"); q != "" {
			return q
		}
		return "qemu-system-aarch64"
	case "arm":
		if q := os.Getenv("CPINIT_QEMU_ARM"); q != "" {
			return q
		}
		return "qemu-system-arm"
	}
	if q := os.Getenv("CPINIT_QEMU"); q != "" {
		return q
	}
	return "qemu-system-x86_64"
}

// QEMUBinary is the QEMU system emulator that boots guests of arch (a
// GOARCH, "" for amd64), for tests to look up.
func QEMUBinary(arch string) string { return qemuBinary(arch) }

// accelArgs picks TCG unless CPINIT_QEMU_ACCEL=kvm: nested KVM hangs or
// aborts on this project's machines, so the mere presence of /dev/kvm must
// not switch it on. The TCG CPU of arm64 is QEMU's "max" (every feature
// TCG emulates, so Go's runtime meets LSE atomics and the rest a current
// core has) with pauth-impdef=on: QEMU's docs/system/arm/cpu-features.rst
// ("TCG VCPU Features") say the architected QARMA pointer-authentication
// algorithm is costly to emulate and the implementation-defined one is
// much faster. Measured on this machine kind: a boot of cpinit to power
// off took 4.6 s with plain max, 1.4 s with pauth-impdef=on (cortex-a57,
// which has no pointer authentication, 1.6 s).
func accelArgs(arch string) []string {
	if os.Getenv("CPINIT_QEMU_ACCEL") == "kvm" {
		return []string{"-accel", "kvm", "-cpu", "host"}
	}
	switch arch {
	case "arm64":
		return []string{"-accel", "tcg", "-cpu", "max,pauth-impdef=on"}
	case "arm":
		// An ARMv7-A core with VFPv4 and NEON (what GOARM=7 and Debian's
		// armhf need); the armmp kernel boots on it on the virt board.
		return []string{"-accel", "tcg", "-cpu", "cortex-a15"}
	}
	return []string{"-accel", "tcg", "-cpu", "qemu64"}
}

// KernelConsoleArgs start every test kernel's command line (a bootloader's
// configuration passes them too). panic=-1: a kernel panic reboots at once,
// which -no-reboot turns into a QEMU exit instead of a hang; tests look for
// "Kernel panic". no_timer_check: under TCG on a loaded host the kernel's
// IO-APIC timer check can time out and panic ("IO-APIC + timer doesn't
// work!") before init runs; the emulated timer is fine.
// cryptomgr.notests: the kernel's crypto self-tests (crypto/testmgr.c, run
// from crypto_algapi_init) took 0.2 s of guest time and about 0.5 of the
// 2.3 CPU-seconds a boot to PID 1 costs under TCG; the suite boots some
// 400 times. They test the kernel's crypto implementations, which neither
// cpinit nor dm-snapshot uses (module signatures are still checked).
const KernelConsoleArgs = "console=ttyS0 panic=-1 loglevel=4 no_timer_check cryptomgr.notests"

// KernelConsoleArgsArm64 are KernelConsoleArgs for the arm64 virt board:
// its serial port is a PL011 UART, ttyAMA0 (QEMU docs/system/arm/virt.rst;
// the kernel's drivers/tty/serial/amba-pl011.c, built into Debian's arm64
// kernels), and no no_timer_check, an x86 parameter
// (arch/x86/kernel/apic/io_apic.c): a parameter no built-in code takes
// reaches init's argument list or environment
// (Documentation/admin-guide/kernel-parameters.rst).
const KernelConsoleArgsArm64 = "console=ttyAMA0 panic=-1 loglevel=4 cryptomgr.notests"

// ConsoleArgs is KernelConsoleArgs for arch ("" or "amd64", "arm64",
// "arm": both ARM virt boards have the PL011, built into armmp too).
func ConsoleArgs(arch string) string {
	if arch == "arm64" || arch == "arm" {
		return KernelConsoleArgsArm64
	}
	return KernelConsoleArgs
}

// Start boots a VM. Stop it with Kill, or wait for it with Wait.
func Start(o Options) (*VM, error) {
	if o.MemoryMB == 0 {
		o.MemoryMB = 512
	}
	machine := "q35"
	switch o.Arch {
	case "", "amd64":
		if o.BIOS != "" {
			machine = "pc"
		}
	case "arm64", "arm":
		// QEMU's generic Arm board (docs/system/arm/virt.rst): a PL011
		// UART, PSCI (so the guest's power off and reboot end QEMU under
		// -no-reboot), a generic ECAM PCIe host the kernel drives with
		// its built-in pci-host-generic, and no firmware needed for
		// -kernel/-initrd (QEMU's own boot loader passes the DTB).
		if o.Firmware != "" || o.BIOS != "" {
			return nil, fmt.Errorf("qemu-tests: %s guests boot -kernel only (Firmware %q, BIOS %q given)", o.Arch, o.Firmware, o.BIOS)
		}
		machine = "virt"
		if o.Arch == "arm" {
			// highmem=off: on an LPAE core QEMU puts the PCIe ECAM and
			// MMIO window above 4 GiB (docs/system/arm/virt.rst,
			// "highmem"), which the non-LPAE armmp kernel cannot address.
			machine = "virt,highmem=off"
		}
	default:
		return nil, fmt.Errorf("qemu-tests: no QEMU machine for architecture %q (amd64, arm64 or arm)", o.Arch)
	}
	qemu := qemuBinary(o.Arch)
	args := []string{
		"-machine", machine, "-smp", "1", "-m", fmt.Sprint(o.MemoryMB),
		"-display", "none", "-monitor", "none", "-serial", "stdio",
		"-no-reboot", "-nodefaults",
	}
	var initrd string
	if o.BIOS != "" {
		args = append(args, "-bios", o.BIOS)
	} else if o.Firmware != "" {
		args = append(args, "-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+o.Firmware)
	} else {
		var err error
		if initrd, err = concatInitrd(o.Initrd); err != nil {
			return nil, err
		}
		args = append(args, "-kernel", o.Kernel, "-initrd", initrd,
			"-append", strings.TrimSpace(ConsoleArgs(o.Arch)+" "+o.Append))
	}
	args = append(args, accelArgs(o.Arch)...)
	for i, d := range o.Disks {
		// cache=writeback: guest writes go to the image file through the
		// host page cache. SIGKILL loses what the guest had not yet sent
		// to its virtual disk (its own page cache: unflushed data), not
		// what it had sent without a flush: QEMU emulates no volatile disk
		// cache, so a power cut here is kinder than on a real disk whose
		// cache drops unflushed writes. A disk given as an NBD URI is
		// served by qemu-tests/cachedisk, which has that cache: QEMU
		// forwards the guest's flushes to it (cache=writeback shows the
		// guest a write cache), and cachedisk.Machine.Cut plays the lost
		// cache after Kill. virtio-blk-pci on both machines: on arm64's
		// virt board it sits on the PCIe bus too (the kernel's virtio_pci
		// module, as on x86), not in a virtio-mmio slot.
		args = append(args, "-drive", fmt.Sprintf("file=%s,format=raw,if=none,id=d%d,cache=writeback", d, i),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=d%d", i))
	}
	cmd := exec.Command(qemu, args...)
	vm := &VM{cmd: cmd, initrd: initrd, Cmdline: shellQuote(append([]string{qemu}, args...))}
	vm.cond = sync.NewCond(&vm.mu)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		os.Remove(initrd)
		return nil, fmt.Errorf("start %s: %w", qemu, err)
	}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := pr.Read(buf)
			if n > 0 {
				vm.mu.Lock()
				vm.out.Write(buf[:n])
				vm.mu.Unlock()
				if o.Log != nil {
					o.Log.Write(buf[:n])
				}
				vm.cond.Broadcast()
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		os.Remove(initrd)
		vm.mu.Lock()
		vm.exited, vm.err = true, err
		vm.mu.Unlock()
		vm.cond.Broadcast()
	}()
	return vm, nil
}

func concatInitrd(parts []string) (string, error) {
	f, err := os.CreateTemp("", "cpinit-initrd-*.cpio")
	if err != nil {
		return "", err
	}
	for _, p := range parts {
		in, err := os.Open(p)
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			return "", err
		}
		_, err = io.Copy(f, in)
		in.Close()
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			return "", err
		}
	}
	return f.Name(), f.Close()
}

// ErrExited is returned by Expect when QEMU exits before the line appears.
var ErrExited = errors.New("VM exited")

// stoppedMarkers are console lines after which a guest prints nothing more.
var stoppedMarkers = []string{"reboot: System halted", "Kernel panic - not syncing"}

// Expect waits until the console shows a match of re after the previous
// match, and returns the submatches. The search consumes the output up to the
// end of the match.
func (vm *VM) Expect(re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, vm.cond.Broadcast)
	defer timer.Stop()
	vm.mu.Lock()
	defer vm.mu.Unlock()
	for {
		rest := vm.out.Bytes()[vm.cursor:]
		if loc := re.FindSubmatchIndex(rest); loc != nil {
			var subs []string
			for i := 0; i+1 < len(loc); i += 2 {
				if loc[i] < 0 {
					subs = append(subs, "")
				} else {
					subs = append(subs, string(rest[loc[i]:loc[i+1]]))
				}
			}
			vm.cursor += loc[1]
			return subs, nil
		}
		if vm.exited {
			return nil, fmt.Errorf("waiting for %q: %w (%v)", re, ErrExited, vm.err)
		}
		// A halted or panicked guest prints nothing more: fail now rather
		// than at the timeout.
		for _, stop := range stoppedMarkers {
			if bytes.Contains(rest, []byte(stop)) {
				return nil, fmt.Errorf("waiting for %q: the guest stopped (%q)", re, stop)
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("waiting for %q: timed out after %v", re, timeout)
		}
		vm.cond.Wait()
	}
}

// ExpectString is Expect for a literal string.
func (vm *VM) ExpectString(s string, timeout time.Duration) error {
	_, err := vm.Expect(regexp.MustCompile(regexp.QuoteMeta(s)), timeout)
	return err
}

// Output returns everything the console printed so far.
func (vm *VM) Output() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.out.String()
}

// Wait waits for QEMU to exit (the guest powered off, rebooted or
// panicked; -no-reboot turns the last two into an exit).
func (vm *VM) Wait(timeout time.Duration) error {
	timer := time.AfterFunc(timeout, vm.cond.Broadcast)
	defer timer.Stop()
	deadline := time.Now().Add(timeout)
	vm.mu.Lock()
	defer vm.mu.Unlock()
	for !vm.exited {
		if time.Now().After(deadline) {
			return fmt.Errorf("VM still running after %v", timeout)
		}
		vm.cond.Wait()
	}
	return vm.err
}

// Kill cuts the power: SIGKILL to QEMU. Whatever the guest had sent to a
// raw image file is in it, flushed or not; a cachedisk disk keeps its cache
// until its Machine's Cut decides what survives.
func (vm *VM) Kill() {
	vm.mu.Lock()
	exited := vm.exited
	vm.mu.Unlock()
	if !exited && vm.cmd.Process != nil {
		_ = syscall.Kill(-vm.cmd.Process.Pid, syscall.SIGKILL)
	}
	_ = vm.Wait(30 * time.Second)
}

func shellQuote(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
		}) < 0 {
			b.WriteString(a)
		} else {
			b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
		}
	}
	return b.String()
}

// MakeDisk creates a sparse raw image of the given size.
func MakeDisk(path string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// MakeExt4 creates a raw ext4 image of size bytes with the given label,
// populated from dir if dir is not empty (mkfs.ext4 -d: no loop device or
// root needed), with extra mkfs.ext4 arguments.
func MakeExt4(path string, size int64, label, dir string, mkfsArgs ...string) error {
	if err := MakeDisk(path, size); err != nil {
		return err
	}
	args := append([]string{"-q", "-F", "-L", label}, mkfsArgs...)
	if dir != "" {
		args = append(args, "-d", dir)
	}
	args = append(args, path)
	if out, err := exec.Command("mkfs.ext4", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
