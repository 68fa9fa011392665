package pid1

import (
	"bytes"
	"compress/gzip"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// moduleLike is data that compresses like a module: an ELF header, then
// text with repeats, then noise.
func moduleLike() []byte {
	var b bytes.Buffer
	b.WriteString("\x7fELF\x02\x01\x01")
	for i := range 2000 {
		b.WriteString("license=GPL\x00depends=dm-mod\x00symbol_")
		b.WriteString(strings.Repeat("x", i%17))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 50000 {
		b.WriteByte(byte(r.UintN(256)))
	}
	return b.Bytes()
}

func TestModuleFile(t *testing.T) {
	for name, want := range map[string]string{
		"dm-mod.ko": CompressNone, "dm-mod.ko.xz": CompressXZ, "dm-mod.ko.zst": CompressZstd, "dm-mod.ko.gz": CompressGzip,
	} {
		if got, ok := ModuleFile(name); !ok || got != want {
			t.Errorf("ModuleFile(%q) = %q, %v; want %q", name, got, ok, want)
		}
		if got := UncompressedName(name); got != "dm-mod.ko" {
			t.Errorf("UncompressedName(%q) = %q", name, got)
		}
	}
	for _, name := range []string{"dm-mod.ko.bz2", "modules.dep", "dm-mod.o"} {
		if _, ok := ModuleFile(name); ok {
			t.Errorf("ModuleFile(%q) accepted", name)
		}
	}
}

// TestDecompressModuleTools compresses with the tools and flags the
// kernel's modules_install uses (scripts/Makefile.modinst: xz
// --check=crc32 --lzma2=dict=1MiB, zstd -T0, gzip -n) and with xz's
// default CRC64 check, as distributions that compress after the build may.
func TestDecompressModuleTools(t *testing.T) {
	want := moduleLike()
	dir := t.TempDir()
	for _, tc := range []struct {
		comp, tool string
		args       []string
	}{
		{CompressXZ, "xz", []string{"--check=crc32", "--lzma2=dict=1MiB", "-c"}},
		{CompressXZ, "xz", []string{"-c"}}, // CRC64
		{CompressXZ, "xz", []string{"--check=sha256", "-c"}},
		{CompressZstd, "zstd", []string{"-T0", "-q", "-c"}},
		{CompressGzip, "gzip", []string{"-n", "-c"}},
	} {
		testutil.LookPath(t, tc.tool)
		in := filepath.Join(dir, "m.ko")
		if err := os.WriteFile(in, want, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(tc.tool, append(tc.args, in)...).Output()
		if err != nil {
			t.Fatalf("%s %q: %v", tc.tool, tc.args, err)
		}
		got, err := DecompressModule(bytes.NewReader(out), tc.comp)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s %q: %d bytes, %v; want %d bytes", tc.tool, tc.args, len(got), err, len(want))
		}
		// The same through a file named as distributions name them.
		suffix := map[string]string{CompressXZ: ".ko.xz", CompressZstd: ".ko.zst", CompressGzip: ".ko.gz"}[tc.comp]
		path := filepath.Join(dir, "dm-mod"+suffix)
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := ReadModuleFile(path); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("ReadModuleFile(%s): %d bytes, %v", path, len(got), err)
		}
	}
}

// TestDecompressModuleGo round-trips through the Go encoders.
func TestDecompressModuleGo(t *testing.T) {
	want := moduleLike()
	var xzb, zb, gzb bytes.Buffer
	xw, err := xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 1 << 20}.NewWriter(&xzb)
	if err != nil {
		t.Fatal(err)
	}
	zw, err := zstd.NewWriter(&zb)
	if err != nil {
		t.Fatal(err)
	}
	gw := gzip.NewWriter(&gzb)
	for _, w := range []interface {
		Write([]byte) (int, error)
		Close() error
	}{xw, zw, gw} {
		if _, err := w.Write(want); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for comp, b := range map[string][]byte{CompressXZ: xzb.Bytes(), CompressZstd: zb.Bytes(), CompressGzip: gzb.Bytes(), CompressNone: want} {
		got, err := DecompressModule(bytes.NewReader(b), comp)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%q: %d bytes, %v", comp, len(got), err)
		}
	}
}

// A damaged file is an error naming the format, never a short image: the
// xz CRC32 and gzip CRC catch a flipped byte in the data.
func TestDecompressModuleCorrupt(t *testing.T) {
	want := moduleLike()
	var xzb, gzb bytes.Buffer
	xw, err := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&xzb)
	if err != nil {
		t.Fatal(err)
	}
	xw.Write(want)
	xw.Close()
	gw := gzip.NewWriter(&gzb)
	gw.Write(want)
	gw.Close()
	for comp, b := range map[string][]byte{CompressXZ: xzb.Bytes(), CompressGzip: gzb.Bytes()} {
		b = bytes.Clone(b)
		b[len(b)/2] ^= 0x40
		if _, err := DecompressModule(bytes.NewReader(b), comp); err == nil || !strings.Contains(err.Error(), comp) {
			t.Errorf("%s: corrupt stream: err %v, want an error naming %s", comp, err, comp)
		}
	}
	for comp := range map[string]bool{CompressXZ: true, CompressZstd: true, CompressGzip: true} {
		if _, err := DecompressModule(bytes.NewReader(want), comp); err == nil {
			t.Errorf("%s: a plain .ko read as %s without error", comp, comp)
		}
	}
	if _, err := DecompressModule(bytes.NewReader(want), "bz2"); err == nil {
		t.Error("unknown compression accepted")
	}
}
