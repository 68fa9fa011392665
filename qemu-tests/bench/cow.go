package main

import (
	"flag"
	"fmt"
)

// The cow section: how much COW a trial's writes consume per MiB written,
// for overwrites and new files, by chunk size (pkg/dmsnap
// TestBenchCOWUseInGuest; docs/cow-sizing.md explains why new files count).

var (
	cowMiB    = flag.Int("cow.mib", 16, "MiB each workload writes")
	cowChunks = flag.String("cow.chunks", "4,16,64", "chunk sizes to try, in KiB")
)

func init() { register("cow", runCOW) }

func runCOW(tmp string) error {
	return guestBench{
		pkg:  "./pkg/dmsnap",
		test: "TestBenchCOWUseInGuest",
		args: []string{"-dmsnap.bench.cow", fmt.Sprintf("-dmsnap.bench.cow.mib=%d", *cowMiB), "-dmsnap.bench.cow.chunks=" + *cowChunks},
		// 3/4 filesystem, 1/4 COW: room for 4x the writes at 64 KiB chunks.
		diskBytes: 1 << 30,
		prefix:    "DMSNAP-COW",
	}.run(tmp)
}
