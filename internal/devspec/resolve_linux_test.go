package devspec

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

// TestResolveMBRPartUUID partitions a loop device with a DOS table
// (sfdisk, two primary partitions and a logical one) and resolves each
// partition by the PARTUUID blkid prints for it: blkid, like the kernel,
// makes it up from the disk signature and the partition number.
func TestResolveMBRPartUUID(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"losetup", "sfdisk", "blkid", "partx"} {
		testutil.LookPath(t, tool)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	layout := "label: dos\nlabel-id: 0x8c2f0b9e\n" +
		",8MiB,L\n,8MiB,L\n,,E\n,8MiB,L\n"
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", img)
	cmd.Stdin = strings.NewReader(layout)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	out, err := exec.Command("losetup", "-f", "-P", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v\n%s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	if _, err := os.Stat(dev + "p1"); err != nil {
		// losetup -P asks the kernel to scan the table; where that did
		// not happen (seen on this CI's kernel), partx adds the partitions.
		if out, err := exec.Command("partx", "-a", dev).CombinedOutput(); err != nil {
			t.Fatalf("partx -a %s: %v\n%s", dev, err, out)
		}
	}
	for _, p := range []string{dev + "p1", dev + "p2", dev + "p5"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("partition %s did not appear after losetup -P: %v", p, err)
		}
		out, err := exec.Command("blkid", "-p", "-s", "PART_ENTRY_UUID", "-o", "value", p).CombinedOutput()
		if err != nil {
			t.Fatalf("blkid %s: %v\n%s", p, err, out)
		}
		partuuid := strings.TrimSpace(string(out))
		s, err := Parse("PARTUUID=" + strings.ToUpper(partuuid))
		if err != nil {
			t.Fatal(err)
		}
		got, err := Resolve(s)
		if err != nil {
			t.Errorf("Resolve(%s) (blkid's PARTUUID of %s): %v", s, p, err)
			continue
		}
		if got != p {
			t.Errorf("Resolve(%s) = %s, want %s", s, got, p)
		}
	}
	if got, err := Resolve(Spec{Kind: PartUUID, Value: "8c2f0b9e-06"}); err == nil {
		t.Errorf("Resolve(PARTUUID=8c2f0b9e-06) = %s, want not found (no sixth partition)", got)
	}
}
