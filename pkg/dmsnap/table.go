package dmsnap

import (
	"fmt"
	"strings"
)

// TargetSpec is one line of a device-mapper table as the kernel sees it:
// "<start> <length> <type> <params>", in 512-byte sectors. It is what goes
// into DM_TABLE_LOAD and what DM_TABLE_STATUS returns; with a status query
// Params holds the status text instead of the table parameters.
type TargetSpec struct {
	Start  uint64 // first sector of the device this target maps
	Length uint64 // sectors
	Type   string // target type, e.g. "linear", "snapshot-merge"
	Params string
}

// String formats the spec the way `dmsetup table` and `dmsetup status` print
// one line (without the device name prefix).
func (s TargetSpec) String() string {
	return fmt.Sprintf("%d %d %s %s", s.Start, s.Length, s.Type, s.Params)
}

// maxTargetType is the room for a target type name in struct dm_target_spec
// (DM_MAX_TYPE_NAME, including the NUL).
const maxTargetType = 16

func (s TargetSpec) validate() error {
	if s.Length == 0 {
		return fmt.Errorf("target %q at %d: zero length", s.Type, s.Start)
	}
	if s.Type == "" || len(s.Type) >= maxTargetType || strings.ContainsRune(s.Type, 0) {
		return fmt.Errorf("target type %q: want 1..%d bytes without NUL", s.Type, maxTargetType-1)
	}
	if strings.ContainsRune(s.Params, 0) {
		return fmt.Errorf("target %q at %d: params contain NUL", s.Type, s.Start)
	}
	return nil
}

// Table is a complete device-mapper table built by one of this package's
// constructors (Linear, SnapshotOrigin, Snapshot, SnapshotMerge). The
// interface is sealed: callers cannot hand the kernel a target we did not
// validate.
type Table interface {
	// Targets returns the table's lines in order, contiguous from sector 0.
	Targets() []TargetSpec
	// Sectors is the size of the mapped device.
	Sectors() uint64
	sealed()
}

// FormatTable renders lines the way `dmsetup table NAME` prints them, one
// line per target, each ending in a newline.
func FormatTable(specs []TargetSpec) string {
	var b strings.Builder
	for _, s := range specs {
		b.WriteString(s.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// checkContiguous verifies that specs cover [0, total) without gaps or
// overlaps, as dm_table_complete requires.
func checkContiguous(specs []TargetSpec) (uint64, error) {
	var next uint64
	for i, s := range specs {
		if err := s.validate(); err != nil {
			return 0, err
		}
		if s.Start != next {
			return 0, fmt.Errorf("target %d starts at sector %d, want %d", i, s.Start, next)
		}
		if s.Start+s.Length < s.Start {
			return 0, fmt.Errorf("target %d: sector overflow", i)
		}
		next = s.Start + s.Length
	}
	if len(specs) == 0 {
		return 0, fmt.Errorf("empty table")
	}
	return next, nil
}

// SameTargets reports whether two tables are identical line by line. The
// kernel echoes table parameters in canonical form, so this is how the
// operations decide whether an existing device already has the table they
// would load.
func SameTargets(a, b []TargetSpec) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Start != y.Start || x.Length != y.Length || x.Type != y.Type ||
			strings.TrimSpace(x.Params) != strings.TrimSpace(y.Params) {
			return false
		}
	}
	return true
}
