package dmsnap

import (
	"encoding/binary"
	"fmt"
)

// The persistent exception store's on-disk header, first chunk of the COW
// (drivers/md/dm-snap-persistent.c struct disk_header, little endian):
// magic "SnAp", valid, version, chunk_size (sectors). A header whose magic
// is zero makes the kernel initialise a new, empty snapshot; any other
// non-"SnAp" magic fails the table load ("Invalid or corrupt snapshot").
const (
	cowMagic       = 0x70416e53 // SNAP_MAGIC
	cowDiskVersion = 1          // SNAPSHOT_DISK_VERSION
	cowHeaderSize  = 16
)

// CowHeaderState classifies the first chunk of a COW device.
type CowHeaderState int

const (
	// CowFresh: magic is zero; loading a snapshot starts an empty checkpoint.
	CowFresh CowHeaderState = iota
	// CowValid: a valid persistent snapshot: a checkpoint exists.
	CowValid
	// CowInvalidated: a persistent snapshot the kernel dropped (overflow or
	// I/O error). It can no longer roll anything back.
	CowInvalidated
	// CowGarbage: neither zero nor "SnAp": not a COW we prepared.
	CowGarbage
)

func (s CowHeaderState) String() string {
	switch s {
	case CowFresh:
		return "fresh"
	case CowValid:
		return "valid"
	case CowInvalidated:
		return "invalidated"
	case CowGarbage:
		return "garbage"
	}
	return fmt.Sprintf("CowHeaderState(%d)", int(s))
}

// CowHeader is the decoded header chunk of a persistent COW store.
type CowHeader struct {
	State        CowHeaderState
	Version      uint32
	ChunkSectors uint32
}

// ParseCowHeader decodes the first bytes of a COW device. It never panics;
// fewer than 16 bytes is an error.
func ParseCowHeader(b []byte) (CowHeader, error) {
	if len(b) < cowHeaderSize {
		return CowHeader{}, fmt.Errorf("COW header: %d bytes, want %d", len(b), cowHeaderSize)
	}
	magic := binary.LittleEndian.Uint32(b[0:])
	valid := binary.LittleEndian.Uint32(b[4:])
	h := CowHeader{
		Version:      binary.LittleEndian.Uint32(b[8:]),
		ChunkSectors: binary.LittleEndian.Uint32(b[12:]),
	}
	switch {
	case magic == 0:
		h.State = CowFresh
	case magic != cowMagic:
		h.State = CowGarbage
	case h.Version != cowDiskVersion:
		// The kernel refuses other versions; so do we.
		h.State = CowGarbage
	case valid == 0:
		h.State = CowInvalidated
	default:
		h.State = CowValid
	}
	return h, nil
}
