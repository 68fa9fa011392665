package fiemap

import (
	"errors"
	"testing"
)

// TestCheckDir: ext4 on a loop device is supported, with its device and
// block size; tmpfs and xfs are not, and say what they are.
func TestCheckDir(t *testing.T) {
	f := newExt4(t, 32, 4096)
	s, err := CheckDir(f.mnt)
	if err != nil {
		t.Fatalf("CheckDir(ext4): %v", err)
	}
	major, minor := f.devNum()
	if s.FSType != "ext4" || s.Unit != 4096 || s.BlockSize != 4096 || s.Device.Major != major || s.Device.Minor != minor || s.Device.Path != f.loop || s.ReadOnly || s.Free == 0 {
		t.Errorf("CheckDir(ext4) = %+v, want ext4 on %s (%d:%d), 4 KiB units, writable, some free", s, f.loop, major, minor)
	}

	s, err = CheckDir(t.TempDir()) // the test's temporary directory: often tmpfs, never ext4 on a loop device we made
	if err == nil && s.Device.Path == f.loop {
		t.Fatalf("CheckDir(temp dir) found the test's loop device")
	}

	requireTool(t, "mkfs.xfs", "xfsprogs")
	x := newFS(t, "xfs", 300, "-q", "-f")
	s, err = CheckDir(x.mnt)
	if !errors.Is(err, ErrUnsupportedFS) || s.FSType != "xfs" {
		t.Errorf("CheckDir(xfs) = %+v, %v; want FSType xfs and ErrUnsupportedFS", s, err)
	}
}
