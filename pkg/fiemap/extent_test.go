package fiemap

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func TestValidateRejects(t *testing.T) {
	const path = "/data/.cpinit/cow"
	ok := func() []Extent {
		return []Extent{
			{Logical: 0, Physical: 1 << 20, Length: 8192},
			{Logical: 8192, Physical: 4 << 20, Length: 8192, Flags: FlagUnwritten},
			{Logical: 16384, Physical: 2 << 20, Length: 4096, Flags: FlagLast},
		}
	}
	if err := Validate(path, 20480, ok()); err != nil {
		t.Fatalf("valid list rejected: %v", err)
	}
	// Last extent running past EOF (partial last block) is fine.
	if err := Validate(path, 20480-512, ok()); err != nil {
		t.Fatalf("partial last block rejected: %v", err)
	}
	// Extents wholly past EOF (f2fs pinned sections, KEEP_SIZE
	// preallocation), even after a hole, are accepted and trimmed away.
	e0 := append(ok(), Extent{Logical: 65536, Physical: 8 << 20, Length: 4096, Flags: FlagLast})
	e0[2].Flags = 0
	if err := Validate(path, 16384, e0); err != nil {
		t.Fatalf("extents past EOF rejected: %v", err)
	}
	if tr := Trim(e0, 16384); len(tr) != 2 || tr[1].Flags != FlagUnwritten|FlagLast || tr[1].Length != 8192 {
		t.Errorf("Trim = %v", tr)
	}
	if tr := Trim(e0, 12288); len(tr) != 2 || tr[1].Length != 4096 {
		t.Errorf("Trim inside an extent = %v", tr)
	}
	// ...but still checked: a SHARED block past EOF is rejected.
	e0[3].Flags |= FlagShared
	if err := Validate(path, 16384, e0); err == nil {
		t.Error("SHARED extent past EOF accepted")
	}
	// UNWRITTEN and MERGED are accepted.
	e := ok()
	e[0].Flags = FlagUnwritten | FlagMerged
	if err := Validate(path, 20480, e); err != nil {
		t.Fatalf("UNWRITTEN|MERGED rejected: %v", err)
	}

	for _, fl := range []struct {
		flag uint32
		name string
	}{
		{FlagUnknown, "UNKNOWN"},
		{FlagDelalloc, "DELALLOC"},
		{FlagEncoded, "ENCODED"},
		{FlagDataEncrypted, "DATA_ENCRYPTED"},
		{FlagDataInline, "DATA_INLINE"},
		{FlagDataTail, "DATA_TAIL"},
		{FlagNotAligned, "NOT_ALIGNED"},
		{FlagShared, "SHARED"},
		{0x10000, "0x10000"},
	} {
		e := ok()
		e[1].Flags |= fl.flag
		err := Validate(path, 20480, e)
		var ee *ExtentError
		if !errors.As(err, &ee) {
			t.Errorf("%s: got %v, want *ExtentError", fl.name, err)
			continue
		}
		if !errors.Is(err, ErrUnsafeExtent) {
			t.Errorf("%s: %v does not wrap ErrUnsafeExtent", fl.name, err)
		}
		if ee.Offset != 8192 || ee.Flags&fl.flag == 0 || ee.Path != path {
			t.Errorf("%s: error %+v does not name offset 8192 and the flag", fl.name, ee)
		}
		for _, s := range []string{path, "8192", fl.name} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: message %q lacks %q", fl.name, err, s)
			}
		}
	}

	cases := []struct {
		name   string
		size   uint64
		mut    func([]Extent) []Extent
		offset uint64
		text   string
	}{
		{"hole at start", 20480, func(e []Extent) []Extent { e[0].Logical, e[0].Length = 4096, 4096; return e }, 0, "hole"},
		{"hole in middle", 20480, func(e []Extent) []Extent { e[1].Logical, e[1].Length = 12288, 4096; return e }, 8192, "hole"},
		{"hole at end", 24576, func(e []Extent) []Extent { return e }, 20480, "hole"},
		{"no extents", 4096, func(e []Extent) []Extent { return nil }, 0, "hole"},
		{"overlap", 20480, func(e []Extent) []Extent { e[1].Logical = 4096; return e }, 4096, "overlaps"},
		{"unaligned physical", 20480, func(e []Extent) []Extent { e[1].Physical += 100; return e }, 8192, "aligned"},
		{"unaligned length", 20480, func(e []Extent) []Extent { e[2].Length = 4000; return e }, 16384, "aligned"},
		{"zero length", 20480, func(e []Extent) []Extent { e[2].Length = 0; return e }, 16384, "zero-length"},
		{"no LAST", 20480, func(e []Extent) []Extent { e[2].Flags = 0; return e }, 16384, "LAST"},
		{"physical alias", 20480, func(e []Extent) []Extent { e[2].Physical = e[0].Physical + 4096; return e }, 16384, "physical range overlaps"},
		{"size not sectors", 20000, func(e []Extent) []Extent { return e }, 0, "multiple of 512"},
		{"overflow", 20480, func(e []Extent) []Extent { e[2].Physical = ^uint64(0) - 511; return e }, 16384, "overflow"},
	}
	for _, c := range cases {
		err := Validate(path, c.size, c.mut(ok()))
		var ee *ExtentError
		if !errors.As(err, &ee) {
			t.Errorf("%s: got %v, want *ExtentError", c.name, err)
			continue
		}
		if ee.Offset != c.offset || !strings.Contains(err.Error(), c.text) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: got %q (offset %d), want offset %d and %q", c.name, err, ee.Offset, c.offset, c.text)
		}
	}
}

func TestFlagString(t *testing.T) {
	for flags, want := range map[uint32]string{
		0:                          "0",
		FlagLast | FlagUnwritten:   "LAST|UNWRITTEN",
		FlagShared | 0x80000:       "SHARED|0x80000",
		FlagDelalloc | FlagUnknown: "UNKNOWN|DELALLOC",
	} {
		if got := FlagString(flags); got != want {
			t.Errorf("FlagString(%#x) = %q, want %q", flags, got, want)
		}
	}
}

func TestDMTable(t *testing.T) {
	segs := []Segment{{Start: 0, Length: 16, Offset: 2048}, {Start: 16, Length: 8, Offset: 100}}
	want := "0 16 linear 254:3 2048\n16 8 linear 254:3 100\n"
	if got := DMTable(segs, 254, 3); got != want {
		t.Errorf("DMTable = %q, want %q", got, want)
	}
}

func TestSegmentsTranslation(t *testing.T) {
	ext := []Extent{
		{Logical: 0, Physical: 4096, Length: 4096, Flags: FlagUnwritten},
		{Logical: 4096, Physical: 8192, Length: 4096},                     // contiguous, other flags: merged as a segment
		{Logical: 8192, Physical: 1 << 20, Length: 8192, Flags: FlagLast}, // runs 1024 bytes past EOF
	}
	got := Segments(ext, 15360)
	want := []Segment{{Start: 0, Length: 16, Offset: 8}, {Start: 16, Length: 14, Offset: 2048}}
	if !slices.Equal(got, want) {
		t.Errorf("Segments = %+v, want %+v", got, want)
	}
	if c := Coalesce(ext); len(c) != 3 {
		t.Errorf("Coalesce merged extents with different UNWRITTEN flags: %+v", c)
	}
}

// layout is a generated file layout: runs of sectors, each either
// physically contiguous with the previous run or in a region of its own, and
// the same layout split into pieces as a filesystem might report it.
type layout struct {
	size   uint64   // file size in bytes
	runs   []Extent // unsplit
	pieces []Extent // runs split at random sector boundaries
}

const regionSectors = 1 << 20

func genLayout(t *rapid.T) layout {
	n := rapid.IntRange(1, 24).Draw(t, "runs")
	regions := rapid.Permutation(func() []uint64 {
		r := make([]uint64, n)
		for i := range r {
			r[i] = uint64(i + 1)
		}
		return r
	}()).Draw(t, "regions")
	var l layout
	var logical uint64 // sectors
	var prevEnd uint64 // physical sector after the previous run
	for i := 0; i < n; i++ {
		length := rapid.Uint64Range(1, 48).Draw(t, "len")
		phys := regions[i]*regionSectors + rapid.Uint64Range(0, 8).Draw(t, "skew")
		if i > 0 && rapid.IntRange(0, 2).Draw(t, "contig") == 0 {
			phys = prevEnd // physically contiguous with the previous run
		}
		var flags uint32
		if rapid.Bool().Draw(t, "unwritten") {
			flags = FlagUnwritten
		}
		run := Extent{Logical: logical * SectorSize, Physical: phys * SectorSize, Length: length * SectorSize, Flags: flags}
		l.runs = append(l.runs, run)
		// Split the run into pieces; MERGED may appear on any piece.
		left := length
		at := uint64(0)
		for left > 0 {
			k := rapid.Uint64Range(1, left).Draw(t, "piece")
			pf := flags
			if rapid.IntRange(0, 4).Draw(t, "merged") == 0 {
				pf |= FlagMerged
			}
			l.pieces = append(l.pieces, Extent{Logical: run.Logical + at*SectorSize, Physical: run.Physical + at*SectorSize, Length: k * SectorSize, Flags: pf})
			at += k
			left -= k
		}
		logical += length
		prevEnd = phys + length
	}
	// The file may end inside the last piece.
	last := l.pieces[len(l.pieces)-1]
	trim := rapid.Uint64Range(0, last.Length/SectorSize-1).Draw(t, "trim")
	l.size = logical*SectorSize - trim*SectorSize
	// And there may be allocated extents past EOF, maybe after a hole.
	for i := rapid.IntRange(0, 2).Draw(t, "pastEOF"); i > 0; i-- {
		logical += rapid.Uint64Range(0, 8).Draw(t, "gap")
		length := rapid.Uint64Range(1, 16).Draw(t, "len")
		e := Extent{Logical: logical * SectorSize, Physical: uint64(n+i) * regionSectors * SectorSize, Length: length * SectorSize}
		l.runs = append(l.runs, e)
		l.pieces = append(l.pieces, e)
		logical += length
	}
	l.runs[len(l.runs)-1].Flags |= FlagLast
	l.pieces[len(l.pieces)-1].Flags |= FlagLast
	return l
}

type where struct {
	phys  uint64
	flags uint32
}

// sectorMap expands extents to sector → (physical sector, layout flags) for
// the first size bytes.
func sectorMap(ext []Extent, size uint64) map[uint64]where {
	m := make(map[uint64]where)
	for _, e := range ext {
		for s := uint64(0); s < e.Length/SectorSize; s++ {
			l := e.Logical/SectorSize + s
			if l*SectorSize >= size {
				break
			}
			m[l] = where{e.Physical/SectorSize + s, e.Flags & layoutFlags}
		}
	}
	return m
}

func segmentMap(segs []Segment) map[uint64]uint64 {
	m := make(map[uint64]uint64)
	for _, s := range segs {
		for i := uint64(0); i < s.Length; i++ {
			m[s.Start+i] = s.Offset + i
		}
	}
	return m
}

func TestCoalesceProperties(t *testing.T) {
	rapid.Check(t, checkCoalesce)
}

func FuzzCoalesce(f *testing.F) { f.Fuzz(rapid.MakeFuzz(checkCoalesce)) }

func checkCoalesce(t *rapid.T) {
	l := genLayout(t)
	if err := Validate("f", l.size, l.pieces); err != nil {
		t.Fatalf("generator made an invalid layout: %v", err)
	}
	before := slices.Clone(l.pieces)
	c := Coalesce(l.pieces)
	if !slices.Equal(before, l.pieces) {
		t.Fatal("Coalesce modified its input")
	}
	// Byte-for-byte (sector-for-sector) the same mapping and flags.
	if want, got := sectorMap(l.pieces, l.size), sectorMap(c, l.size); !mapsEqual(want, got) {
		t.Fatalf("Coalesce changed the mapping\nin  %v\nout %v", l.pieces, c)
	}
	if err := Validate("f", l.size, c); err != nil {
		t.Fatalf("coalesced list invalid: %v", err)
	}
	// Canonical: idempotent, independent of how the fs split the runs, and
	// no two neighbours left that could merge.
	// Trim drops exactly what lies past EOF and keeps the mapping.
	tc := Trim(c, l.size)
	if want, got := sectorMap(l.pieces, l.size), sectorMap(tc, l.size); !mapsEqual(want, got) {
		t.Fatal("Trim changed the mapping")
	}
	if e := tc[len(tc)-1]; e.Logical+e.Length != l.size || e.Flags&FlagLast == 0 {
		t.Fatalf("Trim does not end at size %d with LAST: %v", l.size, e)
	}
	if err := Validate("f", l.size, tc); err != nil {
		t.Fatalf("trimmed list invalid: %v", err)
	}
	if !slices.Equal(Coalesce(Trim(l.pieces, l.size)), tc) {
		t.Fatal("Trim and Coalesce do not commute")
	}
	if c2 := Coalesce(c); !slices.Equal(c, c2) {
		t.Fatalf("not idempotent:\n%v\n%v", c, c2)
	}
	if cr := Coalesce(l.runs); !slices.Equal(c, cr) {
		t.Fatalf("depends on the split:\n%v\n%v", c, cr)
	}
	for i := 1; i < len(c); i++ {
		p, e := c[i-1], c[i]
		if p.Physical+p.Length == e.Physical && p.Flags&layoutFlags == e.Flags&layoutFlags {
			t.Fatalf("mergeable neighbours left: %v %v", p, e)
		}
		if p.Flags&(FlagLast|FlagMerged) != 0 {
			t.Fatalf("LAST/MERGED on inner extent %v", p)
		}
	}
	if c[len(c)-1].Flags&FlagLast == 0 {
		t.Fatal("LAST lost")
	}

	// Segments: same mapping, cover [0, size) exactly, in order, canonical.
	segs := Segments(c, l.size)
	if !slices.Equal(segs, Segments(l.pieces, l.size)) {
		t.Fatal("Segments depends on coalescing")
	}
	want := make(map[uint64]uint64)
	for k, v := range sectorMap(l.pieces, l.size) {
		want[k] = v.phys
	}
	if got := segmentMap(segs); !mapsEqual(want, got) {
		t.Fatalf("Segments changed the mapping: %v", segs)
	}
	var next uint64
	phys := make(map[uint64]bool)
	for i, s := range segs {
		if s.Start != next || s.Length == 0 {
			t.Fatalf("segment %d %+v does not start at %d", i, s, next)
		}
		if i > 0 && segs[i-1].Offset+segs[i-1].Length == s.Offset {
			t.Fatalf("mergeable segments %d and %d left", i-1, i)
		}
		for j := uint64(0); j < s.Length; j++ {
			if phys[s.Offset+j] {
				t.Fatalf("physical sector %d mapped twice", s.Offset+j)
			}
			phys[s.Offset+j] = true
		}
		next += s.Length
	}
	if next*SectorSize != l.size {
		t.Fatalf("segments cover %d sectors, file has %d", next, l.size/SectorSize)
	}

	// Fingerprint: independent of the split, sensitive to any change.
	dev := Device{Major: 254, Minor: 0, Sectors: 1 << 40}
	fp := Fingerprint(dev, l.size, l.pieces)
	if fp != Fingerprint(dev, l.size, l.runs) || fp != Fingerprint(dev, l.size, c) || fp != Fingerprint(dev, l.size, tc) {
		t.Fatal("fingerprint depends on the split")
	}
	i := rapid.IntRange(0, len(tc)-1).Draw(t, "mutate")
	m := slices.Clone(tc)
	switch rapid.IntRange(0, 3).Draw(t, "how") {
	case 0:
		m[i].Physical += SectorSize
	case 1:
		m[i].Flags ^= FlagUnwritten
	case 2:
		dev.Minor++
	case 3:
		dev.Sectors--
	}
	if Fingerprint(dev, l.size, m) == fp {
		t.Fatal("fingerprint did not change")
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestValidateArbitrary: on arbitrary extent lists Validate never panics,
// and whatever it accepts is safe to map.
func TestValidateArbitrary(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		gen := rapid.Custom(func(t *rapid.T) Extent {
			return Extent{
				Logical:  rapid.Uint64Range(0, 64).Draw(t, "l") * 512,
				Physical: rapid.Uint64Range(0, 64).Draw(t, "p")*512 + rapid.SampledFrom([]uint64{0, 0, 0, 1}).Draw(t, "u"),
				Length:   rapid.Uint64Range(0, 16).Draw(t, "n") * 512,
				Flags:    rapid.SampledFrom([]uint32{0, 0, FlagLast, FlagUnwritten, FlagShared, FlagMerged, FlagLast | FlagUnwritten}).Draw(t, "f"),
			}
		})
		ext := rapid.SliceOfN(gen, 0, 6).Draw(t, "ext")
		size := rapid.Uint64Range(0, 40).Draw(t, "size") * 512
		if err := Validate("f", size, ext); err != nil {
			return
		}
		segs := Segments(Coalesce(ext), size)
		var next uint64
		phys := make(map[uint64]bool)
		for _, s := range segs {
			if s.Start != next {
				t.Fatalf("accepted a list with a gap: %v", ext)
			}
			for j := uint64(0); j < s.Length; j++ {
				if phys[s.Offset+j] {
					t.Fatalf("accepted aliasing extents: %v", ext)
				}
				phys[s.Offset+j] = true
			}
			next += s.Length
		}
		if next*SectorSize != size {
			t.Fatalf("accepted a list not covering the file: %v size %d", ext, size)
		}
		for _, e := range ext {
			if e.Flags&rejectedFlags != 0 || e.Physical%SectorSize != 0 {
				t.Fatalf("accepted %v", e)
			}
		}
	})
}

func testMap() *Map {
	ext := Coalesce([]Extent{
		{Logical: 0, Physical: 1 << 20, Length: 1 << 20, Flags: FlagUnwritten},
		{Logical: 1 << 20, Physical: 8 << 20, Length: 1 << 20, Flags: FlagUnwritten | FlagLast},
	})
	m := &Map{Path: "/d/cow", FSType: "ext4", Size: 2 << 20, BlockSize: 4096,
		Device:  Device{Major: 7, Minor: 0, Sectors: 1 << 15, Path: "/dev/loop0"},
		Extents: ext, RawExtents: 2}
	m.Segments = Segments(ext, m.Size)
	m.Fingerprint = Fingerprint(m.Device, m.Size, ext)
	return m
}

// TestFingerprintText pins the documented canonical text.
func TestFingerprintText(t *testing.T) {
	m := testMap()
	text := "cpinit-fiemap-v1\ndevice 7:0 sectors 32768\nsize 2097152\n" +
		"0 1048576 1048576 800\n1048576 8388608 1048576 800\n"
	want := fmt.Sprintf("%x", sha256.Sum256([]byte(text)))
	if m.Fingerprint != want {
		t.Errorf("fingerprint %s, want sha256 of the documented text %s", m.Fingerprint, want)
	}
}

func TestMapCheckAndJSON(t *testing.T) {
	m := testMap()
	if err := m.Check(); err != nil {
		t.Fatal(err)
	}
	if got, want := m.DMTable(), "0 2048 linear 7:0 2048\n2048 2048 linear 7:0 16384\n"; got != want {
		t.Errorf("DMTable = %q, want %q", got, want)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back Map
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if err := back.Check(); err != nil {
		t.Fatalf("JSON round trip: %v", err)
	}
	if back.Fingerprint != m.Fingerprint || back.DMTable() != m.DMTable() {
		t.Error("JSON round trip changed the map")
	}
	for _, s := range []string{`"segments"`, `"fingerprint"`, `"flags":2048`, `"flag_names":"UNWRITTEN"`, `"flag_names":"LAST|UNWRITTEN"`, `"major":7`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("JSON lacks %s: %s", s, b)
		}
	}

	for name, mut := range map[string]func(*Map){
		"segment changed":     func(m *Map) { m.Segments[1].Offset++ },
		"segment dropped":     func(m *Map) { m.Segments = m.Segments[:1] },
		"fingerprint changed": func(m *Map) { m.Fingerprint = strings.Repeat("0", 64) },
		"beyond device":       func(m *Map) { m.Device.Sectors = 16384 + 1000 },
		"extent hole":         func(m *Map) { m.Extents[1].Logical += 4096 },
		"device size zero":    func(m *Map) { m.Device.Sectors = 0 },
	} {
		m := testMap()
		mut(m)
		if err := m.Check(); err == nil {
			t.Errorf("%s: Check passed", name)
		}
	}

	other := Device{Major: 254, Minor: 1, Sectors: m.Device.Sectors}
	moved, err := m.OnDevice(other)
	if err != nil {
		t.Fatal(err)
	}
	if moved.Fingerprint == m.Fingerprint || moved.Device != other || !strings.Contains(moved.DMTable(), "linear 254:1 ") {
		t.Errorf("OnDevice: %+v", moved)
	}
	if err := m.SameLayout(moved); err != nil {
		t.Errorf("OnDevice changed the layout: %v", err)
	}
	if m.Device.Major != 7 {
		t.Error("OnDevice modified the original")
	}
	other.Sectors++
	if _, err := m.OnDevice(other); err == nil {
		t.Error("OnDevice accepted a device of another size")
	}

	o := testMap()
	o.Device.Minor = 9 // another view of the same partition
	if err := m.SameLayout(o); err != nil {
		t.Errorf("SameLayout across devices: %v", err)
	}
	o.Segments[0].Offset++
	if err := m.SameLayout(o); err == nil {
		t.Error("SameLayout missed a moved segment")
	}
	_ = fmt.Sprint(m.Extents[0])
}

func ExampleDMTable() {
	segs := Segments([]Extent{
		{Logical: 0, Physical: 1 << 20, Length: 64 << 10, Flags: FlagUnwritten},
		{Logical: 64 << 10, Physical: 8 << 20, Length: 64 << 10, Flags: FlagUnwritten | FlagLast},
	}, 128<<10)
	fmt.Print(DMTable(segs, 254, 0))
	// Output:
	// 0 128 linear 254:0 2048
	// 128 128 linear 254:0 16384
}

func TestCheckPinned(t *testing.T) {
	for _, c := range []struct {
		fs                string
		immutable, pinned bool
		ok                bool
	}{
		{"ext4", true, false, true},
		{"ext4", false, false, false},
		{"f2fs", true, true, true},
		{"f2fs", true, false, false}, // immutable, but GC may move it
		{"f2fs", false, true, false}, // pinned, but writable through the fs
	} {
		m := &Map{FSType: c.fs, Immutable: c.immutable, F2FSPinned: c.pinned}
		if err := m.CheckPinned(); (err == nil) != c.ok {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

func TestHasF2FSFeature(t *testing.T) {
	// The format of fs/f2fs/sysfs.c features_show: names joined by ", ".
	const got = "extra_attr, inode_checksum, flexible_inline_xattr, inode_crtime, lost_found, sb_checksum, pin_file\n"
	if !hasF2FSFeature(got, "pin_file") || hasF2FSFeature(got, "pin") || hasF2FSFeature("encryption, compression", "pin_file") {
		t.Error("feature list misparsed")
	}
}
