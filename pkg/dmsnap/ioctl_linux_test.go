//go:build linux

package dmsnap

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/cpinit/cpinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// Our hand-written layout and flags must match golang.org/x/sys/unix's
// (generated from the kernel's dm-ioctl.h).
func TestLayoutMatchesUnix(t *testing.T) {
	var d unix.DmIoctl
	var s unix.DmTargetSpec
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof dm_ioctl", sizeofIoctl, unix.SizeofDmIoctl},
		{"sizeof dm_target_spec", sizeofTargetSpec, unix.SizeofDmTargetSpec},
		{"data_size", offDataSize, unsafe.Offsetof(d.Data_size)},
		{"data_start", offDataStart, unsafe.Offsetof(d.Data_start)},
		{"target_count", offTargetCount, unsafe.Offsetof(d.Target_count)},
		{"open_count", offOpenCount, unsafe.Offsetof(d.Open_count)},
		{"flags", offFlags, unsafe.Offsetof(d.Flags)},
		{"event_nr", offEventNr, unsafe.Offsetof(d.Event_nr)},
		{"dev", offDev, unsafe.Offsetof(d.Dev)},
		{"name", offName, unsafe.Offsetof(d.Name)},
		{"uuid", offUUID, unsafe.Offsetof(d.Uuid)},
		{"data", ioctlDataOffset, unsafe.Offsetof(d.Data)},
		{"spec.next", 20, unsafe.Offsetof(s.Next)},
		{"spec.target_type", 24, unsafe.Offsetof(s.Target_type)},
		{"flag readonly", flagReadonly, unix.DM_READONLY_FLAG},
		{"flag suspend", flagSuspend, unix.DM_SUSPEND_FLAG},
		{"flag persistent", flagPersistentDev, unix.DM_PERSISTENT_DEV_FLAG},
		{"flag status table", flagStatusTable, unix.DM_STATUS_TABLE_FLAG},
		{"flag active", flagActivePresent, unix.DM_ACTIVE_PRESENT_FLAG},
		{"flag inactive", flagInactivePresent, unix.DM_INACTIVE_PRESENT_FLAG},
		{"flag buffer full", flagBufferFull, unix.DM_BUFFER_FULL_FLAG},
		{"flag skip lockfs", flagSkipLockfs, unix.DM_SKIP_LOCKFS_FLAG},
		{"flag noflush", flagNoflush, unix.DM_NOFLUSH_FLAG},
		{"flag query inactive", flagQueryInactive, unix.DM_QUERY_INACTIVE_TABLE_FLAG},
		{"flag uuid", flagUUID, unix.DM_UUID_FLAG},
		{"flag data out", flagDataOut, unix.DM_DATA_OUT_FLAG},
		{"flag deferred remove", flagDeferredRemove, unix.DM_DEFERRED_REMOVE},
		{"flag internal suspend", flagInternalSuspend, unix.DM_INTERNAL_SUSPEND_FLAG},
		{"name list has uuid", nameListHasUUID, unix.DM_NAME_LIST_FLAG_HAS_UUID},
		{"name len", nameLen, unix.DM_NAME_LEN},
		{"uuid len", uuidLen, unix.DM_UUID_LEN},
		{"type len", maxTargetType, unix.DM_MAX_TYPE_NAME},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: ours %d, unix %d", c.name, c.got, c.want)
		}
	}
	if ioctlVersion[0] != unix.DM_VERSION_MAJOR {
		t.Errorf("major version %d, unix %d", ioctlVersion[0], unix.DM_VERSION_MAJOR)
	}
	// Command numbers: the ioctl request's low byte is the command.
	for c, req := range ioctlRequests {
		if req&0xff != uintptr(c) || (req>>8)&0xff != unix.DM_IOCTL {
			t.Errorf("%v: request %#x", cmd(c), req)
		}
	}
}

// encodeDev must agree with the C library's makedev for every device the
// kernel can hand out.
func TestDevMatchesMkdev(t *testing.T) {
	for _, d := range []Dev{{8, 0}, {253, 7}, {259, 300}, {4095, 1 << 19}, {4096, 5}} {
		if got, want := encodeDev(d), unix.Mkdev(d.Major, d.Minor); got != want {
			t.Errorf("%v: %#x, unix.Mkdev %#x", d, got, want)
		}
	}
}

// A kernel without device-mapper: no control node, no misc device in sysfs,
// no "device-mapper" in /proc/misc. The error says which module to load.
func TestOpenControlWithoutDeviceMapper(t *testing.T) {
	dir := t.TempDir()
	oldSys, oldProc := sysMiscDev, procMisc
	defer func() { sysMiscDev, procMisc = oldSys, oldProc }()
	sysMiscDev = dir + "/sys-class-misc-device-mapper-dev"
	procMisc = dir + "/proc-misc"
	if err := os.WriteFile(procMisc, []byte("229 fuse\n 1 psaux\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := OpenControl(dir + "/mapper/control")
	if !errors.Is(err, ErrNoDeviceMapper) || !strings.Contains(err.Error(), "device-mapper not available: load dm-mod") {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(dir + "/mapper/control"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a control node was made without device-mapper: %v", err)
	}
}

// A device above 4 GiB must report its exact size on every architecture:
// BLKGETSIZE64 writes a u64, which an int-sized ioctl helper truncates (and
// overruns) on arm and 386. Restore checks the origin's size through the
// same deviceBytes.
func TestDeviceSectorsAbove4GiB(t *testing.T) {
	testutil.RequireRoot(t)
	losetup := testutil.LookPath(t, "losetup")
	const size = 5<<30 + 8192 // sparse: costs no disk
	img := filepath.Join(t.TempDir(), "big.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	got, err := DeviceSectors(dev)
	if err != nil {
		t.Fatal(err)
	}
	if got != size/512 {
		t.Errorf("DeviceSectors(%s) = %d, want %d", dev, got, uint64(size/512))
	}
}
