package dmsnap

import (
	"testing"

	"pgregory.net/rapid"
)

func TestParseSnapshotStatus(t *testing.T) {
	for in, want := range map[string]SnapshotStatus{
		// From snapshot.rst.
		"397896/2097152 1560": {SnapActive, 397896, 2097152, 1560},
		"16/2097152 16":       {SnapActive, 16, 2097152, 16},
		"16/98304 16":         {SnapActive, 16, 98304, 16},
		" 2072/98304 16 ":     {SnapActive, 2072, 98304, 16},
		// dm-snap.c snapshot_status words.
		"Invalid":      {State: SnapInvalid},
		"Merge failed": {State: SnapMergeFailed},
		"Overflow":     {State: SnapOverflow},
		"Unknown":      {State: SnapUnknown},
	} {
		got, err := ParseSnapshotStatus(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if got != want {
			t.Errorf("%q: got %+v, want %+v", in, got, want)
		}
	}
	for _, in := range []string{"", "16/98304", "16 98304 16", "x/1 1", "1/x 1", "1/1 x", "5/4 1", "4/8 5", "invalid", "Merge", "1/2 3 4"} {
		if got, err := ParseSnapshotStatus(in); err == nil {
			t.Errorf("%q accepted as %+v", in, got)
		}
	}
}

func TestMergeDone(t *testing.T) {
	done, _ := ParseSnapshotStatus("16/2097152 16")
	running, _ := ParseSnapshotStatus("180480/2097152 712")
	inval, _ := ParseSnapshotStatus("Invalid")
	if !done.MergeDone() || running.MergeDone() || inval.MergeDone() {
		t.Errorf("MergeDone: done=%v running=%v invalid=%v", done.MergeDone(), running.MergeDone(), inval.MergeDone())
	}
	if running.DataSectors() != 180480-712 || done.DataSectors() != 0 || inval.DataSectors() != 0 {
		t.Errorf("DataSectors: %d %d %d", running.DataSectors(), done.DataSectors(), inval.DataSectors())
	}
	rapid.Check(t, func(t *rapid.T) {
		total := rapid.Uint64().Draw(t, "total")
		alloc := rapid.Uint64Range(0, total).Draw(t, "alloc")
		meta := rapid.Uint64Range(0, alloc).Draw(t, "meta")
		st := SnapshotStatus{SnapActive, alloc, total, meta}
		got, err := ParseSnapshotStatus(st.String())
		if err != nil || got != st {
			t.Fatalf("%v -> %+v, %v", st, got, err)
		}
		if got.MergeDone() != (alloc == meta) {
			t.Fatal("MergeDone disagrees with allocated == metadata")
		}
	})
}

func TestParseCowHeader(t *testing.T) {
	hdr := func(magic, valid, version, chunk uint32) []byte {
		b := make([]byte, 512)
		ne.PutUint32(b[0:], magic)
		ne.PutUint32(b[4:], valid)
		ne.PutUint32(b[8:], version)
		ne.PutUint32(b[12:], chunk)
		return b
	}
	for _, c := range []struct {
		b    []byte
		want CowHeader
	}{
		{make([]byte, 4096), CowHeader{State: CowFresh}},
		{hdr(cowMagic, 1, 1, 8), CowHeader{CowValid, 1, 8}},
		{hdr(cowMagic, 0, 1, 8), CowHeader{CowInvalidated, 1, 8}},
		{hdr(cowMagic, 1, 2, 8), CowHeader{CowGarbage, 2, 8}},
		{hdr(0xdeadbeef, 1, 1, 8), CowHeader{CowGarbage, 1, 8}},
		{append([]byte("SnAp"), make([]byte, 12)...), CowHeader{State: CowGarbage}}, // version 0
	} {
		got, err := ParseCowHeader(c.b)
		if err != nil || got != c.want {
			t.Errorf("got %+v %v, want %+v", got, err, c.want)
		}
	}
	if _, err := ParseCowHeader(make([]byte, 15)); err == nil {
		t.Error("short header accepted")
	}
}
