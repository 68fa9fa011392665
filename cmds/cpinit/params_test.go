package main

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/internal/pid1"
)

func TestParseParamsDefaults(t *testing.T) {
	p, warn, err := ParseParams("BOOT_IMAGE=/vmlinuz root=/dev/sda1 cpinit.userdata=/dev/vda quiet")
	if err != nil || len(warn) != 0 {
		t.Fatalf("err %v, warnings %q", err, warn)
	}
	want := DefaultParams()
	want.Userdata = devspec.Spec{Kind: devspec.Path, Value: "/dev/vda"}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v\nwant %+v", p, want)
	}
}

func TestParseParamsAll(t *testing.T) {
	p, warn, err := ParseParams("cpinit.userdata=PARTLABEL=userdata cpinit.root=LABEL=system_a " +
		"cpinit.fstype=f2fs cpinit.rootfstype=ext2 cpinit.mountopts=noatime cpinit.datadir=/var/data " +
		"cpinit.init=/lib/systemd/systemd cpinit.rootwait=3 cpinit.on_fatal=reboot " +
		"cpinit.metadata=PARTLABEL=metadata cpinit.misc=/dev/vde cpinit.abort=1 cpinit.recovery=yes cpinit.slot=_b cpinit.cow_size=2G cpinit.merge=restore")
	if err != nil || len(warn) != 0 {
		t.Fatalf("err %v, warnings %q", err, warn)
	}
	want := Params{
		Userdata:   devspec.Spec{Kind: devspec.PartLabel, Value: "userdata"},
		Root:       &devspec.Spec{Kind: devspec.Label, Value: "system_a"},
		FSType:     "f2fs",
		RootFSType: "ext2",
		MountOpts:  "noatime",
		DataDir:    "/var/data",
		Init:       "/lib/systemd/systemd",
		RootWait:   3 * time.Second,
		OnFatal:    pid1.Reboot,
		Metadata:   &devspec.Spec{Kind: devspec.PartLabel, Value: "metadata"},
		Misc:       &devspec.Spec{Kind: devspec.Path, Value: "/dev/vde"},
		Abort:      true,
		Recovery:   true,

		Merge:      mergeRestore,
		COWSize:    cowSize{bytes: 2 << 30},
		BootPartFS: "vfat",
		GrubEnv:    "/grub/grubenv",
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v\nwant %+v", p, want)
	}
	if p, _, _ := ParseParams("cpinit.userdata=/dev/vda cpinit.rootwait=1500ms"); p.RootWait != 1500*time.Millisecond {
		t.Fatalf("rootwait 1500ms parsed as %v", p.RootWait)
	}
}

func TestParseParamsErrors(t *testing.T) {
	for _, tc := range []struct{ cmdline, wantInErr string }{
		{"quiet", "cpinit.userdata= is missing"},
		{"cpinit.userdata=", "kernel parameter cpinit.userdata=: needs a value"},
		{"cpinit.userdata=vda", `"vda"`},
		{"cpinit.userdata=FOO=bar", `unknown key "FOO"`},
		{"cpinit.userdata=/dev/vda cpinit.rootwait=soon", "cpinit.rootwait=soon"},
		{"cpinit.userdata=/dev/vda cpinit.rootwait=-1s", "cpinit.rootwait=-1s"},
		{"cpinit.userdata=/dev/vda cpinit.on_fatal=explode", "cpinit.on_fatal=explode"},
		{"cpinit.userdata=/dev/vda cpinit.init=sbin/init", "absolute path"},
		{"cpinit.userdata=/dev/vda cpinit.abort=maybe", "cpinit.abort=maybe"},
		{"cpinit.userdata=/dev/vda cpinit.recovery=please", "cpinit.recovery=please: want 1 or 0"},
		{"cpinit.userdata=/dev/vda cpinit.merge=fast", "cpinit.merge=fast: want kernel or restore"},
		{"cpinit.userdata=/dev/vda cpinit.metadata=meta", `"meta"`},
	} {
		_, _, err := ParseParams(tc.cmdline)
		if err == nil || !strings.Contains(err.Error(), tc.wantInErr) {
			t.Errorf("ParseParams(%q) error = %v, want it to contain %q", tc.cmdline, err, tc.wantInErr)
		}
	}
}

// A bad value elsewhere must not lose the on_fatal choice: PID 1 uses it to
// report that very error.
func TestParseParamsKeepsOnFatalOnError(t *testing.T) {
	p, _, err := ParseParams("cpinit.on_fatal=reboot cpinit.userdata=bogus")
	if err == nil || p.OnFatal != pid1.Reboot {
		t.Fatalf("err %v, OnFatal %q", err, p.OnFatal)
	}
}

func TestParseParamsWarnsOnUnknownKey(t *testing.T) {
	_, warn, err := ParseParams("cpinit.userdata=/dev/vda cpinit.usrdata=/dev/vdb")
	if err != nil {
		t.Fatal(err)
	}
	if len(warn) != 1 || !strings.Contains(warn[0], "cpinit.usrdata=/dev/vdb") {
		t.Fatalf("warnings %q", warn)
	}
}

// The command line is split as the kernel splits it (internal/cmdline):
// quotes group and are dropped, the last occurrence of a key is the one
// that counts, and cpinit.* words after "--" are init's arguments, ignored
// with a warning.
func TestParseParamsKernelSplitting(t *testing.T) {
	p, warn, err := ParseParams(`console=ttyS0 cpinit.userdata="LABEL=my data" cpinit.mountopts="noatime" quiet` + "\n")
	if err != nil || len(warn) != 0 {
		t.Fatalf("err %v, warnings %q", err, warn)
	}
	if p.Userdata != (devspec.Spec{Kind: devspec.Label, Value: "my data"}) || p.MountOpts != "noatime" {
		t.Fatalf("userdata %+v, mountopts %q", p.Userdata, p.MountOpts)
	}

	// An earlier bad value is overridden, not an error: the kernel and
	// init take the last one too.
	p, _, err = ParseParams("cpinit.userdata=bogus cpinit.rootwait=soon cpinit.userdata=/dev/vda cpinit.rootwait=3")
	if err != nil || p.Userdata.Value != "/dev/vda" || p.RootWait != 3*time.Second {
		t.Fatalf("err %v, userdata %+v, rootwait %v", err, p.Userdata, p.RootWait)
	}
	// And a later bad value is the one that counts.
	if _, _, err := ParseParams("cpinit.userdata=/dev/vda cpinit.rootwait=3 cpinit.rootwait=soon"); err == nil || !strings.Contains(err.Error(), "cpinit.rootwait=soon") {
		t.Fatalf("last bad value: err %v", err)
	}

	p, warn, err = ParseParams("cpinit.userdata=/dev/vda -- cpinit.root=/dev/vdb cpinit.userdata=/dev/vdc single")
	if err != nil || p.Root != nil || p.Userdata.Value != "/dev/vda" {
		t.Fatalf("after --: err %v, root %v, userdata %+v", err, p.Root, p.Userdata)
	}
	if len(warn) != 2 || !strings.Contains(warn[0], `cpinit.root=/dev/vdb after "--"`) {
		t.Fatalf("after --: warnings %q", warn)
	}
	// Only after "--": cpinit.userdata= is missing.
	if _, _, err := ParseParams("quiet -- cpinit.userdata=/dev/vda"); err == nil || !strings.Contains(err.Error(), "cpinit.userdata= is missing") {
		t.Fatalf("only after --: err %v", err)
	}
}

func TestBootStepIgnoredLastOnly(t *testing.T) {
	w := bootStepIgnored(`cpinit.init=/a cpinit.init="/b" -- cpinit.root=/dev/vdb`)
	if len(w) != 1 || !strings.Contains(w[0], "cpinit.init=/b under boot-step") {
		t.Fatalf("warnings %q", w)
	}
}
