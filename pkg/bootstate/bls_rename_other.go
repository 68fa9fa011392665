//go:build !linux

package bootstate

import (
	"fmt"
	"os"
	"path/filepath"
)

// blsRenameNoReplace: the ESP is only renamed on Linux; elsewhere (builds
// and pure tests) a checked rename that may race with another writer.
func blsRenameNoReplace(dir *os.File, from, to string) error {
	dst := filepath.Join(dir.Name(), to)
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("%s: %w", dst, os.ErrExist)
	}
	return os.Rename(filepath.Join(dir.Name(), from), dst)
}

func blsSyncDir(dir *os.File) error { return dir.Sync() }
