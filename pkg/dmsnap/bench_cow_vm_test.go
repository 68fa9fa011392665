//go:build linux

package dmsnap

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// How much COW a trial's writes consume, by kind of write and chunk size
// (issue 9): dm-snapshot copies a chunk on the first write to any origin
// chunk, free space included, so new files cost COW as much as overwrites.
// Run in the guest by `go run ./qemu-tests/bench -only cow`; the tables are
// printed as "DMSNAP-COW|" lines.

var (
	benchCOWFlag   = flag.Bool("dmsnap.bench.cow", false, "run TestBenchCOWUseInGuest (in the guest; go run ./qemu-tests/bench -only cow)")
	benchCOWMiB    = flag.Int("dmsnap.bench.cow.mib", 16, "MiB each workload writes")
	benchCOWChunks = flag.String("dmsnap.bench.cow.chunks", "4,16,64", "chunk sizes to try, in KiB")
)

// cowWorkload writes about n bytes into the mounted filesystem at dir and
// returns the bytes it wrote.
type cowWorkload struct {
	name string
	what string
	run  func(t *testing.T, dir string, rng *rand.Rand, n int) int
}

var cowWorkloads = []cowWorkload{
	{"overwrite, random 4 KiB", "4 KiB in-place writes at random block offsets of existing files (databases), fdatasync every 64", func(t *testing.T, dir string, rng *rand.Rand, n int) int {
		files := baseFiles(dir)
		buf := make([]byte, 4096)
		w := 0
		for i := 0; w < n; i++ {
			f, err := os.OpenFile(files[rng.IntN(len(files))], os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			fi, _ := f.Stat()
			fillRand(rng, buf)
			if _, err := f.WriteAt(buf, rng.Int64N(fi.Size()/4096)*4096); err != nil {
				t.Fatal(err)
			}
			if i%64 == 63 {
				unix.Fdatasync(int(f.Fd()))
			}
			f.Close()
			w += len(buf)
		}
		return w
	}},
	{"overwrite, whole files", "files rewritten in place from start to end (an app updating its data files)", func(t *testing.T, dir string, rng *rand.Rand, n int) int {
		buf := make([]byte, 64<<10)
		w := 0
		for _, p := range baseFiles(dir) {
			if w >= n {
				break
			}
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			fi, _ := f.Stat()
			for off := int64(0); off < fi.Size() && w < n; off += int64(len(buf)) {
				fillRand(rng, buf)
				k := min(int64(len(buf)), fi.Size()-off)
				if _, err := f.WriteAt(buf[:k], off); err != nil {
					t.Fatal(err)
				}
				w += int(k)
			}
			unix.Fdatasync(int(f.Fd()))
			f.Close()
		}
		return w
	}},
	{"new files", "new 256 KiB files written into free space (downloads, caches, migrated data), fsync each", func(t *testing.T, dir string, rng *rand.Rand, n int) int {
		buf := make([]byte, 256<<10)
		w := 0
		for i := 0; w < n; i++ {
			fillRand(rng, buf)
			writeSynced(t, filepath.Join(dir, "new", fmt.Sprintf("n%04d", i)), buf)
			w += len(buf)
		}
		return w
	}},
	{"new small files", "new 4 KiB files (thumbnails, small records), fsync each", func(t *testing.T, dir string, rng *rand.Rand, n int) int {
		buf := make([]byte, 4096)
		w := 0
		for i := 0; w < n; i++ {
			fillRand(rng, buf)
			writeSynced(t, filepath.Join(dir, "small", fmt.Sprintf("d%02d/s%05d", i%64, i)), buf)
			w += len(buf)
		}
		return w
	}},
}

func fillRand(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
}

// writeSynced creates p (and its directory) holding b, fsync'ed.
func writeSynced(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func baseFiles(dir string) []string {
	var files []string
	for i := 0; i < 96; i++ {
		files = append(files, filepath.Join(dir, "base", fmt.Sprintf("d%d/f%03d", i%8, i)))
	}
	return files
}

func TestBenchCOWUseInGuest(t *testing.T) {
	if !*benchCOWFlag {
		t.Skip("a benchmark: run with -dmsnap.bench.cow (go run ./qemu-tests/bench -only cow)")
	}
	testutil.RequireVM(t)
	testutil.RequireRoot(t)
	disk := testutil.TestDisks(t, 1)[0]
	c, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resetDM(t, c)
	defer resetDM(t, c)
	dev, err := DeviceNumber(disk)
	if err != nil {
		t.Fatal(err)
	}
	size, err := DeviceSectors(disk)
	if err != nil {
		t.Fatal(err)
	}
	// The filesystem in the first 3/4 of the disk, the COW in the last
	// quarter (one segment: the extent count is not what is measured).
	fsSectors := size / 4 * 3 &^ 2047
	cow := []Segment{{Dev: dev, Start: fsSectors, Length: size - fsSectors&^2047}}
	var chunks []uint32
	for _, s := range strings.Split(*benchCOWChunks, ",") {
		kib, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || kib < 4 || kib&(kib-1) != 0 {
			t.Fatalf("-dmsnap.bench.cow.chunks: %q", s)
		}
		chunks = append(chunks, uint32(kib*2))
	}
	n := *benchCOWMiB << 20
	p := func(format string, args ...any) { fmt.Printf("DMSNAP-COW|"+format+"\n", args...) }
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	type result struct{ written, data, meta uint64 }
	res := map[string]map[uint32]result{}
	for wi, wl := range cowWorkloads {
		res[wl.name] = map[uint32]result{}
		for _, ch := range chunks {
			// A fresh filesystem with the same base files for every cell.
			rng := rand.New(rand.NewPCG(uint64(wi), uint64(ch)))
			runCmd(t, mke2fs(t), "-t", "ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", disk, fmt.Sprint(fsSectors/8))
			mount(t, disk, mnt, 0)
			buf := make([]byte, 1<<20)
			for _, f := range baseFiles(mnt) {
				fillRand(rng, buf)
				writeSynced(t, f, buf[:(256<<10)+rng.IntN(768<<10)&^4095])
			}
			unmount(t, mnt)
			k, err := New(c, Config{Origin: dev, OriginSectors: size, Cow: cow, ChunkSectors: ch})
			if err != nil {
				t.Fatal(err)
			}
			if err := k.StartCheckpoint(ctx); err != nil {
				t.Fatal(err)
			}
			mount(t, c.NodePath(DefaultNames.Origin), mnt, 0)
			written := wl.run(t, mnt, rng, n)
			unmount(t, mnt) // everything written back, journal included
			st, err := k.SnapshotStatus()
			if err != nil {
				t.Fatal(err)
			}
			if st.State != SnapActive {
				t.Fatalf("%s, chunk %d KiB: snapshot %v: the COW (%d MiB) is too small for -dmsnap.bench.cow.mib", wl.name, ch/2, st.State, (size-fsSectors)>>11)
			}
			r := result{written: uint64(written), data: st.DataSectors() * 512, meta: st.Metadata * 512}
			res[wl.name][ch] = r
			fmt.Printf("DMSNAP-COW-LOG %s, chunk %d KiB: wrote %.1f MiB, COW %.2f MiB data + %.2f MiB metadata\n", wl.name, ch/2, mib(r.written), mib(r.data), mib(r.meta))
			if err := k.Teardown(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	p("COW consumed per MiB written, MiB (data + dm-snapshot metadata), on ext4 (4 KiB blocks) through snapshot-origin; each cell a fresh filesystem with 96 base files (256 KiB to 1 MiB), %d MiB written, then unmounted (journal and metadata written back).", *benchCOWMiB)
	p("")
	head := "| workload |"
	sep := "|---|"
	for _, ch := range chunks {
		head += fmt.Sprintf(" chunk %d KiB |", ch/2)
		sep += "---|"
	}
	p("%s", head)
	p("%s", sep)
	for _, wl := range cowWorkloads {
		row := "| " + wl.name + " |"
		for _, ch := range chunks {
			r := res[wl.name][ch]
			row += fmt.Sprintf(" %.2f |", float64(r.data+r.meta)/float64(r.written))
		}
		p("%s", row)
	}
	p("")
	for _, wl := range cowWorkloads {
		p("- %s: %s.", wl.name, wl.what)
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
