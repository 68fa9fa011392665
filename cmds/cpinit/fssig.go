package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// noReplayOption is the mount option that mounts fstype read-only without
// replaying its journal (ext4: noload) or its roll-forward recovery (f2fs:
// norecovery; f2fs refuses noload), so that a look at a device writes
// nothing. ok is false for a filesystem cpinit does not checkpoint.
func noReplayOption(fstype string) (opt string, ok bool) {
	switch fstype {
	case "ext4":
		return "noload", true
	case "f2fs":
		return "norecovery", true
	}
	return "", false
}

// fsSignatureSize is how much of a device fsSignature looks at.
const fsSignatureSize = 68 << 10

// fsSignature names the filesystem or swap signature at the start of a
// device (b holds its first bytes, at most fsSignatureSize), or "" if
// there is none it knows. cpinit's metadata store has none of these, so a
// store device that carries one is the wrong device: the kernel command
// line names another partition, which cpinit must neither take for a blank
// store nor format. Offsets from util-linux libblkid.
func fsSignature(b []byte) string {
	at := func(off int, magic []byte) bool {
		return len(b) >= off+len(magic) && bytes.Equal(b[off:off+len(magic)], magic)
	}
	le32 := func(off int) uint32 {
		if len(b) < off+4 {
			return 0
		}
		return binary.LittleEndian.Uint32(b[off:])
	}
	switch {
	case len(b) >= 1082 && binary.LittleEndian.Uint16(b[1080:]) == 0xEF53:
		name := "an ext2/3/4 filesystem"
		if label := string(bytes.TrimRight(b[1024+120:1024+136], "\x00")); label != "" {
			name += fmt.Sprintf(" labelled %q", label)
		}
		return name
	case le32(1024) == 0xF2F52010:
		return "an f2fs filesystem"
	case le32(1024) == 0xE0F5E1E2:
		return "an erofs filesystem"
	case at(0, []byte("XFSB")):
		return "an xfs filesystem"
	case at(0, []byte("hsqs")):
		return "a squashfs filesystem"
	case at(65536+64, []byte("_BHRfS_M")):
		return "a btrfs filesystem"
	case at(4086, []byte("SWAPSPACE2")), at(4086, []byte("SWAP-SPACE")):
		return "swap space"
	case len(b) >= 512 && b[510] == 0x55 && b[511] == 0xAA && (at(54, []byte("FAT")) || at(82, []byte("FAT32"))):
		return "a FAT filesystem"
	}
	return ""
}

// deviceSignature reads the start of dev and returns fsSignature of it.
func deviceSignature(dev io.ReaderAt) (string, error) {
	b := make([]byte, fsSignatureSize)
	n, err := dev.ReadAt(b, 0)
	if err != nil && err != io.EOF {
		return "", err
	}
	return fsSignature(b[:n]), nil
}
