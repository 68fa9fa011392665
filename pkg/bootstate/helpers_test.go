package bootstate

import (
	"testing"
)

// testMap returns a map of n segments of 64 sectors spread over a device,
// every other 64-sector run, so none are adjacent or overlapping.
func testMap(n int) ExtentMap {
	m := ExtentMap{DevMajor: 254, DevMinor: 0, DevSectors: uint64(n)*128 + 4096, ChunkSector: 8}
	m.Segments = make([]Segment, n)
	for i := range m.Segments {
		m.Segments[i] = Segment{Logical: uint64(i) * 64, Physical: 2048 + uint64(i)*128, Length: 64}
	}
	return m
}

func testBegin(mode CounterMode, slot string) *BeginArgs {
	return &BeginArgs{TargetSlot: slot, COWPath: "/data/.cpinit/cow", Map: testMap(4), Counter: mode, Tries: 3}
}

func mustApply(t testing.TB, r Record, s Step) Record {
	t.Helper()
	n, err := Apply(r, s)
	if err != nil {
		t.Fatalf("Apply(%v, %v): %v", r.State, s, err)
	}
	return n
}

func armedRecord(t testing.TB, mode CounterMode, slot string) Record {
	return mustApply(t, NewFreshRecord(), Step{Event: EventBegin, Begin: testBegin(mode, slot)})
}

func activeRecord(t testing.TB, mode CounterMode, slot string) Record {
	r := armedRecord(t, mode, slot)
	r = mustApply(t, r, Step{Event: EventBootAttempt})
	return mustApply(t, r, Step{Event: EventActivate})
}
