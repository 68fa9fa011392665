// Package cpinitvm runs cmds/cpinit's in-guest tests (TestVM*) inside the
// QEMU guest: they drive PID 1's device-mapper environment (bootEnv) against
// the real kernel, which the host does not have.
package cpinitvm

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

func TestCpinitInGuest(t *testing.T) {
	testutil.LookPath(t, "qemu-system-x86_64")
	out := qt.RunGuestTests(t, qt.GuestRun{
		Pkg:     "./cmds/cpinit",
		Args:    []string{"-test.run=^TestVM"},
		Disks:   []string{filepath.Join(t.TempDir(), "vda.img")},
		Timeout: 5 * time.Minute,
	})
	for _, name := range []string{"TestVMMergeOutlastsStepBound"} {
		if !strings.Contains(out, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass in the guest", name)
		}
	}
}
