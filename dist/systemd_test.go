package dist

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

// The shipped units: where a package or an administrator installs them.
var units = map[string]string{
	"systemd/cpinit-commit.service":                "usr/lib/systemd/system/cpinit-commit.service",
	"systemd/cpinit-watch.service":                 "usr/lib/systemd/system/cpinit-watch.service",
	"systemd/examples/cpinit-health-check.service": "etc/systemd/system/cpinit-health-check.service",
}

// Programs the units run, made (empty, executable) in the test root:
// systemd-analyze verify checks that ExecStart= names an executable. The
// health check's program is the example's placeholder for a real check.
var programs = []string{"usr/bin/cpinit", "usr/local/libexec/update-health-check"}

// unitRoot makes a root for systemctl/systemd-analyze --root: the host's
// unit files, cpinit's units installed, their programs present.
func unitRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy the host's units: %v\n%s", err, out)
	}
	for src, dst := range units {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(root, dst), b, 0o644)
	}
	for _, p := range programs {
		writeFile(t, filepath.Join(root, p), nil, 0o755)
	}
	return root
}

func writeFile(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
}

// needSystemd returns systemd-analyze and systemctl, or skips loudly (fails
// under CI).
func needSystemd(t *testing.T) (analyze, systemctl string) {
	t.Helper()
	if _, err := os.Stat("/usr/lib/systemd/system/boot-complete.target"); err != nil {
		if testutil.InCI() {
			t.Fatalf("the host's systemd units are missing (Debian package systemd), which CI must install: %v", err)
		}
		t.Skipf("SKIPPING: the host's systemd units are missing (install systemd): %v", err)
	}
	return testutil.LookPath(t, "systemd-analyze"), testutil.LookPath(t, "systemctl")
}

// verify runs systemd-analyze verify in root and returns its output:
// warnings ("Unknown key ...", "... ignoring") exit 0, so any output counts.
func verify(t *testing.T, analyze, root string, names ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(analyze, append([]string{"--root=" + root, "verify"}, names...)...).CombinedOutput()
	return string(out), err
}

// TestUnitsVerify enables the shipped units as `systemctl enable` does and
// checks them, and boot-complete.target with the health check hanging off
// it, with systemd-analyze verify: any warning fails.
func TestUnitsVerify(t *testing.T) {
	analyze, systemctl := needSystemd(t)
	root := unitRoot(t)
	if out, err := exec.Command(systemctl, "--root="+root, "enable", "cpinit-commit.service", "cpinit-watch.service", "cpinit-health-check.service").CombinedOutput(); err != nil {
		t.Fatalf("systemctl --root enable: %v\n%s", err, out)
	}
	for _, link := range []string{
		"etc/systemd/system/basic.target.wants/cpinit-commit.service",
		"etc/systemd/system/multi-user.target.wants/cpinit-watch.service",
		"etc/systemd/system/boot-complete.target.requires/cpinit-health-check.service",
	} {
		if _, err := os.Lstat(filepath.Join(root, link)); err != nil {
			t.Errorf("enabling made no %s: %v", link, err)
		}
	}
	if out, err := verify(t, analyze, root, "cpinit-commit.service", "cpinit-watch.service", "cpinit-health-check.service", "boot-complete.target"); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestVerifyCatchesWarnings: the check above is not vacuous. A unit with
// an unknown key verifies with exit status 0 and a warning, which must show.
func TestVerifyCatchesWarnings(t *testing.T) {
	analyze, _ := needSystemd(t)
	root := unitRoot(t)
	p := filepath.Join(root, "usr/lib/systemd/system/cpinit-commit.service")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p, bytes.Replace(b, []byte("[Service]\n"), []byte("[Service]\nNoSuchKey=1\n"), 1), 0o644)
	out, _ := verify(t, analyze, root, "cpinit-commit.service")
	if !strings.Contains(out, "NoSuchKey") {
		t.Fatalf("systemd-analyze verify did not report an unknown key; output:\n%s", out)
	}
}

// TestDocQuotesUnits: docs/systemd.md quotes every shipped unit, each in
// the fenced block after a "<!-- file: dist/… -->" marker, exactly.
func TestDocQuotesUnits(t *testing.T) {
	var files []string
	for src := range units {
		files = append(files, src)
	}
	sort.Strings(files)
	docQuotes(t, "../docs/systemd.md", files...)
}

// maxExposure is the highest `systemd-analyze security` exposure each
// shipped unit may score (0 safest, 10 unsafe): what the sandbox in the
// units achieves (docs/systemd.md, "The sandbox"), so that a change that
// loosens it fails here.
var maxExposure = map[string]float64{
	"cpinit-commit.service":       2.0,
	"cpinit-watch.service":        2.0,
	"cpinit-health-check.service": 3.0,
}

// exposureRe is systemd-analyze security's last line.
var exposureRe = regexp.MustCompile(`Overall exposure level for (\S+): (\d+\.\d) (\S+)`)

// TestUnitsSecurity scores each shipped unit with systemd-analyze security
// --offline (its unit file in a temporary root, nothing of the host's
// systemd consulted or written), checks the score against maxExposure and
// that docs/systemd.md's table shows exactly these scores.
func TestUnitsSecurity(t *testing.T) {
	analyze, _ := needSystemd(t)
	root := unitRoot(t)
	got := map[string]string{}
	for src := range units {
		name := filepath.Base(src)
		out, err := exec.Command(analyze, "security", "--offline=true", "--root="+root, "--no-pager", name).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", name, err, out)
		}
		m := exposureRe.FindStringSubmatch(string(out))
		if m == nil || m[1] != name {
			t.Fatalf("systemd-analyze security %s printed no exposure level:\n%s", name, out)
		}
		score, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatal(err)
		}
		max, ok := maxExposure[name]
		if !ok {
			t.Fatalf("%s has no maxExposure", name)
		}
		if score > max {
			t.Errorf("%s: exposure %.1f %s, more than its %.1f: the sandbox was loosened; systemd-analyze security says:\n%s", name, score, m[3], max, out)
		}
		got[name] = m[2] + " " + m[3]
	}
	doc, err := os.ReadFile("../docs/systemd.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z-]+\\.service)` \\| (\\d+\\.\\d) \\| ([A-Z]+) \\|")
	inDoc := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		inDoc[m[1]] = m[2] + " " + m[3]
	}
	for name, s := range got {
		if inDoc[name] != s {
			t.Errorf("docs/systemd.md's table shows %s as %q, systemd-analyze security says %q: update the table", name, inDoc[name], s)
		}
	}
	for name := range inDoc {
		if _, ok := got[name]; !ok {
			t.Errorf("docs/systemd.md's table scores %s, which is not a shipped unit", name)
		}
	}
}
