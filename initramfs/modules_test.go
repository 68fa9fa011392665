package initramfs

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

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
	names, err := ReadList(filepath.Join(RepoRoot(), "initramfs", "modules.list"))
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
