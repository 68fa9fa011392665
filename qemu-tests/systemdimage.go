package qemutests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// The systemd slot: a system image whose init is the host's installed
// systemd (Debian bookworm: systemd 252), with cpinit's units from dist/systemd
// installed and enabled the way a distribution package and an administrator
// would, plus a few test units. Nothing is downloaded: binaries, their shared
// libraries (found with ldd) and unit files are copied from the host.
//
// At boot, default.target is cpinit-test.target, which pulls in only
// basic.target (and so sysinit.target, local-fs.target, ... as far as their
// units are in the image: Wants= on a missing unit is ignored), the
// workload and the report unit. No udev, no journald, no getty: systemd
// logs to the console and services write to it (system.conf.d below).
//
//	cpinit-test-workload.service  changes userdata the way an updated system
//	                              might (overwrites a file in place, deletes
//	                              one, rewrites /data/hello.txt, writes a new
//	                              4 MiB file), prints "cpinit-test: workload done"
//	cpinit-health-check.service   dist/systemd/examples/, enabled (RequiredBy=
//	                              boot-complete.target), with a drop-in whose
//	                              verdict is the kernel parameter the host
//	                              passes: systemd.setenv=CPINIT_TEST_HEALTH=ok
//	                              passes, anything else vetoes
//	cpinit-commit.service         dist/systemd/, enabled (basic.target.wants)
//	cpinit-watch.service          dist/systemd/, enabled in the default target
//	cpinit-test-report.service    after the commit (whether it ran or not):
//	                              prints "cpinit-test: commit unit" and the
//	                              commit unit's state (systemctl show),
//	                              "cpinit-test: status" and
//	                              `cpinit status --json`, then powers off
//	                              (SuccessAction=/FailureAction=poweroff)

// SystemdHostFiles are the host files the systemd slot needs besides unit
// files; their shared libraries are added by ldd. systemd-shutdown is what
// PID 1 execs to power off; mount and umount stop mount units at shutdown;
// the coreutils run the test units (no shell); the report unit asks
// systemctl how the commit unit fared.
var SystemdHostFiles = []string{
	"/usr/lib/systemd/systemd",
	"/usr/lib/systemd/systemd-shutdown",
	"/usr/bin/systemctl",
	"/usr/bin/mount",
	"/usr/bin/umount",
	"/usr/bin/test",
	"/usr/bin/cp",
	"/usr/bin/dd",
	"/usr/bin/rm",
	"/usr/bin/sync",
	"/usr/bin/echo",
}

// systemdHostUnits are the host's unit files the boot transaction and the
// power off need (from /usr/lib/systemd/system).
var systemdHostUnits = []string{
	"basic.target", "sysinit.target", "local-fs-pre.target", "local-fs.target",
	"swap.target", "sockets.target", "timers.target", "paths.target", "slices.target",
	"boot-complete.target",
	"shutdown.target", "umount.target", "final.target", "poweroff.target", "systemd-poweroff.service",
}

// HostSystemdMissing says what the host lacks to build the systemd slot, or
// "" when it has everything.
func HostSystemdMissing() string {
	var missing []string
	for _, f := range SystemdHostFiles {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	for _, u := range systemdHostUnits {
		if _, err := os.Stat(filepath.Join("/usr/lib/systemd/system", u)); err != nil {
			missing = append(missing, u)
		}
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		missing = append(missing, "ldd")
	}
	if len(missing) == 0 {
		return ""
	}
	return "host systemd/coreutils/util-linux files missing (Debian packages systemd, coreutils, mount): " + strings.Join(missing, ", ")
}

// Test units of the systemd slot (see the comment at the top).
var systemdTestUnits = map[string]string{
	"cpinit-test.target": `[Unit]
Description=Test system
Requires=basic.target
After=basic.target
Wants=cpinit-test-workload.service cpinit-test-report.service
AllowIsolate=yes
`,
	"cpinit-test-workload.service": `[Unit]
Description=Test workload
After=basic.target
Before=boot-complete.target cpinit-commit.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/dd if=/dev/urandom of=/data/d0/f000.bin bs=4096 count=1 conv=notrunc,fsync status=none
ExecStart=/usr/bin/rm -f /data/d1/f001.bin
ExecStart=/usr/bin/cp /usr/share/cpinit-test/hello.txt /data/hello.txt
ExecStart=/usr/bin/dd if=/dev/urandom of=/data/new-systemd.bin bs=64K count=64 conv=fsync status=none
ExecStart=/usr/bin/sync
ExecStartPost=/usr/bin/echo "cpinit-test: workload done"
`,
	"cpinit-test-report.service": `[Unit]
Description=Test report
DefaultDependencies=no
After=basic.target cpinit-test-workload.service boot-complete.target cpinit-commit.service cpinit-watch.service
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
# Stop the watch first, so its lines do not interleave with the report
# (Conflicts= would drop the watch from the boot transaction instead).
ExecStartPre=/usr/bin/systemctl stop cpinit-watch.service
ExecStart=/usr/bin/echo "cpinit-test: commit unit"
ExecStart=/usr/bin/systemctl show --property=ActiveState,Result,ConditionResult,ConditionTimestampMonotonic cpinit-commit.service
ExecStart=/usr/bin/echo "cpinit-test: status"
ExecStart=/usr/bin/cpinit status --json
`,
	// The health check's verdict: the kernel parameter
	// systemd.setenv=CPINIT_TEST_HEALTH=ok passes; unset or anything else
	// fails, vetoing the commit.
	"cpinit-health-check.service.d/cpinit-test.conf": `[Unit]
Description=Test health check
After=cpinit-test-workload.service

[Service]
ExecStart=
ExecStart=/usr/bin/test "${CPINIT_TEST_HEALTH}" = ok
`,
}

// systemdManagerConf: log to the console, services write to it (there is
// no journald), plain lines for the test's expectations.
const systemdManagerConf = `[Manager]
LogTarget=console
LogLevel=info
LogColor=no
ShowStatus=yes
DefaultStandardOutput=tty
DefaultStandardError=inherit
`

// SystemdHello is what the systemd slot's workload writes to /data/hello.txt.
const SystemdHello = "written by the systemd update\n"

// MakeSystemdImage builds a systemd system slot in dir: an ext4 image
// labelled label (the file is label-systemd.img). See the top of this file.
func MakeSystemdImage(dir, label string) (string, error) {
	root := filepath.Join(dir, label+"-systemd.root")
	if err := SystemdSlotRoot(root); err != nil {
		return "", err
	}
	img := filepath.Join(dir, label+"-systemd.img")
	return img, MakeExt4(img, 96<<20, label, root)
}

// SystemdSlotRoot populates root with the systemd slot's files (the tree
// MakeSystemdImage turns into an image).
func SystemdSlotRoot(root string) error {
	if m := HostSystemdMissing(); m != "" {
		return errors.New(m)
	}
	// Merged /usr, as on the host (ldd's paths go through these links).
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "data", "dev", "proc", "sys", "run", "tmp", "etc/systemd/system", "usr/lib/systemd/system"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(root, l)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "var"), 0o755); err != nil {
		return err
	}
	if err := os.Symlink("../run", filepath.Join(root, "var/run")); err != nil {
		return err
	}
	files, err := withLibraries(SystemdHostFiles)
	if err != nil {
		return err
	}
	// Name service: root for the services (no nsswitch.conf: "files").
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/libnss_files.so.2"); err == nil {
		files = append(files, "/usr/lib/x86_64-linux-gnu/libnss_files.so.2")
	}
	for _, f := range files {
		if err := copyHostFile(f, filepath.Join(root, f)); err != nil {
			return err
		}
	}
	for _, u := range systemdHostUnits {
		p := filepath.Join("/usr/lib/systemd/system", u)
		if err := copyHostFile(p, filepath.Join(root, p)); err != nil {
			return err
		}
	}
	// PID 1 is systemd, as on a distribution.
	if err := os.Symlink("../lib/systemd/systemd", filepath.Join(root, "usr/sbin/init")); err != nil {
		return err
	}
	// amd64: the image's systemd and libraries are the host's.
	bins, err := slotBinaries("amd64")
	if err != nil {
		return err
	}
	if err := copyExecutable(filepath.Join(bins, "cpinit"), filepath.Join(root, "usr/bin/cpinit")); err != nil {
		return err
	}

	// cpinit's units: the commit unit as a package installs it, the
	// example health check as an administrator would; both enabled as
	// `systemctl enable` does from their [Install] sections.
	dist := filepath.Join(RepoRoot(), "dist", "systemd")
	if err := copyHostFile(filepath.Join(dist, "cpinit-commit.service"), filepath.Join(root, "usr/lib/systemd/system/cpinit-commit.service")); err != nil {
		return err
	}
	if err := copyHostFile(filepath.Join(dist, "examples", "cpinit-health-check.service"), filepath.Join(root, "etc/systemd/system/cpinit-health-check.service")); err != nil {
		return err
	}
	if err := copyHostFile(filepath.Join(dist, "cpinit-watch.service"), filepath.Join(root, "usr/lib/systemd/system/cpinit-watch.service")); err != nil {
		return err
	}
	etc := filepath.Join(root, "etc")
	links := map[string]string{
		"systemd/system/basic.target.wants/cpinit-commit.service": "/usr/lib/systemd/system/cpinit-commit.service",
		// WantedBy=multi-user.target, which this image's default target
		// stands in for.
		"systemd/system/cpinit-test.target.wants/cpinit-watch.service":             "/usr/lib/systemd/system/cpinit-watch.service",
		"systemd/system/boot-complete.target.requires/cpinit-health-check.service": "/etc/systemd/system/cpinit-health-check.service",
		"systemd/system/default.target":                                            "cpinit-test.target",
	}
	for l, target := range links {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(etc, l)), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(target, filepath.Join(etc, l)); err != nil {
			return err
		}
	}
	text := map[string]string{
		"etc/machine-id": "c0ffee00c0ffee00c0ffee00c0ffee00\n",
		"etc/os-release": "NAME=\"cpinit test system\"\nID=cpinit-test\nPRETTY_NAME=\"cpinit test system (host systemd)\"\n",
		"etc/passwd":     "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"etc/group":      "root:x:0:\nnogroup:x:65534:\n",
		"etc/systemd/system.conf.d/cpinit-test.conf": systemdManagerConf,
		"usr/share/cpinit-test/hello.txt":            SystemdHello,
	}
	for name, unit := range systemdTestUnits {
		text["etc/systemd/system/"+name] = unit
	}
	for p, s := range text {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// withLibraries adds the shared libraries ldd lists for each file (the
// dynamic loader included), sorted and without duplicates.
func withLibraries(files []string) ([]string, error) {
	set := map[string]bool{}
	for _, f := range files {
		set[f] = true
		out, err := exec.Command("ldd", f).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", f, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
			// "/lib64/ld-linux-x86-64.so.2 (0x…)"; linux-vdso has no file.
			fields := strings.Fields(sc.Text())
			for i, w := range fields {
				if strings.HasPrefix(w, "/") && (i == 0 || fields[i-1] == "=>") {
					set[w] = true
				}
			}
		}
	}
	var all []string
	for f := range set {
		all = append(all, f)
	}
	sort.Strings(all)
	return all, nil
}

// copyHostFile copies src's contents (symlinks followed) to dst, keeping
// the permission bits.
func copyHostFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, st.Mode().Perm())
}
