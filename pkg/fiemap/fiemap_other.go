//go:build !linux

package fiemap

import (
	"errors"
	"fmt"
	"os"
)

// FIEMAP, FS_IMMUTABLE_FL and the f2fs pin ioctl are Linux interfaces. The
// pure parts of the package (Validate, Coalesce, Segments, Fingerprint,
// DMTable) build and are tested everywhere.

func unsupported(op, path string) error {
	return &os.PathError{Op: op, Path: path, Err: fmt.Errorf("fiemap needs Linux: %w", errors.ErrUnsupported)}
}

// MapFile is only implemented on Linux.
func MapFile(path string) (*Map, error) { return nil, unsupported("fiemap", path) }

// Verify is only implemented on Linux.
func Verify(path string, want *Map) (*Map, error) { return nil, unsupported("fiemap verify", path) }

// Allocate is only implemented on Linux.
func Allocate(path string, size uint64, opts AllocOptions) (*Map, error) {
	return nil, unsupported("allocate", path)
}

// Release is only implemented on Linux.
func Release(path string) error { return unsupported("release", path) }

// DirSupport is what CheckDir found; see the Linux build.
type DirSupport struct {
	FSType          string
	Device          Device
	BlockSize, Free uint64
	Unit            uint64
	ReadOnly        bool
}

// CheckDir is only implemented on Linux.
func CheckDir(dir string) (DirSupport, error) { return DirSupport{}, unsupported("check", dir) }
