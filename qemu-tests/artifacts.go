package qemutests

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// RepoRoot is the root of the cpinit module (the directory holding go.mod).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// OutDir is the git-ignored directory for built images and kept logs.
func OutDir() string { return filepath.Join(RepoRoot(), "out") }

// Kernel is the pinned kernel, fetched and unpacked by
// initramfs/fetch-kernel.sh.
type Kernel struct {
	Release string // uname -r of the guest
	Vmlinuz string
	Modules string // /lib/modules/<release> of the unpacked package
}

var (
	kernelOnce sync.Once
	kernel     Kernel
	kernelErr  error
)

// FetchKernel runs initramfs/fetch-kernel.sh once per process (it is itself
// idempotent) and returns where the kernel is.
func FetchKernel() (Kernel, error) {
	kernelOnce.Do(func() {
		cmd := exec.Command(filepath.Join(RepoRoot(), "initramfs", "fetch-kernel.sh"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			kernelErr = fmt.Errorf("initramfs/fetch-kernel.sh: %w\n%s", err, stderr.Bytes())
			return
		}
		vars := map[string]string{}
		s := bufio.NewScanner(bytes.NewReader(out))
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), "="); ok {
				vars[k] = v
			}
		}
		kernel = Kernel{Release: vars["KERNEL_RELEASE"], Vmlinuz: vars["KERNEL_VMLINUZ"], Modules: vars["KERNEL_MODULES"]}
		if kernel.Vmlinuz == "" || kernel.Modules == "" {
			kernelErr = fmt.Errorf("initramfs/fetch-kernel.sh printed no kernel paths:\n%s", out)
		}
	})
	return kernel, kernelErr
}

// BuildInitramfs builds an initramfs with initramfs/mkinitramfs: initcmd as
// /init, the listed modules of the pinned kernel, extra files (u-root -files
// syntax host:guest) and the given Go command packages.
func BuildInitramfs(out, initcmd string, files []string, pkgs ...string) error {
	k, err := FetchKernel()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	args := []string{"run", "./initramfs/mkinitramfs", "-modules", k.Modules, "-o", out, "-initcmd", initcmd}
	for _, f := range files {
		args = append(args, "-files", f)
	}
	args = append(args, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = RepoRoot()
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, output.Bytes())
	}
	return nil
}

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

// GoBuild builds a static Go command for the guest.
func GoBuild(out, pkg string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return nil
}
