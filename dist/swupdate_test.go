package dist

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The SWUpdate integration (dist/swupdate, docs/swupdate.md). The QEMU
// tests that run the real swupdate with it are in qemu-tests/agentvm.

func TestSWUpdateInstallTree(t *testing.T) {
	dest := t.TempDir()
	if out, err := exec.Command("sh", "swupdate/install.sh", dest).CombinedOutput(); err != nil {
		t.Fatalf("swupdate/install.sh: %v\n%s", err, out)
	}
	want := map[string]os.FileMode{
		"usr/libexec/cpinit/cpinit-swupdate-preupdate": 0o755,
		"etc/swupdate/conf.d/50-cpinit":                0o644,
	}
	n := 0
	err := filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		n++
		rel, _ := filepath.Rel(dest, p)
		if m, ok := want[rel]; !ok {
			t.Errorf("install.sh installed %s, which is not listed", rel)
		} else if fi.Mode().Perm() != m {
			t.Errorf("%s: mode %v, want %v", rel, fi.Mode().Perm(), m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Errorf("installed %d files, want %d", n, len(want))
	}
}

// TestSWUpdateConfSourced: 50-cpinit, sourced as Debian's swupdate.sh
// sources conf.d files, appends to SWUPDATE_ARGS and keeps what was there.
func TestSWUpdateConfSourced(t *testing.T) {
	for _, s := range []string{"swupdate/cpinit-swupdate-preupdate", "swupdate/install.sh"} {
		if out, err := exec.Command("sh", "-n", s).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", s, err, out)
		}
	}
	out, err := exec.Command("sh", "-c", `SWUPDATE_ARGS="-v -k KEY"; . ./swupdate/50-cpinit; printf %s "$SWUPDATE_ARGS"`).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "-v -k KEY -B uboot -P /usr/libexec/cpinit/cpinit-swupdate-preupdate"; string(out) != want {
		t.Fatalf("SWUPDATE_ARGS %q, want %q", out, want)
	}
	if !strings.HasPrefix(string(out), "-v -k KEY") {
		t.Fatal("50-cpinit dropped the arguments before it")
	}
}

func TestDocQuotesSWUpdateFiles(t *testing.T) {
	docQuotes(t, "../docs/swupdate.md", "swupdate/50-cpinit", "swupdate/sw-description.example", "swupdate/cpinit-swupdate-preupdate")
}
