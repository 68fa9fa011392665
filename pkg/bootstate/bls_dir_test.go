package bootstate

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// blsESP makes an ESP tree in a temporary directory: each slot's kernel
// under /a, /b and one entry file per name, booting /<slot>/vmlinuz.
func blsESP(t *testing.T, entries ...string) string {
	t.Helper()
	esp := t.TempDir()
	for _, p := range []string{"a/vmlinuz", "b/vmlinuz", "other/vmlinuz"} {
		blsWrite(t, filepath.Join(esp, p), "kernel")
	}
	for _, e := range entries {
		slot := "other"
		if strings.HasPrefix(e, "cpinit-") {
			slot = strings.SplitN(strings.SplitN(e, "+", 2)[0], ".", 2)[0]
			slot = slot[len(slot)-1:]
		}
		blsWrite(t, filepath.Join(esp, BLSEntriesDir, e),
			"title Slot "+slot+"\nlinux /"+slot+"/vmlinuz\noptions root=PARTLABEL=root-"+slot+" cpinit.slot="+slot+"\n")
	}
	return esp
}

func blsWrite(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// blsTree is every path under dir with its contents, to show nothing was
// written.
func blsTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if fi.IsDir() {
			out[rel+"/"] = ""
			return nil
		}
		b, err := os.ReadFile(p)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func blsEntryNames(t *testing.T, esp string) []string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(esp, BLSEntriesDir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// blsBootOnDisk plays systemd-boot at one boot on the real directory: Load,
// the simulator's pick, and its rename done with os.Rename.
func blsBootOnDisk(t *testing.T, d *BLSDir) BLSBooted {
	t.Helper()
	st, err := d.Load()
	if err != nil {
		t.Fatal(err)
	}
	s := st.(*BLSState)
	next, booted := s.Boot()
	for i := range s.Entries {
		if s.Entries[i].File != next.Entries[i].File {
			dir := filepath.Join(d.ESP, BLSEntriesDir)
			if err := os.Rename(filepath.Join(dir, s.Entries[i].File), filepath.Join(dir, next.Entries[i].File)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return booted
}

// The whole cycle on a real directory: cpinit begin (SetActive), three
// failed trial boots renamed as systemd-boot renames them, the fallback to
// slot a, and cpinit's PID 1 there abandoning the update (FallBackFrom);
// then a second update that boots well and is committed (MarkSuccessful).
func TestBLSDirCycle(t *testing.T) {
	esp := blsESP(t, "cpinit-1-a.conf", "cpinit-0-b+0.conf", "memtest.conf")
	blsWrite(t, filepath.Join(esp, BLSLoaderConf), "timeout 0\ndefault cpinit-*\n")
	d := &BLSDir{ESP: esp}
	if !strings.Contains(d.Describe(), filepath.Join(esp, "loader/entries")) {
		t.Fatalf("Describe: %s", d.Describe())
	}
	var bl Bootloader = d
	st, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if st.Next() != "a" {
		t.Fatalf("factory: next %q", st.Next())
	}
	if err := st.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(st); err != nil {
		t.Fatal(err)
	}
	if got := blsEntryNames(t, esp); !reflect.DeepEqual(got, []string{"cpinit-1-a.conf", "cpinit-2-b+3.conf", "memtest.conf"}) {
		t.Fatalf("after SetActive(b): %v", got)
	}
	if err := bl.Save(st); err != nil { // nothing left to rename
		t.Fatalf("second Save: %v", err)
	}
	for try := 1; try <= 4; try++ {
		booted := blsBootOnDisk(t, d)
		want := "b"
		if try == 4 {
			want = "a"
		}
		if booted.Slot != want {
			t.Fatalf("boot %d: %+v, want slot %s (entries %v)", try, booted, want, blsEntryNames(t, esp))
		}
	}
	if got := blsEntryNames(t, esp); !reflect.DeepEqual(got, []string{"cpinit-1-a.conf", "cpinit-2-b+0-3.conf", "memtest.conf"}) {
		t.Fatalf("after the failed trial: %v", got)
	}
	st, err = bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.FallBackFrom("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(st); err != nil {
		t.Fatal(err)
	}
	if got := blsEntryNames(t, esp); !reflect.DeepEqual(got, []string{"cpinit-1-a.conf", "cpinit-2-b+0-3.conf", "memtest.conf"}) {
		t.Fatalf("FallBackFrom(b) after the fallback renamed something: %v", got)
	}
	// The next update of slot b boots and is committed.
	if err := st.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(st); err != nil {
		t.Fatal(err)
	}
	if booted := blsBootOnDisk(t, d); booted.Slot != "b" || booted.File != "cpinit-2-b+2-1.conf" {
		t.Fatalf("second update's first boot: %+v", booted)
	}
	st, err = bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.MarkSuccessful("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(st); err != nil {
		t.Fatal(err)
	}
	if got := blsEntryNames(t, esp); !reflect.DeepEqual(got, []string{"cpinit-1-a.conf", "cpinit-2-b.conf", "memtest.conf"}) {
		t.Fatalf("after the commit: %v", got)
	}
	if booted := blsBootOnDisk(t, d); booted.Slot != "b" {
		t.Fatalf("after the commit: booted %+v", booted)
	}
}

// Save against systemd-bless-boot: if it renamed the entry the same way
// meanwhile, Save accepts it (as bless-boot.c verb_set does); if the entry
// changed otherwise, Save fails and renames nothing.
func TestBLSDirSaveRaces(t *testing.T) {
	esp := blsESP(t, "cpinit-1-a.conf", "cpinit-2-b+2-1.conf")
	d := &BLSDir{ESP: esp}
	dir := filepath.Join(esp, BLSEntriesDir)
	st, err := d.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.MarkSuccessful("b"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "cpinit-2-b+2-1.conf"), filepath.Join(dir, "cpinit-2-b.conf")); err != nil {
		t.Fatal(err)
	}
	if err := d.Save(st); err != nil {
		t.Fatalf("Save after bless-boot made the same rename: %v", err)
	}
	if got := blsEntryNames(t, esp); !reflect.DeepEqual(got, []string{"cpinit-1-a.conf", "cpinit-2-b.conf"}) {
		t.Fatalf("%v", got)
	}

	st, err = d.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetUnbootable("b"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "cpinit-2-b.conf"), filepath.Join(dir, "cpinit-2-b+1.conf")); err != nil {
		t.Fatal(err)
	}
	before := blsTree(t, esp)
	if err := d.Save(st); err == nil || !strings.Contains(err.Error(), "cpinit-2-b.conf is gone") {
		t.Fatalf("Save after the entry changed: %v", err)
	}
	if after := blsTree(t, esp); !reflect.DeepEqual(before, after) {
		t.Fatalf("failed Save wrote: %v -> %v", before, after)
	}

	// The target appeared meanwhile next to the source: two entries for
	// one slot, nothing renamed.
	esp = blsESP(t, "cpinit-1-a.conf", "cpinit-0-b+0.conf")
	d = &BLSDir{ESP: esp}
	st, err = d.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	blsWrite(t, filepath.Join(esp, BLSEntriesDir, "cpinit-2-b+3.conf"), "linux /b/vmlinuz\n")
	before = blsTree(t, esp)
	if err := d.Save(st); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Save with the target present: %v", err)
	}
	if after := blsTree(t, esp); !reflect.DeepEqual(before, after) {
		t.Fatalf("failed Save wrote: %v -> %v", before, after)
	}
	// A state from another directory or backend is refused.
	other := &BLSDir{ESP: t.TempDir()}
	if err := other.Save(st); err == nil {
		t.Fatal("Save of a state loaded elsewhere: no error")
	}
	if err := d.Save(&AndroidState{BC: &BootControl{}}); err == nil {
		t.Fatal("Save of an android state: no error")
	}
}

// Bad input on disk: a clear error naming the place, and nothing written.
func TestBLSDirLoadRefuses(t *testing.T) {
	for _, c := range []struct {
		name    string
		entries []string
		extra   map[string]string
		errIs   error
		has     string
	}{
		{name: "no entries directory", errIs: ErrNoScheme, has: "no entries directory"},
		{name: "missing slot b", entries: []string{"cpinit-1-a.conf"}, errIs: ErrNoScheme, has: "no entry for slot b"},
		{name: "two entries for b", entries: []string{"cpinit-1-a.conf", "cpinit-2-b+1-2.conf", "cpinit-2-b+0-3.conf"}, errIs: ErrNoScheme, has: "2 entries for slot b"},
		{name: "malformed slot name", entries: []string{"cpinit-1-a.conf", "cpinit-b.conf"}, errIs: ErrCorrupt, has: "cpinit-b.conf"},
		{name: "unified kernel image", entries: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"},
			extra: map[string]string{"EFI/Linux/debian-6.1.efi": "MZ"}, errIs: ErrNoScheme, has: "Type #2"},
		{name: "default @saved", entries: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"},
			extra: map[string]string{BLSLoaderConf: "default @saved\n"}, errIs: ErrNoScheme, has: "@saved"},
		{name: "huge entry", entries: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"},
			extra: map[string]string{BLSEntriesDir + "/junk.conf": strings.Repeat("x", blsMaxFile+1)}, errIs: ErrCorrupt, has: "junk.conf"},
		{name: "bad EFI variable", entries: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"},
			extra: map[string]string{"efivars/LoaderEntryDefault-" + BLSLoaderGUID: "\x07\x00\x00\x00a"}, errIs: ErrCorrupt, has: "LoaderEntryDefault"},
	} {
		t.Run(c.name, func(t *testing.T) {
			esp := blsESP(t, c.entries...)
			for p, content := range c.extra {
				blsWrite(t, filepath.Join(esp, p), content)
			}
			before := blsTree(t, esp)
			d := &BLSDir{ESP: esp, EFIVars: filepath.Join(esp, "efivars")}
			st, err := d.Load()
			if !errors.Is(err, c.errIs) || !strings.Contains(err.Error(), c.has) || !strings.Contains(err.Error(), esp) {
				t.Fatalf("Load: %v, %v; want %v naming %s with %q", st, err, c.errIs, esp, c.has)
			}
			if after := blsTree(t, esp); !reflect.DeepEqual(before, after) {
				t.Fatalf("failed Load wrote: %v -> %v", before, after)
			}
			t.Log(err)
		})
	}
}

// SetActive refused on disk (a pinned default): Save has nothing to do and
// the tree is unchanged. And what Load reads: entries systemd-boot skips,
// LoaderEntryDefault from efivarfs.
func TestBLSDirRefusedChangeWritesNothing(t *testing.T) {
	esp := blsESP(t, "cpinit-1-a.conf", "cpinit-0-b+0.conf", ".hidden.conf", "auto-x.conf", "notes.txt", "noarch.conf", "nolinux.conf", "missing.conf")
	blsWrite(t, filepath.Join(esp, BLSEntriesDir, "noarch.conf"), "linux /other/vmlinuz\narchitecture ia64\n")
	blsWrite(t, filepath.Join(esp, BLSEntriesDir, "nolinux.conf"), "title nothing to boot\n")
	blsWrite(t, filepath.Join(esp, BLSEntriesDir, "missing.conf"), "linux /gone/vmlinuz\n")
	if err := os.Mkdir(filepath.Join(esp, BLSEntriesDir, "dir.conf"), 0o755); err != nil {
		t.Fatal(err)
	}
	vars := filepath.Join(esp, "efivars")
	blsWrite(t, filepath.Join(vars, "LoaderEntryDefault-"+BLSLoaderGUID), string(blsEFIVar("cpinit-1-a.conf", true)))
	d := &BLSDir{ESP: esp, EFIVars: vars, Config: BLSConfig{Arch: "x64"}}
	st, err := d.Load()
	if err != nil {
		t.Fatal(err)
	}
	s := st.(*BLSState)
	var seen []string
	for _, e := range s.Entries {
		if e.Loadable {
			seen = append(seen, e.File)
		}
	}
	sort.Strings(seen)
	if !reflect.DeepEqual(seen, []string{"cpinit-0-b+0.conf", "cpinit-1-a.conf"}) || len(s.Entries) != 5 {
		t.Fatalf("loadable entries %v of %d", seen, len(s.Entries))
	}
	if s.Vars.EntryDefault != "cpinit-1-a.conf" {
		t.Fatalf("LoaderEntryDefault: %q", s.Vars.EntryDefault)
	}
	before := blsTree(t, esp)
	if err := st.SetActive("b"); !errors.Is(err, ErrNoScheme) || !strings.Contains(err.Error(), "LoaderEntryDefault") {
		t.Fatalf("SetActive(b) with LoaderEntryDefault pinning a: %v", err)
	}
	if err := d.Save(st); err != nil {
		t.Fatal(err)
	}
	if after := blsTree(t, esp); !reflect.DeepEqual(before, after) {
		t.Fatalf("refused change wrote: %v -> %v", before, after)
	}
}

// Cross-check with the real bootctl (Debian's systemd-boot package,
// systemd 252): its list shows the entries in its order and marks the
// default. bootctl's userspace copy (src/shared/bootspec.c) strips the
// counter from ids, unlike systemd-boot 252 itself, so the states here use
// no pattern that could tell the two apart. bootctl wants the ESP to be a
// mount point: the test mounts a tmpfs in a new mount namespace
// (unshare -m, root only) and relaxes bootctl's FAT check.
func TestBLSOrderMatchesBootctl(t *testing.T) {
	bootctl, err := exec.LookPath("bootctl")
	if err != nil {
		t.Skip("bootctl not installed (Debian package systemd-boot)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and unshare(1) to mount a tmpfs for bootctl")
	}
	for _, entries := range [][]string{
		{"cpinit-1-a.conf", "cpinit-0-b+0.conf"},
		{"cpinit-1-a.conf", "cpinit-2-b+3.conf"},
		{"cpinit-1-a.conf", "cpinit-2-b+1-2.conf", "debian-6.1.conf"},
		{"cpinit-1-a.conf", "cpinit-2-b+0-3.conf"},
		{"cpinit-9-a+3.conf", "cpinit-10-b.conf"},
		{"cpinit-3-a+0-3.conf", "cpinit-2-b+3.conf", "zz+0.conf"},
		{"cpinit-3-a+0.conf", "cpinit-4-b+0-1.conf"},
	} {
		for _, lc := range []string{"", "default cpinit-*\n"} {
			esp := blsESP(t, entries...)
			if lc != "" {
				blsWrite(t, filepath.Join(esp, BLSLoaderConf), lc)
			}
			st, err := (&BLSDir{ESP: esp}).Load()
			if err != nil {
				t.Fatal(err)
			}
			s := st.(*BLSState)
			var want []string
			for _, i := range s.Order() {
				want = append(want, s.Entries[i].File)
			}
			pick, _ := s.pick()
			mnt := t.TempDir()
			script := `mount -t tmpfs tmpfs "$1" && cp -a "$2"/. "$1"/ && SYSTEMD_RELAX_ESP_CHECKS=1 "$3" --esp-path="$1" --no-variables --no-pager list`
			out, err := exec.Command(unshare, "-m", "sh", "-c", script, "sh", mnt, esp, bootctl).CombinedOutput()
			if err != nil {
				t.Skipf("bootctl in a mount namespace: %v\n%s", err, out)
			}
			var got []string
			def := ""
			title := ""
			for _, line := range strings.Split(string(out), "\n") {
				f := strings.TrimSpace(line)
				if v, ok := strings.CutPrefix(f, "title:"); ok {
					title = v
				}
				if v, ok := strings.CutPrefix(f, "source:"); ok {
					name := filepath.Base(strings.TrimSpace(v))
					got = append(got, name)
					if strings.Contains(title, "(default)") {
						def = name
					}
				}
			}
			if !reflect.DeepEqual(got, want) || def != s.Entries[pick].File {
				t.Errorf("entries %v, loader.conf %q: bootctl lists %v with default %s; cpinit's order %v, pick %s\n%s",
					entries, lc, got, def, want, s.Entries[pick].File, out)
			}
		}
	}
}
