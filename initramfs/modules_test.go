package initramfs

import (
	"debug/elf"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/u-root/u-root/pkg/kmodule"
)

func TestParseModinfo(t *testing.T) {
	b := []byte("license=GPL\x00depends=dm-bufio,dm-mod\x00\x00\x00name=dm_snapshot\x00alias=dm-snapshot-origin\x00alias=dm-snapshot-merge\x00")
	info, err := ParseModinfo(b)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"license": {"GPL"},
		"depends": {"dm-bufio,dm-mod"},
		"name":    {"dm_snapshot"},
		"alias":   {"dm-snapshot-origin", "dm-snapshot-merge"},
	}
	if !reflect.DeepEqual(info, want) {
		t.Fatalf("got %v, want %v", info, want)
	}
	if _, err := ParseModinfo([]byte("garbage\x00")); err == nil {
		t.Fatal("record without '=' accepted")
	}
}

func TestCanonicalName(t *testing.T) {
	for in, want := range map[string]string{
		"dm-mod":                         "dm_mod",
		"kernel/drivers/md/dm-mod.ko":    "dm_mod",
		"virtio_blk":                     "virtio_blk",
		"kernel/drivers/x/foo-bar.ko.xz": "foo_bar",
	} {
		if got := CanonicalName(in); got != want {
			t.Errorf("CanonicalName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestModulesDepFormat(t *testing.T) {
	mods := []Module{
		{Name: "dm_snapshot", RelPath: "kernel/drivers/md/dm-snapshot.ko", Depends: []string{"dm_mod", "dm_bufio"}},
		{Name: "dm_mod", RelPath: "kernel/drivers/md/dm-mod.ko"},
		{Name: "dm_bufio", RelPath: "kernel/drivers/md/dm-bufio.ko"},
	}
	want := "kernel/drivers/md/dm-bufio.ko:\n" +
		"kernel/drivers/md/dm-mod.ko:\n" +
		"kernel/drivers/md/dm-snapshot.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n"
	if got := string(ModulesDep(mods)); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func pinnedKernel(t *testing.T) Kernel {
	t.Helper()
	k, err := FetchKernel()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestResolvePinnedKernel reads the real modules of the pinned kernel and
// checks the list is closed under dependencies, then feeds the generated
// modules.dep to u-root's kmodule (dry run) to prove it loads dm-snapshot
// after what it needs.
func TestResolvePinnedKernel(t *testing.T) {
	k := pinnedKernel(t)
	list := filepath.Join(RepoRoot(), "initramfs", "modules.list")
	if k.ModuleList != list {
		t.Errorf("the default kernel's module list is %s, want %s", k.ModuleList, list)
	}
	if !strings.Contains(k.Release, "cloud") {
		t.Errorf("FetchKernel gave %s, want the cloud kernel (the default)", k.Release)
	}
	if k.Arch != "amd64" {
		t.Errorf("the default kernel's architecture is %q, want amd64 (kernel.env sets no KERNEL_ARCH)", k.Arch)
	}
	names, err := ReadList(list)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := Resolve(k.Modules, names)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Module{}
	for _, m := range mods {
		byName[m.Name] = m
	}
	if d := byName["dm_snapshot"].Depends; !reflect.DeepEqual(sortedCopy(d), []string{"dm_bufio", "dm_mod"}) {
		t.Errorf("dm_snapshot depends on %v, want dm_bufio and dm_mod (from its .modinfo)", d)
	}

	root := t.TempDir()
	modDir := filepath.Join(root, "lib", "modules", k.Release)
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(modDir, "modules.dep"), ModulesDep(mods), 0o644); err != nil {
		t.Fatal(err)
	}
	var loaded []string
	opts := kmodule.ProbeOpts{RootDir: root, KVer: k.Release, IgnoreProcMods: true,
		DryRunCB: func(p string) { loaded = append(loaded, CanonicalName(p)) }}
	if err := kmodule.ProbeOptions("dm-snapshot", "", opts); err != nil {
		t.Fatal(err)
	}
	if len(loaded) != 3 || loaded[2] != "dm_snapshot" {
		t.Fatalf("kmodule load order %v, want dm_mod and dm_bufio before dm_snapshot", loaded)
	}
}

// TestResolveGenericKernel: the second pinned kernel (kernel-generic.env)
// fetches into its own tree, and its module list resolves: f2fs with its
// hard dependencies, and every soft "pre:" dependency of a listed module
// (f2fs's crc32, which the closure check of Resolve does not follow) is
// provided by a module listed before it, by name or alias. kmodule loads
// f2fs after its dependencies from the generated modules.dep.
func TestResolveGenericKernel(t *testing.T) {
	k, err := FetchPinnedKernel(GenericKernel)
	if err != nil {
		t.Fatal(err)
	}
	cloud := pinnedKernel(t)
	if k.Release == cloud.Release || k.Modules == cloud.Modules || k.Vmlinuz == cloud.Vmlinuz {
		t.Fatalf("generic kernel %+v is not distinct from the cloud kernel %+v", k, cloud)
	}
	if want := filepath.Join(RepoRoot(), "initramfs", "modules-generic.list"); k.ModuleList != want {
		t.Errorf("module list %s, want %s", k.ModuleList, want)
	}
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		t.Fatal(err)
	}
	names, err := ReadList(k.ModuleList)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := Resolve(k.Modules, names)
	if err != nil {
		t.Fatal(err)
	}
	provides := map[string]int{} // name or alias -> position in the list
	for i, m := range mods {
		info := modinfo(t, k.Modules, m.RelPath)
		provides[m.Name] = i
		for _, a := range info["alias"] {
			provides[a] = i
		}
	}
	for i, m := range mods {
		for _, sd := range modinfo(t, k.Modules, m.RelPath)["softdep"] {
			pre, _, _ := strings.Cut(strings.TrimPrefix(sd, "pre:"), "post:")
			for _, need := range strings.Fields(pre) {
				if j, ok := provides[need]; !ok || j > i {
					t.Errorf("%s needs %s first (softdep %q): list a module providing it before %s", m.Name, need, sd, m.Name)
				}
			}
		}
	}
	for _, want := range []string{"f2fs", "virtio_blk", "dm_snapshot", "crc32_generic", "ext4"} {
		if _, ok := provides[want]; !ok {
			t.Errorf("%s not in %s", want, k.ModuleList)
		}
	}

	root := t.TempDir()
	modDir := filepath.Join(root, "lib", "modules", k.Release)
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(modDir, "modules.dep"), ModulesDep(mods), 0o644); err != nil {
		t.Fatal(err)
	}
	var loaded []string
	opts := kmodule.ProbeOpts{RootDir: root, KVer: k.Release, IgnoreProcMods: true,
		DryRunCB: func(p string) { loaded = append(loaded, CanonicalName(p)) }}
	if err := kmodule.ProbeOptions("f2fs", "", opts); err != nil {
		t.Fatal(err)
	}
	if len(loaded) < 2 || loaded[len(loaded)-1] != "f2fs" {
		t.Fatalf("kmodule load order %v, want f2fs last, after its dependencies", loaded)
	}
}

// TestResolveArm64Kernel: the arm64 kernel (kernel-arm64.env, fetched with
// a private apt configuration for arm64) unpacks into its own tree; its
// module list resolves, every module is an AArch64 ELF file, and kmodule
// loads dm-snapshot after dax, dm-mod and dm-bufio (on arm64 the DAX core
// is a module dm-mod depends on) and virtio_blk after the virtio core,
// from the generated modules.dep. Build refuses to pair its modules with
// programs of another architecture, and the amd64 kernel's with arm64
// programs, before it runs u-root.
func TestResolveArm64Kernel(t *testing.T) {
	k, err := FetchPinnedKernel(Arm64Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if k.Arch != "arm64" || !strings.HasSuffix(k.Release, "-arm64") {
		t.Fatalf("kernel-arm64.env gave %+v, want an arm64 kernel", k)
	}
	if want := filepath.Join(RepoRoot(), "initramfs", "modules-arm64.list"); k.ModuleList != want {
		t.Errorf("module list %s, want %s", k.ModuleList, want)
	}
	if f, err := os.Open(k.Vmlinuz); err != nil {
		t.Fatal(err)
	} else {
		// The arm64 boot image header (Documentation/arm64/booting.rst in 6.1,
		// "Call the kernel image"): magic "ARM\x64" at offset 56. Debian's
		// arm64 vmlinuz is the uncompressed Image that QEMU loads as is.
		hdr := make([]byte, 64)
		_, err := f.ReadAt(hdr, 0)
		f.Close()
		if err != nil || string(hdr[56:60]) != "ARM\x64" {
			t.Errorf("%s is not an arm64 Image (magic %q, %v)", k.Vmlinuz, hdr[56:60], err)
		}
	}
	names, err := ReadList(k.ModuleList)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := Resolve(k.Modules, names)
	if err != nil {
		t.Fatal(err)
	}
	checkResolved(t, k, mods, elf.EM_AARCH64, map[string][]string{
		"dm-snapshot": {"dax", "dm_mod", "dm_bufio", "dm_snapshot"},
		"virtio_blk":  {"virtio", "virtio_ring", "virtio_blk"},
		"virtio_pci":  {"virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci"},
	})

	amd64 := pinnedKernel(t)
	for _, c := range []struct {
		k    Kernel
		arch string
		want string
	}{{k, "amd64", "EM_AARCH64"}, {k, "arm", "EM_AARCH64"}, {amd64, "arm64", "EM_X86_64"}} {
		var log strings.Builder
		err := Build(BuildOptions{Modules: c.k.Modules, List: c.k.ModuleList, Arch: c.arch, Out: filepath.Join(t.TempDir(), "x.cpio"),
			InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}, Log: &log})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.arch) {
			t.Errorf("Build of %s's modules for %s: %v, want a refusal naming %s", c.k.Release, c.arch, err, c.want)
		}
		if log.Len() > 0 {
			t.Errorf("Build for %s ran u-root before refusing:\n%s", c.arch, log.String())
		}
	}
}

func modinfo(t *testing.T, modDir, rel string) map[string][]string {
	t.Helper()
	f, err := elf.Open(filepath.Join(modDir, rel))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := f.Section(".modinfo").Data()
	if err != nil {
		t.Fatal(err)
	}
	info, err := ParseModinfo(data)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func TestResolveRejectsUnlistedDependency(t *testing.T) {
	k := pinnedKernel(t)
	_, err := Resolve(k.Modules, []string{"dm-snapshot"})
	if err == nil || !strings.Contains(err.Error(), "not in the module list") {
		t.Fatalf("err = %v, want a complaint about an unlisted dependency", err)
	}
	_, err = Resolve(k.Modules, []string{"no-such-module"})
	if err == nil || !strings.Contains(err.Error(), "no-such-module") {
		t.Fatalf("err = %v, want one naming the missing module", err)
	}
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	for i := range c {
		for j := i + 1; j < len(c); j++ {
			if c[j] < c[i] {
				c[i], c[j] = c[j], c[i]
			}
		}
	}
	return c
}

// TestResolveArm32Kernel: the 32-bit ARM armmp kernel (kernel-armhf.env)
// resolves its module list into ARM ELF modules, and kmodule loads ext4
// after jbd2, mbcache and crc16 (a module on armmp, built into the cloud
// kernels) and dm-snapshot after dm-mod and dm-bufio (no DAX module here).
// It fetches 43 MB, so it runs with CPINIT_ARM32=1 (make test-arm32), as the
// 32-bit ARM VM tests do.
func TestResolveArm32Kernel(t *testing.T) {
	if os.Getenv("CPINIT_ARM32") != "1" {
		t.Skip("32-bit ARM kernel: runs with CPINIT_ARM32=1 (make test-arm32, make soak); make test does not fetch that kernel")
	}
	k, err := FetchPinnedKernel(Arm32Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if k.Arch != "arm" || !strings.HasSuffix(k.Release, "-armmp") {
		t.Fatalf("kernel-armhf.env gave %+v, want a 32-bit ARM kernel", k)
	}
	names, err := ReadList(k.ModuleList)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := Resolve(k.Modules, names)
	if err != nil {
		t.Fatal(err)
	}
	checkResolved(t, k, mods, elf.EM_ARM, map[string][]string{
		"ext4":        {"jbd2", "mbcache", "crc16", "ext4"},
		"dm-snapshot": {"dm_mod", "dm_bufio", "dm_snapshot"},
		"virtio_pci":  {"virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci"},
	})
}

// checkResolved checks a foreign kernel's resolved modules: each is an ELF
// file for machine, and kmodule, reading the modules.dep Build writes for
// them, loads each module of want with its dependencies, want's set with
// the module itself last.
func checkResolved(t *testing.T, k Kernel, mods []Module, machine elf.Machine, want map[string][]string) {
	t.Helper()
	for _, m := range mods {
		if m.Machine != machine {
			t.Errorf("module %s is for %v, want %v", m.RelPath, m.Machine, machine)
		}
	}
	root := t.TempDir()
	modDir := filepath.Join(root, "lib", "modules", k.Release)
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(modDir, "modules.dep"), ModulesDep(mods), 0o644); err != nil {
		t.Fatal(err)
	}
	for mod, want := range want {
		var loaded []string
		opts := kmodule.ProbeOpts{RootDir: root, KVer: k.Release, IgnoreProcMods: true,
			DryRunCB: func(p string) { loaded = append(loaded, CanonicalName(p)) }}
		if err := kmodule.ProbeOptions(mod, "", opts); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(sortedCopy(loaded), sortedCopy(want)) || loaded[len(loaded)-1] != want[len(want)-1] {
			t.Errorf("kmodule loads %s as %v, want %v with %s last", mod, loaded, want, want[len(want)-1])
		}
	}
}

// compressedTree copies the pinned kernel's modules named in comp into a
// module tree under t's temporary directory (…/lib/modules/<release>),
// each compressed as its suffix in comp says ("" keeps it plain), as
// Debian since 6.10 and Fedora ship them. It returns the tree.
func compressedTree(t *testing.T, k Kernel, comp map[string]string) string {
	t.Helper()
	idx, err := IndexModules(k.Modules)
	if err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(t.TempDir(), "lib", "modules", k.Release)
	for name, suffix := range comp {
		rel, ok := idx[CanonicalName(name)]
		if !ok {
			t.Fatalf("%s not in %s", name, k.Modules)
		}
		dst := filepath.Join(tree, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		src := filepath.Join(k.Modules, rel)
		if suffix == "" {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		testutil.CompressModule(t, src, strings.TrimSuffix(dst, ".ko")+suffix)
	}
	return tree
}

// TestResolveCompressedModules: a module tree of compressed modules (the
// pinned kernel's dm modules, xz with CRC32 as modules_install writes it,
// zstd and gzip) resolves as the plain one does, with the dependencies
// read from the decompressed .modinfo; modules.dep names the compressed
// files for an image that ships them (kmodule finds and orders them), and
// the plain .ko names for one that decompresses them (Build's default).
func TestResolveCompressedModules(t *testing.T) {
	k := pinnedKernel(t)
	tree := compressedTree(t, k, map[string]string{"dm-mod": ".ko.xz", "dm-bufio": ".ko.gz", "dm-snapshot": ".ko.zst", "virtio_blk": ""})
	// Both a plain and a compressed file of one module: the plain wins.
	testutil.CompressModule(t, filepath.Join(tree, "kernel/drivers/block/virtio_blk.ko"), filepath.Join(tree, "kernel/drivers/block/virtio_blk.ko.xz"))

	idx, err := IndexModules(tree)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"dm_mod":      "kernel/drivers/md/dm-mod.ko.xz",
		"dm_bufio":    "kernel/drivers/md/dm-bufio.ko.gz",
		"dm_snapshot": "kernel/drivers/md/dm-snapshot.ko.zst",
		"virtio_blk":  "kernel/drivers/block/virtio_blk.ko",
	}
	if !reflect.DeepEqual(idx, want) {
		t.Fatalf("IndexModules = %v, want %v", idx, want)
	}

	mods, err := Resolve(tree, []string{"dm-mod", "dm-bufio", "dm-snapshot"})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := Resolve(k.Modules, []string{"dm-mod", "dm-bufio", "dm-snapshot"})
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range mods {
		p := plain[i]
		if m.Name != p.Name || m.Machine != p.Machine || !reflect.DeepEqual(sortedCopy(m.Depends), sortedCopy(p.Depends)) {
			t.Errorf("compressed %+v, plain %+v: want the same module", m, p)
		}
	}
	if _, err := Resolve(tree, []string{"dm-snapshot"}); err == nil || !strings.Contains(err.Error(), "not in the module list") {
		t.Errorf("dm-snapshot alone: err %v, want its unlisted dependencies named", err)
	}

	wantDep := "kernel/drivers/md/dm-bufio.ko.gz: kernel/drivers/md/dm-mod.ko.xz\n" +
		"kernel/drivers/md/dm-mod.ko.xz:\n" +
		"kernel/drivers/md/dm-snapshot.ko.zst: kernel/drivers/md/dm-bufio.ko.gz kernel/drivers/md/dm-mod.ko.xz\n"
	if got := string(ModulesDep(InImage(mods, false))); got != wantDep {
		t.Errorf("modules.dep, shipped compressed:\n%s\nwant\n%s", got, wantDep)
	}
	wantPlain := "kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko\n" +
		"kernel/drivers/md/dm-mod.ko:\n" +
		"kernel/drivers/md/dm-snapshot.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n"
	if got := string(ModulesDep(InImage(mods, true))); got != wantPlain {
		t.Errorf("modules.dep, decompressed:\n%s\nwant\n%s", got, wantPlain)
	}
	if mods[0].RelPath != "kernel/drivers/md/dm-mod.ko.xz" {
		t.Errorf("InImage changed its argument: %s", mods[0].RelPath)
	}

	// kmodule (PID 1's dependency order) reads the compressed names.
	if err := os.WriteFile(filepath.Join(tree, "modules.dep"), ModulesDep(mods), 0o644); err != nil {
		t.Fatal(err)
	}
	var loaded []string
	opts := kmodule.ProbeOpts{RootDir: filepath.Dir(filepath.Dir(filepath.Dir(tree))), KVer: k.Release, IgnoreProcMods: true,
		DryRunCB: func(p string) { loaded = append(loaded, filepath.Base(p)) }}
	if err := kmodule.ProbeOptions("dm-snapshot", "", opts); err != nil {
		t.Fatal(err)
	}
	if len(loaded) != 3 || loaded[2] != "dm-snapshot.ko.zst" {
		t.Fatalf("kmodule load order %v, want dm-mod.ko.xz and dm-bufio.ko.gz before dm-snapshot.ko.zst", loaded)
	}
}
