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
// is already loaded or built in is fine. The error names every module that
// failed to load.
func LoadModules(names []string) error {
	var errs []error
	for _, name := range names {
		err := kmodule.Probe(name, "")
		if err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("load kernel module %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// LoadModuleList loads the modules named in the list file at path. A missing
// list is not an error: a kernel with everything built in needs none.
func LoadModuleList(path string) ([]string, error) {
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
	return mods, LoadModules(mods)
}
