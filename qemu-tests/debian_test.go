package qemutests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// debianSmokeScript is what the smoke unit runs: one line per fact, each
// prefixed for the host, so that systemd's own status lines on the same
// console cannot split a fact. set -e: a tool that fails fails the unit
// (FailureAction=poweroff), and "debian-guest: done" never comes. Each
// output is assigned first: the status of v=$(cmd) is cmd's, which set -e
// checks, where echo "$(cmd)" has echo's.
//
// Debian's swupdate 2022.12 prints "SWUpdate v" and no number for
// --version (its build leaves the version string empty), so the package's
// version comes from dpkg's database too.
const debianSmokeScript = `#!/bin/sh
set -eu
echo "debian-guest: up"
v=$(rauc --version); echo "debian-guest: rauc=$v"
v=$(swupdate --version); echo "debian-guest: swupdate=$v"
v=$(mender --version); echo "debian-guest: mender=$v"
v=$(dpkg-query -W -f='${Package}:${Version} ' rauc swupdate mender-client); echo "debian-guest: packages=$v"
v=$(findmnt --kernel -n -o SOURCE,FSTYPE,OPTIONS /); echo "debian-guest: root=$v"
v=$(findmnt --kernel -n -o SOURCE,FSTYPE,OPTIONS /data); echo "debian-guest: data=$v"
v=$(lsmod | awk '$1 == "loop" || $1 == "squashfs" { print $1 }' | sort | tr '\n' ' '); echo "debian-guest: modules=$v"
echo "written by the Debian slot" >/data/debian-guest.txt
sync /data/debian-guest.txt
echo "debian-guest: status"
cpinit status --json
echo "debian-guest: done"
`

const debianSmokeUnit = `[Unit]
Description=Debian guest smoke test
After=basic.target cpinit-commit.service cpinit-watch.service
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/libexec/cpinit-test/debian-smoke
`

// TestDebianSlotBoots: slot a, the current slot, is a real Debian bookworm
// system (debootstrap; MakeDebianSlotImage). cpinit mounts it read-only
// with userdata at /data and switches to its systemd, which reaches the
// test target and runs the packaged rauc, swupdate and mender, the cpinit
// CLI and findmnt, writes a file to /data, then powers off; systemd's
// shutdown leaves userdata clean (e2fsck -fn) with the file in it.
func TestDebianSlotBoots(t *testing.T) {
	NeedDebianSlots(t, false)
	t.Parallel()
	EnsureDebianRoot(t)
	d := NewTestDevice(t, 21)
	if d.Kernel.Arch != "amd64" {
		t.Skipf("the Debian slot is amd64 only (%s=%s)", EnvArch, os.Getenv(EnvArch))
	}
	start := time.Now()
	img, err := MakeDebianSlotImage(d.Dir, "system_a", func(root string) error {
		p := filepath.Join(root, "usr/libexec/cpinit-test/debian-smoke")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(debianSmokeScript), 0o755); err != nil {
			return err
		}
		return EnableDebianTestUnit(root, "cpinit-debian-smoke.service", debianSmokeUnit)
	})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(img); err == nil {
		t.Logf("Debian slot image built in %v (%d MiB)", time.Since(start).Round(100*time.Millisecond), fi.Size()>>20)
	}
	d.Systems[0] = img

	start = time.Now()
	vm, slot := d.Boot(t, "")
	if slot != 0 {
		t.Fatalf("bootloader picked slot %d, want 0", slot)
	}
	vm.ExpectT(t, `cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/vdc action=mount-plain`, SlotBootTimeout)
	vm.ExpectT(t, `systemd 252[^\r\n]* running in system mode`, SlotBootTimeout)
	vm.ExpectT(t, `debian-guest: up`, SlotBootTimeout)
	line := func(key string) string {
		t.Helper()
		// To the line's end: the console arrives in pieces.
		return vm.ExpectT(t, `debian-guest: `+key+`=([^\r\n]*)\r?\n`, SlotBootTimeout)[1]
	}
	rauc, swupdate, mender, pkgs := line("rauc"), line("swupdate"), line("mender"), line("packages")
	root, data, modules := line("root"), line("data"), line("modules")
	m := vm.ExpectT(t, `(?s)debian-guest: status\r?\n(\{.*?\n\})`, SlotBootTimeout)
	vm.ExpectT(t, `debian-guest: done`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to power off: %v", time.Since(start).Round(100*time.Millisecond))
	t.Logf("rauc: %s; swupdate: %s; mender: %s; packages: %s", rauc, swupdate, mender, pkgs)
	t.Logf("/: %s; /data: %s; modules: %s", root, data, modules)

	// bookworm's versions: rauc 1.8-2, swupdate 2022.12+dfsg-4+deb12u*,
	// mender-client 3.4.0+ds1-5+b1.
	if rauc != "rauc 1.8" {
		t.Errorf("rauc --version = %q, want rauc 1.8", rauc)
	}
	if swupdate != "SWUpdate v" {
		t.Errorf("swupdate --version = %q, want Debian's bookworm build (\"SWUpdate v\": no number)", swupdate)
	}
	if !regexp.MustCompile(`^3\.4\.\d+\S*\s+runtime: go`).MatchString(mender) {
		t.Errorf("mender --version = %q, want 3.4.x", mender)
	}
	for _, re := range []string{`\brauc:1\.8-`, `\bswupdate:2022\.12\+`, `\bmender-client:3\.4\.`} {
		if !regexp.MustCompile(re).MatchString(pkgs) {
			t.Errorf("dpkg-query in the guest: %q, want a match of %s", pkgs, re)
		}
	}
	// cpinit mounts the slot read-only and userdata (ext4, by label) at
	// /data read-write.
	if f := strings.Fields(root); len(f) != 3 || f[0] != "/dev/vda" || f[1] != "ext4" || !strings.HasPrefix(f[2], "ro,") {
		t.Errorf("findmnt / in the guest: %q, want /dev/vda ext4 ro", root)
	}
	if f := strings.Fields(data); len(f) != 3 || f[0] != "/dev/vdc" || f[1] != "ext4" || !strings.HasPrefix(f[2], "rw,") {
		t.Errorf("findmnt /data in the guest: %q, want /dev/vdc ext4 rw", data)
	}
	if modules != "loop squashfs " {
		t.Errorf("modules loaded from modules-load.d: %q, want loop and squashfs", modules)
	}
	var st struct {
		State      string `json:"state"`
		BootedSlot string `json:"booted_slot"`
	}
	if err := json.Unmarshal([]byte(m[1]), &st); err != nil {
		t.Fatalf("cpinit status --json %q: %v", m[1], err)
	}
	if st.State != "fresh" || st.BootedSlot != "_a" {
		t.Errorf("cpinit status in the guest: %+v, want fresh on slot _a", st)
	}
	if _, ok := UserdataManifestT(t, d)["debian-guest.txt"]; !ok {
		t.Error("userdata after the Debian slot's boot has no debian-guest.txt")
	}
}
