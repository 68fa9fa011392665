// Package cpinitvm runs cmds/cpinit's in-guest tests (TestVM*) inside the
// QEMU guest: they drive PID 1's device-mapper environment (bootEnv) against
// the real kernel, which the host does not have.
package cpinitvm

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/internal/testutil"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

func TestCpinitInGuest(t *testing.T) {
	testutil.LookPath(t, "qemu-system-x86_64")
	testCpinitInGuest(t, initramfs.CloudKernel)
}

// TestArm64CpinitInGuest is TestCpinitInGuest in an arm64 guest (cmds/cpinit's
// test binary built for arm64, the arm64 kernel). Gated by CPINIT_ARM64=1.
func TestArm64CpinitInGuest(t *testing.T) {
	qt.NeedArm64(t)
	testCpinitInGuest(t, initramfs.Arm64Kernel)
}

func testCpinitInGuest(t *testing.T, env string) {
	out := qt.RunGuestTests(t, qt.GuestRun{
		Pkg:     "./cmds/cpinit",
		Args:    []string{"-test.run=^TestVM"},
		Disks:   []string{filepath.Join(t.TempDir(), "vda.img")},
		Timeout: 5 * time.Minute,
		Kernel:  env,
	})
	for _, name := range []string{"TestVMMergeOutlastsStepBound"} {
		if !strings.Contains(out, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass in the guest", name)
		}
	}
}
