package bootstate

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// The Android backend through the ABState interface: the same changes as
// BootControl's own methods, slot names instead of indexes.
func TestAndroidStateThroughInterface(t *testing.T) {
	bc, err := NewBootControl(2, 0)
	if err != nil {
		t.Fatal(err)
	}
	var s ABState = &AndroidState{BC: bc, Current: 0}
	want := []SlotInfo{
		{Name: "a", Bootable: true, Successful: true, TracksSuccess: true, Tries: -1},
		{Name: "b", Bootable: true, TracksSuccess: true, Tries: 7},
	}
	if got := s.Slots(); !reflect.DeepEqual(got, want) {
		t.Fatalf("fresh block: %+v, want %+v", got, want)
	}
	if err := s.SetActive("_b"); err != nil {
		t.Fatal(err)
	}
	if n := s.Next(); n != "b" {
		t.Fatalf("next after SetActive(b) = %q", n)
	}
	if bc.Slots[1].TriesRemaining != 6 {
		t.Fatalf("Next counted a try on the state itself: %+v", bc.Slots[1])
	}
	if o, err := OtherSlotOf(s, "b"); err != nil || o != "a" {
		t.Fatalf("OtherSlotOf(b) = %q, %v", o, err)
	}
	if err := s.FallBackFrom("b"); err != nil {
		t.Fatal(err)
	}
	if n := s.Next(); n != "a" {
		t.Fatalf("next after FallBackFrom(b) = %q", n)
	}
	if si, _ := SlotOf(s, "b"); si.Bootable {
		t.Fatalf("slot b after FallBackFrom(b): %+v", si)
	}
	if err := s.MarkSuccessful("c"); !errors.Is(err, ErrUnknownSlot) {
		t.Fatalf("MarkSuccessful(c) on two slots: %v", err)
	}
	if _, err := SlotOf(s, "c"); !errors.Is(err, ErrUnknownSlot) {
		t.Fatalf("SlotOf(c): %v", err)
	}
}

// AndroidMisc reads and writes the block where libboot_control keeps it, on
// a file standing for misc; a state of another backend is refused and
// nothing is written.
func TestAndroidMiscLoadSave(t *testing.T) {
	path := filepath.Join(t.TempDir(), "misc")
	bc, err := NewBootControl(2, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 10); err != nil {
		t.Fatal(err)
	}
	if err := WriteBootControl(f, path, bc); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var bl Bootloader = &AndroidMisc{Path: path, Current: 0}
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
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeBootControl(raw[BootControlOffset : BootControlOffset+BootControlSize])
	if err != nil {
		t.Fatal(err)
	}
	// slot_suffix is the bootloader's to write (libboot_control's
	// SetActiveBootSlot leaves it).
	if got.Slots[1].Priority != 15 || got.Slots[0].Priority >= 15 || got.Slots[1].SuccessfulBoot {
		t.Fatalf("saved block: %+v; want b active on trial", got.Slots)
	}
	if s2, err := bl.Load(); err != nil || s2.Next() != "b" {
		t.Fatalf("reloaded: next %v, %v", s2, err)
	}
	if err := bl.Save(stateView{{Name: "a"}}); err == nil {
		t.Fatal("saving another backend's state into misc: no error")
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(after, raw) {
		t.Fatal("a refused save changed misc")
	}
	if _, err := (&AndroidMisc{Path: filepath.Join(t.TempDir(), "none")}).Load(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing misc: %v", err)
	}
}

// Undoing a saved change the way `cpinit begin` does when a later step
// fails: load the current state, revert it to the one loaded before the
// change, save. Each file backend ends where it started; saving the old
// state itself is refused where the backend guards against other writers.
func TestRevertAfterSave(t *testing.T) {
	beginChange := func(s ABState) error {
		if err := s.SetUnbootable("b"); err != nil {
			return err
		}
		return s.SetActive("b")
	}
	undo := func(t *testing.T, bl Bootloader) {
		t.Helper()
		orig, err := bl.Load()
		if err != nil {
			t.Fatal(err)
		}
		s, err := bl.Load()
		if err != nil {
			t.Fatal(err)
		}
		if err := beginChange(s); err != nil {
			t.Fatal(err)
		}
		if err := bl.Save(s); err != nil {
			t.Fatal(err)
		}
		if n, _ := bl.Load(); n.Next() != "b" {
			t.Fatalf("after the change: next %q", n.Next())
		}
		now, err := bl.Load()
		if err != nil {
			t.Fatal(err)
		}
		if err := now.(Reverter).RevertTo(orig); err != nil {
			t.Fatal(err)
		}
		if err := bl.Save(now); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("grub-rauc", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "grubenv")
		env, err := NewGrubEnv(GrubEnvSize)
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Set(GrubEnvVar{"ORDER", "A B"}, GrubEnvVar{"A_OK", "1"}, GrubEnvVar{"A_TRY", "0"}, GrubEnvVar{"B_OK", "1"}, GrubEnvVar{"B_TRY", "0"}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, env.Encode(), 0o644); err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(path)
		bl := &GrubEnvFile{Path: path}
		undo(t, bl)
		if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
			t.Fatalf("grubenv after the undo:\n%s\nbefore:\n%s", after, before)
		}
	})
	t.Run("systemd-boot", func(t *testing.T) {
		esp := blsESP(t, "cpinit-1-a.conf", "cpinit-0-b+0.conf")
		before := blsTree(t, esp)
		undo(t, &BLSDir{ESP: esp})
		if after := blsTree(t, esp); !reflect.DeepEqual(after, before) {
			t.Fatalf("ESP after the undo: %v\nbefore: %v", after, before)
		}
	})
}
