package bootstate

import (
	"os"

	"golang.org/x/sys/unix"
)

// blsRenameNoReplace renames from to to inside dir, failing with EEXIST if
// to exists: what systemd-bless-boot does too (bless-boot.c verb_set,
// rename_noreplace), so neither program ever replaces an entry the other
// just made. vfat supports RENAME_NOREPLACE (fs/fat/namei_vfat.c).
func blsRenameNoReplace(dir *os.File, from, to string) error {
	fd := int(dir.Fd())
	if err := unix.Renameat2(fd, from, fd, to, unix.RENAME_NOREPLACE); err != nil {
		return os.NewSyscallError("renameat2", err)
	}
	return nil
}

// blsSyncDir makes a rename durable: fsync of the directory (on vfat,
// fat_file_fsync writes the directory's blocks and the FAT and flushes the
// disk's cache) and syncfs of the whole file system, the two steps
// bless-boot.c takes after its rename (fsync_parent_at, syncfs).
func blsSyncDir(dir *os.File) error {
	if err := dir.Sync(); err != nil {
		return err
	}
	if err := unix.Syncfs(int(dir.Fd())); err != nil {
		return os.NewSyscallError("syncfs", err)
	}
	return nil
}
