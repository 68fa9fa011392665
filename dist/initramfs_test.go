package dist

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

// The distribution initramfs integrations (dist/initramfs-tools,
// dist/dracut; docs/initramfs-tools.md, docs/dracut.md). The QEMU tests
// that build images with the real mkinitramfs and dracut and boot them
// are qemu-tests/distroinitvm; these check the files on the host: what
// the install scripts install, the scripts' syntax, how each acts on
// every exit status of `cpinit boot-step`, the unit, the docs' quotes.

// initramfsToolsInstalled and dracutInstalled are what the install
// scripts install, relative to DESTDIR, with their modes.
var (
	initramfsToolsInstalled = map[string]os.FileMode{
		"usr/share/initramfs-tools/hooks/cpinit":                0o755,
		"usr/share/initramfs-tools/scripts/local-bottom/cpinit": 0o755,
	}
	dracutInstalled = map[string]os.FileMode{
		"usr/lib/dracut/modules.d/90cpinit/module-setup.sh":          0o755,
		"usr/lib/dracut/modules.d/90cpinit/cpinit-boot-step.service": 0o644,
		"usr/lib/dracut/modules.d/90cpinit/cpinit-boot-step.sh":      0o755,
		"usr/lib/dracut/modules.d/90cpinit/cpinit-pre-pivot.sh":      0o755,
	}
)

// installTree runs script into an empty DESTDIR and returns every file
// in it with its mode.
func installTree(t *testing.T, script string) map[string]os.FileMode {
	t.Helper()
	testutil.LookPath(t, "install")
	dest := t.TempDir()
	if out, err := exec.Command("sh", script, dest).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", script, dest, err, out)
	}
	got := map[string]os.FileMode{}
	err := filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dest, p)
		got[rel] = fi.Mode()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestDistInitramfsInstallTrees installs each integration into an empty
// DESTDIR and checks every file and its mode, and nothing else.
func TestDistInitramfsInstallTrees(t *testing.T) {
	for script, want := range map[string]map[string]os.FileMode{
		"initramfs-tools/install.sh": initramfsToolsInstalled,
		"dracut/install.sh":          dracutInstalled,
	} {
		got := installTree(t, script)
		var names []string
		for rel, mode := range got {
			names = append(names, rel)
			if w, ok := want[rel]; !ok {
				t.Errorf("%s installed %s, which is not listed", script, rel)
			} else if mode != w {
				t.Errorf("%s: %s has mode %v, want %v", script, rel, mode, w)
			}
		}
		sort.Strings(names)
		if len(got) != len(want) {
			t.Errorf("%s installed %d files, want %d: %v", script, len(got), len(want), names)
		}
	}
}

// TestDistInitramfsScriptsParse: every script is valid for the shell that
// runs it: sh (dash, busybox ash in the image) for initramfs-tools' and
// the unit's, bash for dracut's module-setup.sh, which dracut sources.
func TestDistInitramfsScriptsParse(t *testing.T) {
	for _, c := range []struct{ shell, script string }{
		{"sh", "initramfs-tools/hooks/cpinit"},
		{"sh", "initramfs-tools/scripts/local-bottom/cpinit"},
		{"sh", "initramfs-tools/install.sh"},
		{"bash", "dracut/90cpinit/module-setup.sh"},
		{"sh", "dracut/90cpinit/cpinit-boot-step.sh"},
		{"sh", "dracut/90cpinit/cpinit-pre-pivot.sh"},
		{"sh", "dracut/install.sh"},
	} {
		if out, err := exec.Command(testutil.LookPath(t, c.shell), "-n", c.script).CombinedOutput(); err != nil {
			t.Errorf("%s -n %s: %v\n%s", c.shell, c.script, err, out)
		}
	}
}

// TestInitramfsToolsPrereqs: mkinitramfs orders hooks and boot scripts by
// calling each with "prereqs" (initramfs-tools(7)): both print nothing
// and exit 0, without running anything else.
func TestInitramfsToolsPrereqs(t *testing.T) {
	for _, script := range []string{"initramfs-tools/hooks/cpinit", "initramfs-tools/scripts/local-bottom/cpinit"} {
		out, err := exec.Command("sh", script, "prereqs").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "" {
			t.Errorf("%s prereqs: %v, output %q", script, err, out)
		}
	}
}

// scriptRun runs a copy of script whose paths point into a temporary
// directory: a stand-in /usr/bin/cpinit that prints its arguments and
// exits with the first of statuses, the second time with the second, and
// so on (then 0); stand-ins for what the script calls afterwards
// (reboot, poweroff, systemctl; initramfs-tools' panic and dracut's die,
// from the sourced file given), each printing its name and arguments. It
// returns what the script printed and its exit status.
func scriptRun(t *testing.T, script string, statuses []int, sourced map[string]string) (string, int) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	for _, name := range []string{"reboot", "poweroff", "systemctl"} {
		writeFile(t, filepath.Join(bin, name), []byte("#!/bin/sh\necho \"<"+name+" $*>\"\n"), 0o755)
	}
	var codes []string
	for _, st := range statuses {
		codes = append(codes, strconv.Itoa(st))
	}
	writeFile(t, filepath.Join(dir, "statuses"), []byte(strings.Join(codes, "\n")+"\n"), 0o644)
	// Each run takes the first line of statuses and drops it.
	writeFile(t, filepath.Join(dir, "cpinit"), []byte(`#!/bin/sh
echo "<cpinit $*>"
st=$(sed -n 1p "$(dirname "$0")/statuses")
sed -i 1d "$(dirname "$0")/statuses"
exit "${st:-0}"
`), 0o755)
	b, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	pairs := []string{"/usr/bin/cpinit", filepath.Join(dir, "cpinit")}
	for path, text := range sourced {
		p := filepath.Join(dir, filepath.Base(path))
		writeFile(t, p, []byte(text), 0o644)
		pairs = append(pairs, path, p)
	}
	copyPath := filepath.Join(dir, "script")
	writeFile(t, copyPath, []byte(strings.NewReplacer(pairs...).Replace(string(b))), 0o755)
	cmd := exec.Command("sh", copyPath)
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "rootmnt=/root", "NEWROOT=/sysroot")
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// TestDistInitramfsScriptsActOnStatus: each script runs `cpinit boot-step`
// on its root and does what the exit status says (docs/cli.md): 0 go on,
// 3 reboot, 4 power off, anything else the distribution's failure path
// (initramfs-tools' panic, the unit's failure, dracut's die). The
// stand-in reboot and poweroff return, as a failed one would: the boot
// must not go on to the root's init then either.
func TestDistInitramfsScriptsActOnStatus(t *testing.T) {
	panicFn := map[string]string{"/scripts/functions": "panic() { echo \"<panic $*>\"; exit 1; }\n"}
	// initramfs-tools' panic returns when the person at the console leaves
	// its shell (scripts/functions).
	panicReturns := map[string]string{"/scripts/functions": "panic() { echo \"<panic $*>\"; }\n"}
	dieFn := map[string]string{"/lib/dracut-lib.sh": "die() { echo \"<die $*>\"; exit 1; }\n"}
	for _, c := range []struct {
		script   string
		sourced  map[string]string
		statuses []int // cpinit's, run after run
		want     string
		exit     int
	}{
		{"initramfs-tools/scripts/local-bottom/cpinit", panicFn, []int{0}, "<cpinit boot-step --root /root>\n", 0},
		{"initramfs-tools/scripts/local-bottom/cpinit", panicFn, []int{3}, "<cpinit boot-step --root /root>\n<reboot -f>\n<panic cpinit: reboot -f failed: userdata is not mounted>\n", 1},
		{"initramfs-tools/scripts/local-bottom/cpinit", panicFn, []int{4}, "<cpinit boot-step --root /root>\n<poweroff -f>\n<panic cpinit: poweroff -f failed: userdata is not mounted>\n", 1},
		{"initramfs-tools/scripts/local-bottom/cpinit", panicFn, []int{1}, "<cpinit boot-step --root /root>\n<panic cpinit: the boot step failed (exit status 1, the reason is above): userdata is not mounted; leave this shell to run it again>\n", 1},
		{"initramfs-tools/scripts/local-bottom/cpinit", panicFn, []int{2}, "<cpinit boot-step --root /root>\n<panic cpinit: the boot step failed (exit status 2, the reason is above): userdata is not mounted; leave this shell to run it again>\n", 1},
		// Leaving the panic shell runs the boot step again: the boot
		// goes on only once userdata is mounted.
		{"initramfs-tools/scripts/local-bottom/cpinit", panicReturns, []int{1, 1, 0}, "<cpinit boot-step --root /root>\n<panic cpinit: the boot step failed (exit status 1, the reason is above): userdata is not mounted; leave this shell to run it again>\n<cpinit boot-step --root /root>\n<panic cpinit: the boot step failed (exit status 1, the reason is above): userdata is not mounted; leave this shell to run it again>\n<cpinit boot-step --root /root>\n", 0},
		{"dracut/90cpinit/cpinit-boot-step.sh", nil, []int{0}, "<cpinit boot-step --root /sysroot>\n", 0},
		{"dracut/90cpinit/cpinit-boot-step.sh", nil, []int{3}, "<cpinit boot-step --root /sysroot>\n<systemctl --no-block reboot>\n", 3},
		{"dracut/90cpinit/cpinit-boot-step.sh", nil, []int{4}, "<cpinit boot-step --root /sysroot>\n<systemctl --no-block poweroff>\n", 4},
		{"dracut/90cpinit/cpinit-boot-step.sh", nil, []int{1}, "<cpinit boot-step --root /sysroot>\n", 1},
		{"dracut/90cpinit/cpinit-pre-pivot.sh", dieFn, []int{0}, "<cpinit boot-step --root /sysroot>\n", 0},
		{"dracut/90cpinit/cpinit-pre-pivot.sh", dieFn, []int{3}, "<cpinit boot-step --root /sysroot>\n<reboot -f>\n<die cpinit: reboot -f failed: userdata is not mounted>\n", 1},
		{"dracut/90cpinit/cpinit-pre-pivot.sh", dieFn, []int{4}, "<cpinit boot-step --root /sysroot>\n<poweroff -f>\n<die cpinit: poweroff -f failed: userdata is not mounted>\n", 1},
		{"dracut/90cpinit/cpinit-pre-pivot.sh", dieFn, []int{1}, "<cpinit boot-step --root /sysroot>\n<die cpinit: the boot step failed (exit status 1, the reason is above): userdata is not mounted>\n", 1},
	} {
		out, code := scriptRun(t, c.script, c.statuses, c.sourced)
		if out != c.want || code != c.exit {
			t.Errorf("%s with cpinit exiting %v: printed %q, exit %d; want %q, exit %d", c.script, c.statuses, out, code, c.want, c.exit)
		}
	}
}

// TestDracutUnitVerify checks cpinit-boot-step.service with
// systemd-analyze verify, installed and enabled in a root as dracut's
// module does: any warning fails. Its [Install] makes initrd-fs.target
// and initrd-switch-root.service require it.
func TestDracutUnitVerify(t *testing.T) {
	analyze, systemctl := needSystemd(t)
	root := unitRoot(t)
	b, err := os.ReadFile("dracut/90cpinit/cpinit-boot-step.service")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "usr/lib/systemd/system/cpinit-boot-step.service"), b, 0o644)
	writeFile(t, filepath.Join(root, "usr/libexec/cpinit/cpinit-boot-step"), nil, 0o755)
	if out, err := exec.Command(systemctl, "--root="+root, "enable", "cpinit-boot-step.service").CombinedOutput(); err != nil {
		t.Fatalf("systemctl --root enable: %v\n%s", err, out)
	}
	for _, link := range []string{
		"etc/systemd/system/initrd-fs.target.requires/cpinit-boot-step.service",
		"etc/systemd/system/initrd-switch-root.service.requires/cpinit-boot-step.service",
	} {
		if _, err := os.Lstat(filepath.Join(root, link)); err != nil {
			t.Errorf("enabling made no %s: %v", link, err)
		}
	}
	if out, err := verify(t, analyze, root, "cpinit-boot-step.service"); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
