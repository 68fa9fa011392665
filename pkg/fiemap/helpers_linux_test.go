package fiemap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// The tests of this package do not call t.Parallel: they unlink files and
// count the freed space, and unmount filesystems. A parallel test starting a
// command forks a child that holds a copy of every descriptor of this
// process until it execs, so a file just closed and unlinked here may not be
// freed yet (Allocate sees ENOSPC) and umount says "target is busy". Both
// happened in CI. Serial, the package runs in ~4 s.

// fsImage is a filesystem in a sparse image file on a loop device, mounted
// on a temporary directory. Everything is undone by t.Cleanup.
type fsImage struct {
	t      testing.TB
	img    string
	loop   string // /dev/loopN
	mnt    string
	fstype string
	opts   string // mount options
	mnted  bool
}

// run runs a command and fails the test with its output if it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// umount unmounts dir (retrying while another test's forked child briefly
// holds our closed files; see testutil.Unmount) and fails the test if it
// cannot.
func umount(t testing.TB, dir string) {
	t.Helper()
	if err := testutil.Unmount(dir); err != nil {
		t.Fatal(err)
	}
}

// requireTool skips (or, under CI, fails) when a command is missing.
func requireTool(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if testutil.InCI() {
			t.Fatalf("%s not found (install Debian package %s): %v", name, pkg, err)
		}
		t.Skipf("%s not found (install Debian package %s)", name, pkg)
	}
}

// newFS makes a sizeMiB image, formats it with mkfs.<fstype> mkfsArgs,
// attaches it to a loop device and mounts it.
func newFS(t testing.TB, fstype string, sizeMiB int64, mkfsArgs ...string) *fsImage {
	t.Helper()
	testutil.RequireRoot(t)
	requireTool(t, "losetup", "mount")
	dir := t.TempDir()
	f := &fsImage{t: t, img: filepath.Join(dir, "img"), mnt: filepath.Join(dir, "mnt"), fstype: fstype}
	if err := os.Mkdir(f.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f.img, sizeMiB<<20); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs."+fstype, append(mkfsArgs, f.img)...)
	f.loop = strings.TrimSpace(run(t, "losetup", "-f", "--show", f.img))
	t.Cleanup(func() {
		if f.mnted {
			if err := testutil.Unmount(f.mnt); err != nil {
				t.Error(err)
			}
		}
		if out, err := exec.Command("losetup", "-d", f.loop).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", f.loop, err, out)
		}
	})
	f.mount()
	return f
}

func newExt4(t testing.TB, sizeMiB int64, blockSize int, extra ...string) *fsImage {
	requireTool(t, "mkfs.ext4", "e2fsprogs")
	return newFS(t, "ext4", sizeMiB, append([]string{"-q", "-F", "-b", strconv.Itoa(blockSize)}, extra...)...)
}

func (f *fsImage) mount() {
	f.t.Helper()
	args := []string{"-t", f.fstype}
	if f.opts != "" {
		args = append(args, "-o", f.opts)
	}
	run(f.t, "mount", append(args, f.loop, f.mnt)...)
	f.mnted = true
}

func (f *fsImage) umount() {
	f.t.Helper()
	umount(f.t, f.mnt)
	f.mnted = false
}

func (f *fsImage) path(name string) string { return filepath.Join(f.mnt, name) }

// privateDir creates the root-only directory Allocate wants.
func (f *fsImage) privateDir(name string) string {
	f.t.Helper()
	d := f.path(name)
	if err := os.Mkdir(d, 0o700); err != nil {
		f.t.Fatal(err)
	}
	return d
}

// devNum returns the loop device's dev_t.
func (f *fsImage) devNum() (uint32, uint32) {
	var st unix.Stat_t
	if err := unix.Stat(f.loop, &st); err != nil {
		f.t.Fatal(err)
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev)
}

var filefragFlags = map[string]uint32{
	"last":        FlagLast,
	"unknown_loc": FlagUnknown,
	"delalloc":    FlagDelalloc,
	"encoded":     FlagEncoded,
	"encrypted":   FlagDataEncrypted,
	"not_aligned": FlagNotAligned,
	"inline":      FlagDataInline,
	"tail_packed": FlagDataTail,
	"unwritten":   FlagUnwritten,
	"merged":      FlagMerged,
	"shared":      FlagShared,
	"eof":         0, // filefrag's own note: extent reaches i_size
}

// filefrag returns the extents `filefrag -v -b512` (e2fsprogs) reports, in
// bytes. It is the independent oracle for our FIEMAP reader and parser:
// another implementation of the paging and decoding, with its own output
// format. Lines look like
//
//	ext: logical_offset: physical_offset: length: expected: flags:
//	  0:   0..  99:   5281..  5380:   100:          last,unwritten,eof
func filefrag(t testing.TB, path string) []Extent {
	t.Helper()
	requireTool(t, "filefrag", "e2fsprogs")
	out := run(t, "filefrag", "-v", "-b512", path)
	var ext []Extent
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 5 {
			continue
		}
		if _, err := strconv.Atoi(strings.TrimSpace(fields[0])); err != nil {
			continue // header lines
		}
		rng := func(s string) (uint64, uint64) {
			a, b, ok := strings.Cut(s, "..")
			if !ok {
				t.Fatalf("filefrag line %q: bad range %q", sc.Text(), s)
			}
			x, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 64)
			y, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("filefrag line %q: bad range %q", sc.Text(), s)
			}
			return x, y
		}
		l0, l1 := rng(fields[1])
		p0, p1 := rng(fields[2])
		n, err := strconv.ParseUint(strings.TrimSpace(fields[3]), 10, 64)
		if err != nil || n != l1-l0+1 || n != p1-p0+1 {
			t.Fatalf("filefrag line %q: inconsistent length", sc.Text())
		}
		var flags uint32
		for _, name := range strings.Split(strings.TrimSpace(fields[len(fields)-1]), ",") {
			if name == "" {
				continue
			}
			fl, ok := filefragFlags[name]
			if !ok {
				t.Fatalf("filefrag line %q: unknown flag %q", sc.Text(), name)
			}
			flags |= fl
		}
		ext = append(ext, Extent{Logical: l0 * 512, Physical: p0 * 512, Length: n * 512, Flags: flags})
	}
	return ext
}

// rawExtents reads the raw (uncoalesced) FIEMAP list of path.
func rawExtents(t testing.TB, path string) []Extent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ext, err := readExtents(f)
	if err != nil {
		t.Fatal(err)
	}
	return ext
}

// checkAgainstFilefrag compares our raw FIEMAP list with filefrag's, extent
// by extent, and the map's extents with filefrag's trimmed to the file size
// and coalesced, as MapFile derives them (f2fs gives a pinned file whole
// sections, so its raw extents go past EOF).
func checkAgainstFilefrag(t testing.TB, path string, m *Map) {
	t.Helper()
	ours := rawExtents(t, path)
	theirs := filefrag(t, path)
	if len(ours) != len(theirs) {
		t.Fatalf("%s: %d extents, filefrag says %d", path, len(ours), len(theirs))
	}
	for i := range ours {
		if ours[i] != theirs[i] {
			t.Fatalf("%s: extent %d is %v, filefrag says %v", path, i, ours[i], theirs[i])
		}
	}
	if m != nil {
		if m.RawExtents != len(theirs) {
			t.Errorf("%s: map says %d raw extents, filefrag %d", path, m.RawExtents, len(theirs))
		}
		c := Coalesce(Trim(theirs, m.Size))
		if len(c) != len(m.Extents) {
			t.Fatalf("%s: %d coalesced extents, filefrag's coalesce to %d", path, len(m.Extents), len(c))
		}
		for i := range c {
			if c[i] != m.Extents[i] {
				t.Fatalf("%s: coalesced extent %d is %v, filefrag's %v", path, i, m.Extents[i], c[i])
			}
		}
	}
}

// checkReadsSameBytes reads every segment of m from the block device and
// compares it with the file's content read through the filesystem: the map
// really points at the file's bytes. The page cache of the device is dropped
// first (the fs wrote through its own cache).
func checkReadsSameBytes(t testing.TB, m *Map) {
	t.Helper()
	content, err := os.ReadFile(m.Path)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := os.Open(m.Device.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if err := unix.Fdatasync(int(dev.Fd())); err != nil {
		t.Fatal(err)
	}
	// BLKFLSBUF drops the device's buffer cache so we read the disk.
	if err := unix.IoctlSetInt(int(dev.Fd()), unix.BLKFLSBUF, 0); err != nil {
		t.Fatal(err)
	}
	var covered uint64
	for _, s := range m.Segments {
		buf := make([]byte, s.Length*SectorSize)
		if _, err := dev.ReadAt(buf, int64(s.Offset*SectorSize)); err != nil {
			t.Fatalf("read %s at sector %d: %v", m.Device.Path, s.Offset, err)
		}
		want := content[s.Start*SectorSize : (s.Start+s.Length)*SectorSize]
		if !bytes.Equal(buf, want) {
			t.Fatalf("%s: segment %+v on %s does not hold the file's bytes", m.Path, s, m.Device.Path)
		}
		covered += s.Length
	}
	if covered*SectorSize != uint64(len(content)) {
		t.Fatalf("segments cover %d sectors, file has %d bytes", covered, len(content))
	}
}

// fillPattern writes deterministic, position-dependent bytes over the whole
// of f (size bytes), so that any misplaced sector is detected.
func fillPattern(t testing.TB, path string, size int64, seed byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	var blk [SectorSize]byte
	for off := int64(0); off < size; off += SectorSize {
		for i := range blk {
			blk[i] = seed ^ byte(i)
		}
		copy(blk[:], fmt.Sprintf("%s@%d/%d", filepath.Base(path), off, seed))
		if _, err := w.Write(blk[:]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// fragment makes free space in the filesystem at dir fragmented into about
// n single-block holes: it fallocates a filler file over (almost) all free
// space and punches every other block of its first 2n blocks. A file
// allocated afterwards gets ~n extents.
func fragment(t testing.TB, dir string, n int) {
	t.Helper()
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	bs := int64(sfs.Bsize)
	// Bfree, not Bavail: we are root and may use the reserved blocks too;
	// any free run left over would be used before the holes.
	free := int64(sfs.Bfree)
	if free < int64(2*n)+64 {
		t.Fatalf("only %d free blocks, need %d", free, 2*n+64)
	}
	f, err := os.OpenFile(filepath.Join(dir, "filler"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	// ext4 keeps 2% (at most 4096 clusters) of free space for metadata
	// (s_resv_clusters), which fallocate may not use: start below that and
	// top up in smaller steps until ENOSPC, so no long free run is left.
	off := int64(0)
	for _, step := range []int64{free - free/32, 1024, 64, 1} {
		for {
			if err := unix.Fallocate(fd, 0, off*bs, step*bs); err != nil {
				if errors.Is(err, unix.ENOSPC) {
					break
				}
				t.Fatalf("fallocate filler: %v", err)
			}
			off += step
		}
	}
	if off < int64(2*n) {
		t.Fatalf("filler got %d blocks, need %d", off, 2*n)
	}
	for i := 0; i < n; i++ {
		if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(2*i+1)*bs, bs); err != nil {
			t.Fatalf("punch %d: %v", i, err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

var debugfsLeaf = regexp.MustCompile(`^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*(\S*)\s*$`)

// debugfsExtents reads the leaves of a file's extent tree from the on-disk
// ext4 with `debugfs -R "ex PATH"` (e2fsprogs), in bytes. Unlike filefrag it
// does not use FIEMAP at all: it parses the extent tree from the unmounted
// device itself, so it checks the kernel's FIEMAP as well as our reader.
// Lines look like
//
//	Level Entries       Logical      Physical Length Flags
//	 1/ 1   1/  7     0 -     4 10241 - 10245      5 Uninit
func debugfsExtents(t testing.TB, dev, pathInFS string, blockSize uint64) []Extent {
	t.Helper()
	requireTool(t, "debugfs", "e2fsprogs")
	out := run(t, "debugfs", "-R", "ex "+pathInFS, dev)
	var ext []Extent
	for _, line := range strings.Split(out, "\n") {
		m := debugfsLeaf.FindStringSubmatch(line)
		if m == nil || m[1] != m[2] { // index nodes are above the leaf level
			continue
		}
		n := func(i int) uint64 {
			v, err := strconv.ParseUint(m[i], 10, 64)
			if err != nil {
				t.Fatalf("debugfs line %q: %v", line, err)
			}
			return v
		}
		if n(4)-n(3)+1 != n(7) || n(6)-n(5)+1 != n(7) {
			t.Fatalf("debugfs line %q: inconsistent length", line)
		}
		var flags uint32
		switch m[8] {
		case "Uninit":
			flags = FlagUnwritten
		case "":
		default:
			t.Fatalf("debugfs line %q: unknown flag %q", line, m[8])
		}
		ext = append(ext, Extent{Logical: n(3) * blockSize, Physical: n(5) * blockSize, Length: n(7) * blockSize, Flags: flags})
	}
	if len(ext) == 0 {
		t.Fatalf("debugfs found no extents for %s:\n%s", pathInFS, out)
	}
	return ext
}

// checkAgainstDebugfs compares the map with the on-disk extent tree (the fs
// must be unmounted).
func checkAgainstDebugfs(t testing.TB, dev, pathInFS string, m *Map) {
	t.Helper()
	got := Coalesce(Trim(debugfsExtents(t, dev, pathInFS, uint64(m.BlockSize)), m.Size))
	if len(got) != len(m.Extents) {
		t.Fatalf("%s: debugfs finds %d coalesced extents, map has %d", pathInFS, len(got), len(m.Extents))
	}
	for i := range got {
		if got[i] != m.Extents[i] {
			t.Fatalf("%s: extent %d on disk is %v, map says %v", pathInFS, i, got[i], m.Extents[i])
		}
	}
}

// syncFS flushes only the filesystem at dir (syncfs(2)); sync(1) would
// also wait for everything else the host has dirty.
func syncFS(t testing.TB, dir string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
}

// isErrno reports whether err wraps errno.
func isErrno(err error, errno unix.Errno) bool { return errors.Is(err, errno) }
