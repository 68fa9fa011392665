// Package qemutests boots cpinit in QEMU against a real kernel: the pinned
// Debian cloud kernel (initramfs/kernel.env) with device-mapper, dm-snapshot
// and virtio-blk, which the host kernel lacks.
//
// The harness (vm.go) starts qemu-system-x86_64 with our initramfs and
// virtio-blk disk images the test creates, captures the serial console to a
// log kept on failure (out/vmlogs/), waits for console lines with timeouts,
// cuts the power (SIGKILL to QEMU: what the guest had not yet written to its
// virtual disks is lost; see vm.go for what this does not model) and boots
// again with the same disks. Every QEMU
// command line is logged so a failing boot can be rerun by hand.
//
// A disk that loses its volatile write cache at the cut, as real disks do,
// is served by qemu-tests/cachedisk (an NBD server of the harness's own):
// pass its URI in Options.Disks, Kill, then cut with its Machine, at any
// moment or at flush number K.
//
// RunGuestTests (guest.go) runs a package's Go tests inside the guest: it
// builds the test binary, appends it to a test-only initramfs whose /init is
// qemu-tests/guestinit, boots, and fails if the tests fail or any of them
// skips.
//
// Why not github.com/hugelgupf/vmtest, which u-root's own VM tests use: its
// govmtest runner boots u-root's init and shares test binaries and results
// over 9P (extra guest modules, and an init that is not ours), and its
// runvmtest helper fetches kernels from a container registry this project
// cannot reach. What we need beyond it is specific: abrupt power cuts and
// reboots with the same disks, our own PID 1, and exact console
// expectations. That fits in a few hundred lines we control.
//
// TCG software emulation is the default: nested KVM is broken on the
// machines this project runs on (DESIGN.md). Set CPINIT_QEMU_ACCEL=kvm to
// opt in on a host where KVM works; it is never auto-detected.
package qemutests
