//go:build linux

package dmsnap

// The checkpoint benchmark (docs/BENCHMARKS.md, "pkg/dmsnap: checkpoint write
// cost and merge throughput"). It runs only in the guest and only when asked
// with -dmsnap.bench: `go run ./qemu-tests/bench` (make bench) boots the guest
// with a 1 GiB scratch disk, fio and dd, and runs this test alone. Its name
// does not start with TestVM, so the in-guest suite (-test.run=^TestVM, where
// a skip fails) never selects it; on the host RequireVM skips it.
//
// For each round and chunk size, on the same disk in the same boot:
//
//   - write+fsync at depth 1 on the raw device (the cost of a flush);
//   - fio (O_DIRECT 4 KiB writes, one job at a time, replaying a list of
//     offsets) on the raw device: sequential writes at queue depth 1 and
//     -dmsnap.bench.qd;
//   - checkpoint A: the same writes, same offsets, through snapshot-origin
//     (first writes: each chunk is copied out once), then again (rewrites);
//     then the merge of that COW (consecutive chunks: the best case) and dd
//     copying as many bytes;
//   - the same for the random writes, with checkpoint B (one write per
//     distinct chunk: the scattered COW, the worst case for the merge).
//
// It prints markdown tables with ratios (ours / raw, merge / dd) on lines
// starting with "DMSNAP-BENCH|".
//
// Disk layout (1 GiB, /dev/vda):
//
//	[0, S)              sequential writes at depth 1 (S = -dmsnap.bench.seqmib)
//	[S, 2S)             sequential writes at depth -dmsnap.bench.qd
//	[32 MiB, 288 MiB)   random writes: one 4 KiB block at a random offset in
//	                    each of 2 x -dmsnap.bench.rand distinct random 64 KiB
//	                    slots (the first half at depth 1, the rest deep), so
//	                    that every random write is a first write to its chunk
//	                    at every chunk size tried
//	[288 MiB, 289 MiB)  write+fsync
//	[320 MiB, 768 MiB)  dd's destination
//	[768 MiB, 1 GiB)    the COW "file": 1 MiB extents in a shuffled order

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
)

var (
	benchFlag       = flag.Bool("dmsnap.bench", false, "run TestBenchCheckpointInGuest (in the guest; go run ./qemu-tests/bench)")
	benchSeqMiB     = flag.Int("dmsnap.bench.seqmib", 16, "MiB written sequentially in 4 KiB writes, at each queue depth")
	benchRandWrites = flag.Int("dmsnap.bench.rand", 512, "random 4 KiB writes at each queue depth (at most 2048)")
	benchChunks     = flag.String("dmsnap.bench.chunks", "4,16,64", "chunk sizes to try, in KiB")
	benchReps       = flag.Int("dmsnap.bench.reps", 3, "rounds over all chunk sizes; the tables show medians and ranges")
	benchQD         = flag.Int("dmsnap.bench.qd", 32, "the deep queue depth")
	benchEngine     = flag.String("dmsnap.bench.ioengine", "libaio", "fio ioengine for all writes")
	benchModParams  = flag.String("dmsnap.bench.modparams", "", "module parameters to set first, e.g. dm_mod/kcopyd_subjob_size_kb=1024,dm_snapshot/snapshot_copy_throttle=50")
)

const (
	benchDiskBytes = 1 << 30
	benchRandStart = 32 << 20
	benchRandSlots = 4096 // 64 KiB slots: 256 MiB
	benchSlot      = 64 << 10
	benchSyncStart = 288 << 20
	benchSyncN     = 256
	benchDDStart   = 320 << 20
	benchCowStart  = 768 << 20
	benchCowBytes  = 256 << 20
)

// benchParams are the module parameters that could change the merge or
// the copy-out, logged at the start.
var benchParams = []string{"dm_snapshot/snapshot_copy_throttle", "dm_snapshot/snapshot_cow_threshold", "dm_mod/kcopyd_subjob_size_kb"}

// fioRes is one fio job's write result.
type fioRes struct {
	bw       float64 // bytes/s
	iops     float64
	p50, p99 float64 // latency from submission to completion, ns
	syncLat  float64 // mean fsync latency, ns (write+fsync job only)
}

// mergeRes is one merge and its dd baselines.
type mergeRes struct {
	cowBytes, metaBytes  uint64
	chunks, batches      int
	merge, ddChunk, dd1M time.Duration
}

type benchRow struct {
	chunkKiB int
	w        map[string]fioRes // "raw seq 1", "first rand 32", "re seq 1", ..., "fsync"; raw bw: mean of before and after
	m        [3]mergeRes       // sequential COW, scattered COW, one chunk
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
	fio, err := exec.LookPath("fio")
	if err != nil {
		t.Fatalf("fio is not in the guest (qemu-tests/bench adds it): %v", err)
	}
	nr, qd := *benchRandWrites, *benchQD
	// fio replaying an iolog does not account the last iodepth-1
	// completions, so each job needs well more writes than the depth.
	if qd < 2 || qd > 256 || nr < 4*qd || nr > benchRandSlots/2 || *benchSeqMiB < 1 || 2**benchSeqMiB > benchRandStart>>20 {
		t.Fatalf("-dmsnap.bench.qd must be in 2..256, -dmsnap.bench.rand in 4*qd..%d, -dmsnap.bench.seqmib in 1..%d", benchRandSlots/2, benchRandStart>>21)
	}
	var chunks []int
	for _, s := range strings.Split(*benchChunks, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 4 || n > 64 || n&(n-1) != 0 {
			t.Fatalf("-dmsnap.bench.chunks: %q is not a power of two in 4..64 KiB", s)
		}
		chunks = append(chunks, n)
		if need := (2*nr*n<<10 + 2*(*benchSeqMiB<<20)) * 9 / 8; need > benchCowBytes {
			t.Fatalf("chunk %d KiB: the writes would need a %d MiB COW, there are %d", n, need>>20, benchCowBytes>>20)
		}
	}
	for _, kv := range strings.Split(*benchModParams, ",") {
		if p, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
			if err := os.WriteFile("/sys/module/"+filepath.Dir(p)+"/parameters/"+filepath.Base(p), []byte(v), 0); err != nil {
				t.Fatalf("-dmsnap.bench.modparams: %v", err)
			}
		} else if kv != "" {
			t.Fatalf("-dmsnap.bench.modparams: %q is not module/param=value", kv)
		}
	}
	var params []string
	for _, p := range benchParams {
		b, err := os.ReadFile("/sys/module/" + filepath.Dir(p) + "/parameters/" + filepath.Base(p))
		params = append(params, fmt.Sprintf("%s=%s", p, strings.TrimSpace(string(b))))
		if err != nil {
			params[len(params)-1] = fmt.Sprintf("%s: %v", p, err)
		}
	}
	benchf("module parameters: %s", strings.Join(params, ", "))

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

	// The offsets: sequential at depth 1 and deep, random at depth 1 and deep.
	seqN := *benchSeqMiB << 20 / blockSize
	offs := map[string][]int64{}
	for i := 0; i < 2*seqN; i++ {
		k := "seq 1"
		if i >= seqN {
			k = "seq " + strconv.Itoa(qd)
		}
		offs[k] = append(offs[k], int64(i)*blockSize)
	}
	rng := rand.New(rand.NewPCG(4, 7))
	for i, s := range rng.Perm(benchRandSlots)[:2*nr] {
		k := "rand 1"
		if i >= nr {
			k = "rand " + strconv.Itoa(qd)
		}
		offs[k] = append(offs[k], benchRandStart+int64(s)*benchSlot+int64(rng.IntN(benchSlot/blockSize))*blockSize)
	}
	n := benchCowBytes / (1 << 20)
	order := rand.New(rand.NewPCG(7, 7)).Perm(n)
	cow := make([]Segment, n)
	for i, j := range order {
		cow[i] = Segment{Dev: dev, Start: uint64(benchCowStart>>9 + j*(1<<20>>9)), Length: 1 << 20 >> 9}
	}
	dir := t.TempDir()
	// job is one fio job: name, offsets ("seq 1", "rand 32", ...) written on dev.
	type job struct{ name, offs, dev string }
	runFio := func(jobs ...job) map[string]fioRes {
		t.Helper()
		args := []string{"--output-format=json", "--thread", "--disk_util=0", "--direct=1", "--ioengine=" + *benchEngine,
			"--stonewall", "--end_fsync=1", "--lat_percentiles=1"}
		for _, j := range jobs {
			args = append(args, "--name="+j.name)
			if j.offs == "fsync" {
				args = append(args, "--filename="+j.dev, "--rw=write", "--bs=4k", "--iodepth=1", "--fsync=1",
					fmt.Sprintf("--offset=%d", benchSyncStart), fmt.Sprintf("--size=%d", benchSyncN*blockSize))
				continue
			}
			depth := strings.Fields(j.offs)[1]
			log := filepath.Join(dir, strings.ReplaceAll(j.name, " ", "_")+".iolog")
			var b strings.Builder
			fmt.Fprintf(&b, "fio version 2 iolog\n%s add\n%s open\n", j.dev, j.dev)
			for _, o := range offs[j.offs] {
				fmt.Fprintf(&b, "%s write %d %d\n", j.dev, o, blockSize)
			}
			fmt.Fprintf(&b, "%s close\n", j.dev)
			if err := os.WriteFile(log, []byte(b.String()), 0o644); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--read_iolog="+log, "--iodepth="+depth)
		}
		return fioRun(t, fio, args, len(jobs))
	}
	rawJobs := func(prefix string, kinds ...string) []job {
		var js []job
		for _, kind := range kinds {
			for _, d := range []int{1, qd} {
				o := fmt.Sprintf("%s %d", kind, d)
				js = append(js, job{prefix + o, o, disk})
			}
		}
		return js
	}

	// Warm up (the first writes after the prefill ran slower than later
	// ones), and check which of libaio and io_uring this fio and kernel run.
	for _, e := range []string{"libaio", "io_uring"} {
		out, err := exec.Command(fio, "--name=probe", "--filename="+disk, "--direct=1", "--ioengine="+e, "--iodepth=8",
			"--rw=randwrite", "--bs=4k", "--size=1M", fmt.Sprintf("--offset=%d", benchSyncStart), "--thread", "--minimal").CombinedOutput()
		if err != nil {
			benchf("fio ioengine %s fails here: %v %s", e, err, bytes.TrimSpace(out))
		} else {
			benchf("fio ioengine %s works", e)
		}
	}
	runFio(rawJobs("warmup ", "seq", "rand")...)

	reps := max(*benchReps, 1)
	rows := make([][]benchRow, len(chunks))
	ctx := context.Background()
	for rep := 0; rep < reps; rep++ {
		for ci, ck := range chunks {
			r := benchRow{chunkKiB: ck, w: runFio(job{"fsync", "fsync", disk})}
			cfg := Config{Origin: dev, OriginSectors: size, Cow: cow, ChunkSectors: uint32(ck << 10 >> 9), PollInterval: 10 * time.Millisecond}
			// "one": a single 4 KiB write, for the merge's fixed cost.
			for mi, kind := range []string{"seq", "rand", "one"} {
				// The raw device, then through the checkpoint, same offsets.
				if kind != "one" {
					for name, res := range runFio(rawJobs("raw ", kind)...) {
						r.w[name] = res
					}
				}
				k := newCheckpoint(t, c, cfg)
				if err := k.StartCheckpoint(ctx); err != nil {
					t.Fatal(err)
				}
				origin := c.NodePath(k.Config().Names.Origin)
				var js []job
				written := []int64{0}
				if kind == "one" {
					d := openDirect(t, origin, true)
					if _, err := d.f.WriteAt(alignedBuf(t, blockSize), 0); err != nil {
						t.Fatal(err)
					}
					d.Close()
				} else {
					written = nil
					for _, pre := range []string{"first ", "re "} {
						for _, d := range []int{1, qd} {
							o := fmt.Sprintf("%s %d", kind, d)
							js = append(js, job{pre + o, o, origin})
							if pre == "first " {
								written = append(written, offs[o]...)
							}
						}
					}
					for name, res := range runFio(js...) {
						r.w[name] = res
					}
				}
				st, err := k.SnapshotStatus()
				if err != nil || st.State != SnapActive {
					t.Fatalf("snapshot after the writes: %+v %v", st, err)
				}
				m := mergeRes{cowBytes: st.DataSectors() * 512, metaBytes: st.Metadata * 512}
				m.chunks, m.batches = mergeBatches(written, ck<<10)
				if want := uint64(m.chunks) * uint64(ck<<10); m.cowBytes != want {
					t.Errorf("chunk %d KiB, %s: COW holds %d data bytes, want %d (one chunk per first write)", ck, kind, m.cowBytes, want)
				}
				start := time.Now()
				if err := k.StartMerge(ctx); err != nil {
					t.Fatal(err)
				}
				if err := k.WaitMerge(ctx, nil); err != nil {
					t.Fatal(err)
				}
				m.merge = time.Since(start)
				if err := k.FinishMerge(ctx); err != nil {
					t.Fatal(err)
				}
				if err := k.Teardown(ctx); err != nil {
					t.Fatal(err)
				}
				// The raw device again: the baseline is the mean of the runs
				// right before and right after, so that drift in the host's
				// load shows in neither direction.
				if kind != "one" {
					after := runFio(rawJobs("raw after ", kind)...)
					for _, d := range []int{1, qd} {
						o := fmt.Sprintf("%s %d", kind, d)
						b := r.w["raw "+o]
						b.bw = (b.bw + after["raw after "+o].bw) / 2
						b.iops = b.bw / blockSize
						r.w["raw "+o] = b
					}
				}
				// The baseline: dd copying as many bytes, device to device
				// with O_DIRECT, from the COW extents to a free region, with
				// the merge's I/O size (one chunk) and with 1 MiB.
				m.ddChunk = benchDD(t, dd, disk, ck<<10, m.cowBytes)
				m.dd1M = benchDD(t, dd, disk, 1<<20, m.cowBytes)
				r.m[mi] = m
			}
			ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
			var sb strings.Builder
			for _, k := range []string{"seq 1", "seq " + strconv.Itoa(qd), "rand 1", "rand " + strconv.Itoa(qd)} {
				fmt.Fprintf(&sb, " %s: %.1f/%.1f/%.1f;", k, r.w["raw "+k].bw/1e6, r.w["first "+k].bw/1e6, r.w["re "+k].bw/1e6)
			}
			benchf("round %d/%d, chunk %d KiB, MB/s raw/first/rewrite:%s write+fsync %.2f ms; merge seq %v (%d batches), dd %v/%v; merge scattered %v (%d batches), dd %v/%v; merge of one chunk %v",
				rep+1, reps, ck, sb.String(), r.w["fsync"].syncLat/1e6+r.w["fsync"].p50/1e6,
				ms(r.m[0].merge), r.m[0].batches, ms(r.m[0].ddChunk), ms(r.m[0].dd1M), ms(r.m[1].merge), r.m[1].batches, ms(r.m[1].ddChunk), ms(r.m[1].dd1M), ms(r.m[2].merge))
			rows[ci] = append(rows[ci], r)
		}
	}
	benchTables(rows, reps, qd, nr)
}

// benchTables prints the results as markdown, on lines starting with
// DMSNAP-BENCH|.
func benchTables(rows [][]benchRow, reps, qd, nr int) {
	p := func(format string, args ...any) { fmt.Printf("DMSNAP-BENCH|"+format+"\n", args...) }
	fmt.Println()
	p("4 KiB O_DIRECT writes (fio, %s, replaying the same offsets on the raw device and through the checkpoint), MB/s, and in brackets the ratio to the raw device in the same round (raw: mean of the runs right before and right after the checkpoint); median of %d rounds, ratio range after it. Sequential: %d MiB; random: %d writes over 256 MiB, each to its own chunk; each at queue depth 1 and %d, on its own region.", *benchEngine, reps, *benchSeqMiB, nr, qd)
	p("")
	p("| chunk | QD | seq raw | seq first write | seq rewrite | random raw | random first write | random rewrite |")
	p("|---|---|---|---|---|---|---|---|")
	bw := func(k string) func(benchRow) float64 { return func(r benchRow) float64 { return r.w[k].bw / 1e6 } }
	rat := func(k, base string) func(benchRow) float64 {
		return func(r benchRow) float64 { return r.w[k].bw / r.w[base].bw }
	}
	for _, rs := range rows {
		for _, d := range []int{1, qd} {
			s, q := fmt.Sprintf("seq %d", d), fmt.Sprintf("rand %d", d)
			p("| %d KiB | %d | %.1f | %.1f (%s) | %.1f (%s) | %.2f | %.2f (%s) | %.2f (%s) |", rs[0].chunkKiB, d,
				med(rs, bw("raw "+s)), med(rs, bw("first "+s)), ratios(rs, rat("first "+s, "raw "+s)), med(rs, bw("re "+s)), ratios(rs, rat("re "+s, "raw "+s)),
				med(rs, bw("raw "+q)), med(rs, bw("first "+q)), ratios(rs, rat("first "+q, "raw "+q)), med(rs, bw("re "+q)), ratios(rs, rat("re "+q, "raw "+q)))
		}
	}
	p("")
	p("Latency of those writes from submission to completion (fio lat: slat+clat; with libaio under TCG a write can complete within io_submit, so clat alone reads ~0), median (99th percentile), ms, median over the rounds; raw: the run before the checkpoint. fsync: write+fsync at depth 1 on the raw device, %d writes, mean fsync latency (the cost of one flush).", benchSyncN)
	p("")
	p("| chunk | QD | seq raw | seq first write | seq rewrite | random raw | random first write | random rewrite | fsync |")
	p("|---|---|---|---|---|---|---|---|---|")
	lat := func(rs []benchRow, k string) string {
		return fmt.Sprintf("%.2f (%.2f)", med(rs, func(r benchRow) float64 { return r.w[k].p50 / 1e6 }), med(rs, func(r benchRow) float64 { return r.w[k].p99 / 1e6 }))
	}
	for _, rs := range rows {
		for i, d := range []int{1, qd} {
			var cells []string
			for _, kind := range []string{"seq", "rand"} {
				for _, pre := range []string{"raw ", "first ", "re "} {
					cells = append(cells, lat(rs, fmt.Sprintf("%s%s %d", pre, kind, d)))
				}
			}
			fs := ""
			if i == 0 {
				fs = fmt.Sprintf("%.2f", med(rs, func(r benchRow) float64 { return r.w["fsync"].syncLat / 1e6 }))
			}
			p("| %d KiB | %d | %s | %s |", rs[0].chunkKiB, d, strings.Join(cells, " | "), fs)
		}
	}
	p("")
	p("Merge vs dd copying the same bytes (O_DIRECT, device to device, COW region to a free region, conv=fsync), MB/s; merge/dd ratios are medians of %d rounds with their range. Sequential COW: the chunks of the sequential first writes (consecutive: merged in batches of up to one metadata area, chunk/16 exceptions); scattered: those of the random writes, one batch each; one chunk: a single 4 KiB write, the merge's fixed cost (switch to snapshot-merge, status polled every 10 ms) plus one batch. A batch = one kcopyd copy, an origin flush, a metadata write with flush+FUA.", reps)
	p("")
	p("| chunk | COW | COW data (+ metadata) | chunks / batches | merge time | per batch | merge | dd bs=chunk | dd bs=1M | merge / dd bs=chunk | merge / dd bs=1M |")
	p("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, rs := range rows {
		for mi, kind := range []string{"sequential", "scattered", "one chunk"} {
			m := rs[0].m[mi]
			b := int64(m.cowBytes)
			f := func(g func(mergeRes) float64) func(benchRow) float64 {
				return func(r benchRow) float64 { return g(r.m[mi]) }
			}
			p("| %d KiB | %s | %.0f KiB (+%.0f) | %d / %d | %.2f s | %.2f ms | %.1f | %.1f | %.1f | %s | %s |", rs[0].chunkKiB, kind,
				float64(m.cowBytes)/(1<<10), float64(m.metaBytes)/(1<<10), m.chunks, m.batches,
				med(rs, f(func(m mergeRes) float64 { return m.merge.Seconds() })),
				med(rs, f(func(m mergeRes) float64 { return m.merge.Seconds() * 1e3 / float64(m.batches) })),
				med(rs, f(func(m mergeRes) float64 { return mbps(b, m.merge) })),
				med(rs, f(func(m mergeRes) float64 { return mbps(b, m.ddChunk) })),
				med(rs, f(func(m mergeRes) float64 { return mbps(b, m.dd1M) })),
				ratios(rs, f(func(m mergeRes) float64 { return m.ddChunk.Seconds() / m.merge.Seconds() })),
				ratios(rs, f(func(m mergeRes) float64 { return m.dd1M.Seconds() / m.merge.Seconds() })))
		}
	}
	p("")
}

// fioRun runs fio with args (JSON output) and returns each job's write
// result by job name.
func fioRun(t *testing.T, fio string, args []string, njobs int) map[string]fioRes {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(fio, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Two runs hung here for minutes with the guest idle; on a hang, show
	// where fio and the devices wait instead of waiting for the watchdog.
	hung := time.AfterFunc(3*time.Minute, func() {
		fmt.Printf("fio hangs: %s\n", strings.Join(args, " "))
		for _, f := range []string{"/sys/block/vda/inflight", "/sys/block/dm-0/inflight", "/sys/block/dm-1/inflight", "/sys/block/dm-2/inflight", "/sys/block/dm-3/inflight"} {
			b, _ := os.ReadFile(f)
			fmt.Printf("%s: %s", f, b)
		}
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", cmd.Process.Pid))
		for _, task := range tasks {
			st, _ := os.ReadFile(task + "/stack")
			fmt.Printf("%s/stack:\n%s", task, st)
		}
		os.WriteFile("/proc/sysrq-trigger", []byte("w"), 0) // blocked tasks to the console
		time.Sleep(2 * time.Second)
		cmd.Process.Kill()
	})
	err := cmd.Wait()
	hung.Stop()
	if err != nil {
		t.Fatalf("fio %s: %v\n%s%s", strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	var out struct {
		Jobs []struct {
			Name  string `json:"jobname"`
			Error int    `json:"error"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
				Runtime int64 `json:"runtime"` // ms
				Lat     struct {
					Percentile map[string]float64 `json:"percentile"`
				} `json:"lat_ns"`
			} `json:"write"`
			Sync struct {
				Lat struct {
					Mean float64 `json:"mean"`
				} `json:"lat_ns"`
			} `json:"sync"`
		} `json:"jobs"`
	}
	b := stdout.Bytes()
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:] // fio may print warnings first
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("fio %s: %v\n%s", strings.Join(args, " "), err, stdout.Bytes())
	}
	res := map[string]fioRes{}
	for _, j := range out.Jobs {
		w := j.Write
		if j.Error != 0 || w.Runtime <= 0 || w.IOBytes <= 0 {
			t.Fatalf("fio job %s: error %d, %d bytes in %d ms\n%s", j.Name, j.Error, w.IOBytes, w.Runtime, stderr.Bytes())
		}
		bw := float64(w.IOBytes) / (float64(w.Runtime) / 1e3)
		res[j.Name] = fioRes{bw: bw, iops: bw / blockSize, p50: w.Lat.Percentile["50.000000"], p99: w.Lat.Percentile["99.000000"], syncLat: j.Sync.Lat.Mean}
	}
	if len(res) != njobs {
		t.Fatalf("fio ran %d jobs, want %d\n%s", len(res), njobs, stdout.Bytes())
	}
	return res
}

// mergeBatches returns how many chunks the first writes at offs (in this
// order) copied out, and in how many batches snapshot-merge copies them
// back: dm-snapshot's persistent store records the exceptions in the order
// they were allocated, chunk/16 of them per metadata area, each area
// followed by its data chunks; the merge walks each area backwards and
// copies one run of exceptions consecutive in both origin and COW chunk per
// batch (persistent_prepare_merge).
func mergeBatches(offs []int64, chunk int) (chunks, batches int) {
	perArea := chunk / 16
	seen := map[int64]bool{}
	var old []int64
	for _, o := range offs {
		if c := o / int64(chunk); !seen[c] {
			seen[c] = true
			old = append(old, c)
		}
	}
	for i, c := range old {
		// COW chunks are consecutive within an area, so a run breaks only
		// at an area boundary or where the origin chunks are not consecutive.
		if i%perArea == 0 || c != old[i-1]+1 {
			batches++
		}
	}
	return len(old), batches
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
