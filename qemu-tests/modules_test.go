package qemutests

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/u-root/u-root/pkg/cpio"
)

// TestBootCompressedModules: cpinit's PID 1 loads compressed kernel
// modules, as Debian since 6.10 and Fedora ship them. The pinned kernel's
// modules (plain .ko in its package) are compressed on the host as the
// kernel's modules_install does (xz with CRC32, zstd, gzip) into a module
// tree, and the initramfs ships them compressed (BuildOptions.
// CompressedModules), modules.dep naming them so. The pinned 6.1 kernel
// has no CONFIG_MODULE_DECOMPRESS: finit_module with
// MODULE_INIT_COMPRESSED_FILE fails and PID 1 decompresses each module
// itself. The first boot loads the virtio modules that way and arms a
// checkpoint; the trial boot loads dm-mod (xz), dm-bufio (gzip) and
// dm-snapshot (zstd) and maps userdata through the snapshot.
func TestBootCompressedModules(t *testing.T) {
	k := NeedQEMU(t)
	testutil.LookPath(t, "debugfs")
	testutil.LookPath(t, "e2fsck")
	dir := t.TempDir()

	names, err := initramfs.ReadList(k.ModuleList)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := initramfs.IndexModules(k.Modules)
	if err != nil {
		t.Fatal(err)
	}
	suffix := map[string]string{"dm_mod": ".ko.xz", "dm_bufio": ".ko.gz", "dm_snapshot": ".ko.zst"}
	tree := filepath.Join(dir, "lib", "modules", k.Release)
	for i, n := range names {
		c := initramfs.CanonicalName(n)
		rel, ok := idx[c]
		if !ok {
			t.Fatalf("%s not in %s", n, k.Modules)
		}
		s, ok := suffix[c]
		if !ok {
			s = []string{".ko.xz", ".ko.zst"}[i%2]
		}
		dst := filepath.Join(tree, strings.TrimSuffix(rel, ".ko")+s)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		testutil.CompressModule(t, filepath.Join(k.Modules, rel), dst)
	}
	initrd := filepath.Join(dir, "cpinit-compressed.cpio")
	if err := initramfs.Build(initramfs.BuildOptions{Modules: tree, List: k.ModuleList, Arch: k.Arch, Out: initrd,
		InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}, Cache: ImageCache(), CompressedModules: true}); err != nil {
		t.Fatal(err)
	}
	checkCompressedImage(t, initrd, k.Release, len(names))

	d, err := NewABDevice(filepath.Join(dir, "device"), k, initrd, 60, 20)
	if err != nil {
		t.Fatal(err)
	}
	OTABegin(t, d, "64M")

	d.Slot[1] = "sysinit.action=report"
	vm, slot := d.Boot(t, "")
	if slot != 1 {
		t.Fatalf("bootloader picked slot %d for the trial, want 1", slot)
	}
	vm.ExpectT(t, `cpinit: loaded kernel modules: \[virtio .*virtio_blk.*\]; device-mapper modules load when needed: \[dm-mod dm-bufio dm-snapshot\]`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: loaded device-mapper modules: \[dm-mod dm-bufio dm-snapshot\]`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: state=checkpointing/active userdata=/dev/vdc mounted=/newroot/data via=/dev/mapper/cp-origin action=create-snapshot`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
}

// checkCompressedImage checks that the image holds the n listed modules
// compressed only, and a modules.dep naming those files.
func checkCompressedImage(t *testing.T, path, release string, n int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatal(err)
	}
	md := "lib/modules/" + release + "/"
	var mods []string
	dep := ""
	for _, r := range recs {
		switch {
		case r.Name == md+"modules.dep":
			b, err := readRecord(r)
			if err != nil {
				t.Fatal(err)
			}
			dep = b
		case strings.HasPrefix(r.Name, md+"kernel/") && r.Mode&cpio.S_IFMT == cpio.S_IFREG:
			mods = append(mods, r.Name)
			if strings.HasSuffix(r.Name, ".ko") {
				t.Errorf("image holds a plain module %s", r.Name)
			}
		}
	}
	if len(mods) != n {
		t.Errorf("image holds %d modules, want %d: %q", len(mods), n, mods)
	}
	for _, want := range []string{"kernel/drivers/md/dm-mod.ko.xz:", "kernel/drivers/md/dm-bufio.ko.gz: kernel/drivers/md/dm-mod.ko.xz", "kernel/drivers/md/dm-snapshot.ko.zst: "} {
		if !strings.Contains(dep, want) {
			t.Errorf("modules.dep lacks %q:\n%s", want, dep)
		}
	}
}

func readRecord(r cpio.Record) (string, error) {
	b := make([]byte, r.FileSize)
	if _, err := r.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return string(b), nil
}
