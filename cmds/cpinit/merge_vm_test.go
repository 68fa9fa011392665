//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/manifest"
	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"github.com/cpinit/cpinit/pkg/fiemap"
	"golang.org/x/sys/unix"
)

// TestVMMergeOutlastsStepBound (issue 14, finding 2): a rollback whose
// copy-back lasts longer than one device-mapper step's bound must still
// finish. PID 1's bootEnv.Merge used to make one bounded context, wait for
// the merge without a deadline, then end the merge (FinishMerge) with the
// first context: after any merge longer than the bound (2 minutes; GiBs of
// scattered chunks) the boot failed at the very end. Here the bound is
// lowered to 20 s (a loaded TCG guest still ends a merge's last step well
// within it) and the merge made to last longer than that, whatever the
// host's speed: the progress callback sleeps past the bound when the kernel
// reports the merge done. With the old single context FinishMerge failed
// with "context deadline exceeded"; now each step gets its own bound.
//
// The checkpoint is set up as PID 1 does (begin's allocation and map, then
// bootEnv.CreateSnapshot and MountOrigin), the trial overwrites and adds
// files, and the rollback runs through bootEnv.VerifyExtents and
// bootEnv.Merge; userdata must then hold exactly the files of before.
func TestVMMergeOutlastsStepBound(t *testing.T) {
	testutil.RequireVM(t)
	testutil.RequireRoot(t)
	disk := testutil.TestDisks(t, 1)[0]
	ud, err := findUserdata(disk)
	if err != nil {
		t.Fatal(err)
	}
	mkfs := testutil.LookPath(t, "mkfs.ext4")
	if out, err := exec.Command(mkfs, "-q", "-F", "-b", "4096", "-E", "nodiscard", ud.Path, "65536").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v\n%s", err, out)
	}
	dir := t.TempDir()
	mnt := filepath.Join(dir, "data")
	if err := mountDev(ud.Path, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if err := writeSynced(filepath.Join(mnt, "f"+string(rune('0'+i))), i, 512<<10); err != nil {
			t.Fatal(err)
		}
	}
	before, err := manifest.Dir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	// begin: allocate, map, flush the journal; unmount (the reboot).
	m, err := allocateCOW(mnt, 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	em, err := extentMapFromFiemap(m, chunkFor(m.BlockSize))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkpointJournal(mnt); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Unmount(mnt); err != nil {
		t.Fatal(err)
	}

	// The trial boot: snapshot, mount the origin, change the files.
	env := &bootEnv{ud: ud, dataDir: mnt, fstype: "ext4", verifyDir: filepath.Join(dir, "verify"),
		logf: t.Logf, cowPath: DefaultCOWPath}
	if err := os.MkdirAll(env.verifyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := env.CreateSnapshot(&em); err != nil {
		t.Fatal(err)
	}
	if err := env.MountOrigin(); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if err := writeSynced(filepath.Join(mnt, "f"+string(rune('0'+i))), 100+i, 768<<10); err != nil {
			t.Fatal(err)
		}
		if err := writeSynced(filepath.Join(mnt, "new"+string(rune('0'+i))), 200+i, 512<<10); err != nil {
			t.Fatal(err)
		}
	}
	if err := testutil.Unmount(mnt); err != nil {
		t.Fatal(err)
	}
	k, err := env.checkpoint(&em)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := env.ctx()
	err = k.Teardown(ctx)
	cancel()
	env.dm.Close()
	if err != nil {
		t.Fatal(err)
	}

	// The rollback boot, with a short step bound and a merge that
	// outlasts it.
	defer func(d time.Duration) { dmStepTimeout = d }(dmStepTimeout)
	dmStepTimeout = 20 * time.Second
	slept := false
	rb := &bootEnv{ud: ud, dataDir: mnt, fstype: "ext4", verifyDir: env.verifyDir, logf: t.Logf,
		cowPath: DefaultCOWPath, checkCurrent: true,
		progress: func(string) func(dmsnap.Progress) {
			return func(p dmsnap.Progress) {
				if p.Done && !slept {
					slept = true
					time.Sleep(dmStepTimeout + time.Second)
				}
			}
		}}
	fp, invalid, err := rb.VerifyExtents(DefaultCOWPath, &em)
	if err != nil || invalid || fp != em.Fingerprint() {
		t.Fatalf("verify: invalid=%v err=%v (fingerprint match %v)", invalid, err, fp == em.Fingerprint())
	}
	if invalid, err := rb.Merge(&em); err != nil || invalid {
		t.Fatalf("a merge that outlasted the %v step bound: invalid=%v err=%v", dmStepTimeout, invalid, err)
	}
	if !slept {
		t.Fatal("the merge never reported done to the progress callback")
	}
	if err := rb.MountPlain(); err != nil {
		t.Fatal(err)
	}
	defer testutil.Unmount(mnt)
	after, err := manifest.Dir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if diff := after.Diff(before, 10); len(diff) > 0 {
		t.Fatalf("userdata after the merge differs from before the trial: %v", diff)
	}
	unix.Sync()
}

// writeSynced writes size bytes derived from seed to path and fsyncs it.
func writeSynced(path string, seed, size int) error {
	b := make([]byte, size)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// allocateCOW allocates and pins the COW file as `cpinit begin` does.
func allocateCOW(dataDir string, size uint64) (*fiemap.Map, error) {
	return fiemap.Allocate(filepath.Join(dataDir, DefaultCOWPath), size, fiemap.AllocOptions{Reserve: 4 << 20})
}
