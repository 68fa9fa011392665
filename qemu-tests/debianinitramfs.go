package qemutests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The distribution initramfs tree: a debootstrapped Debian bookworm with
// initramfs-tools and dracut (qemu-tests/debian-initramfs.list), in which
// qemu-tests/distroinitvm builds its initramfs images with the real
// mkinitramfs and dracut, run in a chroot, as an image build system
// builds a Debian system's initramfs. It is not a slot: the slots stay
// debian-root.list's (MakeDebianSlotImage).

var debianInitramfsRoot struct {
	once sync.Once
	path string
	err  error
}

// DebianInitramfsRoot runs fetch-debian-root.sh with
// debian-initramfs.list once per process and returns the tree. The tree
// in the cache is shared: copy it (NewDebianBuildTree), never change it.
func DebianInitramfsRoot() (string, error) {
	debianInitramfsRoot.once.Do(func() {
		debianInitramfsRoot.path, debianInitramfsRoot.err = fetchDebianRoot("debian-initramfs.list")
	})
	return debianInitramfsRoot.path, debianInitramfsRoot.err
}

// EnsureDebianInitramfsRoot is EnsureDebianRoot for DebianInitramfsRoot's
// tree: the test skips, or fails under CI, when this host cannot build it.
func EnsureDebianInitramfsRoot(t testing.TB) string {
	t.Helper()
	return ensureDebianTree(t, DebianInitramfsRoot)
}

// CpinitBinary is the cpinit CLI built for arch once per process: the
// binary every slot carries at /usr/bin/cpinit.
func CpinitBinary(arch string) (string, error) {
	bins, err := slotBinaries(arch)
	if err != nil {
		return "", err
	}
	return filepath.Join(bins, "cpinit"), nil
}

// NewDebianBuildTree copies DebianInitramfsRoot's tree to dir (which must
// not exist) and makes it the system the pinned cloud kernel's initramfs
// is built for, as its kernel package would: the kernel's modules at
// /lib/modules/<release> with their modules.dep (addDebianModules), its
// config at /boot/config-<release> (mkinitramfs checks the image's
// compression against it; dracut reads it too), and cpinit at
// /usr/bin/cpinit. It returns the kernel's release.
func NewDebianBuildTree(dir string) (string, error) {
	src, err := DebianInitramfsRoot()
	if err != nil {
		return "", err
	}
	k, err := FetchKernel()
	if err != nil {
		return "", err
	}
	if out, err := exec.Command("cp", "-a", "--reflink=auto", src, dir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("copy the Debian tree %s to %s: %w\n%s", src, dir, err, out)
	}
	if err := addDebianModules(dir); err != nil {
		return "", err
	}
	// The package's /boot holds the config beside vmlinuz.
	config := filepath.Join(filepath.Dir(k.Vmlinuz), "config-"+k.Release)
	if err := copyHostFile(config, filepath.Join(dir, "boot", "config-"+k.Release)); err != nil {
		return "", fmt.Errorf("kernel config: %w", err)
	}
	bin, err := CpinitBinary("amd64")
	if err != nil {
		return "", err
	}
	if err := copyExecutable(bin, filepath.Join(dir, "usr/bin/cpinit")); err != nil {
		return "", err
	}
	return k.Release, nil
}

// RunInTree runs a command chrooted into root, in a mount namespace of its
// own (unshare(1) -m) holding /proc, /sys and the host's /dev mounted in
// the tree: what mkinitramfs and dracut read there (/proc/self/mounts,
// /sys/module, /dev/null). The mounts go away with the namespace, so the
// tree never keeps one. It returns the combined output.
func RunInTree(root string, args ...string) (string, error) {
	script := `set -e
mount -t proc proc "$1/proc"
mount -t sysfs sysfs "$1/sys"
mount --rbind /dev "$1/dev"
root=$1
shift
exec chroot "$root" "$@"`
	cmd := exec.Command("unshare", append([]string{"-m", "--propagation", "private", "sh", "-c", script, "sh", root}, args...)...)
	cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("chroot %s %s: %w\n%s", root, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
