package fiemap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// smallReserve lets tests allocate on small images: keep 1 MiB free.
var smallReserve = AllocOptions{Reserve: 1 << 20}

func TestAllocateContiguous(t *testing.T) {
	fs := newExt4(t, 128, 4096)
	dir := fs.privateDir(".cpinit")
	cow := filepath.Join(dir, "cow")
	m, err := Allocate(cow, 32<<20, smallReserve)
	if err != nil {
		t.Fatal(err)
	}
	maj, min := fs.devNum()
	if m.Device.Major != maj || m.Device.Minor != min || m.Device.Path != fs.loop || m.Device.DMName != "" {
		t.Errorf("device %+v, want %d:%d %s", m.Device, maj, min, fs.loop)
	}
	if m.Device.Sectors != 128<<20/512 || m.FSType != "ext4" || m.BlockSize != 4096 || m.Size != 32<<20 {
		t.Errorf("map header %+v", m)
	}
	if !m.Immutable {
		t.Error("not immutable")
	}
	for _, e := range m.Extents {
		if e.Flags&FlagUnwritten == 0 {
			t.Errorf("extent %v not UNWRITTEN after fallocate", e)
		}
	}
	// 32 MiB in a fresh 128 MiB fs: a handful of extents (ext4 splits
	// unwritten extents at 32767 blocks and at block group boundaries).
	if len(m.Segments) > 4 {
		t.Errorf("%d segments for a fresh fs", len(m.Segments))
	}
	checkAgainstFilefrag(t, cow, m)

	lines := strings.Split(strings.TrimSuffix(m.DMTable(), "\n"), "\n")
	if len(lines) != len(m.Segments) {
		t.Fatalf("DMTable has %d lines for %d segments", len(lines), len(m.Segments))
	}
	want := fmt.Sprintf("0 %d linear %d:%d %d", m.Segments[0].Length, maj, min, m.Segments[0].Offset)
	if lines[0] != want {
		t.Errorf("DMTable line %q, want %q", lines[0], want)
	}

	var st unix.Stat_t
	if err := unix.Stat(cow, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o600 || st.Uid != 0 {
		t.Errorf("mode %#o uid %d, want 0600 root", st.Mode&0o7777, st.Uid)
	}
	// The pin holds: no write, no unlink, no rename, no truncate.
	if f, err := os.OpenFile(cow, os.O_WRONLY, 0); err == nil {
		f.Close()
		t.Error("immutable file opened for writing")
	}
	if err := os.Remove(cow); !isErrno(err, unix.EPERM) {
		t.Errorf("unlink: %v, want EPERM", err)
	}
	if err := os.Truncate(cow, 4096); !isErrno(err, unix.EPERM) {
		t.Errorf("truncate: %v, want EPERM", err)
	}
	// ext4 has no reflink: nobody can make the pinned blocks shared (the
	// reason xfs is refused).
	src, err := os.Open(cow)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.Create(fs.path("clone"))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err == nil {
		t.Error("FICLONE from the pinned file succeeded on ext4")
	}
	src.Close()
	dst.Close()
	if _, err := Verify(cow, m); err != nil {
		t.Errorf("Verify: %v", err)
	}
	// A record whose segments were altered, fingerprint kept, is refused.
	bad := *m
	bad.Segments = append([]Segment(nil), m.Segments...)
	bad.Segments[0].Offset += 8
	if _, err := Verify(cow, &bad); err == nil {
		t.Error("Verify accepted a tampered record")
	}
	// A record of another layout: ErrMapChanged.
	other, err := m.OnDevice(Device{Major: 1, Minor: 2, Sectors: m.Device.Sectors})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(cow, other); !errors.Is(err, ErrMapChanged) {
		t.Errorf("Verify against another device: %v, want ErrMapChanged", err)
	}

	if err := Release(cow); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(cow); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file still there after Release: %v", err)
	}
	if err := Release(cow); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if err := Release(filepath.Join(fs.mnt, "nodir", "cow")); err != nil {
		t.Errorf("Release in missing dir: %v", err)
	}
}

// TestMapPointsAtFileBytes is the end-to-end oracle: the bytes at each
// segment on the raw device are the file's bytes, for a fragmented file
// whose extents interleave with another file's.
func TestMapPointsAtFileBytes(t *testing.T) {
	fs := newExt4(t, 32, 1024, "-N", "4096", "-m", "0")
	fragment(t, fs.mnt, 3300)
	p := fs.path("data")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	const size = 2600 << 10
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	fillPattern(t, p, size, 0x5a)
	m, err := MapFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Segments) < 1000 {
		t.Fatalf("only %d segments: fragmentation did not work", len(m.Segments))
	}
	for _, e := range m.Extents {
		if e.Flags&FlagUnwritten != 0 {
			t.Fatalf("written file has unwritten extent %v", e)
		}
	}
	checkAgainstFilefrag(t, p, m)
	checkReadsSameBytes(t, m)
	if m.Immutable {
		t.Error("MapFile says immutable for a plain file")
	}
	if _, err := Verify(p, m); err == nil || !strings.Contains(err.Error(), "not immutable") {
		t.Errorf("Verify of an unpinned file: %v", err)
	}

	// Negative control for the stability tests: without the pin, e4defrag
	// moves the blocks as soon as there is room, and the fingerprint shows it.
	if _, err := exec.LookPath("e4defrag"); err == nil {
		if err := os.Remove(fs.path("filler")); err != nil {
			t.Fatal(err)
		}
		syncFS(t, fs.mnt)
		out, _ := exec.Command("e4defrag", p).CombinedOutput()
		moved, err := MapFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if moved.Fingerprint == m.Fingerprint {
			t.Errorf("e4defrag did not move an unpinned fragmented file:\n%s", out)
		}
		t.Logf("unpinned file after e4defrag: %d segments (was %d)", len(moved.Segments), len(m.Segments))
		checkReadsSameBytes(t, moved)
	}
}

// TestAllocateFragmented: fill the fs with small files, delete every other
// one, then Allocate; compare with filefrag, and write through the raw device
// at every segment (what dm-snapshot does) and check that no other file and
// no fs metadata changed.
func TestAllocateFragmented(t *testing.T) {
	fs := newExt4(t, 32, 1024, "-N", "20000", "-I", "128", "-m", "0")
	smallDir := fs.path("small")
	if err := os.Mkdir(smallDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Fill with 2-block files until full, then delete every other one.
	var names []string
	for i := 0; ; i++ {
		n := filepath.Join(smallDir, fmt.Sprintf("f%05d", i))
		if err := os.WriteFile(n, []byte(strings.Repeat(fmt.Sprintf("%08d", i), 256)), 0o644); err != nil {
			if errors.Is(err, unix.ENOSPC) {
				os.Remove(n)
				break
			}
			t.Fatal(err)
		}
		names = append(names, n)
	}
	syncFS(t, fs.mnt)
	for i := 0; i < len(names); i += 2 {
		if err := os.Remove(names[i]); err != nil {
			t.Fatal(err)
		}
	}
	syncFS(t, fs.mnt)
	sums := snapshotFiles(t, smallDir)

	var sfs unix.Statfs_t
	if err := unix.Statfs(fs.mnt, &sfs); err != nil {
		t.Fatal(err)
	}
	size := uint64(sfs.Bavail*uint64(sfs.Bsize)) - 2<<20
	size -= size % 4096
	cow := filepath.Join(fs.privateDir(".cpinit"), "cow")
	m, err := Allocate(cow, size, AllocOptions{Reserve: 1 << 20, MaxSegments: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d raw extents, %d segments for %d bytes", m.RawExtents, len(m.Segments), size)
	if len(m.Segments) < 2000 {
		t.Fatalf("only %d segments: the fs was not fragmented", len(m.Segments))
	}
	checkAgainstFilefrag(t, cow, m)

	// e4defrag would love to fix this file; immutable stops it (it needs
	// the file open for writing for EXT4_IOC_MOVE_EXT).
	if _, err := exec.LookPath("e4defrag"); err == nil {
		out, _ := exec.Command("e4defrag", "-v", cow).CombinedOutput()
		t.Logf("e4defrag: %s", strings.TrimSpace(string(out)))
		if _, err := Verify(cow, m); err != nil {
			t.Fatalf("after e4defrag: %v", err)
		}
	}

	// The COW path: write every segment through the raw device with the
	// fs unmounted, like dm-linear would, then check the fs and the files.
	fs.umount()
	checkAgainstDebugfs(t, fs.loop, "/.cpinit/cow", m)
	dev, err := os.OpenFile(m.Device.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range m.Segments {
		buf := []byte(strings.Repeat("COW!", int(s.Length*SectorSize/4)))
		if _, err := dev.WriteAt(buf, int64(s.Offset*SectorSize)); err != nil {
			t.Fatal(err)
		}
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	run(t, "e2fsck", "-f", "-n", fs.loop)
	fs.mount()
	if got := snapshotFiles(t, smallDir); !mapsEqual(sums, got) {
		t.Fatal("writing the COW segments changed other files")
	}
	if _, err := Verify(cow, m); err != nil {
		t.Fatal(err)
	}
	// UNWRITTEN: the fs still reads zeros, whatever was written below it.
	b := make([]byte, 4096)
	f, err := os.Open(cow)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if strings.Trim(string(b), "\x00") != "" {
		t.Error("unwritten COW file reads non-zero through the fs")
	}

	// MaxSegments is enforced and the refused file is removed.
	if err := Release(cow); err != nil {
		t.Fatal(err)
	}
	if _, err := Allocate(cow, size, AllocOptions{Reserve: 1 << 20, MaxSegments: 100}); err == nil || !strings.Contains(err.Error(), "segments") {
		t.Fatalf("MaxSegments not enforced: %v", err)
	}
	if _, err := os.Lstat(cow); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused file left behind: %v", err)
	}
}

// snapshotFiles returns name → content of every file in dir.
func snapshotFiles(t testing.TB, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string, len(ents))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = string(b)
	}
	return m
}

func TestMap10kExtents(t *testing.T) {
	fs := newExt4(t, 48, 1024, "-N", "1024", "-m", "0")
	fragment(t, fs.mnt, 14000)
	p := fs.path("many")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 13000<<10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	m, err := MapFile(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d raw extents, %d segments", m.RawExtents, len(m.Segments))
	if m.RawExtents < 10000 {
		t.Fatalf("only %d extents", m.RawExtents)
	}
	checkAgainstFilefrag(t, p, m)

	// Paging: a tiny batch must give the very same list.
	ff, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer ff.Close()
	for _, batch := range []uint32{1, 7, 1000} {
		got, err := readExtentsBatch(ff, batch)
		if err != nil {
			t.Fatal(err)
		}
		want := rawExtents(t, p)
		if len(got) != len(want) {
			t.Fatalf("batch %d: %d extents, want %d", batch, len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("batch %d: extent %d differs", batch, i)
			}
		}
	}
}

func TestMapHole(t *testing.T) {
	fs := newExt4(t, 16, 4096)
	for name, mk := range map[string]func(f *os.File) error{
		// data, hole, data
		"middle": func(f *os.File) error {
			if _, err := f.WriteAt(make([]byte, 8192), 0); err != nil {
				return err
			}
			_, err := f.WriteAt([]byte("x"), 65536-1)
			return err
		},
		// sparse file: nothing allocated at all
		"sparse": func(f *os.File) error { return f.Truncate(1 << 20) },
		// allocated head, unallocated tail
		"tail": func(f *os.File) error {
			if err := unix.Fallocate(int(f.Fd()), 0, 0, 8192); err != nil {
				return err
			}
			return f.Truncate(1 << 20)
		},
	} {
		p := fs.path("hole-" + name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := mk(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		checkAgainstFilefrag(t, p, nil)
		_, err = MapFile(p)
		var ee *ExtentError
		if !errors.As(err, &ee) || !strings.Contains(err.Error(), "hole") || ee.Path != p {
			t.Errorf("%s: MapFile = %v, want a hole error naming the file", name, err)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	// A file smaller than one block: the tail sector rule.
	p := fs.path("odd")
	if err := os.WriteFile(p, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := MapFile(p); err == nil || !strings.Contains(err.Error(), "multiple of 512") {
		t.Errorf("odd-sized file: %v", err)
	}
}

func TestMapUnwritten(t *testing.T) {
	fs := newExt4(t, 16, 4096)
	p := fs.path("unwritten")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 1<<20); err != nil {
		t.Fatal(err)
	}
	// Half written: the written part splits the unwritten extent.
	if _, err := f.WriteAt(make([]byte, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	f.Close()
	m, err := MapFile(p)
	if err != nil {
		t.Fatal(err)
	}
	checkAgainstFilefrag(t, p, m)
	if len(m.Extents) != 3 || m.Extents[0].Flags&FlagUnwritten == 0 || m.Extents[1].Flags&FlagUnwritten != 0 || m.Extents[2].Flags&FlagUnwritten == 0 {
		t.Errorf("extents %v, want unwritten/written/unwritten", m.Extents)
	}
	// They are physically contiguous, so one dm segment maps them.
	if len(m.Segments) != 1 {
		t.Errorf("segments %v, want 1", m.Segments)
	}

	// Preallocated past EOF (FALLOC_FL_KEEP_SIZE): FIEMAP reports those
	// blocks, the map covers only the file.
	p = fs.path("keepsize")
	f, err = os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	fillPattern(t, p, 64<<10, 3)
	m, err = MapFile(p)
	if err != nil {
		t.Fatal(err)
	}
	checkAgainstFilefrag(t, p, nil)
	if raw := rawExtents(t, p); raw[len(raw)-1].Logical+raw[len(raw)-1].Length <= 64<<10 {
		t.Fatalf("no extent past EOF to test with: %v", raw)
	}
	if last := m.Extents[len(m.Extents)-1]; last.Logical+last.Length != 64<<10 {
		t.Errorf("map not trimmed to the file: %v", m.Extents)
	}
	checkReadsSameBytes(t, m)
}

func TestUnsupportedFilesystems(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := t.TempDir()
	run(t, "mount", "-t", "tmpfs", "-o", "size=16m", "cpinit-test", mnt)
	t.Cleanup(func() { umount(t, mnt) })
	p := filepath.Join(mnt, "f")
	if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := MapFile(p)
	if !errors.Is(err, ErrUnsupportedFS) || !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "tmpfs") || !strings.Contains(err.Error(), p) {
		t.Errorf("MapFile on tmpfs: %v", err)
	}
	t.Logf("tmpfs: %v", err)
	dir := filepath.Join(mnt, "priv")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Allocate(filepath.Join(dir, "cow"), 1<<20, smallReserve); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("Allocate on tmpfs: %v", err)
	}
	// overlay over ext4: the files' blocks are on ext4, but st_dev is the
	// overlay's anonymous device and the fs may copy up; refused by magic.
	ext := newExt4(t, 16, 4096)
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(ext.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(ext.path("lower/f"), make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", "overlay", "overlay", "-o",
		"lowerdir="+ext.path("lower")+",upperdir="+ext.path("upper")+",workdir="+ext.path("work"), ext.path("merged"))
	t.Cleanup(func() { umount(t, ext.path("merged")) })
	_, err = MapFile(ext.path("merged/f"))
	if !errors.Is(err, ErrUnsupportedFS) || !strings.Contains(err.Error(), "overlay") {
		t.Errorf("MapFile on overlay: %v", err)
	}
	t.Logf("overlay: %v", err)

	// Even the raw ioctl is refused by tmpfs: the error says so.
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := readExtents(f); !isErrno(err, unix.EOPNOTSUPP) {
		t.Logf("FIEMAP on tmpfs: %v", err)
	}
}

// TestXFSReflinkShared: a reflinked copy on xfs shares its blocks with the
// original; Validate must reject both as SHARED, and MapFile refuses xfs.
func TestXFSReflinkShared(t *testing.T) {
	requireTool(t, "mkfs.xfs", "xfsprogs")
	fs := newFS(t, "xfs", 320, "-q", "-f", "-m", "reflink=1")
	a, b := fs.path("a"), fs.path("b")
	if err := os.WriteFile(a, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(b)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		t.Fatalf("FICLONE: %v", err)
	}
	// Why xfs is refused even for pinned files: an immutable file can
	// still be the *source* of a reflink, after which its blocks are shared
	// and a write through dm-linear would change the clone.
	pinned, clone := fs.path("pinned"), fs.path("clone")
	if err := os.WriteFile(pinned, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	pf, err := os.Open(pinned)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	if err := setFlags(pf, fsImmutableFl); err != nil {
		t.Fatal(err)
	}
	defer setFlags(pf, 0) // before the deferred Close
	cf, err := os.Create(clone)
	if err != nil {
		t.Fatal(err)
	}
	defer cf.Close()
	if err := unix.IoctlFileClone(int(cf.Fd()), int(pf.Fd())); err != nil {
		t.Logf("FICLONE from an immutable file refused (%v): the kernel now protects it", err)
	} else if err := Validate(pinned, 1<<20, rawExtents(t, pinned)); !errors.Is(err, ErrUnsafeExtent) {
		t.Errorf("immutable xfs file after being cloned: %v, want SHARED", err)
	}

	for _, p := range []string{a, b} {
		raw := rawExtents(t, p)
		checkAgainstFilefrag(t, p, nil)
		err := Validate(p, 1<<20, raw)
		var ee *ExtentError
		if !errors.As(err, &ee) || ee.Flags&FlagShared == 0 || !strings.Contains(err.Error(), "SHARED") {
			t.Errorf("%s: Validate = %v, want SHARED", p, err)
		}
		t.Logf("%v", err)
		if _, err := MapFile(p); !errors.Is(err, ErrUnsupportedFS) || !strings.Contains(err.Error(), "xfs") {
			t.Errorf("%s: MapFile = %v, want unsupported xfs", p, err)
		}
	}
}

// TestExtentsStable: the pinned file's extents do not move across heavy
// churn of other files, e4defrag, unmount, e2fsck -f (repairing mode),
// remount.
func TestExtentsStable(t *testing.T) {
	fs := newExt4(t, 96, 4096)
	cow := filepath.Join(fs.privateDir(".cpinit"), "cow")
	m, err := Allocate(cow, 24<<20, smallReserve)
	if err != nil {
		t.Fatal(err)
	}
	churn := fs.path("churn")
	if err := os.Mkdir(churn, 0o755); err != nil {
		t.Fatal(err)
	}
	// Write and delete lots of files of mixed sizes, three rounds, filling
	// the fs up to ENOSPC in the last one.
	buf := make([]byte, 256<<10)
	for round := 0; round < 3; round++ {
		for i := 0; i < 600; i++ {
			n := filepath.Join(churn, fmt.Sprintf("r%d-%d", round, i))
			sz := (i*7919)%len(buf) + 1
			if round == 2 {
				sz = len(buf)
			}
			if err := os.WriteFile(n, buf[:sz], 0o644); err != nil {
				if errors.Is(err, unix.ENOSPC) {
					break
				}
				t.Fatal(err)
			}
		}
		syncFS(t, fs.mnt)
		ents, _ := os.ReadDir(churn)
		for i, e := range ents {
			if i%3 != 0 {
				os.Remove(filepath.Join(churn, e.Name()))
			}
		}
		if _, err := Verify(cow, m); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	// e4defrag would move the blocks with EXT4_IOC_MOVE_EXT; immutable
	// forbids it.
	if _, err := exec.LookPath("e4defrag"); err == nil {
		out, _ := exec.Command("e4defrag", cow).CombinedOutput()
		t.Logf("e4defrag: %s", strings.TrimSpace(string(out)))
	}
	if _, err := Verify(cow, m); err != nil {
		t.Fatalf("after e4defrag: %v", err)
	}
	for i := 0; i < 2; i++ {
		fs.umount()
		checkAgainstDebugfs(t, fs.loop, "/.cpinit/cow", m)
		// -y: let e2fsck change whatever it wants; it must find nothing.
		run(t, "e2fsck", "-f", "-y", fs.loop)
		fs.mount()
		got, err := Verify(cow, m)
		if err != nil {
			t.Fatalf("after remount %d: %v", i, err)
		}
		if got.DMTable() != m.DMTable() {
			t.Fatal("dm table changed")
		}
		for _, e := range got.Extents {
			if e.Flags&FlagUnwritten == 0 {
				t.Fatalf("extent %v no longer unwritten", e)
			}
		}
	}
	checkAgainstFilefrag(t, cow, m)
}

// TestAllocateResume simulates crashes at each step of Allocate and Release.
func TestAllocateResume(t *testing.T) {
	fs := newExt4(t, 64, 4096)
	dir := fs.privateDir(".cpinit")
	cow := filepath.Join(dir, "cow")

	// Crash after create/fallocate, before the pin: a leftover, unpinned
	// file (even partially allocated) is replaced.
	if err := os.WriteFile(cow, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := Allocate(cow, 8<<20, smallReserve)
	if err != nil {
		t.Fatalf("Allocate over an incomplete file: %v", err)
	}
	// Crash after the pin, before the caller recorded the map: calling
	// again returns the same map.
	m2, err := Allocate(cow, 8<<20, smallReserve)
	if err != nil {
		t.Fatalf("second Allocate: %v", err)
	}
	if m2.Fingerprint != m.Fingerprint {
		t.Error("second Allocate returned another map")
	}
	// But never silently replaces a pinned file of another size.
	if _, err := Allocate(cow, 16<<20, smallReserve); !errors.Is(err, unix.EEXIST) {
		t.Errorf("Allocate with another size: %v, want EEXIST", err)
	}
	// Crash in Release after clearing the flag, before unlink.
	f, err := os.Open(cow)
	if err != nil {
		t.Fatal(err)
	}
	flags, err := getFlags(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := setFlags(f, flags&^fsImmutableFl); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := Release(cow); err != nil {
		t.Fatal(err)
	}
	if err := Release(cow); err != nil {
		t.Fatal(err)
	}

	// A big leftover of a crashed Allocate: its space counts as free for
	// the retry (found by the in-guest power-cut test).
	f, err = os.OpenFile(cow, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 40<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	syncFS(t, fs.mnt)
	if _, err := Allocate(cow, 40<<20, smallReserve); err != nil {
		t.Fatalf("Allocate over a big incomplete leftover: %v", err)
	}
	if err := Release(cow); err != nil {
		t.Fatal(err)
	}

	// Refusals.
	if _, err := Allocate(cow, 1<<30, smallReserve); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("Allocate beyond free space: %v, want ENOSPC", err)
	}
	if _, err := Allocate(cow, 40<<20, AllocOptions{Reserve: 30 << 20}); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("Allocate into the reserve: %v, want ENOSPC", err)
	}
	if _, err := Allocate(cow, 4096+512, smallReserve); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Allocate of a non-block multiple: %v, want EINVAL", err)
	}
	if _, err := os.Lstat(cow); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused Allocate left a file: %v", err)
	}
	open := fs.path("open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Allocate(filepath.Join(open, "cow"), 1<<20, smallReserve); !errors.Is(err, unix.EPERM) {
		t.Errorf("Allocate in a 0755 directory: %v, want EPERM", err)
	}
	if err := os.Symlink(dir, fs.path("link")); err != nil {
		t.Fatal(err)
	}
	if _, err := Allocate(filepath.Join(fs.path("link"), "cow"), 1<<20, smallReserve); err == nil {
		t.Error("Allocate through a symlinked directory succeeded")
	}
	// A missing directory is created 0700.
	fresh := filepath.Join(fs.path("new"), "cow")
	if _, err := Allocate(fresh, 1<<20, smallReserve); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Dir(fresh), &st); err != nil || st.Mode&0o777 != 0o700 {
		t.Errorf("created dir mode %#o, %v", st.Mode&0o777, err)
	}
	if err := Release(fresh); err != nil {
		t.Fatal(err)
	}
}

// TestMapOnPartition: on a partition, FIEMAP's fe_physical is relative to
// the partition (the fs's st_dev), and the map names the partition. Reading
// the whole disk at partition start + offset gives the same bytes.
func TestMapOnPartition(t *testing.T) {
	testutil.RequireRoot(t)
	requireTool(t, "mkfs.ext4", "e2fsprogs")
	requireTool(t, "partx", "util-linux")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk")
	const startLBA, sectors = 2048, 64 << 11 // partition at 1 MiB, 64 MiB long
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, (startLBA+sectors+2048)*512); err != nil {
		t.Fatal(err)
	}
	// A one-entry MBR: type 0x83 at LBA 2048 (zero CHS fields are fine for
	// the kernel's msdos parser, which uses the LBA fields).
	mbr := make([]byte, 512)
	e := mbr[446:]
	e[4] = 0x83
	binary.LittleEndian.PutUint32(e[8:], startLBA)
	binary.LittleEndian.PutUint32(e[12:], sectors)
	mbr[510], mbr[511] = 0x55, 0xaa
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	disk := strings.TrimSpace(run(t, "losetup", "-f", "--show", img))
	t.Cleanup(func() { run(t, "losetup", "-d", disk) })
	// partx adds the partition with BLKPG from its own parser, so this
	// works on kernels without CONFIG_MSDOS_PARTITION (like the CI host's).
	// Without the loop partscan flag, detaching does not drop partitions
	// added this way: delete them first (stale ones) and last.
	exec.Command("partx", "-d", disk).Run()
	run(t, "partx", "-a", disk)
	t.Cleanup(func() { run(t, "partx", "-d", disk) })
	part := disk + "p1"
	if _, err := os.Stat(part); err != nil {
		t.Fatalf("partition node: %v", err)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", part)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", part, mnt)
	t.Cleanup(func() { umount(t, mnt) })
	p := filepath.Join(mnt, "data")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 4<<20); err != nil {
		t.Fatal(err)
	}
	fillPattern(t, p, 4<<20, 9)
	m, err := MapFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if m.Device.Path != part || m.Device.Sectors != sectors {
		t.Fatalf("device %+v, want %s with %d sectors", m.Device, part, sectors)
	}
	checkAgainstFilefrag(t, p, m)
	checkReadsSameBytes(t, m)
	// The same bytes through the whole disk, shifted by the partition start.
	content, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := unix.IoctlSetInt(int(d.Fd()), unix.BLKFLSBUF, 0); err != nil {
		t.Fatal(err)
	}
	for _, s := range m.Segments {
		buf := make([]byte, s.Length*SectorSize)
		if _, err := d.ReadAt(buf, int64((startLBA+s.Offset)*SectorSize)); err != nil {
			t.Fatal(err)
		}
		if string(buf) != string(content[s.Start*SectorSize:(s.Start+s.Length)*SectorSize]) {
			t.Fatalf("segment %+v: disk at partition start + offset differs", s)
		}
	}
}

func TestAllocationUnit(t *testing.T) {
	for _, bs := range []int{1024, 4096} {
		fs := newExt4(t, 16, bs)
		if got, err := AllocationUnit(fs.mnt); err != nil || got != uint64(bs) {
			t.Errorf("ext4 with %d-byte blocks: %d, %v", bs, got, err)
		}
	}
}
