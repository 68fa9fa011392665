package main

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// bootloaderCLI runs `cpinit bootloader` as RAUC's custom backend calls it
// on s, booted from slot; it returns stdout and the error.
func (s *hostSystem) bootloaderCLI(slot string, verb ...string) (string, error) {
	var out bytes.Buffer
	args := s.args("bootloader", slot, true, "--size", "16M", "--reserve", "1M")
	err := runCLI(append(args, verb...), &out)
	return out.String(), err
}

// TestBootloaderRAUCInstall drives `cpinit bootloader` through what RAUC's
// install does with bootloader=custom (RAUC 1.8 src/install.c: the target
// marked bad before it is written, then made primary), on real loop
// devices with Android misc: the checkpoint is armed by set-primary, a
// second install before the reboot keeps it, RAUC's get verbs see the
// state, and requests that would lose data are refused with nothing
// written. The trial's commit and rollback need device-mapper: the QEMU
// test of dist/rauc runs them (qemu-tests/agentvm).
func TestBootloaderRAUCInstall(t *testing.T) {
	s := newHostSystem(t, true)
	want := func(step, verb string, wantOut string, args ...string) {
		t.Helper()
		out, err := s.bootloaderCLI("_a", append([]string{verb}, args...)...)
		if err != nil || out != wantOut {
			t.Fatalf("%s: bootloader %s %v: %q, %v; want %q", step, verb, args, out, err, wantOut)
		}
	}
	misc := func() *bootstate.BootControl {
		t.Helper()
		bc, err := bootstate.ReadBootControl(bytes.NewReader(readFile(t, s.misc)), s.misc)
		if err != nil {
			t.Fatal(err)
		}
		return bc
	}
	want("before", "get-primary", "a\n")
	want("before", "get-current", "a\n")
	want("before", "get-state", "good\n", "b")

	for install := 1; install <= 2; install++ {
		want("install", "set-state", "", "b", "bad")
		want("install", "get-state", "bad\n", "b")
		if r := s.record(); install == 1 && r.State != bootstate.StateFresh {
			t.Fatalf("install %d: marking the target bad armed something: %+v", install, r)
		}
		want("install", "set-primary", "", "b")
		r := s.record()
		if r.State != bootstate.StateCheckpointing || r.Active || r.TargetSlot != "_b" || r.Counter != bootstate.CounterAndroid {
			t.Fatalf("install %d: record %+v, want armed for _b", install, r)
		}
		want("install", "get-primary", "b\n")
		if b := misc().Slots[1]; b.Priority != 15 || b.SuccessfulBoot || b.TriesRemaining == 0 {
			t.Fatalf("install %d: misc slot b %+v, want active on trial", install, b)
		}
	}

	// Refused, nothing written: the fallback marked bad, the update
	// marked good before it booted, an unknown slot.
	before, miscBefore := s.record(), readFile(t, s.misc)
	for _, c := range [][]string{{"set-state", "a", "bad"}, {"set-state", "b", "good"}, {"set-state", "C", "good"}, {"set-primary", "C"}} {
		if _, err := s.bootloaderCLI("_a", c...); err == nil || exitStatus(err) != exitError {
			t.Errorf("bootloader %v: %v (exit %d), want refused (exit 1)", c, err, exitStatus(err))
		}
	}
	// A bad request is a usage error before anything is opened.
	for _, c := range [][]string{{"set-state", "b", "maybe"}, {"frob"}, {}} {
		if _, err := s.bootloaderCLI("_a", c...); exitStatus(err) != exitUsage {
			t.Errorf("bootloader %v: %v (exit %d), want exit 2", c, err, exitStatus(err))
		}
	}
	if after := s.record(); !reflect.DeepEqual(after, before) || !bytes.Equal(readFile(t, s.misc), miscBefore) {
		t.Fatalf("a refused request changed the record or misc:\n%+v\n%+v", before, after)
	}

	// RAUC's mark-good of the running slot at a boot before the reboot:
	// the bootloader only, the checkpoint stays armed.
	want("mark-good", "set-state", "", "a", "good")
	if r := s.record(); r.State != bootstate.StateCheckpointing || r.Active {
		t.Fatalf("mark-good of the old slot changed the checkpoint: %+v", r)
	}
	// The administrator takes the update back before rebooting
	// (`rauc status mark-active booted`): the armed checkpoint is
	// cancelled, the old slot primary again.
	out, err := s.bootloaderCLI("_a", "set-primary", "a")
	if err != nil {
		t.Fatalf("mark-active booted: %q, %v", out, err)
	}
	if r := s.record(); r.State != bootstate.StateCommitted || r.Reason != bootstate.ReasonCancelled {
		t.Fatalf("after mark-active booted: %+v, want cancelled (the next boot deletes the COW file)", r)
	}
	want("cancelled", "get-primary", "a\n")
	if b := misc().Slots[1]; b.TriesRemaining != 0 || b.SuccessfulBoot {
		t.Fatalf("after the cancel, misc slot b %+v: want it never picked", b)
	}
}

// TestBeginNoActivate: begin --no-activate arms the checkpoint for the
// bootloader's counter and leaves misc byte for byte as it was (the agent
// makes the slot active itself); a cancel then undoes it.
func TestBeginNoActivate(t *testing.T) {
	s := newHostSystem(t, true)
	misc := readFile(t, s.misc)
	var out bytes.Buffer
	if err := runCLI(s.args("begin", "_a", true, "--size", "16M", "--reserve", "1M", "--no-activate"), &out); err != nil {
		t.Fatalf("begin --no-activate: %v", err)
	}
	if !bytes.Contains(out.Bytes(), []byte("until the update agent makes it active")) {
		t.Errorf("begin --no-activate said %q", out.String())
	}
	r := s.record()
	if r.State != bootstate.StateCheckpointing || r.Active || r.TargetSlot != "_b" || r.Counter != bootstate.CounterAndroid {
		t.Fatalf("record %+v, want armed for _b with the android counter", r)
	}
	if !bytes.Equal(readFile(t, s.misc), misc) {
		t.Fatal("begin --no-activate changed misc")
	}
}
