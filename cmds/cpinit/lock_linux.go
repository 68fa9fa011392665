package main

// The store lock: one cpinit process at a time reads, decides and writes the
// metadata store and misc.
//
// Every change cpinit makes is a read-modify-write: load the record (and
// misc), decide, save. The store's two copies protect against a torn write,
// not against two writers: two processes that load the same generation both
// save generation+1, and one update is lost or the copies end up holding
// different records (TestStoreLockNoLostUpdate). So every process that may
// write the store or misc holds an exclusive lock on the store device from
// before its first read until after its last write:
//
//   - begin, commit, rollback, merge and recover keep-current: for the whole
//     command (taken in commonFlags.open, or after OpenStore for recover);
//   - watch: only to act (re-reading the record under the lock, since a
//     commit or rollback may have run since the sample), never across its
//     sleeps, so that it does not hold the others back for a whole trial;
//   - PID 1 (mapAndMount): for its FSM step, released before the handover.
//     Nothing else runs that early, so it never waits in practice.
//
// status only reads and takes no lock: it must keep working while a merge
// in recovery mode holds the lock for minutes, and a reader can do without
// it. Save writes one copy at a time, each flushed before the other is
// touched, so a read racing one save finds the old record or the new one
// complete in at least one copy. Only a reader descheduled between its reads
// of copy A and copy B while two saves run could find both mid-write; it then
// reports the store unreadable for that one run and writes nothing.
//
// Misc is covered by the same lock: cpinit writes misc only inside those
// commands and PID 1's step, always with the store lock held.
//
// Lock order: the store lock before dmsnap's lock on /dev/mapper/control
// (dmsnap.Client.Lock), never the other way round.

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// defaultLockWait is how long a command waits for another cpinit process to
// release the store (--lock-wait). Long enough for a commit's online
// teardown or a udev probe to finish, short enough that a script started
// beside a stuck process learns so.
const defaultLockWait = 30 * time.Second

// lockPoll is how often a waiting process tries the lock again.
const lockPoll = 50 * time.Millisecond

// errStoreLocked: the store lock was not released within the wait.
var errStoreLocked = errors.New("the metadata store is locked by another process")

// lockMode says when a command takes the store lock.
type lockMode int

const (
	lockWholeCommand lockMode = iota // at open, until the command exits
	lockToAct                        // not at open: around each decision that writes (watch)
	lockNever                        // read-only (status)
)

// commandLock lists the commands that do not hold the lock for their whole
// run. Any other command does: the safe default for one added later.
var commandLock = map[string]lockMode{
	"status": lockNever,
	"watch":  lockToAct,
	// Its get verbs only read (RAUC asks them for `rauc status`); its set
	// verbs take the lock before they read the record (cmdBootloader).
	"bootloader": lockToAct,
}

// lockFlags is the lock part of commonFlags.
type lockFlags struct {
	mode lockMode
	wait time.Duration
}

// register sets the command's lock mode and, where it ever locks, adds
// --lock-wait.
func (l *lockFlags) register(fs *flag.FlagSet, cmd string) {
	l.mode = commandLock[cmd]
	if l.mode != lockNever {
		registerLockWait(fs, &l.wait)
	}
}

func registerLockWait(fs *flag.FlagSet, dst *time.Duration) {
	*dst = defaultLockWait
	fs.Var((*waitValue)(dst), "lock-wait",
		"how long (a `duration`) to wait for another cpinit process to finish with the metadata store (0: do not wait)")
}

// waitValue is --lock-wait: a duration of 0 or more. A negative one fails
// the parse (a usage error, before anything is opened).
type waitValue time.Duration

func (v *waitValue) String() string { return time.Duration(*v).String() }

func (v *waitValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return fmt.Errorf("want a duration of 0 or more, such as 30s or 0")
	}
	*v = waitValue(d)
	return nil
}

// lockAtOpen is commonFlags.open's last step: it takes the store lock for
// commands that hold it throughout, and keeps the wait for those that take
// it later (sysCtx.lockStore).
func (sc *sysCtx) lockAtOpen(l lockFlags) error {
	sc.lockWait = l.wait
	if l.mode != lockWholeCommand {
		return nil
	}
	return sc.lockStore()
}

// lockStore takes the store lock for this command; sysCtx.close releases
// it.
func (sc *sysCtx) lockStore() error {
	return lockStore(sc.storeF, sc.storeDev, sc.lockWait, "--lock-wait", stderrf)
}

// stderrf is where a command says that it waits for the lock: stdout may be
// a script's input.
func stderrf(format string, a ...any) { fmt.Fprintf(os.Stderr, "cpinit: "+format+"\n", a...) }

// lockStore takes an exclusive flock(2) on f, the open store device at path,
// trying again every lockPoll until wait has passed; then it fails with an
// error naming the store and the process holding it. waitFlag names the
// setting that bounds the wait, for the message. logf reports, once, that
// it waits.
//
// The lock is released when f is closed: "a lock is released
// either by an explicit LOCK_UN operation on any of these duplicate file
// descriptors, or when all such file descriptors have been closed" (flock(2)).
// cpinit never duplicates the store's descriptor nor passes it to a child
// (os.Open sets O_CLOEXEC), so closing f, or exiting, releases it.
//
// Why flock and not fcntl: a POSIX record lock (F_SETLK) belongs to the
// process and inode, and "if a process closes any file descriptor referring
// to a file, then all of the process's locks on that file are released"
// (fcntl(2), "Record locking"), whichever descriptor took them. cpinit
// opens the store device more than once in a process: resolving a UUID= or
// LABEL= device spec (devspec.Resolve) opens and closes every block device to
// read its superblock, the store's included, and one such close would
// silently drop the lock. POSIX locks also never conflict within a process. flock locks
// belong to the open file description, like Linux's OFD locks (F_OFD_SETLK),
// which would work as well; flock is chosen because it is whole-file, which
// is all this needs, because it is what flock(1) takes, so an operator can
// hold cpinit off the store with the same lock, and because /proc/locks
// shows a flock's owner pid, which lets the message name the holder (OFD
// locks show pid -1 there: proc(5), /proc/locks).
//
// The lock is on the device node's inode. Every path to the device (the
// /dev node, /dev/disk/by-* and /dev/block symlinks, devtmpfs mounted
// anywhere) reaches the same inode, so they all meet here; a second node made
// with mknod elsewhere would not (name the store by a /dev path).
//
// udev takes a shared flock on whole-disk devices while it probes them
// (https://systemd.io/BLOCK_DEVICE_LOCKING/); a store on a whole disk may
// see a brief wait for it, and the exclusive lock keeps udev from probing the
// store while cpinit writes it, as that document asks of writers.
//
// Waiting polls with LOCK_NB rather than blocking: a blocking flock can only
// be abandoned with a signal, and a bounded wait is what a command line tool
// needs. Polling is not fair (no queue), which does not matter for a handful
// of short commands.
func lockStore(f *os.File, path string, wait time.Duration, waitFlag string, logf func(string, ...any)) error {
	deadline := time.Now().Add(wait)
	said := false
	for {
		err := flock(f, path, unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return &lockedError{path: path, holders: lockHolders(f), wait: wait, waitFlag: waitFlag}
		}
		if !said {
			logf("metadata store %s is locked by %s: waiting up to %s for it", path, describeHolders(lockHolders(f)), wait)
			said = true
		}
		time.Sleep(min(lockPoll, left))
	}
}

// flock applies how to f, retrying on EINTR.
func flock(f *os.File, path string, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return &os.PathError{Op: "flock", Path: path, Err: err}
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if ferr = unix.Flock(int(fd), how); ferr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return &os.PathError{Op: "flock", Path: path, Err: err}
	}
	if ferr != nil {
		return &os.PathError{Op: "flock", Path: path, Err: ferr}
	}
	return nil
}

// lockedError: the store stayed locked for the whole wait.
type lockedError struct {
	path     string
	holders  []lockHolder
	wait     time.Duration
	waitFlag string
}

func (e *lockedError) Error() string {
	bound := e.wait.String()
	if e.waitFlag != "" {
		bound += " (" + e.waitFlag + ")"
	}
	again := "run this again"
	if e.waitFlag != "" {
		again += ", or give it longer with " + e.waitFlag
	}
	return fmt.Sprintf("metadata store %s is locked by %s and was not released within %s: "+
		"cpinit changes the metadata store and misc one process at a time. "+
		"Let that process finish (`cpinit status` shows the checkpoint's state meanwhile), then %s; "+
		"if it is stuck, stopping it releases the lock (every step cpinit records can be run again)",
		e.path, describeHolders(e.holders), bound, again)
}

func (e *lockedError) Unwrap() error { return errStoreLocked }

// lockHolder is a process that /proc/locks shows holding a flock on the
// store.
type lockHolder struct {
	pid     int
	cmdline string // "" if unknown
}

// describeHolders says who holds the lock, for messages.
func describeHolders(hs []lockHolder) string {
	if len(hs) == 0 {
		// Gone meanwhile, or in another PID namespace.
		return "another cpinit process (not visible in /proc/locks)"
	}
	var parts []string
	for _, h := range hs {
		s := fmt.Sprintf("pid %d", h.pid)
		if h.cmdline != "" {
			s += ": " + h.cmdline
		}
		parts = append(parts, s)
	}
	who := "another process"
	if isCpinit(hs[0].cmdline) {
		who = "another cpinit process"
	}
	return who + " (" + strings.Join(parts, "; ") + ")"
}

// isCpinit reports whether a command line runs cpinit (or its test binary).
func isCpinit(cmdline string) bool {
	arg0, _, _ := strings.Cut(cmdline, " ")
	return strings.HasPrefix(filepath.Base(arg0), "cpinit")
}

// lockHolders returns the processes holding a flock on f's inode, from
// /proc/locks; nil if none is found or it cannot be read (best effort: only
// for the message).
func lockHolders(f *os.File) []lockHolder {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil || serr != nil {
		return nil
	}
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return nil
	}
	var hs []lockHolder
	for _, pid := range parseProcLocks(string(b), unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)), uint64(st.Ino)) {
		hs = append(hs, lockHolder{pid: pid, cmdline: procCmdline(pid)})
	}
	return hs
}

// parseProcLocks returns the pids holding a FLOCK on the inode ino of the
// filesystem with device number major:minor, from the text of /proc/locks.
// Its lines read "1: FLOCK  ADVISORY  WRITE 5588 00:06:93 0 EOF", the inode
// as %02x:%02x:%lu (hexadecimal device numbers; fs/locks.c,
// lock_get_status); a waiter's line has "->" after the ordinal and is
// skipped. A pid of 0 or less (another PID namespace) is left out.
func parseProcLocks(text string, major, minor uint32, ino uint64) []int {
	var pids []int
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" {
			continue
		}
		id := strings.Split(f[5], ":")
		if len(id) != 3 {
			continue
		}
		ma, err1 := strconv.ParseUint(id[0], 16, 32)
		mi, err2 := strconv.ParseUint(id[1], 16, 32)
		in, err3 := strconv.ParseUint(id[2], 10, 64)
		pid, err4 := strconv.Atoi(f[4])
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			continue
		}
		if uint32(ma) == major && uint32(mi) == minor && in == ino && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procCmdline is pid's command line, space separated and shortened; "" if
// it cannot be read.
func procCmdline(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}
