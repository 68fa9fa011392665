package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	qt "github.com/cpinit/cpinit/qemu-tests"
	"github.com/u-root/u-root/pkg/cpio"
)

// The size section: the product initramfs (cpinit as /init, the modules of
// initramfs/modules.list), built fresh from this tree, its parts, and its
// size under each compressor the pinned kernel can unpack. Goal: ≤ 4 MiB
// compressed.

func init() { register("size", runSize) }

const sizeGoal = 4 << 20

func runSize(tmp string) error {
	k, err := qt.FetchKernel()
	if err != nil {
		return err
	}
	out := filepath.Join(tmp, "cpinit.cpio")
	fmt.Println("building the cpinit initramfs...")
	if err := qt.BuildInitramfs(out, "cpinit", nil, "./cmds/cpinit"); err != nil {
		return err
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	parts, err := cpioParts(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", out, err)
	}
	// The kernel's own list of decompressors: init/Kconfig RD_*; one the
	// kernel lacks is no option for this kernel.
	config := filepath.Join(filepath.Dir(k.Vmlinuz), "config-"+k.Release)
	kconf, err := os.ReadFile(config)
	if err != nil {
		return err
	}

	fmt.Printf("\ncpinit initramfs for kernel %s: %s uncompressed newc cpio\n\n", k.Release, mib(len(raw)))
	fmt.Println("| part | bytes |")
	fmt.Println("|---|---|")
	for _, p := range parts {
		fmt.Printf("| %s | %s |\n", p.name, mib(p.size))
	}

	fmt.Printf("\nCompressed (goal ≤ %s):\n\n", mib(sizeGoal))
	fmt.Println("| compressor | kernel can unpack | size | of the goal | of uncompressed |")
	fmt.Println("|---|---|---|---|---|")
	for _, c := range compressors {
		can := "no"
		if bytes.Contains(kconf, []byte("\n"+c.kconfig+"=y\n")) {
			can = "yes (" + c.kconfig + ")"
		}
		n, err := c.size(raw)
		if err != nil {
			fmt.Printf("| %s | %s | not measured: %v | | |\n", c.name, can, err)
			continue
		}
		verdict := ""
		if n > sizeGoal {
			verdict = " (over the goal)"
		}
		fmt.Printf("| %s | %s | %s | %.2fx%s | %.2fx |\n", c.name, can, mib(n), float64(n)/sizeGoal, verdict, float64(n)/float64(len(raw)))
	}
	return nil
}

type part struct {
	name string
	size int
}

// cpioParts sums the archive's file data by what it is: the u-root busybox
// (all Go commands in one binary, cpinit alone here), the kernel modules,
// and the rest (directories, symlinks, /init, module lists).
func cpioParts(raw []byte) ([]part, error) {
	r := cpio.Newc.Reader(bytes.NewReader(raw))
	var bb, mods, other, files int
	for {
		rec, err := r.ReadRecord()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		n := int(rec.FileSize)
		switch {
		case rec.Name == "bbin/bb":
			bb += n
		case strings.HasSuffix(rec.Name, ".ko"):
			mods += n
		default:
			other += n
		}
		files++
	}
	if bb == 0 || mods == 0 {
		return nil, fmt.Errorf("no bbin/bb or no modules in the archive (%d entries)", files)
	}
	return []part{
		{"bbin/bb (the Go binary: cpinit)", bb},
		{"kernel modules (initramfs/modules.list and dependencies)", mods},
		{"everything else (/init, symlinks, module lists, cpio headers)", len(raw) - bb - mods},
	}, nil
}

type compressor struct {
	name    string
	kconfig string
	size    func([]byte) (int, error)
}

// Settings as the kernel wants them: xz with CRC32 checks
// (Documentation/staging/xz.rst: the kernel's decoder supports only
// CRC32 or none), zstd and lz4 in their legacy/standard frame formats.
var compressors = []compressor{
	{"gzip -9", "CONFIG_RD_GZIP", func(b []byte) (int, error) {
		var buf bytes.Buffer
		w, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		w.Write(b)
		if err := w.Close(); err != nil {
			return 0, err
		}
		return buf.Len(), nil
	}},
	{"xz -9 --check=crc32", "CONFIG_RD_XZ", command("xz", "-9", "--check=crc32", "-c")},
	{"zstd -19", "CONFIG_RD_ZSTD", command("zstd", "-19", "-q", "-c")},
	{"lz4 -9 -l", "CONFIG_RD_LZ4", command("lz4", "-9", "-l", "-q", "-c")},
}

// command measures a host compressor; missing ones are reported, not fatal
// (xz-utils is on every Debian; zstd and lz4 are optional packages).
func command(name string, args ...string) func([]byte) (int, error) {
	return func(b []byte) (int, error) {
		if _, err := exec.LookPath(name); err != nil {
			return 0, fmt.Errorf("%s not installed", name)
		}
		cmd := exec.Command(name, args...)
		cmd.Stdin = bytes.NewReader(b)
		out, err := cmd.Output()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		return len(out), nil
	}
}

func mib(n int) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }
