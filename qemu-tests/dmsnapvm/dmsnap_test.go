// Package dmsnapvm runs pkg/dmsnap's device-mapper tests inside the QEMU
// guest (the host kernel has no device-mapper), and cuts the guest's power in
// the middle of a snapshot-merge several times before checking the merge
// still ends byte-exact. It is its own package so that `go test ./...` runs it
// beside the other QEMU suites.
package dmsnapvm

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

const pkg = "./pkg/dmsnap"

// TestDmsnapInGuest runs every TestVM* test of pkg/dmsnap in the guest: the
// ioctl client against the real kernel with dmsetup as the oracle, the
// checkpoint operations, overflow, a rollback of a real ext4, and (in one
// boot, with a simulated cut) the merge power-cut test.
func TestDmsnapInGuest(t *testing.T) {
	testutil.LookPath(t, "qemu-system-x86_64")
	out := qt.RunGuestTests(t, qt.GuestRun{
		Pkg:     pkg,
		Args:    []string{"-test.run=^TestVM"},
		Disks:   []string{filepath.Join(t.TempDir(), "vda.img")},
		Timeout: 10 * time.Minute,
	})
	for _, name := range []string{
		"TestVMVersionAndTargets", "TestVMControlNodeCreated", "TestVMClientBasics", "TestVMLargeTable",
		"TestVMCheckpointTablesMatchDmsetup", "TestVMCheckpointMergeRestoresPattern", "TestVMCommit",
		"TestVMOverflow", "TestVMConvergesFromPartialStates", "TestVMExt4Rollback", "TestVMPowerCut", "TestVMOriginRefusesDiscard",
	} {
		if !strings.Contains(out, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass in the guest", name)
		}
	}
}

var mergeLine = regexp.MustCompile(`DMSNAP-MERGE left=(\d+) rate=`)

// TestDmsnapMergePowerCuts plays the power switch for pkg/dmsnap's
// TestVMPowerCut: one boot sets up a checkpoint with ~40 MiB of changes,
// then several boots restart the merge (slowed by dm-snapshot's copy
// throttle) and are killed part-way at seeded points, then a last boot
// finishes the merge and checks the disk is the original pattern outside the
// COW extents, byte for byte.
func TestDmsnapMergePowerCuts(t *testing.T) {
	testutil.LookPath(t, "qemu-system-x86_64")
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("CPINIT_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("seed %d (CPINIT_SEED=%d to replay)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	disk := filepath.Join(t.TempDir(), "vda.img")
	run := func(args ...string) qt.GuestRun {
		return qt.GuestRun{Pkg: pkg, Args: append([]string{"-test.run=^TestVMPowerCut$"}, args...), Disks: []string{disk}, Timeout: 5 * time.Minute}
	}
	if out := qt.RunGuestTests(t, run("-dmsnap.phase=setup")); !strings.Contains(out, "DMSNAP-PHASE setup done") {
		t.Fatal("setup phase did not finish")
	}
	cuts, prev := 0, uint64(1<<63)
	for i := 0; i < 4; i++ {
		vm, err := qt.StartGuestTests(t, run("-dmsnap.phase=merge", "-dmsnap.throttle=2"))
		if err != nil {
			t.Fatal(err)
		}
		var left uint64
		for n := 1 + rng.IntN(6); n > 0; n-- {
			m, err := vm.Expect(mergeLine, 2*time.Minute)
			if err != nil {
				t.Fatalf("boot %d: %v", i+1, err)
			}
			left, _ = strconv.ParseUint(m[1], 10, 64)
		}
		time.Sleep(time.Duration(rng.IntN(100)) * time.Millisecond)
		vm.Kill()
		if strings.Contains(vm.Output(), "DMSNAP-PHASE merge verified") {
			t.Logf("boot %d: the merge finished before the cut", i+1)
			continue
		}
		cuts++
		t.Logf("boot %d: power cut with about %d bytes left to merge", i+1, left)
		if left > prev {
			t.Errorf("merge went backwards across a power cut: %d bytes left, %d before", left, prev)
		}
		prev = left
	}
	if cuts == 0 {
		t.Fatal("no power cut landed during a merge")
	}
	out := qt.RunGuestTests(t, run("-dmsnap.phase=merge"))
	if !strings.Contains(out, "DMSNAP-PHASE merge verified") {
		t.Fatal("the merge did not verify after the power cuts")
	}
}
