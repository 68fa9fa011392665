package dist

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// inst is what an installer leaves at a path: a regular file with mode,
// or (mode 0) a symbolic link to link.
type inst struct {
	mode os.FileMode
	link string
}

// checkTree checks that the tree under dest holds exactly want (paths
// relative to dest): every file with its mode, every link with its
// target, and nothing else. what names the installer in the messages.
func checkTree(t *testing.T, what, dest string, want map[string]inst) {
	t.Helper()
	var got []string
	err := filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dest, p)
		got = append(got, rel)
		w, ok := want[rel]
		switch {
		case !ok:
			t.Errorf("%s installed %s, which is not expected", what, rel)
		case w.mode == 0:
			if l, err := os.Readlink(p); err != nil || l != w.link {
				t.Errorf("%s: want a symbolic link to %s, got %q (%v)", rel, w.link, l, err)
			}
		case fi.Mode()&os.ModeType != 0 || fi.Mode().Perm() != w.mode:
			t.Errorf("%s: mode %v, want a regular file with mode %v", rel, fi.Mode(), w.mode)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		var missing []string
		for f := range want {
			if _, err := os.Lstat(filepath.Join(dest, f)); err != nil {
				missing = append(missing, f)
			}
		}
		sort.Strings(missing)
		t.Errorf("%s installed %d files, want %d; missing: %s", what, len(got), len(want), strings.Join(missing, ", "))
	}
}
