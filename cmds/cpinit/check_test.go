package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"github.com/cpinit/cpinit/pkg/fiemap"
)

func wantStatus(t *testing.T, c CheckResult, status string, detail ...string) {
	t.Helper()
	if c.Status != status {
		t.Errorf("%s: status %s, want %s (%s; fix: %s)", c.Name, c.Status, status, c.Detail, c.Fix)
	}
	for _, d := range detail {
		if !strings.Contains(c.Detail+" fix: "+c.Fix, d) {
			t.Errorf("%s: %q does not say %q (fix: %s)", c.Name, c.Detail, d, c.Fix)
		}
	}
	if c.Status != checkPass && c.Status != checkSkip && c.Status != checkWarn && c.Fix == "" {
		t.Errorf("%s: %s without a fix", c.Name, c.Status)
	}
}

var allTargets = []dmsnap.TargetVersion{
	{Name: "striped", Version: [3]uint32{1, 6, 0}}, {Name: "linear", Version: [3]uint32{1, 4, 0}},
	{Name: "snapshot-merge", Version: [3]uint32{1, 5, 0}}, {Name: "snapshot-origin", Version: [3]uint32{1, 9, 0}},
	{Name: "snapshot", Version: [3]uint32{1, 16, 0}},
}

func TestDecideDM(t *testing.T) {
	base := dmFacts{Control: "/dev/mapper/control", Version: [3]uint32{4, 47, 0}, Release: "6.1.0-50-cloud-amd64", ModDir: "/lib/modules/6.1.0-50-cloud-amd64"}

	f := base
	f.Targets = allTargets
	wantStatus(t, decideDM(f), checkPass, "device-mapper 4.47.0", "linear 1.4.0, snapshot 1.16.0, snapshot-origin 1.9.0, snapshot-merge 1.5.0")

	// dm-mod loaded, dm-snapshot not: the module file is there.
	f = base
	f.Targets = allTargets[:2]
	f.Modules = []moduleFact{{Name: "dm-snapshot", Where: "/lib/modules/x/kernel/drivers/md/dm-snapshot.ko.xz"}}
	wantStatus(t, decideDM(f), checkPass, "does not list the target snapshot, snapshot-origin, snapshot-merge", "dm-snapshot.ko.xz", "initramfs")
	if missing, mods := missingDMTargets(f); len(missing) != 3 || len(mods) != 1 || mods[0] != "dm-snapshot" {
		t.Errorf("missingDMTargets = %v, %v", missing, mods)
	}

	// Nothing loaded, nothing on disk: the unsupported kernel.
	f = base
	f.ControlMissing = true
	f.ControlErr = fmt.Errorf("no /dev/mapper/control: %w", dmsnap.ErrNoDeviceMapper)
	f.Modules = []moduleFact{{Name: "dm-mod"}, {Name: "dm-snapshot"}}
	c := decideDM(f)
	wantStatus(t, c, checkFail, "lacks dm-snapshot", "not loaded (no /dev/mapper/control)", "no module dm-mod, dm-snapshot in /lib/modules/6.1.0-50-cloud-amd64", "CONFIG_DM_SNAPSHOT")

	// Nothing loaded, dm-mod built in, dm-snapshot a module: fine.
	f.Modules = []moduleFact{{Name: "dm-mod", Where: "built in", Builtin: true}, {Name: "dm-snapshot", Where: "/m/dm-snapshot.ko"}}
	wantStatus(t, decideDM(f), checkPass, "not loaded (no /dev/mapper/control); the modules are there", "dm-mod (built in)")

	// A control node this process may not open: modules are beside the point.
	f = base
	f.ControlErr = &os.PathError{Op: "open", Path: f.Control, Err: os.ErrPermission}
	wantStatus(t, decideDM(f), checkFail, "permission denied", "as root")
}

func TestFindModule(t *testing.T) {
	dep := "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz\nkernel/drivers/md/dm-snapshot.ko.zst: kernel/drivers/md/dm-bufio.ko.zst\n"
	if p, ok := findModule(dep, "dm-snapshot"); !ok || p != "kernel/drivers/md/dm-snapshot.ko.zst" {
		t.Errorf("modules.dep: %q %v", p, ok)
	}
	if p, ok := findModule(dep, "dm_snapshot"); !ok || p != "kernel/drivers/md/dm-snapshot.ko.zst" {
		t.Errorf("underscore name: %q %v", p, ok)
	}
	if _, ok := findModule(dep, "dm-mod"); ok {
		t.Error("found dm-mod that is not listed")
	}
	if _, ok := findModule("kernel/drivers/md/dm-mod.ko\n", "dm-mod"); !ok {
		t.Error("modules.builtin line not found")
	}
	if _, ok := findModule("kernel/drivers/md/dm-snapshot-extra.ko: \n", "dm-snapshot"); ok {
		t.Error("a module whose name only starts alike was taken")
	}
}

// TestFindKernelModule: built in, in modules.dep, or a file where depmod
// never ran.
func TestFindKernelModule(t *testing.T) {
	dir := t.TempDir()
	if m := findKernelModule(dir, "dm-snapshot"); m.Where != "" || m.Err != nil {
		t.Errorf("empty dir: %+v", m)
	}
	ko := filepath.Join(dir, "kernel/drivers/md/dm-snapshot.ko.xz")
	os.MkdirAll(filepath.Dir(ko), 0o755)
	os.WriteFile(ko, nil, 0o644)
	if m := findKernelModule(dir, "dm-snapshot"); m.Where != ko {
		t.Errorf("file: %+v, want %s", m, ko)
	}
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("kernel/x/dm-snapshot.ko: \n"), 0o644)
	if m := findKernelModule(dir, "dm-snapshot"); m.Where != filepath.Join(dir, "kernel/x/dm-snapshot.ko") {
		t.Errorf("modules.dep: %+v", m)
	}
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/md/dm-mod.ko\n"), 0o644)
	if m := findKernelModule(dir, "dm-mod"); !m.Builtin {
		t.Errorf("modules.builtin: %+v", m)
	}
}

func TestDecideUserdataFS(t *testing.T) {
	ext4 := fiemap.DirSupport{FSType: "ext4", Device: fiemap.Device{Major: 7, Minor: 3, Path: "/dev/loop3"}, BlockSize: 4096, Unit: 4096, Free: 40 << 20}
	base := fsFacts{DataDir: "/data", FSType: "ext4", Support: ext4, Userdata: "/dev/loop3", UDDev: dmsnap.Dev{Major: 7, Minor: 3}, Immutable: true}
	wantStatus(t, decideUserdataFS(base), checkPass, "ext4 on /dev/loop3 at /data", "immutable flag")

	f := base
	f.Support = fiemap.DirSupport{FSType: "xfs"}
	f.Err = fmt.Errorf("check /data: xfs: %w", fiemap.ErrUnsupportedFS)
	wantStatus(t, decideUserdataFS(f), checkFail, "/data is xfs", "only on ext4 and f2fs", "format userdata as ext4")

	f = base
	f.Support.ReadOnly = true
	wantStatus(t, decideUserdataFS(f), checkFail, "read-only")

	f = base
	f.UDDev = dmsnap.Dev{Major: 8, Minor: 2}
	wantStatus(t, decideUserdataFS(f), checkFail, "not on userdata /dev/loop3")

	f = base
	f.UDDev = dmsnap.Dev{Major: 254, Minor: 0}
	f.Via = "/dev/dm-0" // in a trial, through cp-origin
	wantStatus(t, decideUserdataFS(f), checkPass, "through /dev/dm-0")

	f = base
	f.FSType = "f2fs"
	wantStatus(t, decideUserdataFS(f), checkFail, "cpinit.fstype=f2fs", "set cpinit.fstype=ext4")

	f = base
	f.Immutable = false
	wantStatus(t, decideUserdataFS(f), checkFail, "CAP_LINUX_IMMUTABLE")

	f = base
	f.Err = errors.New("open /data: no such file or directory")
	wantStatus(t, decideUserdataFS(f), checkFail, "no such file", "mount userdata")
}

func TestDecideCOWSize(t *testing.T) {
	half := cowSize{percent: defaultCOWPercent}
	c := decideCOWSize(cowFacts{DataDir: "/data", Free: 1 << 30, Reserve: 128 << 20, Unit: 4096, Size: half, SizeFrom: "the default"})
	wantStatus(t, c, checkPass, "begin would allocate 448 MiB (50%, the default) of the 1024 MiB free", "keeping --reserve 128 MiB", "it fits")

	// 64 MiB free under the default 128 MiB reserve: nothing to take.
	wantStatus(t, decideCOWSize(cowFacts{DataDir: "/data", Free: 64 << 20, Reserve: 128 << 20, Unit: 4096, Size: half, SizeFrom: "the default"}),
		checkFail, "begin would allocate 0 MiB", "less than the 16 MiB")

	// A fixed size that does not fit.
	wantStatus(t, decideCOWSize(cowFacts{DataDir: "/data", Free: 100 << 20, Reserve: 1 << 20, Unit: 4096, Size: cowSize{bytes: 200 << 20}, SizeFrom: "--size"}),
		checkFail, "does not fit", "at most 99 MiB")

	// f2fs: whole sections, rounded down.
	wantStatus(t, decideCOWSize(cowFacts{DataDir: "/data", Free: 100 << 20, Reserve: 0, Unit: 2 << 20, Size: cowSize{bytes: 33 << 20}, SizeFrom: "--size"}),
		checkPass, "allocate 32 MiB")
}

func TestDecideMetadata(t *testing.T) {
	fresh := bootstate.NewFreshRecord()
	wantStatus(t, decideMetadata(storeFacts{}), checkFail, "cpinit.metadata= is not set")
	wantStatus(t, decideMetadata(storeFacts{Configured: true, ResolveErr: errors.New("LABEL=meta: not found")}), checkFail, "does not resolve")
	wantStatus(t, decideMetadata(storeFacts{Configured: true, Path: "/dev/vdd", OpenErr: os.ErrPermission}), checkFail, "cannot be opened for reading and writing")
	wantStatus(t, decideMetadata(storeFacts{Configured: true, Path: "/dev/vdd", Size: 1 << 20}), checkFail, "has 1 MiB, the store needs 8 MiB")
	wantStatus(t, decideMetadata(storeFacts{Configured: true, Path: "/dev/vdd", Size: 16 << 20, LoadErr: fmt.Errorf("x: %w", bootstate.ErrNoRecord)}), checkPass, "blank")
	wantStatus(t, decideMetadata(storeFacts{Configured: true, Path: "/dev/vdd", Size: 16 << 20, Record: &fresh}), checkPass, "holds a cpinit store, state fresh")
	wantStatus(t, decideMetadata(storeFacts{Configured: true, Path: "/dev/vdd", Size: 16 << 20, LoadErr: &bootstate.ForeignDataError{Offset: 1080, Data: []byte{0x53, 0xef}}, Signature: `an ext2/3/4 filesystem labelled "userdata"`}),
		checkFail, "not blank and not a cpinit store: wrong device?", "ext2/3/4", "dd if=/dev/zero of=/dev/vdd")
	wantStatus(t, decideMetadata(storeFacts{Configured: true, Path: "/dev/vdd", Size: 16 << 20, LoadErr: &bootstate.ForeignDataError{Offset: 4096, Data: []byte{1, 2}}}),
		checkFail, "wrong device?", "offset 4096: 01 02")
	wantStatus(t, decideMetadata(storeFacts{Configured: true, Path: "/dev/vdd", Size: 16 << 20, LoadErr: fmt.Errorf("x: %w", bootstate.ErrStoreCorrupt)}),
		checkFail, "damaged cpinit store", "keep-current")
}

func TestDecideOthers(t *testing.T) {
	wantStatus(t, decideParams("the kernel parameters in /proc/cmdline", nil, nil), checkPass)
	wantStatus(t, decideParams("p", nil, []string{"unknown cpinit.foo"}), checkWarn, "cpinit.foo")
	wantStatus(t, decideParams("p", errors.New("kernel parameter cpinit.userdata= is missing"), nil), checkFail, "missing")

	wantStatus(t, decideDevices([]devFact{{Role: "userdata", Spec: "LABEL=userdata", Path: "/dev/vdc", Sectors: 1 << 19}}), checkPass, "userdata LABEL=userdata = /dev/vdc (256 MiB)")
	wantStatus(t, decideDevices([]devFact{{Role: "misc", Spec: "/dev/nope", Err: errors.New("not found")}}), checkFail, "misc /dev/nope: not found")

	tries := 3
	ok := true
	v := &BootView{Where: "android misc /dev/vde", Next: "_a", Slots: []BootSlot{{Name: "_a", Bootable: true, Successful: &ok}, {Name: "_b", Bootable: true, Tries: &tries}}}
	wantStatus(t, decideBootloader(bootFacts{Scheme: "android-misc", View: v}), checkPass, "next boot _a; _a bootable, successful; _b bootable, 3 tries")
	wantStatus(t, decideBootloader(bootFacts{Scheme: "android-misc", View: &BootView{Where: "android misc /dev/vde", Error: "bad magic"}}), checkFail, "cannot be read: bad magic")
	wantStatus(t, decideBootloader(bootFacts{Scheme: "none"}), checkSkip, "native counter")

	wantStatus(t, decideSlot("_a", true), checkPass, "running slot _a", "for slot _b")
	wantStatus(t, decideSlot("", true), checkFail, "names no slot")
	wantStatus(t, decideSlot("", false), checkWarn, "names no slot")

	fresh := bootstate.NewFreshRecord()
	wantStatus(t, decideCheckpoint(&fresh, ""), checkPass, "no checkpoint")
	armed := fresh
	armed.State = bootstate.StateCheckpointing
	wantStatus(t, decideCheckpoint(&armed, "a checkpoint already exists"), checkWarn, "begin would refuse: a checkpoint already exists")
	wantStatus(t, decideCheckpoint(nil, ""), checkSkip)
}

// TestCheckReport: OK is the conjunction of the checks; the text output
// has one line per check, the fix under a failure, and the verdict; the
// JSON round-trips.
func TestCheckReport(t *testing.T) {
	r := &CheckReport{}
	r.add(pass("params", "the kernel parameters in /proc/cmdline parse"))
	r.add(skip("bootloader", "none configured"))
	if !r.OK {
		t.Fatal("PASS and SKIP: not OK")
	}
	r.add(fail("device-mapper", "the kernel lacks dm-snapshot", "build it"))
	r.add(warn("checkpoint", "begin would refuse", ""))
	if r.OK || r.failed() != 1 || r.Checks[2].OK || !r.Checks[3].OK {
		t.Fatalf("report %+v", r)
	}
	var out bytes.Buffer
	printCheck(&out, r)
	want := `PASS  params         the kernel parameters in /proc/cmdline parse
SKIP  bootloader     none configured
FAIL  device-mapper  the kernel lacks dm-snapshot
                     fix: build it
WARN  checkpoint     begin would refuse
FAILED: 1 of 4 checks
`
	if out.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", out.String(), want)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back CheckReport
	if err := json.Unmarshal(b, &back); err != nil || back.OK || len(back.Checks) != 4 || back.Checks[2].Fix != "build it" {
		t.Errorf("JSON %s: %+v %v", b, back, err)
	}
}

// TestDocsCheck keeps docs/cli.md's `cpinit check` examples true: the JSON
// decodes into CheckReport with no unknown field, each ok agrees with its
// status and the report's with its checks, and its text form ends as the
// doc says; the text example is what printCheck prints for its lines.
func TestDocsCheck(t *testing.T) {
	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	js := fencedBlocks(t, "../../docs/cli.md", "check-json")
	texts := fencedBlocks(t, "../../docs/cli.md", "check")
	if len(js) != 1 || len(texts) != 1 {
		t.Fatalf("docs/cli.md: %d check-json and %d check blocks, want 1 each", len(js), len(texts))
	}
	dec := json.NewDecoder(strings.NewReader(js[0]))
	dec.DisallowUnknownFields()
	var r CheckReport
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("check-json example: %v", err)
	}
	var again CheckReport
	for _, c := range r.Checks {
		if c.OK != (c.Status != checkFail) {
			t.Errorf("%s: ok %v with status %s", c.Name, c.OK, c.Status)
		}
		again.add(c)
	}
	if again.OK != r.OK {
		t.Errorf("report ok %v, its checks say %v", r.OK, again.OK)
	}
	var out bytes.Buffer
	printCheck(&out, &r)
	last := out.String()[strings.LastIndex(strings.TrimSuffix(out.String(), "\n"), "\n")+1:]
	if !strings.Contains(string(doc), "ends with `"+strings.TrimSpace(last)+"`") {
		t.Errorf("docs/cli.md does not say the text form ends with %q", strings.TrimSpace(last))
	}

	// The text example: its check lines, printed again.
	line := regexp.MustCompile(`^(PASS|WARN|SKIP|FAIL)  (\S+) +(.*)$`)
	var tr CheckReport
	lines := strings.Split(strings.TrimSuffix(texts[0], "\n"), "\n")
	for i, l := range lines {
		if m := line.FindStringSubmatch(l); m != nil {
			c := CheckResult{Name: m[2], Status: m[1], Detail: m[3]}
			if i+1 < len(lines) {
				if _, fix, ok := strings.Cut(lines[i+1], "fix: "); ok && !line.MatchString(lines[i+1]) {
					c.Fix = fix
				}
			}
			tr.add(c)
		}
	}
	out.Reset()
	printCheck(&out, &tr)
	if out.String() != texts[0] {
		t.Errorf("check example is not printCheck's output:\n%s\nprintCheck:\n%s", texts[0], out.String())
	}
}
