package fiemap

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Layout of struct fiemap and struct fiemap_extent, from
// include/uapi/linux/fiemap.h. Both are naturally aligned with no padding, in
// host byte order (every Linux architecture Go supports for this is
// little-endian except s390x/ppc64/mips64; we encode with the native order).
//
//	struct fiemap {
//		__u64 fm_start;          //  0
//		__u64 fm_length;         //  8
//		__u32 fm_flags;          // 16
//		__u32 fm_mapped_extents; // 20
//		__u32 fm_extent_count;   // 24
//		__u32 fm_reserved;       // 28
//		struct fiemap_extent fm_extents[]; // 32
//	};
//	struct fiemap_extent {
//		__u64 fe_logical;        //  0
//		__u64 fe_physical;       //  8
//		__u64 fe_length;         // 16
//		__u64 fe_reserved64[2];  // 24
//		__u32 fe_flags;          // 40
//		__u32 fe_reserved[3];    // 44
//	};                           // 56
const (
	headerSize = 32
	extentSize = 56
)

// Request flags (fm_flags).
const (
	// FIEMAP_FLAG_SYNC: "sync file data before map", so delayed-allocation
	// extents get real blocks first (fiemap.rst).
	fiemapFlagSync uint32 = 0x1
)

// fiemapMaxOffset asks for the map up to the end of the file. Asking for a
// shorter range is wrong for paging: iomap_fiemap() marks the last extent
// *of the requested range* with FIEMAP_EXTENT_LAST (fs/iomap/fiemap.c).
const fiemapMaxOffset = ^uint64(0)

// byteOrder is the host order used by the kernel for the ioctl structs.
var byteOrder = binary.NativeEndian

// encodeRequest writes a struct fiemap header into buf (which must hold the
// header plus count extents) asking for up to count extents from logical
// byte start to the end of the file, and zeroes the extent area.
func encodeRequest(buf []byte, start uint64, flags uint32, count uint32) error {
	if len(buf) < headerSize+int(count)*extentSize {
		return fmt.Errorf("fiemap buffer of %d bytes too small for %d extents", len(buf), count)
	}
	clear(buf[:headerSize+int(count)*extentSize])
	byteOrder.PutUint64(buf[0:], start)
	byteOrder.PutUint64(buf[8:], fiemapMaxOffset-start)
	byteOrder.PutUint32(buf[16:], flags)
	byteOrder.PutUint32(buf[20:], 0)
	byteOrder.PutUint32(buf[24:], count)
	return nil
}

var errShortBuffer = errors.New("fiemap reply larger than its buffer")

// decodeReply parses the kernel's reply in buf and appends the extents to dst.
// It trusts nothing: fm_mapped_extents must not exceed the requested count or
// the buffer.
func decodeReply(dst []Extent, buf []byte) ([]Extent, error) {
	if len(buf) < headerSize {
		return dst, errShortBuffer
	}
	mapped := byteOrder.Uint32(buf[20:])
	count := byteOrder.Uint32(buf[24:])
	if mapped > count {
		return dst, fmt.Errorf("fiemap reply maps %d extents, more than the %d asked for", mapped, count)
	}
	if uint64(len(buf)) < headerSize+uint64(mapped)*extentSize {
		return dst, errShortBuffer
	}
	for i := uint32(0); i < mapped; i++ {
		p := buf[headerSize+int(i)*extentSize:]
		dst = append(dst, Extent{
			Logical:  byteOrder.Uint64(p[0:]),
			Physical: byteOrder.Uint64(p[8:]),
			Length:   byteOrder.Uint64(p[16:]),
			Flags:    byteOrder.Uint32(p[40:]),
		})
	}
	return dst, nil
}

// collect drives paging: call(start) must perform one FS_IOC_FIEMAP from
// logical byte start and return the decoded extents of that batch. collect
// stops at the extent flagged LAST, or when a batch is empty (no more
// extents: the rest of the file, if any, is a hole, which Validate reports).
// This is the loop of lvm2's _stats_get_extents_for_file (libdm-stats.c) and
// e2fsprogs' filefrag.
func collect(call func(start uint64) ([]Extent, error)) ([]Extent, error) {
	var all []Extent
	var start uint64
	for {
		batch, err := call(start)
		if err != nil {
			return all, err
		}
		if len(batch) == 0 {
			return all, nil
		}
		for _, e := range batch {
			if len(all) > 0 {
				p := all[len(all)-1]
				if e.Logical < p.Logical+p.Length {
					return all, fmt.Errorf("fiemap returned extent at %d overlapping the previous one (%s)", e.Logical, p)
				}
			}
			all = append(all, e)
			if e.Flags&FlagLast != 0 {
				return all, nil
			}
		}
		last := batch[len(batch)-1]
		next := last.Logical + last.Length
		if next <= start || next < last.Logical {
			// A reply that does not advance would loop forever.
			return all, fmt.Errorf("fiemap paging stuck at offset %d", start)
		}
		start = next
	}
}
