package manifest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDir(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"a", "lost+found", ".cpinit"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "a", "f"), []byte("hello"), 0o640)
	os.WriteFile(filepath.Join(root, ".cpinit", "cow"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(root, "lost+found", "x"), []byte("x"), 0o600)
	m, err := Dir(root)
	if err != nil {
		t.Fatal(err)
	}
	want := Manifest{
		"a":   "dir -rwxr-x---",
		"a/f": "-rw-r----- 5 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
	}
	if d := m.Diff(want, 10); len(d) > 0 {
		t.Fatalf("diff: %q", d)
	}
	d1 := m.Digest()
	os.WriteFile(filepath.Join(root, "a", "f"), []byte("hellO"), 0o640)
	m2, _ := Dir(root)
	if m2.Digest() == d1 || len(m.Diff(m2, 10)) != 1 {
		t.Error("a changed byte is not seen")
	}
}
