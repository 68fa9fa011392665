// Package devspec parses and resolves the ways a user names a block device:
// a path, UUID=, LABEL=, PARTUUID= or PARTLABEL=, as fstab(5) and the kernel's
// root= do.
package devspec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
)

// Kind is how a Spec names its device.
type Kind string

const (
	Path      Kind = "path"
	UUID      Kind = "UUID"
	Label     Kind = "LABEL"
	PartUUID  Kind = "PARTUUID"
	PartLabel Kind = "PARTLABEL"
)

// Spec is a parsed device specification.
type Spec struct {
	Kind  Kind
	Value string
}

func (s Spec) String() string {
	if s.Kind == Path {
		return s.Value
	}
	return string(s.Kind) + "=" + s.Value
}

// Parse parses "/dev/vda", "UUID=…", "LABEL=…", "PARTUUID=…" or "PARTLABEL=…".
// Values may be quoted ("LABEL=\"my data\""), as in fstab.
func Parse(s string) (Spec, error) {
	if s == "" {
		return Spec{}, errors.New("empty device specification: want a path, UUID=, LABEL=, PARTUUID= or PARTLABEL=")
	}
	if strings.HasPrefix(s, "/") {
		return Spec{Kind: Path, Value: s}, nil
	}
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return Spec{}, fmt.Errorf("device specification %q: want an absolute path, UUID=, LABEL=, PARTUUID= or PARTLABEL=", s)
	}
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		v = v[1 : len(v)-1]
	}
	if v == "" {
		return Spec{}, fmt.Errorf("device specification %q: empty %s value", s, k)
	}
	switch kind := Kind(strings.ToUpper(k)); kind {
	case UUID, PartUUID:
		return Spec{Kind: kind, Value: strings.ToLower(v)}, nil
	case Label, PartLabel:
		return Spec{Kind: kind, Value: v}, nil
	}
	return Spec{}, fmt.Errorf("device specification %q: unknown key %q (want UUID, LABEL, PARTUUID or PARTLABEL)", s, k)
}

// Superblock is the identity a filesystem carries in its superblock.
type Superblock struct {
	Type  string // "ext4" (any of ext2/3/4) or "f2fs"
	UUID  string // lower-case, dashed
	Label string
}

// ext2/3/4 superblock: 1024 bytes into the device; s_magic at 0x38,
// s_uuid[16] at 0x68, s_volume_name[16] at 0x78 (include/linux/ext2_fs.h,
// fs/ext4/ext4.h struct ext4_super_block).
const (
	extSuperOffset = 1024
	extMagicOff    = 0x38
	extUUIDOff     = 0x68
	extLabelOff    = 0x78
	extMagic       = 0xEF53
)

// f2fs superblock: 1024 bytes into the device (F2FS_SUPER_OFFSET); magic at
// 0, uuid[16] at 0x6C, volume_name[512] as UTF-16LE at 0x7C
// (include/linux/f2fs_fs.h struct f2fs_super_block; util-linux libblkid
// superblocks/f2fs.c reads the same).
const (
	f2fsSuperOffset = 1024
	f2fsMagic       = 0xF2F52010
	f2fsUUIDOff     = 0x6C
	f2fsLabelOff    = 0x7C
	f2fsLabelLen    = 512 // UTF-16 code units
)

// SuperblockProbeSize is how many bytes from the start of a device
// ParseSuperblock needs.
const SuperblockProbeSize = f2fsSuperOffset + f2fsLabelOff + 2*f2fsLabelLen

// ErrUnknownFS means no filesystem this package knows was found.
var ErrUnknownFS = errors.New("no known filesystem superblock")

// ParseSuperblock reads filesystem identity from the first
// SuperblockProbeSize bytes of a device. It knows the ext family and f2fs.
func ParseSuperblock(b []byte) (Superblock, error) {
	if len(b) < SuperblockProbeSize {
		return Superblock{}, fmt.Errorf("superblock probe: have %d bytes, need %d", len(b), SuperblockProbeSize)
	}
	sb := b[extSuperOffset:]
	if binary.LittleEndian.Uint16(sb[extMagicOff:]) == extMagic {
		u := sb[extUUIDOff : extUUIDOff+16]
		label := sb[extLabelOff : extLabelOff+16]
		if i := bytes.IndexByte(label, 0); i >= 0 {
			label = label[:i]
		}
		return Superblock{
			Type:  "ext4",
			UUID:  fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]),
			Label: string(label),
		}, nil
	}
	if sb := b[f2fsSuperOffset:]; binary.LittleEndian.Uint32(sb) == f2fsMagic {
		u := sb[f2fsUUIDOff : f2fsUUIDOff+16]
		var units []uint16
		for i := 0; i < f2fsLabelLen; i++ {
			c := binary.LittleEndian.Uint16(sb[f2fsLabelOff+2*i:])
			if c == 0 {
				break
			}
			units = append(units, c)
		}
		return Superblock{
			Type:  "f2fs",
			UUID:  fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]),
			Label: string(utf16.Decode(units)),
		}, nil
	}
	return Superblock{}, ErrUnknownFS
}
