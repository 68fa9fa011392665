package main

import (
	"flag"
	"fmt"
)

// The io section: pkg/dmsnap's TestBenchCheckpointInGuest in one boot:
// fio write cost through snapshot-origin vs the raw device at queue depth 1
// and deep, and the merge of a sequential and a scattered COW vs dd, by
// chunk size.

var (
	seqMiB    = flag.Int("seqmib", 16, "MiB written sequentially in 4 KiB writes, at each queue depth")
	rand      = flag.Int("rand", 512, "random 4 KiB writes at each queue depth (distinct 64 KiB slots of 256 MiB)")
	chunks    = flag.String("chunks", "4,16,64", "chunk sizes to try, in KiB")
	reps      = flag.Int("reps", 3, "rounds over all chunk sizes (tables show medians and ranges)")
	qd        = flag.Int("qd", 32, "the deep queue depth (the other is 1)")
	ioengine  = flag.String("ioengine", "libaio", "fio ioengine (libaio or io_uring)")
	modparams = flag.String("modparams", "", "module parameters the guest sets first, e.g. dm_mod/kcopyd_subjob_size_kb=1024")
)

func init() { register("io", runIO) }

func runIO(tmp string) error {
	args := []string{
		"-dmsnap.bench", fmt.Sprintf("-dmsnap.bench.seqmib=%d", *seqMiB), fmt.Sprintf("-dmsnap.bench.rand=%d", *rand),
		"-dmsnap.bench.chunks=" + *chunks, fmt.Sprintf("-dmsnap.bench.reps=%d", *reps),
		fmt.Sprintf("-dmsnap.bench.qd=%d", *qd), "-dmsnap.bench.ioengine=" + *ioengine,
	}
	if *modparams != "" {
		args = append(args, "-dmsnap.bench.modparams="+*modparams)
	}
	return guestBench{
		pkg:  "./pkg/dmsnap",
		test: "TestBenchCheckpointInGuest",
		args: args,
		// dd is the merge's baseline and fio writes (u-root adds their
		// shared libraries).
		tools:     []string{"/usr/bin/dd", "/usr/bin/fio"},
		diskBytes: 1 << 30,
		prefix:    "DMSNAP-BENCH",
	}.run(tmp)
}
