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
	d := &ABDevice{Dir: dir, Kernel: k, Initrd: initrd}
	var err error
	for i, label := range []string{"system_a", "system_b"} {
		if d.Systems[i], err = MakeSystemImage(dir, label); err != nil {
			return nil, err
		}
	}
	content := filepath.Join(dir, "userdata.content")
	if err := writeSeededFiles(content, nfiles, seed); err != nil {
		return nil, err
	}
	d.Userdata = filepath.Join(dir, "userdata.img")
	// 4 KiB blocks as on real devices (mkfs.ext4 would pick 1 KiB for a
	// filesystem this small).
	if err := MakeExt4(d.Userdata, 256<<20, "userdata", content, "-b", "4096"); err != nil {
		return nil, err
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
	return d, d.writeMisc(bc)
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

func (d *ABDevice) writeMisc(bc *bootstate.BootControl) error {
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
	return slot, d.writeMisc(bc)
}

// Options returns the QEMU options to boot slot with extra kernel parameters.
func (d *ABDevice) Options(slot int, extra string) Options {
	suffix := bootstate.SlotSuffixes[slot]
	return Options{
		Kernel: d.Kernel.Vmlinuz,
		Initrd: []string{d.Initrd},
		Disks:  []string{d.Systems[0], d.Systems[1], d.Userdata, d.Metadata, d.Misc},
		Append: strings.Join([]string{
			"cpinit.root=LABEL=system" + suffix,
			"cpinit.userdata=LABEL=userdata",
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

// slotBootTimeout bounds one boot of the A/B device (a merge included).
const slotBootTimeout = 3 * time.Minute
