package main

import (
	"fmt"

	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"github.com/cpinit/cpinit/pkg/fiemap"
)

// The three packages each have their own segment type on purpose (fiemap
// speaks of file extents on the filesystem's device, bootstate of what is
// recorded, dmsnap of what is loaded). These conversions are the only place
// they meet; each checks what the next layer relies on.

// extentMapFromFiemap turns a validated fiemap.Map, already bound to the
// userdata partition, into the geometry the record keeps.
func extentMapFromFiemap(m *fiemap.Map, chunkSectors uint32) (bootstate.ExtentMap, error) {
	em := bootstate.ExtentMap{
		DevMajor:    m.Device.Major,
		DevMinor:    m.Device.Minor,
		DevSectors:  m.Device.Sectors,
		ChunkSector: chunkSectors,
	}
	for _, s := range m.Segments {
		em.Segments = append(em.Segments, bootstate.Segment{Logical: s.Start, Physical: s.Offset, Length: s.Length})
	}
	if err := em.Validate(); err != nil {
		return bootstate.ExtentMap{}, fmt.Errorf("extent map of %s: %w", m.Path, err)
	}
	return em, nil
}

// dmConfig is the dm-snapshot configuration for a recorded map. The origin
// is the device the map names: the caller has checked (Decide does, against
// cpinit.userdata) that it is the userdata partition.
func dmConfig(m *bootstate.ExtentMap) dmsnap.Config {
	origin := dmsnap.Dev{Major: m.DevMajor, Minor: m.DevMinor}
	cfg := dmsnap.Config{
		Origin:        origin,
		OriginSectors: m.DevSectors,
		ChunkSectors:  m.ChunkSector,
	}
	for _, s := range m.Segments {
		cfg.Cow = append(cfg.Cow, dmsnap.Segment{Dev: origin, Start: s.Physical, Length: s.Length})
	}
	return cfg
}
