package initramfs

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// TestBuildReproducible builds the product initramfs twice from the same
// inputs and requires byte-identical output, and checks it holds what PID 1
// needs.
func TestBuildReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two initramfs images (~20 s); not in -short")
	}
	k := pinnedKernel(t)
	dir := t.TempDir()
	var imgs [][]byte
	for _, name := range []string{"a.cpio", "b.cpio"} {
		out := filepath.Join(dir, name)
		if err := Build(BuildOptions{Modules: k.Modules, Out: out, InitCmd: "cpinit", Pkgs: []string{"./cmds/cpinit"}}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, b)
	}
	if !bytes.Equal(imgs[0], imgs[1]) {
		t.Fatalf("two builds from the same inputs differ (%d vs %d bytes)", len(imgs[0]), len(imgs[1]))
	}
	t.Logf("initramfs: %d bytes uncompressed", len(imgs[0]))

	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(imgs[0])))
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]cpio.Record{}
	for _, r := range recs {
		have[r.Name] = r
	}
	for _, want := range []string{
		"init", "bbin/cpinit", "etc/cpinit/modules",
		"lib/modules/" + k.Release + "/modules.dep",
		"lib/modules/" + k.Release + "/kernel/drivers/md/dm-snapshot.ko",
		"lib/modules/" + k.Release + "/kernel/drivers/block/virtio_blk.ko",
	} {
		if _, ok := have[want]; !ok {
			t.Errorf("initramfs lacks %s", want)
		}
	}
	if r, ok := have["init"]; ok {
		target, _ := readAll(r)
		if target != "bbin/cpinit" {
			t.Errorf("/init -> %q, want bbin/cpinit (cpinit must be PID 1 itself)", target)
		}
	}

	// Issue 7's budget: ≤ 4 MiB compressed. gzip -9 is the compressor
	// every kernel can unpack (CONFIG_RD_GZIP); `make bench` (size section)
	// reports xz, zstd and lz4 too.
	var gz bytes.Buffer
	w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	w.Write(imgs[0])
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	const budget = 4 << 20
	t.Logf("initramfs: %d bytes with gzip -9 (budget %d)", gz.Len(), budget)
	if gz.Len() > budget {
		t.Errorf("initramfs is %d bytes with gzip -9, over the %d-byte budget: see the size section of make bench for what takes the space", gz.Len(), budget)
	}
}

func readAll(r cpio.Record) (string, error) {
	b := make([]byte, r.FileSize)
	_, err := r.ReadAt(b, 0)
	return string(b), err
}
