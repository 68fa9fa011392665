// Package vmrun boots the QEMU guest and runs pkg/fiemap's in-guest tests
// (TestVM*) there: the host kernel has no device-mapper, and those tests
// check the dm-linear table end to end.
package vmrun

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// vmDiskMkfsArgs format the guest's /dev/vda on the host: a 16 MiB ext4
// with 1 KiB blocks (many small extents), no root reserve, few inodes, at
// the start of a 256 MiB disk.
var vmDiskMkfsArgs = []string{"-q", "-F", "-b", "1024", "-m", "0", "-N", "256"}

func TestFiemapInGuest(t *testing.T) {
	testutil.LookPath(t, "qemu-system-x86_64")
	mkfs := testutil.LookPath(t, "mkfs.ext4")
	disk := filepath.Join(t.TempDir(), "vda.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 256<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, append(vmDiskMkfsArgs, disk, "16M")...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	out := qt.RunGuestTests(t, qt.GuestRun{
		Pkg:   "./pkg/fiemap",
		Args:  []string{"-test.run=^TestVM"},
		Disks: []string{disk},
	})
	if !strings.Contains(out, "--- PASS: TestVMLinearMapsFile") {
		t.Errorf("TestVMLinearMapsFile did not pass in the guest")
	}
}
