//go:build linux

package dmsnap

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The COW header is read and written with O_DIRECT: the kernel's snapshot
// code reads and writes the COW with bios that bypass the page cache of the
// /dev/mapper node, so a buffered read could return a stale copy.

// directBuffer returns a page-aligned buffer of n bytes (O_DIRECT needs
// aligned memory) and a function that releases it.
func directBuffer(n int) ([]byte, func(), error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap %d bytes: %w", n, err)
	}
	return b, func() { _ = unix.Munmap(b) }, nil
}

// readDirect reads the first n bytes (a multiple of 512) of path.
func readDirect(path string, n int) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf, free, err := directBuffer(n)
	if err != nil {
		return nil, err
	}
	defer free()
	if _, err := f.ReadAt(buf, 0); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return append([]byte(nil), buf...), nil
}

// zeroDirect writes n zero bytes (a multiple of 512) at the start of path
// and makes them durable before returning.
func zeroDirect(path string, n int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		return err
	}
	const piece = 1 << 20
	buf, free, err := directBuffer(int(min(n, piece)))
	if err != nil {
		f.Close()
		return err
	}
	defer free()
	for off := int64(0); off < n; off += int64(len(buf)) {
		w := buf[:min(int64(len(buf)), n-off)]
		if _, err := f.WriteAt(w, off); err != nil {
			f.Close()
			return fmt.Errorf("zero %s at %d: %w", path, off, err)
		}
	}
	// O_DSYNC already waited for each write; fsync also flushes the
	// device's write cache so the zeros survive a power cut.
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

// flushDevice makes writes already completed on the block device at path
// durable (fsync of a block device flushes the disk's write cache).
func flushDevice(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}
