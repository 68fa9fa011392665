package main

import (
	"flag"
	"fmt"
)

// The setup section: cmds/cpinit's TestBenchSetupInGuest in one boot: how
// long the first boot of a trial takes to set up the checkpoint (map the
// origin plain, look at the COW file through a ro,noload mount with FIEMAP,
// COW table, header zeroing, snapshot and origin) for a 1 GiB COW file of
// 10, 10k and 200k extents, step by step, as ratios to the 10-extent file;
// then what the COW's fragmentation costs the trial's first writes (random
// 4 KiB writes through cp-origin vs the raw disk, at queue depth 1 and 32).
// -kernel compares kernels (kernel.env's 6.1, kernel-612.env's 6.12).

var (
	setupExtents = flag.String("setup.extents", "10,10000,200000", "setup: extent counts to aim for (the first is the ratios' baseline)")
	setupReps    = flag.Int("setup.reps", 3, "setup: rounds per extent count (tables show medians and ranges)")
	setupWrites  = flag.Int("setup.writes", 256, "setup: random 4 KiB first writes through cp-origin (and on the raw disk) per queue depth and round, at each extent count up to 50,000 (0: none)")
)

// setupDiskBytes holds the largest case: the 1 GiB file in holes of ~1.3
// blocks, one donor block between holes, plus 256 MiB. The image is sparse
// and the benchmark only fallocates, so little of it is ever written.
const setupDiskBytes = 2560 << 20

func init() { register("setup", runSetup) }

func runSetup(tmp string) error {
	return guestBench{
		pkg:  "./cmds/cpinit",
		test: "TestBenchSetupInGuest",
		args: []string{"-cpinit.bench.setup", "-cpinit.bench.setup.extents=" + *setupExtents, fmt.Sprintf("-cpinit.bench.setup.reps=%d", *setupReps),
			fmt.Sprintf("-cpinit.bench.setup.writes=%d", *setupWrites)},
		diskBytes: setupDiskBytes,
		prefix:    "SETUP-BENCH",
	}.run(tmp)
}
