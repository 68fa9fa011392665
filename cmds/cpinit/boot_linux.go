package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/internal/pid1"
	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"github.com/u-root/u-root/pkg/mount"
	"golang.org/x/sys/unix"
)

// cmdlinePath is read by PID 1; a variable so tests can point it elsewhere.
var cmdlinePath = "/proc/cmdline"

func readCmdline() (string, error) {
	b, err := os.ReadFile(cmdlinePath)
	if err != nil {
		return "", fmt.Errorf("read kernel command line: %w", err)
	}
	return string(b), nil
}

// newRoot is where cpinit.root is mounted before switch_root.
const newRoot = "/newroot"

var log = pid1.NewLogger("cpinit: ")

// pid1Main runs the boot and never returns.
func pid1Main() {
	onFatal := pid1.Halt
	defer func() {
		// A panic unwinding out of PID 1 would panic the kernel and lose
		// the message; report it like any other fatal error.
		if r := recover(); r != nil {
			fatal(onFatal, fmt.Errorf("panic: %v\n%s", r, debug.Stack()))
		}
	}()
	next, err := boot(&onFatal)
	var rb *errRebootNow
	if errors.As(err, &rb) {
		log.Printf("%s", rb.why)
		pid1.Stop(pid1.Reboot)
	}
	if err != nil {
		fatal(onFatal, err)
	}
	if next.init == "" {
		log.Printf("no next init to run: powering off")
		pid1.Stop(pid1.PowerOff)
	}
	if !next.switchRoot {
		// The early hook: no cpinit.root, so the initramfs stays the root
		// and its own init (e.g. the base image's, kept as /inito by
		// initramfs.Build) carries on as PID 1 with userdata mounted.
		log.Printf("exec %s in the initramfs (no cpinit.root=)", next.init)
		err = unix.Exec(next.init, []string{next.init}, os.Environ())
		fatal(onFatal, &os.PathError{Op: "exec", Path: next.init, Err: err})
	}
	log.Printf("switch_root to %s, exec %s", newRoot, next.init)
	// SwitchRoot moves /dev, /proc, /sys and /run into the new root, frees
	// the initramfs and execs the next init as PID 1. It only returns on
	// failure.
	err = mount.SwitchRoot(newRoot, next.init)
	fatal(onFatal, fmt.Errorf("switch_root to %s, init %s: %w", newRoot, next.init, err))
}

func fatal(a pid1.StopAction, err error) {
	log.Errorf("FATAL: %v", err)
	log.Errorf("stopping the machine (%s; set cpinit.on_fatal= to change)", a)
	pid1.Stop(a)
}

// handover is what PID 1 runs next: init inside newRoot after switch_root,
// or, without cpinit.root=, init inside the initramfs itself. An empty init
// means power off.
type handover struct {
	init       string
	switchRoot bool
}

// boot does the PID 1 work up to the point of handing over.
func boot(onFatal *pid1.StopAction) (handover, error) {
	if err := pid1.MountAll(pid1.EarlyMounts); err != nil {
		return handover{}, err
	}
	log.Reopen()
	log.Printf("starting as PID %d", os.Getpid())
	cmdline, err := readCmdline()
	if err != nil {
		return handover{}, err
	}
	p, warnings, perr := ParseParams(cmdline)
	*onFatal = p.OnFatal
	for _, w := range warnings {
		log.Errorf("warning: %s", w)
	}
	if perr != nil {
		return handover{}, perr
	}
	mods, err := pid1.ReadModuleList(pid1.ModuleListPath)
	if err != nil {
		return handover{}, err
	}
	// Device-mapper waits until a mapping is needed: a boot with no
	// checkpoint mounts the partition and never needs it.
	mods, dmMods := pid1.SplitDeviceMapper(mods)
	absent, err := pid1.LoadModules(mods)
	if err != nil {
		return handover{}, err
	}
	log.Printf("loaded kernel modules: %v; device-mapper modules load when needed: %v", mods, dmMods)
	if len(absent) > 0 {
		log.Printf("kernel modules with nothing to drive on this machine (their init said ENODEV): %v", absent)
	}
	dm := listDM(dmMods)

	ctx, cancel := context.WithTimeoutCause(context.Background(), p.RootWait,
		fmt.Errorf("device did not appear within cpinit.rootwait=%s", p.RootWait))
	defer cancel()

	dataDir := p.DataDir
	if p.Root != nil {
		rootDev, err := devspec.WaitResolve(ctx, *p.Root, pollInterval)
		if err != nil {
			return handover{}, fmt.Errorf("root device (cpinit.root=%s): %w", p.Root, err)
		}
		if err := mountDev(rootDev, newRoot, p.RootFSType, unix.MS_RDONLY, ""); err != nil {
			return handover{}, fmt.Errorf("root device (cpinit.root=%s): %w", p.Root, err)
		}
		dataDir = filepath.Join(newRoot, p.DataDir)
	}

	if err := bootStep(ctx, p, cmdline, dataDir, dm); err != nil {
		return handover{}, err
	}
	if p.Recovery {
		if p.Root == nil {
			return initramfsInit(p.Init)
		}
		if _, err := statInRoot(newRoot, p.Init); err != nil {
			return handover{}, fmt.Errorf("recovery mode: next init %s in cpinit.root=%s: %w", p.Init, p.Root, err)
		}
		return handover{p.Init, true}, nil
	}
	if p.Root == nil {
		h, err := initramfsInit(p.Init)
		if err != nil || h.init != "" {
			return h, err
		}
		return handover{}, unmountForPowerOff(dataDir)
	}
	if _, err := statInRoot(newRoot, p.Init); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			log.Printf("next init %s not found in cpinit.root=%s", p.Init, p.Root)
			return handover{}, unmountForPowerOff(dataDir)
		}
		return handover{}, err
	}
	return handover{p.Init, true}, nil
}

// bootStep is this boot's own work, the same in cpinit's initramfs (PID 1,
// boot) and in a distribution's (`cpinit boot-step`, runBootStep): in
// recovery mode guard userdata and mount nothing; otherwise wait for
// userdata, take this boot's step of the checkpoint state machine and
// mount userdata at dataDir (mapAndMount). An *errRebootNow means that
// userdata is not mounted and the machine must reboot.
func bootStep(ctx context.Context, p Params, cmdline, dataDir string, dm dmLoader) error {
	if p.Recovery {
		log.Printf("recovery mode (cpinit.recovery=1): userdata is neither mapped nor mounted and the metadata store is not written; " +
			"inspect with `cpinit status`, resolve with `cpinit merge` or `cpinit recover keep-current` (see cpinit help), then boot without cpinit.recovery")
		recoveryGuard(ctx, p, dm)
		log.Printf("state=recovery userdata=(not mounted) action=none")
		return nil
	}
	dev, err := devspec.WaitResolve(ctx, p.Userdata, pollInterval)
	if err != nil {
		return fmt.Errorf("userdata device (cpinit.userdata=%s): %w", p.Userdata, err)
	}
	return mapAndMount(ctx, p, cmdline, dev, dataDir, dm)
}

// dmLoader is how a boot loads device-mapper when it first needs it: a
// boot with no checkpoint mounts the partition and never does.
type dmLoader struct {
	// load loads the modules (nil: nothing to load: built in, or the
	// image has none).
	load func() error
	// hint says what to do when the kernel turns out to lack
	// device-mapper snapshots, for the boot's error.
	hint string
}

// listDM loads the device-mapper modules of cpinit's own module list, with
// u-root's kmodule (PID 1 has no modprobe).
func listDM(mods []string) dmLoader {
	l := dmLoader{hint: fmt.Sprintf("ship dm-mod, dm-bufio and dm-snapshot in the initramfs and list them in %s (initramfs/modules.list), or build them into the kernel",
		pid1.ModuleListPath)}
	if len(mods) > 0 {
		l.load = func() error {
			if _, err := pid1.LoadModules(mods); err != nil {
				return err
			}
			log.Printf("loaded device-mapper modules: %v", mods)
			return nil
		}
	}
	return l
}

// recoveryGuard makes userdata read-only (BLKROSET) in recovery mode while
// the metadata store records a checkpoint, or cannot be read: every write to
// the partition would bypass the snapshot, and a later rollback would merge
// the saved chunks over a filesystem that changed behind its back. Mounting
// it read-write then fails (mount(8) falls back to read-only; ext4 refuses a
// journal replay on a read-only device). `cpinit merge` clears the flag for
// its own writes through device-mapper; a reboot clears it too. It also
// loads the device-mapper modules then, so that `cpinit merge` works from
// the recovery system. Best effort: recovery mode must start whatever else
// is wrong, so failures are logged, loudly.
func recoveryGuard(ctx context.Context, p Params, dm dmLoader) {
	if p.Metadata == nil {
		log.Printf("recovery mode: no cpinit.metadata=: checkpoints are off, userdata stays writable")
		return
	}
	why := ""
	if path, err := devspec.WaitResolve(ctx, *p.Metadata, pollInterval); err != nil {
		why = fmt.Sprintf("the metadata store cpinit.metadata=%s cannot be found (%v): a checkpoint may exist", p.Metadata, err)
	} else if r, err := loadStoreReadOnly(path); err != nil && !errors.Is(err, bootstate.ErrNoRecord) {
		why = fmt.Sprintf("the metadata store %s cannot be read (%v): a checkpoint may exist", path, err)
	} else if err == nil && (r.State == bootstate.StateCheckpointing || r.State == bootstate.StateRollbackPending) {
		why = fmt.Sprintf("the metadata store %s records a checkpoint (state %s)", path, r.State)
	}
	if why == "" {
		log.Printf("recovery mode: no checkpoint recorded: userdata stays writable")
		return
	}
	dev, err := devspec.WaitResolve(ctx, p.Userdata, pollInterval)
	if err == nil {
		err = setBlockRO(dev, true)
	}
	if err != nil {
		log.Errorf("WARNING: recovery mode: %s, but userdata (cpinit.userdata=%s) could not be made read-only: %v; "+
			"do not write to it: writes bypass the snapshot and corrupt the rollback", why, p.Userdata, err)
	} else {
		log.Printf("recovery mode: userdata %s is READ-ONLY: %s; writes to it would bypass the snapshot and corrupt the rollback. "+
			"Finish the rollback with `cpinit merge`, or give it up with `cpinit recover keep-current --yes`, then reboot", dev, why)
	}
	if dm.load != nil {
		if err := dm.load(); err != nil {
			log.Errorf("warning: recovery mode: loading the device-mapper modules for `cpinit merge`: %v", err)
		}
	}
}

// loadStoreReadOnly reads the metadata store through a read-only descriptor:
// recovery mode looks without writing.
func loadStoreReadOnly(path string) (*bootstate.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, _, err := bootstate.NewStore(readOnlyDev{f}, path).Load()
	return r, err
}

// readOnlyDev is a bootstate.Device that refuses every write.
type readOnlyDev struct{ f *os.File }

func (d readOnlyDev) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }
func (d readOnlyDev) WriteAt([]byte, int64) (int, error) {
	return 0, &os.PathError{Op: "write", Path: d.f.Name(), Err: errors.ErrUnsupported}
}
func (d readOnlyDev) Sync() error { return nil }

// statInRoot stats path as the next init will see it after switch_root
// to root: symbolic links on the way resolve inside root, absolute ones
// too. Debian's /sbin/init is the absolute link /lib/systemd/systemd
// (package systemd-sysv); os.Stat of /newroot/sbin/init would follow it to
// /lib/systemd/systemd in the initramfs and call a real system's init
// missing. openat2(2) with RESOLVE_IN_ROOT resolves "/" and ".." at root,
// as chroot(2) does. It came in Linux 5.6; on an older kernel (ENOSYS)
// links are followed in the initramfs as before.
func statInRoot(root, path string) (os.FileInfo, error) {
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(dir)
	full := filepath.Join(root, path)
	fd, err := unix.Openat2(dir, path, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
	if errors.Is(err, unix.ENOSYS) {
		return os.Stat(full)
	}
	if err != nil {
		return nil, &os.PathError{Op: "openat2 RESOLVE_IN_ROOT", Path: full, Err: err}
	}
	f := os.NewFile(uintptr(fd), full)
	defer f.Close()
	return f.Stat()
}

// initramfsInit is the handover without cpinit.root=: init if it exists in
// the initramfs and is not cpinit itself (cpinit.init=/init would run this
// boot again, on top of what it just set up), else nothing (power off).
func initramfsInit(init string) (handover, error) {
	st, err := os.Stat(init)
	if errors.Is(err, os.ErrNotExist) {
		log.Printf("next init %s not in the initramfs (and no cpinit.root=)", init)
		return handover{}, nil
	}
	if err != nil {
		return handover{}, err
	}
	if self, err := os.Stat("/proc/self/exe"); err == nil && os.SameFile(st, self) {
		return handover{}, fmt.Errorf("cpinit.init=%s is cpinit itself: name the init that runs after it (initramfs.Build keeps a base image's /init as /inito)", init)
	}
	return handover{init: init}, nil
}

// pollInterval is how often to look again for a block device that has not
// appeared yet.
const pollInterval = 50 * time.Millisecond

// mountDev mounts a block device, creating the mount point.
func mountDev(dev, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, target, fstype, flags, data); err != nil {
		return &os.PathError{Op: "mount", Path: target,
			Err: fmt.Errorf("from device %s (fs type %s, flags %#x, options %q): %w", dev, fstype, flags, data, err)}
	}
	return nil
}

// unmountForPowerOff unmounts userdata so the filesystem is clean when the
// machine powers off with nothing left to run.
func unmountForPowerOff(dataDir string) error {
	if err := unix.Unmount(dataDir, 0); err != nil {
		return &os.PathError{Op: "umount", Path: dataDir, Err: err}
	}
	unix.Sync()
	return nil
}

// mapAndMount takes this boot's step of the checkpoint state machine and
// mounts userdata accordingly: plainly, through a snapshot-origin, or after a
// rollback merge. It prints the one machine-readable line of the boot.
func mapAndMount(ctx context.Context, p Params, cmdline, dev, dataDir string, dm dmLoader) error {
	ud, err := findUserdata(dev)
	if err != nil {
		return fmt.Errorf("userdata device %s: %w", dev, err)
	}
	env := &bootEnv{
		ud:        ud,
		dataDir:   dataDir,
		fstype:    p.FSType,
		mountOpts: p.MountOpts,
		verifyDir: "/run/cpinit/verify",
		logf:      log.Printf,
		progress:  consoleProgress(log.Printf),
		publish:   rollbackStatePath,
		publishBy: rollbackByBoot,
		loadDM:    dm.load,
		lazyDM:    true,

		restoreOffline: p.Merge == mergeRestore,
	}
	if p.Metadata == nil {
		log.Printf("no cpinit.metadata= given: checkpoints are disabled, userdata is mounted as it is")
		if err := refuseLeftCheckpoint(env, "no cpinit.metadata= names its metadata store"); err != nil {
			return fmt.Errorf("userdata device %s: %w", dev, err)
		}
		if err := env.mount(dev); err != nil {
			return fmt.Errorf("userdata device (cpinit.userdata=%s): %w", p.Userdata, err)
		}
		log.Printf("state=fresh userdata=%s mounted=%s via=%s action=none", dev, dataDir, env.mounted)
		return nil
	}
	metaPath, err := devspec.WaitResolve(ctx, *p.Metadata, pollInterval)
	if err != nil {
		return fmt.Errorf("metadata store (cpinit.metadata=%s): %w", p.Metadata, err)
	}
	store, f, err := bootstate.OpenStore(metaPath)
	if err != nil {
		return fmt.Errorf("metadata store (cpinit.metadata=%s): %w", p.Metadata, err)
	}
	defer f.Close()
	if err := lockStore(f, metaPath, defaultLockWait, "", log.Printf); err != nil {
		return fmt.Errorf("metadata store (cpinit.metadata=%s): %w", p.Metadata, err)
	}
	if err := checkStoreDevice(store, f, metaPath); err != nil {
		return fmt.Errorf("metadata store (cpinit.metadata=%s): %w", p.Metadata, err)
	}
	if _, _, err := store.Load(); errors.Is(err, bootstate.ErrNoRecord) {
		// A blank store would be formatted and userdata mounted as it is.
		// Every store is formatted on the first boot, before any begin, so
		// a blank one beside a COW file was wiped or is not the store.
		if err := refuseLeftCheckpoint(env, fmt.Sprintf("the metadata store %s (cpinit.metadata=%s) is blank", metaPath, p.Metadata)); err != nil {
			return fmt.Errorf("userdata device %s: %w", dev, err)
		}
	}
	if _, info, err := store.Load(); err == nil && info.Degraded {
		log.Errorf("warning: metadata store %s: only one good copy (copy A: %v; copy B: %v); using it, the next write repairs the other",
			metaPath, info.Copies[0], info.Copies[1])
	}
	in := bootstate.DecideInput{
		BootedSlot: bootstate.SlotFromCmdline(cmdline),
		Params:     bootstate.Params{Abort: p.Abort, Userdata: ud.id()},
	}
	env.bootedSlot = in.BootedSlot
	if p.scheme() != schemeNone {
		waitResolve := func(s devspec.Spec) (string, error) { return devspec.WaitResolve(ctx, s, pollInterval) }
		if env.bl, in.BootErr = newBootloader(p, in.BootedSlot, waitResolve, true); in.BootErr == nil {
			in.Boot, in.BootErr = env.bl.Load()
		}
		if in.BootErr == nil {
			next := in.Boot.Next()
			if next == "" {
				next = "none bootable"
			}
			log.Printf("booted slot %q; %s: next boot %s", in.BootedSlot, env.bl.Describe(), next)
		}
		if in.BootErr != nil {
			log.Errorf("warning: A/B boot control (cpinit.bootloader=%s): %v", p.scheme(), in.BootErr)
		}
		if w := bootstate.CheckBootedSlot(in.BootedSlot, in.Boot); w != "" {
			log.Errorf("warning: %s", w)
		}
	}
	if err := os.MkdirAll(env.verifyDir, 0o700); err != nil {
		return err
	}
	if r, _, err := store.Load(); err == nil {
		env.cowPath = r.COWPath
		env.checkCurrent = r.MergeTries == 0
	}
	a, err := bootstate.RunBoot(store, in, env)
	if err != nil {
		var se *bootstate.StopError
		if errors.As(err, &se) {
			return fmt.Errorf("%s\n%s", se.Action.Message, recoveryHint(se.Action.Command))
		}
		switch a.Kind {
		case bootstate.CreateSnapshot, bootstate.ReattachSnapshot, bootstate.VerifyExtents, bootstate.StartOrResumeMerge:
			if errors.Is(err, dmsnap.ErrNoSnapshotTarget) || errors.Is(err, dmsnap.ErrNoDeviceMapper) {
				err = fmt.Errorf("%w\nthis kernel lacks device-mapper snapshots: %s", err, dm.hint)
			}
			if env.mounted == "" {
				return fmt.Errorf("%w\nuserdata was not mounted and the checkpoint is kept: fix the cause above and reboot "+
					"(the step is retried); to give up the rollback instead, boot with cpinit.recovery=1 and run `%s`", err, bootstate.CmdKeepCurrent)
			}
		}
		return err
	}
	state := "unknown"
	if r, _, err := store.Load(); err == nil {
		state = r.State.String()
		if r.Active {
			state += "/active"
		}
	}
	mounted := env.mounted
	if mounted == "" {
		mounted = "(not mounted)"
	}
	log.Printf("state=%s userdata=%s mounted=%s via=%s action=%s", state, dev, dataDir, mounted, a.Kind)
	if a.Kind == bootstate.RebootOtherSlot {
		// Userdata holds the data from before the update of the slot that
		// booted: its system must not start on it. RunBoot switched the
		// bootloader to the other slot (flushed); reboot into it.
		if env.mounted != "" {
			if err := unmountForPowerOff(dataDir); err != nil {
				return err
			}
		}
		return &errRebootNow{fmt.Sprintf("not starting slot %s on the data from before its update: rebooting into the other slot", in.BootedSlot)}
	}
	return nil
}

// errRebootNow asks PID 1 to reboot instead of handing over: not a failure.
type errRebootNow struct{ why string }

func (e *errRebootNow) Error() string { return e.why }

// consoleProgress logs a running rollback about once a second, and its
// end, in the same line for both methods, named by what runs.
func consoleProgress(logf func(string, ...any)) func(method string) func(dmsnap.Progress) {
	return func(method string) func(dmsnap.Progress) {
		var last time.Time
		return func(pr dmsnap.Progress) {
			if !pr.Done && time.Since(last) < time.Second {
				return
			}
			last = time.Now()
			logf("%s", progressLine(method, pr))
		}
	}
}

// progressLine is one console report of a rollback: "merge: 12.0 MiB left
// of 40.0 MiB (70.0%), 9.5 MiB/s, 2s left, 3.1s elapsed" (the kernel's
// merge; "restore: ..." for the offline restore).
func progressLine(method string, pr dmsnap.Progress) string {
	const mib = 1 << 20
	left := "time left unknown"
	if pr.Done {
		left = "0s left"
	} else if pr.ETA > 0 {
		left = pr.ETA.Round(time.Second).String() + " left"
	}
	return fmt.Sprintf("%s: %.1f MiB left of %.1f MiB (%.1f%%), %.1f MiB/s, %s, %s elapsed",
		progressLabel(method), float64(pr.BytesLeft)/mib, float64(pr.BytesTotal)/mib, progressPercent(pr),
		pr.Rate/mib, left, pr.Elapsed.Round(time.Millisecond))
}

// progressLabel names what copies the data back in progress lines:
// "merge" (the kernel's snapshot-merge) or "restore" (offline).
func progressLabel(method string) string {
	if method == mergeRestore {
		return "restore"
	}
	return "merge"
}

// progressPercent is how much of the rollback is done, in percent.
func progressPercent(pr dmsnap.Progress) float64 {
	if pr.BytesTotal == 0 || pr.Done {
		return 100
	}
	return 100 * (1 - float64(min(pr.BytesLeft, pr.BytesTotal))/float64(pr.BytesTotal))
}

// recoveryHint is what PID 1 prints after a boot stopped for recovery: what
// was (not) done, what to run and how to get there.
func recoveryHint(command string) string {
	return "userdata was left untouched (not mapped, not mounted, COW file kept).\n" +
		"to recover: " + command + ".\n" +
		"recovery mode: boot with cpinit.recovery=1 added to the kernel command line; " +
		"cpinit then starts the system without mapping or mounting userdata"
}

// checkStoreDevice refuses a metadata store device that holds no valid
// record but something cpinit did not write: a filesystem fsSignature
// recognises, or any other data bootstate.ErrStoreForeign reports. The
// kernel command line (or --metadata) then names the wrong partition. Taken
// for blank it would be formatted (destroying that partition) and userdata
// mounted without the checkpoint the real store records. Blank, valid and
// damaged cpinit stores pass: PID 1 formats a blank one, a damaged one
// stops the boot and is what `recover keep-current` resolves. PID 1 and
// every command that opens the store run it before anything else.
func checkStoreDevice(store *bootstate.Store, dev io.ReaderAt, path string) error {
	_, _, loadErr := store.Load()
	if loadErr == nil {
		return nil
	}
	sig, err := deviceSignature(dev)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	var fe *bootstate.ForeignDataError
	switch {
	case sig != "":
	case errors.As(loadErr, &fe):
		sig = fmt.Sprintf("data cpinit did not write (first non-zero bytes at offset %d: % x)", fe.Offset, fe.Data)
	default:
		return nil
	}
	// Tagged ErrStoreForeign for the CLI's JSON error code (unreadable-store).
	return &taggedError{fmt.Errorf("%s holds %s, not a cpinit metadata store: refusing to read, format or write it, and to touch userdata; "+
		"fix cpinit.metadata= on the kernel command line (the bootloader configuration) to name the metadata partition. "+
		"If %s really is meant to be the metadata store and nothing on it is needed, wipe its first %d MiB deliberately "+
		"(`dd if=/dev/zero of=%s bs=1M count=%d conv=fsync`); cpinit then initialises it",
		path, sig, path, bootstate.StoreSize>>20, path, bootstate.StoreSize>>20), bootstate.ErrStoreForeign}
}

// openStore opens the metadata store for a command that may write it and
// refuses a device that is not one (checkStoreDevice).
func openStore(path string) (*bootstate.Store, *os.File, error) {
	store, f, err := bootstate.OpenStore(path)
	if err != nil {
		return nil, nil, err
	}
	if err := checkStoreDevice(store, f, path); err != nil {
		f.Close()
		return nil, nil, err
	}
	return store, f, nil
}

// refuseLeftCheckpoint stops a boot without cpinit.metadata= when userdata
// holds a COW file: a checkpoint may exist whose store the kernel command
// line no longer names, and mounting userdata directly would write behind
// the snapshot's back and corrupt a later rollback. It looks through the
// partition set read-only (BLKROSET) and mounted ro without journal replay,
// so the look writes nothing. Only filesystems cpinit checkpoints (ext4,
// f2fs) can hold one.
func refuseLeftCheckpoint(e *bootEnv, why string) error {
	data, ok := noReplayOption(e.fstype)
	if !ok {
		return nil
	}
	dir := "/run/cpinit/probe"
	if err := setBlockRO(e.ud.Path, true); err != nil {
		return err
	}
	defer setBlockRO(e.ud.Path, false)
	if err := mountDev(e.ud.Path, dir, e.fstype, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, data); err != nil {
		return fmt.Errorf("look for a checkpoint before mounting: %w", err)
	}
	_, err := os.Lstat(filepath.Join(dir, DefaultCOWPath))
	if uerr := unix.Unmount(dir, 0); uerr != nil {
		return &os.PathError{Op: "umount", Path: dir, Err: uerr}
	}
	switch {
	case err == nil:
		return fmt.Errorf("userdata holds the COW file %s of a checkpoint, but %s: "+
			"refusing to mount userdata directly (writes would bypass the checkpoint and corrupt a rollback). "+
			"Make cpinit.metadata= name the metadata store that recorded it; if that store is lost, run `%s --yes` in recovery mode (cpinit.recovery=1) to keep the current data",
			DefaultCOWPath, why, bootstate.CmdKeepCurrent)
	case errors.Is(err, os.ErrNotExist):
		return nil
	}
	return fmt.Errorf("look for a checkpoint before mounting: %w", err)
}
