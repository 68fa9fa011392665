package main

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cpinit/cpinit/internal/cmdline"
	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/internal/pid1"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// Params are the cpinit.* kernel parameters. Each field documents its key and
// default; docs/ lists them for users.
type Params struct {
	// cpinit.userdata= (required): the userdata block device, as a path,
	// UUID=, LABEL=, PARTUUID= or PARTLABEL=.
	Userdata devspec.Spec
	// cpinit.fstype= (default ext4): the userdata filesystem type.
	FSType string
	// cpinit.mountopts= (default none): extra mount(8)-style options for
	// userdata, e.g. "noatime,errors=remount-ro"; flag options (noatime,
	// lazytime, sync...) become mount(2) flags, the rest is passed to the
	// filesystem.
	MountOpts string
	// cpinit.root= (optional): the system root to switch to, mounted
	// read-only. Userdata is mounted at <root><datadir>. Without it,
	// userdata is mounted at <datadir> in the initramfs and there is no
	// next init unless cpinit.init names one in the initramfs.
	Root *devspec.Spec
	// cpinit.rootfstype= (default ext4).
	RootFSType string
	// cpinit.datadir= (default /data): where userdata is mounted, relative
	// to the new root.
	DataDir string
	// cpinit.init= (default /sbin/init): the next init, exec'd as PID 1
	// after switch_root. If it does not exist, cpinit powers off cleanly.
	Init string
	// cpinit.rootwait= (default 10s): how long to wait for the userdata and
	// root devices to appear, as a Go duration or whole seconds.
	RootWait time.Duration
	// cpinit.on_fatal= (default halt): halt, reboot or poweroff after a
	// fatal error has been logged. Reboot hands the decision back to the
	// bootloader (which may then fall back to the other slot); halt keeps
	// the message on the screen for a person.
	OnFatal pid1.StopAction
	// cpinit.metadata= (optional): the metadata store, a small device or
	// partition outside userdata that holds the checkpoint record. Without
	// it there are no checkpoints: userdata is mounted as it is.
	Metadata *devspec.Spec
	// cpinit.misc= (optional): the Android misc partition whose
	// bootloader_control block counts A/B boot tries. Without it cpinit
	// counts trial boots itself (native counter).
	Misc *devspec.Spec
	// cpinit.bootloader= (default android-misc with cpinit.misc=, else
	// none): whose A/B state guards the trial. android-misc, uboot-rauc,
	// uboot-mender, uboot-bootcount, grub-rauc, systemd-boot, or none
	// (cpinit's own native counter, which cannot switch slots). See
	// docs/bootloader-*.md.
	Bootloader string
	// cpinit.ubootenv= (uboot-*; default: /etc/fw_env.config): where the
	// U-Boot environment is, "dev:offset:size[,dev:offset:size]" (two
	// areas: redundant copies), offsets and sizes in hex (0x...) or
	// decimal (bootstate.ParseUBootEnvLocation).
	UBootEnv string
	// cpinit.bootpart= (grub-rauc, systemd-boot): the partition that
	// holds the grubenv or the ESP's loader/entries, mounted by cpinit
	// for each read or write. cpinit.bootpartfs= (default vfat) is its
	// filesystem type.
	BootPart   *devspec.Spec
	BootPartFS string
	// cpinit.grubenv= (grub-rauc; default /grub/grubenv): the grubenv
	// file's path on cpinit.bootpart.
	GrubEnv string
	// cpinit.slotnames= (optional): the bootloader's names for cpinit's
	// slots a and b, "a=X,b=Y": RAUC bootnames (default a=A,b=B), Mender
	// partition numbers (a=2,b=3), the bootcount scheme's slot values,
	// systemd-boot entry ids.
	SlotNames string
	// cpinit.abort=1: roll back the pending update at this boot (e.g. from
	// a bootloader menu entry).
	Abort bool
	// cpinit.merge= (default defaultMergeMethod): how a rollback copies
	// the saved chunks back. mergeRestore: offline, by cpinit itself
	// (dmsnap.Restore); mergeKernel: the kernel's snapshot-merge. `cpinit
	// merge` takes the same default for its --method.
	Merge string
	// cpinit.recovery=1: recovery mode. PID 1 neither maps nor mounts
	// userdata and does not read the metadata store; it mounts cpinit.root
	// and hands over to its init as usual, so an operator (or a recovery
	// system) can run `cpinit status` and `cpinit recover keep-current`
	// after a boot stopped for recovery. Userdata is never mounted raw
	// while a checkpoint may exist, so there is no "mount it anyway" mode.
	Recovery bool
	// cpinit.cow_size= (default 50%): the COW file size `cpinit begin`
	// allocates when not given --size: a size (512M, 2G) or a percentage
	// of userdata's free space above the reserve (see sizing.go).
	COWSize cowSize
	// cpinit.slot= (or androidboot.slot_suffix=): the slot this kernel was
	// booted from. Read by bootstate.SlotFromCmdline; listed here so the
	// key is known.
}

// DefaultParams returns the defaults documented on Params.
func DefaultParams() Params {
	return Params{
		FSType:     "ext4",
		RootFSType: "ext4",
		DataDir:    "/data",
		Init:       "/sbin/init",
		RootWait:   10 * time.Second,
		OnFatal:    pid1.Halt,
		COWSize:    cowSize{percent: defaultCOWPercent},
		BootPartFS: "vfat",
		GrubEnv:    "/grub/grubenv",
		Merge:      defaultMergeMethod,
	}
}

// The rollback methods (cpinit.merge=, `cpinit merge --method`).
const (
	mergeKernel  = "kernel"  // the kernel's snapshot-merge
	mergeRestore = "restore" // dmsnap.Restore: cpinit copies the chunks home offline
)

// defaultMergeMethod is how a rollback runs when cpinit.merge= does not
// say: PID 1 and `cpinit merge` both take it from here, so switching the
// default is this one line (and the default column of docs/params.md).
// The offline restore is the default (issue 17): it rolls a scattered COW
// back tens of times faster than the kernel's merge (docs/BENCHMARKS.md,
// "restore") and the power-cut campaigns (TestPowerCut, TestCacheCut) cut
// inside it. The kernel's merge stays for a COW the restore cannot read
// (another store version, a COW on another device) and on request.
const defaultMergeMethod = mergeRestore

// validMergeMethod reports whether m names a rollback method.
func validMergeMethod(m string) bool { return m == mergeKernel || m == mergeRestore }

// ParseParams parses the cpinit.* parameters from a kernel command line
// (the contents of /proc/cmdline), split as the kernel splits it
// (internal/cmdline): quotes group and are dropped, the last occurrence of
// a key is the one that counts (earlier ones are not even checked), and
// words after "--" are init's arguments, not kernel parameters. Other
// parameters are ignored. Unknown cpinit.* keys, and cpinit.* words after
// "--", are returned as warnings, not errors: a typo must not stop a
// device from booting, but it must be visible on the console.
//
// On error the returned Params still carry every value that did parse, so a
// caller can honour cpinit.on_fatal when reporting the error.
func ParseParams(line string) (Params, []string, error) {
	p := DefaultParams()
	var warnings []string
	var errs []error
	haveUserdata := false
	c := cmdline.Parse(line)
	for _, a := range c.Init {
		if strings.HasPrefix(a.Key, "cpinit.") {
			warnings = append(warnings, fmt.Sprintf("ignoring %s after \"--\" on the kernel command line: words after \"--\" are init's arguments, not kernel parameters; move it before \"--\"", a))
		}
	}
	for _, a := range c.Last() {
		key, val, hasVal, w := a.Key, a.Value, a.HasValue, a.String()
		if !strings.HasPrefix(key, "cpinit.") {
			continue
		}
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("kernel parameter %s: %s", w, fmt.Sprintf(format, args...)))
		}
		if !hasVal || val == "" {
			bad("needs a value (%s=...)", key)
			continue
		}
		switch key {
		case "cpinit.userdata":
			s, err := devspec.Parse(val)
			if err != nil {
				bad("%v", err)
				continue
			}
			p.Userdata, haveUserdata = s, true
		case "cpinit.root":
			s, err := devspec.Parse(val)
			if err != nil {
				bad("%v", err)
				continue
			}
			p.Root = &s
		case "cpinit.fstype":
			p.FSType = val
		case "cpinit.rootfstype":
			p.RootFSType = val
		case "cpinit.mountopts":
			p.MountOpts = val
		case "cpinit.datadir", "cpinit.init":
			if !strings.HasPrefix(val, "/") {
				bad("must be an absolute path")
				continue
			}
			if key == "cpinit.init" {
				p.Init = val
			} else {
				p.DataDir = val
			}
		case "cpinit.rootwait":
			d, err := parseDuration(val)
			if err != nil {
				bad("%v", err)
				continue
			}
			p.RootWait = d
		case "cpinit.bootloader":
			if !slices.Contains(bootloaderSchemes, val) {
				bad("unknown bootloader scheme (known: %s)", strings.Join(bootloaderSchemes, " "))
				continue
			}
			p.Bootloader = val
		case "cpinit.ubootenv":
			if _, err := bootstate.ParseUBootEnvLocation(val); err != nil {
				bad("%v", err)
				continue
			}
			p.UBootEnv = val
		case "cpinit.bootpart":
			sp, err := devspec.Parse(val)
			if err != nil {
				bad("%v", err)
				continue
			}
			p.BootPart = &sp
		case "cpinit.bootpartfs":
			p.BootPartFS = val
		case "cpinit.grubenv":
			if !strings.HasPrefix(val, "/") {
				bad("must be an absolute path on cpinit.bootpart")
				continue
			}
			p.GrubEnv = val
		case "cpinit.slotnames":
			if _, err := bootstate.ParseUBootSlotNames(val); err != nil {
				bad("%v", err)
				continue
			}
			p.SlotNames = val
		case "cpinit.metadata", "cpinit.misc":
			sp, err := devspec.Parse(val)
			if err != nil {
				bad("%v", err)
				continue
			}
			if key == "cpinit.metadata" {
				p.Metadata = &sp
			} else {
				p.Misc = &sp
			}
		case "cpinit.abort", "cpinit.recovery":
			var on bool
			switch val {
			case "1", "yes", "true":
				on = true
			case "0", "no", "false":
			default:
				bad("want 1 or 0")
				continue
			}
			if key == "cpinit.abort" {
				p.Abort = on
			} else {
				p.Recovery = on
			}
		case "cpinit.merge":
			if !validMergeMethod(val) {
				bad("want %s or %s", mergeKernel, mergeRestore)
				continue
			}
			p.Merge = val
		case "cpinit.cow_size":
			c, err := parseCOWSize(val)
			if err != nil {
				bad("%v", err)
				continue
			}
			p.COWSize = c
		case "cpinit.slot":
			// bootstate.SlotFromCmdline reads it.
		case "cpinit.on_fatal":
			a, err := pid1.ParseStopAction(val)
			if err != nil {
				bad("%v", err)
				continue
			}
			p.OnFatal = a
		default:
			warnings = append(warnings, fmt.Sprintf("ignoring unknown kernel parameter %s (known: %s)", w, strings.Join(knownKeys, " ")))
		}
	}
	if err := p.checkBootloader(); err != nil {
		errs = append(errs, err)
	}
	if !haveUserdata && len(errs) == 0 {
		errs = append(errs, errors.New("kernel parameter cpinit.userdata= is missing: name the userdata device (a path, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"))
	}
	return p, warnings, errors.Join(errs...)
}

var knownKeys = func() []string {
	k := []string{"cpinit.userdata", "cpinit.root", "cpinit.fstype", "cpinit.rootfstype", "cpinit.mountopts",
		"cpinit.datadir", "cpinit.init", "cpinit.rootwait", "cpinit.on_fatal", "cpinit.metadata", "cpinit.misc",
		"cpinit.abort", "cpinit.recovery", "cpinit.slot", "cpinit.cow_size", "cpinit.merge", "cpinit.bootloader", "cpinit.ubootenv",
		"cpinit.bootpart", "cpinit.bootpartfs", "cpinit.grubenv", "cpinit.slotnames"}
	sort.Strings(k)
	return k
}()

func parseDuration(s string) (time.Duration, error) {
	var secs uint
	if _, err := fmt.Sscanf(s, "%d", &secs); err == nil && fmt.Sprint(secs) == s {
		return time.Duration(secs) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("want a duration such as 10s or whole seconds, got %q", s)
	}
	return d, nil
}

// The cpinit.bootloader= schemes.
const (
	schemeNone        = "none"
	schemeAndroidMisc = "android-misc"
	schemeUBootRAUC   = bootstate.UBootSchemeRAUC
	schemeUBootMender = bootstate.UBootSchemeMender
	schemeUBootCount  = bootstate.UBootSchemeBootcount
	schemeGrubRAUC    = "grub-rauc"
	schemeSystemdBoot = "systemd-boot"
)

var bootloaderSchemes = []string{schemeNone, schemeAndroidMisc, schemeUBootRAUC, schemeUBootMender, schemeUBootCount, schemeGrubRAUC, schemeSystemdBoot}

// scheme is cpinit.bootloader= with its default: android-misc where a misc
// partition is named, else none.
func (p *Params) scheme() string {
	switch {
	case p.Bootloader != "":
		return p.Bootloader
	case p.Misc != nil:
		return schemeAndroidMisc
	}
	return schemeNone
}

// checkBootloader refuses parameters that name a scheme without the place
// its state lives in (a device must never be guessed).
func (p *Params) checkBootloader() error {
	if p.Misc != nil && p.scheme() != schemeAndroidMisc {
		return fmt.Errorf("kernel parameters cpinit.misc= and cpinit.bootloader=%s name two bootloaders: keep the one this device boots with", p.scheme())
	}
	switch p.scheme() {
	case schemeAndroidMisc:
		if p.Misc == nil {
			return errors.New("kernel parameter cpinit.bootloader=android-misc needs cpinit.misc= (the misc partition)")
		}
	case schemeGrubRAUC, schemeSystemdBoot:
		if p.BootPart == nil {
			return fmt.Errorf("kernel parameter cpinit.bootloader=%s needs cpinit.bootpart= (the partition that holds its state)", p.scheme())
		}
	}
	return nil
}
