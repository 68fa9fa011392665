package main

import (
	"flag"
	"fmt"
)

// The restore section: pkg/dmsnap's TestBenchRestoreInGuest in one boot:
// rolling a sequential and a scattered COW back with the offline restore
// (1, 16 and 64 workers), with fio replaying the restore's I/Os through
// psync threads and through io_uring, and with the kernel's snapshot-merge,
// each against dd copying as many bytes (issue 17).

var (
	restoreMiB      = flag.Int("restore.mib", 256, "restore: MiB changed in the sequential and scattered layouts")
	restoreBigMiB   = flag.Int("restore.bigmib", 1024, "restore: MiB of scattered changes in the big layout (0: skip it)")
	restoreBigMerge = flag.Bool("restore.bigmerge", false, "restore: also merge the big layout with the kernel (~15 min under TCG)")
	restoreReps     = flag.Int("restore.reps", 3, "restore: rounds per layout (tables show medians and ranges)")
)

func init() { register("restore", runRestore) }

func runRestore(tmp string) error {
	return guestBench{
		pkg:  "./pkg/dmsnap",
		test: "TestBenchRestoreInGuest",
		args: []string{"-dmsnap.bench.restore", fmt.Sprintf("-dmsnap.bench.restore.mib=%d", *restoreMiB),
			fmt.Sprintf("-dmsnap.bench.restore.bigmib=%d", *restoreBigMiB), fmt.Sprintf("-dmsnap.bench.restore.bigmerge=%v", *restoreBigMerge),
			fmt.Sprintf("-dmsnap.bench.restore.reps=%d", *restoreReps)},
		tools:     []string{"/usr/bin/dd", "/usr/bin/fio"},
		diskBytes: 4 << 30,
		prefix:    "DMSNAP-BENCH",
	}.run(tmp)
}
