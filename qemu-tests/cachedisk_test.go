package qemutests

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/qemu-tests/cachedisk"
)

// cacheDisk serves image as a cachedisk disk of m, named name, on a socket
// in dir (kept short: a Unix socket path has at most 107 bytes).
func cacheDisk(t *testing.T, m *cachedisk.Machine, name, image string) *cachedisk.Disk {
	t.Helper()
	d, err := m.AddDisk(name, image, filepath.Join(filepath.Dir(image), name+".sock"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// endMachine ends m at the end of the test if it still serves (a failed
// test), so no server outlives it.
func endMachine(t *testing.T, m *cachedisk.Machine) {
	t.Cleanup(func() { m.Close() })
}

// TestCacheDiskPowerCut shows that a cachedisk power cut is a real disk's:
// the system writes and fsyncs /data/cut.txt on userdata, then writes two
// blocks straight to a scratch disk (O_DIRECT), the first flushed
// (fdatasync), the second not. Both reached the disks (the second sits in
// the scratch disk's cache, where a SIGKILL of QEMU over a raw file would
// have kept it, and does: the last boot). After a DropAll cut the fsynced
// token and the flushed block survive and the unflushed block is gone.
func TestCacheDiskPowerCut(t *testing.T) {
	k := NeedQEMU(t)
	initrd := CpinitImage(t)
	dir := t.TempDir()
	udImg := filepath.Join(dir, "userdata.img")
	if err := MakeExt4(udImg, 64<<20, "userdata", ""); err != nil {
		t.Fatal(err)
	}
	scImg := filepath.Join(dir, "scratch.img")
	if err := MakeDisk(scImg, 1<<20); err != nil {
		t.Fatal(err)
	}
	sysImg := systemImage(t, dir, "system_a")

	m := cachedisk.NewMachine()
	endMachine(t, m)
	ud, sc := cacheDisk(t, m, "userdata", udImg), cacheDisk(t, m, "scratch", scImg)
	start := time.Now()
	vm := StartT(t, Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Disks:  []string{sysImg, ud.URI(), sc.URI()},
		Append: "cpinit.root=LABEL=system_a cpinit.userdata=LABEL=userdata sysinit.action=write sysinit.token=fsynced sysinit.rawdev=/dev/vdc sysinit.rawtoken=T42",
	})
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdb`, BootTimeout)
	vm.ExpectT(t, `sysinit: wrote cut.txt`, BootTimeout)
	vm.ExpectT(t, `sysinit: wrote /dev/vdc synced=4096 unsynced=0`, BootTimeout)
	t.Logf("boot to the cut point: %v; flushes: userdata %d, scratch %d", time.Since(start), ud.Flushes(), sc.Flushes())
	// The unflushed block is in the scratch disk's cache: 8 sectors,
	// acknowledged to the guest, not durable.
	if n := sc.CachedSectors(); n != 8 {
		t.Fatalf("scratch disk caches %d sectors, want 8 (the unflushed 4 KiB)", n)
	}
	if ud.Flushes() == 0 || sc.Flushes() != 1 {
		t.Fatalf("flushes: userdata %d (want some: the fsyncs), scratch %d (want 1: the fdatasync)", ud.Flushes(), sc.Flushes())
	}
	vm.Kill()
	res, err := m.Cut(cachedisk.DropAll, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cut: %+v; flush log: %v", res, m.Log())

	b, err := os.ReadFile(scImg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[:4096], make([]byte, 4096)) {
		t.Errorf("the unflushed block survived the cut: %q", b[:20])
	}
	if !bytes.HasPrefix(b[4096:], []byte("synced T42\n")) {
		t.Errorf("the flushed block was lost: %q", b[4096:4096+20])
	}

	// The next boot (plain files: the cut left them as they are) finds the
	// fsynced token.
	vm = StartT(t, Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Disks:  []string{sysImg, udImg, scImg},
		Append: "cpinit.root=LABEL=system_a cpinit.userdata=LABEL=userdata",
	})
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdb`, BootTimeout)
	vm.ExpectT(t, `sysinit: cut.txt="fsynced"`, BootTimeout)
	if err := vm.Wait(BootTimeout); err != nil {
		t.Fatalf("second boot did not power off cleanly: %v", err)
	}

	// The same on raw files: the kill keeps the unflushed block, which
	// is why the harness needs cachedisk.
	vm = StartT(t, Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Disks:  []string{sysImg, udImg, scImg},
		Append: "cpinit.root=LABEL=system_a cpinit.userdata=LABEL=userdata sysinit.action=write sysinit.token=again sysinit.rawdev=/dev/vdc sysinit.rawtoken=T99",
	})
	vm.ExpectT(t, `sysinit: wrote /dev/vdc synced=4096 unsynced=0`, BootTimeout)
	vm.Kill()
	if b, err = os.ReadFile(scImg); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("unsynced T99\n")) {
		t.Errorf("a kill over a raw file lost the unflushed block: %q", b[:20])
	}
}

// TestCacheDiskCutAtFlush shows the cut at flush K: an uncut boot that
// writes and fsyncs /data/cut.txt counts N flushes on userdata before
// "wrote cut.txt"; then, for every K in 1..N, the same boot from the same
// images stops at flush K whatever the host's speed: flush K is neither
// performed nor acknowledged, the guest never gets to "wrote cut.txt", and
// the flushes before it are the uncut boot's. After the cut (DropAll at
// every K; Subset with two seeds at K=N) the next boot mounts userdata (the journal replays) and finds cut.txt either absent
// or whole: ext4's fsync never leaves a torn file behind, whatever the cache
// loses after flush K-1.
func TestCacheDiskCutAtFlush(t *testing.T) {
	k := NeedQEMU(t)
	initrd := CpinitImage(t)
	dir := t.TempDir()
	pristine := filepath.Join(dir, "userdata.pristine")
	if err := MakeExt4(pristine, 64<<20, "userdata", ""); err != nil {
		t.Fatal(err)
	}
	sysImg := systemImage(t, dir, "system_a")
	udImg := filepath.Join(dir, "userdata.img")
	reset := func() {
		t.Helper()
		b, err := os.ReadFile(pristine)
		if err == nil {
			err = os.WriteFile(udImg, b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	const write = "cpinit.root=LABEL=system_a cpinit.userdata=LABEL=userdata sysinit.action=write sysinit.token=whole"
	boot := func(m *cachedisk.Machine) (*VM, *cachedisk.Disk) {
		t.Helper()
		ud := cacheDisk(t, m, "userdata", udImg)
		return StartT(t, Options{Kernel: k.Vmlinuz, Initrd: []string{initrd}, Disks: []string{sysImg, ud.URI()}, Append: write}), ud
	}

	// The uncut boot.
	reset()
	m := cachedisk.NewMachine()
	endMachine(t, m)
	vm, ud := boot(m)
	vm.ExpectT(t, `sysinit: wrote cut.txt`, BootTimeout)
	n, uncut := ud.Flushes(), m.Log()
	vm.Kill()
	if _, err := m.Cut(cachedisk.DropAll, 0); err != nil {
		t.Fatal(err)
	}
	if n == 0 || len(uncut) < n {
		t.Fatalf("uncut boot: %d flushes on userdata, log %v", n, uncut)
	}
	t.Logf("uncut boot: %d flushes before the token was fsynced: %v", n, uncut[:n])

	type cut struct {
		K    int
		mode cachedisk.Mode
		seed uint64
	}
	var cuts []cut
	for K := 1; K <= n; K++ {
		cuts = append(cuts, cut{K, cachedisk.DropAll, 0})
	}
	// And at the fsync's last flush, two cuts that keep a seeded part of
	// the cache: there it holds the journal's commit block, 2 sectors,
	// which seed 1 keeps one of (a torn commit: the journal checksum
	// rejects it) and seed 5 both (the transaction replays).
	cuts = append(cuts, cut{n, cachedisk.Subset, 1}, cut{n, cachedisk.Subset, 5})
	for _, c := range cuts {
		K := c.K
		reset()
		m := cachedisk.NewMachine()
		endMachine(t, m)
		m.CutAtFlush(K)
		vm, _ := boot(m)
		select {
		case <-m.Reached():
		case <-time.After(BootTimeout):
			t.Fatalf("K=%d: flush %d never arrived\n%s", K, K, Tail(vm.Output(), 30))
		}
		// Nothing is acknowledged any more: the fsync cannot return.
		if err := vm.ExpectString("sysinit: wrote cut.txt", 3*time.Second); err == nil {
			t.Fatalf("K=%d: the guest fsynced cut.txt past the cut", K)
		}
		vm.Kill()
		log := m.Log()
		if len(log) != K-1 {
			t.Fatalf("K=%d: %d flushes performed, want %d: %v", K, len(log), K-1, log)
		}
		for i, r := range log {
			if r.Seq != uncut[i].Seq || r.Disk != uncut[i].Disk {
				t.Errorf("K=%d: flush %v, the uncut boot's was %v", K, r, uncut[i])
			}
		}
		res, err := m.Cut(c.mode, c.seed)
		if err != nil {
			t.Fatal(err)
		}

		vm = StartT(t, Options{Kernel: k.Vmlinuz, Initrd: []string{initrd}, Disks: []string{sysImg, udImg},
			Append: "cpinit.root=LABEL=system_a cpinit.userdata=LABEL=userdata"})
		vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdb`, BootTimeout)
		if err := vm.Wait(BootTimeout); err != nil {
			t.Fatalf("K=%d: the boot after the cut did not power off cleanly: %v\n%s", K, err, Tail(vm.Output(), 30))
		}
		out := vm.Output()
		got := "absent"
		if i := strings.Index(out, "sysinit: cut.txt="); i >= 0 {
			got = strings.TrimSpace(strings.SplitN(out[i+len("sysinit: cut.txt="):], "\n", 2)[0])
			if got != `"whole"` {
				t.Errorf("K=%d: after the cut cut.txt=%s: torn", K, got)
			}
		}
		if !strings.Contains(out, "sysinit: pid=1") {
			t.Errorf("K=%d: the system did not start after the cut", K)
		}
		t.Logf("K=%d %v seed %d: flushes before the cut %v, cache %+v; next boot: cut.txt %s", K, c.mode, c.seed, log, res["userdata"], got)
	}
}
