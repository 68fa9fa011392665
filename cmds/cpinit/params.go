package main

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/internal/pid1"
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
	// cpinit.abort=1: roll back the pending update at this boot (e.g. from
	// a bootloader menu entry).
	Abort bool
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
	}
}

// SplitCmdline splits a kernel command line into words the way the kernel
// does (lib/cmdline.c next_arg): whitespace separates, double quotes group,
// and the quotes themselves are dropped.
func SplitCmdline(s string) []string {
	var words []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		words = append(words, cur.String())
	}
	return words
}

// ParseParams parses the cpinit.* parameters from a kernel command line
// (the contents of /proc/cmdline). Other parameters are ignored. Unknown
// cpinit.* keys are returned as warnings, not errors: a typo must not stop a
// device from booting, but it must be visible on the console.
//
// On error the returned Params still carry every value that did parse, so a
// caller can honour cpinit.on_fatal when reporting the error.
func ParseParams(cmdline string) (Params, []string, error) {
	p := DefaultParams()
	var warnings []string
	var errs []error
	haveUserdata := false
	for _, w := range SplitCmdline(cmdline) {
		key, val, hasVal := strings.Cut(w, "=")
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
	if !haveUserdata && len(errs) == 0 {
		errs = append(errs, errors.New("kernel parameter cpinit.userdata= is missing: name the userdata device (a path, UUID=, LABEL=, PARTUUID= or PARTLABEL=)"))
	}
	return p, warnings, errors.Join(errs...)
}

var knownKeys = func() []string {
	k := []string{"cpinit.userdata", "cpinit.root", "cpinit.fstype", "cpinit.rootfstype", "cpinit.mountopts",
		"cpinit.datadir", "cpinit.init", "cpinit.rootwait", "cpinit.on_fatal", "cpinit.metadata", "cpinit.misc",
		"cpinit.abort", "cpinit.recovery", "cpinit.slot", "cpinit.cow_size"}
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
