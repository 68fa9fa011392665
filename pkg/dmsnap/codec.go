package dmsnap

// Pure encoding and decoding of the device-mapper ioctl parameter block
// (include/uapi/linux/dm-ioctl.h): struct dm_ioctl followed by a variable
// data area. Nothing here touches the kernel or uses unsafe; ioctl_linux.go
// passes the bytes to the kernel. The layout is the native one (the kernel
// and we run on the same CPU); all supported targets are little endian, but
// we use binary.NativeEndian to say what we mean.
//
// Buffer semantics, from drivers/md/dm-ioctl.c:
//   - data_size is the size of the whole block, header included. On input it
//     tells the kernel how much to copy (copy_params); on output it is how
//     much the kernel filled in (never more than the input size).
//   - data_start is where the data area starts. On output the kernel sets it
//     to sizeof(struct dm_ioctl) rounded up to 8 (get_result_buffer).
//   - When the answer does not fit, the kernel sets DM_BUFFER_FULL_FLAG and
//     returns success: the caller must retry with a bigger buffer.
//   - Records in the data area are 8-byte aligned (align_ptr). The `next`
//     field of struct dm_target_spec means different things by direction:
//     on DM_TABLE_LOAD input it is the offset of the next spec from the start
//     of *this* spec (populate_table/next_target); on DM_TABLE_STATUS output
//     it is the offset of the next spec from the start of the data area
//     (retrieve_status: spec->next = outptr - outbuf). dm_name_list.next and
//     dm_target_versions.next are relative to the current record.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
)

var ne = binary.NativeEndian

// Sizes and offsets of struct dm_ioctl and friends.
const (
	sizeofIoctl      = 312 // sizeof(struct dm_ioctl)
	ioctlDataOffset  = 305 // offsetof(struct dm_ioctl, data): the kernel's minimum data_size
	sizeofTargetSpec = 40  // sizeof(struct dm_target_spec)
	nameLen          = 128 // DM_NAME_LEN
	uuidLen          = 129 // DM_UUID_LEN
	dataStart        = (sizeofIoctl + 7) &^ 7

	offVersion     = 0
	offDataSize    = 12
	offDataStart   = 16
	offTargetCount = 20
	offOpenCount   = 24
	offFlags       = 28
	offEventNr     = 32
	offDev         = 40
	offName        = 48
	offUUID        = offName + nameLen
)

// Interface version we announce. The kernel accepts any request whose major
// equals its own and whose minor is not newer (dm-ioctl.c check_version), and
// writes its own version back. 4.0.0 is what every call here needs; sending
// golang.org/x/sys's DM_VERSION_MINOR (newer than the 6.1 kernel's 4.47)
// would be refused with EINVAL.
var ioctlVersion = [3]uint32{4, 0, 0}

// Flags of struct dm_ioctl (dm-ioctl.h). Kept here so the codec builds on
// every OS; ioctl_linux_test.go checks them against golang.org/x/sys/unix.
const (
	flagReadonly        = 1 << 0  // DM_READONLY_FLAG
	flagSuspend         = 1 << 1  // DM_SUSPEND_FLAG
	flagPersistentDev   = 1 << 3  // DM_PERSISTENT_DEV_FLAG
	flagStatusTable     = 1 << 4  // DM_STATUS_TABLE_FLAG
	flagActivePresent   = 1 << 5  // DM_ACTIVE_PRESENT_FLAG
	flagInactivePresent = 1 << 6  // DM_INACTIVE_PRESENT_FLAG
	flagBufferFull      = 1 << 8  // DM_BUFFER_FULL_FLAG
	flagSkipLockfs      = 1 << 10 // DM_SKIP_LOCKFS_FLAG
	flagNoflush         = 1 << 11 // DM_NOFLUSH_FLAG
	flagQueryInactive   = 1 << 12 // DM_QUERY_INACTIVE_TABLE_FLAG
	flagUUID            = 1 << 14 // DM_UUID_FLAG
	flagDataOut         = 1 << 16 // DM_DATA_OUT_FLAG
	flagDeferredRemove  = 1 << 17 // DM_DEFERRED_REMOVE
	flagInternalSuspend = 1 << 18 // DM_INTERNAL_SUSPEND_FLAG

	nameListHasUUID = 1 // DM_NAME_LIST_FLAG_HAS_UUID
)

// cmd is a device-mapper ioctl command number (enum in dm-ioctl.h).
type cmd uint8

const (
	cmdVersion cmd = iota
	cmdRemoveAll
	cmdListDevices
	cmdDevCreate
	cmdDevRemove
	cmdDevRename
	cmdDevSuspend
	cmdDevStatus
	cmdDevWait
	cmdTableLoad
	cmdTableClear
	cmdTableDeps
	cmdTableStatus
	cmdListVersions
	cmdTargetMsg
	cmdDevSetGeometry
)

// String names the command the way errors read: "dm create", "dm load", ...
func (c cmd) String() string {
	switch c {
	case cmdVersion:
		return "version"
	case cmdRemoveAll:
		return "remove-all"
	case cmdListDevices:
		return "list"
	case cmdDevCreate:
		return "create"
	case cmdDevRemove:
		return "remove"
	case cmdDevRename:
		return "rename"
	case cmdDevSuspend:
		return "suspend/resume"
	case cmdDevStatus:
		return "info"
	case cmdDevWait:
		return "wait"
	case cmdTableLoad:
		return "load"
	case cmdTableClear:
		return "clear"
	case cmdTableDeps:
		return "deps"
	case cmdTableStatus:
		return "status"
	case cmdListVersions:
		return "targets"
	case cmdTargetMsg:
		return "message"
	case cmdDevSetGeometry:
		return "geometry"
	}
	return fmt.Sprintf("cmd%d", uint8(c))
}

// ioctlHeader is struct dm_ioctl in Go form.
type ioctlHeader struct {
	Version     [3]uint32
	DataSize    uint32
	DataStart   uint32
	TargetCount uint32
	OpenCount   int32
	Flags       uint32
	EventNr     uint32
	Dev         uint64
	Name        string
	UUID        string
}

// errBufferFull is returned by decoders when the kernel said the answer did
// not fit; the caller grows the buffer and asks again.
var errBufferFull = errors.New("dm ioctl buffer full")

// maxBuffer bounds the parameter block. The kernel refuses data_size above
// DM_MAX_TARGETS * DM_MAX_TARGET_PARAMS (1 GiB, copy_params); we stop well
// before that: 256 MiB is ~2.5 million linear targets.
const maxBuffer = 256 << 20

func checkName(what, s string, room int) error {
	if len(s) >= room {
		return fmt.Errorf("%s %q: longer than %d bytes", what, s, room-1)
	}
	if strings.ContainsRune(s, 0) {
		return fmt.Errorf("%s %q: contains NUL", what, s)
	}
	return nil
}

// putHeader writes h into the first sizeofIoctl bytes of b.
func putHeader(b []byte, h *ioctlHeader) error {
	if len(b) < sizeofIoctl {
		return fmt.Errorf("dm ioctl buffer of %d bytes, want at least %d", len(b), sizeofIoctl)
	}
	if err := checkName("device name", h.Name, nameLen); err != nil {
		return err
	}
	if strings.ContainsRune(h.Name, '/') {
		// dm-ioctl.c check_name: names with '/' are refused.
		return fmt.Errorf("device name %q: contains '/'", h.Name)
	}
	if err := checkName("device uuid", h.UUID, uuidLen); err != nil {
		return err
	}
	clear(b[:sizeofIoctl])
	for i, v := range h.Version {
		ne.PutUint32(b[offVersion+4*i:], v)
	}
	ne.PutUint32(b[offDataSize:], h.DataSize)
	ne.PutUint32(b[offDataStart:], h.DataStart)
	ne.PutUint32(b[offTargetCount:], h.TargetCount)
	ne.PutUint32(b[offOpenCount:], uint32(h.OpenCount))
	ne.PutUint32(b[offFlags:], h.Flags)
	ne.PutUint32(b[offEventNr:], h.EventNr)
	ne.PutUint64(b[offDev:], h.Dev)
	copy(b[offName:offName+nameLen], h.Name)
	copy(b[offUUID:offUUID+uuidLen], h.UUID)
	return nil
}

// cstring returns the NUL-terminated string at the start of b, and whether a
// NUL was found.
func cstring(b []byte) (string, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), true
		}
	}
	return string(b), false
}

// parseHeader decodes and sanity-checks the header of a kernel answer. buf is
// the whole buffer we handed the kernel.
func parseHeader(buf []byte) (ioctlHeader, error) {
	if len(buf) < sizeofIoctl {
		return ioctlHeader{}, fmt.Errorf("dm ioctl answer of %d bytes, want at least %d", len(buf), sizeofIoctl)
	}
	var h ioctlHeader
	for i := range h.Version {
		h.Version[i] = ne.Uint32(buf[offVersion+4*i:])
	}
	h.DataSize = ne.Uint32(buf[offDataSize:])
	h.DataStart = ne.Uint32(buf[offDataStart:])
	h.TargetCount = ne.Uint32(buf[offTargetCount:])
	h.OpenCount = int32(ne.Uint32(buf[offOpenCount:]))
	h.Flags = ne.Uint32(buf[offFlags:])
	h.EventNr = ne.Uint32(buf[offEventNr:])
	h.Dev = ne.Uint64(buf[offDev:])
	h.Name, _ = cstring(buf[offName : offName+nameLen])
	h.UUID, _ = cstring(buf[offUUID : offUUID+uuidLen])
	if uint64(h.DataSize) > uint64(len(buf)) {
		return ioctlHeader{}, fmt.Errorf("dm ioctl answer: data_size %d beyond buffer of %d", h.DataSize, len(buf))
	}
	return h, nil
}

// dataArea returns the part of buf the kernel filled with records:
// [data_start, data_size). An answer without data yields an empty slice.
func dataArea(buf []byte, h ioctlHeader) ([]byte, error) {
	if h.Flags&flagBufferFull != 0 {
		return nil, errBufferFull
	}
	if h.DataSize <= h.DataStart || h.DataSize <= ioctlDataOffset {
		return nil, nil
	}
	if h.DataStart < ioctlDataOffset {
		return nil, fmt.Errorf("dm ioctl answer: data_start %d inside the header", h.DataStart)
	}
	if uint64(h.DataSize) > uint64(len(buf)) {
		return nil, fmt.Errorf("dm ioctl answer: data_size %d beyond buffer of %d", h.DataSize, len(buf))
	}
	return buf[h.DataStart:h.DataSize], nil
}

func align8(n int) int { return (n + 7) &^ 7 }

// newRequest allocates a parameter block of size bytes (at least the header)
// holding h. DataSize is set to the block size and DataStart to the aligned
// end of the header, which is where input records go and where the kernel
// puts output.
func newRequest(h ioctlHeader, size int) ([]byte, error) {
	if size < dataStart {
		size = dataStart
	}
	if size > maxBuffer {
		return nil, fmt.Errorf("dm ioctl: %d-byte parameter block exceeds %d", size, maxBuffer)
	}
	buf := make([]byte, size)
	h.Version = ioctlVersion
	h.DataSize = uint32(size)
	h.DataStart = dataStart
	if err := putHeader(buf, &h); err != nil {
		return nil, err
	}
	return buf, nil
}

// encodeTableLoad builds a DM_TABLE_LOAD block: the header, then for each
// target a struct dm_target_spec followed by its NUL-terminated parameter
// string, padded to 8 bytes; spec.next is the distance to the next spec.
func encodeTableLoad(h ioctlHeader, specs []TargetSpec) ([]byte, error) {
	if _, err := checkContiguous(specs); err != nil {
		return nil, err
	}
	if uint64(len(specs)) > math.MaxUint32 { // int is 32 bits on arm and 386
		return nil, fmt.Errorf("table of %d targets", len(specs))
	}
	size := dataStart
	for _, s := range specs {
		size += align8(sizeofTargetSpec + len(s.Params) + 1)
		if size > maxBuffer {
			return nil, fmt.Errorf("table of %d targets exceeds the %d-byte ioctl limit", len(specs), maxBuffer)
		}
	}
	h.TargetCount = uint32(len(specs))
	buf, err := newRequest(h, size)
	if err != nil {
		return nil, err
	}
	off := dataStart
	for _, s := range specs {
		rec := align8(sizeofTargetSpec + len(s.Params) + 1)
		b := buf[off : off+rec]
		ne.PutUint64(b[0:], s.Start)
		ne.PutUint64(b[8:], s.Length)
		ne.PutUint32(b[16:], 0) // status: unused on input
		ne.PutUint32(b[20:], uint32(rec))
		copy(b[24:24+maxTargetType], s.Type)
		copy(b[sizeofTargetSpec:], s.Params) // NUL and padding: already zero
		off += rec
	}
	return buf, nil
}

// encodeTargetMsg builds a DM_TARGET_MSG block: struct dm_target_msg
// (sector, then the NUL-terminated message) in the data area.
func encodeTargetMsg(h ioctlHeader, sector uint64, msg string, room int) ([]byte, error) {
	if msg == "" || strings.ContainsRune(msg, 0) {
		return nil, fmt.Errorf("target message %q: want non-empty text without NUL", msg)
	}
	size := dataStart + align8(8+len(msg)+1)
	if size < dataStart+room {
		size = dataStart + room // room for the answer
	}
	buf, err := newRequest(h, size)
	if err != nil {
		return nil, err
	}
	ne.PutUint64(buf[dataStart:], sector)
	copy(buf[dataStart+8:], msg)
	return buf, nil
}

// decodeTargets reads the target records of a DM_TABLE_STATUS or DM_DEV_WAIT
// answer: TargetCount records, each a dm_target_spec followed by its
// NUL-terminated text; spec.next is relative to the data area start.
func decodeTargets(buf []byte) ([]TargetSpec, error) {
	h, err := parseHeader(buf)
	if err != nil {
		return nil, err
	}
	area, err := dataArea(buf, h)
	if err != nil {
		return nil, err
	}
	if h.TargetCount == 0 {
		return nil, nil
	}
	// Each record takes at least a spec and a NUL: bound the count by the
	// area before allocating, so a lying header cannot make us allocate much.
	if uint64(h.TargetCount) > uint64(len(area))/(sizeofTargetSpec+1) {
		return nil, fmt.Errorf("dm status answer: %d targets cannot fit in %d bytes", h.TargetCount, len(area))
	}
	specs := make([]TargetSpec, 0, h.TargetCount)
	off := 0
	for i := uint32(0); i < h.TargetCount; i++ {
		if off < 0 || off+sizeofTargetSpec > len(area) {
			return nil, fmt.Errorf("dm status answer: target %d at offset %d beyond %d bytes", i, off, len(area))
		}
		b := area[off:]
		typ, _ := cstring(b[24 : 24+maxTargetType])
		text, ok := cstring(b[sizeofTargetSpec:])
		if !ok {
			return nil, fmt.Errorf("dm status answer: target %d text not terminated", i)
		}
		specs = append(specs, TargetSpec{
			Start:  ne.Uint64(b[0:]),
			Length: ne.Uint64(b[8:]),
			Type:   typ,
			Params: text,
		})
		if i+1 == h.TargetCount {
			break
		}
		next := int(ne.Uint32(b[20:]))
		if next <= off+sizeofTargetSpec || next&7 != 0 {
			return nil, fmt.Errorf("dm status answer: target %d: bad next offset %d at %d", i, next, off)
		}
		off = next
	}
	return specs, nil
}

// DeviceEntry is one device in a DM_LIST_DEVICES answer.
type DeviceEntry struct {
	Name    string
	Dev     Dev
	EventNr uint32
	UUID    string // empty when the device has none (or the kernel predates 4.46)
}

// decodeNameList reads a DM_LIST_DEVICES answer: struct dm_name_list records
// (dev, next, name), each followed on kernels >= 4.41 by an aligned
// event_nr/flags pair and, when asked with DM_UUID_FLAG, the uuid.
func decodeNameList(buf []byte) ([]DeviceEntry, error) {
	h, err := parseHeader(buf)
	if err != nil {
		return nil, err
	}
	area, err := dataArea(buf, h)
	if err != nil {
		return nil, err
	}
	if len(area) < 8 || ne.Uint64(area) == 0 {
		return nil, nil // "nl->dev = 0; Flags no data"
	}
	var out []DeviceEntry
	off := 0
	for {
		if off+12 > len(area) {
			return nil, fmt.Errorf("dm list answer: record at %d beyond %d bytes", off, len(area))
		}
		b := area[off:]
		next := int(ne.Uint32(b[8:]))
		end := len(area)
		if next != 0 {
			if next < 13 || next > len(area)-off {
				return nil, fmt.Errorf("dm list answer: bad next offset %d at %d", next, off)
			}
			end = off + next
		}
		rec := area[off:end]
		name, ok := cstring(rec[12:])
		if !ok {
			return nil, fmt.Errorf("dm list answer: name at %d not terminated", off)
		}
		e := DeviceEntry{Name: name, Dev: decodeDev(ne.Uint64(b))}
		// Alignment is relative to the whole block (the kernel aligns
		// pointers into a buffer whose data area starts 8-aligned).
		ev := align8(int(h.DataStart)+off+12+len(name)+1) - int(h.DataStart) - off
		if ev+8 <= len(rec) {
			e.EventNr = ne.Uint32(rec[ev:])
			if flags := ne.Uint32(rec[ev+4:]); flags&nameListHasUUID != 0 {
				u, ok := cstring(rec[ev+8:])
				if !ok {
					return nil, fmt.Errorf("dm list answer: uuid of %q not terminated", name)
				}
				e.UUID = u
			}
		}
		out = append(out, e)
		if next == 0 {
			return out, nil
		}
		off += next
	}
}

// TargetVersion is a target type the kernel has registered.
type TargetVersion struct {
	Name    string
	Version [3]uint32
}

// decodeVersions reads a DM_LIST_VERSIONS answer: struct dm_target_versions
// records (next, version[3], name), next relative to the current record.
func decodeVersions(buf []byte) ([]TargetVersion, error) {
	h, err := parseHeader(buf)
	if err != nil {
		return nil, err
	}
	area, err := dataArea(buf, h)
	if err != nil {
		return nil, err
	}
	var out []TargetVersion
	off := 0
	for len(area) > 0 {
		if off+16 > len(area) {
			return nil, fmt.Errorf("dm targets answer: record at %d beyond %d bytes", off, len(area))
		}
		b := area[off:]
		name, ok := cstring(b[16:])
		if !ok {
			return nil, fmt.Errorf("dm targets answer: name at %d not terminated", off)
		}
		out = append(out, TargetVersion{Name: name, Version: [3]uint32{ne.Uint32(b[4:]), ne.Uint32(b[8:]), ne.Uint32(b[12:])}})
		next := int(ne.Uint32(b[0:]))
		if next == 0 {
			break
		}
		if next < 17 || next > len(area)-off {
			return nil, fmt.Errorf("dm targets answer: bad next offset %d at %d", next, off)
		}
		off += next
	}
	return out, nil
}

// decodeMessage returns the text a target answered to DM_TARGET_MSG, if any.
func decodeMessage(buf []byte) (string, error) {
	h, err := parseHeader(buf)
	if err != nil {
		return "", err
	}
	if h.Flags&flagDataOut == 0 {
		return "", nil
	}
	area, err := dataArea(buf, h)
	if err != nil {
		return "", err
	}
	s, ok := cstring(area)
	if !ok {
		return "", fmt.Errorf("dm message answer not terminated")
	}
	return s, nil
}

// DeviceInfo is the state of one mapped device (DM_DEV_STATUS and the header
// of every answer about a device).
type DeviceInfo struct {
	Name            string
	UUID            string
	Dev             Dev
	OpenCount       int32
	EventNr         uint32
	TargetCount     uint32
	Suspended       bool
	ReadOnly        bool
	ActivePresent   bool // a live table is loaded
	InactivePresent bool // a table is loaded but not yet resumed into place
}

func infoFromHeader(h ioctlHeader) DeviceInfo {
	return DeviceInfo{
		Name:            h.Name,
		UUID:            h.UUID,
		Dev:             decodeDev(h.Dev),
		OpenCount:       h.OpenCount,
		EventNr:         h.EventNr,
		TargetCount:     h.TargetCount,
		Suspended:       h.Flags&flagSuspend != 0,
		ReadOnly:        h.Flags&flagReadonly != 0,
		ActivePresent:   h.Flags&flagActivePresent != 0,
		InactivePresent: h.Flags&flagInactivePresent != 0,
	}
}
