package initramfs

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/cpinit/cpinit/internal/pid1"
	"github.com/u-root/u-root/pkg/cpio"
)

// RepoRoot is the root of the cpinit module (the directory holding go.mod).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// SharedCache is the image cache (BuildOptions.Cache) the tests of every
// package share: out/cache/initramfs in the repository. `make clean`
// empties it.
func SharedCache() string { return filepath.Join(RepoRoot(), "out", "cache", "initramfs") }

// Kernel is a pinned kernel, fetched and unpacked by fetch-kernel.sh.
type Kernel struct {
	// Arch is the kernel's architecture as a GOARCH (KERNEL_ARCH of its
	// env file: Debian's names amd64, arm64, armhf→arm and i386→386).
	Arch    string
	Release string // uname -r of the guest
	Vmlinuz string
	Modules string // /lib/modules/<release> of the unpacked package
	// ModuleList is the module list to build this kernel's initramfs with
	// (KERNEL_MODULE_LIST of its env file; initramfs/modules.list unless
	// it says otherwise).
	ModuleList string
}

// The pinned kernels' env files in initramfs/ (KERNEL_ENV of
// fetch-kernel.sh).
const (
	// CloudKernel is Debian's cloud kernel: device-mapper and virtio-blk
	// as modules, ext4 built in, no f2fs. It boots fastest and is the one
	// every test and the demo boot (FetchKernel).
	CloudKernel = "kernel.env"
	// GenericKernel is Debian's generic kernel of the same version, which
	// has f2fs as a module; its modules are modules-generic.list.
	GenericKernel = "kernel-generic.env"
	// Arm64Kernel is Debian's arm64 cloud kernel of the same version,
	// booted by qemu-system-aarch64 (-M virt); its modules are
	// modules-arm64.list.
	Arm64Kernel = "kernel-arm64.env"
	// Arm32Kernel is Debian's 32-bit ARM (armhf) armmp kernel of the same
	// version, booted by qemu-system-arm (-M virt -cpu cortex-a15); its
	// modules are modules-armhf.list.
	Arm32Kernel = "kernel-armhf.env"
)

// goArch maps a Debian architecture (dpkg --print-architecture, the suffix
// of a .deb) to Go's GOARCH.
var goArch = map[string]string{"amd64": "amd64", "arm64": "arm64", "armhf": "arm", "armel": "arm", "i386": "386"}

// DebianArch is the Debian architecture of Go's GOARCH arch
// (dpkg-architecture(1)): arm is armhf, the ARMv7 hard-float port GOARM=7
// matches.
func DebianArch(arch string) (string, error) {
	switch arch {
	case "amd64", "arm64":
		return arch, nil
	case "arm":
		return "armhf", nil
	case "386":
		return "i386", nil
	}
	return "", fmt.Errorf("initramfs: no Debian architecture for GOARCH %q", arch)
}

// elfMachine is the ELF machine of each GOARCH an image can be built for:
// Build checks the kernel's modules against it, so an image never pairs
// one architecture's programs with another's modules.
var elfMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
	"arm":   elf.EM_ARM,
	"386":   elf.EM_386,
}

// GoEnv is the Go environment that builds static programs for a guest of
// arch (a GOARCH: amd64, arm64, arm or 386): CGO off (an image has no libc
// for them), GOOS=linux, and the architecture's baseline: GOAMD64=v1 so
// amd64 programs run on QEMU's default CPU models (qemu64 has no AVX),
// GOARM=7 for 32-bit ARM (ARMv7 with VFPv3, what Debian's armhf targets).
// The variables of the other architectures are cleared so a GOAMD64 or
// GOARM of the caller's environment cannot leak into the build.
func GoEnv(arch string) ([]string, error) {
	if _, ok := elfMachine[arch]; !ok {
		return nil, fmt.Errorf("initramfs: architecture %q not supported (GOARCH amd64, arm64, arm or 386)", arch)
	}
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + arch, "GOAMD64=", "GOARM="}
	switch arch {
	case "amd64":
		env[3] = "GOAMD64=v1"
	case "arm":
		env[4] = "GOARM=7"
	}
	return env, nil
}

type fetched struct {
	once sync.Once
	k    Kernel
	err  error
}

var (
	kernelsMu sync.Mutex
	kernels   = map[string]*fetched{}
)

// FetchKernel fetches the default pinned kernel, CloudKernel.
func FetchKernel() (Kernel, error) { return FetchPinnedKernel(CloudKernel) }

// FetchPinnedKernel runs initramfs/fetch-kernel.sh with KERNEL_ENV=env once
// per env and process (the script is itself idempotent) and returns where
// the kernel is. env is CloudKernel, GenericKernel or another env file in
// initramfs/.
func FetchPinnedKernel(env string) (Kernel, error) {
	kernelsMu.Lock()
	f, ok := kernels[env]
	if !ok {
		f = &fetched{}
		kernels[env] = f
	}
	kernelsMu.Unlock()
	f.once.Do(func() { f.k, f.err = fetchKernel(env) })
	return f.k, f.err
}

func fetchKernel(env string) (Kernel, error) {
	cmd := exec.Command(filepath.Join(RepoRoot(), "initramfs", "fetch-kernel.sh"))
	cmd.Env = append(os.Environ(), "KERNEL_ENV="+env)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Kernel{}, fmt.Errorf("KERNEL_ENV=%s initramfs/fetch-kernel.sh: %w\n%s", env, err, stderr.Bytes())
	}
	vars := map[string]string{}
	s := bufio.NewScanner(bytes.NewReader(out))
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), "="); ok {
			vars[k] = v
		}
	}
	arch, ok := goArch[vars["KERNEL_ARCH"]]
	if !ok {
		return Kernel{}, fmt.Errorf("KERNEL_ENV=%s initramfs/fetch-kernel.sh: KERNEL_ARCH=%q is not a Debian architecture cpinit builds for (%v)", env, vars["KERNEL_ARCH"], goArch)
	}
	k := Kernel{Arch: arch, Release: vars["KERNEL_RELEASE"], Vmlinuz: vars["KERNEL_VMLINUZ"], Modules: vars["KERNEL_MODULES"], ModuleList: vars["KERNEL_MODULE_LIST"]}
	if k.Vmlinuz == "" || k.Modules == "" || k.ModuleList == "" {
		return Kernel{}, fmt.Errorf("KERNEL_ENV=%s initramfs/fetch-kernel.sh printed no kernel paths:\n%s", env, out)
	}
	return k, nil
}

// BuildOptions describe one initramfs.
type BuildOptions struct {
	Modules string // the kernel's /lib/modules/<release> directory
	List    string // module list; default initramfs/modules.list
	Out     string // output cpio
	InitCmd string // command run as /init (basename of one of Pkgs)
	// Files are extra u-root -files host:guest entries. u-root adds the
	// shared libraries of a host program (the host's ldd lists them), but
	// not in an image for another architecture than the host's: the
	// host's ldd cannot list a foreign program's libraries (it runs the
	// program's ELF interpreter), so Build passes -skip-ldd and Files must
	// name every library themselves.
	Files []string
	Pkgs  []string // Go command packages, relative to the module root
	// Base is an existing initramfs (an uncompressed newc cpio) to add
	// cpinit to, for the early-hook mode: the base keeps its files, its
	// /init is kept as /inito (u-root's -base convention) and cpinit
	// becomes /init; boot with cpinit.init=/inito and without cpinit.root=
	// so cpinit maps and mounts userdata, then execs the base's init. A
	// u-root busybox image cannot be a base (its bbin/bb would be
	// replaced by ours): build its commands together with cpinit in Pkgs
	// instead.
	Base string
	Log  io.Writer
	// Arch is the GOARCH of the image's programs (GoEnv): amd64, arm64,
	// arm or 386; default runtime.GOARCH, the host's. It must be the
	// kernel's: Build refuses modules of another ELF machine.
	Arch string
	// Version is stamped into cpinit (cmds/cpinit's version variable,
	// which `cpinit version` and `status --json` report) when Pkgs builds
	// it; "" stamps nothing, and cpinit reports its build information
	// ("unknown" inside u-root's busybox). mkinitramfs stamps RepoVersion.
	// It is part of the cache key when set: the tests leave it empty so
	// that a commit that changes no source hits the cache (see cache.go).
	Version string

	// CompressedModules ships compressed modules (.ko.xz, .ko.zst,
	// .ko.gz in Modules) compressed, modules.dep naming them so, for PID 1
	// to decompress (pid1.LoadModuleFile). By default Build decompresses
	// them into plain .ko files: PID 1 then loads every module with a
	// plain finit_module on any kernel, the kernel decompresses nothing,
	// and the image's only compression is the image's own. The QEMU test
	// of PID 1's decompression (TestBootCompressedModules) sets it.
	CompressedModules bool
	// Cache is a directory of built images to reuse (see cache.go): an
	// image whose inputs were all built before is copied from it instead
	// of built again. The tests use it ("" builds every time, as
	// mkinitramfs does).
	Cache string
}

// arch is o.Arch or the host's architecture.
func (o BuildOptions) arch() string {
	if o.Arch != "" {
		return o.Arch
	}
	return runtime.GOARCH
}

// hostLDD says whether u-root resolves Files' shared libraries with the
// host's ldd: only for the host's own architecture (Files).
func (o BuildOptions) hostLDD() bool { return o.arch() == runtime.GOARCH }

// Build makes an initramfs: u-root with InitCmd as /init (-initcmd, not
// uinit: cpinit must be PID 1 itself to switch_root), the listed modules of
// the kernel with a modules.dep that u-root's kmodule resolves dependencies
// from, and the list itself at /etc/cpinit/modules for PID 1 to load.
//
// It is made in two steps: u-root builds the commands and Files (the slow
// part, kept in Cache), then Build adds the modules, the list and the Base
// archive's records (assemble). So images that differ only in their kernel,
// module list or base share one u-root build.
//
// Same inputs give byte-identical output: u-root writes cpio records with
// zero mtimes and owners and builds with -trimpath; the modules and the
// base's records are added in a fixed order with zero mtimes and owners.
func Build(o BuildOptions) error {
	if o.List == "" {
		o.List = filepath.Join(RepoRoot(), "initramfs", "modules.list")
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	release := filepath.Base(filepath.Clean(o.Modules))
	names, err := ReadList(o.List)
	if err != nil {
		return err
	}
	mods, err := Resolve(o.Modules, names)
	if err != nil {
		return err
	}
	if _, err := GoEnv(o.arch()); err != nil {
		return err
	}
	for _, m := range mods {
		if want := elfMachine[o.arch()]; m.Machine != want {
			return fmt.Errorf("initramfs %s: module %s is for %v, the image's programs for %s (%v): pick the kernel of BuildOptions.Arch, or the Arch of the kernel", o.Out, filepath.Join(o.Modules, m.RelPath), m.Machine, o.arch(), want)
		}
	}
	var base string
	if o.Base != "" {
		if base, err = checkBase(o.Base); err != nil {
			return err
		}
	}
	out, err := filepath.Abs(o.Out)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	core, done, err := buildCore(o, out)
	if err != nil {
		return err
	}
	defer done()

	// What Build adds to u-root's image, in a fixed order.
	dir := "lib/modules/" + release + "/"
	var add []cpio.Record
	inImage := InImage(mods, !o.CompressedModules)
	for i, m := range mods {
		var b []byte
		if o.CompressedModules {
			b, err = os.ReadFile(filepath.Join(o.Modules, m.RelPath))
		} else {
			b, err = pid1.ReadModuleFile(filepath.Join(o.Modules, m.RelPath))
		}
		if err != nil {
			return err
		}
		add = append(add, cpio.StaticFile(dir+inImage[i].RelPath, string(b), 0o644))
	}
	add = append(add, cpio.StaticFile(dir+"modules.dep", string(ModulesDep(inImage)), 0o644))
	list, err := os.ReadFile(o.List)
	if err != nil {
		return err
	}
	add = append(add, cpio.StaticFile("etc/cpinit/modules", string(list), 0o644))
	sort.Slice(add, func(i, j int) bool { return add[i].Name < add[j].Name })

	tmpOut, err := tempBeside(out)
	if err != nil {
		return err
	}
	if err := assemble(tmpOut, core, add, base); err != nil {
		os.Remove(tmpOut)
		return fmt.Errorf("initramfs %s: %w", o.Out, err)
	}
	return os.Rename(tmpOut, out)
}

// buildCore runs u-root for o's commands and Files, or takes its image from
// o.Cache. It returns the image's path and a function to call when done
// with it (it releases the cache entry's lock or removes a temporary file).
func buildCore(o BuildOptions, out string) (string, func(), error) {
	var key string
	if o.Cache != "" {
		var err error
		if key, err = cacheKey(RepoRoot(), o); err != nil {
			return "", nil, fmt.Errorf("initramfs cache key for %s: %w", o.Out, err)
		}
		unlock, err := cacheLock(o.Cache, key)
		if err != nil {
			return "", nil, err
		}
		cached := filepath.Join(o.Cache, key+".cpio")
		if _, err := os.Stat(cached); err == nil {
			fmt.Fprintf(o.Log, "initramfs: %s: u-root's image from the cache (%s)\n", o.Out, cached)
			return cached, unlock, nil
		}
		core, err := runURoot(o, out)
		if err != nil {
			unlock()
			return "", nil, err
		}
		if err := os.Rename(core, cached); err != nil {
			os.Remove(core)
			unlock()
			return "", nil, err
		}
		return cached, unlock, nil
	}
	core, err := runURoot(o, out)
	if err != nil {
		return "", nil, err
	}
	return core, func() { os.Remove(core) }, nil
}

// runURoot builds o's commands and Files with u-root into a temporary file
// beside out and returns its path.
func runURoot(o BuildOptions, out string) (string, error) {
	tool, err := uRootTool()
	if err != nil {
		return "", err
	}
	tmp, err := tempBeside(out)
	if err != nil {
		return "", err
	}
	args := []string{
		"-defaultsh=",
		"-initcmd=" + o.InitCmd,
		"-o", tmp,
	}
	if !o.hostLDD() {
		args = append(args, "-skip-ldd")
	}
	for _, f := range o.Files {
		args = append(args, "-files", f)
	}
	if o.Version != "" {
		ld, err := versionLDFlags(o.Version)
		if err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("initramfs %s: %w", o.Out, err)
		}
		args = append(args, "-go-extra-args="+ld)
	}
	args = append(args, o.Pkgs...)
	// u-root builds the commands with the go command and the GOOS/GOARCH
	// of its environment (its golang.Default reads them): the target's.
	env, err := buildEnv(o.arch())
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	cmd := exec.Command(tool, args...)
	cmd.Dir = RepoRoot()
	cmd.Env = env
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.MultiWriter(&output, o.Log), io.MultiWriter(&output, o.Log)
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("u-root %s (%s, GOARCH=%s): %w\n%s", strings.Join(args, " "), tool, o.arch(), err, output.Bytes())
	}
	return tmp, nil
}

// uRootTool builds u-root (go.mod's tool directive) for the host and
// returns the executable's path in Go's build cache. `go tool u-root` with
// the target's GOARCH in its environment would build u-root itself for the
// target ("exec format error" for arm64 on an amd64 host); `go tool -n`
// builds it and prints its path without running it (go help tool), and
// the empty GOOS/GOARCH select the host's. CGO off, as before: u-root is
// pure Go and needs no C compiler.
func uRootTool() (string, error) {
	cmd := exec.Command("go", "tool", "-n", "u-root")
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=", "GOARCH=", "GOAMD64=", "GOARM=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go tool -n u-root (in %s): %w\n%s", cmd.Dir, err, stderr.Bytes())
	}
	p := strings.TrimSpace(string(b))
	if p == "" || strings.Contains(p, "\n") {
		return "", fmt.Errorf("go tool -n u-root printed %q, not the path of one executable", b)
	}
	return p, nil
}

// assemble writes to out the records of the u-root image core, then add
// (each after the directories it needs that are not there yet), then the
// base archive's records, as u-root's -base does: the base's /init becomes
// /inito, and where the base has a path the image already has, the
// image's is kept (checkBase refused the bases where that would break
// them).
func assemble(out, core string, add []cpio.Record, base string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	w := cpio.Newc.Writer(f)
	have := map[string]bool{}
	write := func(r cpio.Record) error {
		have[r.Name] = true
		return w.WriteRecord(r)
	}
	if err := copyRecords(core, func(r cpio.Record) error { return write(r) }); err != nil {
		return err
	}
	for _, r := range add {
		if have[r.Name] {
			return fmt.Errorf("u-root's image %s already has %s", core, r.Name)
		}
		var parent string
		for _, elem := range strings.Split(path.Dir(r.Name), "/") {
			parent = path.Join(parent, elem)
			if !have[parent] {
				if err := write(cpio.Directory(parent, 0o755)); err != nil {
					return err
				}
			}
		}
		if err := write(r); err != nil {
			return err
		}
	}
	if base != "" {
		err := copyRecords(base, func(r cpio.Record) error {
			r = cpio.MakeReproducible(r)
			if r.Name == "init" {
				r.Name = "inito"
			}
			if have[r.Name] {
				return nil
			}
			return write(r)
		})
		if err != nil {
			return err
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// copyRecords calls fn with each record of the newc archive at p, its name
// cleaned of a leading "/" or "./" (as the kernel reads it).
func copyRecords(p string, fn func(cpio.Record) error) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	r := cpio.Newc.Reader(f)
	for {
		rec, err := r.ReadRecord()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		rec.Name = path.Clean(strings.TrimPrefix(rec.Name, "/"))
		if err := fn(rec); err != nil {
			return err
		}
	}
}

// checkBase makes sure a base archive can take cpinit: a newc cpio with an
// /init to hand over to, and none of the paths our build writes (u-root
// silently keeps our file and drops the base's on a conflict, which would
// break the base, e.g. its bbin/bb busybox). It returns the absolute path.
func checkBase(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	f, err := os.Open(abs)
	if err != nil {
		return "", err
	}
	defer f.Close()
	r := cpio.Newc.Reader(f)
	hasInit := false
	for {
		rec, err := r.ReadRecord()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("base initramfs %s: not an uncompressed newc cpio (decompress it first, e.g. with unmkinitramfs or zstd -d): %w", path, err)
		}
		name := strings.TrimPrefix(rec.Name, "/")
		switch {
		case name == "init":
			hasInit = true
		case name == "inito":
			return "", fmt.Errorf("base initramfs %s already has an /inito: was cpinit already added to it?", path)
		case strings.HasPrefix(name, "bbin/") || name == "etc/cpinit" || strings.HasPrefix(name, "etc/cpinit/"):
			return "", fmt.Errorf("base initramfs %s has %s, which the cpinit build writes too: a u-root image cannot be a base, build its commands together with ./cmds/cpinit instead", path, name)
		}
	}
	if !hasInit {
		return "", fmt.Errorf("base initramfs %s has no /init to hand over to", path)
	}
	return abs, nil
}

// versionVar is the variable `cpinit version` reports (cmds/cpinit
// version.go), by its import path: -X names the package by path, and u-root's
// busybox keeps each command's import path when it rewrites the command
// into a package of the busybox (gobusybox pkg/bb: the command's files
// are written under its PkgPath), where main.version would name the
// busybox's own main and be ignored.
const versionVar = "github.com/cpinit/cpinit/cmds/cpinit.version"

// versionLDFlags is the go build argument that stamps version, for u-root's
// -go-extra-args. It repeats the -ldflags u-root passes itself (gobusybox
// pkg/golang compiler.go: "-s -w -buildid=", for a reproducible, stripped
// binary): the go command keeps only the last -ldflags that matches a
// package, and u-root puts the extra arguments after its own.
func versionLDFlags(version string) (string, error) {
	for _, r := range version {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_+~", r)) {
			return "", fmt.Errorf("version %q: want letters, digits and . - _ + ~ only (it goes into -ldflags)", version)
		}
	}
	return "-ldflags=-s -w -buildid= -X " + versionVar + "=" + version, nil
}

// RepoVersion is `git describe --tags --always --dirty` of the repository
// at root, the version mkinitramfs stamps; "" when git is not installed or
// root is not a git checkout (an unpacked source archive): the image is
// then built unstamped.
func RepoVersion(root string) string {
	cmd := exec.Command("git", "describe", "--tags", "--always", "--dirty")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	v := strings.TrimSpace(string(out))
	if _, err := versionLDFlags(v); err != nil {
		return ""
	}
	return v
}
