package devspec

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]Spec{
		"/dev/vda":           {Path, "/dev/vda"},
		"UUID=ABCD-01":       {UUID, "abcd-01"},
		"uuid=abcd":          {UUID, "abcd"},
		"LABEL=userdata":     {Label, "userdata"},
		`LABEL="my data"`:    {Label, "my data"},
		"PARTLABEL=userdata": {PartLabel, "userdata"},
		"PARTUUID=1234-AB":   {PartUUID, "1234-ab"},
	} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "vda", "LABEL=", "FOO=bar", "dev/vda"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", in)
		} else if in != "" && !strings.Contains(err.Error(), in) {
			t.Errorf("Parse(%q) error %q does not name the input", in, err)
		}
	}
}

func TestParseSuperblockShort(t *testing.T) {
	if _, err := ParseSuperblock(make([]byte, 100)); err == nil {
		t.Fatal("short buffer accepted")
	}
	if _, err := ParseSuperblock(make([]byte, SuperblockProbeSize)); err != ErrUnknownFS {
		t.Fatalf("zeroes: err = %v, want ErrUnknownFS", err)
	}
}

// TestReadSuperblockMkfs compares our decoder with what mkfs.ext4 was told to
// write: an independent producer of the bytes.
func TestReadSuperblockMkfs(t *testing.T) {
	mkfs := testutil.LookPath(t, "mkfs.ext4")
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	const uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	if out, err := exec.Command(mkfs, "-q", "-F", "-L", "cp-userdata", "-U", uuid, img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	sb, err := ReadSuperblock(img)
	if err != nil {
		t.Fatal(err)
	}
	if sb != (Superblock{Type: "ext4", UUID: uuid, Label: "cp-userdata"}) {
		t.Fatalf("got %+v", sb)
	}
}

// TestReadSuperblockF2FS: our f2fs decoder against mkfs.f2fs (the label,
// with a non-ASCII letter to exercise UTF-16) and blkid (the UUID mkfs
// chose): two independent tools.
func TestReadSuperblockF2FS(t *testing.T) {
	mkfs := testutil.LookPath(t, "mkfs.f2fs")
	blkid := testutil.LookPath(t, "blkid")
	img := filepath.Join(t.TempDir(), "f2fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-f", "-l", "userdätä", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.f2fs: %v\n%s", err, out)
	}
	out, err := exec.Command(blkid, "-p", "-o", "value", "-s", "UUID", img).Output()
	if err != nil {
		t.Fatalf("blkid: %v", err)
	}
	sb, err := ReadSuperblock(img)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Superblock{Type: "f2fs", UUID: strings.TrimSpace(string(out)), Label: "userdätä"}); sb != want {
		t.Fatalf("got %+v, want %+v", sb, want)
	}
}
