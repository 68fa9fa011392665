package dist

import (
	"debug/buildinfo"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

// make install and make uninstall (the Makefile, docs/integration.md,
// "Installing: make install"), run for real into a temporary DESTDIR.

// wantInstalled is what make install must install with prefix, relative to
// DESTDIR, and each file's mode; a mode of 0 is a symbolic link to the
// target in links. It is built from the tree, independently of the
// Makefile's list: every doc, every file of the agents' integrations.
func wantInstalled(t *testing.T, prefix string) (files map[string]os.FileMode, links map[string]string) {
	t.Helper()
	p := strings.TrimPrefix(prefix, "/")
	files = map[string]os.FileMode{
		p + "/bin/cpinit": 0o755,
		p + "/lib/systemd/system/cpinit-commit.service":               0o644,
		p + "/lib/systemd/system/cpinit-watch.service":                0o644,
		p + "/lib/dracut/modules.d/90cpinit/module-setup.sh":          0o755,
		p + "/lib/dracut/modules.d/90cpinit/cpinit-boot-step.sh":      0o755,
		p + "/lib/dracut/modules.d/90cpinit/cpinit-pre-pivot.sh":      0o755,
		p + "/lib/dracut/modules.d/90cpinit/cpinit-boot-step.service": 0o644,
		p + "/share/initramfs-tools/hooks/cpinit":                     0o755,
		p + "/share/initramfs-tools/scripts/local-bottom/cpinit":      0o755,
		p + "/share/doc/cpinit/README.md":                             0o644,
		p + "/share/doc/cpinit/LICENSE":                               0o644,
		p + "/share/doc/cpinit/examples/cpinit-health-check.service":  0o644,
	}
	links = map[string]string{}
	docs, err := filepath.Glob("../docs/*")
	if err != nil || len(docs) == 0 {
		t.Fatalf("no docs found (%v)", err)
	}
	for _, d := range docs {
		if strings.HasSuffix(d, "_test.go") {
			continue // the docs' own checks (docs/links_test.go)
		}
		files[p+"/share/doc/cpinit/docs/"+filepath.Base(d)] = 0o644
	}
	for _, agent := range []string{"rauc", "mender", "swupdate"} {
		entries, err := os.ReadDir(agent)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			src := filepath.Join(agent, e.Name())
			dst := p + "/share/cpinit/agents/" + agent + "/" + e.Name()
			fi, err := os.Lstat(src)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case fi.Mode()&os.ModeSymlink != 0:
				l, _ := os.Readlink(src)
				links[dst] = l
				files[dst] = 0
			case fi.Mode()&0o111 != 0:
				files[dst] = 0o755
			default:
				files[dst] = 0o644
			}
		}
	}
	return files, links
}

// runMake runs make in the top of the tree.
func runMake(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-C", "..", "--no-print-directory"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestMakeInstall installs with PREFIX=/usr (a distribution's package) and
// PREFIX=/usr/local (by hand) into empty DESTDIRs and checks the tree:
// every file, its mode, nothing else; the binary static, runnable and
// stamped with VERSION; the installed units naming the installed binary.
// Then make uninstall leaves no file behind.
func TestMakeInstall(t *testing.T) {
	testutil.LookPath(t, "make")
	testutil.LookPath(t, "install")
	for _, prefix := range []string{"/usr", "/usr/local"} {
		t.Run(strings.ReplaceAll(strings.TrimPrefix(prefix, "/"), "/", "_"), func(t *testing.T) {
			dest := t.TempDir()
			runMake(t, "install", "DESTDIR="+dest, "PREFIX="+prefix, "VERSION=v0.0.0-installtest")
			files, links := wantInstalled(t, prefix)
			want := map[string]inst{}
			for f, mode := range files {
				want[f] = inst{mode: mode, link: links[f]}
			}
			checkTree(t, "make install", dest, want)

			bin := filepath.Join(dest, prefix, "bin/cpinit")
			checkBinary(t, bin)
			// The units run the binary where it was installed; the
			// initramfs-tools boot script runs it where the hook puts
			// it in the image (/usr/bin/cpinit), whatever the prefix.
			for unit, want := range map[string]string{
				"lib/systemd/system/cpinit-commit.service":          "ExecStart=" + prefix + "/bin/cpinit commit --if-trial\n",
				"lib/systemd/system/cpinit-watch.service":           "ExecStart=" + prefix + "/bin/cpinit watch $CPINIT_WATCH_ARGS\n",
				"share/initramfs-tools/hooks/cpinit":                "copy_exec " + prefix + "/bin/cpinit /usr/bin\n",
				"share/initramfs-tools/scripts/local-bottom/cpinit": "\t/usr/bin/cpinit boot-step",
				"lib/dracut/modules.d/90cpinit/module-setup.sh":     "inst_binary " + prefix + "/bin/cpinit\n",
			} {
				b, err := os.ReadFile(filepath.Join(dest, prefix, unit))
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(b), want) {
					t.Errorf("installed %s does not contain %q", unit, want)
				}
			}

			runMake(t, "uninstall", "DESTDIR="+dest, "PREFIX="+prefix)
			err := filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
				if err == nil && !fi.IsDir() {
					t.Errorf("make uninstall left %s", p)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{"share/doc/cpinit", "share/cpinit", "lib/dracut/modules.d/90cpinit"} {
				if _, err := os.Stat(filepath.Join(dest, prefix, d)); err == nil {
					t.Errorf("make uninstall left cpinit's directory %s", d)
				}
			}
		})
	}
}

// checkBinary: the installed cpinit is static (no ELF interpreter: it runs
// in an initramfs without a libc), runs (`cpinit help` exits 0) and carries
// the VERSION make install stamped in (its build settings, which go
// version -m prints, hold the -X flag).
func checkBinary(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has an ELF interpreter: not static (CGO_ENABLED=0)", bin)
		}
	}
	f.Close()
	if out, err := exec.Command(bin, "help").CombinedOutput(); err != nil {
		t.Errorf("%s help: %v\n%s", bin, err, out)
	}
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var ldflags string
	for _, s := range bi.Settings {
		if s.Key == "-ldflags" {
			ldflags = s.Value
		}
	}
	if !strings.Contains(ldflags, "-X main.version=v0.0.0-installtest") {
		t.Errorf("%s: build settings (go version -m) show no stamped version: -ldflags=%q", bin, ldflags)
	}
}

// TestMakeInstallNeedsNoKernel: make install builds the binary and copies
// files; it must not fetch a kernel, install Debian packages or boot QEMU
// (the targets make test and make demo depend on).
func TestMakeInstallNeedsNoKernel(t *testing.T) {
	testutil.LookPath(t, "make")
	out := runMake(t, "-n", "install", "DESTDIR=/nonexistent")
	for _, bad := range []string{"fetch-kernel", "apt-get", "dpkg-query", "qemu"} {
		if strings.Contains(out, bad) {
			t.Errorf("make -n install runs %s:\n%s", bad, out)
		}
	}
}
