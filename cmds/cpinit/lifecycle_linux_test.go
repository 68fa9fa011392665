package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// The tests here run the lifecycle commands on the host, up to where
// device-mapper would be needed (the host kernel has none): userdata is ext4
// with 4 KiB blocks in an image on a loop device, mounted; the metadata
// store and misc are files on loop devices too (the commands take block
// devices only). They do not call t.Parallel: they unmount
// filesystems and free space by unlinking, which a parallel test's forked
// child could hold up (see pkg/fiemap's tests).

// hostSystem is one such system.
type hostSystem struct {
	t                      *testing.T
	dir                    string
	loop, mnt, store, misc string // loop devices and userdata's mount point; misc is "" without misc
}

// attach puts a loop device over file (read-only if ro) until the test ends.
func attach(t *testing.T, file string, ro bool) string {
	t.Helper()
	args := []string{"-f", "--show", file}
	if ro {
		args = append([]string{"-r"}, args...)
	}
	dev := strings.TrimSpace(sh(t, "losetup", args...))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	return dev
}

// sparseFile makes a file of size zero bytes.
func sparseFile(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// newHostSystem makes a 64 MiB userdata and a blank store, and with misc a
// misc file holding a fresh bootloader_control for two slots, booted from
// slot _a.
func newHostSystem(t *testing.T, withMisc bool) *hostSystem {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.LookPath(t, "mkfs.ext4")
	testutil.LookPath(t, "losetup")
	testutil.LookPath(t, "mount")
	dir := t.TempDir()
	s := &hostSystem{t: t, dir: dir, mnt: filepath.Join(dir, "data")}
	img := filepath.Join(dir, "userdata.img")
	sparseFile(t, img, 64<<20)
	sh(t, "mkfs.ext4", "-q", "-F", "-b", "4096", img)
	s.loop = attach(t, img, false)
	if err := os.Mkdir(s.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	sh(t, "mount", "-t", "ext4", s.loop, s.mnt)
	t.Cleanup(func() {
		if err := testutil.Unmount(s.mnt); err != nil {
			t.Error(err)
		}
	})
	store := filepath.Join(dir, "metadata.img")
	sparseFile(t, store, bootstate.StoreSize)
	s.store = attach(t, store, false)
	if withMisc {
		s.misc = s.newMisc(false)
	}
	return s
}

// newMisc returns a loop device (read-only if ro) over a new misc image
// holding a fresh bootloader_control.
func (s *hostSystem) newMisc(ro bool) string {
	s.t.Helper()
	bc, err := bootstate.NewBootControl(2, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	f, err := os.CreateTemp(s.dir, "misc*.img")
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(64 << 10); err != nil {
		s.t.Fatal(err)
	}
	if err := bootstate.WriteBootControl(f, f.Name(), bc); err != nil {
		s.t.Fatal(err)
	}
	return attach(s.t, f.Name(), ro)
}

// args is a lifecycle command line for this system, booted from slot;
// misc is passed when s has one and withMisc is set.
func (s *hostSystem) args(cmd, slot string, withMisc bool, extra ...string) []string {
	a := []string{cmd, "--metadata", s.store, "--userdata", s.loop, "--data", s.mnt, "--cmdline", "cpinit.slot=" + slot}
	if withMisc && s.misc != "" {
		a = append(a, "--misc", s.misc)
	}
	return append(a, extra...)
}

// begin runs a begin that fits the 64 MiB userdata.
func (s *hostSystem) begin(withMisc bool) error {
	return runCLI(s.args("begin", "_a", withMisc, "--size", "16M", "--reserve", "1M"), io.Discard)
}

// record loads the record; a blank store is the fresh record.
func (s *hostSystem) record() bootstate.Record {
	s.t.Helper()
	st, f, err := bootstate.OpenStore(s.store)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	r, _, err := st.Load()
	if errors.Is(err, bootstate.ErrNoRecord) {
		return bootstate.NewFreshRecord()
	}
	if err != nil {
		s.t.Fatal(err)
	}
	return *r
}

// apply applies steps to the record and saves it, as PID 1 would.
func (s *hostSystem) apply(steps ...bootstate.Step) {
	s.t.Helper()
	st, f, err := bootstate.OpenStore(s.store)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	r := s.record()
	for _, step := range steps {
		if r, err = bootstate.Apply(r, step); err != nil {
			s.t.Fatal(err)
		}
	}
	if _, err := st.Save(&r); err != nil {
		s.t.Fatal(err)
	}
}

// tree lists userdata's files and directories, lost+found aside.
func (s *hostSystem) tree() []string {
	s.t.Helper()
	var names []string
	err := filepath.WalkDir(s.mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "lost+found" {
			return filepath.SkipDir
		}
		rel, _ := filepath.Rel(s.mnt, p)
		names = append(names, rel)
		return nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return names
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// beginSteps are begin's steps, in order, as beginStepHook sees them.
var beginSteps = []string{"prepare", "allocate", "bind", "extents", "journal", "record", "misc", "armed"}

// TestBeginFailureUndoes fails begin at each of its steps in turn (and for
// real: misc read-only, misc unreadable) and checks that it exits non-zero, says it
// failed and what it undid, and leaves the store fresh with no leftover,
// userdata without the COW file or its directory, and misc byte for byte as
// it was; and that a begin right after succeeds.
func TestBeginFailureUndoes(t *testing.T) {
	t.Cleanup(func() { beginStepHook = nil })

	// A begin that succeeds takes exactly these steps: a new step must be
	// added here, and so gets a failure injected.
	s := newHostSystem(t, true)
	var seen []string
	beginStepHook = func(step string) error { seen = append(seen, step); return nil }
	if err := s.begin(true); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, beginSteps) {
		t.Fatalf("begin took steps %q, the test knows %q", seen, beginSteps)
	}

	type failure struct {
		name, step string
		misc       bool
		setup      func(*hostSystem) // the real failure, if any
		why        string            // in the message
	}
	var cases []failure
	for _, step := range beginSteps {
		cases = append(cases, failure{name: step, step: step, misc: true, why: "injected failure at " + step})
	}
	cases = append(cases,
		failure{name: "armed, native counter", step: "armed", why: "injected failure at armed"},
		failure{name: "misc read-only", misc: true, why: "operation not permitted", setup: func(s *hostSystem) {
			// The write fails: misc stays as it was, and begin's restore
			// sees that rather than fail on it too.
			s.misc = s.newMisc(true)
		}},
		failure{name: "misc unreadable", misc: true, why: "CRC", setup: func(s *hostSystem) {
			// A bad CRC: begin reads misc only after recording the checkpoint.
			f, err := os.OpenFile(s.misc, os.O_RDWR, 0)
			if err != nil {
				s.t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{0xff}, bootstate.BootControlOffset+bootstate.BootControlSize-1); err != nil {
				s.t.Fatal(err)
			}
		}},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newHostSystem(t, c.misc)
			if c.setup != nil {
				c.setup(s)
			}
			tree := s.tree()
			var misc []byte
			if c.misc {
				misc = readFile(t, s.misc)
			}
			reached := false
			beginStepHook = func(step string) error {
				if step == c.step {
					reached = true
					return fmt.Errorf("injected failure at %s", step)
				}
				return nil
			}
			err := s.begin(c.misc)
			beginStepHook = nil
			if c.step != "" && !reached {
				t.Fatalf("begin never reached step %s (err %v)", c.step, err)
			}
			if err == nil || exitStatus(err) != exitError {
				t.Fatalf("begin: %v (exit %d), want exit %d", err, exitStatus(err), exitError)
			}
			msg := err.Error()
			t.Log(msg)
			for _, want := range []string{"begin failed", c.why} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q lacks %q", msg, want)
				}
			}
			if c.step == "prepare" {
				if !strings.Contains(msg, "nothing was changed") {
					t.Errorf("message %q should say that nothing was changed", msg)
				}
			} else if !strings.Contains(msg, "undone: ") || !strings.Contains(msg, "nothing is left") {
				t.Errorf("message %q should say what was undone and that nothing is left", msg)
			}
			if strings.Contains(msg, "left: ") {
				t.Errorf("message %q says something is left", msg)
			}
			// Fresh as before: no leftover path, no slot (only the
			// generation and the reason may differ).
			r, fresh := s.record(), bootstate.NewFreshRecord()
			r.Generation, r.Reason = 0, bootstate.ReasonNone
			if !reflect.DeepEqual(r, fresh) {
				t.Errorf("record after the failed begin: %+v; want a fresh record, as before", r)
			}
			if got := s.tree(); !slices.Equal(got, tree) {
				t.Errorf("userdata holds %q after the failed begin, %q before", got, tree)
			}
			if c.misc && !bytes.Equal(readFile(t, s.misc), misc) {
				t.Error("misc changed")
			}
			if c.setup == nil {
				// Nothing in the way of the next attempt.
				if err := s.begin(c.misc); err != nil {
					t.Fatalf("begin after the failed one: %v", err)
				}
			}
		})
	}
}

// trial makes s a system in the update's trial: begin from slot _a with
// misc (so the checkpoint counts boots in misc, target _b), then, if
// active, the first trial boot's records as PID 1 writes them.
func (s *hostSystem) trial(active bool) bootstate.Record {
	s.t.Helper()
	if err := s.begin(true); err != nil {
		s.t.Fatal(err)
	}
	if active {
		s.apply(bootstate.Step{Event: bootstate.EventBootAttempt}, bootstate.Step{Event: bootstate.EventActivate})
	}
	r := s.record()
	if r.State != bootstate.StateCheckpointing || r.Counter != bootstate.CounterAndroid || r.TargetSlot != "_b" || r.Active != active {
		s.t.Fatalf("setup: record %+v", r)
	}
	return r
}

// TestCommitRollbackRefuseWithoutMisc: a checkpoint that counts boots in
// misc is never committed or rolled back without telling the bootloader.
// Without misc configured, or with a misc that cannot be written, both
// commands exit non-zero, say why, and leave the record and misc unchanged.
func TestCommitRollbackRefuseWithoutMisc(t *testing.T) {
	for _, c := range []struct {
		name     string
		cmd      string
		active   bool
		noMisc   bool // else misc is read-only
		wantText []string
	}{
		{"commit, no misc", "commit", true, true, []string{"refusing to commit", "misc", "--misc", "cpinit.misc=", "nothing recorded"}},
		{"rollback, no misc", "rollback", true, true, []string{"refusing to roll back", "misc", "--misc", "cpinit.misc=", "nothing recorded"}},
		{"rollback armed, no misc", "rollback", false, true, []string{"refusing to roll back", "--misc", "nothing recorded"}},
		{"commit, misc not writable", "commit", true, false, []string{"refusing to commit", "misc", "nothing recorded"}},
		{"rollback, misc not writable", "rollback", true, false, []string{"refusing to roll back", "misc", "nothing recorded"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newHostSystem(t, true)
			before := s.trial(c.active)
			if !c.noMisc {
				// The same block, on a read-only loop device: not even
				// root can open it for writing.
				s.misc = s.newMisc(true)
			}
			misc := readFile(t, s.misc)
			err := runCLI(s.args(c.cmd, "_b", !c.noMisc), io.Discard)
			if err == nil || exitStatus(err) != exitError {
				t.Fatalf("%s: %v (exit %d), want exit %d", c.cmd, err, exitStatus(err), exitError)
			}
			for _, want := range c.wantText {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("message %q lacks %q", err, want)
				}
			}
			if after := s.record(); !reflect.DeepEqual(after, before) {
				t.Errorf("record changed:\nbefore %+v\nafter  %+v", before, after)
			}
			if !bytes.Equal(readFile(t, s.misc), misc) {
				t.Error("misc changed")
			}
		})
	}
}

// TestStatusSaysWhetherBootloaderIsTold: status says, in words and in JSON,
// whether commit and rollback tell the bootloader: through misc (android
// counter), not at all (native counter, no misc), or not from here (android
// counter, but no misc configured for this command).
func TestStatusSaysWhetherBootloaderIsTold(t *testing.T) {
	root := loadStatusSchema(t)
	for _, c := range []struct {
		name           string
		beginMisc      bool
		statusMisc     bool
		json, human    string
		unexpectedText string
	}{
		{"native counter", false, false, "not-told", "bootloader:        not told (no misc; cpinit's native counter counts trial boots)", ""},
		{"android counter", true, true, "misc", "bootloader:        told through misc", "not told"},
		{"android counter, no misc here", true, false, "misc-missing", "bootloader:        counts tries in misc, but no misc is configured here", "not told"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newHostSystem(t, c.beginMisc)
			if err := s.begin(c.beginMisc); err != nil {
				t.Fatal(err)
			}
			var human, js bytes.Buffer
			if err := runCLI(s.args("status", "_a", c.statusMisc), &human); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(human.String(), c.human) {
				t.Errorf("status says\n%s\nwant a line %q", human.String(), c.human)
			}
			if c.unexpectedText != "" && strings.Contains(human.String(), c.unexpectedText) {
				t.Errorf("status says\n%s\nwhich should not contain %q", human.String(), c.unexpectedText)
			}
			if err := runCLI(s.args("status", "_a", c.statusMisc, "--json"), &js); err != nil {
				t.Fatal(err)
			}
			var v map[string]any
			if err := json.Unmarshal(js.Bytes(), &v); err != nil {
				t.Fatal(err)
			}
			if err := validate(root, root, v, "status"); err != nil {
				t.Errorf("%s: %v", js.String(), err)
			}
			if v["bootloader"] != c.json {
				t.Errorf("status --json bootloader = %v, want %q\n%s", v["bootloader"], c.json, js.String())
			}
		})
	}
}

// TestBeginUndoFailureSaysWhatIsLeft: when undoing a failed begin fails too,
// begin says exactly what is left and how to remove it, and what it leaves is
// still recorded (the record never claims less than exists); the remedy it
// names works.
func TestBeginUndoFailureSaysWhatIsLeft(t *testing.T) {
	t.Cleanup(func() { beginStepHook = nil })
	cow := func(s *hostSystem) string { return filepath.Join(s.mnt, DefaultCOWPath) }

	t.Run("store turns read-only", func(t *testing.T) {
		s := newHostSystem(t, true)
		misc := readFile(t, s.misc)
		t.Cleanup(func() { setBlockRO(s.store, false) })
		beginStepHook = func(step string) error {
			if step != "armed" {
				return nil
			}
			// Writes through begin's open descriptor now fail (EPERM).
			if err := setBlockRO(s.store, true); err != nil {
				t.Fatal(err)
			}
			return errors.New("injected failure")
		}
		err := s.begin(true)
		beginStepHook = nil
		if err == nil || exitStatus(err) != exitError {
			t.Fatalf("begin: %v, want exit %d", err, exitError)
		}
		t.Log(err)
		for _, want := range []string{"begin failed", "injected failure", "undone: restored misc " + s.misc, "undoing it failed",
			"left: an armed checkpoint in the metadata store " + s.store + " and its COW file " + cow(s), "`cpinit rollback`"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message lacks %q", want)
			}
		}
		if r := s.record(); r.State != bootstate.StateCheckpointing || r.COWPath != DefaultCOWPath {
			t.Errorf("record: state %s, COW path %q; want the armed checkpoint still recorded", r.State, r.COWPath)
		}
		if _, err := os.Stat(cow(s)); err != nil {
			t.Errorf("the COW file the record names: %v", err)
		}
		if !bytes.Equal(readFile(t, s.misc), misc) {
			t.Error("misc not restored")
		}
		// The remedy.
		if err := setBlockRO(s.store, false); err != nil {
			t.Fatal(err)
		}
		if err := runCLI(s.args("rollback", "_a", true), io.Discard); err != nil {
			t.Fatalf("rollback: %v", err)
		}
		if r := s.record(); r.State != bootstate.StateCommitted || r.Reason != bootstate.ReasonCancelled {
			t.Errorf("after rollback: state %s (%s), want committed (cancelled): the next boot deletes the file", r.State, r.Reason)
		}
	})

	t.Run("COW file cannot be deleted", func(t *testing.T) {
		testutil.LookPath(t, "chattr")
		s := newHostSystem(t, false)
		dir := filepath.Dir(cow(s))
		beginStepHook = func(step string) error {
			if step != "journal" {
				return nil
			}
			// Append-only: nothing in it can be unlinked.
			sh(t, "chattr", "+a", dir)
			return errors.New("injected failure")
		}
		t.Cleanup(func() { exec.Command("chattr", "-a", dir).Run() })
		err := s.begin(false)
		beginStepHook = nil
		if err == nil || exitStatus(err) != exitError {
			t.Fatalf("begin: %v, want exit %d", err, exitError)
		}
		t.Log(err)
		for _, want := range []string{"begin failed", "injected failure", "undoing it failed",
			"left: the COW file " + cow(s) + ", which the metadata store " + s.store + " still names", "the next boot deletes it"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message lacks %q", want)
			}
		}
		if r := s.record(); r.State != bootstate.StateFresh || r.COWPath != DefaultCOWPath {
			t.Errorf("record: state %s, COW path %q; want fresh naming the leftover", r.State, r.COWPath)
		}
		if _, err := os.Stat(cow(s)); err != nil {
			t.Errorf("the COW file the record names: %v", err)
		}
		// The remedy named in the message.
		m := regexp.MustCompile("`(chattr -i [^`]+)`").FindStringSubmatch(err.Error())
		if m == nil {
			t.Fatalf("no chattr command in %q", err)
		}
		sh(t, "chattr", "-a", dir)
		sh(t, "sh", "-c", m[1])
		if _, err := os.Lstat(cow(s)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after %s: %v", m[1], err)
		}
	})
}
