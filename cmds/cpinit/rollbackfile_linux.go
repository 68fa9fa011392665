package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cpinit/cpinit/pkg/dmsnap"
)

// rollbackStatePath is where the process running a rollback (PID 1 at
// boot, `cpinit merge` in recovery) publishes its progress and, at the
// end, its result, for `cpinit status`. /run is the tmpfs PID 1 mounts
// early and mount.SwitchRoot moves into the system's root, so the boot's
// rollback stays visible to the system it started, until the next boot.
const rollbackStatePath = "/run/cpinit/rollback.json"

// Who ran a rollback (rollbackFile.By).
const (
	rollbackByBoot  = "boot"         // PID 1
	rollbackByMerge = "cpinit merge" // the recovery command
)

// Values of rollbackFile.State and RollbackProgress.State.
const (
	rollbackRunning = "running"
	rollbackDone    = "done"
	rollbackFailed  = "failed"
	// rollbackStopped: the file says running, but the process that wrote
	// it is gone (killed, or PID 1 whose boot step is over): status says
	// so instead of showing a rollback that is not running.
	rollbackStopped = "stopped"
)

// rollbackFile is the file at rollbackStatePath.
type rollbackFile struct {
	Method string `json:"method"` // mergeRestore or mergeKernel
	Device string `json:"device"` // userdata
	By     string `json:"by"`     // rollbackByBoot or rollbackByMerge
	PID    int    `json:"pid"`
	// PIDStart is the writer's start time (/proc/PID/stat, clock ticks
	// since boot): a reused PID is not mistaken for the writer.
	PIDStart   string    `json:"pid_start,omitempty"`
	State      string    `json:"state"` // running, done, failed
	Started    time.Time `json:"started"`
	Updated    time.Time `json:"updated"`
	BytesDone  uint64    `json:"bytes_done"`
	BytesTotal uint64    `json:"bytes_total"`
	Rate       float64   `json:"rate_bytes_per_sec"` // of the copy, since it started
	ETASeconds float64   `json:"eta_seconds"`        // at Updated, at Rate; 0: unknown or done
	Error      string    `json:"error,omitempty"`
}

// rollbackPublisher keeps the file at path up to date through one
// rollback. A nil publisher does nothing. Write errors are logged once and
// otherwise ignored: reporting progress must never stop a rollback.
type rollbackPublisher struct {
	path   string
	logf   func(string, ...any)
	f      rollbackFile
	warned bool
}

func newRollbackPublisher(path, method, device, by string, logf func(string, ...any)) *rollbackPublisher {
	if path == "" {
		return nil
	}
	now := time.Now()
	pid := os.Getpid()
	start, _ := procStartTime(pid)
	return &rollbackPublisher{path: path, logf: logf, f: rollbackFile{
		Method: method, Device: device, By: by, PID: pid, PIDStart: start,
		State: rollbackRunning, Started: now, Updated: now,
	}}
}

// wrap returns a Progress callback that publishes each report and then
// passes it on to next (the console or the terminal; nil: none).
func (p *rollbackPublisher) wrap(next func(dmsnap.Progress)) func(dmsnap.Progress) {
	if p == nil {
		return next
	}
	return func(pr dmsnap.Progress) {
		p.progress(pr)
		if next != nil {
			next(pr)
		}
	}
}

func (p *rollbackPublisher) progress(pr dmsnap.Progress) {
	if p == nil {
		return
	}
	p.f.Updated = time.Now()
	p.f.BytesTotal = pr.BytesTotal
	p.f.BytesDone = pr.BytesTotal - min(pr.BytesLeft, pr.BytesTotal)
	p.f.Rate = pr.Rate
	p.f.ETASeconds = pr.ETA.Seconds()
	p.write()
}

// finish records the end: done, or failed with err.
func (p *rollbackPublisher) finish(err error) {
	if p == nil {
		return
	}
	p.f.Updated = time.Now()
	p.f.ETASeconds = 0
	if err != nil {
		p.f.State, p.f.Error = rollbackFailed, err.Error()
	} else {
		p.f.State = rollbackDone
		p.f.BytesDone = p.f.BytesTotal
	}
	p.write()
}

func (p *rollbackPublisher) write() {
	if err := writeFileAtomic(p.path, p.f); err != nil && !p.warned {
		p.warned = true
		p.logf("warning: cannot publish the rollback's progress for `cpinit status` (going on without): %v", err)
	}
}

// writeFileAtomic writes v as JSON to a temporary file beside path and
// renames it over path, so a reader sees the old file or the new one,
// never a partial one.
func writeFileAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(b)
	if err := errors.Join(werr, tmp.Chmod(0o644), tmp.Close()); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

// procStartTime is field 22 of /proc/PID/stat: when the process started,
// in clock ticks since boot. With the PID it names one process for good.
func procStartTime(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", err
	}
	// The command name (field 2) is in parentheses and may hold anything;
	// the fields after its last ')' start at field 3.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return "", fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return f[19], nil
}

// writerAlive reports whether the process that wrote f still runs. PID 1's
// boot step is over by the time anything else can read the file (nothing
// else runs in the initramfs while it works), so a file PID 1 left
// "running" is from a boot step that ended without finishing it.
func writerAlive(f *rollbackFile) bool {
	if f.PID <= 1 || f.By == rollbackByBoot {
		return false
	}
	start, err := procStartTime(f.PID)
	return err == nil && (f.PIDStart == "" || start == f.PIDStart)
}

// readRollbackStatus reads the file at path for `cpinit status`: nil and no
// note when there is none; nil and a note saying why when it cannot be
// read or makes no sense, so status goes on with the rest.
func readRollbackStatus(path string, now time.Time, alive func(*rollbackFile) bool) (*RollbackProgress, string) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ""
	}
	if err != nil {
		return nil, fmt.Sprintf("the rollback progress file %s cannot be read (%v): progress unknown", path, err)
	}
	var f rollbackFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Sprintf("the rollback progress file %s is corrupt (%v): progress unknown; the state above is the metadata store's", path, err)
	}
	switch {
	case f.Method != mergeKernel && f.Method != mergeRestore,
		f.State != rollbackRunning && f.State != rollbackDone && f.State != rollbackFailed,
		f.BytesDone > f.BytesTotal, f.Started.IsZero(), f.Updated.Before(f.Started):
		return nil, fmt.Sprintf("the rollback progress file %s makes no sense (method %q, state %q, %d of %d bytes): progress unknown; the state above is the metadata store's",
			path, f.Method, f.State, f.BytesDone, f.BytesTotal)
	}
	r := &RollbackProgress{
		Method:          f.Method,
		State:           f.State,
		Device:          f.Device,
		By:              f.By,
		PID:             f.PID,
		BytesDone:       f.BytesDone,
		BytesTotal:      f.BytesTotal,
		RateBytesPerSec: f.Rate,
		Started:         f.Started.UTC().Format(time.RFC3339),
		Updated:         f.Updated.UTC().Format(time.RFC3339),
		Seconds:         f.Updated.Sub(f.Started).Seconds(),
		Error:           f.Error,
	}
	switch {
	case f.BytesTotal > 0:
		r.Percent = 100 * float64(f.BytesDone) / float64(f.BytesTotal)
	case f.State == rollbackDone:
		r.Percent = 100 // nothing to copy back
	}
	if f.State == rollbackRunning {
		if !alive(&f) {
			r.State = rollbackStopped
			return r, fmt.Sprintf("the %s of %s by %s (pid %d) stopped without finishing: the record above says what is left to do",
				methodName(f.Method), f.Device, f.By, f.PID)
		}
		if f.ETASeconds > 0 {
			// The estimate was made at Updated; count down from there.
			left := max(0, f.ETASeconds-now.Sub(f.Updated).Seconds())
			r.SecondsLeft = &left
		}
	}
	return r, ""
}

// methodName is a rollback method as a person reads it.
func methodName(m string) string {
	if m == mergeRestore {
		return "offline restore"
	}
	return "kernel merge"
}
