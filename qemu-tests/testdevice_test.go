package qemutests

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestCopyFileSparse: CopyFile gives the same bytes, keeps the holes, and
// handles data at the start, in the middle, at the end and a trailing hole.
func TestCopyFileSparse(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name   string
		size   int64
		blocks map[int64]string // offset → data
	}{
		{"empty", 0, nil},
		{"all hole", 64 << 20, nil},
		{"data at both ends", 64 << 20, map[int64]string{0: "start", 64<<20 - 5: "end!!"}},
		{"middle and trailing hole", 64 << 20, map[int64]string{1 << 20: "one", 9<<20 + 17: "nine", 20 << 20: "twenty"}},
	} {
		src := filepath.Join(dir, c.name+".src")
		f, err := os.Create(src)
		if err != nil {
			t.Fatal(err)
		}
		for off, s := range c.blocks {
			if _, err := f.WriteAt([]byte(s), off); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Truncate(c.size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		dst := filepath.Join(dir, c.name+".dst")
		CopyFile(t, src, dst)
		a, _ := os.ReadFile(src)
		b, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("%s: the copy differs (%d vs %d bytes)", c.name, len(b), len(a))
		}
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 1<<20 {
			t.Errorf("%s: the copy uses %d bytes on disk for %d of data: holes were written", c.name, used, len(c.blocks)*8)
		}
	}
}
