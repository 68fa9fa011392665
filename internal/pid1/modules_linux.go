package pid1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

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

// LoadModules loads each module (and what it depends on, from
// /lib/modules/$(uname -r)/modules.dep) with u-root's kmodule. A module that
// is already loaded or built in is fine. A module whose init returns ENODEV
// found nothing to drive on this machine and the kernel has unloaded it
// again: efivarfs does that on a machine not booted through UEFI
// (fs/efivarfs/super.c, efivarfs_init). Such modules are returned in
// absent, not as errors: whatever uses one checks for what it drives
// (cpinit's systemd-boot backend reads EFI variables only when
// /sys/firmware/efi exists, and a failed efivarfs mount names them). The
// error names every module that failed to load for any other reason.
func LoadModules(names []string) (absent []string, err error) {
	var errs []error
	for _, name := range names {
		err := kmodule.Probe(name, "")
		switch {
		case err == nil, errors.Is(err, unix.EEXIST):
		case errors.Is(err, unix.ENODEV):
			absent = append(absent, name)
		default:
			errs = append(errs, fmt.Errorf("load kernel module %s: %w", name, err))
		}
	}
	return absent, errors.Join(errs...)
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
