package qemutests

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestCopyFileSparse: CopyFile gives the same bytes, keeps the holes, and
// handles data at the start, in the middle, at the end and a trailing hole.
func TestCopyFileSparse(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name   string
		size   int64
		blocks map[int64]string // offset → data
	}{
		{"empty", 0, nil},
		{"all hole", 64 << 20, nil},
		{"data at both ends", 64 << 20, map[int64]string{0: "start", 64<<20 - 5: "end!!"}},
		{"middle and trailing hole", 64 << 20, map[int64]string{1 << 20: "one", 9<<20 + 17: "nine", 20 << 20: "twenty"}},
	} {
		src := filepath.Join(dir, c.name+".src")
		f, err := os.Create(src)
		if err != nil {
			t.Fatal(err)
		}
		for off, s := range c.blocks {
			if _, err := f.WriteAt([]byte(s), off); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Truncate(c.size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		dst := filepath.Join(dir, c.name+".dst")
		CopyFile(t, src, dst)
		a, _ := os.ReadFile(src)
		b, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("%s: the copy differs (%d vs %d bytes)", c.name, len(b), len(a))
		}
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 1<<20 {
			t.Errorf("%s: the copy uses %d bytes on disk for %d of data: holes were written", c.name, used, len(c.blocks)*8)
		}
	}
}

// TestStartArch: the harness picks QEMU, CPU and console by the guest's
// architecture, and refuses what it cannot boot (an architecture with no
// machine, firmware on arm64) before it starts anything.
func TestStartArch(t *testing.T) {
	if got := QEMUBinary("arm64"); os.Getenv("CPINIT_QEMU_ARM64") == "" && got != "qemu-system-aarch64" {
		t.Errorf("QEMUBinary(arm64) = %s", got)
	}
	if got := QEMUBinary(""); os.Getenv("CPINIT_QEMU") == "" && got != "qemu-system-x86_64" {
		t.Errorf("QEMUBinary(\"\") = %s", got)
	}
	if ConsoleArgs("") != KernelConsoleArgs || ConsoleArgs("amd64") != KernelConsoleArgs {
		t.Error("amd64's console arguments changed")
	}
	if a := ConsoleArgs("arm64"); !strings.Contains(a, "console=ttyAMA0") || strings.Contains(a, "ttyS0") || strings.Contains(a, "no_timer_check") {
		t.Errorf("arm64 console arguments %q: want ttyAMA0, no x86 parameters", a)
	}
	for _, o := range []Options{{Arch: "riscv64"}, {Arch: "arm64", BIOS: "u-boot.rom"}, {Arch: "arm64", Firmware: "vars.fd"}} {
		if vm, err := Start(o); err == nil {
			vm.Kill()
			t.Errorf("Start(%+v) started QEMU", o)
		}
	}
}
