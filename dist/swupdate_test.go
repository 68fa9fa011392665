package dist

import (
	"os/exec"
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
	checkTree(t, "swupdate/install.sh", dest, map[string]inst{
		"usr/libexec/cpinit/cpinit-swupdate-preupdate": {mode: 0o755},
		"etc/swupdate/conf.d/50-cpinit":                {mode: 0o644},
	})
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
