package initramfs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/u-root/u-root/pkg/ldd"
)

// The build cache (BuildOptions.Cache). A u-root build costs about 45 s of
// CPU on the machines the suite runs on, whether or not anything changed:
// gobusybox type-checks every package from source before it rewrites them
// (findpkg loads with NeedTypes|NeedSyntax|NeedDeps), so Go's own build
// cache does not help. The test packages build the same few images again
// and again (each `go test` package is its own process), so they keep the
// images in a cache keyed by everything that goes into one.
//
// The cache holds u-root's part of an image (Build's first step): the
// modules, the module list and the base archive are added after it, so
// they are not in the key. u-root's output is byte-identical for identical
// inputs (see Build), so a hit returns exactly what a build would. The key
// covers: the target architecture (Arch: the same sources give another
// image), the Go toolchain (`go env GOVERSION`), go.mod and go.sum (the
// u-root version among them), the source files of every non-standard
// package the commands are built from (`go list -deps` in the build's
// environment, so the files of the build's GOOS/GOARCH), InitCmd, each
// -files entry (its guest path, the contents of the host file or directory
// and of the shared libraries u-root adds for it, on the host's
// architecture), and the Version stamped into cpinit when one is. The
// cached builds (the tests') stamp none: a version from git describe
// names every commit differently, so it would rebuild every image (45 s of
// CPU each) at every commit, while the sources that go into the image,
// which the key covers (uncommitted changes included, which is all -dirty
// says), are the same. Their cpinit reports its build information.
const cacheFormat = "cpinit initramfs cache 3"

// buildEnv is the environment of the u-root build and of the key's go list
// for arch: the process's, then GoEnv's (the later value of a variable wins
// in os/exec).
func buildEnv(arch string) ([]string, error) {
	env, err := GoEnv(arch)
	if err != nil {
		return nil, err
	}
	return append(os.Environ(), env...), nil
}

// cacheKey is the hex SHA-256 of the inputs of a build's u-root step.
// root is the Go module the packages are relative to.
func cacheKey(root string, o BuildOptions) (string, error) {
	arch := o.arch()
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00init=%s\x00arch=%s\x00", cacheFormat, o.InitCmd, arch)
	out, err := goCmd(root, arch, "env", "GOVERSION")
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "go=%s\x00", bytes.TrimSpace(out))
	if o.Version != "" {
		// Absent when empty: unstamped images keep the key they had.
		fmt.Fprintf(h, "version=%s\x00", o.Version)
	}
	for _, name := range []string{"go.mod", "go.sum"} {
		if err := hashPath(h, filepath.Join(root, name)); err != nil && !os.IsNotExist(err) {
			return "", err
		}
	}
	if err := hashPackages(h, root, arch, o.Pkgs); err != nil {
		return "", err
	}
	for _, f := range o.Files {
		host, guest, _ := strings.Cut(f, ":")
		fmt.Fprintf(h, "file\x00%s\x00", guest)
		if err := hashPath(h, host); err != nil {
			return "", err
		}
		// u-root adds the shared libraries of an ELF file (its ldd);
		// for anything else ldd fails and there are none. For another
		// architecture it adds none (BuildOptions.Files).
		if !o.hostLDD() {
			continue
		}
		if libs, err := ldd.List(host); err == nil {
			sort.Strings(libs)
			for _, l := range libs {
				fmt.Fprintf(h, "lib\x00%s\x00", l)
				if err := hashPath(h, l); err != nil {
					return "", err
				}
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func goCmd(root, arch string, args ...string) ([]byte, error) {
	env, err := buildEnv(arch)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(args, " "), root, err, stderr.Bytes())
	}
	return out, nil
}

// hashPackages adds the source of every non-standard package pkgs are built
// from: import path, and the name and contents of each Go, embedded and
// other file go list names (the standard library is the toolchain's).
func hashPackages(h hash.Hash, root, arch string, pkgs []string) error {
	if len(pkgs) == 0 {
		return nil
	}
	out, err := goCmd(root, arch, append([]string{"list", "-deps", "-json=ImportPath,Dir,Standard,GoFiles,SFiles,EmbedFiles,OtherFiles"}, pkgs...)...)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath, Dir                         string
			Standard                                bool
			GoFiles, SFiles, EmbedFiles, OtherFiles []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("go list -deps %s: %w", strings.Join(pkgs, " "), err)
		}
		if p.Standard {
			continue
		}
		fmt.Fprintf(h, "pkg\x00%s\x00", p.ImportPath)
		for _, files := range [][]string{p.GoFiles, p.SFiles, p.EmbedFiles, p.OtherFiles} {
			for _, f := range files {
				fmt.Fprintf(h, "%s\x00", f)
				if err := hashPath(h, filepath.Join(p.Dir, f)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// hashPath adds a file's mode and contents, or a directory's tree (names
// relative to it, in lexical order; symlinks by their target).
func hashPath(h hash.Hash, path string) error {
	return filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(path, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%o\x00", rel, info.Mode())
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "->%s\x00", target)
		case d.Type().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			n, err := io.Copy(h, f)
			if err != nil {
				return &os.PathError{Op: "read", Path: p, Err: err}
			}
			fmt.Fprintf(h, "\x00%d\x00", n)
		}
		return nil
	})
}

// cacheLock takes an exclusive lock on the key's lock file, so that two
// test processes wanting the same image build it once: the second waits
// and then finds it. unlock releases it.
func cacheLock(dir, key string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, key+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "flock", Path: path, Err: err}
	}
	return func() { f.Close() }, nil
}

// tempBeside names a new, unique temporary file in dst's directory (two
// test processes may write the same image at once: each writes its own
// and renames it into place).
func tempBeside(dst string) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	return name, f.Close()
}
