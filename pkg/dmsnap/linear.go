package dmsnap

import "fmt"

// Segment is a run of sectors on a block device: one extent of the COW file
// as FIEMAP reports it, converted to 512-byte sectors.
type Segment struct {
	Dev    Dev
	Start  uint64 // first sector on Dev
	Length uint64 // sectors
}

// LinearTable maps a concatenation of segments: target i maps the device's
// sectors [sum(len[0..i)), +len[i]) onto segment i. Built by Linear.
type LinearTable struct {
	specs []TargetSpec
	segs  []Segment
	size  uint64
}

// Linear builds a table of one "linear <dev> <start>" target per segment
// (drivers/md/dm-linear.c). Segments must be non-empty; their order is the
// order of the mapped device.
func Linear(segs []Segment) (*LinearTable, error) {
	if len(segs) == 0 {
		return nil, fmt.Errorf("linear: no segments")
	}
	t := &LinearTable{specs: make([]TargetSpec, 0, len(segs)), segs: append([]Segment(nil), segs...)}
	var pos uint64
	for i, s := range segs {
		if s.Dev.IsZero() {
			return nil, fmt.Errorf("linear: segment %d: no device", i)
		}
		if s.Length == 0 {
			return nil, fmt.Errorf("linear: segment %d: zero length", i)
		}
		if s.Start+s.Length < s.Start || pos+s.Length < pos {
			return nil, fmt.Errorf("linear: segment %d: sector overflow", i)
		}
		t.specs = append(t.specs, TargetSpec{
			Start:  pos,
			Length: s.Length,
			Type:   "linear",
			Params: fmt.Sprintf("%s %d", s.Dev, s.Start),
		})
		pos += s.Length
	}
	t.size = pos
	return t, nil
}

// Targets implements Table.
func (t *LinearTable) Targets() []TargetSpec { return t.specs }

// Sectors implements Table.
func (t *LinearTable) Sectors() uint64 { return t.size }

// Segments returns a copy of the segments the table was built from.
func (t *LinearTable) Segments() []Segment { return append([]Segment(nil), t.segs...) }

func (*LinearTable) sealed() {}
