package bootstate

import (
	"errors"
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

func mustEnv(t testing.TB, kv ...string) *UBootEnv {
	t.Helper()
	e, err := NewUBootEnv(kv...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func mustState(t testing.TB, env *UBootEnv, cfg UBootSchemeConfig) UBootState {
	t.Helper()
	s, err := NewUBootState(env, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// wantVars checks some variables' values ("" = unset).
func wantVars(t testing.TB, e *UBootEnv, kv ...string) {
	t.Helper()
	for i := 0; i < len(kv); i += 2 {
		v, ok := e.Get(kv[i])
		if kv[i+1] == "" && ok || kv[i+1] != "" && v != kv[i+1] {
			t.Errorf("%s=%q (set %v), want %q", kv[i], v, ok, kv[i+1])
		}
	}
}

// boot runs the simulator and checks that Next predicted its pick (RAUC's
// script resets the board when no slot has attempts left; the pass after the
// reset is the boot).
func boot(t testing.TB, s UBootState) string {
	t.Helper()
	next := s.Next()
	got, err := SimulateUBootBoot(s)
	if err != nil {
		t.Fatal(err)
	}
	if got == "" {
		if got, err = SimulateUBootBoot(s); err != nil || got == "" {
			t.Fatalf("no slot after the script's reset: %q %v", got, err)
		}
	}
	if got != next {
		t.Fatalf("Next() said %q, the boot took %q", next, got)
	}
	return got
}

func raucEnv(t testing.TB) *UBootEnv {
	return mustEnv(t, "BOOT_ORDER", "A B", "BOOT_A_LEFT", "3", "BOOT_B_LEFT", "3", "bootcmd", "run rauc")
}

// RAUC: mark-active B, B's boots fail, the script falls back to A when B has
// no attempts left; A's own attempts are counted too (RAUC's mark-good at
// each good boot puts them back).
func TestRAUCUBootFallback(t *testing.T) {
	s := mustState(t, raucEnv(t), UBootSchemeConfig{})
	if s.Scheme() != UBootSchemeRAUC {
		t.Fatal(s.Scheme())
	}
	want := []SlotInfo{{Name: "a", BootName: "A", Bootable: true, Tries: 3}, {Name: "b", BootName: "B", Bootable: true, Tries: 3}}
	if got := s.Slots(); !reflect.DeepEqual(got, want) {
		t.Fatalf("%+v", got)
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, s.Env(), "BOOT_ORDER", "B A", "BOOT_B_LEFT", "3")
	for i, want := range []string{"b", "b", "b", "a", "a"} {
		if got := boot(t, s); got != want {
			t.Fatalf("boot %d: %s, want %s", i+1, got, want)
		}
	}
	wantVars(t, s.Env(), "BOOT_ORDER", "B A", "BOOT_B_LEFT", "0", "BOOT_A_LEFT", "1")
	if si, _ := SlotOf(s, "b"); si.Bootable || si.Tries != 0 || si.TracksSuccess {
		t.Fatalf("b after its attempts: %+v", si)
	}
	// cpinit's rollback from A: mark-bad B, A stays next.
	if err := s.FallBackFrom("b"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, s.Env(), "BOOT_ORDER", "A", "BOOT_B_LEFT", "0", "BOOT_A_LEFT", "1")
	// Good boots with mark-good each time.
	for range 5 {
		if got := boot(t, s); got != "a" {
			t.Fatal(got)
		}
		if err := s.MarkSuccessful("a"); err != nil {
			t.Fatal(err)
		}
	}
	wantVars(t, s.Env(), "BOOT_A_LEFT", "3")
}

func TestRAUCUBootOperations(t *testing.T) {
	cfg := UBootSchemeConfig{Slots: []UBootSlotName{{"a", "system0"}, {"b", "system1"}}, BootAttempts: 12, BootAttemptsPrimary: 10}
	env := mustEnv(t, "BOOT_ORDER", " system0  system1 R ", "BOOT_system0_LEFT", "0x3", "BOOT_system1_LEFT", "zz", "BOOT_R_LEFT", "1")
	s := mustState(t, env, cfg)
	if si, _ := SlotOf(s, "b"); si.Bootable || si.Tries != 0 { // "zz" reads as 0
		t.Fatalf("%+v", si)
	}
	if err := s.SetActive("_b"); err != nil {
		t.Fatal(err)
	}
	// r_uboot_set_primary: "%x" of boot-attempts-primary, the slot first,
	// the rest in order without empty names.
	wantVars(t, env, "BOOT_system1_LEFT", "a", "BOOT_ORDER", "system1 system0 R")
	if err := s.MarkSuccessful("a"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, env, "BOOT_system0_LEFT", "c")
	if err := s.SetUnbootable("b"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, env, "BOOT_system1_LEFT", "0", "BOOT_ORDER", "system0 R")
	if err := s.SetActive("c"); !errors.Is(err, ErrUnknownSlot) {
		t.Fatalf("slot c: %v", err)
	}
	// Fallback when the other slot would not boot: it is made primary.
	env = mustEnv(t, "BOOT_ORDER", "B", "BOOT_A_LEFT", "0", "BOOT_B_LEFT", "2")
	s = mustState(t, env, UBootSchemeConfig{})
	if err := s.FallBackFrom("b"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, env, "BOOT_ORDER", "A", "BOOT_A_LEFT", "3", "BOOT_B_LEFT", "0")
	// No slot with attempts: the script resets them all to 3 and reboots
	// into the first of BOOT_ORDER.
	env = mustEnv(t, "BOOT_ORDER", "B A", "BOOT_A_LEFT", "0", "BOOT_B_LEFT", "0")
	s = mustState(t, env, UBootSchemeConfig{})
	if got, err := SimulateUBootBoot(s); got != "" || err != nil {
		t.Fatalf("%q %v", got, err)
	}
	wantVars(t, env, "BOOT_A_LEFT", "3", "BOOT_B_LEFT", "3")
	if got := boot(t, s); got != "b" {
		t.Fatal(got)
	}
	wantVars(t, env, "BOOT_B_LEFT", "2")
}

func menderEnv(t testing.TB) *UBootEnv {
	// meta-mender's env_mender.h defaults.
	return mustEnv(t, "altbootcmd", "run mender_altbootcmd; run bootcmd", "bootlimit", "1", "bootcount", "0",
		"upgrade_available", "0", "mender_boot_part", "2", "mender_boot_part_hex", "2", "bootcmd", "run mender_setup; ...")
}

func TestMenderUBootFallback(t *testing.T) {
	s := mustState(t, menderEnv(t), UBootSchemeConfig{})
	if s.Scheme() != UBootSchemeMender {
		t.Fatal(s.Scheme())
	}
	want := []SlotInfo{{Name: "a", BootName: "2", Bootable: true, Successful: true, TracksSuccess: true, Tries: -1}, {Name: "b", BootName: "3", TracksSuccess: true, Tries: -1}}
	if got := s.Slots(); !reflect.DeepEqual(got, want) {
		t.Fatalf("%+v", got)
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	// ArtifactInstall's fw_setenv -s.
	wantVars(t, s.Env(), "mender_boot_part", "3", "mender_boot_part_hex", "3", "upgrade_available", "1", "bootcount", "0")
	want = []SlotInfo{{Name: "a", BootName: "2", Bootable: true, TracksSuccess: true, Tries: -1}, {Name: "b", BootName: "3", Bootable: true, TracksSuccess: true, Tries: 1}}
	if got := s.Slots(); !reflect.DeepEqual(got, want) {
		t.Fatalf("on trial: %+v", got)
	}
	if got := boot(t, s); got != "b" {
		t.Fatal(got)
	}
	wantVars(t, s.Env(), "bootcount", "1")
	if si, _ := SlotOf(s, "b"); si.Bootable || si.Tries != 0 {
		t.Fatalf("b after its one try: %+v", si)
	}
	// bootcount 2 > bootlimit 1: altbootcmd.
	if got := boot(t, s); got != "a" {
		t.Fatal(got)
	}
	wantVars(t, s.Env(), "mender_boot_part", "2", "mender_boot_part_hex", "2", "upgrade_available", "0", "bootcount", "2")
	if err := s.MarkSuccessful("b"); !errors.Is(err, ErrNotBootSlot) {
		t.Fatalf("commit of b after the fallback: %v", err)
	}
	if got := boot(t, s); got != "a" {
		t.Fatal(got)
	}
	wantVars(t, s.Env(), "bootcount", "2") // not counted with upgrade_available=0
}

func TestMenderUBootCommitAndOperations(t *testing.T) {
	env := menderEnv(t)
	s := mustState(t, env, UBootSchemeConfig{})
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if got := boot(t, s); got != "b" {
		t.Fatal(got)
	}
	if err := s.MarkSuccessful("b"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, env, "upgrade_available", "0", "mender_boot_part", "3")
	for range 3 {
		if got := boot(t, s); got != "b" {
			t.Fatal(got)
		}
	}
	wantVars(t, env, "bootcount", "1")
	// SetUnbootable of the fallback slot during a trial cannot be said.
	if err := s.SetActive("a"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUnbootable("b"); err == nil {
		t.Fatal("SetUnbootable of the trial's fallback accepted")
	}
	// ...of the trial's own slot is the fallback.
	if err := s.SetUnbootable("a"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, env, "mender_boot_part", "3", "upgrade_available", "0")
	if err := s.SetUnbootable("a"); err != nil { // not booted, no trial: nothing to do
		t.Fatal(err)
	}
	// Partition numbers above 9: mender_boot_part_hex is hex.
	env = mustEnv(t, "altbootcmd", "x", "bootlimit", "3", "upgrade_available", "0", "mender_boot_part", "10", "mender_boot_part_hex", "a")
	s = mustState(t, env, UBootSchemeConfig{Scheme: UBootSchemeMender, Slots: []UBootSlotName{{"a", "10"}, {"b", "11"}}})
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, env, "mender_boot_part", "11", "mender_boot_part_hex", "b", "bootcount", "0")
	if si, _ := SlotOf(s, "b"); si.Tries != 3 {
		t.Fatalf("bootlimit 3: %+v", si)
	}
	for i, want := range []string{"b", "b", "b", "a"} {
		if got := boot(t, s); got != want {
			t.Fatalf("boot %d: %s", i+1, got)
		}
	}
	// bootlimit=0: U-Boot's "no limit", never falls back.
	env = mustEnv(t, "altbootcmd", "x", "bootlimit", "0", "upgrade_available", "0", "mender_boot_part", "2", "mender_boot_part_hex", "2")
	s = mustState(t, env, UBootSchemeConfig{})
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if si, _ := SlotOf(s, "b"); !si.Bootable || si.Tries != -1 {
		t.Fatalf("bootlimit 0: %+v", si)
	}
	for range 20 {
		if got := boot(t, s); got != "b" {
			t.Fatal(got)
		}
	}
}

func TestBootcountUBootScheme(t *testing.T) {
	env := mustEnv(t, "bootpart", "0:2", "bootlimit", "2", "upgrade_available", "0", "altbootcmd", "run swap", "ustate", "0")
	s := mustState(t, env, UBootSchemeConfig{})
	if s.Scheme() != UBootSchemeBootcount {
		t.Fatal(s.Scheme())
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, env, "bootpart", "0:3", "upgrade_available", "1", "bootcount", "0", "ustate", "1")
	for i, want := range []string{"b", "b", "a", "a"} {
		if got := boot(t, s); got != want {
			t.Fatalf("boot %d: %s", i+1, got)
		}
	}
	wantVars(t, env, "bootpart", "0:2", "upgrade_available", "0", "ustate", "3", "bootcount", "3")
	// Commit path: ustate and bootcount back to 0 (SWUpdate's state machine).
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if got := boot(t, s); got != "b" {
		t.Fatal(got)
	}
	if err := s.MarkSuccessful("b"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, env, "upgrade_available", "0", "bootcount", "0", "ustate", "0")
	if si, _ := SlotOf(s, "b"); !si.Successful || !si.Bootable {
		t.Fatalf("%+v", si)
	}
	// Configured variable and values; no ustate, none created.
	cfg := UBootSchemeConfig{SlotVar: "rootpart", Slots: []UBootSlotName{{"a", "2"}, {"b", "3"}}}
	env = mustEnv(t, "rootpart", "3", "bootlimit", "1", "upgrade_available", "0", "altbootcmd", "run swap")
	s = mustState(t, env, cfg)
	if s.Scheme() != UBootSchemeBootcount || s.Next() != "b" {
		t.Fatalf("%s next %s", s.Scheme(), s.Next())
	}
	if err := s.FallBackFrom("b"); err != nil {
		t.Fatal(err)
	}
	wantVars(t, env, "rootpart", "2", "upgrade_available", "0", "ustate", "")
	if _, err := NewUBootState(env, UBootSchemeConfig{}); !errors.Is(err, ErrNoScheme) {
		t.Fatalf("rootpart without SlotVar: %v", err)
	}
}

func TestUBootSchemeConfigErrors(t *testing.T) {
	if _, err := ParseUBootSlotNames("a=A,b"); err == nil {
		t.Fatal("a=A,b accepted")
	}
	if got, err := ParseUBootSlotNames("a=2,_b=3"); err != nil || !reflect.DeepEqual(got, []UBootSlotName{{"a", "2"}, {"_b", "3"}}) {
		t.Fatalf("%+v %v", got, err)
	}
	for _, cfg := range []UBootSchemeConfig{
		{Scheme: UBootSchemeRAUC, Slots: []UBootSlotName{{"a", "A"}, {"_a", "B"}}},
		{Scheme: UBootSchemeRAUC, Slots: []UBootSlotName{{"a", "A B"}}},
		{Scheme: UBootSchemeMender, Slots: []UBootSlotName{{"a", "2"}, {"b", "x"}}},
		{Scheme: UBootSchemeMender, Slots: []UBootSlotName{{"a", "2"}}},
		{Scheme: UBootSchemeBootcount, Slots: []UBootSlotName{{"a", "0:2"}, {"b", "0:2"}}},
	} {
		env := mustEnv(t, "BOOT_ORDER", "A", "BOOT_A_LEFT", "3", "BOOT_B_LEFT", "3", "BOOT_A B_LEFT", "1", "altbootcmd", "x", "bootlimit", "1",
			"upgrade_available", "0", "mender_boot_part", "2", "mender_boot_part_hex", "2", "bootpart", "0:2")
		if _, err := NewUBootState(env, cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	// A read-only variable in .flags: the whole change is refused.
	img, err := DecodeUBootEnv([][]byte{mkEnvCopy(t, 512, false, 0, 0, ".flags=BOOT_ORDER:sr", "BOOT_ORDER=A B", "BOOT_A_LEFT=3", "BOOT_B_LEFT=3")}, UBootFlagsIncremental)
	if err != nil {
		t.Fatal(err)
	}
	s := mustState(t, img.Env, UBootSchemeConfig{})
	if err := s.SetActive("b"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("read-only BOOT_ORDER: %v", err)
	}
	wantVars(t, img.Env, "BOOT_B_LEFT", "3", "BOOT_ORDER", "A B")
}

// Whatever cpinit and the boots do, Next predicts the boot, and a slot the
// boot takes was reported bootable (RAUC: or the script reset the attempts).
func TestUBootSchemesNextPredictsBoot(t *testing.T) {
	for _, mk := range []func() UBootState{
		func() UBootState { return mustState(t, raucEnv(t), UBootSchemeConfig{}) },
		func() UBootState { return mustState(t, menderEnv(t), UBootSchemeConfig{}) },
		func() UBootState {
			return mustState(t, mustEnv(t, "bootpart", "0:2", "bootlimit", "3", "upgrade_available", "0", "altbootcmd", "x", "ustate", "0"), UBootSchemeConfig{})
		},
	} {
		r := rand.New(rand.NewSource(1))
		s := mk()
		for step := range 3000 {
			slot := []string{"a", "b"}[r.Intn(2)]
			var err error
			switch r.Intn(6) {
			case 0:
				err = s.SetActive(slot)
			case 1:
				err = s.MarkSuccessful(slot)
			case 2:
				err = s.SetUnbootable(slot)
			case 3:
				err = s.FallBackFrom(slot)
			default:
				next := s.Next()
				si, _ := SlotOf(s, next)
				reset := !si.Bootable
				got := boot(t, s)
				if reset && s.Scheme() != UBootSchemeRAUC {
					t.Fatalf("%s step %d: booted %s, which Slots called unbootable", s.Scheme(), step, got)
				}
			}
			if err != nil && !errors.Is(err, ErrNotBootSlot) && !strings.Contains(err.Error(), "cannot make") {
				t.Fatalf("%s step %d: %v", s.Scheme(), step, err)
			}
		}
	}
}

// Through the Bootloader, on a file: Mender installs B, B's boot fails, the
// bootloader falls back; each boot is Load, the boot, saveenv (Save).
func TestUBootBootloaderMenderFallbackOnFile(t *testing.T) {
	const size = 0x1000
	entries := []string{"altbootcmd=run mender_altbootcmd; run bootcmd", "bootcount=0", "bootlimit=1", "mender_boot_part=2", "mender_boot_part_hex=2", "upgrade_available=0"}
	bl, p := envFile(t, size, [][]byte{mkEnvCopy(t, size, true, 1, 0, entries...), mkEnvCopy(t, size, true, 1, 0, entries...)}, UBootSchemeConfig{})
	s, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatal(err)
	}
	var booted []string
	for range 3 {
		s, err := bl.Load()
		if err != nil {
			t.Fatal(err)
		}
		slot, err := SimulateUBootBoot(s.(UBootState))
		if err != nil {
			t.Fatal(err)
		}
		booted = append(booted, slot)
		if err := bl.Save(s); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(booted, []string{"b", "a", "a"}) {
		t.Fatalf("boots %v", booted)
	}
	s, err = bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if si, _ := SlotOf(s, "a"); !si.Successful || s.Next() != "a" {
		t.Fatalf("after the fallback: %+v next %s", si, s.Next())
	}
	// Three writes: the install, the first boot's count, the second boot's
	// count and fallback (U-Boot saves those two apart; one Save here); the
	// third boot changes nothing. Flags 1 -> 4.
	b := readFile(t, p)
	if f := max(b[4], b[size+4]); f != 4 {
		t.Fatalf("flags %d and %d", b[4], b[size+4])
	}
}
