// Package manifest describes a userdata tree for the end-to-end tests: every
// regular file and directory below a root, as path → "mode size sha256" (or
// "dir mode"), skipping lost+found and cpinit's own .cpinit directory. The
// host computes it from a disk image (qemu-tests, through debugfs rdump) and
// the guest from its mounted /data (qemu-tests/sysinit), so the two can be
// compared: what the system wrote is what is on disk.
package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Manifest is path (relative to the root) → description.
type Manifest map[string]string

// Dir walks root.
func Dir(root string) (Manifest, error) {
	m := Manifest{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		if e.IsDir() && (rel == "lost+found" || rel == ".cpinit") {
			return filepath.SkipDir
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		if e.IsDir() {
			m[rel] = fmt.Sprintf("dir %v", info.Mode().Perm())
			return nil
		}
		if !info.Mode().IsRegular() {
			m[rel] = fmt.Sprintf("other %v", info.Mode())
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return &os.PathError{Op: "read", Path: p, Err: err}
		}
		m[rel] = fmt.Sprintf("%v %d %s", info.Mode().Perm(), info.Size(), hex.EncodeToString(h.Sum(nil)))
		return nil
	})
	return m, err
}

// Digest is a short hash of the whole manifest, to print on a console.
func (m Manifest) Digest() string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s\x00%s\n", k, m[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Diff lists the differences, at most max of them.
func (m Manifest) Diff(o Manifest, max int) []string {
	keys := map[string]bool{}
	for k := range m {
		keys[k] = true
	}
	for k := range o {
		keys[k] = true
	}
	all := make([]string, 0, len(keys))
	for k := range keys {
		all = append(all, k)
	}
	sort.Strings(all)
	var d []string
	for _, k := range all {
		if m[k] != o[k] {
			d = append(d, fmt.Sprintf("%s: %q vs %q", k, m[k], o[k]))
			if len(d) == max {
				break
			}
		}
	}
	return d
}

// String is one line per entry, sorted.
func (m Manifest) String() string {
	var b strings.Builder
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %s\n", k, m[k])
	}
	return b.String()
}
