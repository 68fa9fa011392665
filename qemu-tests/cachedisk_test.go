package qemutests

import (
	"bytes"
	"os"
	"path/filepath"
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
// have kept it). After a DropAll cut the fsynced token and the flushed block
// survive and the unflushed block is gone.
func TestCacheDiskPowerCut(t *testing.T) {
	k := needQEMU(t)
	initrd := cpinitImage(t)
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
}
