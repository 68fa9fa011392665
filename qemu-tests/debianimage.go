package qemutests

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

// The Debian slot: a system slot that is a real Debian bookworm system,
// its packages installed by debootstrap and dpkg from Debian's archive
// (qemu-tests/fetch-debian-root.sh, packages in qemu-tests/debian-root.list:
// systemd, dbus, rauc, swupdate, mender-client, ...), not files copied
// from the host as in the systemd slot (systemdimage.go). Tests run the
// real update agents in it against cpinit.
//
// MakeDebianSlotImage copies the cached tree and adds what the device
// needs, following systemdimage.go's conventions:
//
//   - the cpinit CLI at /usr/bin/cpinit, and cpinit's units from
//     dist/systemd installed in /usr/lib/systemd/system and enabled as a
//     package would (cpinit-commit.service in basic.target.wants,
//     cpinit-watch.service in the test target, standing in for
//     multi-user.target);
//   - the pinned cloud kernel's modules at /lib/modules/<release> with a
//     modules.dep (Debian's kernel package ships none: its postinst runs
//     depmod), and /etc/modules-load.d/cpinit-test.conf loading loop and
//     squashfs, which rauc's bundles need (systemd-modules-load.service);
//   - systemd logging to the console and services writing to it
//     (systemdManagerConf), as the host matches test lines on the serial
//     console;
//   - default.target is cpinit-test.target: basic.target plus the units
//     the caller enables in it (EnableDebianTestUnit), which print lines
//     for the host and power off (SuccessAction=poweroff);
//   - a tmpfs on /tmp, a fixed machine id and hostname, an empty /data
//     (cpinit mounts userdata there), masks for what fails or only costs
//     time on this device (debianMasks).
//
// cpinit mounts the slot READ-ONLY (and hands over /run, a tmpfs): what a
// test's units write goes to /run, /tmp or /data.
//
// amd64 only, for devices that boot the pinned cloud kernel
// (NewTestDevice without CPINIT_ARCH): the slot carries that kernel's
// modules, and systemd-modules-load finds them by uname -r.

// ErrDebianRootUnavailable: this host cannot build the Debian tree (not
// root, no debootstrap, not amd64): fetch-debian-root.sh's exit status 3.
var ErrDebianRootUnavailable = errors.New("cannot build the Debian root on this host")

var debianRoot struct {
	sync.Mutex
	done bool
	path string
	err  error
}

// DebianRoot runs qemu-tests/fetch-debian-root.sh once per process (it is
// itself idempotent: a stamped tree in the cache is used as it is) and
// returns the Debian tree. The tree in the cache is shared: copy it, never
// change it.
func DebianRoot() (string, error) {
	debianRoot.Lock()
	defer debianRoot.Unlock()
	if !debianRoot.done {
		debianRoot.path, debianRoot.err = fetchDebianRoot("")
		debianRoot.done = true
	}
	return debianRoot.path, debianRoot.err
}

// fetchDebianRoot runs fetch-debian-root.sh for the package list named
// (a file in qemu-tests; "": its default, debian-root.list).
func fetchDebianRoot(list string) (string, error) {
	script := filepath.Join(RepoRoot(), "qemu-tests", "fetch-debian-root.sh")
	cmd := exec.Command(script)
	if list != "" {
		cmd.Args = append(cmd.Args, filepath.Join(RepoRoot(), "qemu-tests", list))
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 3 {
		return "", fmt.Errorf("%s: %w: %s", script, ErrDebianRootUnavailable, strings.TrimSpace(stderr.String()))
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w\n%s", script, err, stderr.Bytes())
	}
	for _, l := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(l, "DEBIAN_ROOT="); ok && p != "" {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s printed no DEBIAN_ROOT=:\n%s", script, out)
}

// EnvDebianSlots selects the tests that boot Debian slots (the update
// agents' in qemu-tests/agentvm, the distribution initramfs'): each is a
// minute or more of TCG, and the first one of a run pays for debootstrap.
// CPINIT_DEBIAN=1 runs all of them (make test-agents, make soak); core,
// a few (RAUC's rollback), for a quick check. make test sets neither: it
// must stay within 20 minutes on 2 cores.
const EnvDebianSlots = "CPINIT_DEBIAN"

// NeedDebianSlots gates a Debian slot test: core says whether make test
// runs it (CPINIT_DEBIAN=core). Unselected, it skips and says so, under
// CI too: the tests are selected, not missing (as NeedArm64's). Selected,
// it is EnsureDebianRoot.
func NeedDebianSlots(t testing.TB, core bool) string {
	t.Helper()
	switch v := os.Getenv(EnvDebianSlots); {
	case v == "1", v == "core" && core:
	case core:
		t.Skipf("Debian slot test: runs with %s=core or 1 (make test-agents, make soak); make test leaves it out, for time", EnvDebianSlots)
	default:
		t.Skipf("Debian slot test: runs with %s=1 (make test-agents, make soak); make test leaves it out, for time", EnvDebianSlots)
	}
	return EnsureDebianRoot(t)
}

// EnsureDebianRoot gates the Debian slot tests and returns the tree: it
// needs root (debootstrap, and copying the tree keeps its files' owners
// for the image) and, unless the tree is in the cache, debootstrap.
// Without them the test skips with the reason, or fails under CI, which
// installs debootstrap (Makefile DEB_PACKAGES) and runs as root.
func EnsureDebianRoot(t testing.TB) string {
	t.Helper()
	return ensureDebianTree(t, DebianRoot)
}

// ensureDebianTree is EnsureDebianRoot for the tree fetch returns.
func ensureDebianTree(t testing.TB, fetch func() (string, error)) string {
	t.Helper()
	skip := func(why string) {
		t.Helper()
		if testutil.InCI() {
			t.Fatalf("Debian slot test: %s; CI must provide it", why)
		}
		t.Skipf("SKIPPING the Debian slot test: %s", why)
	}
	if os.Geteuid() != 0 {
		skip(fmt.Sprintf("needs root (debootstrap chroots and sets owners; the slot image keeps them), euid=%d", os.Geteuid()))
	}
	testutil.LookPath(t, "mkfs.ext4")
	testutil.LookPath(t, "chroot")
	root, err := fetch()
	if errors.Is(err, ErrDebianRootUnavailable) {
		skip(err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// DebianTestTarget is the Debian slot's default.target.
const DebianTestTarget = "cpinit-test.target"

const debianTestTargetUnit = `[Unit]
Description=cpinit test system (Debian)
Requires=basic.target
After=basic.target
AllowIsolate=yes
`

// debianModulesLoad: systemd-modules-load.service reads modules-load.d(5)
// at boot and loads these with libkmod from /lib/modules/$(uname -r).
const debianModulesLoad = `# cpinit tests: rauc mounts bundles (squashfs) through loop devices.
loop
squashfs
`

// debianMasks are units of the Debian tree masked in the slot (linked to
// /dev/null in /etc/systemd/system, as systemctl mask does). Each was
// measured on this device, a read-only root without udev under TCG, to
// fail or to cost boot time for nothing a test uses. Measured from QEMU's
// start to power off with TestDebianSlotBoots's unit (qemu64 under TCG, 1
// vCPU, a noisy 2-core host): 12.9-14.6 s with no mask, 10.4-14.6 s with
// debianGeneratorMasks, 8.7-10.5 s with these masks too.
var debianMasks = []string{
	// Fails on the read-only root: at shutdown it cannot write
	// /var/lib/systemd/random-seed ("Read-only file system", exit 1).
	"systemd-random-seed.service",
	// Writes the boot and shutdown records to /var/log/wtmp: fails on
	// the read-only root (logged and ignored), twice per boot.
	"systemd-update-utmp.service",
	// Their services fail on the read-only root (started by hand in the
	// guest): apt.systemd.daily cannot create /var/lib/apt/daily_lock,
	// dpkg-db-backup cannot write /var/backups. Should one fire during a
	// test (apt-daily: twice a day with up to 12 h of random delay), it
	// would fail and load the CPU.
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
	// fstrim.service trims every mounted filesystem that supports it:
	// started by hand it discarded 215 MiB of /data, the test's
	// userdata, which must change only as the test says.
	"fstrim.timer",
	// Nothing to flush: without /var/log/journal (removed below) the
	// journal is volatile. It runs journalctl --flush on the boot's
	// critical path (systemd-tmpfiles-setup.service waits for it): 0.2-0.3 s.
	"systemd-journal-flush.service",
	// Kernel API filesystems and modules nothing here uses (huge pages,
	// debugfs, tracefs, FUSE, configfs; EFI pstore on a machine without
	// EFI): a mount(8) or modprobe each, at boot and shutdown. Masking
	// the two mounts also drops modprobe@configfs and modprobe@fuse,
	// which they pull in. Measured together with the two units above
	// them: 1.1-1.7 s less to the test unit.
	"dev-hugepages.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
	"sys-fs-fuse-connections.mount", "sys-kernel-config.mount",
	"modprobe@efi_pstore.service", "systemd-pstore.service",
}

// debianGeneratorMasks are systemd generators masked in the slot: a link
// to /dev/null in /etc/systemd/system-generators masks the one of the
// same name (systemd.generator(7)). systemd runs every generator before it
// loads a unit, an exec of a program linked with libsystemd-shared each;
// under TCG these took about 1.5-2 s of the boot (exec of systemd to
// "Queued start job": 3.2-4.2 s with all, 1.4-2.4 s without these). Each has
// nothing to do here: no /etc/crypttab, veritytab or integritytab; cpinit,
// not root= or GPT auto-discovery, picks the root; no resume=, no
// /system-update, no /etc/rc.local; every init script in /etc/init.d has
// a native unit; the test target pulls no getty.target. Kept: fstab (an
// /etc/fstab a test writes), debug (systemd.mask=, systemd.wants=,
// systemd.debug_shell on the kernel command line) and run (systemd.run=).
var debianGeneratorMasks = []string{
	"systemd-cryptsetup-generator", "systemd-veritysetup-generator", "systemd-integritysetup-generator",
	"systemd-gpt-auto-generator", "systemd-hibernate-resume-generator", "systemd-system-update-generator",
	"systemd-rc-local-generator", "systemd-sysv-generator", "systemd-getty-generator",
}

// EnableDebianTestUnit writes a test unit into the Debian slot tree root
// (/etc/systemd/system/name) and enables it in the test target, for
// MakeDebianSlotImage's extra function.
func EnableDebianTestUnit(root, name, text string) error {
	p := filepath.Join(root, "etc/systemd/system", name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		return err
	}
	return symlinkIn(root, "etc/systemd/system/"+DebianTestTarget+".wants/"+name, "/etc/systemd/system/"+name)
}

// MakeDebianSlotImage builds a Debian system slot in dir: an ext4 image
// labelled label (the file dir/label-debian.img) from a copy of the
// Debian tree (DebianRoot) with what the device needs (the top of this
// file); extra, if not nil, adds the caller's files to the copy (its root
// directory) before the image is made. The copy is removed afterwards.
func MakeDebianSlotImage(dir, label string, extra func(root string) error) (string, error) {
	src, err := DebianRoot()
	if err != nil {
		return "", err
	}
	root := filepath.Join(dir, label+"-debian.root")
	if err := os.RemoveAll(root); err != nil {
		return "", err
	}
	defer os.RemoveAll(root)
	// cp -a keeps owners, modes, links and the files' capabilities
	// (security.* xattrs), which dpkg set; --reflink=auto shares blocks
	// where the filesystem can.
	if out, err := exec.Command("cp", "-a", "--reflink=auto", src, root).CombinedOutput(); err != nil {
		return "", fmt.Errorf("copy the Debian tree %s to %s: %w\n%s", src, root, err, out)
	}
	if err := debianSlotRoot(root); err != nil {
		return "", err
	}
	if extra != nil {
		if err := extra(root); err != nil {
			return "", fmt.Errorf("Debian slot %s: %w", root, err)
		}
	}
	used, err := treeSize(root)
	if err != nil {
		return "", err
	}
	// Room for the journal, the inode tables and whatever a test adds at
	// build time: a quarter more, and at least 64 MiB.
	size := max(used+used/4, used+64<<20)
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	img := filepath.Join(dir, label+"-debian.img")
	// 4 KiB blocks, so treeSize's count holds (mke2fs.conf's "small" type
	// would pick 1 KiB blocks below 512 MiB).
	if err := MakeExt4(img, size, label, root, "-b", "4096"); err != nil {
		return "", err
	}
	return img, nil
}

// debianSlotRoot adds the device's files to the copied Debian tree root.
func debianSlotRoot(root string) error {
	bins, err := slotBinaries("amd64")
	if err != nil {
		return err
	}
	if err := copyExecutable(filepath.Join(bins, "cpinit"), filepath.Join(root, "usr/bin/cpinit")); err != nil {
		return err
	}
	if err := addDebianModules(root); err != nil {
		return err
	}

	// cpinit's units, as a package installs them (/usr/lib/systemd/system)
	// and `systemctl enable` enables them from their [Install] sections.
	dist := filepath.Join(RepoRoot(), "dist", "systemd")
	for _, u := range []string{"cpinit-commit.service", "cpinit-watch.service"} {
		if err := copyHostFile(filepath.Join(dist, u), filepath.Join(root, "usr/lib/systemd/system", u)); err != nil {
			return err
		}
	}
	// bookworm's systemd ships tmp.mount in /usr/share/systemd/, outside
	// the unit search path: /tmp is a plain directory of the root (a
	// tmpfs /tmp became Debian's default only in trixie). Copied into
	// /etc/systemd/system and enabled, /tmp is a tmpfs, and writable on
	// this read-only root.
	if err := copyHostFile(filepath.Join(root, "usr/share/systemd/tmp.mount"), filepath.Join(root, "etc/systemd/system/tmp.mount")); err != nil {
		return fmt.Errorf("Debian tree %s: tmp.mount: %w", root, err)
	}
	links := map[string]string{
		"etc/systemd/system/default.target":                                      DebianTestTarget,
		"etc/systemd/system/basic.target.wants/cpinit-commit.service":            "/usr/lib/systemd/system/cpinit-commit.service",
		"etc/systemd/system/" + DebianTestTarget + ".wants/cpinit-watch.service": "/usr/lib/systemd/system/cpinit-watch.service",
		"etc/systemd/system/local-fs.target.wants/tmp.mount":                     "/etc/systemd/system/tmp.mount",
		// dbus's postinst wrote a random id of its own to
		// /var/lib/dbus/machine-id; machine-id(5) allows that file to be
		// a link to /etc/machine-id, which keeps the two the same.
		"var/lib/dbus/machine-id": "/etc/machine-id",
	}
	for _, u := range debianMasks {
		links["etc/systemd/system/"+u] = "/dev/null"
	}
	for _, g := range debianGeneratorMasks {
		links["etc/systemd/system-generators/"+g] = "/dev/null"
	}
	for l, target := range links {
		if err := symlinkIn(root, l, target); err != nil {
			return err
		}
	}
	text := map[string]string{
		"etc/machine-id":                             "c0ffee00c0ffee00c0ffee00c0ffee01\n",
		"etc/hostname":                               "cpinit-debian\n",
		"etc/systemd/system/" + DebianTestTarget:     debianTestTargetUnit,
		"etc/systemd/system.conf.d/cpinit-test.conf": systemdManagerConf,
		"etc/modules-load.d/cpinit-test.conf":        debianModulesLoad,
	}
	for p, s := range text {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		// debootstrap leaves /etc/machine-id mode 0444.
		if err := os.Remove(full); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			return err
		}
	}
	// journald.conf(5), Storage=auto (Debian's default): persistent when
	// /var/log/journal exists, volatile otherwise. The root is read-only:
	// without the directory the journal stays in /run/log/journal, and
	// systemd-tmpfiles no longer fails to set its ACL at every boot.
	if err := os.RemoveAll(filepath.Join(root, "var/log/journal")); err != nil {
		return err
	}
	// The mount point cpinit mounts userdata on.
	return os.MkdirAll(filepath.Join(root, "data"), 0o755)
}

// addDebianModules copies the pinned cloud kernel's modules into root's
// /lib/modules/<release> and makes their modules.dep with the tree's own
// depmod (kmod), run in a chroot: the same kmod that reads them at boot,
// and no host kmod needed.
func addDebianModules(root string) error {
	k, err := FetchKernel()
	if err != nil {
		return err
	}
	// /lib is /usr/lib in bookworm (merged /usr): write through usr/.
	dst := filepath.Join(root, "usr/lib/modules", k.Release)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", "--reflink=auto", k.Modules, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("copy the kernel modules %s to %s: %w\n%s", k.Modules, dst, err, out)
	}
	if out, err := exec.Command("chroot", root, "/usr/sbin/depmod", "-a", k.Release).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod -a %s in %s: %w\n%s", k.Release, root, err, out)
	}
	return nil
}

// symlinkIn makes the link root/name pointing to target, replacing a file
// or link there.
func symlinkIn(root, name, target string) error {
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return os.Symlink(target, p)
}

// treeSize is what root's files take on an ext4 with 4 KiB blocks: each
// file's and directory's size rounded up to a block (symlinks of fewer
// than 60 bytes live in the inode).
func treeSize(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		size := fi.Size()
		if d.Type()&fs.ModeSymlink != 0 && size < 60 {
			return nil
		}
		if d.IsDir() {
			size = max(size, 4096)
		}
		n += (size + 4095) &^ 4095
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", root, err)
	}
	return n, nil
}
