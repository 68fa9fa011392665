package main

// The probes of `cpinit check` (check.go decides from what they find). None
// writes: the metadata store is opened read-write only to learn that it can
// be, and read; the bootloader's state is loaded, a boot partition mounted
// read-only for that; device-mapper is asked, never given a table; the
// control node is not created when it is missing (dmsnap.Open would). Like
// status, check takes no store lock: it reads nothing it then writes.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/internal/pid1"
	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"github.com/cpinit/cpinit/pkg/fiemap"
	"golang.org/x/sys/unix"
)

const checkSynopsis = "check [--json] [--size N] [--reserve N]"

func cmdCheck(args []string, stdout io.Writer) error {
	fs := newFlags("check")
	var cf commonFlags
	cf.register(fs)
	// begin's --size and --reserve, for the COW begin would allocate
	// (check has no use for begin's other flags).
	o := beginOpts{}
	fs.StringVar(&o.size, "size", "", "the COW size begin would be given (its --size), e.g. 2G or 50% (default: cpinit.cow_size=, else 50%)")
	fs.StringVar(&o.reserve, "reserve", "128M", "the free space begin would leave in userdata (its --reserve)")
	asJSON := fs.Bool("json", false, "print the checks as one JSON object ({ok, checks: [{name, status, ok, detail, fix}]})")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs.Args()); err != nil {
		return err
	}
	if err := o.check(); err != nil {
		return err
	}
	if err := cf.check(); err != nil {
		return err
	}
	reserve, err := parseSize(o.reserve)
	if err != nil {
		return usagef("--reserve %q: %v", o.reserve, err)
	}
	var size *cowSize
	if o.size != "" {
		s, err := parseCOWSize(o.size)
		if err != nil {
			return usagef("--size %q: %v", o.size, err)
		}
		size = &s
	}
	r := runChecks(cf, size, reserve)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		printCheck(stdout, r)
	}
	if !r.OK {
		err := fmt.Errorf("check: %d of %d checks failed", r.failed(), len(r.Checks))
		if *asJSON {
			return &taggedError{err, errJSONAnswered}
		}
		return err
	}
	return nil
}

// runChecks runs every probe and decides each check.
func runChecks(cf commonFlags, size *cowSize, reserve uint64) *CheckReport {
	r := &CheckReport{}

	// The parameters, with the flags put over them as every other
	// command puts them (commonFlags.params).
	source := "the kernel parameters in /proc/cmdline"
	if cf.cmdline != "" {
		source = "the kernel parameters of --cmdline"
	}
	var flags []string
	for _, f := range []struct{ flag, val string }{{"--userdata", cf.userdata}, {"--metadata", cf.metadata}, {"--misc", cf.misc}} {
		if f.val != "" {
			flags = append(flags, f.flag)
		}
	}
	if len(flags) > 0 {
		source += " with " + strings.Join(flags, ", ")
	}
	p, cmdline, warnings, perr := cf.params()
	if cmdline == "" && perr != nil {
		// The command line itself could not be read.
		r.add(fail(checkParams, perr.Error(), "run cpinit check on the target with /proc mounted, or pass --cmdline"))
	} else {
		r.add(decideParams(source, perr, warnings))
	}
	dataDir := p.DataDir
	if cf.data != "" {
		dataDir = cf.data
	}

	// Devices.
	var devs []devFact
	resolve := func(role string, s *devspec.Spec) devFact {
		d := devFact{Role: role, Spec: s.String()}
		if d.Path, d.Err = devspec.Resolve(*s); d.Err == nil {
			d.Sectors, d.Err = dmsnap.DeviceSectors(d.Path)
		}
		devs = append(devs, d)
		return d
	}
	var ud, meta devFact
	if p.Userdata.Value != "" {
		ud = resolve("userdata", &p.Userdata)
	}
	if p.Metadata != nil {
		meta = resolve("metadata", p.Metadata)
	}
	for _, o := range []struct {
		role string
		s    *devspec.Spec
	}{{"misc", p.Misc}, {"boot partition", p.BootPart}, {"root", p.Root}} {
		if o.s != nil {
			resolve(o.role, o.s)
		}
	}
	r.add(decideDevices(devs))

	r.add(decideDM(probeDM()))

	// userdata and the COW size begin would choose.
	ff := fsFacts{DataDir: dataDir, FSType: p.FSType, Immutable: hasCap(unix.CAP_LINUX_IMMUTABLE)}
	ff.Support, ff.Err = fiemap.CheckDir(dataDir)
	if ud.Path != "" && ud.Err == nil {
		if dev, err := dmsnap.DeviceNumber(ud.Path); err == nil {
			ff.Userdata, ff.UDDev = ud.Path, dev
		}
		if ff.Err == nil && ff.Support.Device.DMName == dmsnap.DefaultNames.Origin {
			ff.Via = ff.Support.Device.Path
		}
	}
	fsRes := decideUserdataFS(ff)
	r.add(fsRes)
	if fsRes.Status == checkFail {
		r.add(skip(checkCOWSize, "needs userdata's filesystem (above)"))
	} else {
		cf := cowFacts{DataDir: dataDir, Free: ff.Support.Free, Reserve: reserve, Unit: ff.Support.Unit, Size: p.COWSize, SizeFrom: "cpinit.cow_size="}
		if size != nil {
			cf.Size, cf.SizeFrom = *size, "--size"
		} else if p.COWSize == DefaultParams().COWSize {
			cf.SizeFrom = "the default"
		}
		r.add(decideCOWSize(cf))
	}

	// The metadata store.
	sf := storeFacts{Configured: p.Metadata != nil, Path: meta.Path, ResolveErr: meta.Err}
	if sf.Configured && sf.ResolveErr == nil {
		probeStore(&sf)
	}
	r.add(decideMetadata(sf))

	// The bootloader.
	booted := bootstate.SlotFromCmdline(cmdline)
	bf := bootFacts{Scheme: p.scheme()}
	if bf.BuildErr = p.checkBootloader(); bf.BuildErr == nil {
		var bl bootstate.Bootloader
		if bl, bf.BuildErr = newBootloader(p, booted, devspec.Resolve, false); bf.BuildErr == nil {
			if o, ok := bl.(*onBootPart); ok {
				bl = &readOnlyBootPart{o}
			}
			bf.View = bootView(bl)
		}
	}
	r.add(decideBootloader(bf))
	r.add(decideSlot(booted, bf.View != nil))

	var blocker string
	if sf.Record != nil {
		blocker = beginBlocker(sf.Record)
	} else if errors.Is(sf.LoadErr, bootstate.ErrNoRecord) {
		fresh := bootstate.NewFreshRecord()
		sf.Record = &fresh
	}
	r.add(decideCheckpoint(sf.Record, blocker))
	return r
}

// probeStore opens the store device read-write (as begin would; nothing is
// written) and loads it.
func probeStore(f *storeFacts) {
	dev, err := os.OpenFile(f.Path, os.O_RDWR, 0)
	if err != nil {
		f.OpenErr = err
		return
	}
	defer dev.Close()
	if f.Size, err = dev.Seek(0, io.SeekEnd); err != nil {
		f.OpenErr = err
		return
	}
	if f.Size < bootstate.StoreSize {
		return
	}
	f.Record, f.Info, f.LoadErr = bootstate.NewStore(readOnlyDev{dev}, f.Path).Load()
	if f.LoadErr != nil {
		f.Record = nil
		sig, err := deviceSignature(dev)
		if err != nil {
			f.LoadErr = errors.Join(f.LoadErr, err)
		}
		f.Signature = sig
	}
}

// probeDM asks device-mapper for its version and targets, and when targets
// are missing looks for the modules that bring them.
func probeDM() dmFacts {
	f := dmFacts{Control: dmsnap.DefaultControlPath, Release: kernelRelease()}
	f.ModDir = filepath.Join("/lib/modules", f.Release)
	if _, err := os.Stat(f.Control); err != nil {
		// Not created: dmsnap.Open would mknod it. Without a node the
		// driver is absent (devtmpfs makes it when dm-mod registers).
		f.ControlMissing = true
		f.ControlErr = fmt.Errorf("no %s: %w", f.Control, dmsnap.ErrNoDeviceMapper)
	} else if c, err := dmsnap.OpenControl(f.Control); err != nil {
		f.ControlErr = err
	} else {
		if f.Version, err = c.Version(); err != nil {
			f.ControlErr = err
		} else {
			f.Targets, f.TargetsErr = c.Targets()
		}
		c.Close()
	}
	if _, modules := missingDMTargets(f); len(modules) > 0 {
		for _, m := range modules {
			f.Modules = append(f.Modules, findKernelModule(f.ModDir, m))
		}
	}
	return f
}

// findKernelModule looks for module name for the kernel whose modules are
// in dir: built in (modules.builtin), in modules.dep, or, where depmod has
// not run (an unpacked kernel package), as a file under dir/kernel.
func findKernelModule(dir, name string) moduleFact {
	m := moduleFact{Name: name}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		if _, ok := findModule(string(b), name); ok {
			m.Where, m.Builtin = "built in", true
			return m
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.dep")); err == nil {
		if p, ok := findModule(string(b), name); ok {
			m.Where = filepath.Join(dir, p)
			return m
		}
	}
	want := pid1.ModuleName(name)
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && pid1.ModuleName(d.Name()) == want {
			m.Where = p
			return fs.SkipAll
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.Err = err
	}
	return m
}

// hasCap says whether this process has capability c in its effective set.
func hasCap(c uintptr) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

// readOnlyBootPart is an onBootPart that mounts the boot partition
// read-only, for check: loading its state must not write the filesystem
// (a read-write FAT mount marks the volume dirty until it is unmounted).
type readOnlyBootPart struct{ o *onBootPart }

func (r *readOnlyBootPart) Describe() string { return r.o.Describe() }

func (r *readOnlyBootPart) Load() (bootstate.ABState, error) {
	dir, err := os.MkdirTemp(checkScratch(), "cpinit-check-bootpart-")
	if err != nil {
		return nil, fmt.Errorf("mount point for boot partition %s: %w", r.o.dev, err)
	}
	defer os.Remove(dir)
	if err := unix.Mount(r.o.dev, dir, r.o.fstype, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return nil, &os.PathError{Op: "mount", Path: dir, Err: fmt.Errorf("boot partition %s (%s; cpinit.bootpartfs=): %w", r.o.dev, r.o.fstype, err)}
	}
	s, err := r.o.inner(dir).Load()
	if uerr := unix.Unmount(dir, 0); uerr != nil {
		err = errors.Join(err, &os.PathError{Op: "umount", Path: dir, Err: uerr})
	}
	return s, err
}

func (r *readOnlyBootPart) Save(bootstate.ABState) error {
	return errors.New("cpinit check writes nothing")
}

// checkScratch is where check makes its one mount point: /run (a tmpfs),
// else the temporary directory.
func checkScratch() string {
	if _, err := os.Stat("/run"); err == nil {
		return "/run"
	}
	return os.TempDir()
}
