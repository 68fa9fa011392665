package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
	"golang.org/x/sys/unix"
)

// cliSandbox is what a command line test may point cpinit at: a kernel
// command line file (cmdlinePath) that does not exist, a store and a
// userdata that are regular files with contents, and a data directory that
// does not exist. A command that gets past its usage checks fails on each
// of them (exit 1, not 2); unchanged says whether any was read into being,
// written or created.
type cliSandbox struct {
	dir, cmdline, store, userdata, data string
	before                              map[string]string
}

func newCLISandbox(t *testing.T) *cliSandbox {
	t.Helper()
	dir := t.TempDir()
	s := &cliSandbox{
		dir:      dir,
		cmdline:  filepath.Join(dir, "cmdline"),
		store:    filepath.Join(dir, "store"),
		userdata: filepath.Join(dir, "userdata"),
		data:     filepath.Join(dir, "data"),
	}
	for _, f := range []string{s.store, s.userdata} {
		if err := os.WriteFile(f, []byte("contents of "+filepath.Base(f)), 0o600); err != nil {
			t.Fatal(err)
		}
		// An mtime in the past: a write in the same clock tick as the
		// file's creation would not show in it.
		old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
		if err := os.Chtimes(f, old, old); err != nil {
			t.Fatal(err)
		}
	}
	old := cmdlinePath
	cmdlinePath = s.cmdline
	t.Cleanup(func() { cmdlinePath = old })
	s.before = s.snapshot(t)
	return s
}

// snapshot is every file in the sandbox: name, mode, size, mtime, contents.
func (s *cliSandbox) snapshot(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(s.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		v := fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += " " + string(b)
		}
		m[p] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (s *cliSandbox) unchanged(t *testing.T, what string) {
	t.Helper()
	now := s.snapshot(t)
	for p, v := range now {
		if b, ok := s.before[p]; !ok {
			t.Errorf("%s created %s", what, p)
		} else if b != v {
			t.Errorf("%s changed %s: %q, was %q", what, p, v, b)
		}
	}
	for p := range s.before {
		if _, ok := now[p]; !ok {
			t.Errorf("%s removed %s", what, p)
		}
	}
}

// common are the flags that point a lifecycle command at the sandbox.
func (s *cliSandbox) common() []string {
	return []string{"--metadata", s.store, "--userdata", s.userdata, "--data", s.data}
}

// badUsage is a bad command line of each command, with what the message
// must say. Every command has at least one (TestUsageTouchesNothing).
func badUsage(s *cliSandbox) []struct {
	args []string
	want string
} {
	c := s.common()
	// The command, the sandbox's flags, then args (flags before a verb).
	with := func(cmd string, args ...string) []string {
		return append(append([]string{cmd}, c...), args...)
	}
	return []struct {
		args []string
		want string
	}{
		{nil, "no command"},
		{[]string{"nosuch"}, `unknown command "nosuch"`},
		{[]string{"params", "quiet", "splash"}, "2 arguments"},
		{[]string{"params", "--bogus"}, "-bogus"},
		{[]string{"extents"}, "want one FILE"},
		{[]string{"extents", "--json"}, "want one FILE"},
		{[]string{"extents", s.store, s.userdata}, "want one FILE"},
		{[]string{"extents", "--bogus", s.store}, "-bogus"},
		{with("status", "--bogus"), "-bogus"},
		{with("status", "--json", "--bogus"), "-bogus"},
		{with("status", "--window", "-1s"), "--window -1s"},
		{with("status", "now"), `unexpected argument "now"`},
		{with("status", "--metadata", "FOO=bar"), `unknown key "FOO"`},
		{with("begin", "--tries", "9"), "want 1 to 7 trial boots"},
		{with("begin", "--tries", "0"), "want 1 to 7 trial boots"},
		{with("begin", "--tries", "256"), "want 1 to 7 trial boots"},
		{with("begin", "--tries", "x"), "want 1 to 7 trial boots"},
		{with("begin", "--size", "0"), "--size"},
		{with("begin", "--size", "101%"), "--size"},
		{with("begin", "--reserve", "lots"), "--reserve"},
		{with("begin", "--slot", "_z"), "want _a or _b"},
		{with("begin", "--lock-wait", "-1s"), "want a duration of 0 or more"},
		{with("begin", "--misc", "misc"), `device specification "misc"`},
		{with("begin", "extra"), `unexpected argument "extra"`},
		{with("check", "now"), `unexpected argument "now"`},
		{with("check", "--size", "0"), "--size"},
		{with("check", "--reserve", "lots"), "--reserve"},
		{with("check", "--misc", "misc"), `device specification "misc"`},
		{with("check", "--json", "--bogus"), "-bogus"},
		{with("commit", "now"), `unexpected argument "now"`},
		{with("commit", "--if-trial=maybe"), "-if-trial"},
		{with("rollback", "--bogus"), "-bogus"},
		{with("rollback", "now"), `unexpected argument "now"`},
		{with("watch", "--policy", "panic"), `--policy "panic"`},
		{with("watch", "--warn", "95"), "want 0 < warn ≤ act < 100"},
		{with("watch", "--act", "100"), "want 0 < warn ≤ act < 100"},
		{with("watch", "--interval", "0"), "want a positive interval"},
		{with("watch", "--lead", "soon"), "-lead"},
		{with("merge", "--method", "copy"), "want restore or kernel"},
		{with("merge", "now"), `unexpected argument "now"`},
		{[]string{"recover"}, "no verb"},
		{[]string{"recover", "frob"}, `unknown verb "frob"`},
		{[]string{"recover", "--yes", "keep-current"}, "keep-current comes first"},
		{[]string{"recover", "keep-current", "--metadata", s.store, "now"}, `unexpected argument "now"`},
		{[]string{"recover", "keep-current", "--metadata", s.store, "--cow-path", "cow"}, "want a clean absolute path"},
		{[]string{"recover", "keep-current", "--metadata", s.store, "--lock-wait", "-1s"}, "want a duration of 0 or more"},
		{[]string{"recover", "keep-current", "--metadata", "NOPE"}, "--metadata"},
		{with("bootloader"), "no verb"},
		{with("bootloader", "frob"), `unknown verb "frob"`},
		{with("bootloader", "set-primary"), "set-primary takes 1 arguments, got 0"},
		{with("bootloader", "set-state", "A", "maybe"), "the state is good or bad"},
		{with("bootloader", "--tries", "9", "set-primary", "B"), "want 1 to 7 trial boots"},
		{with("bootloader", "--size", "0", "set-primary", "B"), "--size"},
		{[]string{"boot-step"}, "--root DIR is required"},
		{[]string{"boot-step", "--root"}, "needs an argument"},
		{[]string{"boot-step", "--root", s.data, "extra"}, `unexpected argument "extra"`},
		{[]string{"help", "nosuch"}, `no command "nosuch"`},
		{[]string{"help", "begin", "commit"}, "at most one command"},
		{[]string{"help", "--bogus"}, "-bogus"},
		{[]string{"version", "now"}, `unexpected argument "now"`},
		{[]string{"version", "--short"}, "-short"},
	}
}

// TestUsageTouchesNothing: every command's bad command lines exit 2, with
// a message that says what is wrong and the command's usage line, before
// anything is read, opened, written or created (the sandbox's command line
// file does not exist: reading it would fail with exit 1).
func TestUsageTouchesNothing(t *testing.T) {
	s := newCLISandbox(t)
	covered := map[string]bool{}
	for _, c := range badUsage(s) {
		name := strings.Join(c.args, " ")
		var out bytes.Buffer
		err := runCLI(c.args, &out)
		if got := exitStatus(err); got != exitUsage {
			t.Errorf("cpinit %s: exit %d (%v), want %d", name, got, err, exitUsage)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("cpinit %s: %v; want it to say %q", name, err, c.want)
		}
		if len(c.args) > 0 {
			if cmd := lookupCommand(c.args[0]); cmd != nil {
				covered[cmd.name] = true
				if !strings.Contains(err.Error(), "usage: cpinit "+cmd.synopsis) {
					t.Errorf("cpinit %s: %v; want the usage line", name, err)
				}
			}
		}
		s.unchanged(t, "cpinit "+name)
	}
	for _, c := range commands {
		if !covered[c.name] {
			t.Errorf("no bad usage of %s is tested", c.name)
		}
	}
}

// TestCommandHelp: every command's -h, --help and `help COMMAND` print its
// usage line, what it does, each of its flags with its meaning and its
// exit statuses on stdout, exit 0 and touch nothing, even after other flags
// and with devices named.
func TestCommandHelp(t *testing.T) {
	s := newCLISandbox(t)
	for _, c := range commands {
		fs := commandFlags(t, &c)
		var want []string
		fs.VisitAll(func(f *flag.Flag) {
			_, u := flag.UnquoteUsage(f)
			want = append(want, "  --"+f.Name, u)
		})
		want = append(want, "usage: cpinit "+c.synopsis+"\n", c.about, "exit status: ")
		var first string
		for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {c.name, "-help"}, {"help", c.name}} {
			name := strings.Join(args, " ")
			if c.name == "recover" && args[0] == "recover" {
				// The verb comes first; recover --help works too.
				args = slices.Insert(slices.Clone(args), 1, "keep-current")
			}
			var out bytes.Buffer
			if err := runCLI(args, &out); err != nil {
				t.Errorf("cpinit %s: %v (exit %d)", name, err, exitStatus(err))
				continue
			}
			for _, w := range want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("cpinit %s: no %q in\n%s", name, w, out.String())
				}
			}
			if first == "" {
				first = out.String()
			} else if out.String() != first {
				t.Errorf("cpinit %s prints another help than cpinit %s --help:\n%s", name, c.name, out.String())
			}
		}
		s.unchanged(t, c.name+" --help")
	}
	// Flags before --help are parsed, then the help is printed: nothing
	// is opened.
	for _, args := range [][]string{
		append(append([]string{"begin"}, s.common()...), "--tries", "3", "--help"),
		{"recover", "--help"},
		{"recover", "keep-current", "--metadata", s.store, "--yes", "-h"},
		append(append([]string{"bootloader"}, s.common()...), "-h", "set-primary", "B"),
		{"boot-step", "--root", s.data, "--help"},
		{"status", "--json", "--help"},
	} {
		var out bytes.Buffer
		if err := runCLI(args, &out); err != nil || !strings.HasPrefix(out.String(), "usage: cpinit ") {
			t.Errorf("cpinit %s: %v, output\n%s", strings.Join(args, " "), err, out.String())
		}
		s.unchanged(t, strings.Join(args, " "))
	}
	// The overview.
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}} {
		var out bytes.Buffer
		if err := runCLI(args, &out); err != nil || out.String() != usage {
			t.Errorf("cpinit %s: %v, output\n%s", strings.Join(args, " "), err, out.String())
		}
	}
}

// commandFlags is c's flag set, as its -h returns it.
func commandFlags(t *testing.T, c *command) *flag.FlagSet {
	t.Helper()
	args := []string{"-h"}
	if c.name == "recover" {
		args = []string{"keep-current", "-h"}
	}
	var h *helpRequest
	if err := c.run(args, io.Discard); !errors.As(err, &h) {
		t.Fatalf("%s -h: %v, want a help request", c.name, err)
	}
	return h.fs
}

// TestVersion: cpinit --version and cpinit version print the version.
func TestVersion(t *testing.T) {
	want := "cpinit " + cpinitVersion() + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		var out bytes.Buffer
		if err := runCLI(args, &out); err != nil || out.String() != want {
			t.Errorf("cpinit %s: %v, %q; want %q", strings.Join(args, " "), err, out.String(), want)
		}
	}
}

// TestJSONRequested: the arguments that ask a --json command for JSON.
func TestJSONRequested(t *testing.T) {
	for args, want := range map[string]bool{
		"":                      false,
		"--json":                true,
		"-json":                 true,
		"--json=true":           true,
		"--json=1":              true,
		"--json=false":          false,
		"--json --json=false":   false,
		"--metadata /x --json":  true,
		"-- --json":             false,
		"--jsonl":               false,
		"json":                  false,
		"--bogus --json --more": true,
	} {
		if got := jsonRequested(strings.Fields(args)); got != want {
			t.Errorf("jsonRequested(%q) = %v, want %v", args, got, want)
		}
	}
}

// runJSON runs a command that fails with --json and returns the one JSON
// error object it printed on stdout (nothing else may be there).
func runJSON(t *testing.T, args ...string) (jsonErrorBody, error) {
	t.Helper()
	var out bytes.Buffer
	err := runCLI(args, &out)
	if err == nil {
		t.Fatalf("cpinit %s succeeded:\n%s", strings.Join(args, " "), out.String())
	}
	dec := json.NewDecoder(&out)
	dec.DisallowUnknownFields()
	var je jsonError
	if err := dec.Decode(&je); err != nil {
		t.Fatalf("cpinit %s: stdout is not a JSON error object: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	if dec.More() {
		t.Errorf("cpinit %s: more than one JSON value on stdout", strings.Join(args, " "))
	}
	if je.Error.Message != err.Error() || je.Error.Exit != exitStatus(err) || je.Error.Code != errorCode(err) {
		t.Errorf("cpinit %s: JSON %+v for error %v (exit %d)", strings.Join(args, " "), je.Error, err, exitStatus(err))
	}
	return je.Error, err
}

// TestJSONErrors: with --json, a failure is one JSON object on stdout with
// a stable code, the message and the exit status; each code a host can
// produce is produced here by a real command or the real function that
// fails that way.
func TestJSONErrors(t *testing.T) {
	s := newCLISandbox(t)
	missing := filepath.Join(s.dir, "missing")
	got := map[string]bool{}
	for _, c := range []struct {
		args []string
		code string
		exit int
	}{
		{[]string{"status", "--json", "--bogus"}, codeUsage, exitUsage},
		{[]string{"status", "--bogus", "--json"}, codeUsage, exitUsage},
		{[]string{"extents", "--json"}, codeUsage, exitUsage},
		{[]string{"status", "--json", "--cmdline", "cpinit.userdata=/dev/null"}, codeNotConfigured, exitError},
		{[]string{"status", "--json", "--cmdline", "cpinit.userdata=/dev/null", "--metadata", missing}, codeNotFound, exitError},
		{[]string{"extents", "--json", missing}, codeNotFound, exitError},
		{[]string{"status", "--json", "--cmdline", "cpinit.userdata=/dev/null", "--metadata", s.store}, codeFailed, exitError},
		{[]string{"status", "--json=true", "--window", "0"}, codeNotFound, exitError}, // the sandbox's /proc/cmdline is missing
	} {
		je, err := runJSON(t, c.args...)
		if je.Code != c.code || je.Exit != c.exit {
			t.Errorf("cpinit %s: code %q exit %d (%v), want %q exit %d", strings.Join(c.args, " "), je.Code, je.Exit, err, c.code, c.exit)
		}
		got[je.Code] = true
	}
	// No --json, or --json=false: no JSON, whatever the command.
	for _, args := range [][]string{{"status", "--bogus"}, {"status", "--json=false", "--bogus"}, {"begin", "--json"}} {
		var out bytes.Buffer
		if err := runCLI(args, &out); err == nil || out.Len() != 0 {
			t.Errorf("cpinit %s: %v, stdout %q; want an error and nothing on stdout", strings.Join(args, " "), err, out.String())
		}
	}
	s.unchanged(t, "the JSON error commands")

	// locked: the real store lock, held by another descriptor.
	lockFile := filepath.Join(t.TempDir(), "store")
	if err := os.WriteFile(lockFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	holder, err := os.Open(lockFile)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := unix.Flock(int(holder.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	waiter, err := os.Open(lockFile)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close()
	lerr := lockStore(waiter, lockFile, 0, "--lock-wait", func(string, ...any) {})
	if code := errorCode(lerr); code != codeLocked || exitStatus(lerr) != exitError {
		t.Errorf("store lock held: %v: code %q exit %d, want %q exit 1", lerr, code, exitStatus(lerr), codeLocked)
	}
	got[errorCode(lerr)] = true

	// refused: the bootloader command's decision, refusing to mark a
	// pending rollback's slot good.
	pending := bootstate.Record{State: bootstate.StateRollbackPending, TargetSlot: "_b", Reason: bootstate.ReasonAbort}
	_, _, rerr := decideBootloaderOp(blRequest{verb: "set-state", slot: "B", state: "good"}, "b", &pending, "a")
	if code := errorCode(rerr); code != codeRefused || exitStatus(rerr) != exitError {
		t.Errorf("%v: code %q exit %d, want %q exit 1", rerr, code, exitStatus(rerr), codeRefused)
	}
	got[errorCode(rerr)] = true

	// unreadable-store: status on a store device holding another
	// program's data (a loop device: the store must be a block device).
	t.Run("unreadable-store", func(t *testing.T) {
		testutil.RequireRoot(t)
		dev := loopDevice(t, "foreign", bootstate.StoreSize)
		f, err := os.OpenFile(dev, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(bytes.Repeat([]byte("not cpinit "), 100), 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
		je, err := runJSON(t, "status", "--json", "--metadata", dev, "--cmdline", "cpinit.userdata=/dev/null")
		if je.Code != codeUnreadableStore || je.Exit != exitError {
			t.Errorf("status of a foreign store: %+v (%v), want code %q exit 1", je, err, codeUnreadableStore)
		}
		got[je.Code] = true
	})
	for _, code := range errorCodes {
		if !got[code] && !(code == codeUnreadableStore && os.Geteuid() != 0) {
			t.Errorf("error code %q: not produced by this test", code)
		}
	}
}

// TestDocsCLIExits: docs/cli.md's table of exit statuses per command is
// the commands table's, and each status the table lists for a command is
// one the command returns here (boot-step's 1, 3 and 4 come from its boot
// step: TestRunBootStep, TestExitStatus).
func TestDocsCLIExits(t *testing.T) {
	b, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `cpinit ([a-z-]+)` \\| ([0-9, ]+) \\|")
	doc := map[string][]int{}
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		for _, f := range strings.Split(m[2], ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				t.Fatalf("docs/cli.md: %q: %v", m[0], err)
			}
			doc[m[1]] = append(doc[m[1]], n)
		}
	}
	for _, c := range commands {
		if !slices.Equal(doc[c.name], c.exits) {
			t.Errorf("docs/cli.md: cpinit %s exits %v, the command %v", c.name, doc[c.name], c.exits)
		}
		delete(doc, c.name)
	}
	for name := range doc {
		t.Errorf("docs/cli.md lists exit statuses of cpinit %s, which is no command", name)
	}

	s := newCLISandbox(t)
	off := []string{"--cmdline", "cpinit.userdata=/dev/null"} // checkpoints off: no metadata store
	// What each command returns for some command lines: --help 0, a bad
	// usage 2 (TestUsageTouchesNothing has more), a failure 1.
	returns := map[string][][]string{
		"params":     {{"params", "cpinit.userdata=/dev/vdc"}, {"params", "quiet"}},
		"extents":    {{"extents", filepath.Join(s.dir, "missing")}},
		"status":     {append([]string{"status"}, off...)},
		"check":      {append([]string{"check"}, off...)},
		"begin":      {append([]string{"begin"}, off...)},
		"commit":     {append([]string{"commit", "--if-trial"}, off...), append([]string{"commit"}, off...)},
		"rollback":   {append([]string{"rollback"}, off...)},
		"watch":      {append([]string{"watch"}, off...), append([]string{"watch", "--metadata", s.store}, off...)},
		"merge":      {append([]string{"merge"}, off...)},
		"recover":    {{"recover", "keep-current", "--cmdline", "quiet"}},
		"bootloader": {append(append([]string{"bootloader"}, off...), "get-primary")},
		"help":       {{"help", "status"}},
		"version":    {{"version"}},
	}
	for _, c := range commands {
		seen := map[int]bool{}
		for _, args := range append(returns[c.name], []string{c.name, "--help"}) {
			seen[exitStatus(runCLI(args, io.Discard))] = true
		}
		for _, u := range badUsage(s) {
			if len(u.args) > 0 && u.args[0] == c.name {
				seen[exitStatus(runCLI(u.args, io.Discard))] = true
			}
		}
		if c.name == "boot-step" {
			seen[exitError], seen[exitReboot], seen[exitPowerOff] = true, true, true
		}
		if c.name == "watch" {
			// An overflow needs a live snapshot: TestWatchOverflowExitStatus
			// maps watch's error to 3, TestBadInputOverflow (qemu-tests)
			// overflows a real one.
			seen[exitOverflow] = true
		}
		for st := range seen {
			if !slices.Contains(c.exits, st) {
				t.Errorf("cpinit %s returned exit status %d, which it does not document", c.name, st)
			}
		}
		for _, st := range c.exits {
			if !seen[st] {
				t.Errorf("cpinit %s documents exit status %d, which no test command line returned", c.name, st)
			}
		}
	}
	s.unchanged(t, "the exit status command lines")
}

// TestDocsCLIErrorCodes: docs/cli.md's table of JSON error codes lists
// exactly the codes errorCode returns.
func TestDocsCLIErrorCodes(t *testing.T) {
	b, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z-]+)` \\| [012] \\| ")
	var doc []string
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		doc = append(doc, m[1])
	}
	if !slices.Equal(doc, errorCodes) {
		t.Errorf("docs/cli.md lists error codes %q, the code %q (in this order)", doc, errorCodes)
	}
}
