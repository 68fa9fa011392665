package cachedisk

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
)

// These tests drive the server with qemu-io (qemu-utils): QEMU's own NBD
// client, the one the guests' disks use, through QEMU's block layer.

const imgSize = 1 << 20

// newImage makes a 1 MiB image filled with 0x11 (the durable content).
func newImage(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, bytes.Repeat([]byte{0x11}, imgSize), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// twoDisks is a machine of two fresh disks, a and b, sharing its flush
// counter.
func twoDisks(t *testing.T) (*Machine, *Disk, *Disk) {
	t.Helper()
	dir := t.TempDir()
	m := NewMachine()
	var d [2]*Disk
	for i, name := range []string{"a", "b"} {
		var err error
		if d[i], err = m.AddDisk(name, newImage(t, dir, name+".img"), filepath.Join(dir, name+".sock")); err != nil {
			t.Fatal(err)
		}
	}
	return m, d[0], d[1]
}

// qemuIO runs qemu-io on d with the commands, each -c, and returns its
// output. A last command "abort" crashes it (SIGABRT, no core file): no
// flush on the way out.
func qemuIO(t *testing.T, d *Disk, cmds ...string) string {
	t.Helper()
	q := testutil.LookPath(t, "qemu-io")
	testutil.LookPath(t, "stdbuf")
	// -t writeback: qemu-io's default, writethrough, makes every write
	// FUA.
	args := []string{"-f", "raw", "-t", "writeback"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, d.URI())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// ulimit -c 0: abort leaves no core file behind; stdbuf -oL: its
	// output is not lost in a stdio buffer at the abort.
	cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", `ulimit -c 0; exec stdbuf -oL "$0" "$@"`, q}, args...)...)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	aborted := len(cmds) > 0 && cmds[len(cmds)-1] == "abort"
	if err != nil && !aborted || err == nil && aborted {
		t.Fatalf("qemu-io %q: %v\n%s", cmds, err, out)
	}
	if strings.Contains(string(out), "failed") || strings.Contains(string(out), "error") {
		t.Fatalf("qemu-io %q:\n%s", cmds, out)
	}
	return string(out)
}

// region is a byte range of the image and the bytes it may hold.
type region struct {
	off, len int
	allowed  []byte // each a fill byte of the whole sector
}

// checkImage checks every sector of the image against the regions (0x11
// elsewhere) and returns, per region, which fill bytes occurred.
func checkImage(t *testing.T, path string, regions []region) []map[byte]int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	seen := make([]map[byte]int, len(regions))
	for s := 0; s < len(b)/SectorSize; s++ {
		sec := b[s*SectorSize : (s+1)*SectorSize]
		allowed, ri := []byte{0x11}, -1
		for i, r := range regions {
			if s*SectorSize >= r.off && s*SectorSize < r.off+r.len {
				allowed, ri = r.allowed, i
			}
		}
		ok := false
		for _, a := range allowed {
			if bytes.Equal(sec, bytes.Repeat([]byte{a}, SectorSize)) {
				ok = true
				if ri >= 0 {
					if seen[ri] == nil {
						seen[ri] = map[byte]int{}
					}
					seen[ri][a]++
				}
			}
		}
		if !ok {
			t.Fatalf("sector %d (byte %d) holds %#x..., allowed %#x", s, s*SectorSize, sec[:4], allowed)
		}
	}
	return seen
}

// workload: flushed data, unflushed data, a FUA write and a sector written
// twice since the last flush; the reads check that the client sees the
// newest versions. It ends with abort: a crash, no flush.
var workload = []string{
	"write -P 0xaa 0 64k",
	"flush",
	"write -P 0xbb 64k 64k",
	"write -f -P 0xcc 128k 4k",
	"write -P 0xdd 192k 8k",
	"write -P 0xee 192k 4k",
	"read -P 0xaa 0 64k",
	"read -P 0xbb 64k 64k",
	"read -P 0xcc 128k 4k",
	"read -P 0xee 192k 4k",
	"read -P 0xdd 196k 4k",
	"read -P 0x11 200k 4k",
	"abort",
}

// TestNBDQemuIODropAll: after the crash, a DropAll cut leaves exactly the
// flushed and the FUA data.
func TestNBDQemuIODropAll(t *testing.T) {
	dir := t.TempDir()
	m := NewMachine()
	d, err := m.AddDisk("disk", newImage(t, dir, "disk.img"), filepath.Join(dir, "disk.sock"))
	if err != nil {
		t.Fatal(err)
	}
	out := qemuIO(t, d, workload...)
	if n := strings.Count(out, "read "); n != 6 {
		t.Fatalf("qemu-io did %d reads, want 6:\n%s", n, out)
	}
	if got := m.Log(); len(got) != 1 || got[0] != (FlushRecord{Seq: 1, Disk: "disk", Sectors: 128}) {
		t.Fatalf("flush log %v, want one flush of 128 sectors", got)
	}
	// 64k..128k (128 sectors), 192k..200k (16; 8 of them twice).
	if n := d.CachedSectors(); n != 128+16 {
		t.Fatalf("cache holds %d sectors, want 144 (the FUA write must not be cached)", n)
	}
	res, err := m.Cut(DropAll, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cut: %+v", res)
	checkImage(t, d.Image, []region{
		{0, 64 << 10, []byte{0xaa}},
		{128 << 10, 4 << 10, []byte{0xcc}},
	})
}

// TestNBDQemuIOSubset: after the same crash, a Subset cut leaves each cached
// sector durable or at one of its versions (never an older version than the
// FUA or the flush made durable); over seeds both kept and dropped sectors
// occur, and each version of the twice-written sectors.
func TestNBDQemuIOSubset(t *testing.T) {
	total := make([]map[byte]int, 5)
	for seed := uint64(1); seed <= 6; seed++ {
		dir := t.TempDir()
		m := NewMachine()
		d, err := m.AddDisk("disk", newImage(t, dir, "disk.img"), filepath.Join(dir, "disk.sock"))
		if err != nil {
			t.Fatal(err)
		}
		qemuIO(t, d, workload...)
		res, err := m.Cut(Subset, seed)
		if err != nil {
			t.Fatal(err)
		}
		r := res["disk"]
		if r.Cached != 144 || r.Persisted == 0 || r.Persisted == r.Cached {
			t.Errorf("seed %d: %+v: want some of the 144 cached sectors kept, not all", seed, r)
		}
		seen := checkImage(t, d.Image, []region{
			{0, 64 << 10, []byte{0xaa}},
			{64 << 10, 64 << 10, []byte{0x11, 0xbb}},
			{128 << 10, 4 << 10, []byte{0xcc}},
			{192 << 10, 4 << 10, []byte{0x11, 0xdd, 0xee}},
			{196 << 10, 4 << 10, []byte{0x11, 0xdd}},
		})
		for i, s := range seen {
			if total[i] == nil {
				total[i] = map[byte]int{}
			}
			for k, v := range s {
				total[i][k] += v
			}
		}
	}
	if len(total[1]) != 2 || len(total[3]) != 3 {
		t.Errorf("over 6 seeds: unflushed region %v, twice-written region %v: want every allowed state to occur", total[1], total[3])
	}
	t.Logf("states seen: unflushed %v, twice-written %v", total[1], total[3])
}

// TestNBDCutAtFlush: two disks share the flush counter; the cut at flush 3
// stops the third flush before it is performed or acknowledged (qemu-io
// waits for it until killed), and DropAll then keeps what the first two made
// durable.
func TestNBDCutAtFlush(t *testing.T) {
	m, a, b := twoDisks(t)
	m.CutAtFlush(3)
	qemuIO(t, a, "write -P 0xaa 0 4k", "flush", "abort")
	qemuIO(t, b, "write -P 0xbb 0 8k", "flush", "abort")
	if a.Flushes() != 1 || b.Flushes() != 1 || m.Flushes() != 2 {
		t.Fatalf("flushes: a %d b %d machine %d", a.Flushes(), b.Flushes(), m.Flushes())
	}
	select {
	case <-m.Reached():
		t.Fatal("cut reached before flush 3")
	default:
	}
	// Flush 3 hangs: qemu-io waits for its reply until we kill it.
	q := testutil.LookPath(t, "qemu-io")
	cmd := exec.Command(testutil.LookPath(t, "stdbuf"), "-oL", q, "-f", "raw", "-t", "writeback",
		"-c", "write -P 0xcc 4k 4k", "-c", "flush", "-c", "write -P 0xdd 8k 4k", a.URI())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-m.Reached():
	case err := <-exited:
		t.Fatalf("qemu-io exited (%v) before flush 3 arrived:\n%s", err, out.String())
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("flush 3 never arrived:\n%s", out.String())
	}
	select {
	case err := <-exited:
		t.Fatalf("qemu-io went on past the cut flush (exit %v):\n%s", err, out.String())
	case <-time.After(500 * time.Millisecond):
	}
	cmd.Process.Kill()
	<-exited
	if o := out.String(); !strings.Contains(o, "wrote 4096/4096 bytes at offset 4096") || strings.Contains(o, "offset 8192") {
		t.Fatalf("qemu-io should have written at 4096, then waited on the flush:\n%s", o)
	}
	if got, want := fmt.Sprint(m.Log()), "[flush 1 a 8 sectors flush 2 b 16 sectors]"; got != want {
		t.Fatalf("flush log %s, want %s", got, want)
	}
	if m.Flushes() != 3 {
		t.Fatalf("%d flushes arrived, want 3", m.Flushes())
	}
	res, err := m.Cut(DropAll, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res["a"].Cached != 8 || res["b"].Cached != 0 {
		t.Fatalf("cut: %+v (want a's unflushed 4k cached)", res)
	}
	checkImage(t, a.Image, []region{{0, 4 << 10, []byte{0xaa}}})
	checkImage(t, b.Image, []region{{0, 8 << 10, []byte{0xbb}}})
}

// TestNBDCutAtDiskFlush: the cut counted on one disk alone: disk b's second
// flush, whatever a flushed before and in between (the global count would
// be 4 here). CutWhere names it.
func TestNBDCutAtDiskFlush(t *testing.T) {
	m, a, b := twoDisks(t)
	m.CutAtDiskFlush("b", 2)
	qemuIO(t, a, "write -P 0xaa 0 4k", "flush", "abort")
	qemuIO(t, b, "write -P 0xbb 0 4k", "flush", "abort")
	qemuIO(t, a, "write -P 0xab 4k 4k", "flush", "abort")
	select {
	case <-m.Reached():
		t.Fatal("cut reached before b's second flush")
	default:
	}
	if d, n := m.CutWhere(); d != "" || n != 0 {
		t.Fatalf("CutWhere before the cut: %q %d", d, n)
	}
	qemuIOUntilCut(t, m, b, "b's second flush", "write -P 0xbc 4k 4k", "flush")
	if d, n := m.CutWhere(); d != "b" || n != 2 {
		t.Fatalf("CutWhere: %q %d, want b 2", d, n)
	}
	if m.Flushes() != 4 {
		t.Fatalf("%d flushes arrived on the machine, want 4", m.Flushes())
	}
	if _, err := m.Cut(DropAll, 0); err != nil {
		t.Fatal(err)
	}
	checkImage(t, b.Image, []region{{0, 4 << 10, []byte{0xbb}}, {4 << 10, 4 << 10, []byte{0x11}}})
}

// TestNBDCutAtDiskDirtyFlush: counted on flushes with data only, the cut
// skips a flush that finds the cache empty and stops at the second flush
// that has something to write back; DirtyFlushes counts only those.
func TestNBDCutAtDiskDirtyFlush(t *testing.T) {
	m, a, _ := twoDisks(t)
	m.CutAtDiskDirtyFlush("a", 2)
	// The second flush has nothing to write (QEMU may not even send it);
	// either way it must not count.
	qemuIO(t, a, "write -P 0xaa 0 4k", "flush", "flush", "abort")
	select {
	case <-m.Reached():
		t.Fatal("cut reached at a flush with an empty cache")
	default:
	}
	if a.DirtyFlushes() != 1 {
		t.Fatalf("DirtyFlushes %d, want 1 (all flushes: %d)", a.DirtyFlushes(), m.Flushes())
	}
	qemuIOUntilCut(t, m, a, "the second flush with data", "flush", "write -P 0xbb 4k 4k", "flush")
	if a.DirtyFlushes() != 2 {
		t.Fatalf("DirtyFlushes %d, want 2", a.DirtyFlushes())
	}
	res, err := m.Cut(DropAll, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res["a"].Cached != 8 {
		t.Fatalf("cut: %+v (want the unflushed 4k cached)", res)
	}
	checkImage(t, a.Image, []region{{0, 4 << 10, []byte{0xaa}}})
}

// qemuIOUntilCut runs qemu-io on d with cmds, waits until the machine's
// armed cut is reached (what names the flush it waits for), then kills
// qemu-io as the power cut would: the flush is never answered.
func qemuIOUntilCut(t *testing.T, m *Machine, d *Disk, what string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "raw", "-t", "writeback"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	cmd := exec.Command(testutil.LookPath(t, "qemu-io"), append(args, d.URI())...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-m.Reached():
	case err := <-exited:
		t.Fatalf("qemu-io exited (%v) before %s arrived", err, what)
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("%s never arrived", what)
	}
	cmd.Process.Kill()
	<-exited
}
