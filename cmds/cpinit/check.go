package main

// `cpinit check`: a preflight an integrator runs on the target (and in CI)
// before the first update. Android's `vdc checkpoint supportsCheckpoint`
// answers one bit from fstab flags; this looks at every part a checkpoint
// needs and says, one line each, what it found and how to fix what is
// missing. It writes nothing.
//
// This file is the pure part: the report, its output, and the decision for
// each probe from the facts the probes (check_linux.go) gathered.

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/cpinit/cpinit/internal/pid1"
	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"github.com/cpinit/cpinit/pkg/fiemap"
)

// A check's outcome. Only FAIL makes the report (and the exit status) fail:
// WARN is something to look at that does not stop a checkpoint, SKIP a
// check that does not apply or could not run because an earlier one
// failed.
const (
	checkPass = "PASS"
	checkWarn = "WARN"
	checkSkip = "SKIP"
	checkFail = "FAIL"
)

// The checks, in the order they run and print.
const (
	checkParams     = "params"
	checkDevices    = "devices"
	checkDM         = "device-mapper"
	checkUserdataFS = "userdata-fs"
	checkCOWSize    = "cow-size"
	checkMetadata   = "metadata"
	checkBootloader = "bootloader"
	checkSlot       = "slot"
	checkCheckpoint = "checkpoint"
)

// CheckResult is one check of `cpinit check`.
type CheckResult struct {
	Name   string `json:"name"`
	Status string `json:"status"` // PASS, WARN, SKIP or FAIL
	OK     bool   `json:"ok"`     // status is not FAIL
	Detail string `json:"detail"` // what was found
	Fix    string `json:"fix,omitempty"`
}

// CheckReport is what `cpinit check --json` prints.
type CheckReport struct {
	OK     bool          `json:"ok"` // no check failed
	Checks []CheckResult `json:"checks"`
}

func (r *CheckReport) add(c CheckResult) {
	c.OK = c.Status != checkFail
	r.Checks = append(r.Checks, c)
	r.OK = true
	for _, c := range r.Checks {
		r.OK = r.OK && c.OK
	}
}

// failed counts the failed checks.
func (r *CheckReport) failed() int {
	n := 0
	for _, c := range r.Checks {
		if !c.OK {
			n++
		}
	}
	return n
}

// printCheck is `cpinit check` for a person: one line per check, the fix
// indented under a check that is not PASS, and a verdict.
func printCheck(w io.Writer, r *CheckReport) {
	width := 0
	for _, c := range r.Checks {
		width = max(width, len(c.Name))
	}
	for _, c := range r.Checks {
		fmt.Fprintf(w, "%-4s  %-*s  %s\n", c.Status, width, c.Name, c.Detail)
		if c.Fix != "" {
			fmt.Fprintf(w, "      %-*s  fix: %s\n", width, "", c.Fix)
		}
	}
	if r.OK {
		fmt.Fprintf(w, "ok: this system can take a checkpoint (%d checks)\n", len(r.Checks))
	} else {
		fmt.Fprintf(w, "FAILED: %d of %d checks\n", r.failed(), len(r.Checks))
	}
}

func pass(name, detail string) CheckResult {
	return CheckResult{Name: name, Status: checkPass, Detail: detail}
}
func warn(name, detail, fix string) CheckResult {
	return CheckResult{Name: name, Status: checkWarn, Detail: detail, Fix: fix}
}
func skip(name, detail string) CheckResult {
	return CheckResult{Name: name, Status: checkSkip, Detail: detail}
}
func fail(name, detail, fix string) CheckResult {
	return CheckResult{Name: name, Status: checkFail, Detail: detail, Fix: fix}
}

// decideParams: the cpinit.* parameters, after the command line flags
// override them, parse.
func decideParams(source string, err error, warnings []string) CheckResult {
	if err != nil {
		return fail(checkParams, fmt.Sprintf("%s: %v", source, err),
			"fix the cpinit.* kernel parameters in the bootloader configuration (docs/params.md; `cpinit params` shows how they parse)")
	}
	if len(warnings) > 0 {
		return warn(checkParams, fmt.Sprintf("%s parse, with warnings: %s", source, strings.Join(warnings, "; ")),
			"remove or correct the parameters warned about (docs/params.md)")
	}
	return pass(checkParams, source+" parse")
}

// devFact is one device spec of the parameters and what it resolved to.
type devFact struct {
	Role    string // userdata, metadata, misc, root, boot partition
	Spec    string
	Path    string // resolved; "" on error
	Sectors uint64
	Err     error
}

// decideDevices: every device the parameters name resolves to one block
// device.
func decideDevices(devs []devFact) CheckResult {
	var ok, bad []string
	for _, d := range devs {
		if d.Err != nil {
			bad = append(bad, fmt.Sprintf("%s %s: %v", d.Role, d.Spec, d.Err))
			continue
		}
		s := fmt.Sprintf("%s %s", d.Role, d.Path)
		if d.Spec != d.Path {
			s = fmt.Sprintf("%s %s = %s", d.Role, d.Spec, d.Path)
		}
		ok = append(ok, fmt.Sprintf("%s (%s)", s, sizeText(d.Sectors*512)))
	}
	if len(bad) > 0 {
		return fail(checkDevices, strings.Join(bad, "; "),
			"make each cpinit.* device parameter (or flag) name exactly one block device: a path, UUID=, LABEL=, PARTUUID= or PARTLABEL= (docs/params.md)")
	}
	if len(ok) == 0 {
		return skip(checkDevices, "no device parameters to resolve")
	}
	return pass(checkDevices, strings.Join(ok, "; "))
}

// moduleFact is where a kernel module was found for the running kernel.
type moduleFact struct {
	Name    string
	Where   string // the .ko path, or "built in"; "" if not found
	Err     error  // why the module directory could not be read
	Builtin bool
}

// dmFacts is what the device-mapper probe found.
type dmFacts struct {
	Control        string // the control node
	ControlMissing bool   // it does not exist (not opened: check creates nothing)
	ControlErr     error  // opening it; nil: open
	Version        [3]uint32
	Targets        []dmsnap.TargetVersion
	TargetsErr     error
	Release        string // uname -r
	ModDir         string // /lib/modules/<release>
	// Modules are dm-mod and dm-snapshot as found in ModDir; looked up
	// only when targets are missing.
	Modules []moduleFact
}

// dmTargets are what cpinit maps with, and the module each comes from.
var dmTargets = []struct{ name, module string }{
	{"linear", "dm-mod"}, {"snapshot", "dm-snapshot"}, {"snapshot-origin", "dm-snapshot"}, {"snapshot-merge", "dm-snapshot"},
}

// missingDMTargets lists what f lacks of dmTargets, and the modules that
// would bring them.
func missingDMTargets(f dmFacts) (missing, modules []string) {
	have := map[string]dmsnap.TargetVersion{}
	if f.ControlErr == nil && f.TargetsErr == nil {
		for _, t := range f.Targets {
			have[t.Name] = t
		}
	}
	for _, t := range dmTargets {
		if _, ok := have[t.name]; !ok {
			missing = append(missing, t.name)
			if len(modules) == 0 || modules[len(modules)-1] != t.module {
				modules = append(modules, t.module)
			}
		}
	}
	return missing, modules
}

const dmFix = "build the kernel with CONFIG_BLK_DEV_DM and CONFIG_DM_SNAPSHOT (y or m) and install its modules; " +
	"the initramfs must carry dm-mod, dm-bufio and dm-snapshot (initramfs/modules.list; the initramfs-tools and dracut hooks add them)"

// decideDM: device-mapper answers and has the targets cpinit needs, or the
// modules that provide them are there for the running kernel.
func decideDM(f dmFacts) CheckResult {
	missing, modules := missingDMTargets(f)
	if len(missing) == 0 {
		var ts []string
		for _, want := range dmTargets {
			for _, t := range f.Targets {
				if t.Name == want.name {
					ts = append(ts, fmt.Sprintf("%s %d.%d.%d", t.Name, t.Version[0], t.Version[1], t.Version[2]))
				}
			}
		}
		return pass(checkDM, fmt.Sprintf("device-mapper %d.%d.%d at %s; targets %s",
			f.Version[0], f.Version[1], f.Version[2], f.Control, strings.Join(ts, ", ")))
	}
	var why string
	switch {
	case f.ControlMissing:
		why = fmt.Sprintf("device-mapper is not loaded (no %s)", f.Control)
	case f.ControlErr != nil && !errors.Is(f.ControlErr, dmsnap.ErrNoDeviceMapper):
		// Present but unusable by this process (permissions, a node with
		// nothing behind it): the modules would not help.
		return fail(checkDM, fmt.Sprintf("device-mapper: %v", f.ControlErr),
			"run cpinit check as root, as cpinit runs; if "+f.Control+" is stale, remove it")
	case f.ControlErr != nil:
		why = fmt.Sprintf("device-mapper is not loaded (%v)", f.ControlErr)
	case f.TargetsErr != nil:
		return fail(checkDM, fmt.Sprintf("device-mapper %d.%d.%d answers, but listing its targets failed: %v", f.Version[0], f.Version[1], f.Version[2], f.TargetsErr),
			"run cpinit check as root; a kernel whose DM_LIST_VERSIONS fails cannot be checked further")
	default:
		why = fmt.Sprintf("device-mapper %d.%d.%d does not list the target %s", f.Version[0], f.Version[1], f.Version[2], strings.Join(missing, ", "))
	}
	var found, absent []string
	for _, name := range modules {
		m := moduleFact{Name: name}
		for _, x := range f.Modules {
			if x.Name == name {
				m = x
			}
		}
		switch {
		case m.Where != "":
			found = append(found, fmt.Sprintf("%s (%s)", name, m.Where))
		case m.Err != nil:
			absent = append(absent, fmt.Sprintf("%s (%v)", name, m.Err))
		default:
			absent = append(absent, name)
		}
	}
	if len(absent) > 0 {
		return fail(checkDM, fmt.Sprintf("the kernel lacks dm-snapshot: %s, and there is no module %s in %s (modules.builtin, modules.dep, the module files)",
			why, strings.Join(absent, ", "), f.ModDir), dmFix)
	}
	return pass(checkDM, fmt.Sprintf("%s; the modules are there: %s (cpinit loads them when a checkpoint needs them, from the initramfs, which must carry them too)",
		why, strings.Join(found, ", ")))
}

// findModule looks for module name (dashes and underscores alike, any
// compression suffix) in a modules.dep or modules.builtin text, whose lines
// start with the module's path relative to /lib/modules/<release>.
func findModule(text, name string) (string, bool) {
	want := pid1.ModuleName(name)
	for _, line := range strings.Split(text, "\n") {
		p, _, _ := strings.Cut(line, ":")
		p = strings.TrimSpace(p)
		if p != "" && pid1.ModuleName(p) == want {
			return p, true
		}
	}
	return "", false
}

// fsFacts is what the userdata filesystem probe found.
type fsFacts struct {
	DataDir  string
	FSType   string // cpinit.fstype= (what PID 1 mounts it as)
	Support  fiemap.DirSupport
	Err      error  // fiemap.CheckDir's
	Userdata string // userdata's device path; "" if it did not resolve
	UDDev    dmsnap.Dev
	// Via is the dm device userdata is mounted through during a trial
	// (cp-origin), "" if directly.
	Via string
	// Immutable: this process may set the immutable flag
	// (CAP_LINUX_IMMUTABLE).
	Immutable bool
}

// decideUserdataFS: userdata is mounted read-write at the data directory,
// on a filesystem where the COW file can be allocated and pinned.
func decideUserdataFS(f fsFacts) CheckResult {
	s := f.Support
	switch {
	case errors.Is(f.Err, fiemap.ErrUnsupportedFS) && s.FSType != "" && s.FSType != "ext4" && s.FSType != "f2fs":
		return fail(checkUserdataFS, fmt.Sprintf("%s is %s: cpinit pins the COW file only on ext4 and f2fs (fallocate, FIEMAP, the immutable flag; f2fs's pin_file)", f.DataDir, s.FSType),
			"format userdata as ext4, or f2fs with cpinit.fstype=f2fs (docs/integration.md)")
	case f.Err != nil:
		return fail(checkUserdataFS, fmt.Sprintf("%s: %v", f.DataDir, f.Err),
			"mount userdata read-write at the data directory (cpinit.datadir=, --data); on f2fs the kernel needs pin_file (Linux 4.20 and later)")
	case s.ReadOnly:
		return fail(checkUserdataFS, fmt.Sprintf("%s (%s) is mounted read-only: begin allocates the COW file in it", f.DataDir, s.FSType),
			"run cpinit check and begin with userdata mounted read-write")
	case f.Userdata != "" && f.Via == "" && (s.Device.Major != f.UDDev.Major || s.Device.Minor != f.UDDev.Minor):
		return fail(checkUserdataFS, fmt.Sprintf("%s is on %s (%s), not on userdata %s (%s)", f.DataDir, s.Device.Path, s.Device, f.Userdata, f.UDDev),
			"pass --data with where userdata is mounted, or fix cpinit.userdata= to name the partition mounted there")
	case f.FSType != "" && f.FSType != s.FSType:
		return fail(checkUserdataFS, fmt.Sprintf("%s is %s, but cpinit.fstype=%s: cpinit would mount it as %s at boot", f.DataDir, s.FSType, f.FSType, f.FSType),
			"set cpinit.fstype="+s.FSType)
	case !f.Immutable:
		return fail(checkUserdataFS, fmt.Sprintf("%s is %s, but this process may not set the immutable flag (no CAP_LINUX_IMMUTABLE) that pins the COW file", f.DataDir, s.FSType),
			"run cpinit (check, begin) as root")
	}
	how := "fallocate, FIEMAP and the immutable flag pin the COW file"
	if s.FSType == "f2fs" {
		how = fmt.Sprintf("pin_file, fallocate and FIEMAP pin the COW file in %s sections", sizeText(s.Unit))
	}
	on := s.Device.Path
	if f.Via != "" {
		on = fmt.Sprintf("%s through %s", f.Userdata, f.Via)
	}
	return pass(checkUserdataFS, fmt.Sprintf("%s on %s at %s, %d-byte blocks: %s", s.FSType, on, f.DataDir, s.BlockSize, how))
}

// cowFacts is what begin would see: free space, the reserve it keeps and
// the size asked for.
type cowFacts struct {
	DataDir       string
	Free, Reserve uint64
	Unit          uint64 // allocation unit (fiemap.DirSupport.Unit)
	Size          cowSize
	SizeFrom      string // where Size came from: --size, cpinit.cow_size=, the default
}

// decideCOWSize: the COW file begin would allocate with these settings
// (sizing.go) is large enough to be useful and fits.
func decideCOWSize(f cowFacts) CheckResult {
	want := f.Size.resolve(f.Free, f.Reserve)
	if f.Unit > 0 {
		want = want / f.Unit * f.Unit
	}
	what := fmt.Sprintf("begin would allocate %s (%s, %s) of the %s free in %s, keeping --reserve %s",
		sizeText(want), f.Size, f.SizeFrom, sizeText(f.Free), f.DataDir, sizeText(f.Reserve))
	if want < minCOW {
		return fail(checkCOWSize, what+fmt.Sprintf(": less than the %s a checkpoint needs to be useful", sizeText(minCOW)),
			"free space in userdata, lower --reserve, or size the COW (cpinit.cow_size=, begin --size; docs/cow-sizing.md)")
	}
	if want+f.Reserve > f.Free {
		return fail(checkCOWSize, what+": it does not fit",
			fmt.Sprintf("a smaller --size (at most %s here), a lower --reserve, or free space in userdata", sizeText(f.Free-min(f.Free, f.Reserve))))
	}
	return pass(checkCOWSize, what+": it fits")
}

// storeFacts is what the metadata store probe found.
type storeFacts struct {
	Configured bool   // cpinit.metadata= or --metadata given
	Path       string // resolved device; "" if it did not resolve
	ResolveErr error
	OpenErr    error // opening it read-write
	Size       int64
	Record     *bootstate.Record
	Info       bootstate.LoadInfo
	LoadErr    error
	Signature  string // fsSignature of its start, if any
}

// decideMetadata: the metadata store is blank or cpinit's, and this
// process can read and write it.
func decideMetadata(f storeFacts) CheckResult {
	wipe := fmt.Sprintf("if it really is the metadata partition and nothing on it is needed, zero its first %d MiB (`dd if=/dev/zero of=%s bs=1M count=%d conv=fsync`)",
		bootstate.StoreSize>>20, f.Path, bootstate.StoreSize>>20)
	var fe *bootstate.ForeignDataError
	switch {
	case !f.Configured:
		return fail(checkMetadata, "no metadata store: cpinit.metadata= is not set, so checkpoints are off",
			"add cpinit.metadata= naming a partition of at least 8 MiB outside userdata (docs/integration.md), or pass --metadata")
	case f.ResolveErr != nil:
		return fail(checkMetadata, fmt.Sprintf("the metadata store does not resolve: %v", f.ResolveErr),
			"fix cpinit.metadata= to name the metadata partition")
	case f.OpenErr != nil:
		return fail(checkMetadata, fmt.Sprintf("%s cannot be opened for reading and writing: %v", f.Path, f.OpenErr),
			"run cpinit as root; the device must not be read-only (blockdev --setrw)")
	case f.Size < bootstate.StoreSize:
		return fail(checkMetadata, fmt.Sprintf("%s has %s, the store needs %s", f.Path, sizeText(uint64(f.Size)), sizeText(bootstate.StoreSize)),
			"give the metadata store a partition of at least 8 MiB")
	case f.LoadErr == nil && f.Record != nil:
		return pass(checkMetadata, fmt.Sprintf("%s holds a cpinit store, state %s (copy A: %v; copy B: %v); readable and writable",
			f.Path, f.Record.State, f.Info.Copies[0], f.Info.Copies[1]))
	case errors.Is(f.LoadErr, bootstate.ErrNoRecord):
		return pass(checkMetadata, fmt.Sprintf("%s is blank (its first %s all zero): cpinit initialises it at the first begin; readable and writable", f.Path, sizeText(bootstate.StoreSize)))
	case f.Signature != "":
		return fail(checkMetadata, fmt.Sprintf("%s is not blank and not a cpinit store: wrong device? It holds %s", f.Path, f.Signature),
			"fix cpinit.metadata= to name the metadata partition; "+wipe)
	case errors.As(f.LoadErr, &fe):
		return fail(checkMetadata, fmt.Sprintf("%s is not blank and not a cpinit store: wrong device? (first non-zero bytes at offset %d: % x)", f.Path, fe.Offset, fe.Data),
			"fix cpinit.metadata= to name the metadata partition; "+wipe)
	case errors.Is(f.LoadErr, bootstate.ErrStoreCorrupt), errors.Is(f.LoadErr, bootstate.ErrStoreAmbiguous):
		return fail(checkMetadata, fmt.Sprintf("%s is a damaged cpinit store: %v", f.Path, f.LoadErr),
			fmt.Sprintf("a boot stops for recovery on it: boot with cpinit.recovery=1 and run `%s --yes` (keeps the current userdata)", bootstate.CmdKeepCurrent))
	}
	return fail(checkMetadata, fmt.Sprintf("%s: %v", f.Path, f.LoadErr), "check the metadata device (dmesg for I/O errors)")
}

// bootFacts is what the bootloader probe found.
type bootFacts struct {
	Scheme   string
	BuildErr error // newBootloader's: the configuration is incomplete
	View     *BootView
}

// decideBootloader: the configured bootloader's A/B state reads.
func decideBootloader(f bootFacts) CheckResult {
	switch {
	case f.BuildErr != nil:
		return fail(checkBootloader, fmt.Sprintf("cpinit.bootloader=%s: %v", f.Scheme, f.BuildErr),
			"give the bootloader's state its parameters (docs/params.md, docs/bootloader-*.md)")
	case f.View == nil:
		return skip(checkBootloader, "none configured (no cpinit.bootloader=, no cpinit.misc=): cpinit's native counter counts trial boots (begin --tries)")
	case f.View.Error != "":
		return fail(checkBootloader, fmt.Sprintf("%s state in %s cannot be read: %s", f.Scheme, f.View.Where, f.View.Error),
			"fix cpinit.bootloader= and the parameters that locate its state (cpinit.misc=, cpinit.ubootenv=, cpinit.bootpart=; docs/bootloader-*.md)")
	}
	var slots []string
	for _, s := range f.View.Slots {
		d := s.Name + " bootable"
		if !s.Bootable {
			d = s.Name + " not bootable"
		}
		if s.Successful != nil && *s.Successful {
			d += ", successful"
		}
		if s.Tries != nil {
			d += fmt.Sprintf(", %d tries", *s.Tries)
		}
		slots = append(slots, d)
	}
	next := f.View.Next
	if next == "" {
		next = "none bootable"
	}
	return pass(checkBootloader, fmt.Sprintf("%s state in %s reads: next boot %s; %s", f.Scheme, f.View.Where, next, strings.Join(slots, "; ")))
}

// decideSlot: the kernel command line says which slot is running, which
// begin needs to pick the update's slot when a bootloader switches them.
func decideSlot(booted string, haveBootloader bool) CheckResult {
	if idx := bootstate.SlotIndex(booted); idx >= 0 {
		return pass(checkSlot, fmt.Sprintf("running slot %s: begin arms the checkpoint for slot %s", booted, bootstate.SlotSuffixes[1-idx%2]))
	}
	what := "the kernel command line names no slot (cpinit.slot=, androidboot.slot_suffix=, androidboot.slot=)"
	if booted != "" {
		what = fmt.Sprintf("the kernel command line names slot %q, not _a or _b", booted)
	}
	if !haveBootloader {
		return warn(checkSlot, what+": cpinit cannot tell the update's boot from the old slot's by its slot",
			"have the bootloader pass cpinit.slot= or androidboot.slot_suffix=")
	}
	return fail(checkSlot, what+": begin cannot choose the update's slot and cpinit cannot tell the trial boot",
		"have the bootloader pass cpinit.slot= or androidboot.slot_suffix=, or pass begin --slot")
}

// decideCheckpoint: no checkpoint is in a state that keeps begin from
// arming one. blocker is beginBlocker's text for r.
func decideCheckpoint(r *bootstate.Record, blocker string) CheckResult {
	switch {
	case r == nil:
		return skip(checkCheckpoint, "the metadata store could not be read")
	case r.State == bootstate.StateFresh && r.COWPath == "":
		return pass(checkCheckpoint, "no checkpoint: begin can arm one")
	case r.State == bootstate.StateFresh:
		return warn(checkCheckpoint, fmt.Sprintf("no checkpoint, but the COW file %s of an earlier one awaits cleanup", r.COWPath),
			"reboot: the next boot deletes it")
	}
	return warn(checkCheckpoint, "begin would refuse: "+blocker, "")
}

// sizeText formats bytes as MiB, or KiB below 1 MiB.
func sizeText(b uint64) string {
	if b < 1<<20 && b%1024 == 0 && b > 0 {
		return fmt.Sprintf("%d KiB", b>>10)
	}
	if b%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", b>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}
