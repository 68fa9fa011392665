package main

import (
	"flag"
	"fmt"
)

// The setup section: cmds/cpinit's TestBenchSetupInGuest in one boot: how
// long the first boot of a trial takes to set up the checkpoint (map the
// origin plain, look at the COW file through a ro,noload mount with FIEMAP,
// COW table, header zeroing, snapshot and origin) for a 1 GiB COW file of
// 10, 10k and 200k extents, step by step, as ratios to the 10-extent file.

var (
	setupExtents = flag.String("setup.extents", "10,10000,200000", "setup: extent counts to aim for (the first is the ratios' baseline)")
	setupReps    = flag.Int("setup.reps", 3, "setup: rounds per extent count (tables show medians and ranges)")
)

// setupDiskBytes holds the largest case: the 1 GiB file in holes of ~1.3
// blocks, one donor block between holes, plus 256 MiB. The image is sparse
// and the benchmark only fallocates, so little of it is ever written.
const setupDiskBytes = 2560 << 20

func init() { register("setup", runSetup) }

func runSetup(tmp string) error {
	return guestBench{
		pkg:       "./cmds/cpinit",
		test:      "TestBenchSetupInGuest",
		args:      []string{"-cpinit.bench.setup", "-cpinit.bench.setup.extents=" + *setupExtents, fmt.Sprintf("-cpinit.bench.setup.reps=%d", *setupReps)},
		diskBytes: setupDiskBytes,
		prefix:    "SETUP-BENCH",
	}.run(tmp)
}
