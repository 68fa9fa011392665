// Package initramfs builds cpinit's initramfs images reproducibly: the
// pinned kernel's modules cpinit needs (modules.list), a modules.dep that
// u-root's pkg/kmodule resolves dependencies from, and the u-root image with
// cpinit as /init. See mkinitramfs/ and build.sh.
package initramfs

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cpinit/cpinit/internal/pid1"
)

// Module is one kernel module file in a kernel's module tree.
type Module struct {
	Name string // canonical name, '-' replaced by '_' as the kernel does
	// RelPath is the module file's path relative to
	// /lib/modules/<release> in the kernel's tree, e.g.
	// kernel/drivers/md/dm-mod.ko or kernel/drivers/md/dm-mod.ko.xz.
	RelPath string
	Depends []string // canonical names from the module's .modinfo depends=
	// Machine is the module's ELF machine (EM_X86_64, EM_AARCH64, ...):
	// the kernel's architecture.
	Machine elf.Machine
}

// CanonicalName maps a module name or file name to the kernel's form:
// modules are named with underscores whatever their file is called
// (scripts/Makefile.lib: modname = $(subst -,_,...)).
func CanonicalName(s string) string { return pid1.ModuleName(s) }

// ParseModinfo parses the contents of a module's .modinfo ELF section: a
// sequence of NUL-terminated "key=value" strings (include/linux/moduleparam.h
// __MODULE_INFO). It returns every value of each key.
func ParseModinfo(b []byte) (map[string][]string, error) {
	info := map[string][]string{}
	for _, rec := range bytes.Split(b, []byte{0}) {
		if len(rec) == 0 {
			continue // padding between records
		}
		k, v, ok := strings.Cut(string(rec), "=")
		if !ok {
			return nil, fmt.Errorf("modinfo record %q has no '='", rec)
		}
		info[k] = append(info[k], v)
	}
	return info, nil
}

// ReadModule reads a module's dependencies from its .modinfo section. A
// compressed module (.ko.xz, .ko.zst, .ko.gz: Debian since 6.10, Fedora)
// is decompressed in memory first, as PID 1 does (pid1.ReadModuleFile).
func ReadModule(modDir, relPath string) (Module, error) {
	path := filepath.Join(modDir, relPath)
	img, err := pid1.ReadModuleFile(path)
	if err != nil {
		return Module{}, fmt.Errorf("read module %s: %w", path, err)
	}
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		return Module{}, fmt.Errorf("read module %s: %w", path, err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return Module{}, fmt.Errorf("module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return Module{}, fmt.Errorf("module %s: .modinfo: %w", path, err)
	}
	info, err := ParseModinfo(data)
	if err != nil {
		return Module{}, fmt.Errorf("module %s: %w", path, err)
	}
	m := Module{Name: CanonicalName(relPath), RelPath: relPath, Machine: f.Machine}
	for _, d := range info["depends"] {
		for _, n := range strings.Split(d, ",") {
			if n != "" {
				m.Depends = append(m.Depends, CanonicalName(n))
			}
		}
	}
	return m, nil
}

// IndexModules finds every module file under modDir/kernel (.ko, or
// compressed: .ko.xz, .ko.zst, .ko.gz) and returns its relative path by
// canonical name. Where a tree holds a module both plain and compressed,
// the plain .ko is taken.
func IndexModules(modDir string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		comp, ok := pid1.ModuleFile(p)
		if d.IsDir() || !ok {
			return nil
		}
		rel, err := filepath.Rel(modDir, p)
		if err != nil {
			return err
		}
		name := CanonicalName(p)
		if prev, seen := idx[name]; seen && comp != pid1.CompressNone {
			if c, _ := pid1.ModuleFile(prev); c == pid1.CompressNone {
				return nil // the plain .ko wins
			}
		}
		idx[name] = rel
		return nil
	})
	return idx, err
}

// InImage returns mods as an image holds them: with decompress, each
// compressed module becomes a plain .ko of the same name (RelPath's
// compression suffix dropped), so ModulesDep names what the image holds.
func InImage(mods []Module, decompress bool) []Module {
	out := make([]Module, len(mods))
	for i, m := range mods {
		if decompress {
			m.RelPath = pid1.UncompressedName(m.RelPath)
		}
		out[i] = m
	}
	return out
}

// Resolve reads the listed modules from the kernel module tree and checks
// that everything they depend on is listed too, so the list is the single
// place that says what goes in the image.
func Resolve(modDir string, names []string) ([]Module, error) {
	idx, err := IndexModules(modDir)
	if err != nil {
		return nil, err
	}
	listed := map[string]bool{}
	var mods []Module
	for _, n := range names {
		c := CanonicalName(n)
		rel, ok := idx[c]
		if !ok {
			return nil, fmt.Errorf("module %s: not found under %s (built in, misspelt, or not in this kernel?)", n, modDir)
		}
		m, err := ReadModule(modDir, rel)
		if err != nil {
			return nil, err
		}
		listed[c] = true
		mods = append(mods, m)
	}
	for _, m := range mods {
		for _, d := range m.Depends {
			if !listed[d] {
				return nil, fmt.Errorf("module %s depends on %s, which is not in the module list: add it", m.Name, d)
			}
		}
	}
	return mods, nil
}

// ModulesDep renders a modules.dep in depmod's format
// ("rel/path.ko: rel/dep1.ko rel/dep2.ko"), sorted for reproducibility.
// u-root's kmodule.Probe reads exactly this.
func ModulesDep(mods []Module) []byte {
	byName := map[string]Module{}
	for _, m := range mods {
		byName[m.Name] = m
	}
	var lines []string
	for _, m := range mods {
		var deps []string
		for _, d := range m.Depends {
			deps = append(deps, byName[d].RelPath)
		}
		sort.Strings(deps)
		line := m.RelPath + ":"
		if len(deps) > 0 {
			line += " " + strings.Join(deps, " ")
		}
		lines = append(lines, line)
	}
	sort.Strings(lines)
	return []byte(strings.Join(lines, "\n") + "\n")
}

// ReadList reads a module list file (see modules.list) with the same parser
// PID 1 uses for the copy in the image.
func ReadList(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := pid1.ParseModuleList(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return names, nil
}
