package bootstate

import (
	"errors"
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
