package initramfs

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// TestBuildReproducible builds the product initramfs from the same inputs
// twice and requires byte-identical output, checks the cache, and checks
// the image holds what PID 1 needs.
func TestBuildReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two initramfs images (~20 s); not in -short")
	}
	k := pinnedKernel(t)
	dir := t.TempDir()
	// The first build may come from the tests' shared cache, filled by
	// another test process or an earlier run (u-root ran there, from the
	// same inputs); the second runs u-root here and fills an empty cache;
	// the third must come from that cache: the same bytes, and no u-root
	// run.
	cache := filepath.Join(dir, "cache")
	var imgs [][]byte
	for i, name := range []string{"a.cpio", "b.cpio", "c.cpio"} {
		out := filepath.Join(dir, name)
		var log strings.Builder
		o := BuildOptions{Modules: k.Modules, Out: out, InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}, Log: &log, Cache: cache}
		if i == 0 {
			o.Cache = SharedCache()
		}
		if err := Build(o); err != nil {
			t.Fatal(err)
		}
		hit := strings.Contains(log.String(), "from the cache")
		if i == 0 {
			t.Logf("first build: u-root's image from the shared cache: %v", hit)
		} else if hit != (i == 2) {
			t.Errorf("build %d: from the cache %v, want %v; log:\n%s", i+1, hit, i == 2, log.String())
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, b)
	}
	if !bytes.Equal(imgs[0], imgs[1]) {
		t.Fatalf("two builds from the same inputs differ (%d vs %d bytes)", len(imgs[0]), len(imgs[1]))
	}
	if !bytes.Equal(imgs[1], imgs[2]) {
		t.Fatalf("the cached image differs from the build that filled the cache (%d vs %d bytes)", len(imgs[2]), len(imgs[1]))
	}
	// The kernel's unpacker (init/initramfs.c) creates a file only in a
	// directory that exists: every record's directory comes before it.
	dirs := map[string]bool{".": true}
	for _, r := range recordsList(t, imgs[0]) {
		if d := path.Dir(r.Name); !dirs[d] {
			t.Errorf("%s comes before its directory %s", r.Name, d)
		}
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			dirs[r.Name] = true
		}
	}
	t.Logf("initramfs: %d bytes uncompressed", len(imgs[0]))

	have := recordsByName(t, imgs[0])
	for _, want := range []string{
		"init", "bbin/cpinit", "etc/cpinit/modules",
		"lib/modules/" + k.Release + "/modules.dep",
		"lib/modules/" + k.Release + "/kernel/drivers/md/dm-snapshot.ko",
		"lib/modules/" + k.Release + "/kernel/drivers/block/virtio_blk.ko",
	} {
		if _, ok := have[want]; !ok {
			t.Errorf("initramfs lacks %s", want)
		}
	}
	if r, ok := have["init"]; ok {
		target, _ := readAll(r)
		if target != "bbin/cpinit" {
			t.Errorf("/init -> %q, want bbin/cpinit (cpinit must be PID 1 itself)", target)
		}
	}

	// Issue 7's budget: ≤ 4 MiB compressed. gzip -9 is the compressor
	// every kernel can unpack (CONFIG_RD_GZIP); `make bench` (size section)
	// reports xz, zstd and lz4 too.
	var gz bytes.Buffer
	w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	w.Write(imgs[0])
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	const budget = 4 << 20
	t.Logf("initramfs: %d bytes with gzip -9 (budget %d)", gz.Len(), budget)
	if gz.Len() > budget {
		t.Errorf("initramfs is %d bytes with gzip -9, over the %d-byte budget: see the size section of make bench for what takes the space", gz.Len(), budget)
	}
}

// recordsList decodes a newc archive into its records.
func recordsList(t *testing.T, img []byte) []cpio.Record {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(img)))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// recordsByName decodes a newc archive into its records by name.
func recordsByName(t *testing.T, img []byte) map[string]cpio.Record {
	t.Helper()
	have := map[string]cpio.Record{}
	for _, r := range recordsList(t, img) {
		have[r.Name] = r
	}
	return have
}

func readAll(r cpio.Record) (string, error) {
	b := make([]byte, r.FileSize)
	_, err := r.ReadAt(b, 0)
	return string(b), err
}

// writeCpio writes a newc archive of the given records (and the trailer).
func writeCpio(t *testing.T, path string, recs ...cpio.Record) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := cpio.Newc.Writer(f)
	if err := cpio.WriteRecordsAndDirs(w, recs); err != nil {
		t.Fatal(err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestBuildBase adds cpinit to an existing (non-u-root) initramfs: the
// base keeps its files, its /init becomes /inito, cpinit is /init. Bases
// that cannot work are refused with the reason. The boot through such an
// image is qemu-tests TestEarlyHook.
func TestBuildBase(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an initramfs (~10 s); not in -short")
	}
	k := pinnedKernel(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.cpio")
	script := "#!/bin/sh\necho base init\n"
	depPath := "lib/modules/" + k.Release + "/modules.dep"
	writeCpio(t, base,
		cpio.StaticFile("init", script, 0o755),
		cpio.StaticFile("scripts/local-top/x", "x", 0o644),
		// A path the build writes too: the build's is kept.
		cpio.StaticFile(depPath, "the base's", 0o644),
	)
	out := filepath.Join(dir, "hooked.cpio")
	if err := Build(BuildOptions{Modules: k.Modules, Out: out, InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}, Base: base, Cache: SharedCache()}); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	have := recordsByName(t, img)
	for name, want := range map[string]string{"init": "bbin/cpinit", "inito": script, "scripts/local-top/x": "x"} {
		r, ok := have[name]
		if !ok {
			t.Errorf("hooked image lacks %s", name)
			continue
		}
		if got, _ := readAll(r); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if _, ok := have["lib/modules/"+k.Release+"/kernel/drivers/md/dm-snapshot.ko"]; !ok {
		t.Error("hooked image lacks the modules")
	}
	if dep, _ := readAll(have[depPath]); !strings.Contains(dep, "dm-snapshot.ko:") {
		t.Errorf("%s = %q: the base's replaced the build's", depPath, dep)
	}
	for _, r := range recordsList(t, img) {
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s: mtime %d uid %d gid %d, want zeros (reproducible)", r.Name, r.MTime, r.UID, r.GID)
		}
	}

	for _, c := range []struct {
		name string
		recs []cpio.Record
		want string
	}{
		{"u-root", []cpio.Record{cpio.StaticFile("init", "bbin/init", 0o777), cpio.StaticFile("bbin/bb", "elf", 0o755)}, "cannot be a base"},
		{"noinit", []cpio.Record{cpio.StaticFile("etc/x", "x", 0o644)}, "no /init"},
		{"twice", []cpio.Record{cpio.StaticFile("init", "x", 0o755), cpio.StaticFile("inito", "x", 0o755)}, "already"},
	} {
		p := filepath.Join(dir, c.name+".cpio")
		writeCpio(t, p, c.recs...)
		err := Build(BuildOptions{Modules: k.Modules, Out: filepath.Join(dir, "x.cpio"), InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}, Base: p})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("base %s: %v, want an error naming it and %q", c.name, err, c.want)
		}
	}
	gz := filepath.Join(dir, "base.cpio.gz")
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	b, _ := os.ReadFile(base)
	w.Write(b)
	w.Close()
	os.WriteFile(gz, buf.Bytes(), 0o644)
	if _, err := checkBase(gz); err == nil || !strings.Contains(err.Error(), "decompress") {
		t.Errorf("compressed base: %v", err)
	}
}

// TestBuildWithUrootCommands: adding cpinit to a u-root image is building
// them together (one busybox): cpinit stays /init and PID 1, the other
// commands sit beside it (a u-root image cannot be a Base, see
// TestBuildBase).
func TestBuildWithUrootCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an initramfs (~15 s); not in -short")
	}
	k := pinnedKernel(t)
	out := filepath.Join(t.TempDir(), "with-core.cpio")
	pkgs := []string{"./cmds/cpinit", "github.com/u-root/u-root/cmds/core/ls", "github.com/u-root/u-root/cmds/core/cat"}
	if err := Build(BuildOptions{Modules: k.Modules, Out: out, InitCmd: "cpinit", Pkgs: pkgs, Cache: SharedCache()}); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	have := recordsByName(t, img)
	for _, name := range []string{"bbin/cpinit", "bbin/ls", "bbin/cat", "bbin/bb"} {
		if _, ok := have[name]; !ok {
			t.Errorf("image lacks %s", name)
		}
	}
	if target, _ := readAll(have["init"]); target != "bbin/cpinit" {
		t.Errorf("/init -> %q, want bbin/cpinit", target)
	}
}

// TestBuildArm64: the product image for the arm64 kernel, built on this
// (amd64) host: u-root itself runs as a host program and builds the
// commands for arm64, so bbin/bb is an AArch64 executable, and the modules
// and modules.dep are the arm64 kernel's (dm-mod after dax). It runs with
// CPINIT_ARM64=1 (make test-arm64, make soak) and leaves make test's time
// alone; qemu-tests' TestArm64BootSwitchRoot boots the same image.
func TestBuildArm64(t *testing.T) {
	if os.Getenv("CPINIT_ARM64") != "1" {
		t.Skip("arm64 build test: runs with CPINIT_ARM64=1 (make test-arm64, make soak); make test leaves it out for time")
	}
	k, err := FetchPinnedKernel(Arm64Kernel)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "cpinit-arm64.cpio")
	if err := Build(BuildOptions{Modules: k.Modules, List: k.ModuleList, Arch: k.Arch, Out: out, InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}, Cache: SharedCache()}); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	have := recordsByName(t, img)
	if target, _ := readAll(have["init"]); target != "bbin/cpinit" {
		t.Errorf("/init -> %q, want bbin/cpinit", target)
	}
	bb, ok := have["bbin/bb"]
	if !ok {
		t.Fatal("image lacks bbin/bb")
	}
	f, err := elf.NewFile(bb)
	if err != nil {
		t.Fatalf("bbin/bb: %v", err)
	}
	if f.Machine != elf.EM_AARCH64 || f.Class != elf.ELFCLASS64 {
		t.Errorf("bbin/bb is %v %v, want an AArch64 ELF64 executable", f.Class, f.Machine)
	}
	dep, ok := have["lib/modules/"+k.Release+"/modules.dep"]
	if !ok {
		t.Fatalf("image lacks the arm64 kernel's modules.dep (lib/modules/%s)", k.Release)
	}
	if s, _ := readAll(dep); !strings.Contains(s, "kernel/drivers/md/dm-mod.ko: kernel/drivers/dax/dax.ko\n") {
		t.Errorf("modules.dep does not load dax before dm-mod:\n%s", s)
	}
}

// TestVersionLDFlags: the -go-extra-args value keeps u-root's own -ldflags
// (the last -ldflags wins) and refuses a version that would split them.
func TestVersionLDFlags(t *testing.T) {
	got, err := versionLDFlags("v1.2.0-3-gdeadbee-dirty")
	if want := "-ldflags=-s -w -buildid= -X github.com/cpinit/cpinit/cmds/cpinit.version=v1.2.0-3-gdeadbee-dirty"; err != nil || got != want {
		t.Errorf("versionLDFlags = %q, %v; want %q", got, err, want)
	}
	for _, v := range []string{"v1 2", "v'1", `v"1`, "v1\n", "a=b"} {
		if _, err := versionLDFlags(v); err == nil {
			t.Errorf("versionLDFlags(%q) accepted", v)
		}
	}
	if v := RepoVersion(t.TempDir()); v != "" {
		t.Errorf("RepoVersion of a directory that is no git checkout: %q, want \"\"", v)
	}
}

// TestBuildStampsVersion: a Version goes through u-root's busybox build
// into cpinit: the image's cpinit reports it.
func TestBuildStampsVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an initramfs image (~40 s of CPU unless cached); not in -short")
	}
	k := pinnedKernel(t)
	if k.Arch != "" && k.Arch != runtime.GOARCH {
		t.Skipf("the pinned kernel is %s: the image's busybox cannot run on this %s host", k.Arch, runtime.GOARCH)
	}
	out := filepath.Join(t.TempDir(), "stamped.cpio")
	const version = "v0.0.0-test-stamp"
	if err := Build(BuildOptions{Modules: k.Modules, Out: out, InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}, Version: version, Cache: SharedCache()}); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	bb, ok := recordsByName(t, img)["bbin/bb"]
	if !ok {
		t.Fatal("no bbin/bb in the image")
	}
	b, err := readAll(bb)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "bb")
	if err := os.WriteFile(bin, []byte(b), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := exec.Command(bin, "cpinit", "version").Output()
	if err != nil {
		t.Fatalf("bb cpinit version: %v", err)
	}
	if want := "cpinit " + version + "\n"; string(got) != want {
		t.Errorf("the image's cpinit version: %q, want %q", got, want)
	}
}

// TestBuildCompressedModules builds from a module tree whose dm modules
// are compressed (xz, zstd, gzip) as a distribution ships them: by
// default the image holds them decompressed, byte for byte the plain .ko,
// under .ko names that modules.dep uses; with CompressedModules it holds
// the compressed files as they are, and modules.dep names them.
func TestBuildCompressedModules(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two initramfs images; not in -short")
	}
	k := pinnedKernel(t)
	names, err := ReadList(k.ModuleList)
	if err != nil {
		t.Fatal(err)
	}
	comp := map[string]string{}
	for _, n := range names {
		comp[n] = ""
	}
	comp["dm-mod"], comp["dm-bufio"], comp["dm-snapshot"] = ".ko.xz", ".ko.gz", ".ko.zst"
	tree := compressedTree(t, k, comp)
	md := "lib/modules/" + k.Release + "/"
	for _, compressed := range []bool{false, true} {
		out := filepath.Join(t.TempDir(), "img.cpio")
		o := BuildOptions{Modules: tree, List: k.ModuleList, Out: out, InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}, Cache: SharedCache(), CompressedModules: compressed}
		if err := Build(o); err != nil {
			t.Fatal(err)
		}
		img, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		have := recordsByName(t, img)
		dep, _ := readAll(have[md+"modules.dep"])
		for _, m := range []string{"dm-mod.ko.xz", "dm-bufio.ko.gz", "dm-snapshot.ko.zst"} {
			rel := "kernel/drivers/md/" + m
			plainRel := "kernel/drivers/md/" + strings.SplitAfter(m, ".ko")[0]
			wantRel, wantFile := plainRel, filepath.Join(k.Modules, plainRel)
			if compressed {
				wantRel, wantFile = rel, filepath.Join(tree, rel)
			}
			want, err := os.ReadFile(wantFile)
			if err != nil {
				t.Fatal(err)
			}
			r, ok := have[md+wantRel]
			if !ok {
				t.Errorf("compressed=%v: image lacks %s", compressed, md+wantRel)
				continue
			}
			if got, _ := readAll(r); got != string(want) {
				t.Errorf("compressed=%v: %s differs from %s", compressed, wantRel, wantFile)
			}
			other := rel
			if compressed {
				other = plainRel
			}
			if _, ok := have[md+other]; ok {
				t.Errorf("compressed=%v: image holds %s too", compressed, other)
			}
			if !strings.Contains(dep, wantRel+":") {
				t.Errorf("compressed=%v: modules.dep does not name %s:\n%s", compressed, wantRel, dep)
			}
		}
	}
}
