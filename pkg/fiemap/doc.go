// Package fiemap finds where a file's bytes live on its block device, so
// cpinit can use a preallocated file inside userdata as the COW store of a
// dm-snapshot through a table of dm `linear` targets (see
// docs/architecture.md). A wrong map means writing over other data, so every
// step refuses rather than guesses.
//
//   - MapFile reads the extents with FS_IOC_FIEMAP (FIEMAP_FLAG_SYNC, paged
//     until FIEMAP_EXTENT_LAST, like lvm2's _stats_get_extents_for_file),
//     checks the filesystem (ext4, f2fs only, by statfs magic), resolves
//     st_dev to the block device in /sys/dev/block and checks its superblock
//     is this filesystem's, rejects holes, unaligned extents and unsafe flags
//     (Validate), drops what lies past EOF (Trim), coalesces contiguous
//     neighbours (Coalesce) and translates them into 512-byte sector
//     Segments with a Fingerprint.
//   - Map.DMTable renders the dmsetup table; Map marshals to JSON. Both are
//     what `cpinit extents [--json] FILE` prints.
//   - Allocate creates, fallocates and pins the file; Release undoes it;
//     Verify re-reads a pinned file and compares fingerprints (ErrMapChanged).
//   - Map.Check validates a map decoded from the metadata store; SameLayout
//     compares maps read through different views of one partition (e.g. the
//     dm snapshot mounted ro,noload before a merge); OnDevice rebinds a map
//     to the partition's MAJ:MIN of the current boot.
//
// The fs must sit directly on the device the COW table will reference:
// Map.Device.DMName is set when it sits on a dm device (such as cp-origin),
// whose offsets are not the raw partition's.
//
// Tests: root tests on loop-mounted ext4/xfs/tmpfs images compare every
// extent list with `filefrag -v` and read the segments back from the raw
// device; the in-guest TestVMLinearMapsFile (run by qemu-tests/fiemapvm)
// loads DMTable into dm-linear and writes through it; the in-guest
// TestVMF2FS* tests (run by qemu-tests/f2fsvm) check f2fs the same way and
// add garbage collection.
//
// # UNWRITTEN extents are accepted (policy)
//
// Allocate uses fallocate alone, so on ext4 every extent of a fresh COW file
// is UNWRITTEN, and Validate accepts that flag. AOSP libfiemap instead
// rejects UNWRITTEN and zero-fills the file on ext4 (fiemap_writer.cpp). We
// don't, because:
//
//   - The flag only says the filesystem will return zeros when the range is
//     read through it; the blocks are allocated to the inode, counted in the
//     bitmaps and the extent tree, exactly like written ones. fiemap.rst:
//     "the space is allocated on disk, but not written to".
//   - The COW file is never read or written through the filesystem: dm-snapshot
//     writes it through dm-linear on the raw device, and pkg/dmsnap zeroes the
//     header chunk through that device before the first snapshot load. The
//     filesystem's view of the contents does not matter.
//   - An unwritten extent is converted only by a write through the
//     filesystem (ext4_convert_unwritten_extents on I/O completion), which
//     FS_IMMUTABLE_FL forbids; e2fsck checks unwritten extents like any
//     other and does not free or move them. The tests check the map survives
//     unmount, e2fsck -f, remount and heavy churn of other files.
//   - Through the filesystem the file keeps reading as zeros, whatever
//     dm-snapshot later writes into its blocks (copies of overwritten
//     userdata chunks, maybe of files the user deleted) and whatever stale
//     data the blocks held before; a written (zero-filled) file would expose
//     the COW copies to anyone who may read it. And it is fast: no
//     multi-GiB write, no flash wear (1 GiB: ~10 ms against ~1.5 s, see
//     docs/BENCHMARKS.md).
//
// The prototype in DESIGN.md ran a full checkpoint/rollback on exactly such a
// file. UNWRITTEN is part of the fingerprint (a file that got written through
// the filesystem has changed), MERGED and LAST are not.
//
// # Stability across the checkpoint's life
//
// On ext4 FS_IMMUTABLE_FL stops opening for write, truncation, fallocate,
// unlink and so EXT4_IOC_MOVE_EXT (e4defrag, which needs a writable
// descriptor). Offline tools can still move blocks:
// resize2fs shrinking the fs, or e2fsck fixing a fs that is already corrupt.
// Never run them while a checkpoint lives; Verify before any merge catches a
// map that moved. On f2fs, Allocate pins the file before allocating
// (F2FS_IOC_SET_PIN_FILE) so the cleaner never migrates it, and sets the
// immutable flag as well.
//
// # f2fs
//
// What the in-guest tests (f2fs_vm_linux_test.go, run by qemu-tests/f2fsvm on
// Debian's 6.1 generic kernel) showed on a real f2fs:
//
//   - A pinned fallocate takes whole sections (2 MiB by default) from the
//     pinned-data log: the file's raw extents run to the end of its last
//     section, past EOF (Trim drops that part), and every block of those
//     sections is the file's and valid. Allocate's free-space check counts
//     the size rounded up to whole sections (section size from the
//     superblock).
//   - Garbage collection only collects sections with invalid blocks, so
//     neither background/foreground GC nor a forced GC of the file's own
//     sections (F2FS_IOC_GARBAGE_COLLECT_RANGE: EAGAIN) moves them; the pin
//     is what holds a pinned file in a section that does have invalid blocks
//     (the same file unpinned is moved). f2fs unpins a file after
//     gc_pin_file_thresh failed GC attempts on it; Verify refuses an unpinned
//     file, so this is caught before any use of the map.
//   - The extents are not UNWRITTEN: reading the file through the filesystem
//     returns what its blocks hold (stale data when allocated, COW chunks
//     later). The file is root-only (0600 in a 0700 root directory).
//   - F2FS_IOC_SET_PIN_FILE fails with EINVAL on a filesystem mounted
//     mode=lfs; Allocate then fails naming the ioctl and leaves no file. It
//     works with checkpoint=disable. A pinned file cannot have holes punched
//     (EOPNOTSUPP).
package fiemap
