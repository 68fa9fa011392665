// Package testutil holds the gates shared by cpinit's tests: which tests need
// root, which need the QEMU guest, and how CI makes sure none of them is
// silently skipped.
package testutil

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// EnvInVM is set to "1" by the test init in the QEMU guest (qemu-tests). Tests
// that need the real device-mapper kernel check it; the host never sets it.
const EnvInVM = "CPINIT_IN_VM"

// EnvTestDisks lists the scratch virtio disks the harness attached for an
// in-guest test run, comma separated (e.g. "/dev/vda,/dev/vdb").
const EnvTestDisks = "CPINIT_TEST_DISKS"

// InVM reports whether this test binary runs inside the cpinit QEMU guest.
func InVM() bool { return os.Getenv(EnvInVM) == "1" }

// InCI reports whether we run under CI (which sets CI=true). In CI a test that
// cannot get what it needs must fail, not skip: a skip there would be reported
// as a pass.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

// RequireRoot skips the test with the reason when not root, except in CI,
// where it fails: CI runs as root, so not being root there is a broken setup.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatalf("test needs root (loop devices, mounts, ioctls) but euid=%d under CI", os.Geteuid())
	}
	t.Skipf("test needs root (loop devices, mounts, ioctls); run as root to exercise it")
}

// RequireVM skips the test on the host with the reason: it needs the real
// device-mapper kernel in the QEMU guest. It is not an error on the host,
// even in CI, because qemu-tests runs this same test binary inside the guest
// and fails if any test skips there (see qemu-tests/guest_test.go).
func RequireVM(t testing.TB) {
	t.Helper()
	if !InVM() {
		t.Skipf("needs the device-mapper kernel in the QEMU guest (%s=1); qemu-tests runs it there", EnvInVM)
	}
}

// TestDisks returns the scratch disks the harness attached in the guest, and
// fails the test if fewer than n are present.
func TestDisks(t testing.TB, n int) []string {
	t.Helper()
	var disks []string
	for _, d := range strings.Split(os.Getenv(EnvTestDisks), ",") {
		if d != "" {
			disks = append(disks, d)
		}
	}
	if len(disks) < n {
		t.Fatalf("test needs %d scratch disks, %s=%q", n, EnvTestDisks, os.Getenv(EnvTestDisks))
	}
	return disks[:n]
}

// LookPath returns the path of a tool a test needs. Without it the test skips
// with the reason, except in CI, where .ci/run installs every tool the suite
// uses, so a missing one is a broken setup and fails.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if InCI() {
		t.Fatalf("test needs %s, which CI must install: %v", name, err)
	}
	t.Skipf("test needs %s (not installed): %v", name, err)
	return ""
}

// Unmount unmounts dir, retrying for a while when the kernel says EBUSY.
//
// Tests that mount run in parallel with tests that start commands. Between
// fork and exec, a child of os/exec holds a copy of the parent's whole file
// descriptor table (O_CLOEXEC only closes at exec), so a file another test
// has just closed can still be open in someone else's child for a moment and
// umount fails with "target is busy". That is a property of the test process,
// not of the code under test, so a short retry is the fix; a file really left
// open still fails after the deadline.
func Unmount(dir string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unix.Unmount(dir, 0)
		if err == nil {
			return nil
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			return &os.PathError{Op: "umount", Path: dir, Err: err}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CompressModule writes the kernel module src compressed to dst, in the
// format dst's suffix names (.ko.xz, .ko.zst, .ko.gz), with the tools and
// flags the kernel's modules_install uses (scripts/Makefile.modinst: xz
// --check=crc32 --lzma2=dict=1MiB, zstd -T0, gzip -n).
func CompressModule(t testing.TB, src, dst string) {
	t.Helper()
	var tool string
	var args []string
	switch {
	case strings.HasSuffix(dst, ".ko.xz"):
		tool, args = "xz", []string{"--check=crc32", "--lzma2=dict=1MiB"}
	case strings.HasSuffix(dst, ".ko.zst"):
		tool, args = "zstd", []string{"-T0", "-q"}
	case strings.HasSuffix(dst, ".ko.gz"):
		tool, args = "gzip", []string{"-n"}
	default:
		t.Fatalf("CompressModule: %s: want a .ko.xz, .ko.zst or .ko.gz name", dst)
	}
	LookPath(t, tool)
	out, err := exec.Command(tool, append(args, "-c", src)...).Output()
	if err != nil {
		t.Fatalf("%s %s: %v", tool, src, err)
	}
	if err := os.WriteFile(dst, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
