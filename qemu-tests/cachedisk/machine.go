package cachedisk

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
)

// Machine is the disks of one guest for one boot: each Disk serves an image
// file over NBD on its own Unix socket, and all of them share one flush
// counter, so "flush number K" names one point of the boot whatever the
// host's speed. A Machine ends with Cut (the power goes off); a new Machine
// on the same files is the next boot.
//
// One mutex serialises every request of every disk, replies included: once
// a cut is decided, no disk performs or acknowledges anything more.
type Machine struct {
	mu      sync.Mutex
	disks   []*Disk
	flushes int           // flushes that arrived, on all disks
	cutAt   int           // cut when flush number cutAt arrives (0: never)
	stopped bool          // cut decided: answer nothing more
	reached chan struct{} // closed when flush cutAt arrives
	ended   bool
	log     []FlushRecord
	// cutDisk, cutDiskN: cut when that disk's flush number cutDiskN
	// arrives; cutWhere*: where the cut was reached.
	cutDisk      string
	cutDiskN     int
	cutDirty     bool // cutDiskN counts the disk's flushes with data only
	cutWhereDisk string
	cutWhereN    int
	unit         int64 // the disks' atomic unit (0: SectorSize)
}

// FlushRecord is one performed flush.
type FlushRecord struct {
	Seq     int    // 1, 2, ... across the machine's disks
	Disk    string // the disk's name
	Sectors int    // sectors it made durable
}

func (r FlushRecord) String() string {
	return fmt.Sprintf("flush %d %s %d sectors", r.Seq, r.Disk, r.Sectors)
}

// Disk is one NBD export of a Machine.
type Disk struct {
	Name   string
	Image  string // the durable image file
	Socket string // the Unix socket QEMU connects to

	m       *Machine
	f       *os.File
	cache   *Cache
	ln      net.Listener
	flushes int // flushes performed
	arrived int // flushes that arrived (the one a cut stopped at included)
	// arrivedDirty counts the flushes that arrived while the cache held
	// something to write back.
	arrivedDirty int
	conns        map[net.Conn]bool
	wg           sync.WaitGroup
}

// NewMachine returns a machine with no disks.
func NewMachine() *Machine {
	return &Machine{reached: make(chan struct{})}
}

// AddDisk serves image (a raw image file whose size is a multiple of 512)
// as disk name on a new Unix socket at socket.
func (m *Machine) AddDisk(name, image, socket string) (*Disk, error) {
	f, err := os.OpenFile(image, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	unit := m.unit
	if unit == 0 {
		unit = SectorSize
	}
	cache, err := NewCacheUnit(f, st.Size(), unit)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		f.Close()
		return nil, err
	}
	d := &Disk{Name: name, Image: image, Socket: socket, m: m, f: f, cache: cache, ln: ln, conns: map[net.Conn]bool{}}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ended {
		ln.Close()
		f.Close()
		return nil, errors.New("cachedisk: machine already cut")
	}
	m.disks = append(m.disks, d)
	d.wg.Add(1)
	go d.accept()
	return d, nil
}

// URI is the disk as QEMU names an NBD export on a Unix socket; it can
// stand where a file name goes (-drive file=URI,format=raw).
func (d *Disk) URI() string { return "nbd+unix:///?socket=" + d.Socket }

// Flushes is how many flushes this disk performed.
func (d *Disk) Flushes() int {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	return d.flushes
}

// CachedSectors is how many sectors the disk's volatile cache holds: written
// and acknowledged, not yet durable.
func (d *Disk) CachedSectors() int {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	return len(d.cache.dirty)
}

// Disks returns the machine's disks in the order they were added.
func (m *Machine) Disks() []*Disk {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*Disk(nil), m.disks...)
}

// CutAtFlush arms the cut: when flush number k (counted from 1 over all
// disks) arrives, it is neither performed nor acknowledged, every disk
// stops answering, and Reached's channel is closed. The harness then kills
// QEMU and calls Cut. k <= 0 disarms it.
func (m *Machine) CutAtFlush(k int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cutAt = k
}

// SetAtomicUnit makes the disks added from now on write back units of n
// bytes whole or not at all (NewCacheUnit); SectorSize by default.
func (m *Machine) SetAtomicUnit(n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unit = n
}

// CutAtDiskFlush arms the cut at the n-th flush of the disk named name,
// counted from 1 on that disk alone: a campaign that targets the flushes
// of one writer (cpinit's metadata store, misc) hits the same one in every
// run, whatever other disks flush in between and when. n <= 0 disarms it.
func (m *Machine) CutAtDiskFlush(name string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cutDisk, m.cutDiskN, m.cutDirty = name, n, false
}

// CutAtDiskDirtyFlush arms the cut at the n-th flush of the disk named name
// that arrives while the disk's cache holds unflushed writes. Flushes with
// nothing to write back change nothing a cut could lose, and their number
// can swamp the others: the device mapper sends a flush to every target of
// a table (dm_table's num_flush_bios), so a flush of a linear table of k
// segments on one disk reaches it k times. n <= 0 disarms it.
func (m *Machine) CutAtDiskDirtyFlush(name string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cutDisk, m.cutDiskN, m.cutDirty = name, n, true
}

// DirtyFlushes is how many flushes arrived on this disk while its cache
// held something (the one a cut stopped at included): the count
// CutAtDiskDirtyFlush arms on.
func (d *Disk) DirtyFlushes() int {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	return d.arrivedDirty
}

// CutWhere says which flush a cut stopped at: the disk and its number on
// that disk; "" if no cut was reached.
func (m *Machine) CutWhere() (disk string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cutWhereDisk, m.cutWhereN
}

// Reached is closed when the armed flush arrives.
func (m *Machine) Reached() <-chan struct{} { return m.reached }

// Flushes is how many flushes arrived on all disks (the one a cut stopped
// at included).
func (m *Machine) Flushes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.flushes
}

// Log returns every flush performed, in order.
func (m *Machine) Log() []FlushRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]FlushRecord(nil), m.log...)
}

// Cut is the power cut, once QEMU is gone (killed, or exited: a QEMU that
// exits normally flushes its disks first, so nothing is left to lose): the
// disks stop serving, and each image file is left holding what survives its
// cache under mode; Subset draws from seed and the disk's name. It returns
// what happened per disk name.
func (m *Machine) Cut(mode Mode, seed uint64) (map[string]CutResult, error) {
	m.mu.Lock()
	if m.ended {
		m.mu.Unlock()
		return nil, errors.New("cachedisk: machine already cut")
	}
	m.stopped, m.ended = true, true
	disks := m.disks
	for _, d := range disks {
		d.ln.Close()
		for c := range d.conns {
			c.Close()
		}
	}
	m.mu.Unlock()
	res := map[string]CutResult{}
	var errs []error
	for _, d := range disks {
		d.wg.Wait()
		h := fnv.New64a()
		h.Write([]byte(d.Name))
		r, err := d.cache.Cut(mode, rand.New(rand.NewPCG(seed, h.Sum64())))
		res[d.Name] = r
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.Name, err))
		}
		if err := d.f.Close(); err != nil {
			errs = append(errs, err)
		}
		os.Remove(d.Socket)
	}
	return res, errors.Join(errs...)
}

// Close ends the machine as Cut(DropAll) does, for a boot whose outcome does
// not matter or that ended with QEMU's own final flush.
func (m *Machine) Close() error {
	_, err := m.Cut(DropAll, 0)
	return err
}

func (d *Disk) accept() {
	defer d.wg.Done()
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		d.m.mu.Lock()
		if d.m.ended {
			d.m.mu.Unlock()
			c.Close()
			return
		}
		d.conns[c] = true
		d.wg.Add(1)
		d.m.mu.Unlock()
		go d.serve(c)
	}
}

// serve runs one client connection.
func (d *Disk) serve(c net.Conn) {
	defer d.wg.Done()
	defer func() {
		d.m.mu.Lock()
		delete(d.conns, c)
		d.m.mu.Unlock()
		c.Close()
	}()
	if err := handshake(c, d.cache.Size()); err != nil {
		return
	}
	for {
		r, err := readRequest(c)
		if err != nil {
			return
		}
		switch d.handle(c, r) {
		case hold:
			// Cut: answer nothing more, hold the connection until
			// the client goes (QEMU killed) or Cut closes it.
			io.Copy(io.Discard, c)
			return
		case hangUp:
			return
		}
	}
}

// What serve does after a request.
type next int

const (
	goOn   next = iota
	hold        // the power is cut: answer nothing more
	hangUp      // DISC, or the reply could not be sent
)

// handle performs one request and replies, under the machine's lock.
func (d *Disk) handle(c net.Conn, r request) next {
	m := d.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return hold
	}
	var errno uint32
	var data []byte
	switch r.typ {
	case cmdRead:
		data = make([]byte, r.length)
		errno = ioErrno(d.cache.ReadAt(data, int64(r.off)), errInval)
	case cmdWrite:
		errno = ioErrno(d.cache.Write(r.data, int64(r.off), r.flags&cmdFlagFUA != 0), errNoSpc)
	case cmdFlush:
		m.flushes++
		d.arrived++
		dirty := len(d.cache.dirty) > 0
		if dirty {
			d.arrivedDirty++
		}
		diskN := d.arrived
		if m.cutDirty {
			diskN = d.arrivedDirty
		}
		if m.flushes == m.cutAt || (m.cutDiskN > 0 && d.Name == m.cutDisk && diskN == m.cutDiskN && (dirty || !m.cutDirty)) {
			m.stopped = true
			m.cutWhereDisk, m.cutWhereN = d.Name, d.arrived
			close(m.reached)
			return hold
		}
		n, err := d.cache.Flush()
		errno = ioErrno(err, errIO)
		if err == nil {
			d.flushes++
			m.log = append(m.log, FlushRecord{Seq: m.flushes, Disk: d.Name, Sectors: n})
		}
	case cmdDisc:
		return hangUp
	default:
		// TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS, ...: none advertised.
		errno = errInval
	}
	if err := reply(c, r.handle, errno, data); err != nil {
		return hangUp
	}
	return goOn
}

// ioErrno maps a cache error to an NBD error: ErrRange to rangeErrno, any
// other to EIO.
func ioErrno(err error, rangeErrno uint32) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrRange):
		return rangeErrno
	}
	return errIO
}
