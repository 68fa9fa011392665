package pid1

import (
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
	"github.com/ulikunitz/xz"
)

// Module file compressions, as kmod and the kernel's modules_install name
// them (scripts/Makefile.modinst: .ko.gz, .ko.xz, .ko.zst). Debian
// compresses its modules with xz since 6.10 (trixie), Fedora with xz and
// then zstd.
const (
	CompressNone = ""
	CompressGzip = "gzip"
	CompressXZ   = "xz"
	CompressZstd = "zstd"
)

// moduleSuffixes maps a module file's suffix to its compression.
var moduleSuffixes = []struct{ suffix, comp string }{
	{".ko", CompressNone},
	{".ko.gz", CompressGzip},
	{".ko.xz", CompressXZ},
	{".ko.zst", CompressZstd},
}

// ModuleFile reports whether name is a kernel module file (.ko, .ko.gz,
// .ko.xz or .ko.zst) and its compression.
func ModuleFile(name string) (compression string, ok bool) {
	for _, s := range moduleSuffixes {
		if strings.HasSuffix(name, s.suffix) {
			return s.comp, true
		}
	}
	return "", false
}

// UncompressedName is a module file's name without its compression
// suffix: dm-mod.ko.xz → dm-mod.ko.
func UncompressedName(name string) string {
	for _, s := range moduleSuffixes[1:] {
		if n, ok := strings.CutSuffix(name, s.suffix); ok {
			return n + ".ko"
		}
	}
	return name
}

// ModuleName is the kernel's name of a module, from its name or its file's
// name or path: the base name without .ko and compression suffix, '-' as
// '_' (scripts/Makefile.lib: modname = $(subst -,_,...)), as modules.dep
// and /sys/module compare them.
func ModuleName(s string) string {
	s = UncompressedName(path.Base(s))
	return strings.ReplaceAll(strings.TrimSuffix(s, ".ko"), "-", "_")
}

// maxModuleSize bounds a decompressed module: the largest in a Debian
// kernel (amdgpu) is about 30 MiB, and a corrupt or hostile file must not
// exhaust PID 1's memory.
const maxModuleSize = 256 << 20

// DecompressModule reads a module image (ELF) from r, compressed as
// compression (CompressNone: read as is). The xz reader checks the
// stream's integrity field: the kernel's modules_install writes CRC32
// (xz --check=crc32, scripts/Makefile.modinst, because the kernel's own
// XZ decoder knows no other), and CRC64 and SHA-256 are read too.
func DecompressModule(r io.Reader, compression string) ([]byte, error) {
	switch compression {
	case CompressNone:
	case CompressGzip:
		// pgzip, not compress/gzip: u-root's kmodule links it in
		// already, and the stdlib's would add its inflater again.
		z, err := pgzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		defer z.Close()
		r = z
	case CompressXZ:
		z, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		r = z
	case CompressZstd:
		// One goroutine, low memory: PID 1 decompresses one module at
		// a time.
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		defer z.Close()
		r = z
	default:
		return nil, fmt.Errorf("unknown module compression %q", compression)
	}
	b, err := io.ReadAll(io.LimitReader(r, maxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", compressionName(compression), err)
	}
	if len(b) > maxModuleSize {
		return nil, fmt.Errorf("%s: module larger than %d MiB decompressed", compressionName(compression), maxModuleSize>>20)
	}
	return b, nil
}

func compressionName(c string) string {
	if c == CompressNone {
		return "read"
	}
	return c
}

// ReadModuleFile returns the ELF image of the module file at path,
// decompressed by its suffix (ModuleFile).
func ReadModuleFile(path string) ([]byte, error) {
	comp, ok := ModuleFile(path)
	if !ok {
		return nil, fmt.Errorf("module %s: not a .ko, .ko.gz, .ko.xz or .ko.zst file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := DecompressModule(f, comp)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	return b, nil
}
