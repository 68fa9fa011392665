package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestStatInRoot: the next init is looked up as it will be run, inside the
// new root: Debian's /sbin/init is an absolute link (/lib/systemd/systemd),
// which must resolve in the slot, not in the initramfs cpinit runs from.
func TestStatInRoot(t *testing.T) {
	root := t.TempDir()
	// A path no host has, so that a lookup that escapes the root cannot
	// find it by chance.
	initPath := filepath.Join(root, "lib/cpinit-statinroot-test/init")
	if err := os.MkdirAll(filepath.Dir(initPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initPath, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"sbin":              "usr/sbin",                                    // merged /usr, relative
		"usr/sbin/init":     "/lib/cpinit-statinroot-test/init",            // Debian's kind: absolute
		"usr/sbin/up-init":  "../../../../lib/cpinit-statinroot-test/init", // ".." stops at the root
		"usr/sbin/dangling": "/lib/systemd/no-such-init",
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.Stat(initPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/sbin/init", "/usr/sbin/init", "sbin/up-init", "/lib/cpinit-statinroot-test/init"} {
		st, err := statInRoot(root, p)
		if err != nil {
			t.Errorf("statInRoot(%s): %v", p, err)
			continue
		}
		if !os.SameFile(st, want) {
			t.Errorf("statInRoot(%s) is not %s", p, initPath)
		}
	}
	for _, p := range []string{"/sbin/dangling", "/sbin/missing"} {
		if _, err := statInRoot(root, p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("statInRoot(%s) = %v, want a not-exist error", p, err)
		}
	}
}
