package fiemap

// In-guest test: the host kernel has no device-mapper, so the end-to-end
// check that Map.DMTable really maps the file through dm-linear runs in the
// QEMU guest (qemu-tests/fiemapvm boots it with one scratch disk). dmsetup,
// shipped in the test initramfs, loads our table text as is.

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"golang.org/x/sys/unix"
)

func dmsetupCmd(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command("/usr/sbin/dmsetup", args...)
	// No udev in the guest: don't wait for udev cookies.
	cmd.Env = append(os.Environ(), "DM_DISABLE_UDEV=1")
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dmsetup %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestVMLinearMapsFile: a COW file allocated in holes between another file's
// blocks, mapped with dm-linear from DMTable, written in full through the dm
// device: the other file, the fs (e2fsck) and the map are untouched, and the
// bytes landed exactly at the segments' offsets on the disk.
func TestVMLinearMapsFile(t *testing.T) {
	testutil.RequireVM(t)
	testutil.RequireRoot(t)
	disk := testutil.TestDisks(t, 1)[0]
	// The host formatted the disk (qemu-tests/fiemapvm: a 16 MiB ext4
	// with 1 KiB blocks at its start); the guest's mkfs.ext4 is a dangling
	// symlink to mke2fs.
	mnt := t.TempDir()
	mounted := false
	mount := func() {
		if err := unix.Mount(disk, mnt, "ext4", 0, ""); err != nil {
			t.Fatalf("mount %s: %v", disk, err)
		}
		mounted = true
	}
	umount := func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Fatalf("umount %s: %v", mnt, err)
		}
		mounted = false
	}
	mount()
	t.Cleanup(func() {
		if mounted {
			unix.Unmount(mnt, 0)
		}
	})

	// "filler" takes all free space, then every other block of it is
	// freed; the COW file gets those holes, so each of its blocks sits
	// between two blocks of filler.
	fragment(t, mnt, 2500)
	if err := os.Mkdir(filepath.Join(mnt, ".cpinit"), 0o700); err != nil {
		t.Fatal(err)
	}
	cow := filepath.Join(mnt, ".cpinit", "cow")
	m, err := Allocate(cow, 2000<<10, AllocOptions{Reserve: 1, MaxSegments: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d segments on %s (%s)", len(m.Segments), m.Device, m.Device.Path)
	if len(m.Segments) < 1000 {
		t.Fatalf("only %d segments: the COW file is not interleaved with filler", len(m.Segments))
	}
	// Give filler's remaining blocks recognisable content (only where it has
	// blocks: writing into its holes would need space the COW file took).
	filler := filepath.Join(mnt, "filler")
	ff, err := os.OpenFile(filler, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rawExtents(t, filler) {
		buf := bytes.Repeat([]byte{0x33}, int(e.Length))
		for off := 0; off < len(buf); off += SectorSize {
			copy(buf[off:], "filler @"+strconv.FormatUint(e.Logical+uint64(off), 10))
		}
		if _, err := ff.WriteAt(buf, int64(e.Logical)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ff.Sync(); err != nil {
		t.Fatal(err)
	}
	ff.Close()
	want := fileSum(t, filler)

	// dm-linear claims the disk exclusively, like the mounted fs: map the
	// file with the fs unmounted (in cpinit the fs is mounted on the
	// snapshot-origin, which shares dm's claim).
	umount()
	name := "fiemap-vmtest"
	dmsetupCmd(t, m.DMTable(), "create", name)
	t.Cleanup(func() { exec.Command("/usr/sbin/dmsetup", "remove", name).Run() })
	// The kernel's view of the table is ours, line for line.
	if got := dmsetupCmd(t, "", "table", name); got != m.DMTable() {
		t.Fatalf("dmsetup table differs from DMTable:\n%.400s\nvs\n%.400s", got, m.DMTable())
	}
	info := strings.TrimSpace(dmsetupCmd(t, "", "info", "-c", "--noheadings", "-o", "major,minor", name))
	majS, minS, _ := strings.Cut(info, ":")
	maj, err1 := strconv.Atoi(strings.TrimSpace(majS))
	min, err2 := strconv.Atoi(strings.TrimSpace(minS))
	if err1 != nil || err2 != nil {
		t.Fatalf("dmsetup info: %q", info)
	}
	// Our own node (no udev; /tmp is nodev in the guest).
	node := "/dev/fiemap-vmtest-cow"
	os.Remove(node)
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(uint32(maj), uint32(min)))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(node) })

	// Write the whole dm device with a position-dependent pattern.
	dev, err := os.OpenFile(node, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	if size, err = dev.Seek(0, 2); err != nil || uint64(size) != m.Size {
		t.Fatalf("dm device is %d bytes (%v), map %d", size, err, m.Size)
	}
	pattern := func(off int64) []byte {
		b := bytes.Repeat([]byte{0xc0}, SectorSize)
		copy(b, "cow sector "+strconv.FormatInt(off/SectorSize, 10))
		return b
	}
	var all bytes.Buffer
	for off := int64(0); off < size; off += SectorSize {
		all.Write(pattern(off))
	}
	if _, err := dev.WriteAt(all.Bytes(), 0); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	dmsetupCmd(t, "", "remove", name)

	// The bytes are on the disk exactly where the segments say.
	raw, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetInt(int(raw.Fd()), unix.BLKFLSBUF, 0); err != nil {
		t.Fatal(err)
	}
	for _, s := range m.Segments {
		buf := make([]byte, s.Length*SectorSize)
		if _, err := raw.ReadAt(buf, int64(s.Offset*SectorSize)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, all.Bytes()[s.Start*SectorSize:(s.Start+s.Length)*SectorSize]) {
			t.Fatalf("segment %+v: disk does not hold what was written through dm", s)
		}
	}
	raw.Close()

	// Nothing else changed: fs consistent, filler intact, map unchanged.
	run(t, "e2fsck", "-f", "-n", disk)
	mount()
	if got := fileSum(t, filler); got != want {
		t.Fatal("writing the dm-linear COW device changed another file")
	}
	if _, err := Verify(cow, m); err != nil {
		t.Fatal(err)
	}
	// UNWRITTEN: the fs still reads zeros from the COW file.
	b := make([]byte, 64<<10)
	f, err := os.Open(cow)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, make([]byte, len(b))) {
		t.Error("COW file reads non-zero through the fs")
	}
	if err := Release(cow); err != nil {
		t.Fatal(err)
	}
}

// Power-cut tests of Allocate/Release. qemu-tests/fiemapvm boots the guest with
// TestVMAllocateCrashLoop, which allocates and releases the COW file over
// and over until the host cuts the power at a random moment; the next boot
// runs TestVMAllocateAfterCrash on the same disk. The disk is a 96 MiB ext4
// with 4 KiB blocks, formatted on the host.

const crashCOWSize = 48 << 20

func mountVMDisk(t *testing.T) (disk, mnt string) {
	t.Helper()
	testutil.RequireVM(t)
	testutil.RequireRoot(t)
	disk = testutil.TestDisks(t, 1)[0]
	mnt = t.TempDir()
	if err := unix.Mount(disk, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", disk, err)
	}
	return disk, mnt
}

func TestVMAllocateCrashLoop(t *testing.T) {
	_, mnt := mountVMDisk(t)
	dir := filepath.Join(mnt, ".cpinit")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cow := filepath.Join(dir, "cow")
	// Runs until the host kills the VM; any error ends it early, which the
	// host reports as a failure.
	for i := 0; ; i++ {
		os.Stdout.WriteString("fiemap-crash: cycle " + strconv.Itoa(i) + "\n")
		m, err := Allocate(cow, crashCOWSize, AllocOptions{Reserve: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(cow, m); err != nil {
			t.Fatal(err)
		}
		if err := Release(cow); err != nil {
			t.Fatal(err)
		}
	}
}

func TestVMAllocateAfterCrash(t *testing.T) {
	disk, mnt := mountVMDisk(t)
	cow := filepath.Join(mnt, ".cpinit", "cow")
	// What did the power cut leave?
	state := "absent"
	var before *Map
	if _, err := os.Lstat(cow); err == nil {
		f, err := os.Open(cow)
		if err != nil {
			t.Fatal(err)
		}
		flags, err := getFlags(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		state = "incomplete"
		if flags&fsImmutableFl != 0 {
			// Immutable is set last: the file must be complete and valid.
			state = "pinned"
			if before, err = MapFile(cow); err != nil {
				t.Fatalf("pinned file left by the cut is not a valid map: %v", err)
			}
			if before.Size != crashCOWSize {
				t.Fatalf("pinned file has size %d", before.Size)
			}
		}
	} else if !os.IsNotExist(err) {
		t.Fatal(err)
	}
	os.Stdout.WriteString("fiemap-crash: found " + state + "\n")

	m, err := Allocate(cow, crashCOWSize, AllocOptions{Reserve: 1})
	if err != nil {
		t.Fatalf("Allocate after a cut leaving %s: %v", state, err)
	}
	if before != nil && before.Fingerprint != m.Fingerprint {
		t.Fatal("Allocate replaced a complete, pinned file")
	}
	if _, err := Verify(cow, m); err != nil {
		t.Fatal(err)
	}
	if err := Release(cow); err != nil {
		t.Fatal(err)
	}
	if err := Release(cow); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	run(t, "e2fsck", "-f", "-n", disk)
}
