package fiemap

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// SectorSize is the unit of device-mapper tables and of Segment: dm always
// counts 512-byte sectors, whatever the device's logical block size
// (Documentation/admin-guide/device-mapper/linear.rst).
const SectorSize = 512

// Extent flags, from include/uapi/linux/fiemap.h. Their meaning is in
// Documentation/filesystems/fiemap.rst.
const (
	FlagLast          uint32 = 0x00000001 // last extent of the file
	FlagUnknown       uint32 = 0x00000002 // data location unknown
	FlagDelalloc      uint32 = 0x00000004 // location still pending (implies UNKNOWN)
	FlagEncoded       uint32 = 0x00000008 // data can't be read while fs is unmounted
	FlagDataEncrypted uint32 = 0x00000080 // data is encrypted by the fs (implies ENCODED)
	FlagNotAligned    uint32 = 0x00000100 // extent offsets may not be block aligned
	FlagDataInline    uint32 = 0x00000200 // data mixed with metadata (implies NOT_ALIGNED)
	FlagDataTail      uint32 = 0x00000400 // multiple files in block (implies NOT_ALIGNED)
	FlagUnwritten     uint32 = 0x00000800 // space allocated, but no data (reads as zero)
	FlagMerged        uint32 = 0x00001000 // fs does not support extents; blocks merged
	FlagShared        uint32 = 0x00002000 // space shared with other files
)

// rejectedFlags are the extent flags that make an extent unusable as the
// target of a dm-linear mapping. fiemap.rst: UNKNOWN/DELALLOC mean fe_physical
// is meaningless; ENCODED/DATA_ENCRYPTED mean the bytes on disk are not the
// file's bytes (and the fs may relocate them); DATA_INLINE/DATA_TAIL/
// NOT_ALIGNED mean the block holds metadata or other files' data; SHARED means
// another file (reflink, snapshot, dedupe) owns the same blocks, so writing
// through dm would change that file.
//
// UNWRITTEN is deliberately accepted: see the package documentation.
const rejectedFlags = FlagUnknown | FlagDelalloc | FlagEncoded | FlagDataEncrypted |
	FlagNotAligned | FlagDataInline | FlagDataTail | FlagShared

// knownFlags are all flags defined by the kernel as of 6.x. An extent with a
// bit outside this set is rejected too: a flag we don't know might mean
// something we can't accept.
const knownFlags = FlagLast | rejectedFlags | FlagUnwritten | FlagMerged

// layoutFlags are the flags that distinguish otherwise contiguous extents for
// coalescing and the fingerprint. LAST only marks the end of the list and
// MERGED is an artefact of how the fs reports blocks, so neither changes which
// bytes live where.
const layoutFlags = FlagUnwritten

var flagNames = []struct {
	flag uint32
	name string
}{
	{FlagLast, "LAST"},
	{FlagUnknown, "UNKNOWN"},
	{FlagDelalloc, "DELALLOC"},
	{FlagEncoded, "ENCODED"},
	{FlagDataEncrypted, "DATA_ENCRYPTED"},
	{FlagNotAligned, "NOT_ALIGNED"},
	{FlagDataInline, "DATA_INLINE"},
	{FlagDataTail, "DATA_TAIL"},
	{FlagUnwritten, "UNWRITTEN"},
	{FlagMerged, "MERGED"},
	{FlagShared, "SHARED"},
}

// FlagString renders extent flags as "UNWRITTEN|LAST" (unknown bits in hex).
func FlagString(flags uint32) string {
	var parts []string
	for _, f := range flagNames {
		if flags&f.flag != 0 {
			parts = append(parts, f.name)
			flags &^= f.flag
		}
	}
	if flags != 0 {
		parts = append(parts, fmt.Sprintf("%#x", flags))
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, "|")
}

// Extent is one FIEMAP extent, in bytes. Physical is relative to the start of
// the block device that holds the filesystem (fiemap.rst: "fe_physical ...
// physical offset of the extent from the beginning of the disk").
type Extent struct {
	Logical  uint64 `json:"logical"`
	Physical uint64 `json:"physical"`
	Length   uint64 `json:"length"`
	Flags    uint32 `json:"flags"`
}

// MarshalJSON adds the flag names ("flag_names") for
// people reading `cpinit extents --json` ("LAST|UNWRITTEN"); decoding
// ignores them.
func (e Extent) MarshalJSON() ([]byte, error) {
	type plain Extent
	return json.Marshal(struct {
		plain
		FlagNames string `json:"flag_names"`
	}{plain(e), FlagString(e.Flags)})
}

func (e Extent) String() string {
	return fmt.Sprintf("logical %d physical %d length %d flags %s", e.Logical, e.Physical, e.Length, FlagString(e.Flags))
}

// Segment is one piece of the mapping in 512-byte sectors: Length sectors
// starting at Start in the mapped (dm) device come from Offset on the block
// device. It is neutral on purpose: pkg/dmsnap turns each into a `linear`
// target "Start Length linear MAJ:MIN Offset".
type Segment struct {
	Start  uint64 `json:"start"`
	Length uint64 `json:"length"`
	Offset uint64 `json:"offset"`
}

// ExtentError reports an extent that can't be mapped safely. It names the
// file, the logical byte offset in it and the reason (usually a flag).
type ExtentError struct {
	Path   string
	Offset uint64 // logical byte offset in the file
	Flags  uint32 // the offending flags, if the reason is a flag
	Reason string
}

// ErrUnsafeExtent is what every *ExtentError wraps, so callers can tell "this
// file's layout can't be mapped safely" from I/O errors with errors.Is.
var ErrUnsafeExtent = errors.New("extent map unsafe for dm-linear")

// Unwrap returns ErrUnsafeExtent.
func (e *ExtentError) Unwrap() error { return ErrUnsafeExtent }

func (e *ExtentError) Error() string {
	if e.Flags != 0 {
		return fmt.Sprintf("fiemap %s: extent at offset %d: flag %s: %s", e.Path, e.Offset, FlagString(e.Flags), e.Reason)
	}
	return fmt.Sprintf("fiemap %s: extent at offset %d: %s", e.Path, e.Offset, e.Reason)
}

// Validate checks that extents (as returned by FIEMAP, sorted by Logical)
// cover [0, size) of the file exactly once with no hole, with no flag that
// makes the extent's location unstable or shared, aligned to sectors, and
// without two extents claiming the same physical bytes. size must be a
// positive multiple of SectorSize.
//
// Extents that reach past size are accepted and checked like the others:
// the last block of a file is often only partly used, and f2fs allocates
// whole sections to a pinned file and ext4 keeps FALLOC_FL_KEEP_SIZE
// preallocations, both reported past EOF. Only [0, size) is ever mapped
// (see Trim); holes past size do not matter.
func Validate(path string, size uint64, extents []Extent) error {
	if size == 0 || size%SectorSize != 0 {
		return &ExtentError{Path: path, Reason: fmt.Sprintf("file size %d is not a positive multiple of %d", size, SectorSize)}
	}
	var next uint64 // end of the previous extent
	for i, e := range extents {
		if bad := e.Flags &^ knownFlags; bad != 0 {
			return &ExtentError{Path: path, Offset: e.Logical, Flags: bad, Reason: "unknown extent flag"}
		}
		if bad := e.Flags & rejectedFlags; bad != 0 {
			return &ExtentError{Path: path, Offset: e.Logical, Flags: bad, Reason: rejectReason(bad)}
		}
		if e.Length == 0 {
			return &ExtentError{Path: path, Offset: e.Logical, Reason: "zero-length extent"}
		}
		if e.Logical+e.Length < e.Logical || e.Physical+e.Length < e.Physical {
			return &ExtentError{Path: path, Offset: e.Logical, Reason: "extent overflows 64 bits"}
		}
		if e.Logical%SectorSize != 0 || e.Physical%SectorSize != 0 || e.Length%SectorSize != 0 {
			return &ExtentError{Path: path, Offset: e.Logical, Reason: fmt.Sprintf("extent not aligned to %d-byte sectors (%s)", SectorSize, e)}
		}
		if e.Logical < next {
			return &ExtentError{Path: path, Offset: e.Logical, Reason: fmt.Sprintf("extent overlaps or is out of order with the previous one (expected offset >= %d)", next)}
		}
		if e.Logical > next && next < size {
			return &ExtentError{Path: path, Offset: next, Reason: fmt.Sprintf("hole of %d bytes (next extent at %d)", min(e.Logical, size)-next, e.Logical)}
		}
		if i == len(extents)-1 && e.Flags&FlagLast == 0 {
			return &ExtentError{Path: path, Offset: e.Logical, Reason: "extent list does not end with FIEMAP_EXTENT_LAST"}
		}
		next = e.Logical + e.Length
	}
	if next < size {
		return &ExtentError{Path: path, Offset: next, Reason: fmt.Sprintf("hole of %d bytes at end of file (size %d)", size-next, size)}
	}
	return checkPhysicalOverlap(path, extents)
}

// Trim returns the part of validated extents that maps [0, size): extents
// starting at or after size are dropped and the one straddling size is cut
// there. The last extent returned carries FlagLast.
func Trim(extents []Extent, size uint64) []Extent {
	out := make([]Extent, 0, len(extents))
	for _, e := range extents {
		if e.Logical >= size {
			break
		}
		if e.Logical+e.Length > size {
			e.Length = size - e.Logical
		}
		e.Flags &^= FlagLast
		out = append(out, e)
	}
	if n := len(out); n > 0 {
		out[n-1].Flags |= FlagLast
	}
	return out
}

func rejectReason(flags uint32) string {
	switch {
	case flags&(FlagUnknown|FlagDelalloc) != 0:
		return "physical location not known (fiemap.rst: fe_physical undefined); sync or allocate first"
	case flags&(FlagEncoded|FlagDataEncrypted) != 0:
		return "data is encoded or encrypted by the filesystem; on-disk bytes are not the file's and may move"
	case flags&(FlagDataInline|FlagDataTail|FlagNotAligned) != 0:
		return "data shares a block with metadata or other files"
	case flags&FlagShared != 0:
		return "blocks are shared with another file (reflink/snapshot/dedupe); writing them would change that file"
	}
	return "unsupported extent"
}

// checkPhysicalOverlap rejects two extents of the file that claim the same
// physical bytes. A sane filesystem never reports that for an unshared file,
// but if it did, two parts of the COW store would alias.
func checkPhysicalOverlap(path string, extents []Extent) error {
	type r struct{ start, end, logical uint64 }
	rs := make([]r, 0, len(extents))
	for _, e := range extents {
		rs = append(rs, r{e.Physical, e.Physical + e.Length, e.Logical})
	}
	slices.SortFunc(rs, func(a, b r) int { return cmp.Compare(a.start, b.start) })
	for i := 1; i < len(rs); i++ {
		if rs[i].start < rs[i-1].end {
			return &ExtentError{Path: path, Offset: rs[i].logical, Reason: fmt.Sprintf("physical range overlaps the extent at offset %d", rs[i-1].logical)}
		}
	}
	return nil
}

// Coalesce merges neighbours that are contiguous both logically and
// physically and have the same layout flags (UNWRITTEN). LAST is kept only on
// the final extent and MERGED is dropped (it does not change the layout).
// The result is canonical: Coalesce(Coalesce(x)) == Coalesce(x), and two
// extent lists that describe the same logical→physical byte mapping with the
// same flags coalesce to the same list. The input must be sorted by Logical
// and non-overlapping (as Validate ensures); it is not modified.
func Coalesce(extents []Extent) []Extent {
	out := make([]Extent, 0, len(extents))
	for _, e := range extents {
		e.Flags &^= FlagLast | FlagMerged
		if n := len(out); n > 0 {
			p := &out[n-1]
			if p.Logical+p.Length == e.Logical && p.Physical+p.Length == e.Physical && p.Flags&layoutFlags == e.Flags&layoutFlags {
				p.Length += e.Length
				continue
			}
		}
		out = append(out, e)
	}
	if n := len(out); n > 0 {
		out[n-1].Flags |= FlagLast
	}
	return out
}

// Segments translates extents (validated, byte units, Physical relative to the
// block device) into sector segments covering the first size bytes of the
// file, and merges segments that are contiguous on both sides regardless of
// flags: a dm-linear target does not care whether the fs considers the blocks
// written. size must be a multiple of SectorSize.
func Segments(extents []Extent, size uint64) []Segment {
	segs := make([]Segment, 0, len(extents))
	for _, e := range extents {
		if e.Logical >= size {
			break
		}
		l := e.Length
		if e.Logical+l > size {
			l = size - e.Logical
		}
		s := Segment{Start: e.Logical / SectorSize, Length: l / SectorSize, Offset: e.Physical / SectorSize}
		if n := len(segs); n > 0 {
			p := &segs[n-1]
			if p.Start+p.Length == s.Start && p.Offset+p.Length == s.Offset {
				p.Length += s.Length
				continue
			}
		}
		segs = append(segs, s)
	}
	return segs
}

// DMTable renders segments as a device-mapper table in dmsetup's format, one
// `<start> <length> linear <major>:<minor> <offset>` line per segment.
func DMTable(segs []Segment, major, minor uint32) string {
	dev := fmt.Sprintf(" linear %d:%d ", major, minor)
	b := make([]byte, 0, len(segs)*(len(dev)+30))
	for _, s := range segs {
		b = strconv.AppendUint(b, s.Start, 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, s.Length, 10)
		b = append(b, dev...)
		b = strconv.AppendUint(b, s.Offset, 10)
		b = append(b, '\n')
	}
	return string(b)
}
