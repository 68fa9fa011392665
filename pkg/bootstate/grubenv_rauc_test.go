package bootstate

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// grubRaucEnv returns grub-editenv's 1024-byte block with RAUC's variables
// set in the order the rauc docs list them, after extra variables.
func grubRaucEnv(t testing.TB, order string, aOK, aTry, bOK, bTry int, extra ...GrubEnvVar) *GrubEnv {
	t.Helper()
	e, err := NewGrubEnv(GrubEnvSize)
	if err != nil {
		t.Fatal(err)
	}
	vars := append(extra, GrubEnvVar{"ORDER", order},
		GrubEnvVar{"A_OK", fmt.Sprint(aOK)}, GrubEnvVar{"A_TRY", fmt.Sprint(aTry)},
		GrubEnvVar{"B_OK", fmt.Sprint(bOK)}, GrubEnvVar{"B_TRY", fmt.Sprint(bTry)})
	if err := e.Set(vars...); err != nil {
		t.Fatal(err)
	}
	return e
}

func grubRaucState(t testing.TB, e *GrubEnv) *GrubRaucState {
	t.Helper()
	s, err := NewGrubRaucState(e, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// grubBootOnce plays GRUB on s's block and returns the slot booted and the
// state GRUB left.
func grubBootOnce(t testing.TB, s *GrubRaucState) (string, *GrubRaucState) {
	t.Helper()
	booted, after, saved := GrubRaucBoot(s.Env().Encode(), s.slots)
	if !saved {
		t.Fatal("GRUB's save_env failed on a valid block")
	}
	e, err := DecodeGrubEnv(after)
	if err != nil {
		t.Fatalf("GRUB left a block cpinit refuses: %v", err)
	}
	n, err := NewGrubRaucState(e, s.slots)
	if err != nil {
		t.Fatalf("GRUB left a block without RAUC's scheme: %v", err)
	}
	return booted, n
}

func TestGrubRaucStateThroughInterface(t *testing.T) {
	e, err := DecodeGrubEnv(grubReadGolden(t, "rauc-a.grubenv"))
	if err != nil {
		t.Fatal(err)
	}
	var s ABState = grubRaucState(t, e)
	if s.Scheme() != "grub-rauc" {
		t.Fatalf("scheme %q", s.Scheme())
	}
	want := []SlotInfo{
		{Name: "a", BootName: "A", Bootable: true, Successful: true, TracksSuccess: false, Tries: 1},
		{Name: "b", BootName: "B", Bootable: false, Successful: false, TracksSuccess: false, Tries: 0},
	}
	if got := s.Slots(); !reflect.DeepEqual(got, want) {
		t.Fatalf("A good, B bad: %+v, want %+v", got, want)
	}
	if s.Next() != "a" {
		t.Fatalf("next %q", s.Next())
	}
	if err := s.SetActive("_b"); err != nil {
		t.Fatal(err)
	}
	if s.Next() != "b" {
		t.Fatalf("next after SetActive(b) = %q", s.Next())
	}
	if si, _ := SlotOf(s, "b"); !si.Bootable || si.Tries != 1 || si.TracksSuccess {
		t.Fatalf("b after SetActive: %+v", si)
	}
	if o, err := OtherSlotOf(s, "b"); err != nil || o != "a" {
		t.Fatalf("OtherSlotOf(b) = %q, %v", o, err)
	}
	if err := s.FallBackFrom("b"); err != nil {
		t.Fatal(err)
	}
	if s.Next() != "a" {
		t.Fatalf("next after FallBackFrom(b) = %q", s.Next())
	}
	if si, _ := SlotOf(s, "b"); si.Bootable {
		t.Fatalf("b after FallBackFrom(b): %+v", si)
	}
	before := e.Encode()
	for _, f := range []func(string) error{s.SetActive, s.MarkSuccessful, s.SetUnbootable, s.FallBackFrom} {
		if err := f("c"); !errors.Is(err, ErrUnknownSlot) {
			t.Fatalf("slot c: %v", err)
		}
	}
	if !bytes.Equal(e.Encode(), before) {
		t.Fatal("refused changes changed the block")
	}
	if _, err := SlotOf(s, "c"); !errors.Is(err, ErrUnknownSlot) {
		t.Fatalf("SlotOf(c): %v", err)
	}
}

// Each change writes exactly RAUC's variables (docs/reference.rst "GRUB":
// state bad, state good, primary) and nothing else.
func TestGrubRaucChanges(t *testing.T) {
	extra := GrubEnvVar{"saved_entry", "keep me"}
	cases := []struct {
		do   func(s *GrubRaucState) error
		want []GrubEnvVar
	}{
		{func(s *GrubRaucState) error { return s.SetActive("b") },
			[]GrubEnvVar{extra, {"ORDER", "B A"}, {"A_OK", "1"}, {"A_TRY", "1"}, {"B_OK", "1"}, {"B_TRY", "0"}}},
		{func(s *GrubRaucState) error { return s.MarkSuccessful("a") },
			[]GrubEnvVar{extra, {"ORDER", "A B"}, {"A_OK", "1"}, {"A_TRY", "0"}, {"B_OK", "0"}, {"B_TRY", "1"}}},
		{func(s *GrubRaucState) error { return s.SetUnbootable("a") },
			[]GrubEnvVar{extra, {"ORDER", "A B"}, {"A_OK", "0"}, {"A_TRY", "0"}, {"B_OK", "0"}, {"B_TRY", "1"}}},
		{func(s *GrubRaucState) error { return s.FallBackFrom("a") },
			[]GrubEnvVar{extra, {"ORDER", "B A"}, {"A_OK", "0"}, {"A_TRY", "0"}, {"B_OK", "1"}, {"B_TRY", "0"}}},
	}
	for i, c := range cases {
		s := grubRaucState(t, grubRaucEnv(t, "A B", 1, 1, 0, 1, extra))
		if err := c.do(s); err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if got := s.Env().Vars(); !reflect.DeepEqual(got, c.want) {
			t.Errorf("case %d: %q, want %q", i, got, c.want)
		}
	}
}

// Next is what GRUB boots: over every valid state of two slots, Next and
// the reference grub.cfg (GrubRaucBoot) agree, "" being the Rescue entry;
// and a slot is Bootable exactly when GRUB would boot it were it first in
// ORDER.
func TestGrubRaucNextIsWhatGrubBoots(t *testing.T) {
	n := 0
	for _, order := range []string{"A B", "B A", "A", "B"} {
		for bits := range 16 {
			s := grubRaucState(t, grubRaucEnv(t, order, bits&1, bits>>1&1, bits>>2&1, bits>>3&1))
			booted, _, saved := GrubRaucBoot(s.Env().Encode(), nil)
			if !saved || booted != s.Next() {
				t.Fatalf("ORDER=%q bits %04b: GRUB boots %q (saved %v), Next says %q", order, bits, booted, saved, s.Next())
			}
			for _, si := range s.Slots() {
				bn := strings.ToUpper(si.Name)
				first := grubRaucState(t, grubRaucEnv(t, "A B", bits&1, bits>>1&1, bits>>2&1, bits>>3&1))
				first.env.Set(GrubEnvVar{"ORDER", bn + " " + map[string]string{"A": "B", "B": "A"}[bn]})
				g, _, _ := GrubRaucBoot(first.Env().Encode(), nil)
				inOrder := strings.Contains(order, bn)
				if si.Bootable != (inOrder && g == si.Name) || si.Successful != si.Bootable || si.TracksSuccess || si.Tries != map[bool]int{true: 1, false: 0}[si.Bootable] {
					t.Fatalf("ORDER=%q bits %04b: %+v, GRUB with %s first boots %q", order, bits, si, bn, g)
				}
			}
			n++
		}
	}
	t.Logf("%d states", n)
}

// An update that works: cpinit begin on A (mark B bad, then active), GRUB
// boots B once, B is on trial (one try spent), cpinit commit marks it
// good, GRUB keeps booting B as long as each boot is marked good.
func TestGrubRaucUpdateCommits(t *testing.T) {
	s := grubRaucState(t, grubRaucEnv(t, "A B", 1, 0, 1, 0))
	var st ABState = s
	if err := st.SetUnbootable("b"); err != nil {
		t.Fatal(err)
	}
	if err := st.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	booted, s := grubBootOnce(t, s)
	if booted != "b" {
		t.Fatalf("first boot after SetActive(b): %q", booted)
	}
	if si, _ := SlotOf(s, "b"); si.Bootable || si.Tries != 0 {
		t.Fatalf("b on trial: %+v", si)
	}
	if s.Next() != "a" {
		t.Fatalf("on trial, unmarked, GRUB would boot %q next, want a", s.Next())
	}
	if err := s.MarkSuccessful("b"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		booted, s = grubBootOnce(t, s)
		if booted != "b" {
			t.Fatalf("boot %d after commit: %q", i, booted)
		}
		s.MarkSuccessful("b") // every boot, as rauc-mark-good does
	}
}

// An update that fails: GRUB boots B once, B crashes before the commit,
// GRUB falls back to A by itself at the next boot. cpinit, running on A,
// sees the target slot did not boot and calls FallBackFrom(b): from then
// on B is never booted again, even while A goes unmarked (where GRUB's
// reset would otherwise retry B, TestGrubRaucGrubRetriesAFailedUpdate).
func TestGrubRaucUpdateFallsBack(t *testing.T) {
	s := grubRaucState(t, grubRaucEnv(t, "A B", 1, 0, 1, 0))
	s.SetUnbootable("b")
	s.SetActive("b")
	booted, s := grubBootOnce(t, s)
	if booted != "b" {
		t.Fatalf("trial boot: %q", booted)
	}
	// B crashes: no MarkSuccessful.
	booted, s = grubBootOnce(t, s)
	if booted != "a" {
		t.Fatalf("boot after the crash: %q, want GRUB's fallback to a", booted)
	}
	if err := s.FallBackFrom("b"); err != nil {
		t.Fatal(err)
	}
	after := s
	// Nobody marks A good: GRUB alternates A and Rescue (its reset), and
	// never picks B.
	var seq []string
	for range 4 {
		booted, s = grubBootOnce(t, s)
		seq = append(seq, booted)
	}
	if want := []string{"a", "", "a", ""}; !reflect.DeepEqual(seq, want) {
		t.Fatalf("A unmarked after FallBackFrom(b): %q, want %q", seq, want)
	}
	// A marked good at every boot: always A.
	s = after
	for i := range 4 {
		if booted, s = grubBootOnce(t, s); booted != "a" {
			t.Fatalf("boot %d, A marked good each time: %q", i, booted)
		}
		s.MarkSuccessful("a")
	}
}

// Why FallBackFrom marks the update bad instead of leaving GRUB's own
// fallback state: with B_OK=1 B_TRY=1 left as GRUB leaves it, one boot of
// A that is not marked good makes the script reset every try, boot
// Rescue, and then try the failed update again.
func TestGrubRaucGrubRetriesAFailedUpdate(t *testing.T) {
	s := grubRaucState(t, grubRaucEnv(t, "A B", 1, 0, 1, 0))
	s.SetActive("b")
	var seq []string
	for range 4 {
		var booted string
		booted, s = grubBootOnce(t, s)
		seq = append(seq, booted)
	}
	want := []string{"b", "a", "", "b"}
	if !reflect.DeepEqual(seq, want) {
		t.Fatalf("boots with nothing marked good: %q, want %q", seq, want)
	}
}

// The running slot must be marked good at its own boot: if A was not,
// GRUB's fallback from a failed B finds no slot and boots Rescue.
func TestGrubRaucUnmarkedRunningSlot(t *testing.T) {
	s := grubRaucState(t, grubRaucEnv(t, "A B", 1, 0, 0, 0))
	booted, s := grubBootOnce(t, s) // A boots, nobody runs mark-good
	if booted != "a" {
		t.Fatal(booted)
	}
	s.SetUnbootable("b")
	s.SetActive("b")
	booted, s = grubBootOnce(t, s)
	if booted != "b" {
		t.Fatal(booted)
	}
	if booted, _ = grubBootOnce(t, s); booted != "" {
		t.Fatalf("B failed and A was never marked good: GRUB boots %q, want Rescue", booted)
	}
}

// Blocks GRUB cannot use: it boots on its script's defaults (ORDER="A B",
// all OK=0: Rescue) and save_env writes nothing. A block with the header
// but no RAUC variables (grub-editenv create) also boots Rescue, and the
// script's save_env then writes the variables with every slot bad, which
// cpinit loads as a valid state where nothing is bootable.
func TestGrubRaucBootBadBlocks(t *testing.T) {
	good := grubReadGolden(t, "rauc-a.grubenv")
	for name, b := range map[string][]byte{
		"torn header": append(bytes.Repeat([]byte{0}, 512), good[512:]...),
		"empty file":  nil,
		"wrong magic": append([]byte("# GRUB Environment Blocc\n"), good[25:]...),
	} {
		booted, after, saved := GrubRaucBoot(b, nil)
		if booted != "" || saved || !bytes.Equal(after, b) {
			t.Errorf("%s: booted %q, saved %v, changed %v", name, booted, saved, !bytes.Equal(after, b))
		}
	}
	booted, after, saved := GrubRaucBoot(grubReadGolden(t, "created.grubenv"), nil)
	if booted != "" || !saved {
		t.Fatalf("empty env: booted %q saved %v", booted, saved)
	}
	e, err := DecodeGrubEnv(after)
	if err != nil {
		t.Fatal(err)
	}
	s := grubRaucState(t, e)
	if s.Next() != "" {
		t.Fatalf("after the script's defaults were saved: next %q", s.Next())
	}
	if got := e.List(); got != "A_TRY=1\nA_OK=0\nB_TRY=1\nB_OK=0\nORDER=A B\n" {
		t.Fatalf("saved %q", got)
	}
}

// GRUB reads numbers as its test -eq does; cpinit refuses anything but 0
// and 1 rather than guess.
func TestGrubRaucNumbers(t *testing.T) {
	for s, want := range map[string]int32{"1": 1, "0": 0, "0x1": 1, "01": 1, "-1": -1, " 1": 1, "1x": 1, "x": 0, "": 0, "0X1": 0, "08": 8, "4294967297": 1, "99999999999999999999999": -1} {
		if got := grubStrtosl(s); got != want {
			t.Errorf("grubStrtosl(%q) = %d, want %d", s, got, want)
		}
	}
	e := grubRaucEnv(t, "B A", 1, 0, 0, 0)
	e.Set(GrubEnvVar{"B_OK", "0x1"})
	if booted, _, _ := GrubRaucBoot(e.Encode(), nil); booted != "b" {
		t.Fatalf("GRUB reads B_OK=0x1 as 1: booted %q", booted)
	}
	if _, err := NewGrubRaucState(e, nil); !errors.Is(err, ErrNoScheme) {
		t.Fatalf("B_OK=0x1: %v", err)
	}
}

func TestGrubRaucNoScheme(t *testing.T) {
	base := func() *GrubEnv { return grubRaucEnv(t, "A B", 1, 0, 0, 0) }
	cases := map[string]func(e *GrubEnv){
		"no ORDER":        func(e *GrubEnv) { e.Unset("ORDER") },
		"no A_TRY":        func(e *GrubEnv) { e.Unset("A_TRY") },
		"nothing of RAUC": func(e *GrubEnv) { e.Unset("ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY") },
		"B_OK=yes":        func(e *GrubEnv) { e.Set(GrubEnvVar{"B_OK", "yes"}) },
		"A_TRY empty":     func(e *GrubEnv) { e.Set(GrubEnvVar{"A_TRY", ""}) },
		"ORDER empty":     func(e *GrubEnv) { e.Set(GrubEnvVar{"ORDER", ""}) },
		"ORDER two spaces": func(e *GrubEnv) {
			e.Set(GrubEnvVar{"ORDER", "A  B"})
		},
		"ORDER leading space": func(e *GrubEnv) { e.Set(GrubEnvVar{"ORDER", " A B"}) },
		"ORDER unknown name":  func(e *GrubEnv) { e.Set(GrubEnvVar{"ORDER", "A B R"}) },
		"ORDER twice":         func(e *GrubEnv) { e.Set(GrubEnvVar{"ORDER", "A A"}) },
		"ORDER lower case":    func(e *GrubEnv) { e.Set(GrubEnvVar{"ORDER", "a b"}) },
	}
	for name, f := range cases {
		e := base()
		f(e)
		before := e.Encode()
		_, err := NewGrubRaucState(e, nil)
		if !errors.Is(err, ErrNoScheme) {
			t.Errorf("%s: %v, want ErrNoScheme", name, err)
			continue
		}
		if !bytes.Equal(e.Encode(), before) {
			t.Errorf("%s: the check changed the block", name)
		}
		if name == "nothing of RAUC" && !strings.Contains(err.Error(), `grub-editenv FILE set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0`) {
			t.Errorf("the error does not say what to set: %v", err)
		}
	}
	// One slot missing from ORDER is RAUC's own state after a manual
	// edit: accepted, that slot is not bootable.
	e := base()
	e.Set(GrubEnvVar{"ORDER", "B"}, GrubEnvVar{"B_OK", "1"})
	s := grubRaucState(t, e)
	if s.Next() != "b" || s.Slots()[0].Bootable {
		t.Fatalf("ORDER=B: next %q, a %+v", s.Next(), s.Slots()[0])
	}
}

func TestGrubRaucBootnames(t *testing.T) {
	slots, err := ParseGrubRaucSlots("system0:_a,system1:b")
	if err != nil {
		t.Fatal(err)
	}
	if want := []GrubRaucSlot{{"a", "system0"}, {"b", "system1"}}; !reflect.DeepEqual(slots, want) {
		t.Fatalf("parsed %+v", slots)
	}
	e, _ := NewGrubEnv(GrubEnvSize)
	e.Set(GrubEnvVar{"ORDER", "system1 system0"}, GrubEnvVar{"system0_OK", "1"}, GrubEnvVar{"system0_TRY", "0"},
		GrubEnvVar{"system1_OK", "0"}, GrubEnvVar{"system1_TRY", "0"})
	s, err := NewGrubRaucState(e, slots)
	if err != nil {
		t.Fatal(err)
	}
	if s.Next() != "a" {
		t.Fatalf("next %q", s.Next())
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.Get("ORDER"); v != "system1 system0" {
		t.Fatalf("ORDER %q", v)
	}
	if booted, _, _ := GrubRaucBoot(e.Encode(), slots); booted != "b" {
		t.Fatalf("booted %q", booted)
	}
	if _, err := NewGrubRaucState(e, nil); !errors.Is(err, ErrNoScheme) {
		t.Fatalf("A/B mapping on system0/system1 variables: %v", err)
	}
	for _, bad := range []string{"", "A:a", "A:a,B:b,C:c", "A:a,A:b", "A:a,B:a", "A:x,B:b", "A B:a,B:b", "A-1:a,B:b", "A=a,B=b"} {
		if _, err := ParseGrubRaucSlots(bad); err == nil {
			t.Errorf("ParseGrubRaucSlots(%q) accepted", bad)
		}
	}
}

// A power cut during Save's write of a 1024-byte block may persist one of
// its two 512-byte sectors without the other. For every change cpinit
// makes, both tears are read back. In the usual layout (RAUC's variables
// right after grub-editenv's header and warning) all of them sit in the
// first sector, and a tear is the old or the new state, whole. When other
// variables push RAUC's across the sector boundary, values keep their
// length so nothing moves: each variable reads old or new, and the only
// mix that is not a state RAUC could have written (ORDER cut in its
// middle) is refused by Load.
func TestGrubRaucTornWrite(t *testing.T) {
	ops := map[string]func(s *GrubRaucState) error{
		"SetActive(b)":      func(s *GrubRaucState) error { return s.SetActive("b") },
		"MarkSuccessful(b)": func(s *GrubRaucState) error { return s.MarkSuccessful("b") },
		"SetUnbootable(b)":  func(s *GrubRaucState) error { return s.SetUnbootable("b") },
		"FallBackFrom(b)":   func(s *GrubRaucState) error { return s.FallBackFrom("b") },
		"FallBackFrom(a)":   func(s *GrubRaucState) error { return s.FallBackFrom("a") },
		"GRUB's boot":       nil,
	}
	fill := func(n int) GrubEnvVar { return GrubEnvVar{"kernelopts", strings.Repeat("o", n)} }
	layouts := []struct {
		name  string
		extra []GrubEnvVar
		whole bool // every tear is the old or the new block
	}{
		{"RAUC variables first", nil, true},
		{"after 300 bytes of others", []GrubEnvVar{fill(300)}, true},
	}
	// Fillers that put the sector boundary at each byte of the RAUC lines.
	for n := 360; n < 420; n++ {
		layouts = append(layouts, struct {
			name  string
			extra []GrubEnvVar
			whole bool
		}{fmt.Sprintf("boundary moved by %d", n), []GrubEnvVar{fill(n)}, false})
	}
	refused := 0
	for _, l := range layouts {
		for _, start := range [][4]int{{1, 0, 1, 1}, {1, 0, 0, 0}, {1, 1, 1, 0}, {1, 0, 1, 0}} {
			for name, op := range ops {
				old := grubRaucEnv(t, "A B", start[0], start[1], start[2], start[3], l.extra...)
				s := grubRaucState(t, old.Clone())
				if op == nil {
					_, s = grubBootOnce(t, s)
				} else if err := op(s); err != nil {
					t.Fatal(err)
				}
				ob, nb := old.Encode(), s.Env().Encode()
				for _, torn := range [][]byte{
					append(bytes.Clone(nb[:512]), ob[512:]...),
					append(bytes.Clone(ob[:512]), nb[512:]...),
				} {
					e, err := DecodeGrubEnv(torn)
					if err != nil {
						t.Fatalf("%s, %s from %v: a tear cpinit cannot decode: %v", l.name, name, start, err)
					}
					if l.whole && !bytes.Equal(torn, ob) && !bytes.Equal(torn, nb) {
						t.Fatalf("%s, %s from %v: a tear that is neither block", l.name, name, start)
					}
					ts, err := NewGrubRaucState(e, nil)
					if err != nil {
						if !errors.Is(err, ErrNoScheme) || !strings.Contains(err.Error(), "ORDER") {
							t.Fatalf("%s, %s: torn block refused for another reason than a cut ORDER: %v", l.name, name, err)
						}
						refused++
						continue
					}
					for _, n := range []string{"ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY"} {
						got, _ := ts.Env().Get(n)
						o, _ := old.Get(n)
						w, _ := s.Env().Get(n)
						if got != o && got != w {
							t.Fatalf("%s, %s: torn %s=%q, old %q, new %q", l.name, name, n, got, o, w)
						}
					}
				}
			}
		}
	}
	if refused == 0 {
		t.Fatal("no layout cut ORDER at the sector boundary: the refusal went untested")
	}
	t.Logf("%d layouts; %d tears with ORDER cut in two, refused", len(layouts), refused)
}
