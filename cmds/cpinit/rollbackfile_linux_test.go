package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cpinit/cpinit/pkg/dmsnap"
)

func alwaysAlive(*rollbackFile) bool { return true }

// TestRollbackFileRoundTrip: what the publisher writes at each report and
// at the end is what status reads back.
func TestRollbackFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpinit", "rollback.json") // the directory is made on the first write
	var shown []dmsnap.Progress
	pub := newRollbackPublisher(path, mergeRestore, "/dev/vdc", rollbackByMerge, t.Logf)
	report := pub.wrap(func(pr dmsnap.Progress) { shown = append(shown, pr) })

	report(dmsnap.Progress{BytesTotal: 8 << 20, BytesLeft: 6 << 20, Rate: 1 << 20, ETA: 6 * time.Second, Elapsed: 2 * time.Second})
	r, note := readRollbackStatus(path, time.Now(), alwaysAlive)
	if note != "" || r == nil {
		t.Fatalf("running: %+v, note %q", r, note)
	}
	if r.Method != mergeRestore || r.State != rollbackRunning || r.Device != "/dev/vdc" || r.By != rollbackByMerge || r.PID != os.Getpid() ||
		r.BytesDone != 2<<20 || r.BytesTotal != 8<<20 || r.Percent != 25 || r.RateBytesPerSec != 1<<20 {
		t.Errorf("running: %+v", r)
	}
	if r.SecondsLeft == nil || *r.SecondsLeft > 6 || *r.SecondsLeft < 0 {
		t.Errorf("running: seconds_left %v, want at most the 6 s estimate", r.SecondsLeft)
	}
	if len(shown) != 1 {
		t.Errorf("the wrapped display got %d reports, want 1", len(shown))
	}

	report(dmsnap.Progress{BytesTotal: 8 << 20, BytesLeft: 0, Rate: 4 << 20, Elapsed: 2 * time.Second, Done: true})
	pub.finish(nil)
	r, note = readRollbackStatus(path, time.Now(), alwaysAlive)
	if note != "" || r == nil || r.State != rollbackDone || r.BytesDone != 8<<20 || r.Percent != 100 || r.SecondsLeft != nil || r.Error != "" {
		t.Fatalf("done: %+v, note %q", r, note)
	}
	if _, err := time.Parse(time.RFC3339, r.Started); err != nil {
		t.Errorf("started %q: %v", r.Started, err)
	}

	// A failure keeps what was copied and says why.
	pub = newRollbackPublisher(path, mergeKernel, "/dev/vdc", rollbackByBoot, t.Logf)
	pub.progress(dmsnap.Progress{BytesTotal: 4 << 20, BytesLeft: 3 << 20})
	pub.finish(errors.New("merge: snapshot invalid"))
	r, note = readRollbackStatus(path, time.Now(), alwaysAlive)
	if note != "" || r == nil || r.State != rollbackFailed || r.Method != mergeKernel || r.BytesDone != 1<<20 || r.Error != "merge: snapshot invalid" {
		t.Fatalf("failed: %+v, note %q", r, note)
	}

	// A rollback that fails before its first report (a corrupt COW
	// table) is reported too, with nothing copied.
	pub = newRollbackPublisher(path, mergeRestore, "/dev/vdc", rollbackByMerge, t.Logf)
	pub.finish(errors.New("COW table: bad magic"))
	r, _ = readRollbackStatus(path, time.Now(), alwaysAlive)
	if r == nil || r.State != rollbackFailed || r.BytesTotal != 0 || r.Percent != 0 || r.Error != "COW table: bad magic" {
		t.Fatalf("failed at once: %+v", r)
	}

	// No publisher (no path), no file, no crash.
	none := newRollbackPublisher("", mergeRestore, "/dev/vdc", rollbackByBoot, t.Logf)
	if none != nil || none.wrap(nil) != nil {
		t.Error("no path: want no publisher, and no callback for no display")
	}
	none.progress(dmsnap.Progress{})
	none.finish(nil)
	if r, note := readRollbackStatus(filepath.Join(t.TempDir(), "absent.json"), time.Now(), alwaysAlive); r != nil || note != "" {
		t.Errorf("no file: %+v, note %q", r, note)
	}
}

// TestRollbackFileAtomic: a reader sees the old file or the new one, never
// a partial one, and no temporary file is left behind.
func TestRollbackFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rollback.json")
	pub := newRollbackPublisher(path, mergeRestore, "/dev/vdc", rollbackByMerge, t.Logf)
	pub.progress(dmsnap.Progress{BytesTotal: 1 << 30, BytesLeft: 1 << 30})

	// The file a reader opened before a replace keeps its content.
	old, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()

	const n = 300
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; i <= n; i++ {
			pub.progress(dmsnap.Progress{BytesTotal: 1 << 30, BytesLeft: uint64(1<<30 - i<<20)})
		}
	}()
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		var f rollbackFile
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("read %d saw a partial file: %v: %q", i, err, b)
		}
	}
	wg.Wait()

	var f rollbackFile
	if err := json.NewDecoder(old).Decode(&f); err != nil || f.BytesDone != 0 {
		t.Errorf("the replaced file changed under its reader: %+v, %v", f, err)
	}
	if err := json.Unmarshal(must(os.ReadFile(path)), &f); err != nil || f.BytesDone != n<<20 {
		t.Errorf("last write: %+v, %v; want %d bytes done", f, err, n<<20)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %q, want only rollback.json", names)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestRollbackFileStale: a file left "running" by a process that is gone
// is shown as stopped, with a note; so is one from PID 1 (its boot step
// is over once anything else reads the file) and one whose PID now names
// another process.
func TestRollbackFileStale(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rollback.json")
	write := func(f rollbackFile) {
		t.Helper()
		if err := writeFileAtomic(path, f); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	base := rollbackFile{Method: mergeRestore, Device: "/dev/vdc", By: rollbackByMerge, State: rollbackRunning,
		Started: now.Add(-time.Minute), Updated: now.Add(-50 * time.Second), BytesDone: 3 << 20, BytesTotal: 8 << 20, ETASeconds: 20}

	// A process that has exited.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := base
	dead.PID = cmd.Process.Pid
	write(dead)
	r, note := readRollbackStatus(path, now, writerAlive)
	if r == nil || r.State != rollbackStopped || r.SecondsLeft != nil || !strings.Contains(note, "stopped without finishing") {
		t.Fatalf("dead writer: %+v, note %q", r, note)
	}

	// This process, but started at another time: the PID was reused.
	reused := base
	reused.PID, reused.PIDStart = os.Getpid(), "1"
	write(reused)
	if r, _ := readRollbackStatus(path, now, writerAlive); r == nil || r.State != rollbackStopped {
		t.Fatalf("reused pid: %+v", r)
	}

	// PID 1's boot step.
	boot := base
	boot.PID, boot.By = 1, rollbackByBoot
	write(boot)
	if r, _ := readRollbackStatus(path, now, writerAlive); r == nil || r.State != rollbackStopped {
		t.Fatalf("PID 1's boot: %+v", r)
	}

	// The live writer: running, with the estimate counted down from its
	// report (50 s ago: the 20 s it gave are over).
	live := base
	live.PID = os.Getpid()
	live.PIDStart, _ = procStartTime(live.PID)
	write(live)
	r, note = readRollbackStatus(path, now, writerAlive)
	if r == nil || r.State != rollbackRunning || note != "" || r.SecondsLeft == nil || *r.SecondsLeft != 0 {
		t.Fatalf("live writer: %+v, note %q", r, note)
	}
}

// TestRollbackFileCorrupt: a file that is not JSON, or JSON that makes no
// sense, gives status a note naming the file, and no rollback.
func TestRollbackFileCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rollback.json")
	now := time.Now()
	for _, c := range []struct{ content, want string }{
		{`{"method":"restore","state":"runn`, "is corrupt"},
		{"\x00\x00\x00", "is corrupt"},
		{`{"method":"copy","state":"done","started":"2025-01-01T00:00:00Z","updated":"2025-01-01T00:00:01Z"}`, "makes no sense"},
		{`{"method":"restore","state":"done","bytes_done":9,"bytes_total":8,"started":"2025-01-01T00:00:00Z","updated":"2025-01-01T00:00:01Z"}`, "makes no sense"},
		{`{"method":"restore","state":"done"}`, "makes no sense"},
	} {
		if err := os.WriteFile(path, []byte(c.content), 0o644); err != nil {
			t.Fatal(err)
		}
		st := &Status{Schema: StatusSchema, State: "fresh", Note: "earlier note"}
		addRollback(st, path, now)
		if st.Rollback != nil || !strings.Contains(st.Note, path) || !strings.Contains(st.Note, c.want) || !strings.HasPrefix(st.Note, "earlier note; ") {
			t.Errorf("%q: rollback %+v, note %q", c.content, st.Rollback, st.Note)
		}
		var out bytes.Buffer
		printStatus(&out, st)
		if !strings.Contains(out.String(), "note:              earlier note; the rollback progress file") {
			t.Errorf("%q: status text:\n%s", c.content, out.String())
		}
	}
}

// TestRollbackFilePublishError: a progress file that cannot be written is
// logged once, and the rollback's reports still reach the display.
func TestRollbackFilePublishError(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var logged []string
	logf := func(format string, a ...any) { logged = append(logged, format) }
	pub := newRollbackPublisher(filepath.Join(notDir, "rollback.json"), mergeRestore, "/dev/vdc", rollbackByBoot, logf)
	shown := 0
	report := pub.wrap(func(dmsnap.Progress) { shown++ })
	for range 3 {
		report(dmsnap.Progress{BytesTotal: 1, BytesLeft: 1})
	}
	pub.finish(nil)
	if shown != 3 || len(logged) != 1 || !strings.Contains(logged[0], "cannot publish") {
		t.Errorf("shown %d reports, logged %q; want 3 and one warning", shown, logged)
	}
}

// TestStatusRollbackText: the status lines for a running, a finished, a
// failed and a stopped rollback.
func TestStatusRollbackText(t *testing.T) {
	left := 12.4
	base := RollbackProgress{Method: mergeRestore, Device: "/dev/vdc", By: rollbackByMerge, PID: 412,
		BytesDone: 6 << 20, BytesTotal: 8 << 20, Percent: 75, RateBytesPerSec: 3 << 20,
		Started: "2025-01-02T03:04:05Z", Updated: "2025-01-02T03:04:07Z", Seconds: 2.04}
	for _, c := range []struct {
		state   string
		edit    func(*RollbackProgress)
		want    string
		without string
	}{
		{rollbackRunning, func(r *RollbackProgress) { r.SecondsLeft = &left },
			"rollback:          offline restore of /dev/vdc (cpinit merge, pid 412) running: 75.0%, 2.0 MiB left of 8.0 MiB, 3.0 MiB/s, about 12s left", ""},
		{rollbackRunning, func(r *RollbackProgress) {}, "running: 75.0%, 2.0 MiB left of 8.0 MiB, 3.0 MiB/s, time left unknown", ""},
		{rollbackDone, func(r *RollbackProgress) {
			r.BytesDone, r.Percent, r.Method, r.By = 8<<20, 100, mergeKernel, rollbackByBoot
		},
			"last rollback:     kernel merge of /dev/vdc (boot, pid 412) done at 2025-01-02T03:04:07Z: 8.0 MiB in 2s, 3.0 MiB/s", "rollback:          "},
		{rollbackFailed, func(r *RollbackProgress) { r.Error = "restore: write /dev/vdc at byte 4096: input/output error" },
			"last rollback:     offline restore of /dev/vdc (cpinit merge, pid 412) FAILED at 2025-01-02T03:04:07Z after 6.0 of 8.0 MiB (2s): restore: write /dev/vdc at byte 4096: input/output error", ""},
		{rollbackStopped, func(r *RollbackProgress) {},
			"last rollback:     offline restore of /dev/vdc (cpinit merge, pid 412) stopped without finishing after 6.0 of 8.0 MiB (last report at 2025-01-02T03:04:07Z)", ""},
	} {
		r := base
		r.State = c.state
		c.edit(&r)
		var out bytes.Buffer
		printStatus(&out, &Status{Schema: StatusSchema, State: "fresh", Rollback: &r})
		if !strings.Contains(out.String(), c.want+"\n") || c.without != "" && strings.Contains(out.String(), c.without) {
			t.Errorf("%s: status text lacks %q:\n%s", c.state, c.want, out.String())
		}
	}
}

// TestProgressLine: PID 1's console line is the same for both methods
// (percent, MiB/s, time left), named by what runs.
func TestProgressLine(t *testing.T) {
	pr := dmsnap.Progress{BytesTotal: 8 << 20, BytesLeft: 6 << 20, Rate: 1 << 20, ETA: 6 * time.Second, Elapsed: 2 * time.Second}
	for _, c := range []struct {
		method, want string
	}{
		{mergeKernel, "merge: 6.0 MiB left of 8.0 MiB (25.0%), 1.0 MiB/s, 6s left, 2s elapsed"},
		{mergeRestore, "restore: 6.0 MiB left of 8.0 MiB (25.0%), 1.0 MiB/s, 6s left, 2s elapsed"},
	} {
		var got []string
		show := consoleProgress(func(f string, a ...any) { got = append(got, a[0].(string)) })(c.method)
		show(pr)
		show(pr) // within the second: not logged
		show(dmsnap.Progress{BytesTotal: 8 << 20, Rate: 4 << 20, Elapsed: 2 * time.Second, Done: true})
		want := []string{c.want, progressLabel(c.method) + ": 0.0 MiB left of 8.0 MiB (100.0%), 4.0 MiB/s, 0s left, 2s elapsed"}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: logged %q, want %q", c.method, got, want)
		}
	}
	if got := progressLine(mergeRestore, dmsnap.Progress{BytesTotal: 8 << 20, BytesLeft: 8 << 20}); !strings.Contains(got, "(0.0%), 0.0 MiB/s, time left unknown") {
		t.Errorf("no rate yet: %q", got)
	}
}

// TestMergeMethodUsage: a bad --method is a usage error (exit 2) found
// before any device is opened: the same command with a good method gets
// as far as the (missing) metadata store and fails there (exit 1).
func TestMergeMethodUsage(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-store")
	common := []string{"--metadata", missing, "--userdata", missing, "--cmdline", "cpinit.userdata=" + missing, "--lock-wait", "0"}
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"--method=copy"}, exitUsage},
		{[]string{"--method="}, exitUsage},
		{[]string{"--method"}, exitUsage},
		{[]string{"--method=restore"}, exitError},
		{[]string{"--method", "kernel"}, exitError},
	} {
		var out bytes.Buffer
		err := runCLI(append(append([]string{"merge"}, c.args...), common...), &out)
		if got := exitStatus(err); got != c.want {
			t.Errorf("merge %q: exit %d (%v), want %d", c.args, got, err, c.want)
		}
		if c.want == exitUsage && !strings.Contains(err.Error(), "merge [--method restore|kernel]") {
			t.Errorf("merge %q: %v, want the synopsis", c.args, err)
		}
	}
}
