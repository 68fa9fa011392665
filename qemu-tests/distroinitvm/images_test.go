package distroinitvm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	qt "github.com/cpinit/cpinit/qemu-tests"
)

// What the tests share, built once per test process (sync.Once) in
// workDir: the build tree, each flavor's initramfs, the Debian slot
// images. Each test copies the slot images (sparse, a fraction of a
// second) and boots the shared initramfs read-only.

// workDir is this process's scratch directory (TestMain removes it).
var workDir string

func TestMain(m *testing.M) {
	var err error
	if workDir, err = os.MkdirTemp("", "cpinit-distroinit-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(workDir)
	os.Exit(code)
}

// buildTree is the Debian tree the images are built in
// (qemutests.NewDebianBuildTree: the initramfs tools, the pinned kernel's
// modules and config, cpinit), with cpinit's integrations installed by
// their own install scripts, as an integrator runs them.
var buildTree struct {
	once    sync.Once
	dir     string
	release string
	took    time.Duration
	err     error
}

func tree() (dir, release string, err error) {
	buildTree.once.Do(func() {
		start := time.Now()
		buildTree.dir = filepath.Join(workDir, "tree")
		buildTree.release, buildTree.err = qt.NewDebianBuildTree(buildTree.dir)
		for _, script := range []string{"dist/initramfs-tools/install.sh", "dist/dracut/install.sh"} {
			if buildTree.err != nil {
				break
			}
			if out, err := exec.Command("sh", filepath.Join(qt.RepoRoot(), script), buildTree.dir).CombinedOutput(); err != nil {
				buildTree.err = fmt.Errorf("%s %s: %w\n%s", script, buildTree.dir, err, out)
			}
		}
		buildTree.took = time.Since(start)
	})
	return buildTree.dir, buildTree.release, buildTree.err
}

// flavor is one distribution initramfs: how it is built, where it mounts
// the root, what it adds to the kernel command line.
type flavor struct {
	name string
	// rootMnt is where the initramfs mounts the root: initramfs-tools'
	// ${rootmnt}, dracut's /sysroot; boot-step mounts userdata under it.
	rootMnt string
	// build runs the real tool in the tree for the kernel release and
	// returns the image's path inside the tree.
	build func(tree, release string) (string, error)
	// cmdline is what the flavor's initramfs needs on the kernel command
	// line besides root=.
	cmdline string

	once sync.Once
	path string // the image, copied out of the tree
	took time.Duration
	err  error
}

// initramfsTools builds with update-initramfs -c, which runs mkinitramfs
// with the tree's /etc/initramfs-tools (Debian's defaults: MODULES=most,
// BUSYBOX=auto, COMPRESS=zstd) and writes /boot/initrd.img-<release>, as a
// kernel package's postinst does.
var initramfsTools = &flavor{
	name:    "initramfs-tools",
	rootMnt: "/root",
	build: func(tree, release string) (string, error) {
		if _, err := qt.RunInTree(tree, "update-initramfs", "-c", "-k", release); err != nil {
			return "", err
		}
		return filepath.Join(tree, "boot", "initrd.img-"+release), nil
	},
}

// dracut builds with dracut's defaults (Debian's /etc/dracut.conf sets
// nothing: not host-only, every module whose check() passes): with
// systemd in the tree, a systemd-based initramfs (98dracut-systemd), and
// cpinit's 90cpinit, whose check() includes it once /usr/bin/cpinit
// exists. rd.shell=0 rd.emergency=reboot: a failure in the initramfs ends
// the boot (QEMU's -no-reboot) instead of waiting at an emergency shell.
var dracut = &flavor{
	name:    "dracut",
	rootMnt: "/sysroot",
	build: func(tree, release string) (string, error) {
		out := "/boot/initrd-dracut.img-" + release
		if _, err := qt.RunInTree(tree, "dracut", "--force", "--kver", release, out); err != nil {
			return "", err
		}
		return filepath.Join(tree, out), nil
	},
	cmdline: "rd.shell=0 rd.emergency=reboot",
}

// dracutShell is dracut's shell-based image: the same defaults with the
// systemd module omitted (--omit systemd), as in a system without
// systemd, which also leaves out every module that depends on it
// (systemd-initrd, dracut-systemd). Its /init is dracut's shell script,
// and cpinit's module installs its pre-pivot hook instead of the unit.
var dracutShell = &flavor{
	name:    "dracut-shell",
	rootMnt: "/sysroot",
	build: func(tree, release string) (string, error) {
		out := "/boot/initrd-dracut-shell.img-" + release
		if _, err := qt.RunInTree(tree, "dracut", "--force", "--omit", "systemd", "--kver", release, out); err != nil {
			return "", err
		}
		return filepath.Join(tree, out), nil
	},
	cmdline: "rd.shell=0 rd.emergency=reboot",
}

// image builds f's initramfs once per process and returns it.
func (f *flavor) image(t *testing.T) string {
	t.Helper()
	f.once.Do(func() {
		dir, release, err := tree()
		if err != nil {
			f.err = err
			return
		}
		start := time.Now()
		p, err := f.build(dir, release)
		if err != nil {
			f.err = fmt.Errorf("%s: %w", f.name, err)
			return
		}
		f.path = filepath.Join(workDir, f.name+".img")
		f.err = os.Rename(p, f.path)
		f.took = time.Since(start)
	})
	if f.err != nil {
		t.Fatal(f.err)
	}
	if fi, err := os.Stat(f.path); err == nil {
		t.Logf("%s image: %.1f MiB, built in %v (once per process; the build tree took %v)",
			f.name, float64(fi.Size())/(1<<20), f.took.Round(100*time.Millisecond), buildTree.took.Round(100*time.Millisecond))
	}
	return f.path
}

// slots are the Debian slot images, a and b, built once per process.
var slots struct {
	once sync.Once
	a, b string
	took time.Duration
	err  error
}

// slotImages returns the shared slot images: slot a from
// MakeDebianSlotImage with the test's script and units (distroSlot), slot
// b a copy of it relabelled system_b (root=LABEL= names the slot).
func slotImages(t *testing.T) (a, b string) {
	t.Helper()
	slots.once.Do(func() {
		start := time.Now()
		slots.a, slots.err = qt.MakeDebianSlotImage(workDir, "system_a", distroSlot)
		if slots.err != nil {
			return
		}
		slots.b = filepath.Join(workDir, "system_b-debian.img")
		if slots.err = copySparse(slots.a, slots.b); slots.err != nil {
			return
		}
		if out, err := exec.Command("e2label", slots.b, "system_b").CombinedOutput(); err != nil {
			slots.err = fmt.Errorf("e2label %s system_b: %w\n%s", slots.b, err, out)
		}
		slots.took = time.Since(start)
	})
	if slots.err != nil {
		t.Fatal(slots.err)
	}
	t.Logf("Debian slot images: built in %v (once per process)", slots.took.Round(100*time.Millisecond))
	return slots.a, slots.b
}

// copySparse copies an image keeping its holes (cp --sparse=always).
func copySparse(src, dst string) error {
	if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("cp %s %s: %w\n%s", src, dst, err, out)
	}
	return nil
}
