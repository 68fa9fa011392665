// Command mkinitramfs builds a cpinit initramfs: a u-root image whose /init
// is the given init command, with the kernel modules of modules.list (and a
// modules.dep for u-root's pkg/kmodule) from the pinned kernel.
//
// It runs `go tool u-root` from the module root, so the u-root version is the
// one go.mod pins. Output is byte-identical for the same inputs: u-root
// writes cpio records with zero mtimes and owners, the Go build is
// reproducible, and everything we add is staged in sorted order.
//
//	go run ./initramfs/mkinitramfs -modules DIR -o out/cpinit.cpio ./cmds/cpinit
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
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
	var (
		modDir  = flag.String("modules", "", "the kernel's module directory, /lib/modules/<release> of the unpacked package (required)")
		list    = flag.String("list", "initramfs/modules.list", "module list")
		out     = flag.String("o", "", "output cpio file (required)")
		initcmd = flag.String("initcmd", "cpinit", "command run as /init (basename of one of the packages)")
		files   multi
	)
	flag.Var(&files, "files", "extra host:guest file for u-root -files (repeatable); u-root adds shared libraries of ELF binaries")
	flag.Parse()
	if *modDir == "" || *out == "" || flag.NArg() == 0 {
		flag.Usage()
		return fmt.Errorf("need -modules, -o and at least one Go command package")
	}
	release := filepath.Base(filepath.Clean(*modDir))

	names, err := initramfs.ReadList(*list)
	if err != nil {
		return err
	}
	mods, err := initramfs.Resolve(*modDir, names)
	if err != nil {
		return err
	}

	stage, err := os.MkdirTemp("", "mkinitramfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	modStage := filepath.Join(stage, "modules", release)
	for _, m := range mods {
		if err := copyFile(filepath.Join(*modDir, m.RelPath), filepath.Join(modStage, m.RelPath)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(modStage, "modules.dep"), initramfs.ModulesDep(mods), 0o644); err != nil {
		return err
	}

	tmpOut := *out + ".tmp"
	args := []string{"tool", "u-root",
		"-defaultsh=",
		"-initcmd=" + *initcmd,
		"-o", tmpOut,
		"-files", filepath.Join(stage, "modules") + ":lib/modules",
		"-files", *list + ":etc/cpinit/modules",
	}
	for _, f := range files {
		args = append(args, "-files", f)
	}
	args = append(args, flag.Args()...)
	cmd := exec.Command("go", args...)
	// CGO off: the image has no libc for our Go binaries. GOAMD64=v1 so the
	// image runs on QEMU's default CPU models.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		os.Remove(tmpOut)
		return fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return os.Rename(tmpOut, *out)
}

func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	o, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(o, in); err != nil {
		o.Close()
		return err
	}
	return o.Close()
}
