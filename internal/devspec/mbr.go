package devspec

import (
	"encoding/binary"
	"strconv"
	"strings"
)

// An MBR (DOS) partition table has no partition GUIDs. The kernel makes
// up a PARTUUID for each of its partitions from the disk's 32-bit NT disk
// signature and the partition's number, as "%08x-%02x" (block/partitions/
// msdos.c, set_info), so root=PARTUUID=8c2f0b9e-01 names the first
// partition of the disk whose signature is 0x8c2f0b9e; logical partitions
// are numbered from 5, and the number is hexadecimal (partition 10 is
// "-0a"). blkid(8) prints the same string. Documentation/admin-guide/
// kernel-parameters.txt (root=): "PARTUUID=SSSSSSSS-PP, where SSSSSSSS is
// a zero-filled hex representation of the 32-bit 'NT disk signature', and
// PP is a zero-filled hex representation of the 1-based partition number".

// Offsets in the MBR sector (the classic layout).
const (
	mbrSectorSize   = 512
	mbrSignatureOff = 0x1b8 // NT disk signature, little-endian
	mbrTableOff     = 0x1be // four 16-byte partition entries
	mbrTypeOff      = 4     // partition type within an entry
	mbrTypeGPT      = 0xee  // GPT's protective MBR
)

// ParseMBRPartUUID splits an MBR-style PARTUUID value ("8c2f0b9e-01",
// lower-case as Parse leaves it) into the disk signature and the partition
// number. ok is false for any other form, a GPT GUID included.
func ParseMBRPartUUID(v string) (sig uint32, part int, ok bool) {
	s, p, found := strings.Cut(v, "-")
	if !found || len(s) != 8 || len(p) < 2 || len(p) > 3 {
		return 0, 0, false
	}
	sig64, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return 0, 0, false
	}
	n, err := strconv.ParseUint(p, 16, 16)
	if err != nil || n == 0 {
		return 0, 0, false
	}
	return uint32(sig64), int(n), true
}

// MBRDiskSignature returns the NT disk signature of a DOS partition table
// in sector (the disk's first 512 bytes). ok is false when the sector is
// not an MBR (no 0x55AA boot signature) or is GPT's protective MBR: the
// kernel reads a GPT disk's partitions from its GPT, whose PARTUUIDs are
// the partitions' GUIDs, never "sig-NN".
func MBRDiskSignature(sector []byte) (sig uint32, ok bool) {
	if len(sector) < mbrSectorSize || sector[510] != 0x55 || sector[511] != 0xaa {
		return 0, false
	}
	for i := 0; i < 4; i++ {
		if sector[mbrTableOff+16*i+mbrTypeOff] == mbrTypeGPT {
			return 0, false
		}
	}
	return binary.LittleEndian.Uint32(sector[mbrSignatureOff:]), true
}
