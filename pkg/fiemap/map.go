package fiemap

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Device identifies the block device that holds the filesystem, which is the
// device every Segment's Offset refers to.
type Device struct {
	Major uint32 `json:"major"`
	Minor uint32 `json:"minor"`
	// Sectors is the device size in 512-byte sectors
	// (/sys/dev/block/MAJ:MIN/size, which is always in 512-byte units).
	Sectors uint64 `json:"sectors"`
	// Path is the /dev node (from the uevent's DEVNAME), informational only:
	// tables refer to MAJ:MIN because without udev names are not reliable.
	Path string `json:"path,omitempty"`
	// DMName is set when the filesystem sits on a device-mapper device
	// (/sys/dev/block/MAJ:MIN/dm/name), e.g. cp-origin while a checkpoint
	// is active. Offsets are then relative to that dm device, not to the
	// disk below it: a COW table must not be built on cp-origin.
	DMName string `json:"dm_name,omitempty"`
}

// String returns "MAJ:MIN", the form dm tables use.
func (d Device) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// Map is the validated extent map of a file: what pkg/dmsnap needs to build
// the dm-linear COW device and what the metadata store records. It marshals to
// JSON as is (for `cpinit extents --json`).
type Map struct {
	Path   string `json:"path"`
	FSType string `json:"fs_type"` // "ext4" or "f2fs"
	// Size of the file in bytes (a multiple of SectorSize) and of the mapped
	// device: Sectors() == Size/SectorSize.
	Size      uint64 `json:"size"`
	BlockSize uint32 `json:"block_size"`
	Device    Device `json:"device"`
	// RawExtents is the number of extents FIEMAP reported before coalescing.
	RawExtents int `json:"raw_extents"`
	// Extents are the coalesced extents in bytes, with their flags.
	Extents []Extent `json:"extents"`
	// Segments are the same mapping in 512-byte sectors, merged regardless of
	// flags: one dm `linear` target each.
	Segments []Segment `json:"segments"`
	// Fingerprint is Fingerprint(Device, Size, Extents), hex SHA-256.
	Fingerprint string `json:"fingerprint"`
	// Immutable reports FS_IMMUTABLE_FL and F2FSPinned the f2fs pin (FS_NOCOW_FL)
	// at the time of reading; they are not part of the fingerprint.
	Immutable  bool `json:"immutable"`
	F2FSPinned bool `json:"f2fs_pinned,omitempty"`
}

// Sectors is the size of the mapped device in 512-byte sectors.
func (m *Map) Sectors() uint64 { return m.Size / SectorSize }

// DMTable renders the dm-linear table that maps the file, in dmsetup's
// format (`<start> <len> linear <maj:min> <offset>` per line).
func (m *Map) DMTable() string { return DMTable(m.Segments, m.Device.Major, m.Device.Minor) }

// fingerprintVersion is hashed first so a change of the canonical form can
// never collide with an older record.
const fingerprintVersion = "cpinit-fiemap-v1"

// Fingerprint is the SHA-256 (hex) of a canonical text of the device identity
// (MAJ:MIN and size in sectors), the file size and the coalesced extent list
// (logical, physical, length, layout flags) of [0, size). The extents are
// trimmed and coalesced here again so any two lists describing the same
// layout hash the same.
//
// The hashed text, so other tools can recompute it (numbers in decimal
// except flags, in hex; one line per coalesced extent of [0, size)):
//
//	cpinit-fiemap-v1
//	device <major>:<minor> sectors <device sectors>
//	size <file bytes>
//	<logical bytes> <physical bytes> <length bytes> <flags & UNWRITTEN, hex>
//	...
//
// The device identity is part of it on purpose: the same extents on another
// device are another mapping. To compare a map read through a different
// device (e.g. a dm view of the same partition) use SameLayout.
func Fingerprint(dev Device, size uint64, extents []Extent) string {
	h := sha256.New()
	b := make([]byte, 0, 128)
	b = append(b, fingerprintVersion...)
	b = append(b, "\ndevice "...)
	b = strconv.AppendUint(b, uint64(dev.Major), 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, uint64(dev.Minor), 10)
	b = append(b, " sectors "...)
	b = strconv.AppendUint(b, dev.Sectors, 10)
	b = append(b, "\nsize "...)
	b = strconv.AppendUint(b, size, 10)
	b = append(b, '\n')
	h.Write(b)
	for _, e := range Coalesce(Trim(extents, size)) {
		b = b[:0]
		b = strconv.AppendUint(b, e.Logical, 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, e.Physical, 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, e.Length, 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(e.Flags&layoutFlags), 16)
		b = append(b, '\n')
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// OnDevice returns a copy of m whose segments refer to dev instead, with the
// fingerprint recomputed, for when the same partition has another MAJ:MIN
// (e.g. in first-stage init, or through a dm view of it). dev must have the
// same size. The caller vouches that dev holds the same bytes.
func (m *Map) OnDevice(dev Device) (*Map, error) {
	if dev.Sectors != m.Device.Sectors {
		return nil, fmt.Errorf("fiemap %s: device %s has %d sectors, the map's %s has %d", m.Path, dev, dev.Sectors, m.Device, m.Device.Sectors)
	}
	c := *m
	c.Device = dev
	c.Extents = append([]Extent(nil), m.Extents...)
	c.Segments = append([]Segment(nil), m.Segments...)
	c.Fingerprint = Fingerprint(dev, c.Size, c.Extents)
	return &c, c.Check()
}

// SameLayout reports (as an error describing the first difference) whether o
// maps the same file bytes to the same physical sectors as m, on a device of
// the same size, ignoring the device number, path and flags. Use it to
// re-verify a recorded map through another view of the same partition, such
// as a dm snapshot device, whose MAJ:MIN differs.
func (m *Map) SameLayout(o *Map) error {
	if m.Size != o.Size {
		return fmt.Errorf("fiemap %s: size changed from %d to %d", o.Path, m.Size, o.Size)
	}
	if m.Device.Sectors != o.Device.Sectors {
		return fmt.Errorf("fiemap %s: device size changed from %d to %d sectors", o.Path, m.Device.Sectors, o.Device.Sectors)
	}
	if len(m.Segments) != len(o.Segments) {
		return fmt.Errorf("fiemap %s: %d segments, recorded %d", o.Path, len(o.Segments), len(m.Segments))
	}
	for i := range m.Segments {
		if m.Segments[i] != o.Segments[i] {
			return fmt.Errorf("fiemap %s: segment %d is %+v, recorded %+v", o.Path, i, o.Segments[i], m.Segments[i])
		}
	}
	return nil
}

// Check verifies the internal consistency of a Map, e.g. one decoded from the
// metadata store: valid extents covering Size, segments derived from them,
// within the device, and the fingerprint matching. A Map that passes can be
// turned into a dm table without re-reading the file.
func (m *Map) Check() error {
	if m.Device.Sectors == 0 {
		return fmt.Errorf("fiemap %s: device %s has no size", m.Path, m.Device)
	}
	if err := Validate(m.Path, m.Size, m.Extents); err != nil {
		return err
	}
	if n := len(m.Extents); m.Extents[n-1].Logical+m.Extents[n-1].Length != m.Size {
		return fmt.Errorf("fiemap %s: extents end at %d, not at the file size %d", m.Path, m.Extents[n-1].Logical+m.Extents[n-1].Length, m.Size)
	}
	segs := Segments(m.Extents, m.Size)
	if len(segs) != len(m.Segments) {
		return fmt.Errorf("fiemap %s: %d segments do not match the %d derived from the extents", m.Path, len(m.Segments), len(segs))
	}
	for i := range segs {
		if segs[i] != m.Segments[i] {
			return fmt.Errorf("fiemap %s: segment %d is %+v, extents give %+v", m.Path, i, m.Segments[i], segs[i])
		}
		if s := segs[i]; s.Offset+s.Length > m.Device.Sectors || s.Offset+s.Length < s.Offset {
			return &ExtentError{Path: m.Path, Offset: s.Start * SectorSize, Reason: fmt.Sprintf("physical sectors %d+%d beyond the end of device %s (%d sectors)", s.Offset, s.Length, m.Device, m.Device.Sectors)}
		}
	}
	if fp := Fingerprint(m.Device, m.Size, m.Extents); fp != m.Fingerprint {
		return fmt.Errorf("fiemap %s: fingerprint %s does not match the extents (%s)", m.Path, m.Fingerprint, fp)
	}
	return nil
}

// CheckPinned says why the file's blocks may not stay where the map says,
// or nil: it must be immutable (no write, truncate or unlink through the
// filesystem), and on f2fs also pinned (F2FS_IOC_SET_PIN_FILE: garbage
// collection leaves it alone). Allocate sets both.
func (m *Map) CheckPinned() error {
	if !m.Immutable {
		return errors.New("file is not immutable: its blocks may be written or freed through the filesystem")
	}
	if m.FSType == "f2fs" && !m.F2FSPinned {
		return errors.New("f2fs file is not pinned: garbage collection may move its blocks")
	}
	return nil
}

// hasF2FSFeature reports whether a /sys/fs/f2fs/<dev>/features text (a
// comma-separated list, e.g. "encryption, extra_attr, pin_file") names
// feature.
func hasF2FSFeature(features, feature string) bool {
	for _, f := range strings.Split(features, ",") {
		if strings.TrimSpace(f) == feature {
			return true
		}
	}
	return false
}
