//go:build linux

package dmsnap

// The checkpoint benchmark (docs/BENCHMARKS.md, "pkg/dmsnap: checkpoint write
// cost and merge throughput"). It runs only in the guest and only when asked
// with -dmsnap.bench: `go run ./qemu-tests/bench` (make bench) boots the guest
// with a 1 GiB scratch disk and this test alone. Its name does not start with
// TestVM, so the in-guest suite (-test.run=^TestVM, where a skip fails) never
// selects it; on the host RequireVM skips it.
//
// For each chunk size it measures, on the same disk in the same boot, 4 KiB
// O_DIRECT writes on the raw device and through snapshot-origin with a fresh
// snapshot (first writes: every one copies its chunk out), rewrites of the
// same blocks (chunks already copied), sequentially and at random, then the
// merge of the resulting COW against dd copying the same number of bytes
// device to device. It prints the results as markdown tables with ratios
// (ours / raw, merge / dd), on lines starting with "DMSNAP-BENCH|".
//
// Disk layout (1 GiB, /dev/vda):
//
//	[0, seq)            sequential writes (-dmsnap.bench.seqmib, default 16 MiB)
//	[32 MiB, 288 MiB)   random writes: one 4 KiB block at a random offset in
//	                    each of -dmsnap.bench.rand distinct random 64 KiB slots,
//	                    so that every random write is a first write to its
//	                    chunk at every chunk size tried
//	[320 MiB, 768 MiB)  dd's destination
//	[768 MiB, 1 GiB)    the COW "file": 1 MiB extents in a shuffled order

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
)

var (
	benchFlag       = flag.Bool("dmsnap.bench", false, "run TestBenchCheckpointInGuest (in the guest; go run ./qemu-tests/bench)")
	benchSeqMiB     = flag.Int("dmsnap.bench.seqmib", 16, "MiB written sequentially in 4 KiB writes")
	benchRandWrites = flag.Int("dmsnap.bench.rand", 1024, "random 4 KiB writes (at most 4096)")
	benchChunks     = flag.String("dmsnap.bench.chunks", "4,16,64", "chunk sizes to try, in KiB")
	benchReps       = flag.Int("dmsnap.bench.reps", 3, "rounds over all chunk sizes; the tables show medians and ranges")
)

const (
	benchDiskBytes = 1 << 30
	benchRandStart = 32 << 20
	benchRandSlots = 4096 // 64 KiB slots: 256 MiB
	benchSlot      = 64 << 10
	benchBigStart  = 288 << 20
	benchDDStart   = 320 << 20
	benchCowStart  = 768 << 20
	benchCowBytes  = 256 << 20
)

type benchRow struct {
	chunkKiB                        int
	rawSeq, firstSeq, reSeq         time.Duration
	rawBig, firstBig                time.Duration
	rawRand, firstRand, reRand      time.Duration
	cowBytes, metaBytes             uint64
	merge, ddChunk, dd1M            time.Duration
	seqBytes, randBytes             int64
	seqChunkCopies, randChunkCopies int
}

func TestBenchCheckpointInGuest(t *testing.T) {
	if !*benchFlag {
		t.Skip("benchmark: runs in the guest with -dmsnap.bench (go run ./qemu-tests/bench, make bench)")
	}
	testutil.RequireVM(t)
	testutil.RequireRoot(t)
	disk := testutil.TestDisks(t, 1)[0]
	dd, err := exec.LookPath("dd")
	if err != nil {
		t.Fatalf("dd, the merge baseline, is not in the guest (qemu-tests/bench adds it): %v", err)
	}
	var chunks []int
	for _, s := range strings.Split(*benchChunks, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 4 || n > 64 || n&(n-1) != 0 {
			t.Fatalf("-dmsnap.bench.chunks: %q is not a power of two in 4..64 KiB", s)
		}
		chunks = append(chunks, n)
		// The COW must hold every copied chunk, with room for metadata.
		if need := (2*(*benchSeqMiB<<20) + *benchRandWrites*n<<10) * 9 / 8; need > benchCowBytes {
			t.Fatalf("chunk %d KiB: the writes would need a %d MiB COW, there are %d", n, need>>20, benchCowBytes>>20)
		}
	}
	if *benchRandWrites < 1 || *benchRandWrites > benchRandSlots || *benchSeqMiB < 1 || *benchSeqMiB > benchRandStart>>20 {
		t.Fatalf("-dmsnap.bench.rand must be in 1..%d and -dmsnap.bench.seqmib in 1..%d", benchRandSlots, benchRandStart>>20)
	}
	c, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	resetDM(t, c)
	t.Cleanup(func() { resetDM(t, c) })
	watchdog(t, 40*time.Minute)

	dev, err := DeviceNumber(disk)
	if err != nil {
		t.Fatal(err)
	}
	size, err := DeviceSectors(disk)
	if err != nil {
		t.Fatal(err)
	}
	if size*512 < benchDiskBytes {
		t.Fatalf("%s is %d bytes, the benchmark needs %d", disk, size*512, benchDiskBytes)
	}
	// Write every block once, so that no measurement pays for the host
	// allocating blocks of the sparse image file.
	start := time.Now()
	fillPattern(t, disk, 99, 0, benchDiskBytes/blockSize)
	benchf("prefilled %d MiB in %v (%.0f MB/s, 1 MiB O_DIRECT writes)", benchDiskBytes>>20, time.Since(start).Round(time.Millisecond), mbps(benchDiskBytes, time.Since(start)))

	seq := make([]int64, *benchSeqMiB<<20/blockSize)
	for i := range seq {
		seq[i] = int64(i) * blockSize
	}
	rng := rand.New(rand.NewPCG(4, 7))
	slots := rng.Perm(benchRandSlots)[:*benchRandWrites]
	rnd := make([]int64, len(slots))
	for i, s := range slots {
		rnd[i] = benchRandStart + int64(s)*benchSlot + int64(rng.IntN(benchSlot/blockSize))*blockSize
	}
	n := benchCowBytes / (1 << 20)
	order := rand.New(rand.NewPCG(7, 7)).Perm(n)
	cow := make([]Segment, n)
	for i, j := range order {
		cow[i] = Segment{Dev: dev, Start: uint64(benchCowStart>>9 + j*(1<<20>>9)), Length: 1 << 20 >> 9}
	}

	// Warm up: the first writes after the prefill ran slower than later ones.
	benchWrites(t, disk, seq, blockSize, 1)
	big := make([]int64, *benchSeqMiB)
	for i := range big {
		big[i] = benchBigStart + int64(i)<<20
	}
	reps := max(*benchReps, 1)
	rows := make([][]benchRow, len(chunks))
	for rep := 0; rep < reps; rep++ {
		for ci, ck := range chunks {
			r := benchRow{chunkKiB: ck, seqBytes: int64(len(seq)) * blockSize, randBytes: int64(len(rnd)) * blockSize}
			r.seqChunkCopies = len(seq) * blockSize / (ck << 10)
			r.randChunkCopies = len(rnd)
			cfg := Config{Origin: dev, OriginSectors: size, Cow: cow, ChunkSectors: uint32(ck << 10 >> 9), PollInterval: 10 * time.Millisecond}
			k := newCheckpoint(t, c, cfg)
			ctx := context.Background()

			r.rawSeq = benchWrites(t, disk, seq, blockSize, 1)
			r.rawBig = benchWrites(t, disk, big, 1<<20, 1)
			r.rawRand = benchWrites(t, disk, rnd, blockSize, 2)
			if err := k.StartCheckpoint(ctx); err != nil {
				t.Fatal(err)
			}
			origin := c.NodePath(k.Config().Names.Origin)
			r.firstSeq = benchWrites(t, origin, seq, blockSize, 3)
			r.reSeq = benchWrites(t, origin, seq, blockSize, 4)
			r.firstBig = benchWrites(t, origin, big, 1<<20, 3)
			r.firstRand = benchWrites(t, origin, rnd, blockSize, 5)
			r.reRand = benchWrites(t, origin, rnd, blockSize, 6)
			st, err := k.SnapshotStatus()
			if err != nil || st.State != SnapActive {
				t.Fatalf("snapshot after the writes: %+v %v", st, err)
			}
			r.cowBytes, r.metaBytes = st.DataSectors()*512, st.Metadata*512
			if want := uint64(2*r.seqChunkCopies+r.randChunkCopies) * uint64(ck<<10); r.cowBytes != want {
				t.Errorf("chunk %d KiB: COW holds %d data bytes, want %d (one chunk per first write)", ck, r.cowBytes, want)
			}
			start := time.Now()
			if err := k.StartMerge(ctx); err != nil {
				t.Fatal(err)
			}
			if err := k.WaitMerge(ctx, nil); err != nil {
				t.Fatal(err)
			}
			r.merge = time.Since(start)
			if err := k.FinishMerge(ctx); err != nil {
				t.Fatal(err)
			}
			if err := k.Teardown(ctx); err != nil {
				t.Fatal(err)
			}
			// The baseline: dd copying as many bytes, device to device with
			// O_DIRECT, from the COW extents to a free region, with the merge's
			// I/O size (one chunk) and with 1 MiB.
			r.ddChunk = benchDD(t, dd, disk, ck<<10, r.cowBytes)
			r.dd1M = benchDD(t, dd, disk, 1<<20, r.cowBytes)
			ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
			benchf("round %d/%d, chunk %d KiB: seq raw/first/rewrite %v/%v/%v, 1 MiB seq raw/first %v/%v, random %v/%v/%v; COW %.2f MiB, merge %v, dd bs=%dK %v, dd bs=1M %v",
				rep+1, reps, ck, ms(r.rawSeq), ms(r.firstSeq), ms(r.reSeq), ms(r.rawBig), ms(r.firstBig), ms(r.rawRand), ms(r.firstRand), ms(r.reRand),
				float64(r.cowBytes)/(1<<20), ms(r.merge), ck, ms(r.ddChunk), ms(r.dd1M))
			rows[ci] = append(rows[ci], r)
		}
	}

	fmt.Println()
	fmt.Printf("DMSNAP-BENCH|4 KiB O_DIRECT writes, MB/s, and in brackets the ratio to the raw device in the same round; median of %d rounds, ratio range after it. Sequential: %d MiB; random: %d writes over 256 MiB, each to its own chunk.\n", reps, *benchSeqMiB, len(rnd))
	fmt.Println("DMSNAP-BENCH|")
	fmt.Println("DMSNAP-BENCH|| chunk | seq raw | seq first write | seq rewrite | random raw | random first write | random rewrite |")
	fmt.Println("DMSNAP-BENCH||---|---|---|---|---|---|---|")
	for _, rs := range rows {
		r := rs[0]
		sb, rb := r.seqBytes, r.randBytes
		fmt.Printf("DMSNAP-BENCH|| %d KiB | %.1f | %.1f (%s) | %.1f (%s) | %.2f | %.2f (%s) | %.2f (%s) |\n", r.chunkKiB,
			med(rs, func(r benchRow) float64 { return mbps(sb, r.rawSeq) }),
			med(rs, func(r benchRow) float64 { return mbps(sb, r.firstSeq) }), ratios(rs, func(r benchRow) float64 { return ratio(r.rawSeq, r.firstSeq) }),
			med(rs, func(r benchRow) float64 { return mbps(sb, r.reSeq) }), ratios(rs, func(r benchRow) float64 { return ratio(r.rawSeq, r.reSeq) }),
			med(rs, func(r benchRow) float64 { return mbps(rb, r.rawRand) }),
			med(rs, func(r benchRow) float64 { return mbps(rb, r.firstRand) }), ratios(rs, func(r benchRow) float64 { return ratio(r.rawRand, r.firstRand) }),
			med(rs, func(r benchRow) float64 { return mbps(rb, r.reRand) }), ratios(rs, func(r benchRow) float64 { return ratio(r.rawRand, r.reRand) }))
	}
	fmt.Println("DMSNAP-BENCH|")
	fmt.Printf("DMSNAP-BENCH|1 MiB O_DIRECT writes, %d MiB sequential (one write in flight; snapshot-origin splits each into chunks, whose copies and exception commits then overlap), MB/s (ratio to raw, median of %d rounds, range).\n", *benchSeqMiB, reps)
	fmt.Println("DMSNAP-BENCH|")
	fmt.Println("DMSNAP-BENCH|| chunk | 1 MiB raw | 1 MiB first write |")
	fmt.Println("DMSNAP-BENCH||---|---|---|")
	for _, rs := range rows {
		sb := rs[0].seqBytes
		fmt.Printf("DMSNAP-BENCH|| %d KiB | %.1f | %.1f (%s) |\n", rs[0].chunkKiB,
			med(rs, func(r benchRow) float64 { return mbps(sb, r.rawBig) }),
			med(rs, func(r benchRow) float64 { return mbps(sb, r.firstBig) }), ratios(rs, func(r benchRow) float64 { return ratio(r.rawBig, r.firstBig) }))
	}
	fmt.Println("DMSNAP-BENCH|")
	fmt.Printf("DMSNAP-BENCH|Merge of the COW those writes left vs dd copying the same bytes (O_DIRECT, device to device, COW region to a free region), MB/s; merge/dd ratios are medians of %d rounds with their range.\n", reps)
	fmt.Println("DMSNAP-BENCH|")
	fmt.Println("DMSNAP-BENCH|| chunk | COW data (+ metadata) | merge time | merge | dd bs=chunk | dd bs=1M | merge / dd bs=chunk | merge / dd bs=1M |")
	fmt.Println("DMSNAP-BENCH||---|---|---|---|---|---|---|---|")
	for _, rs := range rows {
		r := rs[0]
		b := int64(r.cowBytes)
		fmt.Printf("DMSNAP-BENCH|| %d KiB | %.2f MiB (+%.2f) | %.2f s | %.1f | %.1f | %.1f | %s | %s |\n", r.chunkKiB,
			float64(r.cowBytes)/(1<<20), float64(r.metaBytes)/(1<<20),
			med(rs, func(r benchRow) float64 { return r.merge.Seconds() }),
			med(rs, func(r benchRow) float64 { return mbps(b, r.merge) }),
			med(rs, func(r benchRow) float64 { return mbps(b, r.ddChunk) }),
			med(rs, func(r benchRow) float64 { return mbps(b, r.dd1M) }),
			ratios(rs, func(r benchRow) float64 { return ratio(r.ddChunk, r.merge) }),
			ratios(rs, func(r benchRow) float64 { return ratio(r.dd1M, r.merge) }))
	}
	fmt.Println("DMSNAP-BENCH|")
}

func med(rs []benchRow, f func(benchRow) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// ratios formats the median ratio and, over several rounds, its range.
func ratios(rs []benchRow, f func(benchRow) float64) string {
	m := med(rs, f)
	if len(rs) == 1 {
		return fmt.Sprintf("%.2fx", m)
	}
	lo, hi := f(rs[0]), f(rs[0])
	for _, r := range rs[1:] {
		lo, hi = min(lo, f(r)), max(hi, f(r))
	}
	return fmt.Sprintf("%.2fx, %.2f–%.2f", m, lo, hi)
}

func benchf(format string, args ...any) {
	fmt.Printf("DMSNAP-BENCH-LOG "+format+"\n", args...)
}

func mbps(bytes int64, d time.Duration) float64 { return float64(bytes) / 1e6 / d.Seconds() }

// ratio is the throughput of the measured run relative to the baseline.
func ratio(base, measured time.Duration) float64 { return base.Seconds() / measured.Seconds() }

// benchWrites writes size bytes at each offset of path with O_DIRECT, in
// order (one write in flight), then flushes, and returns the time taken.
func benchWrites(t *testing.T, path string, offs []int64, size int, seed uint64) time.Duration {
	t.Helper()
	d := openDirect(t, path, true)
	defer d.Close()
	buf := alignedBuf(t, size)
	for i := 0; i < size/blockSize; i++ {
		patternBlock(buf[i*blockSize:(i+1)*blockSize], seed, uint64(i))
	}
	start := time.Now()
	for _, o := range offs {
		if _, err := d.f.WriteAt(buf, o); err != nil {
			t.Fatalf("write %s at %d: %v", path, o, err)
		}
	}
	if err := d.f.Sync(); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// benchDD copies n bytes from the COW region to dd's region of disk.
func benchDD(t *testing.T, dd, disk string, bs int, n uint64) time.Duration {
	t.Helper()
	cmd := exec.Command(dd, "if="+disk, "of="+disk, fmt.Sprintf("bs=%d", bs),
		fmt.Sprintf("skip=%d", benchCowStart), fmt.Sprintf("seek=%d", benchDDStart), fmt.Sprintf("count=%d", n),
		"iflag=direct,skip_bytes,count_bytes", "oflag=direct,seek_bytes", "conv=notrunc,fsync", "status=none")
	if n > benchCowStart-benchDDStart {
		t.Fatalf("dd of %d bytes would run into the COW region", n)
	}
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return time.Since(start)
}
