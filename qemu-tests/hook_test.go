package qemutests

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/u-root/u-root/pkg/cpio"
)

var (
	hookOnce sync.Once
	hookPath string
	hookErr  error
)

// hookedInitramfs builds a stand-in existing initramfs (qemu-tests/hookinit
// as its /init) and adds cpinit to it with initramfs.Build's Base.
func hookedInitramfs(t *testing.T) string {
	t.Helper()
	hookOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cpinit-hook-")
		if err != nil {
			hookErr = err
			return
		}
		bin := filepath.Join(dir, "hookinit")
		if hookErr = GoBuild(bin, "./qemu-tests/hookinit"); hookErr != nil {
			return
		}
		elf, err := os.ReadFile(bin)
		if err != nil {
			hookErr = err
			return
		}
		rec := cpio.StaticFile("init", string(elf), 0o755)
		base := filepath.Join(dir, "base.cpio")
		f, err := os.Create(base)
		if err != nil {
			hookErr = err
			return
		}
		w := cpio.Newc.Writer(f)
		if hookErr = cpio.WriteRecordsAndDirs(w, []cpio.Record{rec}); hookErr != nil {
			return
		}
		if hookErr = cpio.WriteTrailer(w); hookErr != nil {
			return
		}
		if hookErr = f.Close(); hookErr != nil {
			return
		}
		k, err := FetchKernel()
		if err != nil {
			hookErr = err
			return
		}
		hookPath = filepath.Join(OutDir(), "hooked.cpio")
		hookErr = initramfs.Build(initramfs.BuildOptions{Modules: k.Modules, Out: hookPath, InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}, Base: base, Cache: ImageCache()})
		os.RemoveAll(dir)
	})
	if hookErr != nil {
		t.Fatal(hookErr)
	}
	return hookPath
}

// TestEarlyHook: cpinit added to an existing initramfs runs first, mounts
// userdata at /data in the initramfs (no cpinit.root=), then execs the
// image's own init (kept as /inito), which finds userdata mounted. Naming
// cpinit itself as the next init is refused, not looped.
func TestEarlyHook(t *testing.T) {
	k := NeedQEMU(t)
	initrd := hookedInitramfs(t)
	dir := t.TempDir()
	ud := filepath.Join(dir, "userdata")
	if err := os.MkdirAll(ud, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ud, "hello.txt"), []byte("from-the-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	udImg := filepath.Join(dir, "userdata.img")
	if err := MakeExt4(udImg, 64<<20, "userdata", ud); err != nil {
		t.Fatal(err)
	}
	meta := filepath.Join(dir, "metadata.img")
	if err := MakeDisk(meta, 16<<20); err != nil {
		t.Fatal(err)
	}

	vm := StartT(t, Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Disks:  []string{udImg, meta},
		Append: "cpinit.userdata=LABEL=userdata cpinit.metadata=/dev/vdb cpinit.init=/inito",
	})
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vda mounted=/data`, BootTimeout)
	vm.ExpectT(t, `cpinit: exec /inito in the initramfs \(no cpinit.root=\)`, BootTimeout)
	vm.ExpectT(t, `HOOK: pid=1\b`, BootTimeout)
	vm.ExpectT(t, `HOOK: /data fstype=ext4 source=/dev/vda`, BootTimeout)
	vm.ExpectT(t, `HOOK: hello=from-the-host`, BootTimeout)
	if err := vm.Wait(BootTimeout); err != nil {
		t.Fatalf("VM did not power off cleanly: %v", err)
	}
	assertNoPanic(t, vm)

	vm = StartT(t, Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{initrd},
		Disks:  []string{udImg},
		Append: "cpinit.userdata=LABEL=userdata cpinit.init=/init cpinit.on_fatal=poweroff",
	})
	vm.ExpectT(t, `cpinit: FATAL: cpinit.init=/init is cpinit itself`, BootTimeout)
	if err := vm.Wait(BootTimeout); err != nil {
		t.Fatalf("VM did not power off: %v", err)
	}
	assertNoPanic(t, vm)
}
