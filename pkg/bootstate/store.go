package bootstate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
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
	// ErrNoRecord: both copies are blank (every header byte zero), or
	// copy B is blank and copy A invalid (a torn first write, see pick):
	// the store never held a durable record. Decide treats this as fresh.
	ErrNoRecord = errors.New("metadata store is blank")
	// ErrStoreCorrupt: no copy is valid and they are not both blank.
	ErrStoreCorrupt = errors.New("metadata store has no valid copy")
	// ErrStoreAmbiguous: both copies are valid with the same generation
	// but different contents; no writer of ours produces that.
	ErrStoreAmbiguous = errors.New("metadata store copies disagree")
)

// CopyStatus describes one copy as last read.
type CopyStatus struct {
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

// pick returns the index of the copy to trust, or an error.
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
	case l.status[0].Blank && l.status[1].Blank:
		return -1, &StoreError{name, "load", ErrNoRecord, l.status}
	case l.status[1].Blank:
		// Copy A is invalid and copy B was never written. From a blank
		// store, Save and Format write A first and B only once A is
		// flushed, and RunBoot acts on a record only after Save returned,
		// i.e. after both copies are complete. So this is a first write
		// torn inside copy A: no record was ever durable, nothing was
		// done on its strength, and the store is as good as blank. (The
		// mirror case, A blank and B invalid, cannot come from our writes
		// and stays ErrStoreCorrupt.)
		return -1, &StoreError{name, "load", ErrNoRecord, l.status}
	}
	return -1, &StoreError{name, "load", ErrStoreCorrupt, l.status}
}

// Load returns the valid copy with the highest generation. Errors wrap
// ErrNoRecord, ErrStoreCorrupt or ErrStoreAmbiguous in a *StoreError, or
// an I/O error.
func (s *Store) Load() (*Record, LoadInfo, error) {
	l, err := s.readCopies()
	if err != nil {
		return nil, LoadInfo{}, fmt.Errorf("bootstate: load metadata store: %w", err)
	}
	info := LoadInfo{Copies: l.status}
	i, err := l.pick(s.name)
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
// blank: overwriting an unreadable record would destroy the evidence a
// human needs in recovery. Use Format for that, deliberately.
//
// It returns the generation written. r.Generation is not consulted.
func (s *Store) Save(r *Record) (uint64, error) {
	l, err := s.readCopies()
	if err != nil {
		return 0, fmt.Errorf("bootstate: save metadata store: %w", err)
	}
	if _, err := l.pick(s.name); err != nil && !errors.Is(err, ErrNoRecord) {
		var se *StoreError
		if errors.As(err, &se) {
			se.Op = "save (refused)"
		}
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

// Format writes r to both copies regardless of what they hold now, with a
// generation above any valid one seen, in the same order as Save. It is for first use and for an
// operator resolving an unreadable store in recovery mode.
func (s *Store) Format(r *Record) (uint64, error) {
	l, err := s.readCopies()
	if err != nil {
		return 0, fmt.Errorf("bootstate: format metadata store: %w", err)
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
