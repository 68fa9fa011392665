package bootstate

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// blsTestState builds a state from entry file names, each loadable (its
// kernel exists), in that directory order.
func blsTestState(t *testing.T, lc BLSLoaderConfig, vars BLSVars, files ...string) *BLSState {
	t.Helper()
	var es []BLSEntry
	for _, f := range files {
		es = append(es, BLSEntry{File: f, Info: BLSEntryInfo{Loader: "/vmlinuz-" + f}, Loadable: true})
	}
	s, err := NewBLSState(BLSConfig{}, "/esp/loader/entries", es, lc, vars)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func blsFiles(s *BLSState) []string { return s.files() }

// The A/B state through the ABState interface, with the boot simulator
// playing systemd-boot: the update's slot b boots on trial with 3 tries,
// fails each time, and systemd-boot falls back to slot a.
func TestBLSStateThroughInterface(t *testing.T) {
	st := blsTestState(t, BLSLoaderConfig{}, BLSVars{}, "cpinit-1-a.conf", "cpinit-0-b+0.conf")
	var s ABState = st
	want := []SlotInfo{
		{Name: "a", Bootable: true, Successful: true, TracksSuccess: true, Tries: -1},
		{Name: "b", Bootable: false, Successful: false, TracksSuccess: true, Tries: 0},
	}
	if got := s.Slots(); !reflect.DeepEqual(got, want) {
		t.Fatalf("factory state: %+v, want %+v", got, want)
	}
	if s.Scheme() != "systemd-boot" || s.Next() != "a" {
		t.Fatalf("factory state: scheme %s, next %q", s.Scheme(), s.Next())
	}
	if err := s.SetActive("_b"); err != nil {
		t.Fatal(err)
	}
	if got := blsFiles(st); !reflect.DeepEqual(got, []string{"cpinit-1-a.conf", "cpinit-2-b+3.conf"}) {
		t.Fatalf("after SetActive(b): %v", got)
	}
	if si, _ := SlotOf(s, "b"); !si.Bootable || si.Successful || si.Tries != st.Config.Tries {
		t.Fatalf("slot b after SetActive: %+v", si)
	}
	if o, err := OtherSlotOf(s, "b"); err != nil || o != "a" {
		t.Fatalf("OtherSlotOf(b) = %q, %v", o, err)
	}
	cur := st
	for try := 1; try <= st.Config.Tries+2; try++ {
		if n := cur.Next(); n == "" {
			t.Fatalf("boot %d: Next is empty", try)
		}
		next, booted := cur.Boot()
		wantSlot := "b"
		if try > st.Config.Tries {
			wantSlot = "a"
		}
		if booted.Slot != wantSlot || booted.Slot != cur.Next() {
			t.Fatalf("boot %d: booted %+v, Next said %q, want slot %s (entries %v)", try, booted, cur.Next(), wantSlot, blsFiles(cur))
		}
		b, _ := SlotOf(next, "b")
		if wantTries := max(st.Config.Tries-try, 0); b.Tries != wantTries || b.Bootable != (wantTries > 0) {
			t.Fatalf("after boot %d: slot b %+v, want %d tries left", try, b, wantTries)
		}
		cur = next
	}
	// cpinit's PID 1 on slot a abandons the update: b is at +0 already.
	if err := cur.FallBackFrom("b"); err != nil {
		t.Fatal(err)
	}
	if cur.Next() != "a" {
		t.Fatalf("after FallBackFrom(b): next %q", cur.Next())
	}
	if si, _ := SlotOf(cur, "b"); si.Bootable {
		t.Fatalf("slot b after FallBackFrom(b): %+v", si)
	}
	if err := s.MarkSuccessful("c"); !errors.Is(err, ErrUnknownSlot) {
		t.Fatalf("MarkSuccessful(c): %v", err)
	}
}

// The trial boots well: systemd-bless-boot good and cpinit's
// MarkSuccessful give the same name, and systemd-boot then keeps booting
// slot b without counting.
func TestBLSTrialBlessed(t *testing.T) {
	s := blsTestState(t, BLSLoaderConfig{}, BLSVars{}, "cpinit-1-a.conf", "cpinit-0-b+0.conf")
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	s, booted := s.Boot()
	if booted.Slot != "b" || booted.File != "cpinit-2-b+2-1.conf" {
		t.Fatalf("first boot: %+v", booted)
	}
	blessed, err := s.Bless(booted.File, true)
	if err != nil {
		t.Fatal(err)
	}
	committed := s.clone()
	if err := committed.MarkSuccessful("b"); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(blsFiles(blessed), blsFiles(committed)) {
		t.Fatalf("bless-boot good: %v; cpinit MarkSuccessful: %v", blsFiles(blessed), blsFiles(committed))
	}
	// Both at once (cpinit-commit.service and systemd-bless-boot.service
	// both run after boot-complete.target): the second is a no-op.
	again, err := committed.Bless(booted.File, true)
	if err != nil || !reflect.DeepEqual(blsFiles(again), blsFiles(committed)) {
		t.Fatalf("bless-boot after cpinit's commit: %v, %v", blsFiles(again), err)
	}
	if err := blessed.MarkSuccessful("b"); err != nil || !reflect.DeepEqual(blsFiles(blessed), blsFiles(committed)) {
		t.Fatalf("cpinit's commit after bless-boot: %v, %v", blsFiles(blessed), err)
	}
	cur := blessed
	for i := 0; i < 5; i++ {
		next, booted := cur.Boot()
		if booted.Slot != "b" || !reflect.DeepEqual(blsFiles(next), blsFiles(cur)) {
			t.Fatalf("boot %d after blessing: %+v, entries %v -> %v", i, booted, blsFiles(cur), blsFiles(next))
		}
		cur = next
	}
	if si, _ := SlotOf(cur, "b"); !si.Successful || si.Tries != -1 || !si.Bootable {
		t.Fatalf("blessed slot b: %+v", si)
	}
	// The next update goes to slot a, with b as the fallback.
	if err := cur.SetActive("a"); err != nil {
		t.Fatal(err)
	}
	if got := blsFiles(cur); !reflect.DeepEqual(got, []string{"cpinit-3-a+3.conf", "cpinit-2-b.conf"}) || cur.Next() != "a" {
		t.Fatalf("second update: %v, next %q", got, cur.Next())
	}
}

// systemd-bless-boot bad (or cpinit's SetUnbootable) ends the trial at once.
func TestBLSTrialMarkedBad(t *testing.T) {
	s := blsTestState(t, BLSLoaderConfig{}, BLSVars{}, "cpinit-1-a.conf", "cpinit-0-b+0.conf")
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	s, booted := s.Boot()
	bad, err := s.Bless(booted.File, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := blsFiles(bad); !reflect.DeepEqual(got, []string{"cpinit-1-a.conf", "cpinit-2-b+0-1.conf"}) || bad.Next() != "a" {
		t.Fatalf("bless-boot bad: %v, next %q", got, bad.Next())
	}
	unb := s.clone()
	if err := unb.SetUnbootable("b"); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(blsFiles(unb), blsFiles(bad)) {
		t.Fatalf("SetUnbootable: %v, bless-boot bad: %v", blsFiles(unb), blsFiles(bad))
	}
	if _, err := s.Bless("cpinit-1-a.conf", true); err == nil {
		t.Fatal("bless-boot of an entry without counter: no error")
	}
	if _, err := s.Bless("cpinit-7-b+1-2.conf", true); err == nil {
		t.Fatal("bless-boot of a missing entry: no error")
	}
}

// SetActive refuses, changing nothing, when systemd-boot would not boot the
// trial or would not fall back after it. The second case is why cpinit does
// not write loader.conf's "default": a pattern naming the trial slot keeps
// matching its entry at +0 (boot.c config_entry_find does not skip it).
func TestBLSSetActiveRefuses(t *testing.T) {
	type tc struct {
		name   string
		lc     BLSLoaderConfig
		vars   BLSVars
		files  []string
		mod    func(*BLSState)
		errIs  error
		errHas string
	}
	for _, c := range []tc{
		{name: "default pins the old slot", lc: BLSLoaderConfig{Default: "cpinit-1-a*", HasDefault: true},
			files: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"}, errIs: ErrNoScheme, errHas: "loader.conf"},
		{name: "default pins the trial slot", lc: BLSLoaderConfig{Default: "cpinit-*-b*", HasDefault: true},
			files: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"}, errIs: ErrNoScheme, errHas: "after slot b's 3 tries"},
		{name: "LoaderEntryDefault", vars: BLSVars{EntryDefault: "CPINIT-1-A.CONF"},
			files: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"}, errIs: ErrNoScheme, errHas: "LoaderEntryDefault"},
		{name: "LoaderEntryOneShot", vars: BLSVars{EntryOneShot: "cpinit-1-a.conf"},
			files: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"}, errIs: ErrNoScheme, errHas: "OneShot"},
		{name: "another entry sorts first", files: []string{"cpinit-1-a.conf", "debian-6.1.conf", "cpinit-0-b+0.conf"},
			errIs: ErrNoScheme, errHas: "debian-6.1.conf: it sorts first"},
		{name: "kernel missing", files: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"},
			mod: func(s *BLSState) { s.Entries[1].Loadable = false }, errIs: ErrNoScheme, errHas: "not on the ESP"},
		{name: "old slot has no tries", files: []string{"cpinit-1-a+0-3.conf", "cpinit-0-b+0.conf"}, errHas: "no tries left"},
		{name: "old slot skipped", files: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"},
			mod: func(s *BLSState) { s.Entries[0].Loadable = false }, errIs: ErrNoScheme, errHas: "slot a would not boot"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := blsTestState(t, c.lc, c.vars, c.files...)
			if c.mod != nil {
				c.mod(s)
			}
			before := blsFiles(s)
			err := s.SetActive("b")
			if err == nil || (c.errIs != nil && !errors.Is(err, c.errIs)) || !strings.Contains(err.Error(), c.errHas) {
				t.Fatalf("SetActive(b): %v; want %v with %q", err, c.errIs, c.errHas)
			}
			if got := blsFiles(s); !reflect.DeepEqual(got, before) {
				t.Fatalf("refused SetActive changed the state: %v -> %v", before, got)
			}
			t.Log(err)
		})
	}
	// A pattern matching both slot entries is fine: it keeps other
	// entries from being the default, and the order decides between the
	// slots.
	s := blsTestState(t, BLSLoaderConfig{Default: "cpinit-*", HasDefault: true}, BLSVars{},
		"cpinit-1-a.conf", "debian-6.1.conf", "cpinit-0-b+0.conf")
	if s.Next() != "a" {
		t.Fatalf("with default cpinit-*: next %q", s.Next())
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
}

// FallBackFrom onto a slot at 0 tries renames both entries; Renames orders
// them so that systemd-boot boots a correct, bootable slot at every step.
func TestBLSFallBackFromRenamesInOrder(t *testing.T) {
	s := blsTestState(t, BLSLoaderConfig{}, BLSVars{}, "cpinit-1-a+0-2.conf", "cpinit-2-b+2-1.conf")
	old := s.clone()
	if err := s.FallBackFrom("b"); err != nil {
		t.Fatal(err)
	}
	if got := blsFiles(s); !reflect.DeepEqual(got, []string{"cpinit-1-a+3.conf", "cpinit-2-b+0-1.conf"}) || s.Next() != "a" {
		t.Fatalf("FallBackFrom(b): %v, next %q", got, s.Next())
	}
	rs, err := s.Renames()
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].From != "cpinit-1-a+0-2.conf" {
		t.Fatalf("renames %v: want slot a's first", rs)
	}
	blsCheckIntermediates(t, old, s, rs)
	// The other order would pass through both at 0 tries, where
	// systemd-boot boots the higher rank, the abandoned slot b.
	mid := old.clone()
	mid.Entries[1].File = "cpinit-2-b+0-1.conf"
	if mid.Next() != "b" {
		t.Fatalf("both at 0 tries: next %q, want b (the higher rank)", mid.Next())
	}
}

// blsCheckIntermediates applies rs to old one at a time and checks every
// state in between boots old's or s's slot, and a bootable one.
func blsCheckIntermediates(t *testing.T, old, s *BLSState, rs []BLSRename) {
	t.Helper()
	cur := old.clone()
	for i, r := range rs {
		n := 0
		for j := range cur.Entries {
			if cur.Entries[j].File == r.From {
				cur.Entries[j].File = r.To
				n++
			}
		}
		if n != 1 {
			t.Fatalf("rename %v: %d entries named %s", r, n, r.From)
		}
		next := cur.Next()
		if next != old.Next() && next != s.Next() {
			t.Fatalf("after rename %d of %v: systemd-boot boots %q, neither the old %q nor the new %q", i+1, rs, next, old.Next(), s.Next())
		}
		if si, err := SlotOf(cur, next); err != nil || !si.Bootable {
			t.Fatalf("after rename %d of %v: systemd-boot boots %q, not bootable: %+v, %v", i+1, rs, next, si, err)
		}
	}
	if !reflect.DeepEqual(blsFiles(cur), blsFiles(s)) {
		t.Fatalf("renames %v lead to %v, want %v", rs, blsFiles(cur), blsFiles(s))
	}
}

// Every operation from every reachable kind of state: at most the renames
// Renames returns, every intermediate state boots a correct slot, and after
// SetActive the simulator boots the slot Tries times, then the other.
func TestBLSEveryOperationEveryState(t *testing.T) {
	counters := []string{"", "+3", "+2-1", "+1-2", "+0-3", "+0"}
	ops := map[string]func(ABState, string) error{
		"SetActive": ABState.SetActive, "MarkSuccessful": ABState.MarkSuccessful,
		"SetUnbootable": ABState.SetUnbootable, "FallBackFrom": ABState.FallBackFrom,
	}
	n := 0
	for _, ca := range counters {
		for _, cb := range counters {
			for _, ranks := range [][2]int{{1, 2}, {5, 4}} {
				files := []string{fmt.Sprintf("cpinit-%d-a%s.conf", ranks[0], ca), fmt.Sprintf("cpinit-%d-b%s.conf", ranks[1], cb)}
				for name, op := range ops {
					for _, slot := range []string{"a", "b"} {
						s := blsTestState(t, BLSLoaderConfig{}, BLSVars{}, files...)
						old := s.clone()
						err := op(s, slot)
						if err != nil {
							if !reflect.DeepEqual(blsFiles(s), files) {
								t.Fatalf("%v %s(%s) failed (%v) and changed the state to %v", files, name, slot, err, blsFiles(s))
							}
							continue
						}
						n++
						rs, err := s.Renames()
						if err != nil {
							t.Fatalf("%v %s(%s): %v", files, name, slot, err)
						}
						if len(rs) > 1 {
							blsCheckIntermediates(t, old, s, rs)
						}
						other := map[string]string{"a": "b", "b": "a"}[slot]
						switch name {
						case "SetActive":
							cur := s
							for try := 1; try <= s.Config.Tries+1; try++ {
								next, booted := cur.Boot()
								want := slot
								if try > s.Config.Tries {
									want = other
								}
								if booted.Slot != want {
									t.Fatalf("%v SetActive(%s) -> %v: boot %d is %q, want %s", files, slot, blsFiles(s), try, booted.Slot, want)
								}
								cur = next
							}
						case "FallBackFrom":
							if s.Next() != other {
								t.Fatalf("%v FallBackFrom(%s) -> %v: next %q", files, slot, blsFiles(s), s.Next())
							}
						case "MarkSuccessful":
							if si, _ := SlotOf(s, slot); !si.Successful {
								t.Fatalf("%v MarkSuccessful(%s) -> %+v", files, slot, si)
							}
						case "SetUnbootable":
							if si, _ := SlotOf(s, slot); si.Bootable {
								t.Fatalf("%v SetUnbootable(%s) -> %+v", files, slot, si)
							}
						}
						// Redoing the same change after a power cut changes nothing.
						again := s.clone()
						if err := op(again, slot); err != nil || !reflect.DeepEqual(blsFiles(again), blsFiles(s)) {
							t.Fatalf("%v %s(%s) twice: %v, %v", files, name, slot, blsFiles(again), err)
						}
					}
				}
			}
		}
	}
	if n < 100 {
		t.Fatalf("only %d operations succeeded", n)
	}
}

// Bad input for the scheme: a clear error, wrapped with the sentinel.
func TestNewBLSStateRefuses(t *testing.T) {
	for _, c := range []struct {
		files []string
		lc    BLSLoaderConfig
		vars  BLSVars
		mod   func([]BLSEntry)
		errIs error
		has   string
	}{
		{files: []string{"cpinit-1-a.conf"}, errIs: ErrNoScheme, has: "create cpinit-0-b+0.conf"},
		{files: []string{"debian.conf"}, errIs: ErrNoScheme, has: "no entry for slot a"},
		{files: []string{"cpinit-1-a.conf", "cpinit-2-b+3.conf", "cpinit-2-b+2-1.conf"}, errIs: ErrNoScheme, has: "2 entries for slot b"},
		{files: []string{"cpinit-1-a.conf", "cpinit-x-b.conf"}, errIs: ErrCorrupt, has: "cpinit-x-b.conf"},
		{files: []string{"cpinit-1-a.conf", "cpinit-1-c.conf"}, errIs: ErrCorrupt, has: "<a|b>"},
		{files: []string{"cpinit-01-a.conf", "cpinit-1-b.conf"}, errIs: ErrCorrupt},
		{files: []string{"cpinit-1-a.CONF", "cpinit-1-b.conf"}, errIs: ErrCorrupt},
		{files: []string{"CPINIT-1-a.conf", "cpinit-1-b.conf"}, errIs: ErrCorrupt},
		{files: []string{"cpinit-1-a.conf", "cpinit-2-b+bad.conf"}, errIs: ErrCorrupt},
		{files: []string{"cpinit-1-a.conf", "cpinit-2-b+99999999999.conf"}, errIs: ErrCorrupt},
		{files: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"}, lc: BLSLoaderConfig{Default: "@saved", HasDefault: true}, errIs: ErrNoScheme, has: "@saved"},
		{files: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"}, vars: BLSVars{EntryDefault: "@saved"}, errIs: ErrNoScheme, has: "set-default"},
		{files: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"}, errIs: ErrNoScheme, has: "sort-key",
			mod: func(es []BLSEntry) {
				es[0].Info.SortKey, es[1].Info.SortKey = "debian", "debian"
				es[1].Info.Version = "2"
			}},
		{files: []string{"cpinit-1-a.conf", "cpinit-0-b+0.conf"}, errIs: ErrNoScheme, has: "sort-key",
			mod: func(es []BLSEntry) { es[0].Info.SortKey = "debian" }},
	} {
		var es []BLSEntry
		for _, f := range c.files {
			es = append(es, BLSEntry{File: f, Info: BLSEntryInfo{Loader: "/k"}, Loadable: true})
		}
		if c.mod != nil {
			c.mod(es)
		}
		s, err := NewBLSState(BLSConfig{}, "/esp/loader/entries", es, c.lc, c.vars)
		if !errors.Is(err, c.errIs) || !strings.Contains(err.Error(), c.has) || !strings.Contains(err.Error(), "/esp/loader/") && !strings.Contains(err.Error(), "LoaderEntryDefault") {
			t.Errorf("%v: %v, %v; want %v with %q", c.files, s, err, c.errIs, c.has)
		}
	}
	// Same sort-key, machine-id and version on both: the ids decide.
	es := []BLSEntry{
		{File: "cpinit-1-a.conf", Info: BLSEntryInfo{Loader: "/k", SortKey: "os", Version: "01"}, Loadable: true},
		{File: "cpinit-2-b+3.conf", Info: BLSEntryInfo{Loader: "/k", SortKey: "os", Version: "1"}, Loadable: true},
	}
	s, err := NewBLSState(BLSConfig{}, "/esp", es, BLSLoaderConfig{}, BLSVars{})
	if err != nil || s.Next() != "b" {
		t.Fatalf("equal sort lines: %v, next %v", err, s)
	}
	for _, cfg := range []BLSConfig{{Stem: "auto"}, {Stem: "Cpinit"}, {Stem: "-x"}, {Stem: "a+b"}, {Tries: -1}, {Tries: 1001}} {
		if _, err := NewBLSState(cfg, "/esp", es, BLSLoaderConfig{}, BLSVars{}); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	s, err = NewBLSState(BLSConfig{Stem: "os.x_1-y", Tries: 1}, "/esp", []BLSEntry{
		{File: "os.x_1-y-3-a.conf", Loadable: true}, {File: "os.x_1-y-3-b+1.conf", Loadable: true}}, BLSLoaderConfig{}, BLSVars{})
	if err != nil || s.Next() != "b" {
		t.Fatalf("stem os.x_1-y: %v, %v", s, err)
	}
}

// Entries that tie in boot.c's comparison keep directory order (the
// insertion sort is stable); counters break ties of equal ids only.
func TestBLSOrderTies(t *testing.T) {
	s := blsTestState(t, BLSLoaderConfig{}, BLSVars{}, "cpinit-1-a.conf", "x_1.conf", "x1.conf", "cpinit-0-b+0.conf")
	order := s.Order()
	names := make([]string, len(order))
	for i, j := range order {
		names[i] = s.Entries[j].File
	}
	// "x_1" and "x1" compare equal ('_' is dropped); both sort before
	// "cpinit-..." (x > c); b's entry at +0 goes last.
	if want := []string{"x_1.conf", "x1.conf", "cpinit-1-a.conf", "cpinit-0-b+0.conf"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("order %v, want %v", names, want)
	}
	s.Entries[1], s.Entries[2] = s.Entries[2], s.Entries[1]
	if j := s.Order()[0]; s.Entries[j].File != "x1.conf" {
		t.Fatalf("tie not kept in directory order: %s first", s.Entries[j].File)
	}
}
