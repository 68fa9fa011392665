// Command mkinitramfs builds a cpinit initramfs with initramfs.Build: a
// u-root image whose /init is the given command, with the kernel modules of
// initramfs/modules.list and a modules.dep for u-root's pkg/kmodule.
//
//	go run ./initramfs/mkinitramfs -o out/cpinit.cpio ./cmds/cpinit
//	go run ./initramfs/mkinitramfs -base existing.cpio -o out/hooked.cpio ./cmds/cpinit
//
// Without -modules it fetches the pinned kernel (initramfs/fetch-kernel.sh)
// and uses its modules and module list; -kernel picks which pinned kernel
// (an env file in initramfs/, default kernel.env):
//
//	go run ./initramfs/mkinitramfs -kernel kernel-generic.env -o out/generic.cpio ./cmds/cpinit
//
// The programs are built for -arch (a GOARCH), by default the pinned
// kernel's architecture, or with -modules the host's; the arm64 kernel:
//
//	go run ./initramfs/mkinitramfs -kernel kernel-arm64.env -o out/cpinit-arm64.cpio ./cmds/cpinit
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/cpinit/cpinit/initramfs"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "mkinitramfs: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	var o initramfs.BuildOptions
	var files multi
	var kernelEnv string
	flag.StringVar(&kernelEnv, "kernel", initramfs.CloudKernel, "pinned kernel to fetch when -modules is not given: its env file in initramfs/ (e.g. "+initramfs.GenericKernel+")")
	flag.StringVar(&o.Arch, "arch", "", "GOARCH of the image's programs: amd64, arm64, arm or 386 (default: the pinned kernel's; with -modules, the host's, "+runtime.GOARCH+")")
	flag.StringVar(&o.Modules, "modules", "", "the kernel's /lib/modules/<release> directory (default: the pinned kernel's)")
	flag.StringVar(&o.List, "list", "", "module list (default: the pinned kernel's, initramfs/modules.list for kernel.env; with -modules, initramfs/modules.list)")
	flag.StringVar(&o.Out, "o", "", "output cpio file (required)")
	flag.StringVar(&o.InitCmd, "initcmd", "cpinit", "command run as /init (basename of one of the packages)")
	flag.StringVar(&o.Base, "base", "", "existing uncompressed cpio initramfs to add cpinit to (its /init is kept as /inito; boot with cpinit.init=/inito and no cpinit.root=)")
	flag.StringVar(&o.Version, "version", initramfs.RepoVersion(initramfs.RepoRoot()), "version stamped into cpinit (default: git describe --tags --always --dirty of the repository; none without git)")
	flag.Var(&files, "files", "extra host:guest file for u-root -files (repeatable); u-root adds the shared libraries of ELF binaries")
	flag.Parse()
	if o.Out == "" || flag.NArg() == 0 {
		flag.Usage()
		return fmt.Errorf("need -o and at least one Go command package")
	}
	if o.Modules == "" {
		k, err := initramfs.FetchPinnedKernel(kernelEnv)
		if err != nil {
			return err
		}
		o.Modules = k.Modules
		if o.List == "" {
			o.List = k.ModuleList
		}
		if o.Arch == "" {
			o.Arch = k.Arch
		}
	}
	o.Files, o.Pkgs, o.Log = files, flag.Args(), os.Stderr
	return initramfs.Build(o)
}
