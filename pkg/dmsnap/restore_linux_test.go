//go:build linux

package dmsnap

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// loopFixture puts a restoreFixture's device image on a loop device: the
// restore then runs its real I/O (O_DIRECT, O_EXCL, the flush) on a block
// device of the host kernel.
func loopFixture(t *testing.T, f *restoreFixture) (dev, img string) {
	t.Helper()
	testutil.RequireRoot(t)
	losetup := testutil.LookPath(t, "losetup")
	img = filepath.Join(t.TempDir(), "origin.img")
	if err := os.WriteFile(img, f.dev, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "-f", "--show", "--direct-io=on", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	num, err := DeviceNumber(dev)
	if err != nil {
		t.Fatal(err)
	}
	f.cfg.Origin = num
	for i := range f.cfg.Cow {
		f.cfg.Cow[i].Dev = num
	}
	return dev, img
}

func TestRestoreLoopDevice(t *testing.T) {
	// 32 MiB, the COW in two extents; 1500 scattered changed chunks and a
	// sequential run of 300.
	f := newRestoreFixture(t, 8192, [][2]uint64{{5000, 1500}, {1000, 600}})
	saved := map[uint64]bool{}
	rng := rand.New(rand.NewPCG(3, 4))
	for len(saved) < 1500 {
		if c := rng.Uint64N(8192); !f.isCOW(c) {
			f.write(c, byte(rng.Uint32()), saved)
		}
	}
	for c := uint64(100); c < 400; c++ {
		f.write(c, 0xab, saved)
	}
	// A run written from the top down: gathered writes (pwritev).
	for c := uint64(3999); c >= 3700; c-- {
		if !f.isCOW(c) {
			f.write(c, 0xcd, saved)
		}
	}
	dev, img := loopFixture(t, f)
	var last Progress
	calls := 0
	p, err := Restore(context.Background(), dev, f.cfg, RestoreOptions{Workers: 8, MaxIO: 256 << 10, Progress: func(pr Progress) { last = pr; calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	if !last.Done || last.BytesLeft != 0 || last.BytesTotal != uint64(len(saved))*4096 || calls < 2 {
		t.Errorf("progress: %d calls, last %+v", calls, last)
	}
	t.Logf("restored %d chunks in %d reads and %d writes", len(p.Table.Exceptions), p.Reads(), p.Copies())
	gathered := 0
	for _, r := range p.reads {
		for _, w := range r.writes {
			if len(w.segs) > 1 {
				gathered++
			}
		}
	}
	if gathered == 0 {
		t.Error("no gathered write: the pwritev path went untested")
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	f.dev = got
	if !f.restored() {
		t.Fatal("the loop device after Restore is not the device at the checkpoint")
	}
}

func TestRestoreRefusesBusyOrWrongDevice(t *testing.T) {
	f := newRestoreFixture(t, 256, [][2]uint64{{200, 40}})
	saved := map[uint64]bool{}
	f.write(7, 0x11, saved)
	dev, img := loopFixture(t, f)
	// Held open exclusively, as a mount or a dm table holds it.
	h, err := os.OpenFile(dev, os.O_RDONLY|unix.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(context.Background(), dev, f.cfg, RestoreOptions{}); !errors.Is(err, ErrOriginInUse) {
		t.Errorf("restore of a device in use: %v", err)
	}
	h.Close()
	wrong := f.cfg
	wrong.OriginSectors -= 8
	if _, err := Restore(context.Background(), dev, wrong, RestoreOptions{}); !errors.Is(err, ErrUnexpectedState) || !strings.Contains(err.Error(), "holds 1048576 bytes") {
		t.Errorf("restore with the wrong origin size: %v", err)
	}
	wrong = f.cfg
	wrong.Origin.Minor++
	if _, err := Restore(context.Background(), dev, wrong, RestoreOptions{}); !errors.Is(err, ErrUnexpectedState) {
		t.Errorf("restore of another device: %v", err)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if f.dev = got; f.restored() {
		t.Error("a refused restore wrote to the device")
	}
}

// TestRestoreEmptyTable: a trial that changed nothing leaves a table with
// no exceptions; the restore writes nothing and succeeds.
func TestRestoreEmptyTable(t *testing.T) {
	f := newRestoreFixture(t, 256, [][2]uint64{{200, 40}})
	dev, _ := loopFixture(t, f)
	p, err := Restore(context.Background(), dev, f.cfg, RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Copies() != 0 || p.Bytes() != 0 {
		t.Fatalf("plan for an empty table: %d copies, %d bytes", p.Copies(), p.Bytes())
	}
}

// TestRestoreMaxIOBelowChunk: a MaxIO smaller than a chunk still copies
// whole chunks.
func TestRestoreMaxIOBelowChunk(t *testing.T) {
	f := newRestoreFixture(t, 256, [][2]uint64{{200, 40}})
	saved := map[uint64]bool{}
	for c := uint64(10); c < 20; c++ {
		f.write(c, 0x77, saved)
	}
	dev, img := loopFixture(t, f)
	if _, err := Restore(context.Background(), dev, f.cfg, RestoreOptions{MaxIO: 512}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if f.dev = got; !f.restored() {
		t.Fatal("not restored")
	}
}
