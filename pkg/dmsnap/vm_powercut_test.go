//go:build linux

package dmsnap

// Power cuts during a merge. The host harness plays the power switch: it
// boots the guest test binary several times on the same disk image and kills
// QEMU while the merge runs. The test is one function whose phase is chosen
// with -dmsnap.phase (or CPINIT_DMSNAP_PHASE):
//
//	setup  fill /dev/vda with the pattern, start a checkpoint, overwrite and
//	       zero ~40 MiB through the origin, check the snapshot, tear the
//	       devices down cleanly and print "DMSNAP-PHASE setup done".
//	merge  (re)start the merge from whatever the disk holds (StartMerge on a
//	       guest with no dm devices, as init does at boot), print
//	       "DMSNAP-MERGE left=<bytes>" after every poll, finish it and check
//	       the disk is the pattern outside the COW extents, then print
//	       "DMSNAP-PHASE merge verified". Kill it anywhere and run it again:
//	       the last uninterrupted run must pass. The host harness
//	       (qemu-tests/dmsnapvm) cuts it at counted flushes of the disk.
//	restore  roll back with the offline restore (Restore: no dm device) from
//	       whatever the disk holds and check the pattern, then print
//	       "DMSNAP-PHASE restore verified". Cut anywhere (the host cuts at
//	       its flush, losing all or part of its writes) and run it again.
//	(none) both in one boot, with a simulated cut: the merge is stopped
//	       half-way by removing every device (what a reboot does to dm
//	       state), restarted and verified. This is what ordinary runs do,
//	       so the test never skips.

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

var (
	phaseFlag = flag.String("dmsnap.phase", "", "power-cut test phase: setup, merge, or empty for both in one boot")
)

const powerCutSeed = 11

func powerCutPhase() string {
	if *phaseFlag != "" {
		return *phaseFlag
	}
	return os.Getenv("CPINIT_DMSNAP_PHASE")
}

func TestVMPowerCut(t *testing.T) {
	c, disk := vmSetup(t)
	cfg := testConfig(t, disk)
	cfg.PollInterval = 20 * time.Millisecond
	k := newCheckpoint(t, c, cfg)
	switch phase := powerCutPhase(); phase {
	case "setup":
		powerCutSetup(t, k, disk)
		fmt.Println("DMSNAP-PHASE setup done")
	case "merge":
		powerCutMerge(t, k, disk, 0)
		if !t.Failed() {
			fmt.Println("DMSNAP-PHASE merge verified")
		}
	case "restore":
		powerCutRestore(t, k, disk)
		if !t.Failed() {
			fmt.Println("DMSNAP-PHASE restore verified")
		}
	case "":
		powerCutSetup(t, k, disk)
		powerCutMerge(t, k, disk, 0.5)
	default:
		t.Fatalf("unknown -dmsnap.phase %q", phase)
	}
}

func powerCutSetup(t *testing.T, k *Checkpoint, disk string) {
	ctx := context.Background()
	fillPattern(t, disk, powerCutSeed, 0, diskSectors/8)
	if err := k.StartCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	now := expectation{base: powerCutSeed, overrides: map[uint64]uint64{}}
	scribble(t, k.c.NodePath(k.cfg.Names.Origin), &now, powerCutSeed+1, rand.New(rand.NewPCG(11, 12)), 10000)
	verifyPattern(t, k.c.NodePath(k.cfg.Names.Snap), expectation{base: powerCutSeed}, 0, dataSectors/8)
	st, err := k.SnapshotStatus()
	if err != nil || st.State != SnapActive {
		t.Fatalf("snapshot after writes: %+v %v", st, err)
	}
	t.Logf("checkpoint holds %d bytes", st.DataSectors()*512)
	if err := k.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
}

// powerCutRestore restores offline and verifies.
func powerCutRestore(t *testing.T, k *Checkpoint, disk string) {
	plan, err := Restore(context.Background(), disk, k.cfg, RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restored %d chunks in %d copies", len(plan.Table.Exceptions), plan.Copies())
	verifyPattern(t, disk, expectation{base: powerCutSeed}, 0, cowStart/8)
}

// powerCutMerge merges and verifies. With cutAt > 0 it first stops the
// merge once that fraction of the data is merged, by removing all devices.
func powerCutMerge(t *testing.T, k *Checkpoint, disk string, cutAt float64) {
	ctx := context.Background()
	if cutAt > 0 {
		if err := k.StartMerge(ctx); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		var first, left uint64
		err := k.WaitMerge(cctx, func(p Progress) {
			if first == 0 {
				first = p.BytesLeft
			}
			left = p.BytesLeft
			if float64(p.BytesLeft) <= float64(first)*(1-cutAt) {
				cancel()
			}
		})
		cancel()
		if err != nil && err != context.Canceled {
			t.Fatal(err)
		}
		if err := k.Teardown(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("merge stopped with %d of %d bytes left", left, first)
	}
	mergeAll(t, k, func(p Progress) {
		fmt.Printf("DMSNAP-MERGE left=%d rate=%.0f\n", p.BytesLeft, p.Rate)
	})
	if err := k.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	verifyPattern(t, disk, expectation{base: powerCutSeed}, 0, cowStart/8)
}
