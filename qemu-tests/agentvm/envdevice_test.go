package agentvm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// envDevice is the device of the SWUpdate and Mender tests: U-Boot's
// environment holds the A/B state, as both agents expect, and the slots
// are partitions 2 and 3 of one disk (Mender derives mender_boot_part from
// the partition number of the root device; U-Boot's bootcount scripts
// select ${devnum}:${bootpart}). The host plays U-Boot with the boot
// script the scheme names (bootstate.SimulateUBootBoot: RAUC's, Mender's
// or the bootcount/altbootcmd one, proven against the real U-Boot in
// qemu-tests/bootloadervm) and passes the slot on the kernel command line.
//
//	/dev/vda   GPT: 1 "boot" (unused, 1 MiB), 2 system_a, 3 system_b
//	/dev/vdb   userdata (ext4, the seeded files of qemutests.NewTestDevice)
//	/dev/vdc   cpinit's metadata store
//	/dev/vdd   U-Boot's environment: one copy of 16 KiB at 0 (mkenvimage),
//	           /etc/fw_env.config "/dev/vdd 0x0 0x4000" in the slots
//	/dev/vde   the update (an ext4 holding the artifact or .swu)
type envDevice struct {
	*qt.ABDevice // Userdata, Metadata, Kernel, Initrd; its Systems and Misc are unused
	SysDisk      string
	EnvDisk      string
	UpdateDisk   string
	Scheme       string // bootstate.UBootSchemeMender or UBootSchemeBootcount
	// Slot[i] is appended to the kernel command line when slot i boots.
	Slot [2]string
}

// envSize is the environment's size, CONFIG_ENV_SIZE of the board.
const envSize = 0x4000

// FWEnvConfig is the slots' /etc/fw_env.config (libubootenv's format).
const FWEnvConfig = "/dev/vdd 0x0 0x4000\n"

// newEnvDevice makes the device: slot a is imgA, slot b blank and as big
// as bSize (the update writes it), the environment from vars (NAME=value
// lines, made by the real mkenvimage), the update disk holding the files
// of updateFiles (name -> host path).
func newEnvDevice(t *testing.T, seed uint64, scheme, imgA string, bSize int64, vars string, updateFiles map[string]string) *envDevice {
	t.Helper()
	sfdisk := testutil.LookPath(t, "sfdisk")
	mkenvimage := testutil.LookPath(t, "mkenvimage")
	d := qt.NewTestDevice(t, seed)
	e := &envDevice{ABDevice: d, Scheme: scheme,
		SysDisk: filepath.Join(d.Dir, "sys.img"), EnvDisk: filepath.Join(d.Dir, "env.img"), UpdateDisk: filepath.Join(d.Dir, "update.img")}
	fi, err := os.Stat(imgA)
	if err != nil {
		t.Fatal(err)
	}
	mib := int64(1 << 20)
	slot := (max(fi.Size(), bSize) + mib - 1) / mib * mib
	// Partitions at 1 MiB alignment: 1 MiB "boot", then the two slots;
	// the backup GPT needs the last 33 sectors.
	total := 2*mib + 2*slot + mib
	if err := qt.MakeDisk(e.SysDisk, total); err != nil {
		t.Fatal(err)
	}
	sectors := slot / 512
	script := fmt.Sprintf("label: gpt\nstart=2048, size=2048, name=boot\nstart=4096, size=%d, name=system_a\nstart=%d, size=%d, name=system_b\n",
		sectors, 4096+sectors, sectors)
	cmd := exec.Command(sfdisk, "--no-reread", "--no-tell-kernel", "-q", e.SysDisk)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk %s: %v\n%s", e.SysDisk, err, out)
	}
	run(t, "dd", "if="+imgA, "of="+e.SysDisk, "bs=1M", fmt.Sprintf("seek=%d", 2), "conv=notrunc,sparse", "status=none")
	if err := os.Remove(imgA); err != nil {
		t.Fatal(err)
	}
	varsFile := filepath.Join(d.Dir, "uboot-env.txt")
	if err := os.WriteFile(varsFile, []byte(vars), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, mkenvimage, "-s", fmt.Sprint(envSize), "-o", e.EnvDisk, varsFile)
	if err := os.Truncate(e.EnvDisk, 1<<20); err != nil {
		t.Fatal(err)
	}
	var size int64
	content := filepath.Join(d.Dir, "update.content")
	if err := os.MkdirAll(content, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, p := range updateFiles {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		size += st.Size()
		if err := os.Rename(p, filepath.Join(content, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := qt.MakeExt4(e.UpdateDisk, size+size/8+32<<20, "update", content); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(content)
	return e
}

// bootloader is the environment as cpinit and the simulated U-Boot read it.
func (e *envDevice) bootloader(t *testing.T) *bootstate.UBootBootloader {
	t.Helper()
	loc, err := bootstate.ParseUBootEnvLocation(fmt.Sprintf("%s:0x0:0x%x", e.EnvDisk, envSize))
	if err != nil {
		t.Fatal(err)
	}
	return &bootstate.UBootBootloader{Location: loc, Scheme: bootstate.UBootSchemeConfig{Scheme: e.Scheme}}
}

// state loads the environment's A/B state.
func (e *envDevice) state(t *testing.T) bootstate.UBootState {
	t.Helper()
	s, err := e.bootloader(t).Load()
	if err != nil {
		t.Fatal(err)
	}
	return s.(bootstate.UBootState)
}

// boot plays U-Boot (the scheme's script: pick the slot, count the try,
// save) and boots the picked slot with extra kernel parameters.
func (e *envDevice) boot(t *testing.T, extra string) (*qt.VM, int) {
	t.Helper()
	bl := e.bootloader(t)
	s, err := bl.Load()
	if err != nil {
		t.Fatalf("U-Boot: %v", err)
	}
	slot, err := bootstate.SimulateUBootBoot(s.(bootstate.UBootState))
	if err != nil || slot == "" {
		t.Fatalf("U-Boot picked no slot: %v", err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatalf("U-Boot saveenv: %v", err)
	}
	i := bootstate.SlotIndex(slot)
	suffix := bootstate.SlotSuffixes[i]
	o := qt.Options{
		Arch:   e.Kernel.Arch,
		Kernel: e.Kernel.Vmlinuz,
		Initrd: []string{e.Initrd},
		Disks:  []string{e.SysDisk, e.Userdata, e.Metadata, e.EnvDisk, e.UpdateDisk},
		Append: strings.Join([]string{
			fmt.Sprintf("cpinit.root=/dev/vda%d", i+2),
			"cpinit.userdata=LABEL=userdata",
			"cpinit.metadata=/dev/vdc",
			"cpinit.bootloader=" + e.Scheme,
			fmt.Sprintf("cpinit.ubootenv=/dev/vdd:0x0:0x%x", envSize),
			"cpinit.slot=" + suffix,
			"cpinit.on_fatal=reboot",
			e.Slot[i], extra,
		}, " "),
		MemoryMB: 1024,
	}
	return qt.StartT(t, o), i
}
