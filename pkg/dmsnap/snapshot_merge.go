package dmsnap

// SnapshotMergeTable is "snapshot-merge <origin> <cow> P <chunk>". It takes
// the place of the snapshot-origin target on the origin device (snapshot.rst:
// "This target assumes the role of the snapshot-origin target and must not be
// loaded if the snapshot-origin is still present for <origin>") and copies
// the COW's saved chunks back into the origin in the background; the merge
// state is committed in the COW metadata, so reloading this table after a
// power cut resumes the merge.
type SnapshotMergeTable struct {
	origin, cow Dev
	sectors     uint64
	chunk       uint32
}

// SnapshotMerge builds a one-target snapshot-merge table; the arguments are
// those of the snapshot table whose COW is merged.
func SnapshotMerge(origin, cow Dev, sectors uint64, chunk uint32) (*SnapshotMergeTable, error) {
	if err := checkSnapshotArgs("snapshot-merge", origin, cow, sectors, chunk); err != nil {
		return nil, err
	}
	return &SnapshotMergeTable{origin: origin, cow: cow, sectors: sectors, chunk: chunk}, nil
}

// Targets implements Table.
func (t *SnapshotMergeTable) Targets() []TargetSpec {
	return []TargetSpec{{Start: 0, Length: t.sectors, Type: "snapshot-merge", Params: snapshotParams(t.origin, t.cow, t.chunk)}}
}

// Sectors implements Table.
func (t *SnapshotMergeTable) Sectors() uint64 { return t.sectors }

func (*SnapshotMergeTable) sealed() {}
