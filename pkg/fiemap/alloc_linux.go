package fiemap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Allocate creates the COW store file at path with size bytes (a multiple of
// the filesystem block size), allocated with no hole, durable, and pinned in
// place, and returns its map.
//
// Steps, each chosen so a power cut at any point leaves something the next
// call resolves:
//
//  1. The directory must be a real directory owned by root with no group or
//     other permissions (created 0700 if missing): nobody else may create,
//     replace or open the file.
//  2. If the file already exists and is immutable, an earlier Allocate
//     finished (immutable is the last step): return its map if the size
//     matches, fail otherwise. If it exists but is not immutable, an earlier
//     Allocate crashed before handing the file out: remove it and start over.
//  3. On f2fs, refuse unless the kernel lists pin_file among the
//     filesystem's features (/sys/fs/f2fs/<dev>/features). Refuse when
//     free space minus size would drop below the reserve (on
//     f2fs, minus size rounded up to whole sections: what a pinned
//     fallocate takes).
//  4. Create with O_EXCL, mode 0600. On f2fs, F2FS_IOC_SET_PIN_FILE before
//     any block is allocated (f2fs_ioc_set_pin_file fails with EFBIG once the
//     file has data blocks, fs/f2fs/file.c).
//  5. fallocate(mode 0) the whole range: every block is allocated (as
//     UNWRITTEN extents on ext4) and i_size set, so there is no hole.
//  6. fsync the file and the directory, so the allocation and the name are
//     durable before we record anything.
//  7. Map and validate; then set FS_IMMUTABLE_FL, fsync again, and check the
//     map did not change.
func Allocate(path string, size uint64, opts AllocOptions) (*Map, error) {
	if size == 0 || size%SectorSize != 0 {
		return nil, &os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("size %d is not a positive multiple of %d: %w", size, SectorSize, unix.EINVAL)}
	}
	if size > 1<<62 {
		return nil, &os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("size %d too large: %w", size, unix.EFBIG)}
	}
	dir, base := filepath.Split(filepath.Clean(path))
	if base == "" || base == "." || base == ".." || base == "/" {
		return nil, &os.PathError{Op: "allocate", Path: path, Err: unix.EINVAL}
	}
	d, err := openPrivateDir(filepath.Clean(dir), true)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if err := lockDir(d); err != nil {
		return nil, err
	}

	// statfs through the directory: the file's filesystem.
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(d.Fd()), &sfs); err != nil {
		return nil, &os.PathError{Op: "statfs", Path: dir, Err: err}
	}
	fsType, ok := supportedFS[fsMagic(&sfs)]
	if !ok {
		return nil, &os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("%s: %w (%w); supported: ext4, f2fs", fsName(fsMagic(&sfs)), ErrUnsupportedFS, unix.EOPNOTSUPP)}
	}

	m, done, removed, err := resumeAllocate(path, d, base, size, opts)
	if err != nil || done {
		return m, err
	}
	if removed {
		// The leftover's blocks count as free only once the transaction
		// that freed them commits (ext4 hands freed blocks back to the
		// allocator after the commit); sync, then look at free space again.
		if err := unix.Syncfs(int(d.Fd())); err != nil {
			return nil, &os.PathError{Op: "syncfs", Path: dir, Err: err}
		}
		if err := unix.Fstatfs(int(d.Fd()), &sfs); err != nil {
			return nil, &os.PathError{Op: "statfs", Path: dir, Err: err}
		}
	}

	bs := uint64(sfs.Bsize)
	if size%bs != 0 {
		return nil, &os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("size %d is not a multiple of the %s block size %d: %w", size, fsType, bs, unix.EINVAL)}
	}
	// What the file will take: on f2fs a pinned fallocate allocates whole
	// sections, so the last one's tail past size is used too.
	need, what := size, ""
	if fsType == "f2fs" {
		if err := f2fsCanPin(filepath.Clean(dir), d); err != nil {
			return nil, err
		}
		sec, err := f2fsSectionBytes(filepath.Clean(dir), d)
		if err != nil {
			return nil, err
		}
		if need = (size + sec - 1) / sec * sec; need != size {
			what = fmt.Sprintf(" (%d in whole %d-byte f2fs sections)", need, sec)
		}
	}
	free := sfs.Bavail * bs
	if free < need || free-need < opts.reserve() {
		return nil, &os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("%d bytes free, %d requested%s, %d must stay free: %w", free, size, what, opts.reserve(), unix.ENOSPC)}
	}

	fd, err := unix.Openat(int(d.Fd()), base, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "create", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	pinned := false
	fail := func(err error) (*Map, error) {
		// The file was never handed out, so removing it is safe. Release
		// also clears the flags should we have set them.
		if rerr := releaseAt(path, d, base); rerr != nil {
			return nil, errors.Join(err, fmt.Errorf("cleanup: %w", rerr))
		}
		return nil, err
	}
	// The umask may have cleared bits but never adds any; be explicit.
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	if fsType == "f2fs" {
		if err := f2fsSetPin(f, true); err != nil {
			return fail(&os.PathError{Op: "allocate", Path: path, Err: err})
		}
		pinned = true
	}
	if err := unix.Fallocate(fd, 0, 0, int64(size)); err != nil {
		return fail(&os.PathError{Op: "fallocate", Path: path, Err: fmt.Errorf("%d bytes: %w", size, err)})
	}
	if err := syncFileAndDir(path, f, d); err != nil {
		return fail(err)
	}
	m, _, err = mapOpen(path, f)
	if err != nil {
		return fail(err)
	}
	if m.Size != size {
		return fail(&os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("size %d after fallocate, want %d", m.Size, size)})
	}
	if max := opts.maxSegments(); max > 0 && len(m.Segments) > max {
		return fail(&os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("%d segments, more than the limit of %d (free space too fragmented)", len(m.Segments), max)})
	}
	flags, err := getFlags(f)
	if err != nil {
		return fail(&os.PathError{Op: "allocate", Path: path, Err: err})
	}
	if err := setFlags(f, flags|fsImmutableFl); err != nil {
		return fail(&os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("set immutable: %w", err)})
	}
	// fsync after FS_IOC_SETFLAGS: the flag is an inode change in the
	// journal like any other, and ext4_sync_file commits the transaction
	// that last touched the inode.
	if err := syncFileAndDir(path, f, d); err != nil {
		return fail(err)
	}
	m2, ps, err := mapOpen(path, f)
	if err != nil {
		return fail(err)
	}
	if !ps.immutable || (pinned && !ps.f2fsPin) {
		return fail(&os.PathError{Op: "allocate", Path: path, Err: errors.New("pin did not take effect")})
	}
	if m2.Fingerprint != m.Fingerprint {
		return fail(&os.PathError{Op: "allocate", Path: path, Err: errors.New("extents moved while pinning")})
	}
	return m2, nil
}

// resumeAllocate handles an existing file at dir/base (see Allocate step 2).
// done reports that the returned map (or error) is final; removed that it
// deleted an incomplete leftover.
func resumeAllocate(path string, d *os.File, base string, size uint64, opts AllocOptions) (m *Map, done, removed bool, err error) {
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, false, false, nil
		}
		return nil, true, false, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, true, false, &os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("exists and is not a regular file: %w", unix.EEXIST)}
	}
	fd, err := unix.Openat(int(d.Fd()), base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, false, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	flags, err := getFlags(f)
	if err != nil {
		return nil, true, false, &os.PathError{Op: "allocate", Path: path, Err: err}
	}
	if flags&fsImmutableFl == 0 {
		// Never completed, so never handed out: start over. Close our
		// descriptor first so the inode (and its blocks) go with the unlink.
		f.Close()
		if err := releaseAt(path, d, base); err != nil {
			return nil, true, false, fmt.Errorf("remove incomplete allocation: %w", err)
		}
		return nil, false, true, nil
	}
	m, ps, err := mapOpen(path, f)
	if err != nil {
		return nil, true, false, err
	}
	if m.Size != size {
		return nil, true, false, &os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("already allocated with size %d, not %d; Release it first: %w", m.Size, size, unix.EEXIST)}
	}
	if m.FSType == "f2fs" && !ps.f2fsPin {
		return nil, true, false, &os.PathError{Op: "allocate", Path: path, Err: errors.New("existing file is immutable but not pinned; Release it first")}
	}
	if max := opts.maxSegments(); max > 0 && len(m.Segments) > max {
		return nil, true, false, &os.PathError{Op: "allocate", Path: path, Err: fmt.Errorf("existing file has %d segments, more than the limit of %d", len(m.Segments), max)}
	}
	return m, true, false, nil
}

// openPrivateDir opens dir, creating it with mode 0700 if create is set and
// it is missing, and checks that it is a directory (not a symlink) owned by
// root with no group/other permission bits.
func openPrivateDir(dir string, create bool) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) && create {
		if err := unix.Mkdir(dir, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, &os.PathError{Op: "mkdir", Path: dir, Err: err}
		}
		// Make the new directory entry durable.
		if err := fsyncPath(filepath.Dir(dir)); err != nil {
			return nil, err
		}
		fd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	d := os.NewFile(uintptr(fd), dir)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		d.Close()
		return nil, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	if st.Uid != 0 || st.Mode&0o077 != 0 {
		d.Close()
		return nil, &os.PathError{Op: "allocate", Path: dir, Err: fmt.Errorf("directory must be owned by root with mode 0700 (uid %d, mode %#o): %w", st.Uid, st.Mode&0o7777, unix.EPERM)}
	}
	return d, nil
}

// lockDir takes an exclusive flock on the directory for as long as d is
// open. Allocate removes a leftover file that is not pinned yet, assuming a
// crashed earlier call made it; the lock makes sure it is not the file of a
// concurrent Allocate still in progress.
func lockDir(d *os.File) error {
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return &os.PathError{Op: "flock", Path: d.Name(), Err: err}
	}
	return nil
}

func fsyncPath(p string) error {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return &os.PathError{Op: "fsync", Path: p, Err: err}
	}
	return nil
}

// syncFileAndDir makes the file's data and metadata and its directory entry
// durable: fsync(2) on the file does not persist the entry that names it
// (fsync(2): "an explicit fsync() on a file descriptor for the directory is
// also needed").
func syncFileAndDir(path string, f, d *os.File) error {
	if err := f.Sync(); err != nil {
		return &os.PathError{Op: "fsync", Path: path, Err: err}
	}
	if err := d.Sync(); err != nil {
		return &os.PathError{Op: "fsync", Path: d.Name(), Err: err}
	}
	return nil
}

// Release undoes Allocate: clears the immutable flag (and the f2fs pin),
// unlinks the file and fsyncs the directory. It succeeds if the file or its
// directory does not exist, so it can be repeated after a crash at any step.
// Only call it once nothing maps the file's blocks any more: afterwards the
// filesystem will reuse them.
func Release(path string) error {
	dir, base := filepath.Split(filepath.Clean(path))
	if base == "" || base == "." || base == ".." || base == "/" {
		return &os.PathError{Op: "release", Path: path, Err: unix.EINVAL}
	}
	d, err := openPrivateDir(filepath.Clean(dir), false)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	defer d.Close()
	if err := lockDir(d); err != nil {
		return err
	}
	return releaseAt(path, d, base)
}

func releaseAt(path string, d *os.File, base string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			// Already gone; the unlink may not be durable yet.
			return syncDir(d)
		}
		return &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return &os.PathError{Op: "release", Path: path, Err: errors.New("not a regular file")}
	}
	fd, err := unix.Openat(int(d.Fd()), base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	flags, err := getFlags(f)
	if err != nil {
		return &os.PathError{Op: "release", Path: path, Err: err}
	}
	if flags&fsImmutableFl != 0 {
		if err := setFlags(f, flags&^fsImmutableFl); err != nil {
			return &os.PathError{Op: "release", Path: path, Err: fmt.Errorf("clear immutable: %w", err)}
		}
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	if fsMagic(&sfs) == unix.F2FS_SUPER_MAGIC {
		if err := f2fsSetPin(f, false); err != nil {
			return &os.PathError{Op: "release", Path: path, Err: fmt.Errorf("unpin: %w", err)}
		}
	}
	if err := unix.Unlinkat(int(d.Fd()), base, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "unlink", Path: path, Err: err}
	}
	return syncDir(d)
}

func syncDir(d *os.File) error {
	if err := d.Sync(); err != nil {
		return &os.PathError{Op: "fsync", Path: d.Name(), Err: err}
	}
	return nil
}
