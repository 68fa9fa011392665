package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/bootstate"
	"golang.org/x/sys/unix"
)

// The store lock, tested with real processes: the cpinit binary (built from
// this package) against a lock held by the test process, and several
// copies of the test binary racing through the production open/load/save
// path. The lock is a flock on the store device (docs/cli.md), so the test
// holds it with flock(2) itself, as an operator's flock(1) would.

// failTimeout bounds every wait below. It is a failure timeout only: no
// assertion depends on how fast the host is.
const failTimeout = 2 * time.Minute

// buildCpinit builds the real command into a temporary directory.
func buildCpinit(t *testing.T) string {
	t.Helper()
	goTool := testutil.LookPath(t, "go")
	bin := filepath.Join(t.TempDir(), "cpinit")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// loopDevice attaches a new sparse file of size bytes to a loop device: the
// CLI accepts only block devices for the store and userdata.
func loopDevice(t *testing.T, name string, size int64) string {
	t.Helper()
	losetup := testutil.LookPath(t, "losetup")
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "--find", "--show", f).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup --find --show %s: %v\n%s", f, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
		}
	})
	return dev
}

// lockTestSystem is a store holding an active trial (native counter, target
// _b, booted _b) and a userdata device, both loop devices.
type lockTestSystem struct {
	store, userdata, cmdline string
}

func newLockTestSystem(t *testing.T) lockTestSystem {
	t.Helper()
	testutil.RequireRoot(t)
	s := lockTestSystem{store: loopDevice(t, "store", bootstate.StoreSize), userdata: loopDevice(t, "userdata", 64<<20)}
	s.cmdline = "cpinit.userdata=" + s.userdata + " cpinit.slot=_b"
	r := bootstate.NewFreshRecord()
	for _, step := range []bootstate.Step{
		{Event: bootstate.EventBegin, Begin: &bootstate.BeginArgs{TargetSlot: "_b", COWPath: DefaultCOWPath, Map: *archExampleMap(), Counter: bootstate.CounterNative, Tries: 3}},
		{Event: bootstate.EventBootAttempt},
		{Event: bootstate.EventActivate},
	} {
		var err error
		if r, err = bootstate.Apply(r, step); err != nil {
			t.Fatal(err)
		}
	}
	st, f, err := bootstate.OpenStore(s.store)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := st.Save(&r); err != nil {
		t.Fatal(err)
	}
	return s
}

// args are the device flags every command gets.
func (s lockTestSystem) args() []string {
	return []string{"--metadata", s.store, "--userdata", s.userdata, "--cmdline", s.cmdline}
}

// recoverArgs are the device flags of recover keep-current.
func (s lockTestSystem) recoverArgs() []string {
	return []string{"--metadata", s.store, "--cmdline", s.cmdline}
}

func (s lockTestSystem) bytes(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(s.store)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (s lockTestSystem) load(t *testing.T) (*bootstate.Record, bootstate.LoadInfo) {
	t.Helper()
	st, f, err := bootstate.OpenStore(s.store)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, info, err := st.Load()
	if err != nil {
		t.Fatalf("load %s: %v", s.store, err)
	}
	return r, info
}

// holdLock takes the store lock in the test process, as another cpinit
// (or flock(1)) would, and returns the function that releases it.
func holdLock(t *testing.T, dev string) (release func()) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		t.Fatalf("flock %s: %v", dev, err)
	}
	var once sync.Once
	release = func() { once.Do(func() { f.Close() }) }
	t.Cleanup(release)
	return release
}

// proc is a started command whose stderr lines are watched as they come.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	lines          chan string
	done           chan struct{}
	err            error // of Wait, once done is closed
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startProc(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, lines: make(chan string, 64), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = p.stdout
	pipe, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			p.stderr.Write(append(sc.Bytes(), '\n'))
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		close(p.lines)
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// waitLine waits until the process writes a stderr line containing s, and
// fails the test if it exits first.
func (p *proc) waitLine(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(failTimeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				<-p.done
				t.Fatalf("%s exited (%v) without writing %q; stdout %q, stderr %q", p.cmd, p.err, s, p.stdout, p.stderr)
			}
			if strings.Contains(l, s) {
				return
			}
		case <-timeout:
			t.Fatalf("%s: no %q on stderr within %s; stderr so far %q", p.cmd, s, failTimeout, p.stderr)
		}
	}
}

// exit waits for the process and returns its exit status.
func (p *proc) exit(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(failTimeout):
		t.Fatalf("%s did not exit within %s; stderr %q", p.cmd, failTimeout, p.stderr)
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("%s: %v", p.cmd, p.err)
	return -1
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// TestStoreLockHeld: while another process holds the store lock, every
// command that writes the store or misc waits for the bound, then fails
// (status 1) with a message that names the store and the holder, and has
// written nothing. status, which only reads, is not held back.
func TestStoreLockHeld(t *testing.T) {
	bin := buildCpinit(t)
	s := newLockTestSystem(t)
	release := holdLock(t, s.store)
	defer release()
	before := s.bytes(t)
	for _, args := range [][]string{
		append([]string{"begin"}, s.args()...),
		append([]string{"commit"}, s.args()...),
		append([]string{"rollback"}, s.args()...),
		append([]string{"merge"}, s.args()...),
		append([]string{"recover", "keep-current", "--yes"}, s.recoverArgs()...),
		append(append([]string{"bootloader", "--lock-wait", "300ms"}, s.args()...), "set-state", "b", "bad"),
	} {
		if args[0] != "bootloader" { // its flags come before the verb
			args = append(args, "--lock-wait", "300ms")
		}
		p := startProc(t, nil, bin, args...)
		code := p.exit(t)
		msg := p.stderr.String()
		for _, want := range []string{"metadata store " + s.store, "another cpinit process", fmt.Sprintf("pid %d", os.Getpid()), "--lock-wait", "run this again"} {
			if !strings.Contains(msg, want) {
				t.Errorf("cpinit %s: stderr %q lacks %q", strings.Join(args, " "), msg, want)
			}
		}
		if code != exitError {
			t.Errorf("cpinit %s: exit %d, want %d; stderr %q", strings.Join(args, " "), code, exitError, msg)
		}
		if !bytes.Equal(s.bytes(t), before) {
			t.Fatalf("cpinit %s wrote the store while another process held its lock; stdout %q", strings.Join(args, " "), p.stdout)
		}
	}
	p := startProc(t, nil, bin, append([]string{"status", "--json", "--window", "0"}, s.args()...)...)
	if code := p.exit(t); code != exitOK || !strings.Contains(p.stdout.String(), `"state": "checkpointing"`) {
		t.Errorf("cpinit status while the lock is held: exit %d, stdout %q, stderr %q; want 0 and the state", code, p.stdout, p.stderr)
	}
	// The bootloader's get verbs only read, like status: `rauc status`
	// answers while a merge holds the store.
	misc := loopDevice(t, "misc", 64<<10)
	bc, err := bootstate.NewBootControl(2, 1)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(misc, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := bootstate.WriteBootControl(f, misc, bc); err != nil {
		t.Fatal(err)
	}
	f.Close()
	p = startProc(t, nil, bin, append(append([]string{"bootloader", "--misc", misc, "--lock-wait", "300ms"}, s.args()...), "get-primary")...)
	if code := p.exit(t); code != exitOK || p.stdout.String() != "b\n" {
		t.Errorf("cpinit bootloader get-primary while the lock is held: exit %d, stdout %q, stderr %q; want 0 and b", code, p.stdout, p.stderr)
	}
}

// TestStoreLockReleased: a command that finds the lock held waits, writes
// nothing while it waits, and goes ahead once the lock is released within
// the bound.
func TestStoreLockReleased(t *testing.T) {
	bin := buildCpinit(t)
	s := newLockTestSystem(t)
	r0, _ := s.load(t)
	release := holdLock(t, s.store)
	before := s.bytes(t)
	p := startProc(t, nil, bin, append([]string{"rollback", "--lock-wait", "10m"}, s.args()...)...)
	p.waitLine(t, "waiting")
	if p.exited() {
		t.Fatalf("cpinit rollback exited while the lock was held: stdout %q, stderr %q", p.stdout, p.stderr)
	}
	if !bytes.Equal(s.bytes(t), before) {
		t.Fatal("cpinit rollback wrote the store while another process held its lock")
	}
	release()
	if code := p.exit(t); code != exitOK || !strings.Contains(p.stdout.String(), "rollback scheduled") {
		t.Fatalf("cpinit rollback after the release: exit %d, stdout %q, stderr %q", code, p.stdout, p.stderr)
	}
	r, _ := s.load(t)
	if r.State != bootstate.StateRollbackPending || r.Generation != r0.Generation+1 {
		t.Errorf("after rollback: state %s generation %d; want %s generation %d", r.State, r.Generation, bootstate.StateRollbackPending, r0.Generation+1)
	}
}

// TestStoreLockRace starts several real cpinit processes on one store while
// the lock is held, so that all of them are waiting when it is released and
// then race for it. Each command is a read-modify-write whose outcome depends
// on what the previous one wrote: serialised, exactly one of them changes
// the record and every other one finds the change and does nothing. Without
// the lock each may act on the record it read first.
func TestStoreLockRace(t *testing.T) {
	bin := buildCpinit(t)
	const n = 6
	for _, c := range []struct {
		name       string
		args       func(lockTestSystem) []string
		won, found string
		state      bootstate.State
	}{
		{"rollback", func(s lockTestSystem) []string { return append([]string{"rollback"}, s.args()...) },
			"rollback scheduled", "rollback already pending", bootstate.StateRollbackPending},
		{"keep-current", func(s lockTestSystem) []string {
			return append([]string{"recover", "keep-current", "--yes"}, s.recoverArgs()...)
		}, "kept the current data", "already committed", bootstate.StateCommitted},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newLockTestSystem(t)
			r0, _ := s.load(t)
			release := holdLock(t, s.store)
			var ps []*proc
			for i := 0; i < n; i++ {
				ps = append(ps, startProc(t, nil, bin, append(c.args(s), "--lock-wait", "10m")...))
			}
			for _, p := range ps {
				p.waitLine(t, "waiting")
			}
			release()
			won, found := 0, 0
			for _, p := range ps {
				code := p.exit(t)
				out := p.stdout.String()
				switch {
				case code != exitOK:
					t.Errorf("%s: exit %d, stdout %q, stderr %q", p.cmd, code, out, p.stderr)
				case strings.Contains(out, c.won):
					won++
				case strings.Contains(out, c.found):
					found++
				default:
					t.Errorf("%s: stdout %q, want %q or %q", p.cmd, out, c.won, c.found)
				}
			}
			r, info := s.load(t)
			if won != 1 || found != n-1 {
				t.Errorf("%d processes say %q and %d say %q; want 1 and %d", won, c.won, found, c.found, n-1)
			}
			if r.State != c.state || r.Generation != r0.Generation+1 || info.Degraded {
				t.Errorf("store after the race: state %s, generation %d, copies %v; want %s, generation %d in both copies",
					r.State, r.Generation, info.Copies, c.state, r0.Generation+1)
			}
		})
	}
}

// envLockHelper makes the test binary run lockHelper instead of tests.
const envLockHelper = "CPINIT_TEST_LOCK_HELPER"

// TestStoreLockNoLostUpdate runs several processes that each open the
// system as every lifecycle command does (openCmd), load the record, save
// one step on it and close, many times over, all at once. Every save must
// land: the generation advances by exactly one per save. Without a lock two
// processes read the same generation and one save overwrites the other.
func TestStoreLockNoLostUpdate(t *testing.T) {
	const procs, rounds = 4, 25
	s := newLockTestSystem(t)
	// A fresh record: prepare (record the COW path) may be saved on it any
	// number of times, as begin does at its start.
	st, f, err := bootstate.OpenStore(s.store)
	if err != nil {
		t.Fatal(err)
	}
	fresh := bootstate.NewFreshRecord()
	if _, err := st.Format(&fresh); err != nil {
		t.Fatal(err)
	}
	f.Close()
	r0, _ := s.load(t)
	gate := filepath.Join(t.TempDir(), "go")
	var ps []*proc
	for i := 0; i < procs; i++ {
		ps = append(ps, startProc(t, []string{envLockHelper + "=" + strings.Join([]string{gate, strconv.Itoa(rounds), s.store, s.userdata, s.cmdline}, "|")},
			os.Args[0], "-test.run=^TestLockHelperProcess$"))
	}
	for _, p := range ps {
		p.waitLine(t, "ready")
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if code := p.exit(t); code != 0 {
			t.Errorf("helper: exit %d, stdout %q, stderr %q", code, p.stdout, p.stderr)
		}
	}
	r, info := s.load(t)
	if want := r0.Generation + procs*rounds; r.Generation != want || info.Degraded {
		t.Errorf("after %d processes × %d saves: generation %d (copies %v), want %d in both copies: %d saves were lost",
			procs, rounds, r.Generation, info.Copies, want, int64(want)-int64(r.Generation))
	}
}

// TestLockHelperProcess is the body of TestStoreLockNoLostUpdate's
// processes; run by itself it does nothing.
func TestLockHelperProcess(t *testing.T) {
	v := os.Getenv(envLockHelper)
	if v == "" {
		return
	}
	f := strings.Split(v, "|")
	gate, store, userdata, cmdline := f[0], f[2], f[3], f[4]
	rounds, _ := strconv.Atoi(f[1])
	fmt.Fprintln(os.Stderr, "ready")
	for {
		if _, err := os.Stat(gate); err == nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < rounds; i++ {
		sc, err := openCmd("begin", []string{"--metadata", store, "--userdata", userdata, "--cmdline", cmdline}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		r, err := sc.load()
		if err == nil {
			_, err = sc.save(r, bootstate.Step{Event: bootstate.EventPrepare, Path: DefaultCOWPath})
		}
		sc.close()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestParseProcLocks(t *testing.T) {
	const text = `1: POSIX  ADVISORY  WRITE 700 00:06:93 0 EOF
2: FLOCK  ADVISORY  WRITE 5588 00:06:93 0 EOF
2: -> FLOCK  ADVISORY  WRITE 5600 00:06:93 0 EOF
3: FLOCK  ADVISORY  READ 612 fd:01:93 0 EOF
4: FLOCK  ADVISORY  READ 613 00:06:94 0 EOF
5: OFDLCK ADVISORY  WRITE -1 00:06:93 0 EOF
6: FLOCK  ADVISORY  WRITE 0 00:06:93 0 EOF
7: FLOCK  ADVISORY  READ 614 fd:01:93 0 EOF
`
	for _, c := range []struct {
		major, minor uint32
		ino          uint64
		want         []int
	}{
		{0, 6, 93, []int{5588}},
		{0xfd, 1, 93, []int{612, 614}},
		{0, 6, 95, nil},
	} {
		got := parseProcLocks(text, c.major, c.minor, c.ino)
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("parseProcLocks(%d:%d:%d) = %v, want %v", c.major, c.minor, c.ino, got, c.want)
		}
	}
}

func TestDescribeHolders(t *testing.T) {
	for _, c := range []struct {
		hs   []lockHolder
		want string
	}{
		{nil, "another cpinit process (not visible in /proc/locks)"},
		{[]lockHolder{{412, "/usr/bin/cpinit merge"}}, "another cpinit process (pid 412: /usr/bin/cpinit merge)"},
		{[]lockHolder{{9, "flock /dev/vdd sleep 60"}}, "another process (pid 9: flock /dev/vdd sleep 60)"},
		{[]lockHolder{{7, ""}, {8, "x"}}, "another process (pid 7; pid 8: x)"},
	} {
		if got := describeHolders(c.hs); got != c.want {
			t.Errorf("describeHolders(%v) = %q, want %q", c.hs, got, c.want)
		}
	}
}
