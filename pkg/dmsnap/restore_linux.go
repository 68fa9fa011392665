//go:build linux

package dmsnap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// RestoreOptions tunes Restore. The zero value is the default.
type RestoreOptions struct {
	// Workers is how many copies run at once (default 16): each is a
	// blocking pread and pwrite on its own thread, so the disk sees that
	// many requests in flight.
	Workers int
	// MaxIO is the largest copy in bytes (default 1 MiB).
	MaxIO int64
	// Progress, if set, is called about every ProgressEvery (default 1 s)
	// and once at the end (Done set).
	Progress      func(Progress)
	ProgressEvery time.Duration
}

// Restore rolls the origin back offline: it opens dev, the origin's device
// node (cfg.Origin), for exclusive direct I/O, which fails with
// ErrOriginInUse while anything has it open (a mount, a device-mapper
// table), reads and checks the COW's table (PlanRestore), copies every
// saved chunk home and flushes the device's write cache before it returns.
// Nothing is written unless the whole table passed its checks. A restore
// that fails or is cut part-way is run again from the start (see
// restore.go). It returns the plan it carried out.
func Restore(ctx context.Context, dev string, cfg Config, opt RestoreOptions) (*RestorePlan, error) {
	if opt.Workers <= 0 {
		opt.Workers = 16
	}
	if opt.MaxIO <= 0 {
		opt.MaxIO = 1 << 20
	}
	if opt.ProgressEvery <= 0 {
		opt.ProgressEvery = time.Second
	}
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT|unix.O_EXCL, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("restore: %s is in use (mounted or mapped): %w", dev, ErrOriginInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	if st, err := statBlock(f); err != nil {
		return nil, fmt.Errorf("restore: %s: %w", dev, err)
	} else if st != cfg.Origin {
		return nil, fmt.Errorf("restore: %s is device %v, the checkpoint's origin is %v: %w", dev, st, cfg.Origin, ErrUnexpectedState)
	}
	size, err := deviceBytes(f)
	if err != nil {
		return nil, fmt.Errorf("restore: size: %w", err)
	}
	if size != cfg.OriginSectors*512 {
		return nil, fmt.Errorf("restore: %s holds %d bytes, the checkpoint's origin %d: %w", dev, size, cfg.OriginSectors*512, ErrUnexpectedState)
	}
	r := &alignedReader{f: f}
	plan, err := PlanRestore(r, cfg, opt.MaxIO)
	r.free()
	if err != nil {
		return nil, err
	}
	if err := plan.run(ctx, f, dev, opt); err != nil {
		return nil, err
	}
	return plan, nil
}

// run makes the plan's copies with opt.Workers goroutines, then flushes.
func (p *RestorePlan) run(ctx context.Context, f *os.File, dev string, opt RestoreOptions) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var done atomic.Int64
	var once sync.Once
	var firstErr error
	fail := func(err error) {
		once.Do(func() { firstErr = err; cancel() })
	}
	reads := make(chan restoreRead)
	var wg sync.WaitGroup
	// The plan bounded its reads by MaxIO, but never below one chunk.
	bufSize := int(max(p.Table.ChunkBytes(), largestRead(p.reads)))
	for range opt.Workers {
		buf, free, err := directBuffer(bufSize)
		if err != nil {
			fail(err)
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer free()
			var iovs [][]byte
			for r := range reads {
				if ctx.Err() != nil {
					continue // failed or cancelled: drain
				}
				b := buf[:r.n]
				if _, err := f.ReadAt(b, r.src); err != nil {
					fail(fmt.Errorf("restore: read %s at byte %d (COW): %w", dev, r.src, err))
					continue
				}
				for _, w := range r.writes {
					iovs = iovs[:0]
					for _, s := range w.segs {
						iovs = append(iovs, b[s.off:s.off+s.n])
					}
					n, err := pwritev(f, iovs, w.dst)
					if err == nil && n != w.bytes() {
						err = io.ErrShortWrite
					}
					if err != nil {
						fail(fmt.Errorf("restore: write %s at byte %d: %w", dev, w.dst, err))
						break
					}
					done.Add(n)
				}
			}
		}()
	}
	report := func(final bool) {
		if opt.Progress == nil {
			return
		}
		d := done.Load()
		pr := Progress{BytesLeft: uint64(p.bytes - d), BytesTotal: uint64(p.bytes), Elapsed: time.Since(start), Done: final}
		if secs := pr.Elapsed.Seconds(); secs > 0 && d > 0 {
			pr.Rate = float64(d) / secs
			pr.ETA = time.Duration(float64(pr.BytesLeft) / pr.Rate * float64(time.Second))
		}
		opt.Progress(pr)
	}
	tick := time.NewTicker(opt.ProgressEvery)
	defer tick.Stop()
	report(false)
feed:
	for _, r := range p.reads {
		for {
			select {
			case reads <- r:
				continue feed
			case <-tick.C:
				report(false)
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(reads)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("restore stopped with %d of %d bytes copied: %w", done.Load(), p.bytes, err)
	}
	// fsync of a block device sends the disk a cache flush
	// (blkdev_fsync): the restored chunks are durable before the caller
	// records the rollback done.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("restore: flush %s: %w", dev, err)
	}
	report(true)
	return nil
}

func largestRead(reads []restoreRead) int64 {
	var n int64
	for _, r := range reads {
		n = max(n, r.n)
	}
	return n
}

// pwritev writes iovs to byte off of f: one write(2) for one buffer, else
// one pwritev(2) (both O_DIRECT: every buffer is aligned and a multiple of
// the logical block size, as the chunks are).
func pwritev(f *os.File, iovs [][]byte, off int64) (int64, error) {
	if len(iovs) == 1 {
		n, err := f.WriteAt(iovs[0], off)
		return int64(n), err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		for {
			n, werr = unix.Pwritev(int(fd), iovs, off)
			if werr != unix.EINTR {
				return true
			}
		}
	}); err != nil {
		return 0, err
	}
	if werr != nil {
		return int64(n), os.NewSyscallError("pwritev", werr)
	}
	return int64(n), nil
}

// alignedReader reads an O_DIRECT file at any offset and length through
// an aligned bounce buffer (4 KiB alignment covers every logical block
// size Linux supports for disks).
type alignedReader struct {
	f     *os.File
	buf   []byte
	freeB func()
}

func (r *alignedReader) ReadAt(p []byte, off int64) (int, error) {
	const align = 4096
	start := off &^ (align - 1)
	end := (off + int64(len(p)) + align - 1) &^ (align - 1)
	if int64(len(r.buf)) < end-start {
		r.free()
		b, free, err := directBuffer(int(end - start))
		if err != nil {
			return 0, err
		}
		r.buf, r.freeB = b, free
	}
	n, err := r.f.ReadAt(r.buf[:end-start], start)
	got := max(0, min(int64(n)-(off-start), int64(len(p))))
	copy(p, r.buf[off-start:off-start+got])
	if int(got) == len(p) {
		return len(p), nil
	}
	return int(got), err
}

func (r *alignedReader) free() {
	if r.freeB != nil {
		r.freeB()
		r.buf, r.freeB = nil, nil
	}
}

// statBlock is the device number of the open block device f.
func statBlock(f *os.File) (Dev, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Dev{}, os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return Dev{}, errors.New("not a block device")
	}
	return Dev{Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev)}, nil
}
