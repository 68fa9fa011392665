package fiemap

// In-guest f2fs tests. The host kernel has no f2fs, so these run in the QEMU
// guest booting Debian's generic kernel (qemu-tests/f2fsvm), each on a fresh
// f2fs made with mkfs.f2fs on the one scratch disk. They prove, on a real
// f2fs, what alloc_linux.go and map_linux.go claim for it: Allocate pins the
// COW file (F2FS_IOC_SET_PIN_FILE) before fallocate, MapFile's extents are
// the file's blocks (filefrag, and bytes written through the raw device read
// back through the filesystem), the map survives unmount, fsck.f2fs and
// remount, and garbage collection moves other files' blocks but not the
// pinned file's.

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/cpinit/cpinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// f2fs ioctls the tests use (include/uapi/linux/f2fs.h), generic _IOC
// encoding as in ioctl_linux.go.
const (
	// F2FS_IOC_GARBAGE_COLLECT = _IOW(0xf5, 6, __u32): one round of GC,
	// foreground (synchronous) when the argument is 1.
	f2fsIocGarbageCollect = 0x4004F506
	// F2FS_IOC_WRITE_CHECKPOINT = _IO(0xf5, 7).
	f2fsIocWriteCheckpoint = 0x0000F507
	// F2FS_IOC_GARBAGE_COLLECT_RANGE = _IOW(0xf5, 11, struct f2fs_gc_range):
	// GC of every section in [start, start+len) blocks, each forced as the
	// victim whatever its cost.
	f2fsIocGarbageCollectRange = 0x4018F50B
	// F2FS_IOC_GET_PIN_FILE = _IOR(0xf5, 14, __u32): a pinned file's GC
	// failure count (i_gc_failures[GC_FAILURE_PIN]); 0 if unpinned.
	f2fsIocGetPinFile = 0x8004F50E
)

// struct f2fs_gc_range { __u32 sync; __u64 start; __u64 len; }.
type f2fsGCRange struct {
	Sync  uint32
	_     uint32
	Start uint64
	Len   uint64
}

type f2fsDisk struct {
	t    *testing.T
	disk string // /dev/vda
	mnt  string
	up   bool
}

// newF2FS makes an f2fs on the scratch disk with mkfs.f2fs and mounts it.
func newF2FS(t *testing.T) *f2fsDisk {
	t.Helper()
	testutil.RequireVM(t)
	testutil.RequireRoot(t)
	f := &f2fsDisk{t: t, disk: testutil.TestDisks(t, 1)[0], mnt: t.TempDir()}
	run(t, "mkfs.f2fs", "-f", "-q", f.disk)
	f.mount()
	t.Cleanup(func() {
		if f.up {
			unix.Unmount(f.mnt, 0)
		}
	})
	return f
}

func (f *f2fsDisk) mount() {
	f.t.Helper()
	if err := unix.Mount(f.disk, f.mnt, "f2fs", 0, ""); err != nil {
		f.t.Fatalf("mount f2fs %s: %v", f.disk, err)
	}
	f.up = true
}

func (f *f2fsDisk) umount() {
	f.t.Helper()
	if err := unix.Unmount(f.mnt, 0); err != nil {
		f.t.Fatalf("umount %s: %v", f.mnt, err)
	}
	f.up = false
}

// fsck checks the unmounted fs with fsck.f2fs --dry-run (which changes
// nothing; -f would fix what it finds): every check must say [Ok..].
func (f *f2fsDisk) fsck() {
	f.t.Helper()
	out := run(f.t, "fsck.f2fs", "--dry-run", f.disk)
	checks := 0
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "[FSCK]") || !strings.Contains(l, "[") {
			continue
		}
		if rest := l[len("[FSCK]"):]; strings.Contains(rest, "[") {
			checks++
			if !strings.Contains(rest, "[Ok..]") {
				f.t.Fatalf("fsck.f2fs: %s\n%s", l, out)
			}
		}
	}
	if checks < 5 {
		f.t.Fatalf("fsck.f2fs reported %d checks:\n%s", checks, out)
	}
}

// sysfs is /sys/fs/f2fs/<dev>/name.
func (f *f2fsDisk) sysfs(name string) string {
	return filepath.Join("/sys/fs/f2fs", filepath.Base(f.disk), name)
}

func (f *f2fsDisk) readSysfs(name string) string {
	b, err := os.ReadFile(f.sysfs(name))
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return strings.TrimSpace(string(b))
}

func (f *f2fsDisk) writeSysfs(name, v string) {
	f.t.Helper()
	if err := os.WriteFile(f.sysfs(name), []byte(v), 0); err != nil {
		f.t.Fatal(err)
	}
}

func (f *f2fsDisk) path(name string) string { return filepath.Join(f.mnt, name) }

func (f *f2fsDisk) cowDir() string {
	f.t.Helper()
	d := f.path(".cpinit")
	if err := os.Mkdir(d, 0o700); err != nil {
		f.t.Fatal(err)
	}
	return d
}

func (f *f2fsDisk) ioctl(req uintptr, arg unsafe.Pointer) error {
	d, err := os.Open(f.mnt)
	if err != nil {
		return err
	}
	defer d.Close()
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, d.Fd(), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

func (f *f2fsDisk) checkpoint() {
	f.t.Helper()
	if err := f.ioctl(f2fsIocWriteCheckpoint, nil); err != nil {
		f.t.Fatalf("F2FS_IOC_WRITE_CHECKPOINT: %v", err)
	}
}

// gcRange forces GC of the sections holding blocks [start, start+n).
func (f *f2fsDisk) gcRange(start, n uint64) error {
	r := f2fsGCRange{Sync: 1, Start: start, Len: n}
	return f.ioctl(f2fsIocGarbageCollectRange, unsafe.Pointer(&r))
}

// pinFailures reads F2FS_IOC_GET_PIN_FILE: the GC failure count of a
// pinned file.
func pinFailures(t *testing.T, path string) uint32 {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var v uint32
	if err := ioctlUint32(fh, "F2FS_IOC_GET_PIN_FILE", f2fsIocGetPinFile, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// writeThroughDevice writes a position-dependent pattern into every segment
// of m through the raw block device, as dm-snapshot writes the COW file
// through dm-linear, and returns the file's expected content.
func writeThroughDevice(t *testing.T, m *Map, seed byte) []byte {
	t.Helper()
	want := make([]byte, m.Size)
	for off := 0; off < len(want); off += SectorSize {
		blk := want[off : off+SectorSize]
		for i := range blk {
			blk[i] = seed ^ byte(i)
		}
		copy(blk, fmt.Sprintf("cow sector %d/%d", off/SectorSize, seed))
	}
	dev, err := os.OpenFile(m.Device.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	for _, s := range m.Segments {
		if _, err := dev.WriteAt(want[s.Start*SectorSize:(s.Start+s.Length)*SectorSize], int64(s.Offset*SectorSize)); err != nil {
			t.Fatal(err)
		}
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	return want
}

// readThroughDevice reads the file's bytes from the raw device at m's
// segments (bypassing the device's page cache).
func readThroughDevice(t *testing.T, m *Map) []byte {
	t.Helper()
	dev, err := os.Open(m.Device.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if err := unix.IoctlSetInt(int(dev.Fd()), unix.BLKFLSBUF, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, m.Size)
	for _, s := range m.Segments {
		if _, err := dev.ReadAt(got[s.Start*SectorSize:(s.Start+s.Length)*SectorSize], int64(s.Offset*SectorSize)); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

func dropCaches(t *testing.T) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Fatal(err)
	}
}

func logMap(t *testing.T, m *Map) {
	t.Helper()
	t.Logf("%s: %d bytes, %d raw extents, %d coalesced, %d segments, pinned %v, immutable %v, block size %d, fingerprint %s",
		m.Path, m.Size, m.RawExtents, len(m.Extents), len(m.Segments), m.F2FSPinned, m.Immutable, m.BlockSize, m.Fingerprint)
	for i, e := range m.Extents {
		if i == 8 {
			t.Logf("  ...")
			break
		}
		t.Logf("  extent %d: logical %d physical %d (block %d) length %d flags %#x", i, e.Logical, e.Physical, e.Physical/uint64(m.BlockSize), e.Length, e.Flags)
	}
}

// TestVMF2FSAllocate: Allocate on f2fs pins the file and maps it; the map
// is filefrag's, bytes written through the raw device at the segments read
// back through the filesystem, and it survives unmount, fsck.f2fs and
// remount; Release unpins and removes it.
func TestVMF2FSAllocate(t *testing.T) {
	f := newF2FS(t)
	t.Logf("f2fs on-disk features: %s", f.readSysfs("features"))
	if b, err := os.ReadFile("/sys/fs/f2fs/features/pin_file"); err == nil {
		t.Logf("kernel feature pin_file: %s", strings.TrimSpace(string(b)))
	} else {
		t.Logf("kernel feature pin_file: %v", err)
	}
	t.Logf("gc_pin_file_thresh %s", f.readSysfs("gc_pin_file_thresh"))
	cow := filepath.Join(f.cowDir(), "cow")
	// Not a multiple of f2fs's 2 MiB section: a pinned fallocate takes
	// whole sections, so there are blocks past EOF.
	const size = 6<<20 + 12<<10
	m, err := Allocate(cow, size, AllocOptions{Reserve: 1})
	if err != nil {
		t.Fatal(err)
	}
	logMap(t, m)
	if m.FSType != "f2fs" || !m.F2FSPinned || !m.Immutable || m.Size != size {
		t.Fatalf("map %+v: want an f2fs file of %d bytes, pinned and immutable", m, size)
	}
	if m.Device.Path != f.disk {
		t.Fatalf("device %s (%s), want %s", m.Device, m.Device.Path, f.disk)
	}
	if n := pinFailures(t, cow); n != 0 {
		t.Errorf("fresh pinned file has %d GC failures", n)
	}
	checkAgainstFilefrag(t, cow, m)
	raw := rawExtents(t, cow)
	t.Logf("raw FIEMAP: %d extents, last ends at %d (size %d)", len(raw), raw[len(raw)-1].Logical+raw[len(raw)-1].Length, m.Size)

	// The map is the file: bytes written through the device at the
	// segments are what the filesystem reads from the file.
	want := writeThroughDevice(t, m, 0x5a)
	dropCaches(t)
	got, err := os.ReadFile(cow)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		zero := bytes.Equal(got, make([]byte, len(got)))
		t.Fatalf("the file does not read what was written at its segments (reads zeros: %v)", zero)
	}

	// An ordinary (unpinned) written file maps too, and its segments hold
	// its bytes.
	plain := f.path("plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fillPattern(t, plain, 3<<20+4096, 7)
	pm, err := MapFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	logMap(t, pm)
	if pm.F2FSPinned || pm.Immutable {
		t.Errorf("plain file reported pinned %v, immutable %v", pm.F2FSPinned, pm.Immutable)
	}
	checkAgainstFilefrag(t, plain, pm)
	checkReadsSameBytes(t, pm)
	if _, err := Verify(plain, pm); err == nil {
		t.Error("Verify accepted an unpinned, mutable file")
	}

	// Unmount, fsck, remount: same map, same bytes, still pinned.
	f.umount()
	f.fsck()
	f.mount()
	m2, err := Verify(cow, m)
	if err != nil {
		t.Fatal(err)
	}
	if !m2.F2FSPinned {
		t.Fatal("pin lost across remount")
	}
	if got := readThroughDevice(t, m2); !bytes.Equal(got, want) {
		t.Fatal("COW bytes changed across remount")
	}
	// Through dm-linear, as cpinit uses it: load DMTable (the fs unmounted:
	// dm claims the disk, like a mount), write the whole device with a new
	// pattern, and the filesystem reads it back from the file; fsck clean.
	f.umount()
	name := "fiemap-f2fs"
	dmsetupCmd(t, m.DMTable(), "create", name)
	removed := false
	t.Cleanup(func() {
		if !removed {
			exec.Command("/usr/sbin/dmsetup", "remove", name).Run()
		}
	})
	if got := dmsetupCmd(t, "", "table", name); got != m.DMTable() {
		t.Fatalf("dmsetup table differs from DMTable:\n%s\nvs\n%s", got, m.DMTable())
	}
	var mj, mn uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(dmsetupCmd(t, "", "info", "-c", "--noheadings", "-o", "major,minor", name)), "%d:%d", &mj, &mn); err != nil {
		t.Fatal(err)
	}
	node := "/dev/fiemap-f2fs-cow"
	os.Remove(node)
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(mj, mn))); err != nil {
		t.Fatal(err)
	}
	viaDM := writeThroughDevice(t, &Map{Size: m.Size, Device: Device{Path: node}, Segments: []Segment{{Start: 0, Length: m.Size / SectorSize, Offset: 0}}}, 0x3c)
	dmsetupCmd(t, "", "remove", name)
	removed = true
	os.Remove(node)
	f.fsck()
	f.mount()
	dropCaches(t)
	if got, err := os.ReadFile(cow); err != nil || !bytes.Equal(got, viaDM) {
		t.Fatalf("the file does not read what was written through dm-linear (%v)", err)
	}
	if _, err := Verify(cow, m); err != nil {
		t.Fatal(err)
	}

	// Allocate again finds the complete file and returns its map.
	m3, err := Allocate(cow, size, AllocOptions{Reserve: 1})
	if err != nil || m3.Fingerprint != m.Fingerprint {
		t.Fatalf("second Allocate: %v, fingerprint %v want %s", err, m3, m.Fingerprint)
	}
	if err := Release(cow); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(cow); !os.IsNotExist(err) {
		t.Fatalf("COW file still there after Release: %v", err)
	}
	f.umount()
	f.fsck()
}

// gcFile is an ordinary file of the churn, with where it was.
type gcFile struct {
	path string
	sum  [32]byte
	ext  []Extent
}

// TestVMF2FSGarbageCollection proves the pinned COW file stays where its
// map says while f2fs garbage-collects around it:
//
//   - Churn and foreground GC: the fs is filled to ~80% with 256 KiB files,
//     every other one is deleted (most segments half valid), then
//     F2FS_IOC_GARBAGE_COLLECT (foreground) runs until f2fs finds no victim.
//     The control: ordinary files moved (GC really ran); the COW file did
//     not, and no file's contents changed.
//   - Forced GC of the COW's own sections (F2FS_IOC_GARBAGE_COLLECT_RANGE):
//     EAGAIN, nothing moves. f2fs only collects sections with invalid
//     blocks, and a pinned fallocate takes whole sections, all valid.
//   - The control where the pin is what holds: a pinned file whose section
//     is half invalid is not moved by GC_RANGE (EAGAIN); unpinned, it is.
//   - The COW map survives unmount, fsck.f2fs and remount; unpinned, Verify
//     refuses it.
func TestVMF2FSGarbageCollection(t *testing.T) {
	f := newF2FS(t)
	cow := filepath.Join(f.cowDir(), "cow")
	const cowSize = 8 << 20
	m, err := Allocate(cow, cowSize, AllocOptions{Reserve: 1})
	if err != nil {
		t.Fatal(err)
	}
	logMap(t, m)
	want := writeThroughDevice(t, m, 0xa5)

	// Fill to ~80% with 256 KiB files, then delete every other one.
	var sfs unix.Statfs_t
	if err := unix.Statfs(f.mnt, &sfs); err != nil {
		t.Fatal(err)
	}
	t.Logf("fs: %d blocks of %d, %d free", sfs.Blocks, sfs.Bsize, sfs.Bfree)
	const fileSize = 256 << 10
	n := int(sfs.Bfree*uint64(sfs.Bsize)*8/10) / fileSize
	if err := os.Mkdir(f.path("churn"), 0o755); err != nil {
		t.Fatal(err)
	}
	var keep []*gcFile
	for i := 0; i < n; i++ {
		p := f.path("churn/" + strconv.Itoa(i))
		b := bytes.Repeat([]byte{byte(i)}, fileSize)
		copy(b, "churn "+strconv.Itoa(i))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatalf("write %s: %v", p, err)
		}
		if i%2 == 1 {
			keep = append(keep, &gcFile{path: p, sum: sha256.Sum256(b)})
		}
	}
	syncFS(t, f.mnt)
	for i := 0; i < n; i += 2 {
		if err := os.Remove(f.path("churn/" + strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	syncFS(t, f.mnt)
	f.checkpoint()
	for _, g := range keep {
		g.ext = rawExtents(t, g.path)
	}
	if err := unix.Statfs(f.mnt, &sfs); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d files written, %d kept; %d blocks free; dirty segments %s, free segments %s", n, len(keep), sfs.Bfree, f.readSysfs("dirty_segments"), f.readSysfs("free_segments"))

	movedBefore := f.readSysfs("moved_blocks_foreground")
	rounds, nodata := 0, false
	for ; rounds < 40; rounds++ {
		v := uint32(1)
		if err := f.ioctl(f2fsIocGarbageCollect, unsafe.Pointer(&v)); err != nil {
			if errors.Is(err, unix.ENODATA) {
				nodata = true
				break
			}
			t.Logf("GC round %d: %v", rounds, err)
		}
	}
	f.checkpoint()
	t.Logf("foreground GC: %d rounds (no victim left: %v); moved_blocks_foreground %s -> %s; free segments %s",
		rounds, nodata, movedBefore, f.readSysfs("moved_blocks_foreground"), f.readSysfs("free_segments"))

	moved := 0
	for _, g := range keep {
		now := rawExtents(t, g.path)
		if fmt.Sprint(now) != fmt.Sprint(g.ext) {
			moved++
			g.ext = now
		}
	}
	t.Logf("%d of %d ordinary files moved", moved, len(keep))
	if moved == 0 {
		t.Fatal("garbage collection moved no ordinary file: it did not run, so the test proves nothing")
	}
	checkCOW := func(when string) *Map {
		t.Helper()
		m2, err := Verify(cow, m)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if got := readThroughDevice(t, m2); !bytes.Equal(got, want) {
			t.Fatalf("%s: COW bytes changed", when)
		}
		t.Logf("%s: COW map unchanged, pinned, %d GC failures", when, pinFailures(t, cow))
		return m2
	}
	checkCOW("after foreground GC")
	dropCaches(t)
	for _, g := range keep {
		b, err := os.ReadFile(g.path)
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(b) != g.sum {
			t.Fatalf("%s: contents changed by GC", g.path)
		}
	}

	// Force GC of each of the COW file's sections (GC_RANGE makes each the
	// victim whatever its cost). f2fs only collects sections that have
	// invalid blocks, and a pinned fallocate takes whole sections, all
	// valid: EAGAIN, nothing moves (unpinned, it would be the same; the
	// next step is the control where the pin is what holds).
	bs := uint64(m.BlockSize)
	raw := rawExtents(t, cow)
	first := raw[0].Physical / bs
	allocated := (raw[len(raw)-1].Logical + raw[len(raw)-1].Length) / bs
	err = f.gcRange(first, allocated)
	t.Logf("GC_RANGE of the COW's %d blocks from block %d: %v", allocated, first, err)
	if !errors.Is(err, unix.EAGAIN) {
		t.Errorf("GC_RANGE of a pinned file's sections: %v, want EAGAIN", err)
	}
	checkCOW("after GC_RANGE of its sections")

	// A pinned file whose section is half invalid (pinned, fallocated one
	// section, truncated to half): GC_RANGE makes it the victim and would
	// move its valid half, but the pin refuses (EAGAIN, no move); unpinned,
	// the same GC_RANGE moves it.
	half := f.path("half")
	hf, err := os.OpenFile(half, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f2fsSetPin(hf, true); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(hf.Fd()), 0, 0, 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := hf.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	if err := hf.Sync(); err != nil {
		t.Fatal(err)
	}
	f.checkpoint()
	hext := rawExtents(t, half)
	t.Logf("half-invalid pinned file: %v", hext)
	hb := hext[0].Physical / bs
	for i := 0; i < 3; i++ {
		err := f.gcRange(hb, 1)
		t.Logf("GC_RANGE of the pinned half-invalid section (block %d): %v; GC failures %d", hb, err, pinFailures(t, half))
		if !errors.Is(err, unix.EAGAIN) {
			t.Errorf("GC_RANGE of a pinned file's section: %v, want EAGAIN", err)
		}
	}
	if now := rawExtents(t, half); fmt.Sprint(now) != fmt.Sprint(hext) {
		t.Fatalf("GC moved a pinned file: %v -> %v", hext, now)
	}
	if err := f2fsSetPin(hf, false); err != nil {
		t.Fatal(err)
	}
	err = f.gcRange(hb, 1)
	now := rawExtents(t, half)
	t.Logf("unpinned: GC_RANGE %v, now %v", err, now)
	if err != nil || fmt.Sprint(now) == fmt.Sprint(hext) {
		t.Fatalf("GC_RANGE did not move the same file unpinned (%v): the pin was not what held it", err)
	}
	if err := hf.Close(); err != nil {
		t.Fatal(err)
	}

	f.umount()
	f.fsck()
	f.mount()
	checkCOW("after remount")

	// Unpinned (as f2fs itself does to a file after gc_pin_file_thresh GC
	// failures), the COW file is refused by Verify even where it is.
	fh, err := os.Open(cow)
	if err != nil {
		t.Fatal(err)
	}
	err = f2fsSetPin(fh, false)
	fh.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(cow, m); err == nil || !strings.Contains(err.Error(), "not pinned") {
		t.Fatalf("Verify of the unpinned COW file: %v, want a refusal", err)
	} else {
		t.Logf("Verify refuses it unpinned: %v", err)
	}
	if err := Release(cow); err != nil {
		t.Fatal(err)
	}
	f.umount()
	f.fsck()
}

// TestVMF2FSAllocateRefused: where f2fs cannot pin (mode=lfs writes every
// block out of place, so F2FS_IOC_SET_PIN_FILE says EINVAL), Allocate fails
// naming the pin ioctl and leaves no file behind. Android's own userdata
// checkpoint (checkpoint=disable) is tried too and its outcome logged.
func TestVMF2FSAllocateRefused(t *testing.T) {
	f := newF2FS(t)
	f.cowDir()
	f.umount()
	for _, opts := range []string{"mode=lfs", "checkpoint=disable"} {
		if err := unix.Mount(f.disk, f.mnt, "f2fs", 0, opts); err != nil {
			t.Fatalf("mount -o %s: %v", opts, err)
		}
		f.up = true
		cow := f.path(".cpinit/cow")
		m, err := Allocate(cow, 4<<20, AllocOptions{Reserve: 1})
		t.Logf("-o %s: Allocate: %v", opts, err)
		switch {
		case opts == "mode=lfs" && err == nil:
			t.Errorf("-o %s: Allocate succeeded (%v), want a refusal", opts, m)
		case err != nil && !strings.Contains(err.Error(), "F2FS_IOC_SET_PIN_FILE"):
			t.Errorf("-o %s: error does not name the pin ioctl: %v", opts, err)
		}
		if err != nil {
			if _, serr := os.Lstat(cow); !os.IsNotExist(serr) {
				t.Errorf("-o %s: failed Allocate left %s behind (%v)", opts, cow, serr)
			}
		} else if err := Release(cow); err != nil {
			t.Fatal(err)
		}
		f.umount()
	}
	f.fsck()
}

// TestVMF2FSAllocateReserveCountsSections: a pinned fallocate takes whole
// sections, so Allocate counts the size rounded up to a section against the
// reserve. One block asked for uses a whole 2 MiB section: with a reserve
// that only the block leaves room for, Allocate refuses; with room for the
// section, it allocates and the reserve is still free afterwards.
func TestVMF2FSAllocateReserveCountsSections(t *testing.T) {
	f := newF2FS(t)
	dir := f.cowDir()
	cow := filepath.Join(dir, "cow")
	free := func() uint64 {
		var sfs unix.Statfs_t
		if err := unix.Statfs(f.mnt, &sfs); err != nil {
			t.Fatal(err)
		}
		return sfs.Bavail * uint64(sfs.Bsize)
	}
	before := free()
	const size = 4096
	_, err := Allocate(cow, size, AllocOptions{Reserve: before - 1<<20})
	t.Logf("%d bytes free; one block with a reserve of free-1MiB: %v", before, err)
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Allocate of one block that takes a 2 MiB section, leaving less than the reserve: %v, want ENOSPC", err)
	}
	if _, err := os.Lstat(cow); !os.IsNotExist(err) {
		t.Fatalf("refused Allocate left %s: %v", cow, err)
	}
	reserve := before - 3<<20
	m, err := Allocate(cow, size, AllocOptions{Reserve: reserve})
	if err != nil {
		t.Fatal(err)
	}
	raw := rawExtents(t, cow)
	after := free()
	t.Logf("allocated %d bytes: raw extents %v; free %d -> %d (reserve %d)", m.Size, raw, before, after, reserve)
	if after < reserve {
		t.Errorf("free space %d fell below the reserve %d", after, reserve)
	}
	if err := Release(cow); err != nil {
		t.Fatal(err)
	}
}
