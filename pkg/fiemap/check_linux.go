package fiemap

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DirSupport is what CheckDir found about the filesystem holding a
// directory, for a preflight (`cpinit check`).
type DirSupport struct {
	// FSType is "ext4" or "f2fs", or the name of an unsupported
	// filesystem ("xfs", "vfat", "fs magic 0x…").
	FSType string
	// Device is the block device under the filesystem (zero if it has
	// none: tmpfs, overlay, ...).
	Device Device
	// BlockSize is statfs's f_bsize; Free the bytes available (f_bavail).
	BlockSize, Free uint64
	// Unit is the allocation unit of Allocate (AllocationUnit): the block
	// size, or on f2fs a section. Zero when unsupported.
	Unit uint64
	// ReadOnly: mounted read-only (ST_RDONLY).
	ReadOnly bool
}

// CheckDir says whether Allocate could place and pin a COW file in dir,
// without writing anything: the filesystem is ext4 or f2fs, it sits on a
// block device, and on f2fs the kernel can pin files (pin_file). err wraps
// ErrUnsupportedFS for a filesystem Allocate refuses; the DirSupport
// returned then still names what was found.
func CheckDir(dir string) (DirSupport, error) {
	var s DirSupport
	d, err := os.Open(dir)
	if err != nil {
		return s, err
	}
	defer d.Close()
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(d.Fd()), &sfs); err != nil {
		return s, &os.PathError{Op: "statfs", Path: dir, Err: err}
	}
	magic := fsMagic(&sfs)
	s.FSType = fsName(magic)
	s.BlockSize = uint64(sfs.Bsize)
	s.Free = sfs.Bavail * uint64(sfs.Bsize)
	s.ReadOnly = sfs.Flags&unix.ST_RDONLY != 0
	if _, ok := supportedFS[magic]; !ok {
		return s, &os.PathError{Op: "check", Path: dir, Err: fmt.Errorf("%s: %w (%w); supported: ext4, f2fs", s.FSType, ErrUnsupportedFS, unix.EOPNOTSUPP)}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &st); err != nil {
		return s, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	if s.Device, err = resolveDevice(dir, st.Dev); err != nil {
		return s, err
	}
	if s.FSType == "f2fs" {
		if err := f2fsCanPin(dir, d); err != nil {
			return s, err
		}
		if s.Unit, err = f2fsSectionBytes(dir, d); err != nil {
			return s, err
		}
		return s, nil
	}
	s.Unit = s.BlockSize
	return s, nil
}
