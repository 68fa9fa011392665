package bootstate

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// docs/formats.md is hand-written except for the blocks between
// "<!-- BEGIN GENERATED: name -->" and "<!-- END GENERATED: name -->",
// which this file renders with the package's real encoders (the worked
// examples as hex dumps, the layout constants). TestFormatsDoc fails when a
// block is stale; -update-formats-doc rewrites the blocks in place.
//
// The hand-written field tables and the store case table are checked, not
// generated: each field table (after "<!-- fields: NAME -->") is read row by
// row, the bytes (or bits) at the documented offset and size are taken from
// the encoded example and compared with the value the test expects for that
// field; the rows must tile the whole encoding with no gap or overlap. The
// store table (after "<!-- cases: store-load -->") is replayed on an
// in-memory store.

//go:generate go test -run ^TestFormatsDoc$ -update-formats-doc .

var updateFormatsDoc = flag.Bool("update-formats-doc", false, "rewrite the generated blocks of ../../docs/formats.md")

const formatsDocPath = "../../docs/formats.md"

// bufDev is an in-memory Device that logs the offset of every write.
type bufDev struct {
	b      []byte
	writes []int64
}

func (d *bufDev) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(d.b)) {
		clear(p)
		return 0, io.EOF
	}
	n := copy(p, d.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d *bufDev) WriteAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > int64(len(d.b)) {
		d.b = append(d.b, make([]byte, end-int64(len(d.b)))...)
	}
	d.writes = append(d.writes, off)
	return copy(d.b[off:], p), nil
}

func (d *bufDev) Sync() error { return nil }

// exampleMap is the COW geometry of the record example: a 16 MiB COW file
// in two extents on a 1 GiB userdata partition 254:0, 4 KiB chunks.
func exampleMap() ExtentMap {
	return ExtentMap{DevMajor: 254, DevMinor: 0, DevSectors: 2 << 20, ChunkSector: 8,
		Segments: []Segment{
			{Logical: 0, Physical: 264192, Length: 24576},
			{Logical: 24576, Physical: 1048576, Length: 8192},
		}}
}

// exampleRecord runs the steps of a real update on a store (first boot
// formats it; begin saves prepare and begin; the first trial boot saves
// boot-attempt and activate) and returns the newest record and its bytes as
// stored.
func exampleRecord(t testing.TB) (*Record, []byte) {
	t.Helper()
	d := &bufDev{}
	s := NewStore(d, "example")
	fresh := NewFreshRecord()
	if _, err := s.Format(&fresh); err != nil {
		t.Fatal(err)
	}
	r := fresh
	for _, step := range []Step{
		{Event: EventPrepare, Path: "/.cpinit/cow"},
		{Event: EventBegin, Begin: &BeginArgs{TargetSlot: "_b", COWPath: "/.cpinit/cow", Map: exampleMap(), Counter: CounterAndroid}},
		{Event: EventBootAttempt},
		{Event: EventActivate},
	} {
		r = mustApply(t, r, step)
		if _, err := s.Save(&r); err != nil {
			t.Fatal(err)
		}
	}
	rec, _, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	off := copyOffsets[0]
	if binary.LittleEndian.Uint64(d.b[copyOffsets[1]+16:]) == rec.Generation {
		off = copyOffsets[1]
	}
	n, err := RecordLen(d.b[off:])
	if err != nil {
		t.Fatal(err)
	}
	return rec, d.b[off : off+int64(n)]
}

// exampleBootControl is misc on a two-slot device running slot a after
// `cpinit begin` made slot b active (SetUnbootable, SetActive, as cmdBegin
// does), and the bootloader then picked slot b three times (each pick of a
// slot not yet successful takes one try: 6 → 3).
func exampleBootControl(t testing.TB) (*BootControl, []byte) {
	t.Helper()
	c, err := NewBootControl(2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetUnbootable(1); err != nil {
		t.Fatal(err)
	}
	if err := c.SetActive(1, 0); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := c.BootloaderSelect(); got != 1 {
			t.Fatalf("bootloader picked slot %d, want 1", got)
		}
	}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	misc := &bufDev{b: make([]byte, 4096)}
	if err := WriteBootControl(misc, "misc", c); err != nil {
		t.Fatal(err)
	}
	got, err := ReadBootControl(misc, "misc")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(misc.b[BootControlOffset:BootControlOffset+BootControlSize], b) {
		t.Fatal("WriteBootControl did not write Encode's bytes at BootControlOffset")
	}
	return got, b
}

func describeRecord(r *Record) string {
	var b strings.Builder
	fmt.Fprintf(&b, "state %s (%d), active %v, reason %s, counter %s (%d), tries left %d,\n",
		r.State, r.State, r.Active, r.Reason, r.Counter, r.Counter, r.TriesLeft)
	fmt.Fprintf(&b, "attempts %d, merge attempts %d, target slot %q, COW path %q,\n",
		r.Attempts, r.MergeTries, r.TargetSlot, r.COWPath)
	fmt.Fprintf(&b, "device %d:%d of %d sectors, chunk %d sectors, generation %d,\n",
		r.Map.DevMajor, r.Map.DevMinor, r.Map.DevSectors, r.Map.ChunkSector, r.Generation)
	for i, s := range r.Map.Segments {
		fmt.Fprintf(&b, "segment %d: file sectors %d+%d at device sector %d\n", i, s.Logical, s.Length, s.Physical)
	}
	return b.String()
}

func describeBootControl(c *BootControl) string {
	var b strings.Builder
	fmt.Fprintf(&b, "slot_suffix %q, magic %#08x, version %d, nb_slot %d, recovery_tries_remaining %d, merge_status %d,\n",
		c.Suffix(), c.Magic, c.Version, c.NbSlot, c.RecoveryTriesRemaining, c.MergeStatus)
	for i := 0; i < int(c.NbSlot); i++ {
		s := c.Slots[i]
		fmt.Fprintf(&b, "slot %s: priority %d, tries_remaining %d, successful_boot %v, verity_corrupted %v\n",
			SlotSuffixes[i], s.Priority, s.TriesRemaining, s.SuccessfulBoot, s.VerityCorrupted)
	}
	fmt.Fprintf(&b, "crc32_le %#08x\n", c.CRC32LE)
	return b.String()
}

// formatsBlocks renders every generated block of docs/formats.md.
func formatsBlocks(t testing.TB) map[string]string {
	rec, rb := exampleRecord(t)
	bc, cb := exampleBootControl(t)
	consts := fmt.Sprintf(`| constant | value |
|---|---|
| `+"`CopyStride`"+` (copy B offset, copy area size) | %d (%d MiB) |
| `+"`StoreSize`"+` (smallest store device) | %d (%d MiB) |
| `+"`MaxRecordSize`"+` | %d |
| `+"`MaxSegments`"+` | %d |
| `+"`MaxSlotLen`"+` / `+"`MaxPathLen`"+` | %d / %d |
| `+"`RecordVersion`"+` | %d |
| `+"`BootControlOffset`"+` / `+"`BootControlSize`"+` | %d / %d |
| `+"`BootControlMagic`"+` / `+"`BootControlVersion`"+` | %#08x / %d |
`, CopyStride, CopyStride>>20, StoreSize, StoreSize>>20, MaxRecordSize, MaxSegments,
		MaxSlotLen, MaxPathLen, RecordVersion, BootControlOffset, BootControlSize, BootControlMagic, BootControlVersion)
	return map[string]string{
		"store-constants": consts,
		"record-example":  "```\n" + describeRecord(rec) + "\n" + hexDump(rb, 0) + "```\n",
		"bootctl-example": "```\n" + describeBootControl(bc) + "\n" + hexDump(cb, BootControlOffset) + "```\n",
	}
}

// hexDump is hex.Dump (the format of `hexdump -C`) with offsets counted
// from base, so a dump shows where the bytes sit on the device.
func hexDump(b []byte, base int) string {
	var out strings.Builder
	for i := 0; i < len(b); i += 16 {
		line := hex.Dump(b[i:min(i+16, len(b))])
		line = strings.TrimSuffix(line, "\n")
		// hex.Dump numbers a lone line 00000000 and adds a final
		// offset line only for full blocks; keep the first line.
		line, _, _ = strings.Cut(line, "\n")
		fmt.Fprintf(&out, "%08x%s\n", base+i, line[8:])
	}
	return out.String()
}

var generatedRE = regexp.MustCompile(`(?s)(<!-- BEGIN GENERATED: ([a-z0-9-]+) -->\n)(.*?)(<!-- END GENERATED: ([a-z0-9-]+) -->)`)

// replaceGenerated returns doc with every generated block set to blocks'
// content, and the names of blocks whose content differed. Unknown or
// missing blocks are errors.
func replaceGenerated(doc string, blocks map[string]string) (string, []string, error) {
	var stale []string
	seen := map[string]bool{}
	var err error
	out := generatedRE.ReplaceAllStringFunc(doc, func(m string) string {
		g := generatedRE.FindStringSubmatch(m)
		name := g[2]
		if g[5] != name {
			err = fmt.Errorf("generated block %q ends with %q", name, g[5])
			return m
		}
		want, ok := blocks[name]
		if !ok {
			err = fmt.Errorf("unknown generated block %q", name)
			return m
		}
		seen[name] = true
		if g[3] != want {
			stale = append(stale, name)
		}
		return g[1] + want + g[4]
	})
	for name := range blocks {
		if !seen[name] && err == nil {
			err = fmt.Errorf("generated block %q missing", name)
		}
	}
	slices.Sort(stale)
	return out, stale, err
}

func readFormatsDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(formatsDocPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFormatsDoc(t *testing.T) {
	doc := readFormatsDoc(t)
	out, stale, err := replaceGenerated(doc, formatsBlocks(t))
	if err != nil {
		t.Fatalf("%s: %v", formatsDocPath, err)
	}
	if *updateFormatsDoc {
		if out != doc {
			if err := os.WriteFile(formatsDocPath, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	if len(stale) > 0 {
		t.Fatalf("%s: generated blocks %v are stale: run go generate ./pkg/bootstate", formatsDocPath, stale)
	}
}

// docRow is one row of a field table.
type docRow struct {
	line                    int
	offset, size, typ, name string
}

// fieldTable returns the rows of the table that follows "<!-- fields: name -->".
func fieldTable(t *testing.T, doc, name string) []docRow {
	t.Helper()
	lines := strings.Split(doc, "\n")
	marker := "<!-- fields: " + name + " -->"
	i := slices.Index(lines, marker)
	if i < 0 {
		t.Fatalf("%s: no %q", formatsDocPath, marker)
	}
	var rows []docRow
	for j := i + 1; j < len(lines); j++ {
		l := strings.TrimSpace(lines[j])
		if l == "" && len(rows) == 0 {
			continue
		}
		if !strings.HasPrefix(l, "|") {
			break
		}
		cells := strings.Split(strings.Trim(l, "|"), "|")
		for k := range cells {
			cells[k] = strings.TrimSpace(cells[k])
		}
		if len(cells) < 4 || cells[0] == "offset" || strings.HasPrefix(cells[0], "--") {
			continue
		}
		f := regexp.MustCompile("^`([^`]+)`").FindStringSubmatch(cells[3])
		if f == nil {
			t.Fatalf("%s:%d: field cell %q does not start with a `name`", formatsDocPath, j+1, cells[3])
		}
		rows = append(rows, docRow{line: j + 1, offset: cells[0], size: cells[1], typ: cells[2], name: f[1]})
	}
	if len(rows) == 0 {
		t.Fatalf("%s: empty table after %q", formatsDocPath, marker)
	}
	return rows
}

// evalOffset evaluates "A", "A+n", "A+n+p+12i" and the like, where the
// letters are variables in vars (a factor may precede a variable: "12i").
func evalOffset(expr string, vars map[string]int) (int, error) {
	total := 0
	for _, term := range strings.Split(expr, "+") {
		term = strings.TrimSpace(term)
		k := strings.IndexFunc(term, func(r rune) bool { return r < '0' || r > '9' })
		if k < 0 {
			v, err := strconv.Atoi(term)
			if err != nil {
				return 0, err
			}
			total += v
			continue
		}
		factor := 1
		if k > 0 {
			factor, _ = strconv.Atoi(term[:k])
		}
		v, ok := vars[term[k:]]
		if !ok {
			return 0, fmt.Errorf("unknown variable %q in %q", term[k:], expr)
		}
		total += factor * v
	}
	return total, nil
}

// typeSize is the size in bytes a fixed-size type implies, or -1.
func typeSize(typ string) int {
	switch typ {
	case "u8":
		return 1
	case "u16", "u16le":
		return 2
	case "u32", "u32le":
		return 4
	case "u64":
		return 8
	}
	return -1
}

// expectBytes renders a field's expected value in the documented type.
func expectBytes(typ string, size int, v any) ([]byte, error) {
	switch v := v.(type) {
	case uint64:
		if typeSize(typ) != size {
			return nil, fmt.Errorf("type %s does not have size %d", typ, size)
		}
		b := make([]byte, 8)
		binary.LittleEndian.PutUint64(b, v)
		if v>>(8*size) != 0 && size < 8 {
			return nil, fmt.Errorf("value %d does not fit in %s", v, typ)
		}
		return b[:size], nil
	case string:
		return []byte(v), nil
	case []byte:
		return v, nil
	}
	return nil, fmt.Errorf("bad expectation %T", v)
}

// checkByteTable checks a byte-granular field table against enc: each row's
// bytes equal the expectation and the rows tile enc exactly. vars gives
// the variable-length sizes; rows whose offset uses "i" are checked for
// each i in 0..count-1, with want[name] a func(i) value.
func checkByteTable(t *testing.T, table string, rows []docRow, enc []byte, vars map[string]int, count int, want map[string]any) {
	t.Helper()
	type span struct {
		start, end int
		name       string
	}
	var spans []span
	documented := map[string]bool{}
	for _, r := range rows {
		documented[r.name] = true
		w, ok := want[r.name]
		if !ok {
			t.Errorf("%s:%d: %s field %q is not known to the test", formatsDocPath, r.line, table, r.name)
			continue
		}
		n := 1
		if strings.Contains(r.offset, "i") {
			n = count
		}
		for i := range n {
			v := map[string]int{"i": i}
			for k, x := range vars {
				v[k] = x
			}
			off, err := evalOffset(r.offset, v)
			if err != nil {
				t.Errorf("%s:%d: offset: %v", formatsDocPath, r.line, err)
				continue
			}
			size, err := evalOffset(r.size, v)
			if err != nil {
				t.Errorf("%s:%d: size: %v", formatsDocPath, r.line, err)
				continue
			}
			if off+size > len(enc) {
				t.Errorf("%s:%d: %s %s at %d+%d is past the end (%d bytes)", formatsDocPath, r.line, table, r.name, off, size, len(enc))
				continue
			}
			wv := w
			if f, ok := w.(func(int) any); ok {
				wv = f(i)
			}
			wb, err := expectBytes(r.typ, size, wv)
			if err != nil {
				t.Errorf("%s:%d: %s %s: %v", formatsDocPath, r.line, table, r.name, err)
				continue
			}
			if got := enc[off : off+size]; !bytes.Equal(got, wb) {
				t.Errorf("%s:%d: %s %s (i=%d) at offset %d: encoder wrote % x, the doc's layout wants % x", formatsDocPath, r.line, table, r.name, i, off, got, wb)
			}
			spans = append(spans, span{off, off + size, r.name})
		}
	}
	for name := range want {
		if !documented[name] {
			t.Errorf("%s: %s field %q is not documented", formatsDocPath, table, name)
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return a.start - b.start })
	pos := 0
	for _, s := range spans {
		if s.start != pos {
			t.Errorf("%s: %s: %s starts at %d, the previous field ends at %d", formatsDocPath, table, s.name, s.start, pos)
		}
		pos = s.end
	}
	if pos != len(enc) {
		t.Errorf("%s: %s: fields end at %d, the encoding has %d bytes", formatsDocPath, table, pos, len(enc))
	}
}

func TestFormatsDocRecordLayout(t *testing.T) {
	doc := readFormatsDoc(t)
	r, enc := exampleRecord(t)
	n, p, k := len(r.TargetSlot), len(r.COWPath), len(r.Map.Segments)
	mapBytes := r.Map.appendMap(nil)
	castagnoliCRC := crc32.Checksum(slices.Concat(enc[:28], enc[32:]), crc32.MakeTable(crc32.Castagnoli))
	u := func(v any) any {
		switch v := v.(type) {
		case uint8:
			return uint64(v)
		case uint16:
			return uint64(v)
		case uint32:
			return uint64(v)
		case uint64:
			return v
		case int:
			return uint64(v)
		}
		panic(v)
	}
	want := map[string]any{
		"magic":        "CPINITMD",
		"version":      u(1),
		"header_size":  u(64),
		"header_flags": u(0),
		"generation":   u(r.Generation),
		"payload_len":  u(len(enc) - 64),
		"crc32c":       u(castagnoliCRC),
		"reserved":     make([]byte, 32),
		"state":        u(uint8(StateCheckpointing)),
		"flags":        u(1), // Active
		"reason":       u(uint8(r.Reason)),
		"counter":      u(uint8(CounterAndroid)),
		"tries_left":   u(r.TriesLeft),
		"reserved5":    u(0),
		"attempts":     u(r.Attempts),
		"merge_tries":  u(r.MergeTries),
		"slot_len":     u(n),
		"target_slot":  r.TargetSlot,
		"path_len":     u(p),
		"cow_path":     r.COWPath,
		"fingerprint":  r.Fingerprint[:],
		"dev_major":    u(r.Map.DevMajor),
		"dev_minor":    u(r.Map.DevMinor),
		"dev_sectors":  u(r.Map.DevSectors),
		"chunk":        u(r.Map.ChunkSector),
		"seg_count":    u(k),
		"seg_physical": func(i int) any { return u(r.Map.Segments[i].Physical) },
		"seg_length":   func(i int) any { return u(r.Map.Segments[i].Length) },
	}
	checkByteTable(t, "record", fieldTable(t, doc, "record"), enc, map[string]int{"n": n, "p": p}, k, want)

	// The fingerprint is documented as SHA-256 over a tag and the map bytes
	// as they are stored: check the stored map is those bytes.
	if mapStart := 109 + n + p; !bytes.Equal(enc[mapStart:], mapBytes) {
		t.Errorf("the stored map differs from appendMap's encoding")
	}
	if sha256.Sum256(slices.Concat([]byte("cpinit extent map v1\x00"), mapBytes)) != r.Fingerprint {
		t.Errorf("the fingerprint is not SHA-256 of the domain tag and the stored map bytes")
	}
	if !strings.Contains(doc, "`\"cpinit extent map v1\\x00\"`") {
		t.Errorf("%s does not name the fingerprint's domain tag", formatsDocPath)
	}
}

// bitRow is a bootloader_control field: a bit position and width.
func bitSpan(r docRow, base int) (pos, width int, err error) {
	byteOff, bitOff := r.offset, "0"
	if a, b, ok := strings.Cut(r.offset, "."); ok {
		byteOff, bitOff = a, b
	}
	bo, err1 := strconv.Atoi(byteOff)
	bi, err2 := strconv.Atoi(bitOff)
	if err := errors.Join(err1, err2); err != nil || bi > 7 {
		return 0, 0, fmt.Errorf("offset %q: want BYTE or BYTE.BIT", r.offset)
	}
	if s, ok := strings.CutSuffix(r.size, " bits"); ok {
		width, err = strconv.Atoi(s)
	} else if s, ok := strings.CutSuffix(r.size, " bit"); ok {
		width, err = strconv.Atoi(s)
	} else {
		var n int
		n, err = strconv.Atoi(r.size)
		width = 8 * n
		if err == nil && bi != 0 {
			err = fmt.Errorf("a byte-sized field at a bit offset")
		}
	}
	return (base+bo)*8 + bi, width, err
}

// bitsAt reads width bits from bit position pos, least significant first,
// as GCC lays out bit-fields of a packed struct on a little-endian target.
func bitsAt(b []byte, pos, width int) []byte {
	out := make([]byte, (width+7)/8)
	for j := range width {
		q := pos + j
		if b[q/8]>>(q%8)&1 == 1 {
			out[j/8] |= 1 << (j % 8)
		}
	}
	return out
}

func checkBitTable(t *testing.T, table string, rows []docRow, enc []byte, base, bits int, want map[string]any) {
	t.Helper()
	documented := map[string]bool{}
	type span struct {
		start, end int
		name       string
	}
	var spans []span
	for _, r := range rows {
		documented[r.name] = true
		pos, width, err := bitSpan(r, base)
		if err != nil {
			t.Errorf("%s:%d: %v", formatsDocPath, r.line, err)
			continue
		}
		spans = append(spans, span{pos, pos + width, r.name})
		w, ok := want[r.name]
		if !ok {
			t.Errorf("%s:%d: %s field %q is not known to the test", formatsDocPath, r.line, table, r.name)
			continue
		}
		if w == nil {
			continue // checked in its own table
		}
		if pos+width > len(enc)*8 {
			t.Errorf("%s:%d: %s past the end", formatsDocPath, r.line, r.name)
			continue
		}
		var wb []byte
		switch v := w.(type) {
		case uint64:
			wb = make([]byte, 8)
			binary.LittleEndian.PutUint64(wb, v)
			wb = wb[:(width+7)/8]
		case []byte:
			wb = v
		}
		if got := bitsAt(enc, pos, width); !bytes.Equal(got, wb) {
			t.Errorf("%s:%d: %s %s at bit %d+%d: encoder wrote % x, the doc's layout wants % x", formatsDocPath, r.line, table, r.name, pos, width, got, wb)
		}
	}
	for name := range want {
		if !documented[name] {
			t.Errorf("%s: %s field %q is not documented", formatsDocPath, table, name)
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return a.start - b.start })
	p := base * 8
	for _, s := range spans {
		if s.start != p {
			t.Errorf("%s: %s: %s starts at bit %d, the previous field ends at bit %d", formatsDocPath, table, s.name, s.start, p)
		}
		p = s.end
	}
	if p != base*8+bits {
		t.Errorf("%s: %s: fields end at bit %d, want %d", formatsDocPath, table, p, base*8+bits)
	}
}

func TestFormatsDocBootControlLayout(t *testing.T) {
	doc := readFormatsDoc(t)
	c, enc := exampleBootControl(t)
	b2u := func(b bool) uint64 {
		if b {
			return 1
		}
		return 0
	}
	checkBitTable(t, "bootloader_control", fieldTable(t, doc, "bootloader_control"), enc, 0, BootControlSize*8, map[string]any{
		"slot_suffix":              c.SlotSuffix[:],
		"magic":                    uint64(BootControlMagic),
		"version":                  uint64(c.Version),
		"nb_slot":                  uint64(c.NbSlot),
		"recovery_tries_remaining": uint64(c.RecoveryTriesRemaining),
		"merge_status":             uint64(c.MergeStatus),
		"padding":                  uint64(0),
		"reserved0":                uint64(0),
		"slot_info":                nil,
		"reserved1":                make([]byte, 8),
		"crc32_le":                 uint64(crc32.ChecksumIEEE(enc[:28])),
	})
	slotRows := fieldTable(t, doc, "slot_metadata")
	for i, s := range c.Slots {
		checkBitTable(t, fmt.Sprintf("slot_info[%d]", i), slotRows, enc, 12+2*i, 16, map[string]any{
			"priority":         uint64(s.Priority),
			"tries_remaining":  uint64(s.TriesRemaining),
			"successful_boot":  b2u(s.SuccessfulBoot),
			"verity_corrupted": b2u(s.VerityCorrupted),
			"reserved":         uint64(s.Reserved),
		})
	}
	if !strings.Contains(doc, fmt.Sprintf("%d", BootControlOffset)) {
		t.Errorf("%s does not give the offset %d", formatsDocPath, BootControlOffset)
	}
}

// TestFormatsDocStoreCases replays the table of what Load and Save do for
// each combination of copy contents.
func TestFormatsDocStoreCases(t *testing.T) {
	doc := readFormatsDoc(t)
	lines := strings.Split(doc, "\n")
	const marker = "<!-- cases: store-load -->"
	i := slices.Index(lines, marker)
	if i < 0 {
		t.Fatalf("%s: no %q", formatsDocPath, marker)
	}
	base := activeRecordForDoc(t)
	other := base
	other.Attempts++
	cases := 0
	for j := i + 1; j < len(lines); j++ {
		l := strings.TrimSpace(lines[j])
		if l == "" && cases == 0 {
			continue
		}
		if !strings.HasPrefix(l, "|") {
			break
		}
		cells := strings.Split(strings.Trim(l, "|"), "|")
		for k := range cells {
			cells[k] = strings.TrimSpace(cells[k])
		}
		if len(cells) != 4 || cells[0] == "copy A" || strings.HasPrefix(cells[0], "--") {
			continue
		}
		cases++
		where := fmt.Sprintf("%s:%d", formatsDocPath, j+1)
		d := &bufDev{}
		for c, cell := range cells[:2] {
			off := copyOffsets[c]
			// "…, then data at N": also a non-zero byte N bytes into
			// the copy's area (written after the rest of the cell).
			var extra int64 = -1
			if rest, at, ok := strings.Cut(cell, ", then data at "); ok {
				n, err := strconv.ParseInt(at, 10, 64)
				if err != nil || n >= CopyStride {
					t.Fatalf("%s: %q: bad offset", where, cell)
				}
				cell, extra = rest, n
			}
			switch {
			case cell == "blank":
			case cell == "foreign":
				d.WriteAt([]byte("not a cpinit record"), off)
			case cell == "cut short":
				b, _ := EncodeRecord(&base, 1)
				d.WriteAt(b[:len(b)/2], off)
			case cell == "invalid":
				b, _ := EncodeRecord(&base, 3)
				b[len(b)-1] ^= 1 // CRC32C mismatch
				d.WriteAt(b, off)
			case strings.HasPrefix(cell, "valid, gen "):
				rest := strings.TrimPrefix(cell, "valid, gen ")
				g, note, _ := strings.Cut(rest, ", ")
				gen, err := strconv.ParseUint(g, 10, 64)
				if err != nil {
					t.Fatalf("%s: %q: %v", where, cell, err)
				}
				r := &base
				if note == "other contents" {
					r = &other
				} else if note != "" {
					t.Fatalf("%s: %q: unknown note %q", where, cell, note)
				}
				b, err := EncodeRecord(r, gen)
				if err != nil {
					t.Fatal(err)
				}
				d.WriteAt(b, off)
			default:
				t.Fatalf("%s: copy cell %q: want blank, foreign, cut short, invalid or valid, gen N[, other contents], each optionally followed by \", then data at N\"", where, cell)
			}
			if extra >= 0 {
				d.WriteAt([]byte{0x53}, off+extra)
			}
		}
		d.writes = nil
		s := NewStore(d, "doc")
		rec, info, err := s.Load()
		var got string
		switch {
		case errors.Is(err, ErrNoRecord):
			got = "`ErrNoRecord`"
		case errors.Is(err, ErrStoreCorrupt):
			got = "`ErrStoreCorrupt`"
		case errors.Is(err, ErrStoreAmbiguous):
			got = "`ErrStoreAmbiguous`"
		case errors.Is(err, ErrStoreForeign):
			got = "`ErrStoreForeign`"
		case err != nil:
			t.Fatalf("%s: Load: %v", where, err)
		default:
			got = "A"
			if info.Copies[1].Generation == rec.Generation && info.Copies[0].Generation != rec.Generation {
				got = "B"
			}
			got += fmt.Sprintf(", gen %d", rec.Generation)
			if info.Degraded {
				got += ", degraded"
			}
		}
		if first, _, _ := strings.Cut(cells[2], " ("); first != got {
			t.Errorf("%s: Load: doc says %q, the store gives %q", where, cells[2], got)
		}
		gen, err := s.Save(&base)
		if err != nil {
			got = "refused"
		} else {
			names := map[int64]string{copyOffsets[0]: "A", copyOffsets[1]: "B"}
			var order []string
			for _, w := range d.writes {
				order = append(order, names[w])
			}
			got = fmt.Sprintf("gen %d: %s", gen, strings.Join(order, " then "))
		}
		if cells[3] != got {
			t.Errorf("%s: Save: doc says %q, the store does %q", where, cells[3], got)
		}
	}
	if cases < 8 {
		t.Errorf("%s: store case table has %d rows", formatsDocPath, cases)
	}
}

func activeRecordForDoc(t *testing.T) Record {
	r, _ := exampleRecord(t)
	n := *r
	n.Generation = 0
	return n
}
