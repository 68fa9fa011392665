package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"github.com/cpinit/cpinit/pkg/fiemap"
	"golang.org/x/sys/unix"
)

// DefaultCOWPath is where begin puts the COW file, relative to the root of
// userdata. A dot directory, root-only (fiemap.Allocate makes it 0700).
const DefaultCOWPath = "/.cpinit/cow"

// DefaultChunkSectors is the dm-snapshot chunk size begin records: 4 KiB,
// the usual ext4 and f2fs block size, so a small write copies little.
const DefaultChunkSectors = 8

// chunkFor returns the chunk size for a COW file on a filesystem with the
// given block size: DefaultChunkSectors, or the block size if smaller. Every
// extent is block-aligned, so a chunk no larger than a block keeps the COW's
// blocks and the origin's chunks disjoint (dmsnap refuses unaligned extents:
// a chunk straddling the COW and other data would be copied into the COW and
// merged back over it).
func chunkFor(blockSize uint32) uint32 {
	c := uint32(DefaultChunkSectors)
	for c > 1 && c*512 > blockSize {
		c /= 2
	}
	return c
}

// sysCtx is what the lifecycle commands share on a running system: the
// kernel parameters (overridable by flags, for recovery mode), the metadata
// store, misc and userdata.
type sysCtx struct {
	p        Params
	cmdline  string
	dataDir  string
	store    *bootstate.Store
	storeF   *os.File
	storeDev string
	miscPath string
	// bl is the bootloader whose A/B state guards the trial (nil: the
	// native counter); miscPath is its device when it is Android's misc.
	bl       bootstate.Bootloader
	ud       userdata
	lockWait time.Duration // --lock-wait, for locks taken after open (watch)
}

// errNoMetadata: checkpoints are off on this system.
var errNoMetadata = errors.New("no metadata store: set cpinit.metadata= on the kernel command line or pass --metadata")

type commonFlags struct {
	cmdline, metadata, misc, userdata, data string
	lock                                    lockFlags
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.cmdline, "cmdline", "", "kernel command line to take cpinit.* parameters from (default /proc/cmdline)")
	fs.StringVar(&c.metadata, "metadata", "", "metadata store device (default cpinit.metadata=)")
	fs.StringVar(&c.misc, "misc", "", "Android misc partition (default cpinit.misc=)")
	fs.StringVar(&c.userdata, "userdata", "", "userdata device (default cpinit.userdata=)")
	fs.StringVar(&c.data, "data", "", "where userdata is mounted (default cpinit.datadir=, /data)")
}

// params reads the kernel command line (--cmdline, else /proc/cmdline) and
// puts the device flags over its parameters: what every command, and
// check, takes the system to be. warnings are ParseParams's.
func (c *commonFlags) params() (p Params, cmdline string, warnings []string, err error) {
	cmdline = c.cmdline
	if cmdline == "" {
		if cmdline, err = readCmdline(); err != nil {
			return Params{}, "", nil, err
		}
	}
	p, warnings, perr := ParseParams(cmdline)
	if c.userdata != "" {
		s, err := devspec.Parse(c.userdata)
		if err != nil {
			return Params{}, cmdline, warnings, fmt.Errorf("--userdata: %w", err)
		}
		p.Userdata, perr = s, nil
	}
	if perr != nil {
		return Params{}, cmdline, warnings, perr
	}
	for _, o := range []struct {
		flag string
		dst  **devspec.Spec
	}{{c.metadata, &p.Metadata}, {c.misc, &p.Misc}} {
		if o.flag != "" {
			s, err := devspec.Parse(o.flag)
			if err != nil {
				return Params{}, cmdline, warnings, err
			}
			*o.dst = &s
		}
	}
	return p, cmdline, warnings, nil
}

func (c *commonFlags) open() (*sysCtx, error) {
	p, cmdline, _, err := c.params()
	if err != nil {
		return nil, err
	}
	sc := &sysCtx{p: p, cmdline: cmdline, dataDir: p.DataDir}
	if c.data != "" {
		sc.dataDir = c.data
	}
	if p.Metadata == nil {
		return nil, errNoMetadata
	}
	if sc.storeDev, err = devspec.Resolve(*p.Metadata); err != nil {
		return nil, fmt.Errorf("metadata store %s: %w", p.Metadata, err)
	}
	if sc.store, sc.storeF, err = openStore(sc.storeDev); err != nil {
		return nil, err
	}
	if err := p.checkBootloader(); err != nil {
		sc.close()
		return nil, err
	}
	if sc.bl, err = newBootloader(p, sc.bootedSlot(), devspec.Resolve, false); err != nil {
		sc.close()
		return nil, err
	}
	if m, ok := sc.bl.(*bootstate.AndroidMisc); ok {
		sc.miscPath = m.Path
	}
	dev, err := devspec.Resolve(p.Userdata)
	if err != nil {
		sc.close()
		return nil, fmt.Errorf("userdata %s: %w", p.Userdata, err)
	}
	if sc.ud, err = findUserdata(dev); err != nil {
		sc.close()
		return nil, err
	}
	if err := sc.lockAtOpen(c.lock); err != nil {
		sc.close()
		return nil, err
	}
	return sc, nil
}

func (sc *sysCtx) close() { sc.storeF.Close() }

// openCmd parses a lifecycle command's flags (the common ones, plus what
// extra registers), checks them and the arguments after them with check
// (nil: no arguments allowed), and only then opens the system they name:
// a usage error, and -h, are returned before anything is read or opened.
func openCmd(name string, args []string, extra func(*flag.FlagSet), check func(rest []string) error) (*sysCtx, error) {
	fs := newFlags(name)
	var cf commonFlags
	cf.register(fs)
	cf.lock.register(fs, name)
	if extra != nil {
		extra(fs)
	}
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if check == nil {
		check = noArgs
	}
	if err := check(fs.Args()); err != nil {
		return nil, err
	}
	if err := cf.check(); err != nil {
		return nil, err
	}
	return cf.open()
}

// check checks the device specs given as flags, before open reads the
// kernel command line.
func (c *commonFlags) check() error {
	for _, f := range []struct{ name, val string }{{"metadata", c.metadata}, {"misc", c.misc}, {"userdata", c.userdata}} {
		if f.val == "" {
			continue
		}
		if _, err := devspec.Parse(f.val); err != nil {
			return usagef("--%s: %v", f.name, err)
		}
	}
	return nil
}

// openCmdRecord is openCmd followed by loading the record.
func openCmdRecord(name string, args []string) (*sysCtx, *bootstate.Record, error) {
	sc, err := openCmd(name, args, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	r, err := sc.load()
	if err != nil {
		sc.close()
		return nil, nil, err
	}
	return sc, r, nil
}

func (sc *sysCtx) load() (*bootstate.Record, error) {
	r, _, err := sc.store.Load()
	if errors.Is(err, bootstate.ErrNoRecord) {
		fresh := bootstate.NewFreshRecord()
		return &fresh, nil
	}
	return r, err
}

// save applies one step to r and persists it before the caller acts on it.
func (sc *sysCtx) save(r *bootstate.Record, step bootstate.Step) (*bootstate.Record, error) {
	n, err := bootstate.Apply(*r, step)
	if err != nil {
		return nil, err
	}
	if _, err := sc.store.Save(&n); err != nil {
		return nil, fmt.Errorf("persist %v: %w", step, err)
	}
	return &n, nil
}

func (sc *sysCtx) bootedSlot() string { return bootstate.SlotFromCmdline(sc.cmdline) }

// bootloader is the bootloader whose A/B state this command changes (nil
// when none is configured: the native counter).
func (sc *sysCtx) bootloader() bootstate.Bootloader { return sc.bl }

// updateMisc loads the bootloader's A/B state, applies fn and saves it
// (flushed before it returns).
func (sc *sysCtx) updateMisc(fn func(bootstate.ABState) error) error {
	_, err := sc.changeMisc(fn)
	return err
}

// changeMisc is updateMisc for a change that may have to be taken back.
// Once the write was attempted, restore is non-nil, whether or not the
// write succeeded: a write or flush that failed may still have left the new
// state, whole or in part. restore saves the state as it was loaded,
// unless the bootloader still holds it (a write refused outright changed
// nothing, and a device that refuses writes could not be restored); a
// load/save round trip is the identity (misc: reserved bytes are kept, the
// CRC was valid), so the state ends up as before.
func (sc *sysCtx) changeMisc(fn func(bootstate.ABState) error) (restore func() (wrote bool, err error), err error) {
	bl := sc.bootloader()
	if bl == nil {
		return nil, fmt.Errorf("no A/B bootloader state is configured: %w", bootstate.ErrNoSlotSwitch)
	}
	orig, err := bl.Load()
	if err != nil {
		return nil, fmt.Errorf("A/B boot control (%s): %w", bl.Describe(), err)
	}
	s, err := bl.Load()
	if err != nil {
		return nil, fmt.Errorf("A/B boot control (%s): %w", bl.Describe(), err)
	}
	if err := fn(s); err != nil {
		return nil, fmt.Errorf("A/B boot control (%s): %w", bl.Describe(), err)
	}
	restore = func() (bool, error) {
		now, err := bl.Load()
		if err == nil && reflect.DeepEqual(now, orig) {
			return false, nil
		}
		if r, ok := now.(bootstate.Reverter); ok && err == nil {
			// Backends that guard against other writers refuse to save a
			// state loaded before the last save: revert the current one.
			if err := r.RevertTo(orig); err != nil {
				return true, err
			}
			return true, bl.Save(now)
		}
		return true, bl.Save(orig)
	}
	return restore, bl.Save(s)
}

func (sc *sysCtx) checkpoint(m *bootstate.ExtentMap) (*dmsnap.Checkpoint, *dmsnap.Client, error) {
	c, err := dmsnap.Open()
	if err != nil {
		return nil, nil, err
	}
	k, err := dmsnap.New(c, dmConfig(m))
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return k, c, nil
}

// checkCOWFits refuses, before anything is written, a COW file that would
// leave less than reserve free in userdata (free is what statfs reports
// available). fiemap.Allocate checks again, but by then the record names the
// file; refusing here leaves the store and userdata untouched.
func checkCOWFits(want, free, reserve uint64) error {
	if want+reserve > free {
		return refusef("refusing to begin: a %d MiB COW file does not fit: userdata has %d MiB free and begin keeps --reserve %d MiB free for the trial; "+
			"pass a smaller --size (at most %d MiB here), lower --reserve, or free space in userdata",
			want>>20, free>>20, reserve>>20, (free-min(free, reserve))>>20)
	}
	return nil
}

// beginOpts are begin's own flags, which `cpinit bootloader` passes on to
// the begin it runs for set-primary.
type beginOpts struct {
	size, slot, reserve string
	tries               triesValue
	// noActivate: arm the checkpoint, leave the bootloader to the update
	// agent, which makes the slot active itself once it has written it
	// (SWUpdate's bootenv, Mender's ArtifactInstall).
	noActivate bool
}

// register adds begin's flags to fs; withSlot: --slot too (the bootloader
// command names the slot itself).
func (o *beginOpts) register(fs *flag.FlagSet, withSlot bool) {
	if withSlot {
		fs.BoolVar(&o.noActivate, "no-activate", false, "arm the checkpoint but leave the bootloader's state alone: the update agent makes the slot active after writing it")
	}
	fs.StringVar(&o.size, "size", "", "COW file size, e.g. 2G, or a percentage of the free space above the reserve, e.g. 50% (default: cpinit.cow_size=, else 50%)")
	if withSlot {
		fs.StringVar(&o.slot, "slot", "", "slot the update will boot (default: the other slot, with misc)")
	}
	fs.Var(&o.tries, "tries", fmt.Sprintf("`N` trial boots without an A/B counter (native counter): 1 to %d (default %d)", bootstate.MaxNativeTries, bootstate.DefaultNativeTries))
	fs.StringVar(&o.reserve, "reserve", "128M", "free space to leave in userdata after allocating")
}

// check checks the flags' values, before anything is opened: a bad one is
// a usage error.
func (o *beginOpts) check() error {
	if _, err := parseSize(o.reserve); err != nil {
		return usagef("--reserve %q: %v; want a size such as 128M", o.reserve, err)
	}
	if o.size != "" {
		if _, err := parseCOWSize(o.size); err != nil {
			return usagef("--size %q: %v", o.size, err)
		}
	}
	if o.slot != "" && bootstate.SlotIndex(o.slot) < 0 {
		return usagef("--slot %q: want _a or _b", o.slot)
	}
	return nil
}

// triesValue is --tries: the native counter's start. The record keeps it
// in a byte, and bootstate caps it at MaxNativeTries (Apply refuses more),
// like the 3-bit counter of Android's boot control; 0, the flag's default,
// stands for DefaultNativeTries. An explicit --tries 0 is refused: a trial
// of no boot would never start the update.
type triesValue uint8

func (v *triesValue) String() string { return strconv.Itoa(int(*v)) }

func (v *triesValue) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil || n < 1 || n > bootstate.MaxNativeTries {
		return fmt.Errorf("want 1 to %d trial boots (the native counter's range)", bootstate.MaxNativeTries)
	}
	*v = triesValue(n)
	return nil
}

func cmdBegin(args []string, stdout io.Writer) error {
	var o beginOpts
	sc, err := openCmd("begin", args, func(fs *flag.FlagSet) {
		o.register(fs, true)
	}, func(rest []string) error {
		if err := noArgs(rest); err != nil {
			return err
		}
		return o.check()
	})
	if err != nil {
		return err
	}
	defer sc.close()
	return sc.begin(o, stdout)
}

// begin arms a checkpoint for the update's slot o.slot (default the other
// slot): cmdBegin, and `cpinit bootloader set-primary` under the same lock.
func (sc *sysCtx) begin(o beginOpts, stdout io.Writer) error {
	size, slot, tries := &o.size, &o.slot, &o.tries
	reserve, err := parseSize(o.reserve)
	if err != nil {
		return fmt.Errorf("--reserve: %w", err)
	}
	r, err := sc.load()
	if err != nil {
		return err
	}
	if r.State != bootstate.StateFresh {
		return refusef("refusing to begin: %s", beginBlocker(r))
	}
	if r.COWPath != "" {
		return refusef("refusing to begin: the COW file %s of an earlier checkpoint awaits cleanup; reboot first", r.COWPath)
	}

	// Which slot, and who counts.
	counter := bootstate.CounterNative
	target := *slot
	if sc.bl != nil {
		counter = counterOf(sc.bl)
		if target == "" {
			cur := bootstate.SlotIndex(sc.bootedSlot())
			if cur < 0 {
				return refusef("refusing to begin: booted slot unknown (no cpinit.slot= or androidboot.slot_suffix=); pass --slot")
			}
			target = bootstate.SlotSuffixes[1-cur%2]
		}
		if bootstate.SlotIndex(target) < 0 {
			return fmt.Errorf("--slot %q: want _a or _b", target)
		}
	}

	var st unix.Statfs_t
	if err := unix.Statfs(sc.dataDir, &st); err != nil {
		return &os.PathError{Op: "statfs", Path: sc.dataDir, Err: err}
	}
	free := st.Bavail * uint64(st.Bsize)
	req := sc.p.COWSize
	if *size != "" {
		if req, err = parseCOWSize(*size); err != nil {
			return fmt.Errorf("--size: %w", err)
		}
	}
	want := req.resolve(free, reserve)
	if want < minCOW {
		return refusef("refusing to begin: a %d MiB checkpoint (%s) is too small to be useful: userdata has %d MiB free and begin keeps --reserve %d MiB; "+
			"the trial's writes, new files included, must fit in the COW (docs/cow-sizing.md): free some space in userdata",
			want>>20, req, free>>20, reserve>>20)
	}
	// Whole allocation units (blocks; on f2fs, sections), rounded down, so
	// the file takes exactly what was checked against the free space.
	unit, err := fiemap.AllocationUnit(sc.dataDir)
	if err != nil {
		return err
	}
	want = want / unit * unit
	if want < minCOW {
		return refusef("refusing to begin: a %d MiB checkpoint is too small to be useful (whole %d-byte allocation units of userdata)", want>>20, unit)
	}
	if err := checkCOWFits(want, free, reserve); err != nil {
		return err
	}

	// From here on every step changes something. A failure undoes what the
	// steps before it did, newest first, so that a failed begin leaves the
	// store, userdata and misc as they were (see beginUndo).
	full := filepath.Join(sc.dataDir, DefaultCOWPath)
	u := &beginUndo{sc: sc, full: full, target: target}
	if _, err := os.Lstat(filepath.Dir(full)); errors.Is(err, os.ErrNotExist) {
		u.dir = filepath.Dir(full) // fiemap.Allocate creates it
	}
	do := func(name, what string, fn func() error) error {
		err := beginStep(name)
		if err == nil {
			err = fn()
		}
		if err != nil {
			return u.fail(what, err)
		}
		return nil
	}

	// Write-ahead: record the path before allocating, so a crash in
	// between leaves a file the next boot knows it may delete.
	if err := do("prepare", "recording the COW path in the metadata store", func() error {
		u.prepared = true // a Save that fails may still have written
		r, err = sc.save(r, bootstate.Step{Event: bootstate.EventPrepare, Path: DefaultCOWPath})
		return err
	}); err != nil {
		return err
	}
	var m *fiemap.Map
	if err := do("allocate", "allocating the COW file "+full, func() error {
		u.allocated = true
		done := step(stdout, "allocating and pinning a %d MiB COW file %s", want>>20, full)
		// Before Linux 6.10 every extent costs a flush bio on each first
		// write of the trial: accept fewer (cowlimit.go).
		m, err = fiemap.Allocate(full, want, fiemap.AllocOptions{Reserve: reserve, MaxSegments: maxCOWSegments(kernelRelease())})
		if err != nil && strings.Contains(err.Error(), "too fragmented") && maxCOWSegments(kernelRelease()) < fiemap.DefaultMaxSegments {
			err = fmt.Errorf("%w; kernel %s is older than 6.10, where every extent of the COW costs a flush on each first write, so begin accepts at most %d (free space, or boot a 6.10 or later kernel)",
				err, kernelRelease(), oldKernelMaxCOWSegments)
		}
		if err == nil {
			done()
		}
		return err
	}); err != nil {
		return err
	}
	var onPart *fiemap.Map
	if err := do("bind", "checking that the COW file is on userdata", func() error {
		onPart, err = sc.bindToPartition(m)
		return err
	}); err != nil {
		return err
	}
	chunk := chunkFor(onPart.BlockSize)
	var em bootstate.ExtentMap
	if err := do("extents", "converting the COW file's extents", func() error {
		em, err = extentMapFromFiemap(onPart, chunk)
		return err
	}); err != nil {
		return err
	}
	if err := do("journal", "flushing the journal of "+sc.dataDir, func() error {
		return checkpointJournal(sc.dataDir)
	}); err != nil {
		return err
	}
	if err := do("record", "recording the checkpoint in the metadata store", func() error {
		r, err = sc.save(r, bootstate.Step{Event: bootstate.EventBegin, Begin: &bootstate.BeginArgs{
			TargetSlot: target, COWPath: DefaultCOWPath, Map: em, Counter: counter, Tries: uint8(*tries),
		}})
		return err
	}); err != nil {
		return err
	}
	if counter.Bootloader() && !o.noActivate {
		if err := do("misc", fmt.Sprintf("making slot %s active in %s", target, bootDesc(sc.bl)), func() error {
			u.restoreMisc, err = sc.changeMisc(func(s bootstate.ABState) error {
				// The running slot is the fallback: it must stay bootable.
				// Under RAUC's GRUB scheme a slot is bootable only once
				// marked good at each boot (x_TRY=0), which RAUC's
				// mark-good service does; mark it as that would, or a
				// crashing update would fall back to no slot at all.
				if cur := sc.bootedSlot(); cur != "" {
					if si, err := bootstate.SlotOf(s, cur); err == nil && !si.Bootable {
						if err := s.MarkSuccessful(cur); err != nil {
							return fmt.Errorf("the running slot %s, the update's fallback, is not bootable and cannot be marked good: %w", cur, err)
						}
					}
				}
				// As update_engine does around writing the new slot: first
				// unbootable (clears successful_boot, which a slot that ran
				// before still carries), then active with fresh tries. A
				// successful slot would never be counted down, so a crashing
				// update would never fall back.
				if err := s.SetUnbootable(target); err != nil {
					return err
				}
				return s.SetActive(target)
			})
			return err
		}); err != nil {
			return err
		}
	}
	if err := do("armed", "arming the checkpoint", func() error { return nil }); err != nil {
		return err
	}
	next := "reboot to start the trial"
	if counter.Bootloader() && o.noActivate {
		next = fmt.Sprintf("slot %s stays as it is in %s until the update agent makes it active", target, bootDesc(sc.bl))
	}
	fmt.Fprintf(stdout, "checkpoint armed: COW %s, %d MiB in %d extents, chunk %g KiB, target slot %q (%s counter); %s\n",
		DefaultCOWPath, want>>20, len(em.Segments), float64(chunk)/2, target, counter, next)
	return nil
}

// beginStepHook, nil in production, lets tests fail begin at each step: it
// runs before each step that changes something (named by cmdBegin's calls
// of do) and once after the last ("armed"), and an error it returns fails
// begin there as if the step had failed.
var beginStepHook func(step string) error

func beginStep(name string) error {
	if beginStepHook == nil {
		return nil
	}
	return beginStepHook(name)
}

// beginUndo is what a begin has done so far, and undoes it when a later
// step fails. Each flag is set before its step runs: a step that fails
// part-way (a store write that reached one copy, a misc write that was not
// flushed, an allocation that created the file) may have left its change.
type beginUndo struct {
	sc     *sysCtx
	full   string // the COW file
	target string // the update's slot
	dir    string // the COW file's directory, when begin created it

	prepared    bool                 // the record may name the COW path
	allocated   bool                 // the COW file may exist
	restoreMisc func() (bool, error) // misc may have changed; writes it back as it was
}

// fail undoes, newest first, and returns the error of a begin that failed
// while doing what: it says why, what was undone, and either that nothing
// is left or exactly what is and the command that removes it. The order
// keeps the rule that the record never claims less than exists: misc is
// restored while the record still holds the armed checkpoint (a boot of the
// old slot cancels an armed checkpoint), the checkpoint is cancelled before
// its file is deleted, and the file is deleted before the record drops its
// path.
func (u *beginUndo) fail(what string, cause error) error {
	sc := u.sc
	var undone []string
	report := func() string {
		if len(undone) == 0 {
			return ""
		}
		return "; undone: " + strings.Join(undone, ", ")
	}
	left := func(err error, left, remedy string) error {
		return fmt.Errorf("begin failed %s: %w%s; undoing it failed: %w; left: %s; %s", what, cause, report(), err, left, remedy)
	}
	rerun := "run `cpinit rollback` with the options given to this begin (it makes the old slot active again and cancels the armed checkpoint; the next boot deletes the COW file)"
	if u.restoreMisc != nil {
		wrote, err := u.restoreMisc()
		if err != nil {
			return left(err, fmt.Sprintf("an armed checkpoint for slot %s in the metadata store %s, its COW file %s, and %s, which may make slot %s active",
				u.target, sc.storeDev, u.full, bootDesc(sc.bl), u.target), "to remove them, "+rerun)
		}
		if wrote {
			undone = append(undone, "restored "+bootDesc(sc.bl))
		}
	}
	if !u.prepared {
		return fmt.Errorf("begin failed %s: %w; nothing was changed", what, cause)
	}
	// Read back what the store holds rather than trust what was saved: a
	// Save that failed may have written a copy anyway.
	r, err := sc.load()
	if err != nil {
		return left(err, fmt.Sprintf("the metadata store %s, which could not be read back and may name the COW file %s, and that file if it was allocated (kept: the record may need it)",
			sc.storeDev, u.full), "fix access to the store, then see `cpinit status`")
	}
	if r.State == bootstate.StateCheckpointing {
		if r, err = sc.save(r, bootstate.Step{Event: bootstate.EventCancel}); err != nil {
			return left(err, fmt.Sprintf("an armed checkpoint in the metadata store %s and its COW file %s", sc.storeDev, u.full), "to remove them, "+rerun)
		}
		undone = append(undone, "cancelled the checkpoint in the metadata store "+sc.storeDev)
	}
	if _, err := os.Lstat(u.full); u.allocated && !errors.Is(err, os.ErrNotExist) {
		// (Allocate removes what it created when it fails itself.)
		if err := fiemap.Release(u.full); err != nil {
			// Release may have cleared the immutable flag before it failed;
			// chattr -i is harmless either way.
			return left(err, fmt.Sprintf("the COW file %s, which the metadata store %s still names", u.full, sc.storeDev),
				fmt.Sprintf("the next boot deletes it, or delete it now with `chattr -i %s && rm %s`; begin again after that boot", u.full, u.full))
		}
		undone = append(undone, "deleted "+u.full)
		if u.dir != "" {
			// Empty unless someone else put a file there: then it stays.
			if err := os.Remove(u.dir); err == nil {
				undone = append(undone, "removed "+u.dir)
			}
		}
	}
	// A cancelled checkpoint's fresh record still names the update's slot
	// (the slot must not start on data rolled back from it); this update
	// never ran, so a second cleanup-done forgets it too.
	for r.COWPath != "" || r.TargetSlot != "" {
		n, err := sc.save(r, bootstate.Step{Event: bootstate.EventCleanupDone})
		if err != nil {
			return left(err, fmt.Sprintf("the metadata store %s still names the deleted COW file %s (harmless, but begin refuses until it is cleared)", sc.storeDev, r.COWPath),
				"the next boot clears it: reboot, then begin again")
		}
		if r.COWPath != "" {
			undone = append(undone, "cleared the COW path from the metadata store "+sc.storeDev)
		}
		r = n
	}
	if len(undone) == 0 {
		return fmt.Errorf("begin failed %s: %w; nothing was changed", what, cause)
	}
	return fmt.Errorf("begin failed %s: %w%s; nothing is left", what, cause, report())
}

// bindToPartition checks that the map is on the userdata partition, or on a
// dm device that maps it 1:1 (cp-origin after an online commit: a plain
// linear or a snapshot-origin of the whole partition), and returns it bound
// to the partition.
func (sc *sysCtx) bindToPartition(m *fiemap.Map) (*fiemap.Map, error) {
	d := m.Device
	if d.Major == sc.ud.Dev.Major && d.Minor == sc.ud.Dev.Minor {
		return m, nil
	}
	if d.DMName != dmsnap.DefaultNames.Origin {
		return nil, fmt.Errorf("COW file %s is on %s, not on userdata %s: refusing to map blocks of another device", m.Path, d, sc.ud.Path)
	}
	c, err := dmsnap.Open()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tbl, err := c.Table(d.DMName)
	if err != nil {
		return nil, err
	}
	if !mapsOneToOne(tbl, sc.ud, true) {
		return nil, fmt.Errorf("userdata is mounted through %s (%s), which does not map %s 1:1: refusing to guess the COW file's blocks",
			d.DMName, dmsnap.FormatTable(tbl), sc.ud.Path)
	}
	return m.OnDevice(sc.ud.fiemapDevice())
}

func cmdCommit(args []string, stdout io.Writer) error {
	var ifTrial *bool
	sc, err := openCmd("commit", args, func(fs *flag.FlagSet) {
		ifTrial = fs.Bool("if-trial", false, "commit only on the update's trial boot; otherwise do nothing and succeed")
	}, nil)
	if *ifTrial && errors.Is(err, errNoMetadata) {
		fmt.Fprintln(stdout, "nothing to commit: checkpoints are off (no cpinit.metadata=)")
		return nil
	}
	if err != nil {
		return err
	}
	defer sc.close()
	r, err := sc.load()
	if err != nil {
		return err
	}
	if *ifTrial {
		if skip := notATrial(r, sc.bootedSlot()); skip != "" {
			fmt.Fprintf(stdout, "nothing to commit: %s\n", skip)
			return nil
		}
	}
	return sc.commit(r, stdout)
}

// commit keeps the update's data: misc, record, online teardown, cleanup.
// It is idempotent: each step is recorded before the next, and a committed
// record only finishes the cleanup.
func (sc *sysCtx) commit(r *bootstate.Record, stdout io.Writer) error {
	var err error
	switch r.State {
	case bootstate.StateFresh:
		fmt.Fprintln(stdout, "nothing to commit: no checkpoint")
		return nil
	case bootstate.StateRollbackPending:
		return refusef("refusing to commit: a rollback is pending (%s); it runs at the next boot", r.Reason)
	case bootstate.StateCheckpointing:
		if !bootstate.SameSlot(sc.bootedSlot(), r.TargetSlot) {
			return refusef("refusing to commit: running slot %q is not the update's slot %q", sc.bootedSlot(), r.TargetSlot)
		}
		if !r.Active {
			return refusef("refusing to commit: the checkpoint is armed but the update has not booted yet")
		}
		if err := sc.needMisc(r, "refusing to commit", fmt.Sprintf(
			"slot %s cannot be marked successful (the bootloader would count its tries down and fall back to the old slot, with the update's data)", r.TargetSlot)); err != nil {
			return err
		}
		// Mark the slot good in the bootloader first: a cut after this
		// leaves a good slot with a pending trial, which the next boot
		// finishes as a commit where the bootloader records success
		// (Decide) and otherwise treats as one more trial boot; the other
		// order could let the bootloader fall back to the old slot with
		// committed data.
		if r.Counter.Bootloader() {
			if err := sc.updateMisc(func(s bootstate.ABState) error { return s.MarkSuccessful(sc.bootedSlot()) }); err != nil {
				return refusef("refusing to commit: marking slot %s successful in %s failed, nothing recorded: %w", r.TargetSlot, bootDesc(sc.bl), err)
			}
		}
		if r, err = sc.save(r, bootstate.Step{Event: bootstate.EventCommit}); err != nil {
			return err
		}
	}
	// committed: drop the snapshot online and delete the file.
	k, c, err := sc.checkpoint(&r.Map)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := step(stdout, "dropping the snapshot and deleting the COW file")
	if err := k.Commit(ctx); err != nil {
		return fmt.Errorf("committed, but tearing the snapshot down failed (the next boot finishes it): %w", err)
	}
	if err := fiemap.Release(filepath.Join(sc.dataDir, r.COWPath)); err != nil {
		return fmt.Errorf("committed, but deleting the COW file failed (the next boot retries): %w", err)
	}
	done()
	if _, err := sc.save(r, bootstate.Step{Event: bootstate.EventCleanupDone}); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "committed: the update's data is kept, the checkpoint is gone")
	return nil
}

// needMisc refuses (the error starts with refusing) to commit or roll back
// a checkpoint whose trial the bootloader counts in misc when this process
// has no misc to write: going ahead would record the step while the
// bootloader goes on as if nothing happened (what says what it misses).
// Nothing has been written when it refuses.
func (sc *sysCtx) needMisc(r *bootstate.Record, refusing, what string) error {
	switch {
	case !r.Counter.Bootloader(), r.Counter == counterOf(sc.bl):
		return nil
	case r.Counter == bootstate.CounterAndroid && sc.bl == nil:
		return refusef("%s: the checkpoint counts trial boots in misc (android counter), but no misc partition is configured here, so %s; "+
			"pass --misc or fix cpinit.misc= on the kernel command line; nothing recorded", refusing, what)
	case sc.bl == nil:
		return refusef("%s: the checkpoint's trial boots are counted by the bootloader (%v counter), but no bootloader is configured here, so %s; "+
			"fix cpinit.bootloader= on the kernel command line; nothing recorded", refusing, r.Counter, what)
	}
	return refusef("%s: the checkpoint was begun with the %v counter, but this system is configured for %s, so %s; "+
		"fix cpinit.bootloader= or cpinit.misc= on the kernel command line; nothing recorded", refusing, r.Counter, sc.bl.Describe(), what)
}

// snapshotUsable refuses a rollback whose live snapshot the kernel reports
// Invalid (the COW overflowed or hit an I/O error): there is nothing to
// merge, and switching the bootloader to the old slot would start the old
// system on the update's data. Where no snapshot is mapped (recovery mode,
// no device-mapper) there is nothing to look at: the next boot verifies the
// COW before the merge.
func (sc *sysCtx) snapshotUsable(m *bootstate.ExtentMap) error {
	snap, err := sc.observeSnapshot(m)
	if err != nil || snap.State == dmsnap.SnapActive {
		return nil
	}
	return refusef("refusing to roll back: the snapshot is %s (the COW overflowed or hit an I/O error), so the saved data is incomplete and there is nothing to restore; "+
		"the update's data stays. Keep it with `cpinit commit`", snapStateName(snap.State))
}

// notATrial says why commit --if-trial has nothing to do at this boot, or
// "" when this boot is the update's trial and the commit should go ahead. A
// committed record still goes ahead: commit finishes a cleanup (snapshot
// teardown, COW file deletion) that a cut interrupted, and is otherwise a
// no-op.
func notATrial(r *bootstate.Record, booted string) string {
	switch {
	case r.State == bootstate.StateFresh:
		return "no checkpoint"
	case r.State == bootstate.StateRollbackPending:
		return fmt.Sprintf("a rollback is pending (%s); it runs at the next boot", r.Reason)
	case r.State == bootstate.StateCheckpointing && !bootstate.SameSlot(booted, r.TargetSlot):
		return fmt.Sprintf("running slot %q is not the update's slot %q", booted, r.TargetSlot)
	case r.State == bootstate.StateCheckpointing && !r.Active:
		return "the checkpoint is armed; the update has not booted yet"
	}
	return ""
}

func cmdRollback(args []string, stdout io.Writer) error {
	sc, r, err := openCmdRecord("rollback", args)
	if err != nil {
		return err
	}
	defer sc.close()
	return sc.rollback(r, stdout)
}

// rollback makes the old slot active and records the rollback (or cancels
// an armed checkpoint); the next boot merges.
func (sc *sysCtx) rollback(r *bootstate.Record, stdout io.Writer) error {
	var err error
	switch {
	case r.State == bootstate.StateRollbackPending:
		fmt.Fprintln(stdout, "rollback already pending: reboot to run it")
		return nil
	case r.State != bootstate.StateCheckpointing:
		return refusef("refusing to roll back: %s", noRollbackWhy(r))
	}
	// Make the old slot active first, then record the rollback. A power cut
	// in between then boots the old slot on a checkpointing record, which
	// cpinit treats as a slot fallback: the same rollback. The other order
	// could boot the new slot on a rollback-pending record and merge the old
	// data under the new system (found by the power-cut suite).
	if r.Active {
		if err := sc.snapshotUsable(&r.Map); err != nil {
			return err
		}
	}
	if err := sc.needMisc(r, "refusing to roll back", fmt.Sprintf(
		"the old slot cannot be made active again (the bootloader would keep booting slot %s)", r.TargetSlot)); err != nil {
		return err
	}
	if r.Counter.Bootloader() {
		if target := bootstate.SlotIndex(r.TargetSlot); target >= 0 {
			// The old slot active and the update's unbootable, as a
			// bootloader that ran out of tries leaves it: the update must
			// not boot again on the rolled-back data.
			if err := sc.updateMisc(func(s bootstate.ABState) error {
				return s.FallBackFrom(r.TargetSlot)
			}); err != nil {
				return refusef("refusing to roll back: making the old slot %s active in %s failed, nothing recorded: %w", bootstate.SlotSuffixes[1-target%2], bootDesc(sc.bl), err)
			}
		}
	}
	step := bootstate.Step{Event: bootstate.EventRollback, Reason: bootstate.ReasonAbort}
	if !r.Active {
		// Armed only: the update never booted, userdata never changed.
		step = bootstate.Step{Event: bootstate.EventCancel}
	}
	if r, err = sc.save(r, step); err != nil {
		return err
	}
	if r.State == bootstate.StateRollbackPending {
		fmt.Fprintln(stdout, "rollback scheduled: reboot now; the next boot restores userdata to the checkpoint")
	} else {
		fmt.Fprintln(stdout, "checkpoint cancelled before the update booted: nothing to roll back")
	}
	return nil
}

// beginBlocker says why a begin cannot start on record r (not fresh), and
// what to do: an agent that calls begin twice, or installs during the
// update's trial, reads it.
func beginBlocker(r *bootstate.Record) string {
	switch {
	case r.State == bootstate.StateCheckpointing && !r.Active:
		return fmt.Sprintf("a checkpoint already exists, armed for slot %s by an earlier begin (the update has not booted yet): reboot into the update, or drop the checkpoint with `cpinit rollback`", r.TargetSlot)
	case r.State == bootstate.StateCheckpointing:
		return fmt.Sprintf("a checkpoint already exists: the trial of slot %s is running, and the other slot is its fallback; commit or roll it back first (`cpinit commit`, `cpinit rollback`)", r.TargetSlot)
	case r.State == bootstate.StateRollbackPending:
		return fmt.Sprintf("a checkpoint already exists: its rollback is pending (%s); reboot to run it first", r.Reason)
	case r.State == bootstate.StateCommitted:
		return fmt.Sprintf("the last checkpoint (%s) is still being cleaned up: its COW file %s is deleted at the next boot; reboot first", r.Reason, r.COWPath)
	}
	return fmt.Sprintf("a checkpoint already exists (state %s); commit or roll it back first", r.State)
}

// noRollbackWhy says why there is nothing to roll back on record r (no
// checkpoint): a rollback after a commit, after a rollback, or before any
// begin.
func noRollbackWhy(r *bootstate.Record) string {
	switch {
	case r.Reason == bootstate.ReasonCommit || r.Reason == bootstate.ReasonCleaned:
		return "no checkpoint: the update was committed; userdata is the update's and nothing older is kept"
	case r.Reason == bootstate.ReasonMerged:
		return "no checkpoint: the last rollback is done, userdata was restored"
	case r.Reason == bootstate.ReasonOverflow:
		return "no checkpoint: the last one overflowed and was committed; nothing older is kept"
	}
	return fmt.Sprintf("no checkpoint (state %s): nothing older is kept", r.State)
}

// kernelRelease is uname -r of the running kernel ("" if uname fails,
// which maxCOWSegments treats as an old kernel).
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
