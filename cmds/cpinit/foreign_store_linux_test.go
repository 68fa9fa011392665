package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// foreignImages makes, in dir, a store-sized ext4 filesystem and a file of
// random bytes, and returns their paths with what a refusal must name.
func foreignImages(t *testing.T, dir string, size int64) []struct{ name, path, want string } {
	t.Helper()
	mkfs := testutil.LookPath(t, "mkfs.ext4")
	ext := filepath.Join(dir, "ext4.img")
	if err := os.WriteFile(ext, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", "-L", "not_a_store", ext).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	rnd := filepath.Join(dir, "random.img")
	b := make([]byte, size)
	rand.NewChaCha8([32]byte{'c', 'p', 'i', 'n', 'i', 't'}).Read(b)
	if err := os.WriteFile(rnd, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return []struct{ name, path, want string }{
		{"ext4", ext, `holds an ext2/3/4 filesystem labelled "not_a_store", not a cpinit metadata store`},
		{"random", rnd, fmt.Sprintf("offset 0: % x", b[:4])},
	}
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// TestCheckStoreDevice: the check every command and PID 1 run on the store
// device before anything else refuses a filesystem and any other data
// cpinit did not write, and lets blank, valid and damaged cpinit stores
// through (PID 1 formats a blank one; a damaged one stops the boot and is
// what recover keep-current is for).
func TestCheckStoreDevice(t *testing.T) {
	dir := t.TempDir()
	for _, img := range foreignImages(t, dir, bootstate.StoreSize) {
		t.Run(img.name, func(t *testing.T) {
			before := fileHash(t, img.path)
			s, f, err := bootstate.OpenStore(img.path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			err = checkStoreDevice(s, f, img.path)
			if err == nil || !strings.Contains(err.Error(), img.path) || !strings.Contains(err.Error(), img.want) {
				t.Errorf("checkStoreDevice: %v; want a refusal naming %s and %q", err, img.path, img.want)
			} else if !strings.Contains(err.Error(), "dd if=/dev/zero") {
				t.Errorf("checkStoreDevice: %v; want the way to wipe it deliberately", err)
			}
			if fileHash(t, img.path) != before {
				t.Error("the store was written")
			}
		})
	}
	t.Run("cpinit stores", func(t *testing.T) {
		p := filepath.Join(dir, "store.img")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		s, f, err := bootstate.OpenStore(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := checkStoreDevice(s, f, p); err != nil {
			t.Errorf("blank: %v", err)
		}
		r := bootstate.NewFreshRecord()
		if _, err := s.Save(&r); err != nil {
			t.Fatal(err)
		}
		if err := checkStoreDevice(s, f, p); err != nil {
			t.Errorf("valid: %v", err)
		}
		// Both copies damaged past the magic: unreadable, not foreign.
		for _, off := range []int64{0, bootstate.CopyStride} {
			if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, 64), off+8); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := s.Load(); !errors.Is(err, bootstate.ErrStoreCorrupt) {
			t.Fatalf("damaged store: %v", err)
		}
		if err := checkStoreDevice(s, f, p); err != nil {
			t.Errorf("damaged: %v", err)
		}
	})
}

// TestCLIRefusesForeignStore runs the commands that write the store with
// --metadata naming an ext4 filesystem and a device of random bytes: each
// must fail, say what the device holds, and leave it untouched. userdata
// is a real filesystem, so that a command that took the device for a blank
// store would go ahead and write it.
func TestCLIRefusesForeignStore(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.LookPath(t, "losetup")
	dir := t.TempDir()
	loop := func(img string) string {
		dev := strings.TrimSpace(sh(t, "losetup", "-f", "--show", img))
		t.Cleanup(func() {
			if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
				t.Errorf("losetup -d %s: %v %s", dev, err, out)
			}
		})
		return dev
	}
	udImg := filepath.Join(dir, "userdata.img")
	sh(t, "truncate", "-s", "64M", udImg)
	sh(t, testutil.LookPath(t, "mkfs.ext4"), "-q", "-F", udImg)
	ud := loop(udImg)
	mnt := filepath.Join(dir, "data")
	os.Mkdir(mnt, 0o755)
	sh(t, "mount", ud, mnt)
	t.Cleanup(func() {
		if err := testutil.Unmount(mnt); err != nil {
			t.Error(err)
		}
	})
	cmdline := "cpinit.userdata=" + ud
	for _, img := range foreignImages(t, dir, 16<<20) {
		dev := loop(img.path)
		for _, args := range [][]string{
			{"begin", "--size", "16M", "--reserve", "1M", "--data", mnt},
			{"rollback", "--data", mnt},
			{"commit", "--data", mnt},
			{"recover", "keep-current", "--yes"},
		} {
			t.Run(img.name+"/"+args[0], func(t *testing.T) {
				// The loop device, not the file: a write that was not
				// flushed yet shows there.
				before := fileHash(t, dev)
				var out bytes.Buffer
				err := runCLI(append(args, "--metadata", dev, "--cmdline", cmdline), &out)
				if exitStatus(err) == 0 {
					t.Errorf("exit status 0; output:\n%s", out.String())
				}
				if err == nil || !strings.Contains(err.Error(), dev) || !strings.Contains(err.Error(), img.want) {
					t.Errorf("error %v; want it to name %s and %q", err, dev, img.want)
				}
				if fileHash(t, dev) != before {
					t.Errorf("%s was written; output:\n%s", dev, out.String())
				}
				t.Logf("%v", err)
			})
		}
	}
	if _, err := os.Stat(filepath.Join(mnt, DefaultCOWPath)); err == nil {
		t.Error("begin allocated a COW file")
	}
}
