//go:build linux

package dmsnap

// The rollback benchmark (docs/BENCHMARKS.md, section "restore"; issue 17
// points 2 and 6). It runs only in the guest and only when asked with
// -dmsnap.bench.restore: `go run ./qemu-tests/bench -only restore` boots the
// guest with one 4 GiB scratch disk, fio and dd, and runs this test alone.
// Its name does not start with TestVM, so the in-guest suite never selects
// it; on the host RequireVM skips it.
//
// For each layout the COW is made once, by the kernel: a checkpoint is
// taken, the workload's 4 KiB blocks are written through snapshot-origin
// (buffered, then fsync, as a filesystem's writeback sends them) and the
// tables are removed, leaving the origin changed and the COW on disk, as a
// power-off during the trial does. Then, in each round, side by side on
// the same COW, each timed from start to its final flush:
//
//   - dd bs=1M iflag=direct oflag=direct conv=fsync copying as many bytes
//     from the COW region to a free region: the sequential copy the issue
//     holds the restore to (goal: restore ≥ 0.8x of dd);
//   - Restore (the offline rollback, what PID 1 runs with
//     cpinit.merge=restore) with 1, 16 (the default) and 64 workers, table
//     read and plan included; the first restore is the real rollback, the
//     others rewrite the same bytes (the restore is idempotent);
//   - fio replaying the restore plan's I/Os (each copy's read of the COW and
//     write of its home, O_DIRECT, end_fsync) two ways: 16 threads with
//     blocking pread/pwrite (psync: what Restore's goroutines do) and one
//     thread with io_uring at queue depth 16: whether io_uring would pay
//     for this I/O pattern on this kernel and disk. The replays write fio's
//     own buffer contents, so every round ends with a Restore.
//
// After the rounds the data region is checked block by block against the
// pattern from before the checkpoint (the restore's correctness is
// TestVMRestoreMatchesMerge's; this only makes sure the figures are of a
// real rollback), and then the kernel's snapshot-merge rolls the same COW
// back once (a merge consumes the COW), for the side-by-side figure.
//
// Layouts: "sequential" (consecutive blocks written in order: the COW holds
// them in order, a metadata chunk every 256 data chunks), "scattered"
// (random distinct blocks of the data region, in random order: every copy
// is one chunk at both ends), and "scattered-big" (1 GiB of scattered
// changes, 2/3 of the data region; its merge, at ~3 ms per chunk under
// TCG, would take ~15 minutes: only with -dmsnap.bench.restore.bigmerge).
//
// Disk layout (4 GiB, /dev/vda):
//
//	[0, 1536 MiB)          the data region the workloads change
//	[1536 MiB, 2816 MiB)   the COW "file": 16 MiB extents in a shuffled order
//	[2816 MiB, 3840 MiB)   dd's destination

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
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
	"golang.org/x/sys/unix"
)

var (
	benchRestore         = flag.Bool("dmsnap.bench.restore", false, "run TestBenchRestoreInGuest (in the guest; go run ./qemu-tests/bench -only restore)")
	benchRestoreMiB      = flag.Int("dmsnap.bench.restore.mib", 256, "MiB changed in the sequential and scattered layouts")
	benchRestoreBigMiB   = flag.Int("dmsnap.bench.restore.bigmib", 1024, "MiB of scattered changes in the big layout (0: skip it)")
	benchRestoreBigMerge = flag.Bool("dmsnap.bench.restore.bigmerge", false, "also merge the big layout with the kernel (slow)")
	benchRestoreReps     = flag.Int("dmsnap.bench.restore.reps", 3, "rounds per layout (tables show medians and ranges)")
)

// Byte offsets and sizes as int64: the disk is 4 GiB, beyond a 32-bit int.
const (
	rbDataBytes int64 = 1536 << 20
	rbCowStart  int64 = 1536 << 20
	rbCowBytes  int64 = 1280 << 20
	rbCowExtent int64 = 16 << 20
	rbDDStart   int64 = 2816 << 20
	rbDDBytes   int64 = 1024 << 20
	rbDiskBytes int64 = 4096 << 20
	rbSeed            = 41
)

// rbRow is one layout's measurements; each key holds one duration per round
// (the merge: one).
type rbRow struct {
	name           string
	chunks, copies int
	bytes          int64
	t              map[string][]time.Duration
}

func TestBenchRestoreInGuest(t *testing.T) {
	if !*benchRestore {
		t.Skip("benchmark: runs in the guest with -dmsnap.bench.restore (go run ./qemu-tests/bench -only restore)")
	}
	testutil.RequireVM(t)
	testutil.RequireRoot(t)
	disk := testutil.TestDisks(t, 1)[0]
	dd := testutil.LookPath(t, "dd")
	fio := testutil.LookPath(t, "fio")
	mib, big := *benchRestoreMiB, *benchRestoreBigMiB
	if mib < 16 || mib > 1024 || big < 0 || big > 1024 {
		t.Fatalf("-dmsnap.bench.restore.mib must be in 16..1024, -dmsnap.bench.restore.bigmib in 0..1024")
	}
	c, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	resetDM(t, c)
	t.Cleanup(func() { resetDM(t, c) })
	watchdog(t, 80*time.Minute)

	dev, err := DeviceNumber(disk)
	if err != nil {
		t.Fatal(err)
	}
	size, err := DeviceSectors(disk)
	if err != nil {
		t.Fatal(err)
	}
	if size*512 < uint64(rbDiskBytes) {
		t.Fatalf("%s is %d bytes, the benchmark needs %d", disk, size*512, rbDiskBytes)
	}
	// The COW file in 16 MiB extents, shuffled: 80 linear targets. (On
	// kernel 6.1 every flush of the COW is one bio per target and the
	// merge flushes it once per batch: with 1 MiB extents a scattered
	// merge ran at 22 ms per chunk, see the setup section.)
	n := int(rbCowBytes / rbCowExtent)
	cow := make([]Segment, n)
	for i, j := range rand.New(rand.NewPCG(7, 7)).Perm(n) {
		cow[i] = Segment{Dev: dev, Start: uint64((rbCowStart + int64(j)*rbCowExtent) >> 9), Length: uint64(rbCowExtent >> 9)}
	}
	cfg := Config{Origin: dev, OriginSectors: size, Cow: cow, ChunkSectors: 8, PollInterval: 10 * time.Millisecond}

	// Write every block the copies write once, so that no measurement pays
	// for the host allocating blocks of the sparse image (the COW region is
	// written when the kernel fills it).
	start := time.Now()
	dataBlocks := uint64(rbDataBytes / blockSize)
	fillPattern(t, disk, rbSeed, 0, dataBlocks)
	fillPattern(t, disk, 99, uint64(rbDDStart/blockSize), uint64((rbDDStart+rbDDBytes)/blockSize))
	benchf("prefilled %d MiB in %v", (rbDataBytes+rbDDBytes)>>20, time.Since(start).Round(time.Millisecond))

	rng := rand.New(rand.NewPCG(rbSeed, 3))
	seq := make([]uint64, mib<<20/blockSize)
	for i := range seq {
		seq[i] = 4096 + uint64(i)
	}
	scattered := func(m int) []uint64 {
		var b []uint64
		for _, i := range rng.Perm(int(dataBlocks))[:m<<20/blockSize] {
			b = append(b, uint64(i))
		}
		return b
	}
	layouts := []struct {
		name   string
		blocks []uint64
		merge  bool
	}{
		{fmt.Sprintf("sequential %d MiB", mib), seq, true},
		{fmt.Sprintf("scattered %d MiB", mib), scattered(mib), true},
	}
	if big > 0 {
		layouts = append(layouts, struct {
			name   string
			blocks []uint64
			merge  bool
		}{fmt.Sprintf("scattered %d MiB (big)", big), scattered(big), *benchRestoreBigMerge})
	}
	ctx := context.Background()
	dir := t.TempDir()
	var rows []rbRow
	for _, l := range layouts {
		// The COW, made by the kernel.
		k := newCheckpoint(t, c, cfg)
		if err := k.StartCheckpoint(ctx); err != nil {
			t.Fatal(err)
		}
		now := expectation{base: rbSeed, overrides: map[uint64]uint64{}}
		start := time.Now()
		writeBlocks(t, c.NodePath(DefaultNames.Origin), &now, rbSeed+1, l.blocks)
		st, err := k.SnapshotStatus()
		if err != nil || st.State != SnapActive {
			t.Fatalf("%s: snapshot after the workload: %+v %v", l.name, st, err)
		}
		if err := k.Teardown(ctx); err != nil {
			t.Fatal(err)
		}
		benchf("%s: %d blocks written through snapshot-origin in %v; COW %d of %d MiB used", l.name, len(l.blocks),
			time.Since(start).Round(time.Millisecond), st.Allocated>>11, st.Total>>11)

		// The table read and plan alone, as Restore makes them (through
		// the same aligned O_DIRECT reader): the fixed part of a restore.
		f, err := os.OpenFile(disk, os.O_RDONLY|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		r := &alignedReader{f: f}
		plan, err := PlanRestore(r, cfg, 1<<20)
		r.free()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		benchf("%s: table read and plan: %v (%d reads, %d writes)", l.name, time.Since(start).Round(time.Millisecond), plan.Reads(), plan.Copies())
		if len(plan.Table.Exceptions) != len(l.blocks) {
			t.Fatalf("%s: the COW holds %d exceptions, the workload wrote %d blocks", l.name, len(plan.Table.Exceptions), len(l.blocks))
		}
		row := rbRow{name: l.name, chunks: len(plan.Table.Exceptions), copies: plan.Copies(), bytes: plan.Bytes(), t: map[string][]time.Duration{}}
		if row.bytes > rbDDBytes {
			t.Fatalf("%s: dd's region holds %d bytes, the COW %d", l.name, rbDDBytes, row.bytes)
		}
		psync, uring := rbIOLogs(t, dir, disk, plan, 16)
		restore := func(workers int) time.Duration {
			t.Helper()
			start := time.Now()
			p, err := Restore(ctx, disk, cfg, RestoreOptions{Workers: workers})
			if err != nil {
				t.Fatal(err)
			}
			d := time.Since(start)
			if p.Bytes() != row.bytes {
				t.Fatalf("restore wrote %d bytes, the plan %d", p.Bytes(), row.bytes)
			}
			return d
		}
		reps := max(*benchRestoreReps, 1)
		for rep := 0; rep < reps; rep++ {
			// Rotate the order, so that drift in the host's load favours
			// none of them; a Restore comes last in every round.
			steps := []struct {
				key string
				run func() time.Duration
			}{
				{"dd", func() time.Duration {
					return rbDD(t, dd, disk, row.bytes)
				}},
				{"fio psync x16", func() time.Duration { return rbFio(t, fio, psync, "psync", 1) }},
				{"fio io_uring qd16", func() time.Duration { return rbFio(t, fio, []string{uring}, "io_uring", 16) }},
				{"restore w1", func() time.Duration { return restore(1) }},
				{"restore w64", func() time.Duration { return restore(64) }},
			}
			for i := range steps {
				s := steps[(i+rep)%len(steps)]
				row.t[s.key] = append(row.t[s.key], s.run())
			}
			row.t["restore w16"] = append(row.t["restore w16"], restore(16))
			benchf("%s round %d/%d: %s", l.name, rep+1, reps, rbLine(row, rep))
		}
		verifyPattern(t, disk, expectation{base: rbSeed}, 0, dataBlocks)
		if l.merge {
			start := time.Now()
			k := newCheckpoint(t, c, cfg)
			mergeAll(t, k, nil)
			if err := k.Teardown(ctx); err != nil {
				t.Fatal(err)
			}
			row.t["merge"] = []time.Duration{time.Since(start)}
			benchf("%s: kernel merge %v", l.name, row.t["merge"][0].Round(time.Millisecond))
		}
		rows = append(rows, row)
	}
	rbTables(rows, *benchRestoreReps)
}

// rbIOLogs writes fio iologs replaying plan's I/Os on disk: one per
// thread for psync (reads with their writes dealt round robin) and one for
// io_uring.
func rbIOLogs(t *testing.T, dir, disk string, plan *RestorePlan, threads int) (psync []string, uring string) {
	t.Helper()
	bs := make([]strings.Builder, threads+1)
	for i := range bs {
		fmt.Fprintf(&bs[i], "fio version 2 iolog\n%s add\n%s open\n", disk, disk)
	}
	// fio has no gathered write: a write of several segments is replayed
	// as one write of its length from the read's buffer.
	for i, r := range plan.reads {
		for _, b := range []*strings.Builder{&bs[i%threads], &bs[threads]} {
			fmt.Fprintf(b, "%s read %d %d\n", disk, r.src, r.n)
			for _, w := range r.writes {
				fmt.Fprintf(b, "%s write %d %d\n", disk, w.dst, w.bytes())
			}
		}
	}
	for i := range bs {
		fmt.Fprintf(&bs[i], "%s close\n", disk)
		p := filepath.Join(dir, fmt.Sprintf("plan-%d.iolog", i))
		if err := os.WriteFile(p, []byte(bs[i].String()), 0o644); err != nil {
			t.Fatal(err)
		}
		if i < threads {
			psync = append(psync, p)
		} else {
			uring = p
		}
	}
	return psync, uring
}

// rbFio replays iologs, one fio job (thread) each, all at once, and
// returns the longest job's runtime as fio reports it (fio's own start-up,
// about a second under TCG, is not the I/O's cost).
func rbFio(t *testing.T, fio string, logs []string, engine string, depth int) time.Duration {
	t.Helper()
	args := []string{"--thread", "--disk_util=0", "--direct=1", "--ioengine=" + engine, fmt.Sprintf("--iodepth=%d", depth),
		"--end_fsync=1", "--output-format=json"}
	for i, l := range logs {
		args = append(args, fmt.Sprintf("--name=j%d", i), "--read_iolog="+l)
	}
	out, err := exec.Command(fio, args...).Output()
	if err != nil {
		t.Fatalf("fio %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var res struct {
		Jobs []struct {
			Error   int   `json:"error"`
			Runtime int64 `json:"job_runtime"` // ms
		} `json:"jobs"`
	}
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != len(logs) {
		t.Fatalf("fio %s: %d jobs, %v\n%s", strings.Join(args, " "), len(res.Jobs), err, out)
	}
	var d time.Duration
	for _, j := range res.Jobs {
		if j.Error != 0 {
			t.Fatalf("fio job: error %d", j.Error)
		}
		d = max(d, time.Duration(j.Runtime)*time.Millisecond)
	}
	return d
}

// rbDD copies n bytes from the COW region to dd's region of disk.
func rbDD(t *testing.T, dd, disk string, n int64) time.Duration {
	t.Helper()
	cmd := exec.Command(dd, "if="+disk, "of="+disk, "bs=1M",
		fmt.Sprintf("skip=%d", rbCowStart), fmt.Sprintf("seek=%d", rbDDStart), fmt.Sprintf("count=%d", n),
		"iflag=direct,skip_bytes,count_bytes", "oflag=direct,seek_bytes", "conv=notrunc,fsync", "status=none")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return time.Since(start)
}

var rbKeys = []string{"dd", "restore w1", "restore w16", "restore w64", "fio psync x16", "fio io_uring qd16", "merge"}

func rbLine(r rbRow, i int) string {
	var b strings.Builder
	for _, k := range rbKeys {
		if d := r.t[k]; len(d) > i {
			fmt.Fprintf(&b, "%s %v (%.1f MB/s); ", k, d[i].Round(time.Millisecond), mbps(r.bytes, d[i]))
		}
	}
	return b.String()
}

func rbMedian(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// rbRatio is the median of the per-round ratios base/key (a speed ratio:
// > 1 is faster than base) and their range.
func rbRatio(r rbRow, key, base string) string {
	a, b := r.t[key], r.t[base]
	if len(a) == 0 || len(b) == 0 {
		return "–"
	}
	// One run (the merge) is compared with the base's median.
	if len(a) == 1 {
		b = []time.Duration{rbMedian(b)}
	}
	var v []float64
	for i := range a {
		v = append(v, b[min(i, len(b)-1)].Seconds()/a[i].Seconds())
	}
	sort.Float64s(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	if len(v) == 1 {
		return fmt.Sprintf("%.2fx", m)
	}
	return fmt.Sprintf("%.2fx (%.2f–%.2f)", m, v[0], v[len(v)-1])
}

func rbTables(rows []rbRow, reps int) {
	p := func(format string, args ...any) { fmt.Printf("DMSNAP-BENCH|"+format+"\n", args...) }
	fmt.Println()
	p("Rolling a COW back: MB/s of changed data, median of %d rounds (merge: one run, it consumes the COW); each timed from start to its final flush. dd: bs=1M O_DIRECT copy of as many bytes, conv=fsync. restore wN: dmsnap.Restore with N workers (table read and plan included; PID 1 uses 16). fio: the restore plan's reads and writes replayed, 16 threads of psync (Restore's pattern) or one io_uring thread at depth 16.", max(reps, 1))
	p("")
	p("| COW | chunks / copies | dd | restore w1 | restore w16 | restore w64 | fio psync x16 | fio io_uring qd16 | kernel merge |")
	p("|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		cells := []string{}
		for _, k := range rbKeys {
			if len(r.t[k]) == 0 {
				cells = append(cells, "–")
				continue
			}
			cells = append(cells, fmt.Sprintf("%.1f", mbps(r.bytes, rbMedian(r.t[k]))))
		}
		p("| %s | %d / %d | %s |", r.name, r.chunks, r.copies, strings.Join(cells, " | "))
	}
	p("")
	p("Ratios, per round then median (range): speed of each relative to dd, and io_uring relative to psync threads.")
	p("")
	p("| COW | restore w16 / dd | restore w1 / dd | restore w64 / dd | merge / dd | io_uring / psync x16 | restore w16 / fio psync x16 | rollback time: restore w16 | merge |")
	p("|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		mt := "–"
		if d := r.t["merge"]; len(d) > 0 {
			mt = d[0].Round(10 * time.Millisecond).String()
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %v | %s |", r.name,
			rbRatio(r, "restore w16", "dd"), rbRatio(r, "restore w1", "dd"), rbRatio(r, "restore w64", "dd"), rbRatio(r, "merge", "dd"),
			rbRatio(r, "fio io_uring qd16", "fio psync x16"), rbRatio(r, "restore w16", "fio psync x16"),
			rbMedian(r.t["restore w16"]).Round(10*time.Millisecond), mt)
	}
	p("")
}
