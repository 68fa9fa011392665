package qemutests

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"testing"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// The test helpers the QEMU test packages share (qemu-tests and
// qemu-tests/cachecutvm): devices, records, manifests.

// NeedQEMU gates every VM test: skip with the reason on a laptop without
// QEMU, fail in CI.
func NeedQEMU(t testing.TB) Kernel {
	t.Helper()
	testutil.LookPath(t, "qemu-system-x86_64")
	testutil.LookPath(t, "mkfs.ext4")
	k, err := FetchKernel()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// CpinitImage is the product initramfs (CpinitInitramfs) for t.
func CpinitImage(t testing.TB) string {
	t.Helper()
	p, err := CpinitInitramfs()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// NewTestDevice is an A/B device (NewABDevice) in t's temporary directory:
// 60 seeded files in ext4 userdata, the cloud kernel, the product initramfs.
func NewTestDevice(t testing.TB, seed uint64) *ABDevice {
	t.Helper()
	k := NeedQEMU(t)
	testutil.LookPath(t, "debugfs")
	testutil.LookPath(t, "e2fsck")
	d, err := NewABDevice(t.TempDir(), k, CpinitImage(t), 60, seed)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// UserdataManifestT is d's userdata manifest, read from the host.
func UserdataManifestT(t testing.TB, d *ABDevice) Manifest {
	t.Helper()
	m, err := d.UserdataManifest()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// WantRecord fails t unless d's metadata record is in state.
func WantRecord(t testing.TB, d *ABDevice, state bootstate.State) *bootstate.Record {
	t.Helper()
	r, err := d.Record()
	if err != nil {
		t.Fatalf("metadata store: %v", err)
	}
	if r.State != state {
		t.Fatalf("metadata state %v (reason %v), want %v", r.State, r.Reason, state)
	}
	return r
}

// NewTestF2FSDevice is NewTestDevice with f2fs userdata (NewF2FSABDevice,
// the generic kernel), checked with fsck.f2fs as made.
func NewTestF2FSDevice(t testing.TB, seed uint64) *ABDevice {
	t.Helper()
	testutil.LookPath(t, "qemu-system-x86_64")
	for _, tool := range []string{"mkfs.ext4", "mkfs.f2fs", "sload.f2fs", "fsck.f2fs"} {
		testutil.LookPath(t, tool)
	}
	k, initrd, err := CpinitInitramfsFor(initramfs.GenericKernel)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewF2FSABDevice(t.TempDir(), k, initrd, 60, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CheckF2FS(); err != nil {
		t.Fatalf("userdata as made: %v", err)
	}
	return d
}

// ManifestRe matches sysinit's manifest lines, checking /data is the f2fs.
// It ends at the line's end: the console arrives in pieces, and without it
// a match can end inside the digest or the count ("files=6" of "files=65").
const ManifestRe = `sysinit: datafs=f2fs\r?\nsysinit: manifest=([0-9a-f]+) files=(\d+)\r?\n`

// EnvInt is the integer in environment variable name, or def.
func EnvInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}

// RecString is a metadata record in one line, for logs and failures.
func RecString(r bootstate.Record) string {
	s := r.State.String()
	if r.Active {
		s += "/active"
	}
	s += fmt.Sprintf(" reason=%s attempts=%d mergetries=%d", r.Reason, r.Attempts, r.MergeTries)
	if r.TargetSlot != "" {
		s += " target=" + r.TargetSlot
	}
	if r.COWPath != "" {
		s += " cow=" + r.COWPath
	}
	return s
}

// CopyFile copies an image file.
func CopyFile(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
