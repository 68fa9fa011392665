package main

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

func TestFSSignature(t *testing.T) {
	b := make([]byte, fsSignatureSize)
	if s := fsSignature(b); s != "" {
		t.Fatalf("zeros: %q", s)
	}
	ext := make([]byte, fsSignatureSize)
	binary.LittleEndian.PutUint16(ext[1080:], 0xEF53)
	copy(ext[1024+120:], "system_b")
	if s := fsSignature(ext); s != `an ext2/3/4 filesystem labelled "system_b"` {
		t.Fatalf("ext4: %q", s)
	}
	f2 := make([]byte, 2048)
	binary.LittleEndian.PutUint32(f2[1024:], 0xF2F52010)
	if s := fsSignature(f2); s != "an f2fs filesystem" {
		t.Fatalf("f2fs: %q", s)
	}
	if s := fsSignature([]byte("XFSB")); s != "an xfs filesystem" {
		t.Fatalf("xfs: %q", s)
	}
	if s := fsSignature(nil); s != "" {
		t.Fatalf("empty: %q", s)
	}
}

// A store cpinit wrote, however large its record, is never taken for a
// filesystem (the check only runs when no valid record is found, but the
// encoded record must not look like one either way).
func TestFSSignatureNotOnStore(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "store")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, f, err := bootstate.OpenStore(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := bootstate.RecoveryKeepCurrent(DefaultCOWPath)
	if _, err := s.Format(&r); err != nil {
		t.Fatal(err)
	}
	if sig, err := deviceSignature(f); err != nil || sig != "" {
		t.Fatalf("store: %q, %v", sig, err)
	}
}

// mkfs.ext4's own output is recognised, label and all.
func TestFSSignatureMkfs(t *testing.T) {
	// testutil.LookPath fails in CI (which installs e2fsprogs) instead of
	// skipping, so a missing tool cannot hide this test there.
	mkfs := testutil.LookPath(t, "mkfs.ext4")
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", "-L", "system_b", p).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if sig, err := deviceSignature(f); err != nil || !strings.Contains(sig, `"system_b"`) {
		t.Fatalf("%q, %v", sig, err)
	}
}

func TestNoReplayOption(t *testing.T) {
	for fs, want := range map[string]string{"ext4": "noload", "f2fs": "norecovery"} {
		if got, ok := noReplayOption(fs); !ok || got != want {
			t.Errorf("%s: %q %v, want %q", fs, got, ok, want)
		}
	}
	if _, ok := noReplayOption("xfs"); ok {
		t.Error("xfs has an option: cpinit does not checkpoint xfs")
	}
}
