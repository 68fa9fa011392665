package qemutests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cpinit/cpinit/initramfs"
)

// RepoRoot is the root of the cpinit module (the directory holding go.mod).
func RepoRoot() string { return initramfs.RepoRoot() }

// OutDir is the git-ignored directory for built images and kept logs.
func OutDir() string { return filepath.Join(RepoRoot(), "out") }

// Kernel is the pinned kernel.
type Kernel = initramfs.Kernel

// FetchKernel fetches the pinned kernel once per process.
func FetchKernel() (Kernel, error) { return initramfs.FetchKernel() }

// BuildInitramfs builds an initramfs with initcmd as /init, the listed
// modules of the pinned kernel, extra files (u-root -files syntax
// host:guest) and the given Go command packages.
func BuildInitramfs(out, initcmd string, files []string, pkgs ...string) error {
	k, err := FetchKernel()
	if err != nil {
		return err
	}
	return initramfs.Build(initramfs.BuildOptions{Modules: k.Modules, Arch: k.Arch, Out: out, InitCmd: initcmd, Files: files, Pkgs: pkgs, Cache: ImageCache()})
}

// ImageCache is where the tests keep the initramfs images they build, for
// the next test process that needs the same one (initramfs.BuildOptions.Cache;
// out/ is git-ignored and `make clean` removes it).
func ImageCache() string { return initramfs.SharedCache() }

var (
	cpinitOnce sync.Once
	cpinitPath string
	cpinitErr  error
)

// CpinitInitramfs builds the product initramfs (cpinit as /init) once per
// process into out/ and returns its path.
func CpinitInitramfs() (string, error) {
	cpinitOnce.Do(func() {
		cpinitPath = filepath.Join(OutDir(), "cpinit.cpio")
		cpinitErr = BuildInitramfs(cpinitPath, "cpinit", nil, "./cmds/cpinit")
	})
	return cpinitPath, cpinitErr
}

var (
	cpinitForMu sync.Mutex
	cpinitFor   = map[string]string{}
)

// CpinitInitramfsFor fetches the pinned kernel of env (initramfs.CloudKernel,
// initramfs.GenericKernel, initramfs.Arm64Kernel) and builds the product
// initramfs for it, with its modules and module list and for its
// architecture, once per process into out/cpinit-<env>.cpio. It returns the
// kernel and the initramfs.
func CpinitInitramfsFor(env string) (Kernel, string, error) {
	k, err := initramfs.FetchPinnedKernel(env)
	if err != nil {
		return k, "", err
	}
	cpinitForMu.Lock()
	defer cpinitForMu.Unlock()
	if p, ok := cpinitFor[env]; ok {
		return k, p, nil
	}
	p := filepath.Join(OutDir(), "cpinit-"+strings.TrimSuffix(env, ".env")+".cpio")
	if err := initramfs.Build(initramfs.BuildOptions{Modules: k.Modules, List: k.ModuleList, Arch: k.Arch, Out: p, InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}, Cache: ImageCache()}); err != nil {
		return k, "", err
	}
	cpinitFor[env] = p
	return k, p, nil
}

// GoBuild builds a static Go command for an amd64 guest.
func GoBuild(out, pkg string) error { return GoBuildFor(out, pkg, "amd64") }

// GoBuildFor builds a static Go command for a guest of arch (a GOARCH; the
// environment is initramfs.GoEnv's, the initramfs build's).
func GoBuildFor(out, pkg, arch string) error {
	env, err := initramfs.GoEnv(arch)
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s (GOARCH=%s): %w\n%s", pkg, arch, err, out)
	}
	return nil
}

type slotBin struct {
	once sync.Once
	dir  string
	err  error
}

var (
	slotBinsMu sync.Mutex
	slotBins   = map[string]*slotBin{} // GOARCH -> its binaries
)

// slotBinaries builds sysinit and the cpinit CLI for arch once per process
// and architecture.
func slotBinaries(arch string) (string, error) {
	slotBinsMu.Lock()
	b, ok := slotBins[arch]
	if !ok {
		b = &slotBin{}
		slotBins[arch] = b
	}
	slotBinsMu.Unlock()
	b.once.Do(func() {
		b.dir, b.err = os.MkdirTemp("", "cpinit-slotbin-"+arch+"-")
		if b.err != nil {
			return
		}
		if b.err = GoBuildFor(filepath.Join(b.dir, "init"), "./qemu-tests/sysinit", arch); b.err != nil {
			return
		}
		b.err = GoBuildFor(filepath.Join(b.dir, "cpinit"), "./cmds/cpinit", arch)
	})
	return b.dir, b.err
}

// MakeSystemImage builds a system slot in dir: an ext4 image labelled label
// whose /sbin/init is qemu-tests/sysinit and which has the cpinit CLI at
// /usr/bin/cpinit, as a real system slot would, for an amd64 guest.
func MakeSystemImage(dir, label string) (string, error) {
	return MakeSystemImageFor(dir, label, "amd64")
}

// MakeSystemImageFor is MakeSystemImage with the programs built for arch
// (a GOARCH).
func MakeSystemImageFor(dir, label, arch string) (string, error) {
	root := filepath.Join(dir, label+".root")
	// switch_root moves /dev, /proc, /sys and /run into the new root: a
	// system image has those mount points, and /data for userdata.
	for _, d := range []string{"data", "dev", "proc", "sys", "run", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	bins, err := slotBinaries(arch)
	if err != nil {
		return "", err
	}
	for src, dst := range map[string]string{"init": "sbin/init", "cpinit": "usr/bin/cpinit"} {
		if err := copyExecutable(filepath.Join(bins, src), filepath.Join(root, dst)); err != nil {
			return "", err
		}
	}
	img := filepath.Join(dir, label+".img")
	return img, MakeExt4(img, 32<<20, label, root)
}

func copyExecutable(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}
