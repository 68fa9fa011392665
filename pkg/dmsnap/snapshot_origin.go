package dmsnap

import "fmt"

// SnapshotOriginTable is "snapshot-origin <origin>" over the whole origin
// device: reads pass straight through; the first write to each chunk first
// copies the chunk's old contents into every snapshot's COW store.
type SnapshotOriginTable struct {
	origin  Dev
	sectors uint64
}

// SnapshotOrigin builds a one-target snapshot-origin table covering sectors
// sectors of origin (Documentation/admin-guide/device-mapper/snapshot.rst).
func SnapshotOrigin(origin Dev, sectors uint64) (*SnapshotOriginTable, error) {
	if origin.IsZero() {
		return nil, fmt.Errorf("snapshot-origin: no origin device")
	}
	if sectors == 0 {
		return nil, fmt.Errorf("snapshot-origin: zero length")
	}
	return &SnapshotOriginTable{origin: origin, sectors: sectors}, nil
}

// Targets implements Table.
func (t *SnapshotOriginTable) Targets() []TargetSpec {
	return []TargetSpec{{Start: 0, Length: t.sectors, Type: "snapshot-origin", Params: t.origin.String()}}
}

// Sectors implements Table.
func (t *SnapshotOriginTable) Sectors() uint64 { return t.sectors }

func (*SnapshotOriginTable) sealed() {}
