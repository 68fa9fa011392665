package qemutests

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mf "github.com/cpinit/cpinit/internal/manifest"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// ABDevice is a simulated A/B device: two system slots, userdata, a
// metadata store and a misc partition, as raw images on the host. Boot plays
// the bootloader the way U-Boot does with Android's bootloader_control: it
// picks the slot from misc (priority, tries), decrements the trial slot's
// tries before booting, and passes the slot on the kernel command line.
type ABDevice struct {
	Dir      string
	Kernel   Kernel
	Initrd   string
	Systems  [2]string // system_a, system_b
	Userdata string
	Metadata string
	Misc     string
	// Slot[i] is appended to the kernel command line when slot i boots
	// (what its system does: sysinit.* parameters).
	Slot [2]string
	// FSType is the userdata filesystem: "" (ext4, NewABDevice) or "f2fs"
	// (NewF2FSABDevice).
	FSType string
}

// Disk order, so the kernel parameters can name them by path.
const (
	abMetadataDev = "/dev/vdd"
	abMiscDev     = "/dev/vde"
)

// NewABDevice makes the images in dir. Userdata (256 MiB ext4, label
// userdata) holds nfiles files of seeded random sizes and contents; slot a is
// the current, successful slot.
func NewABDevice(dir string, k Kernel, initrd string, nfiles int, seed uint64) (*ABDevice, error) {
	return makeABDevice(dir, k, initrd, nfiles, seed, "")
}

// NewF2FSABDevice is NewABDevice with userdata on f2fs (512 MiB, made with
// mkfs.f2fs and filled with sload.f2fs from f2fs-tools), booted with
// cpinit.fstype=f2fs. k must have f2fs (initramfs.GenericKernel) and initrd
// must be cpinit built for it (CpinitInitramfsFor). The system slots stay
// ext4. Userdata is named by path (/dev/vdc): cpinit's LABEL= lookup reads
// ext4 labels only. 512 MiB, not 256: f2fs's own reserve leaves about 160
// MiB free of 256, too little for a 64 MiB COW file plus begin's default
// 128 MiB --reserve.
func NewF2FSABDevice(dir string, k Kernel, initrd string, nfiles int, seed uint64) (*ABDevice, error) {
	return makeABDevice(dir, k, initrd, nfiles, seed, "f2fs")
}

func makeABDevice(dir string, k Kernel, initrd string, nfiles int, seed uint64, fstype string) (*ABDevice, error) {
	d := &ABDevice{Dir: dir, Kernel: k, Initrd: initrd, FSType: fstype}
	var err error
	for i, label := range []string{"system_a", "system_b"} {
		if d.Systems[i], err = MakeSystemImageFor(dir, label, k.Arch); err != nil {
			return nil, err
		}
	}
	content := filepath.Join(dir, "userdata.content")
	if err := writeSeededFiles(content, nfiles, seed); err != nil {
		return nil, err
	}
	d.Userdata = filepath.Join(dir, "userdata.img")
	switch fstype {
	case "":
		// 4 KiB blocks as on real devices (mkfs.ext4 would pick 1 KiB for
		// a filesystem this small).
		if err := MakeExt4(d.Userdata, 256<<20, "userdata", content, "-b", "4096"); err != nil {
			return nil, err
		}
	case "f2fs":
		if err := MakeF2FS(d.Userdata, 512<<20, "userdata", content); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("userdata filesystem %q: ext4 (\"\") or f2fs", fstype)
	}
	d.Metadata = filepath.Join(dir, "metadata.img")
	if err := MakeDisk(d.Metadata, 16<<20); err != nil {
		return nil, err
	}
	d.Misc = filepath.Join(dir, "misc.img")
	if err := MakeDisk(d.Misc, 1<<20); err != nil {
		return nil, err
	}
	bc, err := bootstate.NewBootControl(2, 0)
	if err != nil {
		return nil, err
	}
	return d, d.WriteMisc(bc)
}

func writeSeededFiles(dir string, n int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < n; i++ {
		p := filepath.Join(dir, fmt.Sprintf("d%d", i%4), fmt.Sprintf("f%03d.bin", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		b := make([]byte, 1+rng.IntN(256<<10))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if err := os.WriteFile(p, b, os.FileMode(0o600+rng.IntN(0o100))); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("written before the update\n"), 0o644)
}

// ReadMisc returns the boot control block.
func (d *ABDevice) ReadMisc() (*bootstate.BootControl, error) {
	f, err := os.Open(d.Misc)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return bootstate.ReadBootControl(f, d.Misc)
}

func (d *ABDevice) WriteMisc(bc *bootstate.BootControl) error {
	f, err := os.OpenFile(d.Misc, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return bootstate.WriteBootControl(f, d.Misc, bc)
}

// SelectSlot plays the bootloader: pick a slot, count the attempt in misc.
func (d *ABDevice) SelectSlot() (int, error) {
	bc, err := d.ReadMisc()
	if err != nil {
		return -1, fmt.Errorf("bootloader: %w", err)
	}
	slot := bc.BootloaderSelect()
	if slot < 0 {
		return -1, fmt.Errorf("bootloader: no bootable slot in misc")
	}
	return slot, d.WriteMisc(bc)
}

// Options returns the QEMU options to boot slot with extra kernel parameters.
func (d *ABDevice) Options(slot int, extra string) Options {
	suffix := bootstate.SlotSuffixes[slot]
	userdata := "cpinit.userdata=LABEL=userdata"
	if d.FSType == "f2fs" {
		userdata = "cpinit.userdata=/dev/vdc cpinit.fstype=f2fs"
	}
	return Options{
		Arch:   d.Kernel.Arch,
		Kernel: d.Kernel.Vmlinuz,
		Initrd: []string{d.Initrd},
		Disks:  []string{d.Systems[0], d.Systems[1], d.Userdata, d.Metadata, d.Misc},
		Append: strings.Join([]string{
			"cpinit.root=LABEL=system" + suffix,
			userdata,
			"cpinit.metadata=" + abMetadataDev,
			"cpinit.misc=" + abMiscDev,
			"cpinit.slot=" + suffix,
			// A fatal error reboots: the bootloader then counts the try and
			// may fall back, as on a real device.
			"cpinit.on_fatal=reboot",
			d.Slot[slot], extra,
		}, " "),
	}
}

// Boot selects the slot, boots it for t and returns the VM and the slot.
func (d *ABDevice) Boot(t testing.TB, extra string) (*VM, int) {
	t.Helper()
	slot, err := d.SelectSlot()
	if err != nil {
		t.Fatal(err)
	}
	vm := StartT(t, d.Options(slot, extra))
	return vm, slot
}

// Record reads the metadata store from the host.
func (d *ABDevice) Record() (*bootstate.Record, error) {
	s, f, err := bootstate.OpenStore(d.Metadata)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, _, err := s.Load()
	return r, err
}

// Manifest is path → "mode size sha256" of every regular file and directory
// in userdata, except lost+found and cpinit's own .cpinit directory
// (internal/manifest, which the guest's sysinit uses too).
type Manifest = mf.Manifest

// UserdataManifest reads userdata from the host with debugfs (e2fsprogs),
// which reads the image itself: no mount, no kernel involved, an independent
// reader of what cpinit left on disk. It first checks the filesystem with
// e2fsck -fn and fails unless it is clean.
func (d *ABDevice) UserdataManifest() (Manifest, error) {
	if out, err := exec.Command("e2fsck", "-fn", d.Userdata).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("e2fsck -fn %s: %v\n%s", d.Userdata, err, out)
	}
	out, err := os.MkdirTemp(d.Dir, "rdump-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(out)
	if b, err := exec.Command("debugfs", "-R", "rdump / "+out, d.Userdata).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("debugfs rdump: %v\n%s", err, b)
	}
	return mf.Dir(out)
}

// COWFileExists reports whether userdata still holds the COW file.
func (d *ABDevice) COWFileExists() (bool, error) {
	out, err := exec.Command("debugfs", "-R", "stat /.cpinit/cow", d.Userdata).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("debugfs stat: %v\n%s", err, out)
	}
	return !strings.Contains(string(out), "File not found"), nil
}

// MakeF2FS makes an f2fs image of size bytes at path labelled label with
// mkfs.f2fs and, unless dir is empty, copies dir's tree into it with
// sload.f2fs (f2fs-tools), which writes the image without mounting it.
func MakeF2FS(path string, size int64, label, dir string) error {
	if err := MakeDisk(path, size); err != nil {
		return err
	}
	if out, err := exec.Command("mkfs.f2fs", "-f", "-q", "-l", label, path).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.f2fs %s: %v\n%s", path, err, out)
	}
	if dir == "" {
		return nil
	}
	if out, err := exec.Command("sload.f2fs", "-f", dir, path).CombinedOutput(); err != nil {
		return fmt.Errorf("sload.f2fs -f %s %s: %v\n%s", dir, path, err, out)
	}
	return nil
}

// CheckF2FS checks the f2fs userdata image read-only with fsck.f2fs
// --dry-run and fails unless every check is Ok. (There is no debugfs for
// f2fs: f2fs tests compare userdata through the guest's manifest instead of
// UserdataManifest.)
func (d *ABDevice) CheckF2FS() error {
	out, err := exec.Command("fsck.f2fs", "--dry-run", d.Userdata).CombinedOutput()
	if err != nil || strings.Contains(string(out), "[Fail]") || !strings.Contains(string(out), "[FSCK] other corrupted bugs") {
		return fmt.Errorf("fsck.f2fs --dry-run %s: %v\n%s", d.Userdata, err, out)
	}
	return nil
}

// slotBootTimeout bounds one boot of the A/B device (a merge included).
const SlotBootTimeout = 3 * time.Minute
