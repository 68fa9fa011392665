package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

// runCheck runs `cpinit check --json args` and returns the report, its
// checks by name and the exit status.
func runCheck(t *testing.T, args ...string) (*CheckReport, map[string]CheckResult, int) {
	t.Helper()
	var out bytes.Buffer
	err := runCLI(append([]string{"check", "--json"}, args...), &out)
	var r CheckReport
	dec := json.NewDecoder(&out)
	dec.DisallowUnknownFields()
	if derr := dec.Decode(&r); derr != nil {
		t.Fatalf("check %v: output is not a report (%v; err %v):\n%s", args, derr, err, out.String())
	}
	// One JSON object: a failed check's report is its answer, not
	// followed by an error object (which a parser of the output would
	// choke on).
	if dec.More() {
		t.Errorf("check %v --json printed more than the report:\n%s", args, out.String())
	}
	by := map[string]CheckResult{}
	for _, c := range r.Checks {
		by[c.Name] = c
	}
	if (err == nil) != r.OK {
		t.Errorf("check: ok %v but error %v", r.OK, err)
	}
	return &r, by, exitStatus(err)
}

// checkNames are the checks every run reports, in order.
var checkNames = []string{checkParams, checkDevices, checkDM, checkUserdataFS, checkCOWSize, checkMetadata, checkBootloader, checkSlot, checkCheckpoint}

// TestCheckHost runs `cpinit check` on a host system (ext4 userdata on a
// loop device, a blank store, misc): everything passes but device-mapper,
// which the host kernel lacks, and that is the unsupported path: a FAIL
// saying so, exit status 1. Nothing is written: the images are unchanged.
func TestCheckHost(t *testing.T) {
	s := newHostSystem(t, true)
	imgs := []string{filepath.Join(s.dir, "metadata.img"), filepath.Join(s.dir, "userdata.img")}
	misc, _ := filepath.Glob(filepath.Join(s.dir, "misc*.img"))
	imgs = append(imgs, misc...)
	before := map[string][32]byte{}
	for _, p := range imgs {
		before[p] = fileHash(t, p)
	}
	args := s.args("check", "_a", true, "--reserve", "1M")[1:]
	r, by, code := runCheck(t, args...)
	if len(r.Checks) != len(checkNames) {
		t.Fatalf("%d checks, want %v: %+v", len(r.Checks), checkNames, r.Checks)
	}
	for i, name := range checkNames {
		if r.Checks[i].Name != name {
			t.Errorf("check %d is %s, want %s", i, r.Checks[i].Name, name)
		}
	}
	if _, err := os.Stat("/dev/mapper/control"); err == nil {
		t.Skip("this host has device-mapper: the unsupported path is tested in QEMU only")
	}
	wantStatus(t, by[checkDM], checkFail, "lacks dm-snapshot", "CONFIG_DM_SNAPSHOT")
	for _, name := range []string{checkParams, checkDevices, checkUserdataFS, checkCOWSize, checkMetadata, checkBootloader, checkSlot, checkCheckpoint} {
		wantStatus(t, by[name], checkPass)
	}
	wantStatus(t, by[checkUserdataFS], checkPass, "ext4 on "+s.loop)
	wantStatus(t, by[checkMetadata], checkPass, "blank")
	wantStatus(t, by[checkBootloader], checkPass, "android misc")
	if r.OK || code != exitError {
		t.Errorf("ok %v, exit %d; want false, 1", r.OK, code)
	}
	for _, p := range imgs {
		if fileHash(t, p) != before[p] {
			t.Errorf("check changed %s", p)
		}
	}

	// The text form: one line per check, the fix under the failure.
	var out bytes.Buffer
	err := runCLI(append([]string{"check"}, args...), &out)
	if exitStatus(err) != exitError || !strings.Contains(out.String(), "FAIL  device-mapper  the kernel lacks dm-snapshot") ||
		!strings.Contains(out.String(), "fix: build the kernel with") || !strings.HasSuffix(out.String(), "FAILED: 1 of 9 checks\n") {
		t.Errorf("text output (err %v):\n%s", err, out.String())
	}
}

// TestCheckHostUnsupported: a metadata device holding a filesystem and
// userdata on xfs fail with what they are; a COW that cannot fit fails;
// bad usage is exit status 2.
func TestCheckHostUnsupported(t *testing.T) {
	s := newHostSystem(t, true)

	// The default --reserve (128 MiB) leaves nothing of a 64 MiB userdata.
	_, by, code := runCheck(t, s.args("check", "_a", true)[1:]...)
	wantStatus(t, by[checkCOWSize], checkFail, "less than the 16 MiB")
	if code != exitError {
		t.Errorf("exit %d, want 1", code)
	}

	// The metadata partition holds ext4: the wrong device.
	img := filepath.Join(s.dir, "foreign.img")
	sparseFile(t, img, 16<<20)
	sh(t, "mkfs.ext4", "-q", "-F", "-L", "notmeta", img)
	sum := fileHash(t, img)
	foreign := attach(t, img, false)
	_, by, _ = runCheck(t, "--metadata", foreign, "--userdata", s.loop, "--data", s.mnt, "--misc", s.misc, "--cmdline", "cpinit.slot=_a", "--reserve", "1M")
	wantStatus(t, by[checkMetadata], checkFail, "not blank and not a cpinit store: wrong device?", `ext2/3/4 filesystem labelled "notmeta"`)
	wantStatus(t, by[checkCheckpoint], checkSkip)
	if fileHash(t, img) != sum {
		t.Error("check wrote the foreign device")
	}

	// userdata on xfs.
	testutil.LookPath(t, "mkfs.xfs")
	ximg := filepath.Join(s.dir, "xfs.img")
	sparseFile(t, ximg, 300<<20)
	sh(t, "mkfs.xfs", "-q", "-f", ximg)
	xloop := attach(t, ximg, false)
	xmnt := filepath.Join(s.dir, "xfs")
	if err := os.Mkdir(xmnt, 0o755); err != nil {
		t.Fatal(err)
	}
	sh(t, "mount", "-t", "xfs", xloop, xmnt)
	t.Cleanup(func() {
		if err := testutil.Unmount(xmnt); err != nil {
			t.Error(err)
		}
	})
	_, by, _ = runCheck(t, "--metadata", s.store, "--userdata", xloop, "--data", xmnt, "--cmdline", "cpinit.slot=_a", "--reserve", "1M")
	wantStatus(t, by[checkUserdataFS], checkFail, xmnt+" is xfs", "only on ext4 and f2fs")
	wantStatus(t, by[checkCOWSize], checkSkip)
	wantStatus(t, by[checkBootloader], checkSkip, "native counter")

	// --data names a directory on another filesystem than userdata.
	_, by, _ = runCheck(t, "--metadata", s.store, "--userdata", xloop, "--data", s.mnt, "--cmdline", "cpinit.slot=_a", "--reserve", "1M")
	wantStatus(t, by[checkUserdataFS], checkFail, "not on userdata "+xloop)

	for _, args := range [][]string{{"check", "extra"}, {"check", "--size", "0"}, {"check", "--reserve", "x"}, {"check", "--nope"}} {
		if err := runCLI(args, &bytes.Buffer{}); exitStatus(err) != exitUsage {
			t.Errorf("%v: exit %d (%v), want 2", args, exitStatus(err), err)
		}
	}
}
