//go:build linux

package dmsnap

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A real filesystem rolled back: ext4 in the first 192 MiB of the disk (the
// COW "file" is the last 64 MiB, outside it), files written, checkpoint,
// files overwritten, deleted and created through the mounted origin, merge
// (refused while mounted, then with the filesystem unmounted), the merging
// origin mounted while the merge runs, and at the end the exact file
// manifest of before the checkpoint and a clean fsck.
func TestVMExt4Rollback(t *testing.T) {
	c, disk := vmSetup(t)
	cfg := testConfig(t, disk)
	k := newCheckpoint(t, c, cfg)
	ctx := context.Background()
	runCmd(t, mke2fs(t), "-t", "ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", disk, fmt.Sprint(cowStart/8))
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(21, 22))

	// Before the checkpoint the raw disk is ours.
	mount(t, disk, mnt, 0)
	for i := 0; i < 60; i++ {
		writeFile(t, filepath.Join(mnt, fmt.Sprintf("d%d/f%02d", i%5, i)), rng, 1+rng.IntN(600_000))
	}
	before := manifest(t, mnt)
	unmount(t, mnt)

	if err := k.StartCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	origin := c.NodePath(DefaultNames.Origin)
	mount(t, origin, mnt, 0)
	for i := 0; i < 60; i += 3 {
		writeFile(t, filepath.Join(mnt, fmt.Sprintf("d%d/f%02d", i%5, i)), rng, 1+rng.IntN(600_000))  // overwrite
		if err := os.Remove(filepath.Join(mnt, fmt.Sprintf("d%d/f%02d", (i+1)%5, i+1))); err != nil { // delete
			t.Fatal(err)
		}
	}
	for i := 0; i < 20; i++ {
		writeFile(t, filepath.Join(mnt, fmt.Sprintf("new/n%02d", i)), rng, 1+rng.IntN(600_000)) // create
	}
	after := manifest(t, mnt)
	if after == before {
		t.Fatal("the writes changed nothing")
	}
	// A merge under the mounted filesystem is refused: ext4 would write
	// its cached metadata back over the rolled-back blocks.
	if err := k.StartMerge(ctx); !errors.Is(err, ErrOriginInUse) {
		t.Fatalf("merge while mounted: %v", err)
	}
	unmount(t, mnt)
	st, err := k.SnapshotStatus()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("checkpoint holds %d KiB", st.DataSectors()/2)

	if err := k.StartMerge(ctx); err != nil {
		t.Fatal(err)
	}
	// snapshot.rst: once merging has started the origin may be opened; it
	// shows the rolled-back data at once.
	mount(t, origin, mnt, unix.MS_RDONLY)
	if got := manifest(t, mnt); got != before {
		t.Errorf("merging origin shows\n%s\nwant\n%s", got, before)
	}
	if err := k.WaitMerge(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := k.FinishMerge(ctx); err != nil { // with the filesystem mounted
		t.Fatal(err)
	}
	if got := manifest(t, mnt); got != before {
		t.Errorf("after the merge:\n%s\nwant\n%s", got, before)
	}
	unmount(t, mnt)
	runCmd(t, "/usr/sbin/e2fsck", "-f", "-n", origin)
	if err := k.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "/usr/sbin/e2fsck", "-f", "-n", disk)
	mount(t, disk, mnt, unix.MS_RDONLY)
	if got := manifest(t, mnt); got != before {
		t.Errorf("raw disk after teardown:\n%s\nwant\n%s", got, before)
	}
	unmount(t, mnt)
}

// mke2fs finds the ext4 formatter the test initramfs ships (mkfs.ext4 is a
// symlink to mke2fs: both must be there).
func mke2fs(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/mke2fs", "/sbin/mke2fs", "/usr/sbin/mkfs.ext4"} {
		if _, err := os.Stat(p); err == nil { // Stat follows the symlink
			return p
		}
	}
	t.Fatal("no mke2fs in the guest: the test initramfs must ship /usr/sbin/mke2fs (mkfs.ext4 is a symlink to it)")
	return ""
}

func runCmd(t *testing.T, prog string, args ...string) {
	t.Helper()
	if out, err := exec.Command(prog, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
}

func mount(t *testing.T, dev, dir string, flags uintptr) {
	t.Helper()
	if err := unix.Mount(dev, dir, "ext4", flags, ""); err != nil {
		t.Fatalf("mount %s on %s: %v", dev, dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, 0) })
}

func unmount(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatalf("umount %s: %v", dir, err)
	}
}

func writeFile(t *testing.T, path string, rng *rand.Rand, size int) {
	t.Helper()
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	writeSynced(t, path, b)
}

// manifest lists every regular file under dir with its size and sha256.
func manifest(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		lines = append(lines, fmt.Sprintf("%x %8d %s", sha256.Sum256(b), len(b), rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
