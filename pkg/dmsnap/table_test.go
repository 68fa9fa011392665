package dmsnap

import (
	"reflect"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

var (
	vda   = Dev{253, 0}
	cowDv = Dev{254, 0}
)

func TestLinear(t *testing.T) {
	tb, err := Linear([]Segment{{vda, 2048, 8}, {vda, 100, 16}, {Dev{8, 16}, 0, 1}})
	if err != nil {
		t.Fatal(err)
	}
	want := "0 8 linear 253:0 2048\n8 16 linear 253:0 100\n24 1 linear 8:16 0\n"
	if got := FormatTable(tb.Targets()); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	if tb.Sectors() != 25 {
		t.Errorf("sectors %d", tb.Sectors())
	}
	for name, segs := range map[string][]Segment{
		"none":     nil,
		"zero len": {{vda, 0, 0}},
		"no dev":   {{Dev{}, 0, 1}},
		"overflow": {{vda, ^uint64(0), 2}},
	} {
		if _, err := Linear(segs); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestSnapshotTables(t *testing.T) {
	o, err := SnapshotOrigin(vda, 524288)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Snapshot(vda, cowDv, 524288, 8)
	if err != nil {
		t.Fatal(err)
	}
	m, err := SnapshotMerge(vda, cowDv, 524288, 8)
	if err != nil {
		t.Fatal(err)
	}
	// The forms snapshot.rst shows for LVM, with our devices.
	for tb, want := range map[Table]string{
		o: "0 524288 snapshot-origin 253:0\n",
		s: "0 524288 snapshot 253:0 254:0 P 8\n",
		m: "0 524288 snapshot-merge 253:0 254:0 P 8\n",
	} {
		if got := FormatTable(tb.Targets()); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	for _, f := range []func() error{
		func() error { _, err := SnapshotOrigin(Dev{}, 1); return err },
		func() error { _, err := SnapshotOrigin(vda, 0); return err },
		func() error { _, err := Snapshot(vda, vda, 1, 8); return err },
		func() error { _, err := Snapshot(vda, cowDv, 1, 12); return err },
		func() error { _, err := Snapshot(vda, cowDv, 1, 0); return err },
		func() error { _, err := SnapshotMerge(vda, Dev{}, 1, 8); return err },
		func() error { _, err := SnapshotMerge(vda, cowDv, 1, 1<<22); return err },
	} {
		if f() == nil {
			t.Error("invalid table accepted")
		}
	}
}

func TestParseSnapshotParams(t *testing.T) {
	p, err := ParseSnapshotParams("253:0 254:0 P 8")
	if err != nil {
		t.Fatal(err)
	}
	if want := (SnapshotParams{Origin: vda, Cow: cowDv, Store: "P", ChunkSectors: 8}); !reflect.DeepEqual(p, want) {
		t.Errorf("got %+v", p)
	}
	p, err = ParseSnapshotParams("253:0 254:0 PO 16 2 discard_zeroes_cow discard_passdown_origin")
	if err != nil || p.Store != "PO" || len(p.Features) != 2 {
		t.Errorf("features: %+v %v", p, err)
	}
	for _, s := range []string{"", "253:0 254:0 P", "253:0 254:0 X 8", "253 254:0 P 8", "253:0 254:0 P x", "253:0 254:0 P 8 2 a"} {
		if _, err := ParseSnapshotParams(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	rapid.Check(t, func(t *rapid.T) {
		o := Dev{rapid.Uint32Range(1, 4095).Draw(t, "om"), rapid.Uint32Range(0, 1<<20).Draw(t, "on")}
		c := Dev{rapid.Uint32Range(1, 4095).Draw(t, "cm"), rapid.Uint32Range(0, 1<<20).Draw(t, "cn")}
		if o == c {
			return
		}
		chunk := uint32(1) << rapid.IntRange(0, 21).Draw(t, "shift")
		tb, err := Snapshot(o, c, 1, chunk)
		if err != nil {
			t.Fatal(err)
		}
		p, err := ParseSnapshotParams(tb.Targets()[0].Params)
		if err != nil || p.Origin != o || p.Cow != c || p.ChunkSectors != chunk || p.Store != "P" {
			t.Fatalf("%+v %v", p, err)
		}
	})
}

func TestSameTargets(t *testing.T) {
	a := []TargetSpec{{0, 8, "snapshot-origin", "253:0"}}
	b := []TargetSpec{{0, 8, "snapshot-origin", "253:0 "}} // dmsetup's trailing space
	if !SameTargets(a, b) {
		t.Error("trailing space matters")
	}
	if SameTargets(a, []TargetSpec{{0, 9, "snapshot-origin", "253:0"}}) || SameTargets(a, nil) {
		t.Error("different tables compare equal")
	}
}

func TestDevEncoding(t *testing.T) {
	for _, c := range []struct {
		d Dev
		v uint64
	}{{Dev{8, 0}, 0x800}, {Dev{253, 1}, 0xfd01}, {Dev{259, 300}, 0x11032c}} {
		if got := encodeDev(c.d); got != c.v {
			t.Errorf("encode %v = %#x, want %#x", c.d, got, c.v)
		}
	}
	rapid.Check(t, func(t *rapid.T) {
		d := Dev{rapid.Uint32().Draw(t, "maj"), rapid.Uint32().Draw(t, "min")}
		if got := decodeDev(encodeDev(d)); got != d {
			t.Fatalf("%v -> %v", d, got)
		}
		p, err := ParseDev(d.String())
		if err != nil || p != d {
			t.Fatalf("ParseDev(%q) = %v, %v", d, p, err)
		}
	})
	for _, s := range []string{"", "8", "8:", ":0", "a:b", "8:0:0", "-1:0", "4294967296:0"} {
		if _, err := ParseDev(s); err == nil {
			t.Errorf("ParseDev(%q) accepted", s)
		}
	}
}

func TestFormatMatchesDmsetupLine(t *testing.T) {
	// `dmsetup table` prints "<start> <length> <type> <params>".
	s := TargetSpec{0, 524288, "snapshot", "253:0 254:0 P 8"}
	if got := s.String(); got != "0 524288 snapshot 253:0 254:0 P 8" {
		t.Errorf("got %q", got)
	}
	if !strings.HasSuffix(FormatTable([]TargetSpec{s}), "\n") {
		t.Error("no newline")
	}
}
