package bootstate

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"strings"
)

// On-disk record, one per copy (see store.go for where copies live).
//
// Header, 64 bytes, little endian:
//
//	0..7   magic "CPINITMD"
//	8..9   format version (1)
//	10..11 header size (64)
//	12..15 flags (0; anything else is rejected, so a future writer that
//	       needs new semantics can set one and old readers refuse it)
//	16..23 generation (> 0)
//	24..27 payload length in bytes
//	28..31 CRC32C (Castagnoli) of header bytes 0..27 and 32..63 followed by
//	       the payload, i.e. of everything except this field
//	32..63 zero
//
// Payload:
//
//	0      state (State)
//	1      flags: bit 0 Active (the snapshot exists and its COW header was
//	       written by the kernel); other bits must be zero
//	2      reason (Reason)
//	3      counter mode (CounterMode)
//	4      tries left (native counter)
//	5      reserved, zero
//	6..7   boot attempts counted in checkpointing
//	8..9   merge attempts counted in rollback-pending
//	10     target slot length n (<= MaxSlotLen), then n bytes
//	..     COW path length (u16, <= MaxPathLen), then the path bytes
//	..     fingerprint, 32 bytes: SHA-256 of the map bytes below
//	..     map: device major u32, minor u32, device size in sectors u64,
//	       chunk size in sectors u32, segment count u32, then per segment
//	       physical start u64 and length u32, both in 512-byte sectors.
//
// Logical offsets are not stored: segments tile the COW file from sector 0
// in order, so each logical start is the sum of the lengths before it. The
// decoder checks every field (ranges, no overlap, inside the device,
// fingerprint) and rejects the record otherwise; it never panics.
const (
	recordMagic      = "CPINITMD"
	RecordVersion    = 1
	recordHeaderSize = 64
	segmentSize      = 12
	mapFixedSize     = 4 + 4 + 8 + 4 + 4
	// MaxSlotLen bounds the target slot name ("_a", "a", or a native name).
	MaxSlotLen = 16
	// MaxPathLen is PATH_MAX.
	MaxPathLen = 4096
	// MaxSegments is the most extent segments a record can hold. AOSP
	// libfiemap caps file images at 50,000 extents; we allow more than
	// 200,000 (the floor) and size the store's copies for it.
	MaxSegments = 262144
	// MaxRecordSize is the largest encoded record: it fits in one copy.
	MaxRecordSize = recordHeaderSize + 11 + MaxSlotLen + 2 + MaxPathLen + sha256.Size + mapFixedSize + MaxSegments*segmentSize
	// maxSegmentSectors: a segment's length is stored in 32 bits.
	maxSegmentSectors = math.MaxUint32
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// State is the persisted FSM state. The names are fixed by DESIGN.md.
type State uint8

// States. Numeric values are on disk: never renumber.
const (
	StateFresh           State = 1
	StateCheckpointing   State = 2
	StateCommitted       State = 3
	StateRollbackPending State = 4
)

func (s State) String() string {
	switch s {
	case StateFresh:
		return "fresh"
	case StateCheckpointing:
		return "checkpointing"
	case StateCommitted:
		return "committed"
	case StateRollbackPending:
		return "rollback-pending"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// ParseState is the inverse of State.String.
func ParseState(s string) (State, bool) {
	for st := StateFresh; st <= StateRollbackPending; st++ {
		if st.String() == s {
			return st, true
		}
	}
	return 0, false
}

// Reason records why the current state was entered, for status output and
// for the decisions that differ by cause (committed after an overflow must
// be reported loudly; a rollback caused by a slot fallback is not an error
// of cpinit).
type Reason uint8

// Reasons. Numeric values are on disk: never renumber.
const (
	ReasonNone           Reason = 0
	ReasonCommit         Reason = 1  // new slot declared healthy
	ReasonOverflow       Reason = 2  // COW overflowed: snapshot Invalid, rollback impossible
	ReasonCancelled      Reason = 3  // abandoned before the snapshot existed: nothing to roll back
	ReasonAbort          Reason = 4  // operator asked for rollback (cpinit rollback / cpinit.abort=1)
	ReasonTriesExhausted Reason = 5  // boot counter ran out
	ReasonSlotFallback   Reason = 6  // bootloader booted another slot than the target
	ReasonAttemptCap     Reason = 7  // cpinit's own hard cap on counted boots
	ReasonMerged         Reason = 8  // rollback finished
	ReasonCleaned        Reason = 9  // commit cleanup finished
	ReasonOperator       Reason = 10 // an operator chose to keep the current data in recovery
	maxReason                   = ReasonOperator
)

var reasonNames = [...]string{"none", "commit", "overflow", "cancelled", "abort", "tries-exhausted", "slot-fallback", "attempt-cap", "merged", "cleaned", "operator"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// CounterMode says which boot counter guards the trial.
type CounterMode uint8

const (
	// CounterAndroid: the bootloader counts tries in misc bootloader_control
	// and falls back to the old slot; cpinit sees that as booted slot !=
	// target slot. cpinit still applies its own hard cap (MaxBootAttempts).
	CounterAndroid CounterMode = 1
	// CounterNative: no A/B bootloader counter; cpinit counts in the
	// record (TriesLeft), decrementing before each trial boot.
	CounterNative CounterMode = 2
	// CounterBootloader: a bootloader other than Android's misc counts
	// tries and falls back (U-Boot or GRUB environment, systemd-boot's
	// entry counters: the backend cpinit.bootloader= names, through
	// ABState). Handled as CounterAndroid is.
	CounterBootloader CounterMode = 3
)

// Bootloader reports whether the bootloader (not cpinit) counts the trial's
// tries and switches slots.
func (m CounterMode) Bootloader() bool { return m == CounterAndroid || m == CounterBootloader }

func (m CounterMode) String() string {
	switch m {
	case CounterAndroid:
		return "android"
	case CounterNative:
		return "native"
	case CounterBootloader:
		return "bootloader"
	}
	return fmt.Sprintf("counter(%d)", uint8(m))
}

// Segment maps Length sectors of the COW file starting at file sector
// Logical to device sector Physical of the userdata device. Units are
// 512-byte sectors, as in dm tables.
type Segment struct {
	Logical  uint64
	Physical uint64
	Length   uint64
}

// ExtentMap is the COW file geometry: where its blocks are on which device,
// and the snapshot chunk size used with it.
type ExtentMap struct {
	DevMajor    uint32
	DevMinor    uint32
	DevSectors  uint64 // size of the userdata device
	ChunkSector uint32 // dm-snapshot chunk size, sectors
	Segments    []Segment
}

// Sectors is the COW device size: the sum of segment lengths.
func (m *ExtentMap) Sectors() uint64 {
	var n uint64
	for _, s := range m.Segments {
		n += s.Length
	}
	return n
}

// Record is the persisted state. The zero value is not valid; use
// NewFreshRecord.
type Record struct {
	State       State
	Active      bool // checkpointing/rollback-pending: the snapshot was created
	Reason      Reason
	Counter     CounterMode
	TriesLeft   uint8  // native counter: trial boots still allowed
	Attempts    uint16 // trial boots counted (both counter modes)
	MergeTries  uint16 // boots that attempted the merge
	TargetSlot  string // slot being tried; "" when the system has no slots
	COWPath     string // in fresh: a leftover COW file that may be deleted
	Map         ExtentMap
	Fingerprint [32]byte // SHA-256 of the encoded map (Map.Fingerprint)
	Generation  uint64   // set by the store; ignored by Encode's caller
}

// NewFreshRecord is the record of a device with no checkpoint.
func NewFreshRecord() Record {
	r := Record{State: StateFresh, Counter: CounterNative}
	r.Fingerprint = r.Map.Fingerprint()
	return r
}

// Errors from DecodeRecord, wrapped in a *RecordError.
var (
	ErrRecordShort     = errors.New("record truncated")
	ErrRecordMagic     = errors.New("bad record magic")
	ErrRecordVersion   = errors.New("unsupported record version")
	ErrRecordCRC       = errors.New("record CRC32C mismatch")
	ErrRecordMalformed = errors.New("malformed record")
	ErrRecordTooLarge  = errors.New("record too large")
)

// RecordError says what is wrong with an encoded record.
type RecordError struct {
	Err    error
	Detail string
}

func (e *RecordError) Error() string { return fmt.Sprintf("bootstate: %v: %s", e.Err, e.Detail) }
func (e *RecordError) Unwrap() error { return e.Err }

func malformed(format string, a ...any) error {
	return &RecordError{ErrRecordMalformed, fmt.Sprintf(format, a...)}
}

// appendMap is the canonical map encoding, used both on disk and as the
// fingerprint input, so the fingerprint covers exactly what is stored.
func (m *ExtentMap) appendMap(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, m.DevMajor)
	b = binary.LittleEndian.AppendUint32(b, m.DevMinor)
	b = binary.LittleEndian.AppendUint64(b, m.DevSectors)
	b = binary.LittleEndian.AppendUint32(b, m.ChunkSector)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Segments)))
	for _, s := range m.Segments {
		b = binary.LittleEndian.AppendUint64(b, s.Physical)
		b = binary.LittleEndian.AppendUint32(b, uint32(s.Length))
	}
	return b
}

// Fingerprint is SHA-256 over a domain tag and the canonical map encoding.
// cmds recomputes it from a freshly taken FIEMAP list to verify the map
// before a merge.
func (m *ExtentMap) Fingerprint() [32]byte {
	h := sha256.New()
	h.Write([]byte("cpinit extent map v1\x00"))
	h.Write(m.appendMap(nil))
	var f [32]byte
	h.Sum(f[:0])
	return f
}

// Validate checks the map on its own: segments tile the file from 0, each is
// non-empty, fits in 32 bits, lies inside the device, and no two overlap on
// the device (two file ranges on the same blocks would make the snapshot
// overwrite its own saved chunks). An empty map is valid (fresh records).
func (m *ExtentMap) Validate() error {
	if len(m.Segments) > MaxSegments {
		return &RecordError{ErrRecordTooLarge, fmt.Sprintf("%d extent segments, at most %d fit in a record", len(m.Segments), MaxSegments)}
	}
	if len(m.Segments) == 0 {
		return nil
	}
	if m.ChunkSector == 0 || m.ChunkSector&(m.ChunkSector-1) != 0 {
		return malformed("chunk size %d sectors is not a power of two", m.ChunkSector)
	}
	if m.DevSectors == 0 {
		return malformed("device size is zero")
	}
	var logical uint64
	for i, s := range m.Segments {
		if s.Logical != logical {
			return malformed("segment %d starts at file sector %d, want %d (segments must tile the file in order)", i, s.Logical, logical)
		}
		if s.Length == 0 || s.Length > maxSegmentSectors {
			return malformed("segment %d length %d sectors out of range", i, s.Length)
		}
		if s.Physical > m.DevSectors || s.Length > m.DevSectors-s.Physical {
			return malformed("segment %d (sectors %d+%d) ends past the device (%d sectors)", i, s.Physical, s.Length, m.DevSectors)
		}
		logical += s.Length
	}
	byPhys := slices.Clone(m.Segments)
	slices.SortFunc(byPhys, func(a, b Segment) int {
		switch {
		case a.Physical < b.Physical:
			return -1
		case a.Physical > b.Physical:
			return 1
		}
		return 0
	})
	for i := 1; i < len(byPhys); i++ {
		p := byPhys[i-1]
		if p.Physical+p.Length > byPhys[i].Physical {
			return malformed("segments overlap on the device at sector %d", byPhys[i].Physical)
		}
	}
	if logical < uint64(m.ChunkSector)*2 {
		// dm-snapshot needs a header chunk plus at least one metadata chunk.
		return malformed("COW of %d sectors is smaller than two %d-sector chunks", logical, m.ChunkSector)
	}
	return nil
}

// validate checks the record's fields against each other.
func (r *Record) validate() error {
	switch r.State {
	case StateFresh, StateCheckpointing, StateCommitted, StateRollbackPending:
	default:
		return malformed("unknown state %d", uint8(r.State))
	}
	if r.Reason > maxReason {
		return malformed("unknown reason %d", uint8(r.Reason))
	}
	if !r.Counter.Bootloader() && r.Counter != CounterNative {
		return malformed("unknown counter mode %d", uint8(r.Counter))
	}
	if len(r.TargetSlot) > MaxSlotLen || !printable(r.TargetSlot) {
		return malformed("target slot %q: at most %d printable bytes", r.TargetSlot, MaxSlotLen)
	}
	if len(r.COWPath) > MaxPathLen || !printable(r.COWPath) || (r.COWPath != "" && !strings.HasPrefix(r.COWPath, "/")) {
		return malformed("COW path %q: must be absolute, printable, at most %d bytes", r.COWPath, MaxPathLen)
	}
	if err := r.Map.Validate(); err != nil {
		return err
	}
	if r.Fingerprint != r.Map.Fingerprint() {
		return malformed("fingerprint does not match the extent map")
	}
	needMap := r.State == StateCheckpointing || r.State == StateRollbackPending
	if needMap && (len(r.Map.Segments) == 0 || r.COWPath == "") {
		return malformed("state %v without an extent map and COW path", r.State)
	}
	if r.State == StateCommitted && r.COWPath == "" {
		// Cleanup must know which file to delete.
		return malformed("state committed without a COW path")
	}
	if r.State == StateRollbackPending && !r.Active {
		return malformed("rollback-pending without an active snapshot")
	}
	if (r.State == StateFresh || r.State == StateCommitted) && r.Active {
		return malformed("state %v marked active", r.State)
	}
	return nil
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// EncodeRecord returns the on-disk bytes of r with the given generation.
// It refuses invalid records, so what is written always decodes.
func EncodeRecord(r *Record, generation uint64) ([]byte, error) {
	if generation == 0 {
		return nil, fmt.Errorf("bootstate: encode record: generation 0 is reserved for blank copies")
	}
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("bootstate: encode record: %w", err)
	}
	size := recordHeaderSize + 11 + len(r.TargetSlot) + 2 + len(r.COWPath) + sha256.Size + mapFixedSize + len(r.Map.Segments)*segmentSize
	b := make([]byte, recordHeaderSize, size)
	copy(b, recordMagic)
	binary.LittleEndian.PutUint16(b[8:], RecordVersion)
	binary.LittleEndian.PutUint16(b[10:], recordHeaderSize)
	binary.LittleEndian.PutUint64(b[16:], generation)
	var flags byte
	if r.Active {
		flags |= 1
	}
	b = append(b, byte(r.State), flags, byte(r.Reason), byte(r.Counter), r.TriesLeft, 0)
	b = binary.LittleEndian.AppendUint16(b, r.Attempts)
	b = binary.LittleEndian.AppendUint16(b, r.MergeTries)
	b = append(b, byte(len(r.TargetSlot)))
	b = append(b, r.TargetSlot...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(r.COWPath)))
	b = append(b, r.COWPath...)
	b = append(b, r.Fingerprint[:]...)
	b = r.Map.appendMap(b)
	if len(b) != size || size > MaxRecordSize {
		return nil, fmt.Errorf("bootstate: encode record: internal size error %d/%d", len(b), size)
	}
	binary.LittleEndian.PutUint32(b[24:], uint32(size-recordHeaderSize))
	binary.LittleEndian.PutUint32(b[28:], recordCRC(b))
	return b, nil
}

func recordCRC(b []byte) uint32 {
	c := crc32.Update(0, castagnoli, b[:28])
	c = crc32.Update(c, castagnoli, b[32:])
	return c
}

// RecordLen reads the total encoded length (header + payload) from a
// header, so a reader knows how much to read. It validates magic, version
// and bounds only; DecodeRecord does the rest.
func RecordLen(hdr []byte) (int, error) {
	if len(hdr) < recordHeaderSize {
		return 0, &RecordError{ErrRecordShort, fmt.Sprintf("header has %d bytes, need %d", len(hdr), recordHeaderSize)}
	}
	if string(hdr[:8]) != recordMagic {
		return 0, &RecordError{ErrRecordMagic, fmt.Sprintf("%q", hdr[:8])}
	}
	if v := binary.LittleEndian.Uint16(hdr[8:]); v != RecordVersion {
		return 0, &RecordError{ErrRecordVersion, fmt.Sprintf("version %d, this cpinit reads %d", v, RecordVersion)}
	}
	if hs := binary.LittleEndian.Uint16(hdr[10:]); hs != recordHeaderSize {
		return 0, malformed("header size %d, want %d", hs, recordHeaderSize)
	}
	n := uint64(binary.LittleEndian.Uint32(hdr[24:])) + recordHeaderSize
	if n > MaxRecordSize {
		return 0, &RecordError{ErrRecordTooLarge, fmt.Sprintf("payload claims %d bytes, at most %d", n, MaxRecordSize)}
	}
	return int(n), nil
}

// DecodeRecord parses one copy. b may be longer than the record (a whole
// copy area); bytes after the record are ignored. Any defect gives a
// *RecordError and no record.
func DecodeRecord(b []byte) (*Record, error) {
	n, err := RecordLen(b)
	if err != nil {
		return nil, err
	}
	if len(b) < n {
		return nil, &RecordError{ErrRecordShort, fmt.Sprintf("have %d bytes, header says %d", len(b), n)}
	}
	b = b[:n]
	if got, want := binary.LittleEndian.Uint32(b[28:]), recordCRC(b); got != want {
		return nil, &RecordError{ErrRecordCRC, fmt.Sprintf("stored %#08x, computed %#08x", got, want)}
	}
	if f := binary.LittleEndian.Uint32(b[12:]); f != 0 {
		return nil, malformed("unknown header flags %#x", f)
	}
	if !bytes.Equal(b[32:64], make([]byte, 32)) {
		return nil, malformed("reserved header bytes are not zero")
	}
	r := &Record{Generation: binary.LittleEndian.Uint64(b[16:])}
	if r.Generation == 0 {
		return nil, malformed("generation 0")
	}
	d := decoder{b: b[recordHeaderSize:]}
	r.State = State(d.u8())
	flags := d.u8()
	r.Active = flags&1 != 0
	r.Reason = Reason(d.u8())
	r.Counter = CounterMode(d.u8())
	r.TriesLeft = d.u8()
	if d.u8() != 0 || flags&^1 != 0 {
		return nil, malformed("reserved payload bits set")
	}
	r.Attempts = d.u16()
	r.MergeTries = d.u16()
	r.TargetSlot = string(d.bytes(int(d.u8())))
	r.COWPath = string(d.bytes(int(d.u16())))
	copy(r.Fingerprint[:], d.bytes(sha256.Size))
	r.Map.DevMajor = d.u32()
	r.Map.DevMinor = d.u32()
	r.Map.DevSectors = d.u64()
	r.Map.ChunkSector = d.u32()
	count := d.u32()
	if d.err == nil && (count > MaxSegments || uint64(count)*segmentSize != uint64(len(d.b))) {
		return nil, malformed("segment count %d does not match the %d bytes left", count, len(d.b))
	}
	if count > 0 && d.err == nil {
		r.Map.Segments = make([]Segment, count)
		var logical uint64
		for i := range r.Map.Segments {
			s := &r.Map.Segments[i]
			s.Logical = logical
			s.Physical = d.u64()
			s.Length = uint64(d.u32())
			logical += s.Length
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, malformed("%d trailing bytes", len(d.b))
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// decoder reads little-endian fields and remembers the first shortfall, so
// the parse reads straight through and checks once.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.err = &RecordError{ErrRecordShort, fmt.Sprintf("field needs %d bytes, %d left", n, len(d.b))}
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8 {
	if v := d.bytes(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if v := d.bytes(2); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.bytes(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.bytes(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}
