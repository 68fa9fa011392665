package dist

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

// The RAUC integration (dist/rauc, docs/rauc.md). The QEMU test that runs
// the real rauc with it is qemu-tests/agentvm.

// raucInstalled is what dist/rauc/install.sh installs, relative to DESTDIR.
var raucInstalled = map[string]inst{
	"usr/libexec/cpinit/cpinit-rauc-preinstall":                         {mode: 0o755},
	"usr/libexec/cpinit/cpinit-rauc-backend":                            {mode: 0o755},
	"usr/share/dbus-1/system.d/de.pengutronix.rauc.conf":                {mode: 0o644},
	"usr/share/dbus-1/system-services/de.pengutronix.rauc.service":      {mode: 0o644},
	"usr/lib/systemd/system/rauc.service":                               {mode: 0o644},
	"usr/lib/systemd/system/rauc-mark-good.service":                     {mode: 0o644},
	"etc/systemd/system/multi-user.target.wants/rauc-mark-good.service": {link: "/usr/lib/systemd/system/rauc-mark-good.service"},
}

// TestRAUCInstallTree installs dist/rauc into an empty DESTDIR and checks
// the tree: every file, its mode, the enabling link, nothing else.
func TestRAUCInstallTree(t *testing.T) {
	testutil.LookPath(t, "install")
	dest := t.TempDir()
	if out, err := exec.Command("sh", "rauc/install.sh", dest).CombinedOutput(); err != nil {
		t.Fatalf("rauc/install.sh %s: %v\n%s", dest, err, out)
	}
	checkTree(t, "rauc/install.sh", dest, raucInstalled)
}

// TestRAUCUnitsVerify checks rauc.service and rauc-mark-good.service with
// systemd-analyze verify, installed as install.sh installs them: any
// warning fails.
func TestRAUCUnitsVerify(t *testing.T) {
	analyze, _ := needSystemd(t)
	root := unitRoot(t)
	if out, err := exec.Command("sh", "rauc/install.sh", root).CombinedOutput(); err != nil {
		t.Fatalf("rauc/install.sh: %v\n%s", err, out)
	}
	writeFile(t, filepath.Join(root, "usr/bin/rauc"), nil, 0o755)
	if out, err := verify(t, analyze, root, "rauc.service", "rauc-mark-good.service"); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestRAUCBackendScript: the backend passes RAUC's arguments to `cpinit
// bootloader` unchanged, after begin's options from /etc/cpinit/rauc.conf,
// and is a valid sh script.
func TestRAUCBackendScript(t *testing.T) {
	for _, s := range []string{"rauc/cpinit-rauc-backend", "rauc/cpinit-rauc-preinstall", "rauc/install.sh"} {
		if out, err := exec.Command("sh", "-n", s).CombinedOutput(); err != nil {
			t.Fatalf("sh -n %s: %v\n%s", s, err, out)
		}
	}
	b, err := os.ReadFile("rauc/cpinit-rauc-backend")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `exec /usr/bin/cpinit bootloader $CPINIT_BEGIN_ARGS "$@"`) {
		t.Fatal("the backend no longer execs cpinit bootloader with RAUC's arguments")
	}
	// Run it with a stand-in cpinit that prints its arguments, through a
	// copy whose paths point into a temporary directory.
	dir := t.TempDir()
	fake := filepath.Join(dir, "cpinit")
	writeFile(t, fake, []byte("#!/bin/sh\nfor a; do printf '<%s>' \"$a\"; done\n"), 0o755)
	conf := filepath.Join(dir, "rauc.conf")
	writeFile(t, conf, []byte("CPINIT_BEGIN_ARGS=\"--size 30% --reserve 256M\"\n"), 0o644)
	s := strings.NewReplacer("/usr/bin/cpinit", fake, "/etc/cpinit/rauc.conf", conf).Replace(string(b))
	script := filepath.Join(dir, "backend")
	writeFile(t, script, []byte(s), 0o755)
	out, err := exec.Command(script, "set-state", "B", "good").Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "<bootloader><--size><30%><--reserve><256M><set-state><B><good>"; string(out) != want {
		t.Fatalf("backend ran %s, want %s", out, want)
	}
}

// TestDocQuotesRAUCFiles: docs/rauc.md quotes the integrator's files as
// they are (the same markers as docs/systemd.md).
func TestDocQuotesRAUCFiles(t *testing.T) {
	docQuotes(t, "../docs/rauc.md", "rauc/system.conf.example", "rauc/cpinit-rauc-backend", "rauc/rauc-mark-good.service",
		"rauc/system.conf.native-example", "rauc/cpinit-rauc-preinstall")
}

// docQuotes checks that doc quotes each of files (paths under dist/) in
// the fenced block after a "<!-- file: dist/… -->" marker, exactly, and
// quotes no other file that way.
func docQuotes(t *testing.T, doc string, files ...string) {
	t.Helper()
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- file: dist/([^ ]+) -->\n```[a-z]*\n(.*?)```\n")
	quoted := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		quoted[m[1]] = m[2]
	}
	for _, src := range files {
		f, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if q, ok := quoted[src]; !ok {
			t.Errorf("%s does not quote dist/%s", doc, src)
		} else if q != string(f) {
			t.Errorf("%s quotes dist/%s differently from the file; copy the file into the doc", doc, src)
		}
		delete(quoted, src)
	}
	for src := range quoted {
		t.Errorf("%s quotes dist/%s, which is not one of its files", doc, src)
	}
}
