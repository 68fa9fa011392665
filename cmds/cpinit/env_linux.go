package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/cpinit/cpinit/internal/pid1"
	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"github.com/cpinit/cpinit/pkg/fiemap"
	"golang.org/x/sys/unix"
)

// userdata is the partition cpinit protects, as found this boot.
type userdata struct {
	Path    string     // /dev node of the partition
	Dev     dmsnap.Dev // its device number
	Sectors uint64     // its size in 512-byte sectors
}

func (u userdata) id() bootstate.DeviceID {
	return bootstate.DeviceID{Major: u.Dev.Major, Minor: u.Dev.Minor, Sectors: u.Sectors}
}

func (u userdata) fiemapDevice() fiemap.Device {
	return fiemap.Device{Major: u.Dev.Major, Minor: u.Dev.Minor, Sectors: u.Sectors, Path: u.Path}
}

func findUserdata(path string) (userdata, error) {
	dev, err := dmsnap.DeviceNumber(path)
	if err != nil {
		return userdata{}, err
	}
	sectors, err := dmsnap.DeviceSectors(path)
	if err != nil {
		return userdata{}, err
	}
	return userdata{Path: path, Dev: dev, Sectors: sectors}, nil
}

// bootEnv implements bootstate.Env for PID 1 (and `cpinit merge` in
// recovery) with pkg/dmsnap and pkg/fiemap.
type bootEnv struct {
	ud        userdata
	dataDir   string // where userdata gets mounted
	fstype    string
	mountOpts string
	verifyDir string // scratch mount point for the read-only snapshot view
	logf      func(format string, args ...any)
	// progress makes the progress display of a rollback by method
	// (mergeKernel, mergeRestore); nil: none.
	progress func(method string) func(dmsnap.Progress)
	// publish is the file the rollback's progress and result are
	// published in for `cpinit status` (rollbackStatePath; "": none) and
	// publishBy who runs it (rollbackBy*).
	publish, publishBy string

	// cowPath is the recorded COW file, checked before a first snapshot
	// is created on it ("" skips the check).
	cowPath string
	// checkCurrent: before a merge, also check the COW file in the current
	// filesystem (set when no merge has started yet).
	checkCurrent bool
	// restoreOffline: roll back with dmsnap.Restore, not the kernel's
	// snapshot-merge (cpinit.merge=restore); methodFrom says what chose
	// the method, for the log (default: cpinit.merge=restore).
	restoreOffline bool
	methodFrom     string

	// bl is the bootloader whose A/B state guards the trial (nil if none
	// is configured) and bootedSlot the slot this kernel booted (kernel
	// command line): what FallBack needs to switch the bootloader away
	// from an abandoned update.
	bl         bootstate.Bootloader
	bootedSlot string

	// loadDM loads device-mapper on its first use when lazyDM (the boot:
	// PID 1 or boot-step): a fresh boot needs no dm and does not pay for
	// loading it. nil: nothing to load.
	loadDM func() error
	lazyDM bool

	dm      *dmsnap.Client // opened on first use: a fresh boot needs no dm
	mounted string         // the device mounted at dataDir, once mounted
}

func (e *bootEnv) Log(msg string) { e.logf("%s", msg) }

func (e *bootEnv) client() (*dmsnap.Client, error) {
	if e.dm != nil {
		return e.dm, nil
	}
	var loadErr error
	if e.lazyDM && e.loadDM != nil {
		loadErr = e.loadDM()
		e.loadDM = nil
	}
	c, err := dmsnap.Open()
	if err != nil {
		// Say why dm is missing when loading it failed.
		return nil, errors.Join(err, loadErr)
	}
	if err := c.CheckTargets(); err != nil {
		c.Close()
		return nil, err
	}
	e.dm = c
	return c, nil
}

func (e *bootEnv) checkpoint(m *bootstate.ExtentMap) (*dmsnap.Checkpoint, error) {
	c, err := e.client()
	if err != nil {
		return nil, err
	}
	return dmsnap.New(c, dmConfig(m))
}

// dmStepTimeout bounds one device-mapper step (load a table, suspend,
// resume, remove). A variable so a test can make a merge outlast it.
var dmStepTimeout = 2 * time.Minute

// ctx bounds one dm step, from when the step starts. Each step takes its
// own: a context made before a long wait (a merge of many GiB) would have
// expired by the time the step after the wait runs.
func (e *bootEnv) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), dmStepTimeout)
}

// MountPlain mounts userdata with no checkpoint. After a merge or an online
// commit the origin device is still mapped as a plain linear over the whole
// partition; then that is what gets mounted (it is the same bytes, and
// removing it would need it unused). Otherwise the partition itself.
func (e *bootEnv) MountPlain() error {
	if e.mounted != "" {
		return nil
	}
	dev := e.ud.Path
	// A mapping left by this boot (after a merge or an online commit) can
	// only exist if device-mapper is in the kernel; PID 1 loads it lazily,
	// and mappings do not survive a reboot, so without it there is nothing
	// to look for.
	if e.lazyDM && !pid1.DeviceMapperPresent() {
		return e.mount(dev)
	}
	if c, err := e.client(); err == nil {
		tbl, err := c.Table(dmsnap.DefaultNames.Origin)
		switch {
		case err == nil:
			if !isPlainLinear(tbl, e.ud) {
				return fmt.Errorf("refusing to mount userdata: %s is mapped as %s, not a plain mapping of %s",
					dmsnap.DefaultNames.Origin, dmsnap.FormatTable(tbl), e.ud.Path)
			}
			if dev, err = c.EnsureNode(dmsnap.DefaultNames.Origin); err != nil {
				return err
			}
		case dmsnap.IsNoDevice(err):
		default:
			return err
		}
	}
	return e.mount(dev)
}

// isPlainLinear reports whether tbl maps the whole partition 1:1.
func isPlainLinear(tbl []dmsnap.TargetSpec, ud userdata) bool {
	return mapsOneToOne(tbl, ud, false)
}

// mapsOneToOne reports whether tbl maps the whole partition sector for
// sector: a plain linear at offset 0, or (if origin is set) also a
// snapshot-origin of it, which reads and writes the partition in place.
func mapsOneToOne(tbl []dmsnap.TargetSpec, ud userdata, origin bool) bool {
	if len(tbl) != 1 || tbl[0].Start != 0 || tbl[0].Length != ud.Sectors {
		return false
	}
	dev := fmt.Sprintf("%d:%d", ud.Dev.Major, ud.Dev.Minor)
	return tbl[0].Type == "linear" && tbl[0].Params == dev+" 0" ||
		origin && tbl[0].Type == "snapshot-origin" && tbl[0].Params == dev
}

func (e *bootEnv) mount(dev string) error {
	flags, data := splitMountOpts(e.mountOpts)
	if err := mountDev(dev, e.dataDir, e.fstype, unix.MS_NODEV|unix.MS_NOSUID|flags, data); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("%w (check cpinit.fstype=%s and cpinit.mountopts=%s)", err, e.fstype, e.mountOpts)
		}
		return err
	}
	e.mounted = dev
	return nil
}

func (e *bootEnv) RemoveCOW(path string) error {
	if e.mounted == "" {
		return fmt.Errorf("remove COW file %s: userdata is not mounted", path)
	}
	return fiemap.Release(filepath.Join(e.dataDir, path))
}

func (e *bootEnv) CreateSnapshot(m *bootstate.ExtentMap) error {
	k, err := e.checkpoint(m)
	if err != nil {
		return err
	}
	ctx, cancel := e.ctx()
	defer cancel()
	if e.cowPath != "" {
		if err := e.verifyBeforeCreate(ctx, k, m); err != nil {
			return err
		}
	}
	return k.StartCheckpoint(ctx)
}

// verifyBeforeCreate checks, before the first snapshot zeroes the COW header
// and starts copying chunks into the recorded blocks, that the COW file
// still owns exactly those blocks: an offline tool (or anything that ran
// between begin and this boot) may have moved, truncated or deleted it, and
// then the snapshot would write over other files. No snapshot exists yet,
// so the current filesystem is the one to look at; it is read through a
// plain dm view of the partition (cp-origin, linear, which the snapshot
// then takes over), set read-only and mounted ro without journal replay (noReplayOption): nothing is written.
func (e *bootEnv) verifyBeforeCreate(ctx context.Context, k *dmsnap.Checkpoint, m *bootstate.ExtentMap) error {
	if err := k.MapPlain(ctx); err != nil {
		return fmt.Errorf("map userdata read-only to check the COW file: %w", err)
	}
	if err := e.checkCurrentCOW(e.cowPath, m); err != nil {
		return fmt.Errorf("%w; refusing to create the snapshot, which would write to blocks the file may no longer own. "+
			"Nothing was written; if this persists the update is abandoned and the unused checkpoint dropped", err)
	}
	return nil
}

// checkCurrentCOW reads the current filesystem through cp-origin (plain or
// snapshot-origin, not mounted), set read-only and mounted ro without journal replay, and
// checks that the COW file still has the recorded extents. The COW inode
// never changes while a checkpoint lives and begin flushed the journal
// after allocating it, so skipping journal replay cannot hide a legitimate
// version of it.
func (e *bootEnv) checkCurrentCOW(path string, m *bootstate.ExtentMap) error {
	dev, err := e.dm.EnsureNode(dmsnap.DefaultNames.Origin)
	if err != nil {
		return err
	}
	if err := setBlockRO(dev, true); err != nil {
		return err
	}
	defer setBlockRO(dev, false)
	opt, ok := noReplayOption(e.fstype)
	if !ok {
		return fmt.Errorf("check the COW file %s: cpinit.fstype=%s: checkpoints need ext4 or f2fs", path, e.fstype)
	}
	if err := mountDev(dev, e.verifyDir, e.fstype, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, opt); err != nil {
		return fmt.Errorf("check the COW file %s: %w", path, err)
	}
	defer unix.Unmount(e.verifyDir, 0)
	fp, err := e.fingerprintIn(e.verifyDir, path, m)
	if err == nil && fp != m.Fingerprint() {
		err = errors.New("its extents differ from the recorded map (moved, truncated or rewritten)")
	}
	if err != nil {
		return fmt.Errorf("COW file %s on %s changed since `cpinit begin`: %w", path, e.ud.Path, err)
	}
	return nil
}

// fingerprintIn maps path inside a filesystem mounted at dir (a dm view of
// userdata) and returns the fingerprint of its extent map on the partition.
func (e *bootEnv) fingerprintIn(dir, path string, want *bootstate.ExtentMap) ([32]byte, error) {
	var zero [32]byte
	fm, err := fiemap.MapFile(filepath.Join(dir, path))
	if err != nil {
		return zero, err
	}
	if err := fm.CheckPinned(); err != nil {
		return zero, fmt.Errorf("COW file %s: %w", path, err)
	}
	onPart, err := fm.OnDevice(e.ud.fiemapDevice())
	if err != nil {
		return zero, err
	}
	got, err := extentMapFromFiemap(onPart, want.ChunkSector)
	if err != nil {
		return zero, err
	}
	return got.Fingerprint(), nil
}

func (e *bootEnv) ReattachSnapshot(m *bootstate.ExtentMap) (bool, error) {
	k, err := e.checkpoint(m)
	if err != nil {
		return false, err
	}
	ctx, cancel := e.ctx()
	defer cancel()
	err = k.Reattach(ctx)
	if errors.Is(err, dmsnap.ErrSnapshotInvalid) {
		// Rollback is impossible; the current data lives on. Leave no
		// devices behind (Env contract), so userdata mounts plainly.
		return true, k.Teardown(ctx)
	}
	if err != nil || e.cowPath == "" {
		return false, err
	}
	// Before the trial writes on: the file must still own the blocks the
	// snapshot copies chunks into, or new files could land in them.
	if err := e.checkCurrentCOW(e.cowPath, m); err != nil {
		return false, fmt.Errorf("%w; refusing to continue the trial on this checkpoint (writes would land in blocks the file may no longer own)", err)
	}
	return false, nil
}

func (e *bootEnv) MountOrigin() error {
	if e.mounted != "" {
		return nil
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	dev, err := c.EnsureNode(dmsnap.DefaultNames.Origin)
	if err != nil {
		return err
	}
	return e.mount(dev)
}

// VerifyExtents maps the snapshot (the userdata of before the update) and
// mounts it read-only without journal replay, then takes the COW file's
// extents there. This is the "dm view" DESIGN.md asks for: the raw
// partition is never mounted while a checkpoint exists, and the snapshot
// device is also set read-only (BLKROSET) so not even a stray superblock
// update reaches the COW.
func (e *bootEnv) VerifyExtents(path string, want *bootstate.ExtentMap) ([32]byte, bool, error) {
	fp, err := e.verifyExtents(path, want)
	if errors.Is(err, dmsnap.ErrSnapshotInvalid) {
		// The kernel will not map an Invalid snapshot (the COW overflowed):
		// there is no old state to verify or merge. Reattach left nothing
		// mapped that the teardown in verifyExtents did not remove.
		return fp, true, nil
	}
	return fp, false, err
}

func (e *bootEnv) verifyExtents(path string, want *bootstate.ExtentMap) ([32]byte, error) {
	var zero [32]byte
	k, err := e.checkpoint(want)
	if err != nil {
		return zero, err
	}
	// Teardown (deferred first, so it runs after the unmount below) leaves
	// no device behind whatever happens, as the merge that follows maps
	// its own. It is a dm step of its own, with its own bound.
	defer func() {
		ctx, cancel := e.ctx()
		defer cancel()
		k.Teardown(ctx)
	}()
	ctx, cancel := e.ctx()
	defer cancel()
	if err := k.Reattach(ctx); err != nil {
		return zero, fmt.Errorf("map the snapshot to verify the COW extents: %w", err)
	}
	snap, err := e.dm.EnsureNode(dmsnap.DefaultNames.Snap)
	if err != nil {
		return zero, err
	}
	if err := setBlockRO(snap, true); err != nil {
		return zero, err
	}
	opt, ok := noReplayOption(e.fstype)
	if !ok {
		return zero, fmt.Errorf("cpinit.fstype=%s: checkpoints need ext4 or f2fs", e.fstype)
	}
	if err := mountDev(snap, e.verifyDir, e.fstype, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, opt); err != nil {
		return zero, err
	}
	fp, err := e.fingerprintIn(e.verifyDir, path, want)
	if uerr := unix.Unmount(e.verifyDir, 0); uerr != nil && err == nil {
		err = &os.PathError{Op: "umount", Path: e.verifyDir, Err: uerr}
	}
	if err != nil {
		// The file the checkpoint recorded is not there as recorded
		// (deleted, truncated, unpinned, remapped): a merge would read
		// saved chunks from blocks that may now hold anything.
		return zero, fmt.Errorf("COW file %s no longer matches the recorded map (%w); merging would write to the wrong blocks", path, err)
	}
	if e.checkCurrent {
		// The snapshot view shows the file as it was at the checkpoint.
		// The current filesystem must still have it too: if the trial
		// unpinned and deleted it, new files may have been written over
		// the saved chunks, and the merge would copy that back. Not once
		// a merge has started: the origin is then a mix of old and new
		// chunks, not a filesystem to mount.
		if err := e.checkCurrentCOW(path, want); err != nil {
			return zero, fmt.Errorf("%w; the saved chunks may have been overwritten: merging would write garbage into userdata", err)
		}
	}
	return fp, nil
}

func (e *bootEnv) Merge(m *bootstate.ExtentMap) (bool, error) {
	if e.restoreOffline {
		done, invalid, err := e.restore(m)
		if done || invalid || err != nil {
			return invalid, err
		}
	}
	k, err := e.checkpoint(m)
	if err != nil {
		return false, err
	}
	pub := newRollbackPublisher(e.publish, mergeKernel, e.ud.Path, e.publishBy, e.logf)
	invalid, err := e.startMerge(k)
	if invalid {
		// Nothing was copied back: there is no rollback to report.
		return invalid, err
	}
	if err != nil {
		pub.finish(err)
		return false, err
	}
	// No deadline: a merge takes as long as the data it copies back, and
	// stopping it early only delays it to the next boot.
	if err := k.WaitMerge(context.Background(), pub.wrap(e.progressFor(mergeKernel))); err != nil {
		pub.finish(err)
		return false, err
	}
	// A fresh bound for the step after the wait (issue 14: the step bound
	// of StartMerge used to be reused here and had expired after any merge
	// longer than it).
	ctx, cancel := e.ctx()
	defer cancel()
	err = k.FinishMerge(ctx)
	pub.finish(err)
	return false, err
}

// progressFor is the progress display of a rollback by method (nil: none).
func (e *bootEnv) progressFor(method string) func(dmsnap.Progress) {
	if e.progress == nil {
		return nil
	}
	return e.progress(method)
}

// restore rolls userdata back offline (dmsnap.Restore): nothing is mapped
// (VerifyExtents tore its devices down) and nothing mounted. done: the
// saved chunks are home and flushed. A COW the restore cannot read for a
// reason that is not corruption (another store version, an extent outside
// userdata) or a userdata device held by someone else is left to the
// kernel's merge (done and err both unset); a corrupt table stops the boot
// with everything kept, as the kernel's merge would be given the same
// table. The restore is idempotent (pkg/dmsnap/restore.go): the record
// counted this attempt before it started, and a cut one runs again.
func (e *bootEnv) restore(m *bootstate.ExtentMap) (done, invalid bool, err error) {
	from := e.methodFrom
	if from == "" {
		from = "cpinit.merge=" + mergeRestore
	}
	e.logf("restoring the saved chunks offline (%s)", from)
	pub := newRollbackPublisher(e.publish, mergeRestore, e.ud.Path, e.publishBy, e.logf)
	plan, err := dmsnap.Restore(context.Background(), e.ud.Path, dmConfig(m), dmsnap.RestoreOptions{Progress: pub.wrap(e.progressFor(mergeRestore))})
	switch {
	case err == nil:
		pub.finish(nil)
		e.logf("restore: %d chunks (%.1f MiB) copied home in %d reads and %d writes and flushed",
			len(plan.Table.Exceptions), float64(plan.Bytes())/(1<<20), plan.Reads(), plan.Copies())
		return true, false, nil
	case errors.Is(err, dmsnap.ErrSnapshotInvalid):
		// Refused before any copy, like the fallbacks below: nothing
		// to report as a rollback.
		return false, true, nil
	case errors.Is(err, dmsnap.ErrCowUnsupported), errors.Is(err, dmsnap.ErrCowElsewhere), errors.Is(err, dmsnap.ErrOriginInUse):
		e.logf("warning: no offline restore (%v): merging with the kernel instead", err)
		return false, false, nil
	}
	err = fmt.Errorf("offline restore of %s: %w", e.ud.Path, err)
	pub.finish(err)
	return false, false, err
}

// startMerge loads snapshot-merge (one dm step); invalid reports a snapshot
// the kernel says is Invalid, torn down again.
func (e *bootEnv) startMerge(k *dmsnap.Checkpoint) (invalid bool, err error) {
	ctx, cancel := e.ctx()
	defer cancel()
	err = k.StartMerge(ctx)
	if errors.Is(err, dmsnap.ErrSnapshotInvalid) {
		return true, k.Teardown(ctx)
	}
	return false, err
}

// bootloader is the bootloader whose A/B state PID 1 may have to switch
// (nil when none is configured: the native counter).
func (e *bootEnv) bootloader() bootstate.Bootloader { return e.bl }

// FallBack switches the bootloader away from the update's slot: the other
// slot active, the update's unbootable (bootstate.ABState.FallBackFrom),
// saved and flushed before it returns. A state that already says so is not
// rewritten.
func (e *bootEnv) FallBack(slot string) error {
	bl := e.bootloader()
	if bl == nil {
		return fmt.Errorf("no bootloader is configured (cpinit.misc= or cpinit.bootloader=) to tell: %w", bootstate.ErrNoSlotSwitch)
	}
	before, err := bl.Load()
	if err != nil {
		return fmt.Errorf("A/B boot control: %w", err)
	}
	s, err := bl.Load()
	if err != nil {
		return fmt.Errorf("A/B boot control: %w", err)
	}
	other, err := bootstate.OtherSlotOf(s, slot)
	if err != nil {
		return fmt.Errorf("slot %q: %v: %w", slot, err, bootstate.ErrNoSlotSwitch)
	}
	if err := s.FallBackFrom(slot); err != nil {
		return fmt.Errorf("A/B boot control (%s): %w", bl.Describe(), err)
	}
	if reflect.DeepEqual(before, s) {
		return nil
	}
	if err := bl.Save(s); err != nil {
		return err
	}
	e.logf("A/B boot control on %s: slot %s made active, slot %s unbootable", bootloaderWhere(bl), suffixed(other), suffixed(slot))
	return nil
}

// suffixed writes a slot name as Android's suffix ("_a"), the form the
// console and the status have always shown.
func suffixed(slot string) string { return "_" + strings.TrimPrefix(slot, "_") }

// bootloaderWhere is where the bootloader's state lives, for messages:
// misc's device path, else the backend's description.
func bootloaderWhere(bl bootstate.Bootloader) string {
	if m, ok := bl.(*bootstate.AndroidMisc); ok {
		return m.Path
	}
	return bl.Describe()
}

var _ bootstate.Env = (*bootEnv)(nil)

// mountFlagOpts are the mount(8) options that are mount(2) flags, not
// filesystem data: the kernel rejects them in the data string ("ext4:
// Unknown parameter 'noatime'").
var mountFlagOpts = map[string]uintptr{
	"noatime":     unix.MS_NOATIME,
	"nodiratime":  unix.MS_NODIRATIME,
	"relatime":    unix.MS_RELATIME,
	"strictatime": unix.MS_STRICTATIME,
	"lazytime":    unix.MS_LAZYTIME,
	"sync":        unix.MS_SYNCHRONOUS,
	"dirsync":     unix.MS_DIRSYNC,
	"noexec":      unix.MS_NOEXEC,
	"nodev":       unix.MS_NODEV,
	"nosuid":      unix.MS_NOSUID,
	"rw":          0,
}

// splitMountOpts splits cpinit.mountopts= the way mount(8) does: flag
// options become mount(2) flags, the rest stays the filesystem's data.
func splitMountOpts(opts string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range strings.Split(opts, ",") {
		if o == "" {
			continue
		}
		if f, ok := mountFlagOpts[o]; ok {
			flags |= f
			continue
		}
		data = append(data, o)
	}
	return flags, strings.Join(data, ",")
}
