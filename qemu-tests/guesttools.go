package qemutests

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/cpinit/cpinit/initramfs"
)

// The in-guest tools (GuestTools and a run's Tools) for a guest of another
// architecture than the host's: the host's dmsetup and e2fsprogs are host
// programs, so an arm64 guest gets Debian's arm64 builds of the same
// versions instead (qemu-tests/guest-tools-arm64.list, fetched and unpacked
// by fetch-guest-tools.sh), with the shared libraries they load, found by
// reading their ELF headers: the host's ldd, which u-root uses for host
// programs, cannot list a foreign program's libraries (initramfs.BuildOptions.Files).

// multiarchTriplet is the library directory of each GOARCH's Debian
// architecture under /lib and /usr/lib (Debian's MultiarchSpec).
var multiarchTriplet = map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu", "arm": "arm-linux-gnueabihf", "386": "i386-linux-gnu"}

// guestToolFiles returns the u-root -files entries (host:guest) that put
// tools (absolute guest paths such as /usr/sbin/dmsetup) into the image of
// a guest of arch: the host's files on the host's architecture (u-root
// adds their libraries), the fetched Debian tree's otherwise.
func guestToolFiles(arch string, tools []string) ([]string, error) {
	var files []string
	if arch == "" || arch == runtime.GOARCH {
		for _, f := range tools {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("guest tool %s missing on the host (make deps installs the packages): %w", f, err)
			}
			files = append(files, f+":"+strings.TrimPrefix(f, "/"))
		}
		return files, nil
	}
	root, err := fetchGuestTools(arch)
	if err != nil {
		return nil, err
	}
	return foreignFiles(root, multiarchTriplet[arch], tools)
}

type fetchedTools struct {
	once sync.Once
	root string
	err  error
}

var (
	toolsMu      sync.Mutex
	toolsFetched = map[string]*fetchedTools{}
)

// fetchGuestTools runs qemu-tests/fetch-guest-tools.sh for arch once per
// process and returns the unpacked tree.
func fetchGuestTools(arch string) (string, error) {
	toolsMu.Lock()
	f, ok := toolsFetched[arch]
	if !ok {
		f = &fetchedTools{}
		toolsFetched[arch] = f
	}
	toolsMu.Unlock()
	f.once.Do(func() {
		deb, err := initramfs.DebianArch(arch)
		if err != nil {
			f.err = err
			return
		}
		script := filepath.Join(RepoRoot(), "qemu-tests", "fetch-guest-tools.sh")
		cmd := exec.Command(script)
		cmd.Env = append(os.Environ(), "GUEST_ARCH="+deb)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			f.err = fmt.Errorf("GUEST_ARCH=%s %s: %w\n%s", deb, script, err, stderr.Bytes())
			return
		}
		s := bufio.NewScanner(bytes.NewReader(out))
		for s.Scan() {
			if v, ok := strings.CutPrefix(s.Text(), "GUEST_TOOLS_ROOT="); ok {
				f.root = v
			}
		}
		if f.root == "" {
			f.err = fmt.Errorf("GUEST_ARCH=%s %s printed no GUEST_TOOLS_ROOT:\n%s", deb, script, out)
		}
	})
	return f.root, f.err
}

// foreignFiles returns the -files entries for tools taken from root, an
// unpacked Debian tree, and for everything they need: the targets of
// symlinks (mkfs.ext4 -> mke2fs), and of each ELF program or library its
// interpreter (PT_INTERP) and the libraries of its DT_NEEDED entries,
// looked up in the multiarch directories of triplet and then /lib and
// /usr/lib (the default search path of Debian's ld.so; none of these
// programs has an RPATH). A tool is found at its guest path in root or,
// for /usr/bin and /usr/sbin, in /bin and /sbin: the packages of bookworm
// still ship there, and the usrmerge of an installed system makes them the
// same directories. A library found nowhere is an error that names it
// (add its package to the list).
func foreignFiles(root, triplet string, tools []string) ([]string, error) {
	// locate is the file in root for a guest path.
	locate := func(guest string) string {
		host := filepath.Join(root, guest)
		if _, err := os.Lstat(host); errors.Is(err, fs.ErrNotExist) {
			for _, merged := range []string{"/usr/bin/", "/usr/sbin/"} {
				if rest, ok := strings.CutPrefix(guest, merged); ok {
					return filepath.Join(root, strings.TrimPrefix(merged, "/usr"), rest)
				}
			}
		}
		return host
	}
	var files []string
	seen := map[string]bool{}
	var add func(guest string) error
	add = func(guest string) error {
		if seen[guest] {
			return nil
		}
		seen[guest] = true
		host := locate(guest)
		fi, err := os.Lstat(host)
		if err != nil {
			return fmt.Errorf("guest file %s: not in the unpacked packages under %s (add its package to the list): %w", guest, root, err)
		}
		files = append(files, host+":"+strings.TrimPrefix(guest, "/"))
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(host)
			if err != nil {
				return err
			}
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(guest), target)
			}
			return add(target)
		}
		f, err := elf.Open(host)
		if err != nil {
			return nil // not an ELF file: no dependencies
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return fmt.Errorf("%s: PT_INTERP: %w", host, err)
			}
			interp := string(bytes.TrimRight(b, "\x00"))
			if err := add(interp); err != nil {
				return fmt.Errorf("%s: interpreter %s: %w", host, interp, err)
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: DT_NEEDED: %w", host, err)
		}
		for _, lib := range libs {
			found := ""
			for _, dir := range []string{"/lib/" + triplet, "/usr/lib/" + triplet, "/lib", "/usr/lib"} {
				if _, err := os.Lstat(filepath.Join(root, dir, lib)); err == nil {
					found = path.Join(dir, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%s needs %s, which no package of the guest tools' list ships (under %s): add its package", host, lib, root)
			}
			if err := add(found); err != nil {
				return err
			}
		}
		return nil
	}
	for _, t := range tools {
		if err := add(t); err != nil {
			return nil, err
		}
	}
	return files, nil
}
