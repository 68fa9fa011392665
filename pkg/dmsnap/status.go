package dmsnap

import (
	"fmt"
	"strconv"
	"strings"
)

// SnapState is the condition a snapshot or snapshot-merge target reports
// (drivers/md/dm-snap.c snapshot_status, STATUSTYPE_INFO).
type SnapState int

const (
	// SnapActive: the status carries usage numbers; the snapshot is valid.
	SnapActive SnapState = iota
	// SnapInvalid: "Invalid". The COW filled up or hit an I/O error and the
	// kernel dropped the snapshot (header valid=0). Rollback is impossible;
	// a merge refuses to run ("Snapshot is invalid: can't merge").
	SnapInvalid
	// SnapMergeFailed: "Merge failed". An I/O error stopped a merge; the
	// origin holds a mix of old and new chunks until the merge is reloaded.
	SnapMergeFailed
	// SnapOverflow: "Overflow". A write to the snapshot device ran out of
	// COW space with the "PO" store; further snapshot writes fail.
	SnapOverflow
	// SnapUnknown: "Unknown", a store without usage accounting.
	SnapUnknown
)

func (s SnapState) String() string {
	switch s {
	case SnapActive:
		return "active"
	case SnapInvalid:
		return "Invalid"
	case SnapMergeFailed:
		return "Merge failed"
	case SnapOverflow:
		return "Overflow"
	case SnapUnknown:
		return "Unknown"
	}
	return fmt.Sprintf("SnapState(%d)", int(s))
}

// SnapshotStatus is the parsed status of a snapshot or snapshot-merge target:
// "<sectors_allocated>/<total_sectors> <metadata_sectors>" or one of the
// words of SnapState. Allocated and Total include metadata (snapshot.rst).
type SnapshotStatus struct {
	State     SnapState
	Allocated uint64 // sectors in use in the COW, data + metadata
	Total     uint64 // size of the COW device in sectors
	Metadata  uint64 // sectors of the COW holding the header and exception tables
}

// DataSectors is the number of COW sectors holding saved chunks: what a
// merge still has to copy back.
func (s SnapshotStatus) DataSectors() uint64 {
	if s.State != SnapActive || s.Allocated < s.Metadata {
		return 0
	}
	return s.Allocated - s.Metadata
}

// MergeDone reports whether a snapshot-merge target has copied every chunk
// back: snapshot.rst, "Merging has finished when the number of sectors
// holding data is zero, in other words <sectors_allocated> ==
// <metadata_sectors>".
func (s SnapshotStatus) MergeDone() bool {
	return s.State == SnapActive && s.Allocated == s.Metadata
}

func (s SnapshotStatus) String() string {
	if s.State != SnapActive {
		return s.State.String()
	}
	return fmt.Sprintf("%d/%d %d", s.Allocated, s.Total, s.Metadata)
}

// ParseSnapshotStatus parses the status text of one snapshot or
// snapshot-merge target (the part after "<start> <length> <type> ").
func ParseSnapshotStatus(status string) (SnapshotStatus, error) {
	s := strings.TrimSpace(status)
	switch s {
	case "Invalid":
		return SnapshotStatus{State: SnapInvalid}, nil
	case "Merge failed":
		return SnapshotStatus{State: SnapMergeFailed}, nil
	case "Overflow":
		return SnapshotStatus{State: SnapOverflow}, nil
	case "Unknown":
		return SnapshotStatus{State: SnapUnknown}, nil
	}
	f := strings.Fields(s)
	if len(f) != 2 {
		return SnapshotStatus{}, fmt.Errorf("snapshot status %q: want <allocated>/<total> <metadata>", status)
	}
	a, t, ok := strings.Cut(f[0], "/")
	if !ok {
		return SnapshotStatus{}, fmt.Errorf("snapshot status %q: want <allocated>/<total>", status)
	}
	var st SnapshotStatus
	var err error
	if st.Allocated, err = strconv.ParseUint(a, 10, 64); err != nil {
		return SnapshotStatus{}, fmt.Errorf("snapshot status %q: allocated: %w", status, err)
	}
	if st.Total, err = strconv.ParseUint(t, 10, 64); err != nil {
		return SnapshotStatus{}, fmt.Errorf("snapshot status %q: total: %w", status, err)
	}
	if st.Metadata, err = strconv.ParseUint(f[1], 10, 64); err != nil {
		return SnapshotStatus{}, fmt.Errorf("snapshot status %q: metadata: %w", status, err)
	}
	if st.Allocated > st.Total || st.Metadata > st.Allocated {
		return SnapshotStatus{}, fmt.Errorf("snapshot status %q: inconsistent numbers", status)
	}
	st.State = SnapActive
	return st, nil
}
