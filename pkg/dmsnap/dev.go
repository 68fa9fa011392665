package dmsnap

import (
	"fmt"
	"strconv"
	"strings"
)

// Dev is a block device number. Tables reference devices as "major:minor"
// rather than by path: without udev (first-stage init) there is no
// /dev/mapper/NAME or /dev/disk/... path the kernel could resolve, and the
// kernel itself prints table devices in this form (format_dev_t), so a table
// we load reads back byte for byte.
type Dev struct {
	Major, Minor uint32
}

// String returns "major:minor", the form used in tables.
func (d Dev) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// IsZero reports whether d is the zero Dev (never a valid block device).
func (d Dev) IsZero() bool { return d == Dev{} }

// ParseDev parses "major:minor".
func ParseDev(s string) (Dev, error) {
	maj, min, ok := strings.Cut(s, ":")
	if !ok {
		return Dev{}, fmt.Errorf("device %q: want major:minor", s)
	}
	a, err := strconv.ParseUint(maj, 10, 32)
	if err != nil {
		return Dev{}, fmt.Errorf("device %q: major: %w", s, err)
	}
	b, err := strconv.ParseUint(min, 10, 32)
	if err != nil {
		return Dev{}, fmt.Errorf("device %q: minor: %w", s, err)
	}
	return Dev{uint32(a), uint32(b)}, nil
}

// encodeDev is the kernel's huge_encode_dev (include/linux/kdev_t.h), the
// form of struct dm_ioctl.dev and dm_name_list.dev: the "new" 32-bit
// encoding widened to 64 bits.
func encodeDev(d Dev) uint64 {
	return uint64(d.Minor&0xff) | uint64(d.Major&0xfff)<<8 | uint64(d.Minor&^0xff)<<12 | uint64(d.Major&^0xfff)<<32
}

// decodeDev is the inverse of encodeDev (huge_decode_dev / new_decode_dev;
// glibc's gnu_dev_major/minor agree on it for all values the kernel uses).
func decodeDev(v uint64) Dev {
	major := uint32((v>>8)&0xfff) | uint32(v>>32)&^0xfff
	minor := uint32(v&0xff) | uint32((v>>12)&0xffffff00)
	return Dev{Major: major, Minor: minor}
}
