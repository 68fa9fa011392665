package pid1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"
)

// ModuleListPath is where the initramfs build puts initramfs/modules.list:
// the modules an init loads, with their dependencies resolved from the
// modules.dep generated next to them.
const ModuleListPath = "/etc/cpinit/modules"

// ParseModuleList reads one module name per line; blank lines and '#'
// comments are ignored.
func ParseModuleList(r io.Reader) ([]string, error) {
	var mods []string
	s := bufio.NewScanner(r)
	for s.Scan() {
		line := s.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if line = strings.TrimSpace(line); line != "" {
			mods = append(mods, line)
		}
	}
	return mods, s.Err()
}

// LoadModules loads each module and what it depends on, in dependency
// order. The order comes from /lib/modules/$(uname -r)/modules.dep through
// u-root's kmodule (a dry run: it also skips what /proc/modules and
// modules.builtin say is there), and each file is loaded by LoadModuleFile,
// which also takes compressed modules (.ko.xz, .ko.zst, .ko.gz, as a
// distribution's root has them under boot-step). A module that is already
// loaded or built in is fine. A module whose init returns ENODEV found
// nothing to drive on this machine and the kernel has unloaded it again:
// efivarfs does that on a machine not booted through UEFI
// (fs/efivarfs/super.c, efivarfs_init). Such modules are returned in
// absent, not as errors: whatever uses one checks for what it drives
// (cpinit's systemd-boot backend reads EFI variables only when
// /sys/firmware/efi exists, and a failed efivarfs mount names them). The
// error names every module that failed to load for any other reason.
func LoadModules(names []string) (absent []string, err error) {
	var (
		mu    sync.Mutex
		order []string
	)
	// kmodule calls DryRunCB for a module after all its dependencies,
	// siblings from parallel goroutines.
	p, err := kmodule.NewProber(kmodule.ProbeOpts{DryRunCB: func(path string) {
		mu.Lock()
		order = append(order, path)
		mu.Unlock()
	}})
	if err != nil {
		return nil, fmt.Errorf("load kernel modules %s: %w", strings.Join(names, " "), err)
	}
	var errs []error
	for _, name := range names {
		order = nil
		if err := p.Probe(name, ""); err != nil {
			errs = append(errs, fmt.Errorf("load kernel module %s: %w", name, err))
			continue
		}
	load:
		for _, path := range order {
			err := LoadModuleFile(path)
			switch {
			case err == nil, errors.Is(err, unix.EEXIST):
			case errors.Is(err, unix.ENODEV):
				absent = append(absent, name)
				break load
			default:
				errs = append(errs, fmt.Errorf("load kernel module %s: %w", name, err))
				break load
			}
		}
	}
	return absent, errors.Join(errs...)
}

// LoadModuleFile loads one module file with finit_module(2), so the kernel
// reads it from the file (what module signing, IMA and LoadPin policies
// see). A compressed one (.ko.xz, .ko.zst, .ko.gz) is handed over with
// MODULE_INIT_COMPRESSED_FILE (include/uapi/linux/module.h, Linux 5.17;
// zstd since 6.2) for the kernel to decompress. A kernel that cannot
// returns EINVAL when it does not know the flag (kernel/module/main.c,
// finit_module: flags outside the known ones) or the file is not in the
// one format it decompresses (kernel/module/decompress.c, "not an xz
// compressed module"), and EOPNOTSUPP when it was built without
// CONFIG_MODULE_DECOMPRESS (kernel/module/internal.h, the
// module_decompress stub), as the pinned Debian 6.1 kernel is. cpinit then
// decompresses the file itself and loads the image with init_module(2).
// ENOSYS (no finit_module) takes the same way.
func LoadModuleFile(path string) error {
	comp, ok := ModuleFile(path)
	if !ok {
		return fmt.Errorf("module %s: not a .ko, .ko.gz, .ko.xz or .ko.zst file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if comp != CompressNone {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	ferr := unix.FinitModule(int(f.Fd()), "", flags)
	switch {
	case ferr == nil:
		return nil
	case errors.Is(ferr, unix.ENOSYS):
	case comp != CompressNone && (errors.Is(ferr, unix.EINVAL) || errors.Is(ferr, unix.EOPNOTSUPP)):
	default:
		return &os.PathError{Op: "finit_module", Path: path, Err: ferr}
	}
	// finit_module reads at its own offset; seek anyway, cheaply sure.
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	img, err := DecompressModule(f, comp)
	if err != nil {
		return fmt.Errorf("module %s: %w", path, err)
	}
	if err := unix.InitModule(img, ""); err != nil {
		if comp != CompressNone {
			err = fmt.Errorf("decompressed by cpinit, as the kernel's finit_module said %v: %w", ferr, err)
		}
		return &os.PathError{Op: "init_module", Path: path, Err: err}
	}
	return nil
}

// SplitDeviceMapper separates the device-mapper modules (dm-*, dm_*) from
// the rest, keeping the order: cpinit loads the rest at once and the
// device-mapper ones only when a boot needs a mapping. A boot with no
// checkpoint then pays nothing for device-mapper (~105 ms under QEMU TCG,
// mostly module signature checks; docs/BENCHMARKS.md, boot section).
func SplitDeviceMapper(mods []string) (early, dm []string) {
	for _, m := range mods {
		if strings.HasPrefix(m, "dm-") || strings.HasPrefix(m, "dm_") {
			dm = append(dm, m)
		} else {
			early = append(early, m)
		}
	}
	return early, dm
}

// ReadModuleList reads the list file at path; a missing list is an empty
// one (a kernel with everything built in needs none).
func ReadModuleList(path string) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mods, err := ParseModuleList(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return mods, nil
}

// DeviceMapperPresent reports whether device-mapper is in the kernel now,
// loaded as a module or built in (/proc/misc lists its control device, and
// /sys/module/dm_mod exists in both cases once it is registered).
func DeviceMapperPresent() bool {
	if _, err := os.Stat("/sys/module/dm_mod"); err == nil {
		return true
	}
	b, err := os.ReadFile("/proc/misc")
	return err == nil && strings.Contains(string(b), " device-mapper\n")
}

// LoadModuleList loads the modules named in the list file at path (a
// missing list loads nothing) and returns their names and those that found
// nothing to drive (see LoadModules).
func LoadModuleList(path string) (mods, absent []string, err error) {
	mods, err = ReadModuleList(path)
	if err != nil {
		return nil, nil, err
	}
	absent, err = LoadModules(mods)
	return mods, absent, err
}
