package bootstate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"
)

// Device is what the metadata store and the misc block need: positioned
// reads and writes and a flush that returns only once written data is
// durable. *os.File on a regular file or a block device satisfies it
// (fsync on a block device flushes the device's volatile cache).
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// Store layout: two copies of the record at fixed offsets, each in its own
// CopyStride-sized area, so copy B's offset never depends on a record's
// length or on the device size. A record is at most MaxRecordSize (about
// 3 MiB for MaxSegments) and CopyStride leaves headroom.
const (
	CopyStride = 4 << 20
	// StoreSize is the space the store needs on its device.
	StoreSize = 2 * CopyStride
)

var copyOffsets = [2]int64{0, CopyStride}

var copyNames = [2]string{"A", "B"}

// Store errors.
var (
	// ErrNoRecord: the store never held a durable record, so it may be
	// initialised. Decide treats this as fresh. That is the case only when
	// no copy is valid and either the whole StoreSize region is zero, or
	// copy B's area is zero and copy A holds the beginning of a record cut
	// short (see tornFirstWrite): anything else may be someone's data.
	ErrNoRecord = errors.New("metadata store is blank")
	// ErrStoreCorrupt: no copy is valid, and a copy's header carries the
	// record magic (give or take a few flipped bits): a damaged cpinit
	// store, which only Format may overwrite.
	ErrStoreCorrupt = errors.New("metadata store has no valid copy")
	// ErrStoreAmbiguous: both copies are valid with the same generation
	// but different contents; no writer of ours produces that.
	ErrStoreAmbiguous = errors.New("metadata store copies disagree")
	// ErrStoreForeign: no copy is valid and the store region holds data
	// that cpinit did not write: neither blank, nor a first write cut
	// short, nor a damaged record (no header carries the magic). The
	// device is most likely not the metadata store (a filesystem, another
	// tool's data, the wrong partition named); Save and Format refuse it.
	// Load wraps it in a *ForeignDataError saying what was found.
	ErrStoreForeign = errors.New("metadata store holds data cpinit did not write")
)

// ForeignDataError says where a store with ErrStoreForeign holds data: the
// device offset of the first non-zero byte of the store region and the
// bytes from there (at most foreignDataShown).
type ForeignDataError struct {
	Offset int64
	Data   []byte
}

func (e *ForeignDataError) Error() string {
	return fmt.Sprintf("%v: first non-zero bytes at offset %d: % x", ErrStoreForeign, e.Offset, e.Data)
}

func (e *ForeignDataError) Unwrap() error { return ErrStoreForeign }

const (
	// foreignDataShown is how many bytes a ForeignDataError quotes.
	foreignDataShown = 16
	// magicTolerance is how many bits of a header's magic may differ from
	// recordMagic for the copy to count as a damaged cpinit record rather
	// than foreign data. Media rot flips a few bits; 8 random bytes are
	// within 4 bits of the magic with probability about 4e-14.
	magicTolerance = 4
	// tornUnit is how far past a cut a device may leave junk instead of
	// the old contents: the rest of the logical sector being written,
	// which is at most 4 KiB.
	tornUnit = 4096
	// scanChunk is how much of the store a scan of a copy's area reads at
	// a time.
	scanChunk = 64 << 10
)

// CopyStatus describes one copy as last read.
type CopyStatus struct {
	// Blank: the copy's header is all zero, and, when no copy is valid
	// (the only time Load reads the areas whole), so is its area.
	Blank      bool
	Generation uint64 // 0 unless valid
	Err        error  // why it is invalid; nil if valid or blank
}

func (c CopyStatus) String() string {
	switch {
	case c.Blank:
		return "blank"
	case c.Err != nil:
		return "invalid: " + c.Err.Error()
	}
	return fmt.Sprintf("valid, generation %d", c.Generation)
}

// LoadInfo reports what Load saw, for status output and repair.
type LoadInfo struct {
	Copies [2]CopyStatus
	// Degraded is true when the chosen copy is the only valid one or the
	// other copy holds an older generation: the next Save repairs it.
	Degraded bool
}

// StoreError names the store and what each copy looked like.
type StoreError struct {
	Name   string
	Op     string
	Err    error
	Copies [2]CopyStatus
}

func (e *StoreError) Error() string {
	return fmt.Sprintf("bootstate: %s metadata store %s: %v (copy A: %v; copy B: %v)", e.Op, e.Name, e.Err, e.Copies[0], e.Copies[1])
}

func (e *StoreError) Unwrap() error { return e.Err }

// Store reads and writes the record on a Device.
type Store struct {
	dev  Device
	name string
}

// NewStore uses dev, which the caller keeps open; name is used in errors
// (the path or device node).
func NewStore(dev Device, name string) *Store { return &Store{dev: dev, name: name} }

// OpenStore opens path (a file or block device outside userdata, named by
// the cpinit.metadata kernel parameter) read-write. Close the returned file
// when done.
func OpenStore(path string) (*Store, *os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("bootstate: open metadata store: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("bootstate: open metadata store: %w", err)
	}
	if fi.Mode()&os.ModeDevice != 0 {
		// A block device cannot grow: refuse one too small for copy B now
		// rather than fail the first Save half-way.
		size, err := f.Seek(0, io.SeekEnd)
		if err == nil {
			err = checkStoreSize(path, size)
		}
		if err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	return NewStore(f, path), f, nil
}

func checkStoreSize(name string, size int64) error {
	if size < StoreSize {
		return fmt.Errorf("bootstate: metadata store %s has %d bytes, needs %d (two %d-byte copies)", name, size, StoreSize, CopyStride)
	}
	return nil
}

type loaded struct {
	recs   [2]*Record
	raw    [2][]byte
	hdr    [2][]byte // each copy's first recordHeaderSize bytes
	status [2]CopyStatus
}

// readAt reads len(p) bytes; bytes past the end of a file read as zero, so
// a short or empty file is a blank store rather than an error.
func (s *Store) readAt(p []byte, off int64) error {
	n, err := s.dev.ReadAt(p, off)
	if err == io.EOF || (err == nil && n == len(p)) {
		clear(p[n:])
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s at %d: %w", s.name, off, err)
	}
	return nil
}

func (s *Store) readCopies() (loaded, error) {
	var l loaded
	for i, off := range copyOffsets {
		hdr := make([]byte, recordHeaderSize)
		if err := s.readAt(hdr, off); err != nil {
			return l, err
		}
		l.hdr[i] = hdr
		if bytes.Equal(hdr, make([]byte, recordHeaderSize)) {
			l.status[i].Blank = true
			continue
		}
		n, err := RecordLen(hdr)
		if err != nil {
			l.status[i].Err = err
			continue
		}
		buf := make([]byte, n)
		if err := s.readAt(buf, off); err != nil {
			return l, err
		}
		r, err := DecodeRecord(buf)
		if err != nil {
			l.status[i].Err = err
			continue
		}
		l.recs[i], l.raw[i] = r, buf
		l.status[i].Generation = r.Generation
	}
	return l, nil
}

// pick returns the index of the valid copy to trust, -1 if no copy is
// valid (see classify), or ErrStoreAmbiguous.
func (l *loaded) pick(name string) (int, error) {
	a, b := l.recs[0], l.recs[1]
	switch {
	case a != nil && b != nil:
		switch {
		case a.Generation > b.Generation:
			return 0, nil
		case b.Generation > a.Generation:
			return 1, nil
		case bytes.Equal(l.raw[0], l.raw[1]):
			return 0, nil
		}
		return -1, &StoreError{name, "load", ErrStoreAmbiguous, l.status}
	case a != nil:
		return 0, nil
	case b != nil:
		return 1, nil
	}
	return -1, nil
}

// ours reports whether copy i's header carries the record magic, allowing
// for a few flipped bits: whatever else is wrong with it, cpinit wrote it.
func (l *loaded) ours(i int) bool {
	d := 0
	for j := range len(recordMagic) {
		d += bits.OnesCount8(l.hdr[i][j] ^ recordMagic[j])
	}
	return d <= magicTolerance
}

// classify says what a store with no valid copy holds: ErrNoRecord,
// ErrStoreCorrupt or a *ForeignDataError, in a *StoreError; any other
// error is a failed read, not a verdict. Unless both headers carry the
// magic it reads both copy areas whole (8 MiB): only a store without a
// valid record pays that, i.e. a blank one until its first boot formats
// it, and one that stops the boot anyway.
func (s *Store) classify(l *loaded) error {
	if l.ours(0) && l.ours(1) {
		return &StoreError{s.name, "load", ErrStoreCorrupt, l.status}
	}
	var first, last [2]int64
	for i, off := range copyOffsets {
		f, la, err := s.areaData(off)
		if err != nil {
			return fmt.Errorf("bootstate: scan metadata store: %w", err)
		}
		first[i], last[i] = f, la
		if l.status[i].Blank && f >= 0 {
			// Not blank after all: say where its data is.
			l.status[i] = CopyStatus{Err: fmt.Errorf("zero header, but non-zero bytes at offset %d", f)}
		}
	}
	var verdict error
	switch {
	case first[0] < 0 && first[1] < 0:
		verdict = ErrNoRecord
	case first[1] < 0 && tornFirstWrite(l.hdr[0], last[0]):
		// From a blank store, Save and Format write copy A first and
		// copy B only once A is flushed, and RunBoot acts on a record
		// only after Save returned, i.e. after both copies are complete.
		// So this is a first write torn inside copy A: no record was
		// ever durable, nothing was done on its strength, and the store
		// is as good as blank. (The mirror case, A blank and B invalid,
		// cannot come from our writes.)
		verdict = ErrNoRecord
	case l.ours(0) || l.ours(1):
		verdict = ErrStoreCorrupt
	default:
		at := first[0]
		if at < 0 {
			at = first[1]
		}
		data := make([]byte, min(foreignDataShown, StoreSize-at))
		if err := s.readAt(data, at); err != nil {
			return fmt.Errorf("bootstate: scan metadata store: %w", err)
		}
		verdict = &ForeignDataError{Offset: at, Data: data}
	}
	return &StoreError{s.name, "load", verdict, l.status}
}

// tornFirstWrite reports whether copy A, whose header is hdr and whose
// last non-zero byte is at offset last, holds what a first write cut short
// leaves behind (copy B's area being all zero): the beginning of a record,
// then zeros. A write lays down the record from its first byte, so that
// beginning is the record magic, or a prefix of it if the cut came within
// its first 8 bytes. After the cut a device may leave junk up to the end of
// the sector it was writing (tornUnit), never further, and never past the
// record. So nothing may be non-zero past tornUnit unless a complete
// header gives the record's length, and then not past that.
//
// A cut inside the magic that leaves junk after it is not recognised:
// such a store looks like anybody's data and is refused (ErrStoreForeign),
// as it must be to protect data that happens to be in one sector, such as
// a partition table.
func tornFirstWrite(hdr []byte, last int64) bool {
	if last < 0 {
		return false
	}
	n := min(int(last)+1, len(recordMagic))
	if string(hdr[:n]) != recordMagic[:n] {
		return false
	}
	end := int64(tornUnit)
	if rl, err := RecordLen(hdr); err == nil {
		end = max(end, int64(rl))
	}
	return last < end
}

// areaData returns the device offsets of the first and last non-zero
// byte of the copy area at off, -1 if it is all zero. Bytes past the end
// of a file read as zero.
func (s *Store) areaData(off int64) (first, last int64, err error) {
	first, last = -1, -1
	buf := make([]byte, scanChunk)
	var zero [scanChunk]byte
	for pos := off; pos < off+CopyStride; pos += scanChunk {
		n, err := s.dev.ReadAt(buf, pos)
		if err != nil && err != io.EOF {
			return -1, -1, fmt.Errorf("read %s at %d: %w", s.name, pos, err)
		}
		if b := buf[:n]; !bytes.Equal(b, zero[:n]) {
			i := slices.IndexFunc(b, func(c byte) bool { return c != 0 })
			if first < 0 {
				first = pos + int64(i)
			}
			for j := n - 1; j >= i; j-- {
				if b[j] != 0 {
					last = pos + int64(j)
					break
				}
			}
		}
		if n < len(buf) {
			break // end of the file: the rest reads as zero
		}
	}
	return first, last, nil
}

// choose returns the index of the copy to trust, or why there is none.
func (s *Store) choose(l *loaded) (int, error) {
	i, err := l.pick(s.name)
	if err == nil && i < 0 {
		err = s.classify(l)
	}
	return i, err
}

// Load returns the valid copy with the highest generation. Errors wrap
// ErrNoRecord, ErrStoreCorrupt, ErrStoreAmbiguous or ErrStoreForeign (as a
// *ForeignDataError) in a *StoreError, or are an I/O error.
func (s *Store) Load() (*Record, LoadInfo, error) {
	l, err := s.readCopies()
	if err != nil {
		return nil, LoadInfo{}, fmt.Errorf("bootstate: load metadata store: %w", err)
	}
	i, err := s.choose(&l)
	info := LoadInfo{Copies: l.status}
	if err != nil {
		return nil, info, err
	}
	other := l.recs[1-i]
	info.Degraded = other == nil || other.Generation != l.recs[i].Generation
	return l.recs[i], info, nil
}

// Save writes r as generation max+1 to both copies, one after the other,
// with a flush after each: first to the copy that does not hold the newest
// valid record, so that whatever instant power is lost, one copy holds
// either the previous record or r, complete (a cut inside the first write
// leaves the other copy's old record; a cut inside the second leaves the
// first copy's new one). CRC32C makes a partial copy invalid, never a mix.
//
// Save refuses to write over a store with no valid copy unless the store is
// blank (ErrNoRecord): overwriting an unreadable record would destroy the
// evidence a human needs in recovery (use Format for that, deliberately),
// and overwriting foreign data would destroy someone else's partition.
//
// It returns the generation written. r.Generation is not consulted.
func (s *Store) Save(r *Record) (uint64, error) {
	l, err := s.readCopies()
	if err != nil {
		return 0, fmt.Errorf("bootstate: save metadata store: %w", err)
	}
	if _, err := s.choose(&l); err != nil && !errors.Is(err, ErrNoRecord) {
		refused(err, "save")
		return 0, err
	}
	gen, order := l.plan()
	return gen, s.write(r, gen, order)
}

// plan returns the next generation (above every valid copy) and the write
// order: if exactly one copy holds the highest valid generation, the other
// copy is written first, so that copy survives a cut in the first write.
func (l *loaded) plan() (uint64, [2]int) {
	a, b := l.recs[0], l.recs[1]
	switch {
	case a != nil && (b == nil || a.Generation > b.Generation):
		return a.Generation + 1, [2]int{1, 0}
	case b != nil && (a == nil || b.Generation > a.Generation):
		return b.Generation + 1, [2]int{0, 1}
	case a != nil:
		return a.Generation + 1, [2]int{0, 1}
	}
	return 1, [2]int{0, 1}
}

// refused marks a StoreError as the reason op wrote nothing.
func refused(err error, op string) {
	var se *StoreError
	if errors.As(err, &se) {
		se.Op = op + " (refused)"
	}
}

// Format writes r to both copies whatever cpinit record they hold now
// (valid, damaged or ambiguous), with a generation above any valid one
// seen, in the same order as Save. It is for first use and for an
// operator resolving an unreadable store in recovery mode.
//
// It refuses a store with ErrStoreForeign: with no cpinit record header
// anywhere, the device is not an unreadable cpinit store but most likely
// another partition, and nothing here can tell whose data it is. An
// operator who knows it is disposable wipes the store region first
// (zeros), which makes it blank.
func (s *Store) Format(r *Record) (uint64, error) {
	l, err := s.readCopies()
	if err != nil {
		return 0, fmt.Errorf("bootstate: format metadata store: %w", err)
	}
	if _, err := s.choose(&l); err != nil && !errors.Is(err, ErrNoRecord) && !errors.Is(err, ErrStoreCorrupt) && !errors.Is(err, ErrStoreAmbiguous) {
		refused(err, "format")
		return 0, err
	}
	gen, order := l.plan()
	return gen, s.write(r, gen, order)
}

func (s *Store) write(r *Record, gen uint64, order [2]int) error {
	b, err := EncodeRecord(r, gen)
	if err != nil {
		return fmt.Errorf("bootstate: save metadata store %s: %w", s.name, err)
	}
	for _, i := range order {
		off := copyOffsets[i]
		if _, err := s.dev.WriteAt(b, off); err != nil {
			return fmt.Errorf("bootstate: write metadata store %s copy %s at %d: %w", s.name, copyNames[i], off, err)
		}
		// The flush is the commit point of this copy and must come before
		// the other copy is touched: that ordering is the torn-write
		// guarantee.
		if err := s.dev.Sync(); err != nil {
			return fmt.Errorf("bootstate: flush metadata store %s after copy %s: %w", s.name, copyNames[i], err)
		}
	}
	return nil
}

// ReadBootControl reads bootloader_control from a misc device at
// BootControlOffset and decodes it. name is used in errors.
func ReadBootControl(misc io.ReaderAt, name string) (*BootControl, error) {
	b := make([]byte, BootControlSize)
	if _, err := misc.ReadAt(b, BootControlOffset); err != nil {
		return nil, fmt.Errorf("bootstate: read bootloader_control from %s at %d: %w", name, BootControlOffset, err)
	}
	c, err := DecodeBootControl(b)
	if err != nil {
		return nil, fmt.Errorf("%w (misc %s)", err, name)
	}
	return c, nil
}

// WriteBootControl encodes c (recomputing its CRC), writes it at
// BootControlOffset and flushes, as UpdateAndSaveBootloaderControl does
// with O_SYNC.
func WriteBootControl(misc Device, name string, c *BootControl) error {
	b, err := c.Encode()
	if err != nil {
		return fmt.Errorf("%w (misc %s)", err, name)
	}
	if _, err := misc.WriteAt(b, BootControlOffset); err != nil {
		return fmt.Errorf("bootstate: write bootloader_control to %s: %w", name, err)
	}
	if err := misc.Sync(); err != nil {
		return fmt.Errorf("bootstate: flush %s after bootloader_control: %w", name, err)
	}
	return nil
}

// AndroidMisc is the Bootloader of Android's misc partition (or a file
// holding its first KiB): bootloader_control at BootControlOffset.
// Current is the index of the running slot (-1 if unknown), handed to the
// states it loads (AndroidState.Current).
//
// Power cuts: the block is 32 bytes inside one 512-byte sector, written
// with one write and flushed (WriteBootControl), as libboot_control does;
// a sector write is atomic on the disks and eMMC that Android ships on, so
// a cut leaves the old or the new block. Where it is not, the CRC turns a
// torn block into ErrBootControlCRC, which cpinit never acts on alone
// (the corruption policy in doc.go).
type AndroidMisc struct {
	Path    string
	Current int
}

// Describe implements Bootloader.
func (m *AndroidMisc) Describe() string { return "android misc " + m.Path }

// Load implements Bootloader.
func (m *AndroidMisc) Load() (ABState, error) {
	f, err := os.Open(m.Path)
	if err != nil {
		return nil, fmt.Errorf("bootstate: android misc: %w", err)
	}
	defer f.Close()
	bc, err := ReadBootControl(f, m.Path)
	if err != nil {
		return nil, err
	}
	return &AndroidState{BC: bc, Current: m.Current}, nil
}

// Save implements Bootloader: s must come from Load (an *AndroidState).
func (m *AndroidMisc) Save(s ABState) error {
	as, ok := s.(*AndroidState)
	if !ok || as.BC == nil {
		return fmt.Errorf("bootstate: android misc %s: cannot save a %s state, nothing written", m.Path, s.Scheme())
	}
	if _, err := as.BC.Encode(); err != nil {
		return fmt.Errorf("%w (misc %s), nothing written", err, m.Path)
	}
	f, err := os.OpenFile(m.Path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("bootstate: android misc: %w", err)
	}
	defer f.Close()
	return WriteBootControl(f, m.Path, as.BC)
}
