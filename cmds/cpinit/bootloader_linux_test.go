package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// The bootloader parameters: each scheme with the place its state lives,
// and the combinations that would make cpinit guess refused.
func TestParseParamsBootloader(t *testing.T) {
	base := "cpinit.userdata=/dev/vdc "
	p, warn, err := ParseParams(base + "cpinit.bootloader=grub-rauc cpinit.bootpart=PARTLABEL=esp cpinit.bootpartfs=ext4 cpinit.grubenv=/EFI/BOOT/grubenv cpinit.slotnames=a=A,b=B")
	if err != nil || len(warn) != 0 {
		t.Fatalf("grub-rauc: %v %q", err, warn)
	}
	if p.scheme() != schemeGrubRAUC || p.BootPart == nil || *p.BootPart != (devspec.Spec{Kind: devspec.PartLabel, Value: "esp"}) ||
		p.BootPartFS != "ext4" || p.GrubEnv != "/EFI/BOOT/grubenv" || p.SlotNames != "a=A,b=B" {
		t.Fatalf("grub-rauc: %+v", p)
	}
	if p, _, err := ParseParams(base + "cpinit.misc=/dev/vde"); err != nil || p.scheme() != schemeAndroidMisc {
		t.Fatalf("misc alone: scheme %q, %v", p.scheme(), err)
	}
	if p, _, err := ParseParams(base); err != nil || p.scheme() != schemeNone {
		t.Fatalf("nothing: scheme %q, %v", p.scheme(), err)
	}
	if p, _, err := ParseParams(base + "cpinit.bootloader=uboot-mender cpinit.ubootenv=/dev/mmcblk0:0x400000:0x4000,/dev/mmcblk0:0x800000:0x4000"); err != nil || p.scheme() != schemeUBootMender {
		t.Fatalf("uboot-mender: scheme %q, %v", p.scheme(), err)
	}
	for _, c := range []struct{ cmdline, want string }{
		{"cpinit.bootloader=lilo", "unknown bootloader scheme"},
		{"cpinit.bootloader=grub-rauc", "needs cpinit.bootpart="},
		{"cpinit.bootloader=systemd-boot", "needs cpinit.bootpart="},
		{"cpinit.bootloader=android-misc", "needs cpinit.misc="},
		{"cpinit.bootloader=uboot-rauc cpinit.misc=/dev/vde", "name two bootloaders"},
		{"cpinit.ubootenv=/etc/fw_env.config", "cpinit.ubootenv"},
		{"cpinit.grubenv=grub/grubenv", "absolute path"},
		{"cpinit.slotnames=A,B", "cpinit.slotnames"},
	} {
		if _, _, err := ParseParams(base + c.cmdline); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.cmdline, err, c.want)
		}
	}
}

// A U-Boot environment made by the real mkenvimage, found by the
// parameters, changed through the interface the commands use, and read
// back by the real fw_printenv.
func TestNewBootloaderUBoot(t *testing.T) {
	mkenvimage := testutil.LookPath(t, "mkenvimage")
	fwPrintenv := testutil.LookPath(t, "fw_printenv")
	dir := t.TempDir()
	vars := filepath.Join(dir, "vars.txt")
	if err := os.WriteFile(vars, []byte("BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nbootcmd=run rauc_boot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := filepath.Join(dir, "env.bin")
	if out, err := exec.Command(mkenvimage, "-s", "0x4000", "-o", env, vars).CombinedOutput(); err != nil {
		t.Fatalf("mkenvimage: %v\n%s", err, out)
	}
	p, _, err := ParseParams("cpinit.userdata=/dev/vdc cpinit.bootloader=uboot-rauc cpinit.ubootenv=" + env + ":0x0:0x4000")
	if err != nil {
		t.Fatal(err)
	}
	bl, err := newBootloader(p, "_a", devspec.Resolve, false)
	if err != nil {
		t.Fatal(err)
	}
	bl.(*bootstate.UBootBootloader).LockPath = filepath.Join(dir, "lock")
	if counterOf(bl) != bootstate.CounterBootloader {
		t.Fatalf("counter %v", counterOf(bl))
	}
	s, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.Scheme() != schemeUBootRAUC || s.Next() != "a" {
		t.Fatalf("loaded %s, next %q; want uboot-rauc, a", s.Scheme(), s.Next())
	}
	// What begin does.
	if err := s.SetUnbootable("_b"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetActive("_b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "fw_env.config")
	if err := os.WriteFile(cfg, []byte(env+" 0x0 0x4000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(fwPrintenv, "-c", cfg, "BOOT_ORDER", "BOOT_B_LEFT").CombinedOutput()
	if err != nil {
		t.Fatalf("fw_printenv: %v\n%s", err, out)
	}
	if got := string(out); !strings.Contains(got, "BOOT_ORDER=B A\n") || !strings.Contains(got, "BOOT_B_LEFT=3\n") {
		t.Fatalf("fw_printenv after begin's change:\n%s", got)
	}
	// The location from fw_env.config when the parameter is absent.
	defer func(old string) { fwEnvConfig = old }(fwEnvConfig)
	fwEnvConfig = cfg
	p.UBootEnv = ""
	if bl, err = newBootloader(p, "_b", devspec.Resolve, true); err != nil {
		t.Fatal(err)
	}
	if s, err := bl.Load(); err != nil || s.Next() != "b" {
		t.Fatalf("through fw_env.config: %v, %v", s, err)
	}
	fwEnvConfig = filepath.Join(dir, "none")
	if _, err := newBootloader(p, "_b", devspec.Resolve, true); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "cpinit.ubootenv=") {
		t.Fatalf("no parameter and no fw_env.config: %v", err)
	}
}

// A grubenv on a boot partition (ext4 here: the host kernel has no vfat)
// that cpinit mounts for each Load and Save, cross-checked with the real
// grub-editenv before and after.
func TestNewBootloaderGrubOnBootPart(t *testing.T) {
	testutil.RequireRoot(t)
	editenv := testutil.LookPath(t, "grub-editenv")
	mkfs := testutil.LookPath(t, "mkfs.ext4")
	debugfs := testutil.LookPath(t, "debugfs")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "grub"), 0o755); err != nil {
		t.Fatal(err)
	}
	genv := filepath.Join(tree, "grub", "grubenv")
	for _, args := range [][]string{{genv, "create"}, {genv, "set", "ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=1", "B_TRY=0"}} {
		if out, err := exec.Command(editenv, args...).CombinedOutput(); err != nil {
			t.Fatalf("grub-editenv %q: %v\n%s", args, err, out)
		}
	}
	dev := loopDevice(t, "boot", 16<<20)
	if out, err := exec.Command(mkfs, "-q", "-F", "-d", tree, dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	p, _, err := ParseParams("cpinit.userdata=/dev/vdc cpinit.bootloader=grub-rauc cpinit.bootpartfs=ext4 cpinit.bootpart=" + dev)
	if err != nil {
		t.Fatal(err)
	}
	bl, err := newBootloader(p, "_a", devspec.Resolve, false)
	if err != nil {
		t.Fatal(err)
	}
	if d := bl.Describe(); !strings.Contains(d, "/grub/grubenv") || !strings.Contains(d, dev) {
		t.Errorf("Describe: %q, want the file and the partition", d)
	}
	s, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.Scheme() != schemeGrubRAUC || s.Next() != "a" {
		t.Fatalf("loaded %s, next %q", s.Scheme(), s.Next())
	}
	if err := s.SetActive("_b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatal(err)
	}
	// Unmounted after the Save: the partition is free, and what it holds
	// is what grub-editenv reads.
	back := filepath.Join(dir, "grubenv.back")
	if out, err := exec.Command(debugfs, "-R", "dump /grub/grubenv "+back, dev).CombinedOutput(); err != nil {
		t.Fatalf("debugfs dump: %v\n%s", err, out)
	}
	out, err := exec.Command(editenv, back, "list").CombinedOutput()
	if err != nil {
		t.Fatalf("grub-editenv list: %v\n%s", err, out)
	}
	if got := string(out); !strings.Contains(got, "ORDER=B A\n") || !strings.Contains(got, "B_OK=1\n") || !strings.Contains(got, "B_TRY=0\n") {
		t.Fatalf("grub-editenv list after SetActive(b):\n%s", got)
	}
	if s, err := bl.Load(); err != nil || s.Next() != "b" {
		t.Fatalf("reloaded: %v, %v", s, err)
	}
	// A partition that is not there: a clear error naming it.
	p.BootPartFS = "vfat-nonexistent"
	bl, _ = newBootloader(p, "_a", devspec.Resolve, false)
	if _, err := bl.Load(); err == nil || !strings.Contains(err.Error(), dev) || !strings.Contains(err.Error(), "cpinit.bootpartfs=") {
		t.Fatalf("wrong filesystem type: %v", err)
	}
}

// systemd-boot's entries on an ESP (ext4 here: the host kernel has no
// vfat) that cpinit mounts for each Load and Save; begin's change renames
// the update's entry to the top rank with a fresh counter.
func TestNewBootloaderSystemdBootOnBootPart(t *testing.T) {
	testutil.RequireRoot(t)
	mkfs := testutil.LookPath(t, "mkfs.ext4")
	debugfs := testutil.LookPath(t, "debugfs")
	tree := filepath.Join(t.TempDir(), "esp")
	writeTree(t, tree, map[string]string{
		"a/vmlinuz": "kernel a", "b/vmlinuz": "kernel b",
		"loader/entries/cpinit-1-a.conf":   "title Slot a\nlinux /a/vmlinuz\noptions cpinit.slot=a\n",
		"loader/entries/cpinit-0-b+0.conf": "title Slot b\nlinux /b/vmlinuz\noptions cpinit.slot=b\n",
	})
	dev := loopDevice(t, "esp", 16<<20)
	if out, err := exec.Command(mkfs, "-q", "-F", "-d", tree, dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	defer func(old string) { efiVarsDir = old }(efiVarsDir)
	efiVarsDir = filepath.Join(t.TempDir(), "no-efi", "efivars") // not booted through UEFI
	p, _, err := ParseParams("cpinit.userdata=/dev/vdc cpinit.bootloader=systemd-boot cpinit.bootpartfs=ext4 cpinit.bootpart=" + dev)
	if err != nil {
		t.Fatal(err)
	}
	bl, err := newBootloader(p, "_a", devspec.Resolve, false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.Scheme() != schemeSystemdBoot || s.Next() != "a" {
		t.Fatalf("loaded %s, next %q", s.Scheme(), s.Next())
	}
	if err := s.SetUnbootable("_b"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetActive("_b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(debugfs, "-R", "ls -l /loader/entries", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs ls: %v\n%s", err, out)
	}
	if got := string(out); !strings.Contains(got, "cpinit-2-b+3.conf") || !strings.Contains(got, "cpinit-1-a.conf") || strings.Contains(got, "cpinit-0-b") {
		t.Fatalf("entries after SetActive(b):\n%s", got)
	}
	if s, err := bl.Load(); err != nil || s.Next() != "b" {
		t.Fatalf("reloaded: %v, %v", s, err)
	}
	p.SlotNames = "a=A,b=B"
	if _, err := newBootloader(p, "_a", devspec.Resolve, false); err == nil || !strings.Contains(err.Error(), "cpinit.slotnames=") {
		t.Fatalf("slot names for systemd-boot: %v", err)
	}
}

// ubootEnvFile writes a single-copy RAUC environment with the real
// mkenvimage and returns its file and an fw_env.config for fw_printenv.
func ubootEnvFile(t *testing.T, dir string) (env, cfg string) {
	t.Helper()
	mkenvimage := testutil.LookPath(t, "mkenvimage")
	vars := filepath.Join(dir, "vars.txt")
	if err := os.WriteFile(vars, []byte("BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nbootcmd=run rauc_boot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env = filepath.Join(dir, "env.bin")
	if out, err := exec.Command(mkenvimage, "-s", "0x4000", "-o", env, vars).CombinedOutput(); err != nil {
		t.Fatalf("mkenvimage: %v\n%s", err, out)
	}
	cfg = filepath.Join(dir, "fw_env.config")
	if err := os.WriteFile(cfg, []byte(env+" 0x0 0x4000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return env, cfg
}

// fwPrintenv is the real fw_printenv's view of the environment.
func fwPrintenv(t *testing.T, cfg string) string {
	t.Helper()
	out, err := exec.Command(testutil.LookPath(t, "fw_printenv"), "-c", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("fw_printenv: %v\n%s", err, out)
	}
	return string(out)
}

// The commands on a device whose bootloader is U-Boot under RAUC's scheme
// (the environment in a file, as libubootenv allows): a begin that fails
// puts the variables back, a begin makes the update's slot first in
// BOOT_ORDER, status shows the bootloader's view, a rollback before the
// first boot makes the old slot first again and the update's unbootable,
// and a command not configured for that bootloader refuses.
func TestLifecycleUBootRAUC(t *testing.T) {
	t.Cleanup(func() { beginStepHook = nil })
	s := newHostSystem(t, false)
	env, cfg := ubootEnvFile(t, s.dir)
	bootParams := "cpinit.bootloader=uboot-rauc cpinit.ubootenv=" + env + ":0x0:0x4000"
	args := func(cmd, slot, params string, extra ...string) []string {
		a := []string{cmd, "--metadata", s.store, "--userdata", s.loop, "--data", s.mnt, "--cmdline", "cpinit.slot=" + slot + " " + params}
		return append(a, extra...)
	}
	before := fwPrintenv(t, cfg)

	beginStepHook = func(step string) error {
		if step == "armed" {
			return errors.New("injected failure at armed")
		}
		return nil
	}
	err := runCLI(args("begin", "_a", bootParams, "--size", "16M", "--reserve", "1M"), io.Discard)
	beginStepHook = nil
	if err == nil || !strings.Contains(err.Error(), "restored u-boot env") {
		t.Fatalf("begin failing at armed: %v; want it to say it restored the U-Boot environment", err)
	}
	if got := fwPrintenv(t, cfg); got != before {
		t.Fatalf("after the failed begin fw_printenv says\n%s\nbefore\n%s", got, before)
	}

	if err := runCLI(args("begin", "_a", bootParams, "--size", "16M", "--reserve", "1M"), io.Discard); err != nil {
		t.Fatal(err)
	}
	if r := s.record(); r.State != bootstate.StateCheckpointing || r.Counter != bootstate.CounterBootloader || r.TargetSlot != "_b" {
		t.Fatalf("record after begin: %+v", r)
	}
	if got := fwPrintenv(t, cfg); !strings.Contains(got, "BOOT_ORDER=B A\n") || !strings.Contains(got, "BOOT_B_LEFT=3\n") {
		t.Fatalf("fw_printenv after begin:\n%s", got)
	}

	var js, human bytes.Buffer
	if err := runCLI(args("status", "_a", bootParams, "--json"), &js); err != nil {
		t.Fatal(err)
	}
	var st Status
	if err := json.Unmarshal(js.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	root := loadStatusSchema(t)
	var v map[string]any
	if err := json.Unmarshal(js.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	if err := validate(root, root, v, "status"); err != nil {
		t.Errorf("%s: %v", js.String(), err)
	}
	if st.Bootloader != bootloaderTold || st.Counter != "bootloader" || st.Boot == nil || st.Boot.Scheme != schemeUBootRAUC || st.Boot.Next != "b" ||
		len(st.Boot.Slots) != 2 || st.Boot.Slots[1].Successful != nil || st.Boot.Slots[1].Tries == nil || *st.Boot.Slots[1].Tries != 3 {
		t.Fatalf("status --json after begin:\n%s", js.String())
	}
	if err := runCLI(args("status", "_a", bootParams), &human); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"bootloader:        told", "bootloader state:  u-boot env", "next boot: b", "slot b:"} {
		if !strings.Contains(human.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, human.String())
		}
	}

	// Not configured for the bootloader that counts: refuse, change nothing.
	now := fwPrintenv(t, cfg)
	js.Reset()
	if err := runCLI(args("status", "_a", "", "--json"), &js); err != nil {
		t.Fatal(err)
	}
	var st2 Status
	if err := json.Unmarshal(js.Bytes(), &st2); err != nil || st2.Bootloader != bootloaderMissing || st2.Boot != nil {
		t.Errorf("status without the bootloader: %v\n%s", err, js.String())
	}
	err = runCLI(args("rollback", "_a", ""), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "refusing to roll back") || !strings.Contains(err.Error(), "cpinit.bootloader=") {
		t.Fatalf("rollback without the bootloader configured: %v", err)
	}
	if r := s.record(); r.State != bootstate.StateCheckpointing || fwPrintenv(t, cfg) != now {
		t.Fatalf("a refused rollback changed something: %+v", r)
	}

	if err := runCLI(args("rollback", "_a", bootParams), io.Discard); err != nil {
		t.Fatal(err)
	}
	got := fwPrintenv(t, cfg)
	// RAUC's mark-bad (uboot.c) takes the slot out of BOOT_ORDER too.
	if !strings.Contains(got, "BOOT_ORDER=A\n") || !strings.Contains(got, "BOOT_B_LEFT=0\n") {
		t.Fatalf("fw_printenv after the rollback:\n%s", got)
	}
	// Cancelled; the next boot deletes the COW file.
	if r := s.record(); r.State != bootstate.StateCommitted || r.Reason != bootstate.ReasonCancelled {
		t.Fatalf("record after rolling back an armed checkpoint: %+v", r)
	}
}

// writeTree writes files (path under dir: contents) into dir, making the
// directories they need: the tree of a boot partition for mkfs -d.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
