package initramfs

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestCacheKey: the key of a build's u-root step changes with every input
// that goes into u-root's image and with nothing else: not with the
// kernel's modules, the module list or the base archive, which Build adds
// after it. A small module of its own stands for
// the repository (go list runs in it).
func TestCacheKey(t *testing.T) {
	root := t.TempDir()
	write := func(path, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "go.mod"), "module example.com/k\n\ngo 1.22\n")
	write(filepath.Join(root, "cmd", "x", "main.go"), "package main\n\nimport \"example.com/k/lib\"\n\nfunc main() { lib.F() }\n")
	write(filepath.Join(root, "lib", "lib.go"), "package lib\n\nfunc F() {}\n")
	write(filepath.Join(root, "lib", "lib_windows.go"), "package lib\n\nvar W = 1\n")
	modules := filepath.Join(root, "modules", "6.1")
	write(filepath.Join(modules, "kernel", "a.ko"), "module a")
	list := filepath.Join(root, "modules.list")
	write(list, "a\n")
	file := filepath.Join(root, "tool")
	write(file, "#!/bin/sh\n")
	base := filepath.Join(root, "base.cpio")
	write(base, "base")
	o := BuildOptions{Modules: modules, List: list, InitCmd: "x", Files: []string{file + ":bin/tool"}, Pkgs: []string{"./cmd/x"}, Base: base}

	key := func() string {
		t.Helper()
		k, err := cacheKey(root, o)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key()
	if k := key(); k != k0 {
		t.Fatalf("the same inputs give two keys: %s, %s", k0, k)
	}
	// Out and Log are not inputs; a file the build's GOOS does not
	// compile is not one either; the modules, the list and the base are
	// not u-root's.
	o.Out, o.Log = filepath.Join(root, "elsewhere.cpio"), os.Stderr
	write(filepath.Join(root, "lib", "lib_windows.go"), "package lib\n\nvar W = 2\n")
	write(filepath.Join(modules, "kernel", "a.ko"), "module A")
	write(list, "a\nb\n")
	write(base, "base2")
	o.Modules = filepath.Join(root, "modules", "6.2")
	if k := key(); k != k0 {
		t.Errorf("the key changed with Out, Log, a file for another GOOS, the modules, the list or the base")
	}
	changes := []struct {
		what   string
		change func()
		undo   func()
	}{
		{"a dependency's source", func() { write(filepath.Join(root, "lib", "lib.go"), "package lib\n\nfunc F() { println() }\n") },
			func() { write(filepath.Join(root, "lib", "lib.go"), "package lib\n\nfunc F() {}\n") }},
		{"go.mod", func() { write(filepath.Join(root, "go.mod"), "module example.com/k\n\ngo 1.23\n") },
			func() { write(filepath.Join(root, "go.mod"), "module example.com/k\n\ngo 1.22\n") }},
		{"InitCmd", func() { o.InitCmd = "y" }, func() { o.InitCmd = "x" }},
		// The same sources built for another architecture are another
		// image; "" is the host's architecture, so it keys like it.
		{"Arch", func() { o.Arch = otherArch(runtime.GOARCH) }, func() { o.Arch = runtime.GOARCH }},
		{"a -files file's contents", func() { write(file, "#!/bin/sh\n:\n") }, func() { write(file, "#!/bin/sh\n") }},
		{"a -files guest path", func() { o.Files = []string{file + ":bin/tool2"} }, func() { o.Files = []string{file + ":bin/tool"} }},
		// Unstamped ("") keeps the key it had; a stamped version is in it.
		{"Version", func() { o.Version = "v1.0-3-gabc" }, func() { o.Version = "" }},
	}
	for _, c := range changes {
		c.change()
		if k := key(); k == k0 {
			t.Errorf("the key did not change with %s", c.what)
		}
		c.undo()
		if k := key(); k != k0 {
			t.Fatalf("undoing the change of %s did not give the first key back", c.what)
		}
	}
}

// otherArch is a supported architecture that is not arch.
func otherArch(arch string) string {
	if arch == "arm64" {
		return "amd64"
	}
	return "arm64"
}

// TestGoEnv: each supported architecture gets its GOARCH and its baseline
// (GOAMD64=v1 for amd64 only, GOARM=7 for arm only), the others' variables
// cleared; an unknown one is refused with its name, by GoEnv and by the
// cache key.
func TestGoEnv(t *testing.T) {
	for arch, want := range map[string][]string{
		"amd64": {"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1", "GOARM="},
		"arm64": {"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64", "GOAMD64=", "GOARM="},
		"arm":   {"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm", "GOAMD64=", "GOARM=7"},
		"386":   {"CGO_ENABLED=0", "GOOS=linux", "GOARCH=386", "GOAMD64=", "GOARM="},
	} {
		got, err := GoEnv(arch)
		if err != nil {
			t.Errorf("GoEnv(%s): %v", arch, err)
			continue
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("GoEnv(%s) = %q, want %q", arch, got, want)
		}
	}
	for _, arch := range []string{"riscv64", "x86_64", "aarch64", "armhf"} {
		if _, err := GoEnv(arch); err == nil || !strings.Contains(err.Error(), `"`+arch+`"`) {
			t.Errorf("GoEnv(%s): %v, want an error naming it", arch, err)
		}
	}
	if _, err := cacheKey(RepoRoot(), BuildOptions{Arch: "aarch64"}); err == nil {
		t.Error("cacheKey took architecture aarch64 (a GOARCH is arm64)")
	}
	for arch, want := range map[string]string{"amd64": "amd64", "arm64": "arm64", "arm": "armhf", "386": "i386"} {
		if got, err := DebianArch(arch); err != nil || got != want {
			t.Errorf("DebianArch(%s) = %q, %v; want %s", arch, got, err, want)
		}
		// fetch-kernel.sh's KERNEL_ARCH maps back to the GOARCH.
		if goArch[want] != arch {
			t.Errorf("Debian architecture %s maps to GOARCH %q, want %s", want, goArch[want], arch)
		}
	}
	if _, err := DebianArch("riscv64"); err == nil {
		t.Error("DebianArch took riscv64, which the image builds do not support")
	}
	if (BuildOptions{}).arch() != runtime.GOARCH {
		t.Errorf("the default architecture is %s, want the host's, %s", (BuildOptions{}).arch(), runtime.GOARCH)
	}
}
