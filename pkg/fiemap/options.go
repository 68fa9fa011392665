package fiemap

import "errors"

// ErrUnsupportedFS is wrapped by the error for a file on a filesystem that
// can't promise that its blocks stay where FIEMAP says. On Linux the error
// also wraps unix.EOPNOTSUPP.
var ErrUnsupportedFS = errors.New("filesystem cannot promise stable block locations")

// ErrMapChanged is wrapped by Verify's error when the file's extents (or
// device) differ from the recorded map.
var ErrMapChanged = errors.New("extent map changed since it was recorded")

// DefaultReserve is the free space Allocate leaves by default. vold commits
// a checkpoint when /data drops to 100 MiB free; a little more than that keeps
// the system usable while the checkpoint lives.
const DefaultReserve = 128 << 20

// DefaultMaxSegments caps the dm-linear targets Allocate accepts, like AOSP
// libfiemap's kMaxExtents = 50000 (fs_mgr/libfiemap/fiemap_writer.cpp): a
// file more fragmented than that is better refused than mapped.
const DefaultMaxSegments = 50000

// AllocOptions tune Allocate. The zero value means the defaults.
type AllocOptions struct {
	// Reserve is the free space, in bytes, that must remain available
	// (statfs f_bavail) after the allocation; 0 means DefaultReserve.
	Reserve uint64
	// MaxSegments is the largest number of segments accepted; 0 means
	// DefaultMaxSegments, a negative value means no limit.
	MaxSegments int
}

func (o AllocOptions) reserve() uint64 {
	if o.Reserve == 0 {
		return DefaultReserve
	}
	return o.Reserve
}

func (o AllocOptions) maxSegments() int {
	if o.MaxSegments == 0 {
		return DefaultMaxSegments
	}
	return o.MaxSegments
}
