package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// The status tests here run `cpinit status` on host systems (hostSystem:
// loop devices over files holding the real on-disk formats) and read its
// JSON as a consumer would, as a map, so that what they check is what a
// script sees.

// statusOf runs status --json with args and returns the decoded object,
// checked against docs/status.schema.json, and the human output.
func statusOf(t *testing.T, args []string) (map[string]any, string) {
	t.Helper()
	var js, human bytes.Buffer
	if err := runCLI(append(args, "--json"), &js); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	var v map[string]any
	if err := json.Unmarshal(js.Bytes(), &v); err != nil {
		t.Fatalf("status --json: %v\n%s", err, js.String())
	}
	root := loadStatusSchema(t)
	if err := validate(root, root, v, "status"); err != nil {
		t.Errorf("status --json does not validate: %v\n%s", err, js.String())
	}
	if err := runCLI(args, &human); err != nil {
		t.Fatalf("status: %v", err)
	}
	return v, human.String()
}

// TestStatusTriesLeftZero: a trial on its last try shows tries_left 0, not
// nothing (it used to be omitempty): with the native counter cpinit's own
// count, with the android counter the bootloader's for the update's slot;
// the human output says it too.
func TestStatusTriesLeftZero(t *testing.T) {
	t.Run("native", func(t *testing.T) {
		s := newHostSystem(t, false)
		if err := runCLI(s.args("begin", "_a", false, "--size", "16M", "--reserve", "1M", "--tries", "1"), io.Discard); err != nil {
			t.Fatal(err)
		}
		v, _ := statusOf(t, s.args("status", "_a", false))
		if n, ok := v["tries_left"]; !ok || n != 1.0 {
			t.Errorf("armed with --tries 1: tries_left %v (present %v), want 1", n, ok)
		}
		// The update's first boot, as PID 1 records it.
		s.apply(bootstate.Step{Event: bootstate.EventBootAttempt}, bootstate.Step{Event: bootstate.EventActivate})
		v, human := statusOf(t, s.args("status", "_b", false))
		if n, ok := v["tries_left"]; !ok || n != 0.0 {
			t.Errorf("on the last try: tries_left %v (present %v), want 0", n, ok)
		}
		if !strings.Contains(human, "(native counter, 1 trial boots, 0 tries left)") {
			t.Errorf("status says\n%s\nwant 0 tries left", human)
		}
	})
	t.Run("android", func(t *testing.T) {
		s := newHostSystem(t, true)
		if err := s.begin(true); err != nil {
			t.Fatal(err)
		}
		v, human := statusOf(t, s.args("status", "_a", true))
		bc := readMisc(t, s.misc)
		if n := v["tries_left"]; n != float64(bc.Slots[1].TriesRemaining) || n == 0.0 {
			t.Errorf("armed: tries_left %v, misc says slot b has %d", n, bc.Slots[1].TriesRemaining)
		}
		if !strings.Contains(human, "tries left in the bootloader") {
			t.Errorf("status says\n%s\nwant the bootloader's tries left", human)
		}
		// The bootloader counted the last try down, as U-Boot's
		// ab_select_slot does before booting it.
		bc.Slots[1].TriesRemaining = 0
		writeMisc(t, s.misc, bc)
		s.apply(bootstate.Step{Event: bootstate.EventBootAttempt}, bootstate.Step{Event: bootstate.EventActivate})
		v, human = statusOf(t, s.args("status", "_b", true))
		if n, ok := v["tries_left"]; !ok || n != 0.0 {
			t.Errorf("on the last try: tries_left %v (present %v), want 0", n, ok)
		}
		if !strings.Contains(human, "0 tries left in the bootloader") {
			t.Errorf("status says\n%s\nwant 0 tries left in the bootloader", human)
		}
		// Not configured for misc here: the bootloader's count is unknown.
		if v, _ := statusOf(t, s.args("status", "_b", false)); v["tries_left"] != nil {
			t.Errorf("without misc: tries_left %v, want absent", v["tries_left"])
		}
	})
}

func readMisc(t *testing.T, path string) *bootstate.BootControl {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bc, err := bootstate.ReadBootControl(f, path)
	if err != nil {
		t.Fatal(err)
	}
	return bc
}

func writeMisc(t *testing.T, path string, bc *bootstate.BootControl) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := bootstate.WriteBootControl(f, path, bc); err != nil {
		t.Fatal(err)
	}
}

// TestStatusBootViewEveryScheme: for each bootloader scheme, its state in
// its real on-disk format (a misc image, a U-Boot environment made by
// mkenvimage, a grubenv made by grub-editenv and systemd-boot entries on a
// boot partition), after begin: status shows both slots as the
// bootloader sees them, with what the scheme records (successful, tries,
// priority), in JSON and in words, and the update's tries as tries_left.
func TestStatusBootViewEveryScheme(t *testing.T) {
	testutil.RequireRoot(t)
	type slotWant struct {
		bootable   bool
		successful any // nil: absent
		tries      any
		priority   any
	}
	for _, c := range []struct {
		scheme string
		setup  func(t *testing.T, s *hostSystem) string // returns the bootloader parameters
		next   string
		a, b   slotWant
	}{
		{
			scheme: schemeAndroidMisc,
			setup:  func(t *testing.T, s *hostSystem) string { return "cpinit.misc=" + s.misc },
			// begin's SetActive (libboot_control's SetActiveBootSlot): b
			// on trial, top priority, 6 tries; a as NewBootControl made it.
			next: "b",
			a:    slotWant{true, true, nil, 7.0},
			b:    slotWant{true, false, 6.0, 15.0},
		},
		{
			scheme: schemeUBootRAUC,
			setup: func(t *testing.T, s *hostSystem) string {
				return "cpinit.bootloader=uboot-rauc cpinit.ubootenv=" + mkenv(t, s.dir, "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n") + ":0x0:0x4000"
			},
			next: "b",
			a:    slotWant{true, nil, 3.0, nil},
			b:    slotWant{true, nil, 3.0, nil},
		},
		{
			scheme: schemeUBootMender,
			setup: func(t *testing.T, s *hostSystem) string {
				return "cpinit.bootloader=uboot-mender cpinit.ubootenv=" + mkenv(t, s.dir, menderEnv) + ":0x0:0x4000"
			},
			// b on trial with bootlimit 1; a is the fallback.
			next: "b",
			a:    slotWant{true, false, nil, nil},
			b:    slotWant{true, false, 1.0, nil},
		},
		{
			scheme: schemeUBootCount,
			setup: func(t *testing.T, s *hostSystem) string {
				return "cpinit.bootloader=uboot-bootcount cpinit.ubootenv=" + mkenv(t, s.dir, bootcountEnv) + ":0x0:0x4000"
			},
			next: "b",
			a:    slotWant{true, false, nil, nil},
			b:    slotWant{true, false, 3.0, nil},
		},
		{
			scheme: schemeGrubRAUC,
			setup: func(t *testing.T, s *hostSystem) string {
				editenv := testutil.LookPath(t, "grub-editenv")
				tree := filepath.Join(s.dir, "boot")
				genv := filepath.Join(tree, "grub", "grubenv")
				if err := os.MkdirAll(filepath.Dir(genv), 0o755); err != nil {
					t.Fatal(err)
				}
				for _, args := range [][]string{{genv, "create"}, {genv, "set", "ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=1", "B_TRY=0"}} {
					sh(t, editenv, args...)
				}
				return "cpinit.bootloader=grub-rauc cpinit.bootpartfs=ext4 cpinit.bootpart=" + bootPart(t, tree)
			},
			next: "b",
			a:    slotWant{true, nil, 1.0, nil},
			b:    slotWant{true, nil, 1.0, nil},
		},
		{
			scheme: schemeSystemdBoot,
			setup: func(t *testing.T, s *hostSystem) string {
				tree := filepath.Join(s.dir, "esp")
				writeTree(t, tree, map[string]string{
					"a/vmlinuz": "kernel a", "b/vmlinuz": "kernel b",
					"loader/entries/cpinit-1-a.conf": "title Slot a\nlinux /a/vmlinuz\noptions cpinit.slot=a\n",
					"loader/entries/cpinit-0-b.conf": "title Slot b\nlinux /b/vmlinuz\noptions cpinit.slot=b\n",
				})
				old := efiVarsDir
				efiVarsDir = filepath.Join(t.TempDir(), "no-efi", "efivars") // not booted through UEFI
				t.Cleanup(func() { efiVarsDir = old })
				return "cpinit.bootloader=systemd-boot cpinit.bootpartfs=ext4 cpinit.bootpart=" + bootPart(t, tree)
			},
			// b renamed to the top rank with a fresh counter; a blessed.
			next: "b",
			a:    slotWant{true, true, nil, nil},
			b:    slotWant{true, false, 3.0, nil},
		},
	} {
		t.Run(c.scheme, func(t *testing.T) {
			s := newHostSystem(t, c.scheme == schemeAndroidMisc)
			params := c.setup(t, s)
			args := func(cmd, slot string, extra ...string) []string {
				a := []string{cmd, "--metadata", s.store, "--userdata", s.loop, "--data", s.mnt, "--cmdline", "cpinit.slot=" + slot + " " + params}
				return append(a, extra...)
			}
			if err := runCLI(args("begin", "_a", "--size", "16M", "--reserve", "1M"), io.Discard); err != nil {
				t.Fatal(err)
			}
			v, human := statusOf(t, args("status", "_a"))
			js, _ := json.MarshalIndent(v, "", "  ")
			boot, _ := v["boot"].(map[string]any)
			if boot == nil || boot["scheme"] != c.scheme || boot["next"] != c.next || boot["error"] != nil {
				t.Fatalf("boot: want scheme %s, next %s:\n%s", c.scheme, c.next, js)
			}
			slots, _ := boot["slots"].([]any)
			if len(slots) != 2 {
				t.Fatalf("boot.slots: want both slots:\n%s", js)
			}
			for i, want := range []slotWant{c.a, c.b} {
				sl := slots[i].(map[string]any)
				name := string(rune('a' + i))
				got := slotWant{sl["bootable"] == true, sl["successful"], sl["tries"], sl["priority"]}
				if sl["name"] != name || got != want {
					t.Errorf("slot %s: %v, want %+v", name, sl, want)
				}
				if !strings.Contains(human, "  slot "+name+":") {
					t.Errorf("status says\n%s\nwith no line for slot %s", human, name)
				}
			}
			if v["tries_left"] != c.b.tries {
				t.Errorf("tries_left %v, want the bootloader's tries of slot b, %v", v["tries_left"], c.b.tries)
			}
			if c.scheme == schemeAndroidMisc && !strings.Contains(human, "priority 15") {
				t.Errorf("status says\n%s\nwith no priority", human)
			}
		})
	}
}

const (
	menderEnv    = "altbootcmd=run mender_altbootcmd; run bootcmd\nbootlimit=1\nbootcount=0\nupgrade_available=0\nmender_boot_part=2\nmender_boot_part_hex=2\nbootcmd=run mender_setup; run mender_try_to_recover; boot\n"
	bootcountEnv = "bootpart=0:2\nupgrade_available=0\nbootcount=0\nbootlimit=3\naltbootcmd=if test ${bootpart} = 0:2; then setenv bootpart 0:3; else setenv bootpart 0:2; fi; setenv upgrade_available 0; saveenv; run bootcmd\nustate=0\n"
)

// mkenv writes a single-copy U-Boot environment of vars with the real
// mkenvimage and returns its file.
func mkenv(t *testing.T, dir, vars string) string {
	t.Helper()
	txt := filepath.Join(dir, "vars.txt")
	if err := os.WriteFile(txt, []byte(vars), 0o644); err != nil {
		t.Fatal(err)
	}
	env := filepath.Join(dir, "env.bin")
	sh(t, testutil.LookPath(t, "mkenvimage"), "-s", "0x4000", "-o", env, txt)
	return env
}

// bootPart makes an ext4 boot partition holding tree on a loop device (the
// host kernel has no vfat).
func bootPart(t *testing.T, tree string) string {
	t.Helper()
	dev := loopDevice(t, "boot", 16<<20)
	if out, err := exec.Command(testutil.LookPath(t, "mkfs.ext4"), "-q", "-F", "-d", tree, dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return dev
}

// TestStatusStoreDegraded: with one copy of the metadata store bad (a
// flipped byte, zeroed, or an older record left by a write cut short) and
// the other good, status says which copy it used and what is wrong with
// the other, in JSON (store_copies, store_degraded) and with a warning; the
// next write of the record (here a rollback of the armed checkpoint)
// repairs it, as the warning says. A healthy and a blank store are not
// degraded.
func TestStatusStoreDegraded(t *testing.T) {
	for _, c := range []struct {
		name      string
		damage    func(t *testing.T, store string, old []byte)
		state     string
		gen       bool // the damaged copy still has a generation
		wantHuman string
	}{
		{"flipped byte", func(t *testing.T, store string, _ []byte) { flipStoreByte(t, store, bootstate.CopyStride+100) }, copyInvalid, false, "copy B is invalid ("},
		{"zeroed", func(t *testing.T, store string, _ []byte) {
			writeStore(t, store, bootstate.CopyStride, make([]byte, 4096))
		}, copyBlank, false, "copy B is blank"},
		{"older record", func(t *testing.T, store string, old []byte) { writeStore(t, store, bootstate.CopyStride, old) }, copyValid, true, "copy B holds an older record"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newHostSystem(t, false)
			v, human := statusOf(t, s.args("status", "_a", false))
			if v["store_degraded"] != false || strings.Contains(human, "degraded:") {
				t.Errorf("blank store: store_degraded %v\n%s", v["store_degraded"], human)
			}
			if cs, _ := v["store_copies"].([]any); len(cs) != 2 || cs[0].(map[string]any)["state"] != copyBlank || cs[1].(map[string]any)["state"] != copyBlank {
				t.Errorf("blank store: store_copies %v", v["store_copies"])
			}
			if err := s.begin(false); err != nil {
				t.Fatal(err)
			}
			// Copy A's bytes as an older record, then the same record
			// saved again, one generation up.
			old := readStore(t, s.store, 0, 4096)
			s.apply()
			v, human = statusOf(t, s.args("status", "_a", false))
			if v["store_degraded"] != false || strings.Contains(human, "degraded:") {
				t.Errorf("healthy store: store_degraded %v\n%s", v["store_degraded"], human)
			}
			gen := s.record().Generation

			c.damage(t, s.store, old)
			v, human = statusOf(t, s.args("status", "_a", false))
			js, _ := json.MarshalIndent(v, "", "  ")
			if v["store_degraded"] != true || v["state"] != "checkpointing" || v["store"] != nil {
				t.Errorf("want checkpointing, store_degraded true, no store:\n%s", js)
			}
			cs, _ := v["store_copies"].([]any)
			if len(cs) != 2 {
				t.Fatalf("store_copies:\n%s", js)
			}
			a, b := cs[0].(map[string]any), cs[1].(map[string]any)
			if a["copy"] != "A" || a["state"] != copyValid || a["in_use"] != true || a["generation"] != float64(gen) {
				t.Errorf("copy A: %v, want valid, in use, generation %d", a, gen)
			}
			if b["copy"] != "B" || b["state"] != c.state || b["in_use"] != false || (b["generation"] != nil) != c.gen || (b["error"] != nil) != (c.state == copyInvalid) {
				t.Errorf("copy B: %v, want %s", b, c.state)
			}
			for _, want := range []string{"metadata store:    degraded: only one copy of the metadata store holds the record: " + c.wantHuman, "using copy A", "rewrites both copies"} {
				if !strings.Contains(human, want) {
					t.Errorf("status says\n%s\nwant %q", human, want)
				}
			}

			if err := runCLI(s.args("rollback", "_a", false), io.Discard); err != nil {
				t.Fatal(err)
			}
			v, human = statusOf(t, s.args("status", "_a", false))
			if v["store_degraded"] != false || strings.Contains(human, "degraded:") {
				t.Errorf("after a write: store_degraded %v\n%s", v["store_degraded"], human)
			}
		})
	}
}

func readStore(t *testing.T, store string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(store)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeStore(t *testing.T, store string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(store, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func flipStoreByte(t *testing.T, store string, off int64) {
	t.Helper()
	b := readStore(t, store, off, 1)
	b[0] ^= 0x40
	writeStore(t, store, off, b)
}
