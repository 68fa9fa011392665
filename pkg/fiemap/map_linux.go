package fiemap

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// sysDevBlock is where the kernel lists block devices by MAJ:MIN; a variable
// so tests can point it elsewhere.
var sysDevBlock = "/sys/dev/block"

// devDir is where device nodes live (devtmpfs in PID 1).
var devDir = "/dev"

// fsKind says which filesystems we map and why the others are refused.
//
//   - ext4: blocks of an immutable regular file are never moved by the kernel
//     (EXT4_IOC_MOVE_EXT, used by e4defrag, needs the file open for writing,
//     which an immutable inode never is; see fsImmutableFl), ext4 has no
//     reflink/dedupe, and e2fsck does not relocate data blocks of a
//     consistent fs. AOSP libfiemap relies on the same (without the flag).
//   - f2fs: the segment cleaner (GC) moves data unless the file is pinned
//     with F2FS_IOC_SET_PIN_FILE, which Allocate does; MapFile reports the
//     pin state (FS_NOCOW_FL) and Verify requires it.
//   - xfs: refused for now. An immutable file can still be the *source* of a
//     FICLONERANGE/FIDEDUPERANGE (the kernel only checks the destination), after
//     which its blocks are shared and a write through dm would change the
//     other file; and xfs_fsr/online repair would need separate proof.
//     Extents that are already SHARED are rejected by Validate regardless.
//   - btrfs (COW, relocation, multi-device: fe_physical is a logical address),
//     tmpfs, overlay, fuse, nfs and everything else: refused.
var supportedFS = map[uint32]string{
	unix.EXT4_SUPER_MAGIC: "ext4", // also ext2/ext3, which share the magic
	unix.F2FS_SUPER_MAGIC: "f2fs",
}

var knownFSNames = map[uint32]string{
	unix.BTRFS_SUPER_MAGIC:     "btrfs",
	unix.TMPFS_MAGIC:           "tmpfs",
	unix.OVERLAYFS_SUPER_MAGIC: "overlay",
	unix.FUSE_SUPER_MAGIC:      "fuse",
	unix.NFS_SUPER_MAGIC:       "nfs",
	unix.XFS_SUPER_MAGIC:       "xfs",
	unix.RAMFS_MAGIC:           "ramfs",
	unix.SQUASHFS_MAGIC:        "squashfs",
	unix.EROFS_SUPER_MAGIC_V1:  "erofs",
	unix.SMB2_SUPER_MAGIC:      "smb2",
	unix.CIFS_SUPER_MAGIC:      "cifs",
	unix.MSDOS_SUPER_MAGIC:     "vfat",
	unix.EXFAT_SUPER_MAGIC:     "exfat",
	unix.ZONEFS_MAGIC:          "zonefs",
}

// fsMagic is statfs's f_type as the 32-bit magic the kernel's filesystems
// set (include/uapi/linux/magic.h). Statfs_t.Type is int64 on 64-bit
// architectures and int32 on arm and 386, where magics at or above 1<<31
// (F2FS 0xf2f52010, SMB2, CIFS) come back negative: comparing or looking
// them up as int64 would miss f2fs on 32-bit ARM. Truncating to uint32 is
// exact on both (the kernel's f_type is a long holding a 32-bit value).
func fsMagic(st *unix.Statfs_t) uint32 {
	return uint32(st.Type)
}

func fsName(magic uint32) string {
	if n, ok := supportedFS[magic]; ok {
		return n
	}
	if n, ok := knownFSNames[magic]; ok {
		return n
	}
	return fmt.Sprintf("fs magic %#x", magic)
}

// checkFS returns the supported filesystem's name and block size for f.
func checkFS(path string, f *os.File) (string, unix.Statfs_t, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return "", st, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	magic := fsMagic(&st)
	name, ok := supportedFS[magic]
	if !ok {
		return "", st, &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("%s: %w (%w); supported: ext4, f2fs", fsName(magic), ErrUnsupportedFS, unix.EOPNOTSUPP)}
	}
	return name, st, nil
}

// resolveDevice turns st_dev of a file into the block device that holds its
// filesystem, checking that it is a real block device (tmpfs, overlay, btrfs
// and fuse use anonymous device numbers that /sys/dev/block does not list),
// and that the device node we find really is that device.
func resolveDevice(path string, dev uint64) (Device, error) {
	d := Device{Major: unix.Major(dev), Minor: unix.Minor(dev)}
	sys := filepath.Join(sysDevBlock, d.String())
	sizeText, err := os.ReadFile(filepath.Join(sys, "size"))
	if err != nil {
		return d, &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("filesystem device %s is not a block device (%w); %w", d, err, ErrUnsupportedFS)}
	}
	// /sys/block/*/size is in 512-byte sectors regardless of the logical
	// block size (include/linux/blk_types.h: "sector_t ... 512-byte units").
	d.Sectors, err = strconv.ParseUint(strings.TrimSpace(string(sizeText)), 10, 64)
	if err != nil || d.Sectors == 0 {
		return d, &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("block device %s: bad size %q", d, sizeText)}
	}
	uevent, err := os.ReadFile(filepath.Join(sys, "uevent"))
	if err != nil {
		return d, &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("block device %s: %w", d, err)}
	}
	sc := bufio.NewScanner(bytes.NewReader(uevent))
	for sc.Scan() {
		if name, ok := strings.CutPrefix(sc.Text(), "DEVNAME="); ok {
			d.Path = filepath.Join(devDir, name)
		}
	}
	if d.Path == "" {
		return d, &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("block device %s: no DEVNAME in uevent", d)}
	}
	if name, err := os.ReadFile(filepath.Join(sys, "dm", "name")); err == nil {
		d.DMName = strings.TrimSpace(string(name))
	}
	return d, nil
}

// openDevice opens the device node read-only and checks it is the block
// device d (the node could be stale or a different device of the same name).
func openDevice(path string, d Device) (*os.File, error) {
	f, err := os.OpenFile(d.Path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("open filesystem device: %w", err)}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("stat %s: %w", d.Path, err)}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != d.Major || unix.Minor(st.Rdev) != d.Minor {
		f.Close()
		return nil, &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("%s is not block device %s", d.Path, d)}
	}
	return f, nil
}

// checkSuperblock reads the superblock from the device and checks that it
// is the filesystem the file lives on, so fe_physical offsets are offsets on
// this device and not on some device stacked below or beside it.
//
// ext4: ext4_statfs() sets f_fsid to the XOR of the two little-endian 64-bit
// halves of s_uuid (fs/ext4/super.c), so the fsid statfs reports for the file
// must equal the one computed from the device's superblock.
// f2fs: f2fs_statfs() sets f_fsid to huge_encode_dev(bd_dev) of the device it
// is mounted from (fs/f2fs/super.c); we check that and the on-disk magic.
func checkSuperblock(path, fsType string, st *unix.Statfs_t, dev Device) error {
	f, err := openDevice(path, dev)
	if err != nil {
		return err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil && err != io.EOF {
		return &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("read superblock of %s: %w", dev.Path, err)}
	}
	fsid := uint64(uint32(st.Fsid.Val[0])) | uint64(uint32(st.Fsid.Val[1]))<<32
	switch fsType {
	case "ext4":
		// struct ext4_super_block: s_log_block_size at 0x18, s_magic at 0x38,
		// s_uuid at 0x68 (fs/ext4/ext4.h).
		if magic := binary.LittleEndian.Uint16(sb[0x38:]); magic != unix.EXT4_SUPER_MAGIC {
			return &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("device %s (%s) has no ext4 superblock (magic %#x): fe_physical would not be relative to it", dev, dev.Path, magic)}
		}
		want := binary.LittleEndian.Uint64(sb[0x68:]) ^ binary.LittleEndian.Uint64(sb[0x70:])
		if want != fsid {
			return &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("device %s (%s) holds another ext4 (fsid %#x, file's fs %#x)", dev, dev.Path, want, fsid)}
		}
		if bs := uint64(1024) << binary.LittleEndian.Uint32(sb[0x18:]); bs != uint64(st.Bsize) {
			return &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("device %s block size %d, statfs says %d", dev, bs, st.Bsize)}
		}
	case "f2fs":
		// struct f2fs_super_block starts at byte 1024 (F2FS_SUPER_OFFSET)
		// with __le32 magic.
		if magic := binary.LittleEndian.Uint32(sb[0:]); magic != unix.F2FS_SUPER_MAGIC {
			return &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("device %s (%s) has no f2fs superblock (magic %#x)", dev, dev.Path, magic)}
		}
		enc := uint64(dev.Minor&0xff) | uint64(dev.Major)<<8 | uint64(dev.Minor&^0xff)<<12
		if enc != fsid {
			return &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("f2fs fsid %#x is not device %s (%#x); multi-device f2fs is not supported", fsid, dev, enc)}
		}
	}
	return nil
}

// f2fsSectionBytes returns the section size of the f2fs holding the
// directory d: the unit a pinned fallocate allocates in (f2fs_expand_inode_data
// rounds a pinned file's allocation up to whole sections). It reads the
// superblock from the device, as checkSuperblock does: struct
// f2fs_super_block at byte 1024 has __le32 log_blocksize at 16,
// log_blocks_per_seg at 20 and segs_per_sec at 24 (include/linux/f2fs_fs.h).
// AllocationUnit is the granule in which Allocate takes space on the
// filesystem holding dir: its block size, or on f2fs a whole section (a
// pinned fallocate allocates whole sections). A size that is a multiple of
// it takes exactly that much.
func AllocationUnit(dir string) (uint64, error) {
	d, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(d.Fd()), &sfs); err != nil {
		return 0, &os.PathError{Op: "statfs", Path: dir, Err: err}
	}
	if supportedFS[fsMagic(&sfs)] == "f2fs" {
		return f2fsSectionBytes(dir, d)
	}
	return uint64(sfs.Bsize), nil
}

// f2fsCanPin checks that the kernel can pin files on the f2fs holding dir:
// its /sys/fs/f2fs/<dev>/features lists pin_file (fs/f2fs/sysfs.c
// features_show). Without it F2FS_IOC_SET_PIN_FILE is missing and garbage
// collection would move the COW file's blocks under the dm-linear map.
func f2fsCanPin(dir string, d *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &st); err != nil {
		return &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	link, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		return &os.PathError{Op: "allocate", Path: dir, Err: fmt.Errorf("find the f2fs device in sysfs: %w", err)}
	}
	features := filepath.Join("/sys/fs/f2fs", filepath.Base(link), "features")
	b, err := os.ReadFile(features)
	if err != nil {
		return &os.PathError{Op: "allocate", Path: dir, Err: fmt.Errorf("cannot tell whether this kernel can pin f2fs files: %w", err)}
	}
	if !hasF2FSFeature(string(b), "pin_file") {
		return &os.PathError{Op: "allocate", Path: dir, Err: fmt.Errorf("%s does not list pin_file (%q): this kernel cannot pin files on f2fs, and garbage collection would move the COW file's blocks; use a kernel with f2fs pin_file support (Linux 4.20 and later): %w", features, strings.TrimSpace(string(b)), unix.EOPNOTSUPP)}
	}
	return nil
}

func f2fsSectionBytes(dir string, d *os.File) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	dev, err := resolveDevice(dir, st.Dev)
	if err != nil {
		return 0, err
	}
	f, err := openDevice(dir, dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sb := make([]byte, 32)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return 0, &os.PathError{Op: "allocate", Path: dir, Err: fmt.Errorf("read f2fs superblock of %s: %w", dev.Path, err)}
	}
	if magic := binary.LittleEndian.Uint32(sb[0:]); magic != unix.F2FS_SUPER_MAGIC {
		return 0, &os.PathError{Op: "allocate", Path: dir, Err: fmt.Errorf("device %s (%s) has no f2fs superblock (magic %#x)", dev, dev.Path, magic)}
	}
	logBlock := binary.LittleEndian.Uint32(sb[16:])
	logPerSeg := binary.LittleEndian.Uint32(sb[20:])
	segsPerSec := binary.LittleEndian.Uint32(sb[24:])
	if logBlock < 9 || logBlock > 16 || logPerSeg > 16 || segsPerSec == 0 || segsPerSec > 1<<16 {
		return 0, &os.PathError{Op: "allocate", Path: dir, Err: fmt.Errorf("f2fs superblock of %s: implausible geometry (log_blocksize %d, log_blocks_per_seg %d, segs_per_sec %d)", dev.Path, logBlock, logPerSeg, segsPerSec)}
	}
	return uint64(segsPerSec) << (logPerSeg + logBlock), nil
}

// MapFile reads the extent map of the regular file at path with
// FS_IOC_FIEMAP (FIEMAP_FLAG_SYNC), validates it (see Validate), coalesces
// it and translates it into sector segments on the block device holding the
// filesystem. It does not require the file to be pinned; Verify does.
func MapFile(path string) (*Map, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m, _, err := mapOpen(path, f)
	return m, err
}

// pinState is what mapOpen learns about how the file is held in place.
type pinState struct {
	immutable bool
	f2fsPin   bool
}

func mapOpen(path string, f *os.File) (*Map, pinState, error) {
	var ps pinState
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, ps, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, ps, &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("not a regular file (mode %#o)", st.Mode)}
	}
	fsType, sfs, err := checkFS(path, f)
	if err != nil {
		return nil, ps, err
	}
	dev, err := resolveDevice(path, st.Dev)
	if err != nil {
		return nil, ps, err
	}
	if err := checkSuperblock(path, fsType, &sfs, dev); err != nil {
		return nil, ps, err
	}
	raw, err := readExtents(f)
	if err != nil {
		return nil, ps, &os.PathError{Op: "fiemap", Path: path, Err: err}
	}
	size := uint64(st.Size)
	if err := Validate(path, size, raw); err != nil {
		return nil, ps, err
	}
	// The size must not have changed while we read the map: a concurrent
	// writer would make the map describe a file that no longer exists.
	var st2 unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st2); err != nil {
		return nil, ps, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st2.Size != st.Size || st2.Blocks != st.Blocks {
		return nil, ps, &os.PathError{Op: "fiemap", Path: path, Err: fmt.Errorf("file changed while mapping (size %d→%d, blocks %d→%d)", st.Size, st2.Size, st.Blocks, st2.Blocks)}
	}
	flags, err := getFlags(f)
	if err != nil {
		return nil, ps, &os.PathError{Op: "fiemap", Path: path, Err: err}
	}
	ps.immutable = flags&fsImmutableFl != 0
	ps.f2fsPin = fsType == "f2fs" && flags&fsNocowFl != 0
	ext := Coalesce(Trim(raw, size))
	m := &Map{
		Path:       path,
		FSType:     fsType,
		Size:       size,
		BlockSize:  uint32(sfs.Bsize),
		Device:     dev,
		RawExtents: len(raw),
		Extents:    ext,
		Segments:   Segments(ext, size),
		Immutable:  ps.immutable,
		F2FSPinned: ps.f2fsPin,
	}
	m.Fingerprint = Fingerprint(dev, size, ext)
	if err := m.Check(); err != nil {
		return nil, ps, err
	}
	return m, ps, nil
}

// Verify re-reads the map of path and checks that it is pinned (immutable;
// on f2fs also pinned against GC) and has exactly the fingerprint of want
// (same device, size and extents). want is checked first (Map.Check), so its
// Segments are known to be the ones the fingerprint covers. It returns the
// fresh map. A map that moved gives an error wrapping ErrMapChanged.
func Verify(path string, want *Map) (*Map, error) {
	if err := want.Check(); err != nil {
		return nil, &os.PathError{Op: "fiemap verify", Path: path, Err: fmt.Errorf("recorded map: %w", err)}
	}
	m, err := MapFile(path)
	if err != nil {
		return nil, err
	}
	if err := m.CheckPinned(); err != nil {
		return m, &os.PathError{Op: "fiemap verify", Path: path, Err: err}
	}
	if m.Fingerprint != want.Fingerprint {
		why := want.SameLayout(m)
		if why == nil {
			why = fmt.Errorf("device %s (%d sectors) recorded as %s (%d sectors)", m.Device, m.Device.Sectors, want.Device, want.Device.Sectors)
		}
		return m, &os.PathError{Op: "fiemap verify", Path: path, Err: fmt.Errorf("%w: fingerprint %s, recorded %s: %w", ErrMapChanged, m.Fingerprint, want.Fingerprint, why)}
	}
	return m, nil
}
