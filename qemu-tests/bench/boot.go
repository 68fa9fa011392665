package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/cpinit/cpinit/pkg/bootstate"
	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The boot section: what cpinit adds to a boot in state fresh (no
// checkpoint ever begun: the boot of every day), against a minimal init
// (qemu-tests/minimalinit) that only mounts the system root and userdata,
// and against that minimal init also loading cpinit's device-mapper
// modules (it does nothing with them): the difference between the three
// splits cpinit's cost into "loads dm" and "everything else it does". All
// boot the same simulated A/B device (qemu-tests/device.go) with the same
// kernel command line into the same system image, whose /sbin/init
// (qemu-tests/sysinit, action bootbench) marks its start in the kernel log
// and prints the log back. The clock is the guest kernel's printk clock:
// "kernel start" is its 0, "Run /init" is the kernel's line before it
// executes the initramfs init, "next init" is the marker. Under TCG the
// guest runs with -icount by default (see bootIcount): its clock then counts
// guest instructions, and repeated boots agree within a few ms however
// loaded the host is; -bootclock=real measures plain TCG, where the guest
// clock is the host's and other VMs on the host show up in the numbers.
// Each round boots every variant once, in rotating order, so drift hits all
// alike.

var (
	bootRuns  = flag.Int("bootruns", 0, "boot section: measured boots of each init (0: 3 with -bootclock=icount, 9 with real)")
	bootClock = flag.String("bootclock", "icount", "boot section, under TCG: icount (the guest clock counts executed instructions, -icount shift=0: host load does not stretch it) or real (plain TCG: guest time is host time)")
)

// bootGoal: cpinit's fresh boot, kernel start to next init, may take at
// most this many times the minimal init's (issue 7).
const bootGoal = 1.05

func init() { register("boot", runBoot) }

// bootVariant is one initramfs init under test.
type bootVariant struct {
	name   string
	initrd string
	cpinit bool           // cpinit's milestones, not the minimal init's
	check  *regexp.Regexp // must appear on the console: the boot went as meant
}

// bootRun is what one boot measured (µs of the guest's printk clock).
type bootRun struct {
	runInit, next int64
	kmsg          []bootKmsg // from the initramfs unpacking to the marker
	wall          time.Duration
}

type bootKmsg struct {
	us  int64
	msg string
}

// bootMilestone is one row of the breakdown: the last kernel log line
// matching the variant's pattern between "Run /init" and the marker. A
// milestone missing from a variant's boots is shown as "–".
type bootMilestone struct {
	label           string
	minimal, cpinit string
}

// Disks of the ABDevice in order: vda system_a (booted), vdb system_b,
// vdc userdata, vdd metadata, vde misc.
var bootMilestones = []bootMilestone{
	{"init started, early mounts done", `^minimalinit: started$`, `^cpinit: starting as PID 1$`},
	{"virtio-blk disks probed", `^virtio_blk virtio\d+: \[vd`, `^virtio_blk virtio\d+: \[vd`},
	{"device-mapper core loaded (dm-mod)", `^device-mapper: ioctl: `, `^device-mapper: ioctl: `},
	{"all kernel modules loaded", `^minimalinit: loaded kernel modules$`, `^cpinit: loaded kernel modules: `},
	{"system root mounted (vda, by label)", `^EXT4-fs \(vda\): mounted filesystem`, `^EXT4-fs \(vda\): mounted filesystem`},
	{"metadata + misc read, decided", ``, `^cpinit: no checkpoint$`},
	{"userdata mounted (vdc, by label)", `^EXT4-fs \(vdc\): mounted filesystem`, `^EXT4-fs \(vdc\): mounted filesystem`},
	{"init's last line before switch_root", `^minimalinit: switch_root `, `^cpinit: switch_root `},
}

func runBoot(tmp string) error {
	k, err := qt.FetchKernel()
	if err != nil {
		return err
	}
	accel := "tcg"
	if os.Getenv("CPINIT_QEMU_ACCEL") == "kvm" {
		accel = "kvm"
	}
	runs := *bootRuns
	switch {
	case *bootClock == "real" || accel == "kvm":
		if runs == 0 {
			runs = 9
		}
	case *bootClock == "icount":
		restore, err := bootIcount(tmp)
		if err != nil {
			return err
		}
		defer restore()
		accel += " -icount shift=0"
		if runs == 0 {
			runs = 3
		}
	default:
		return fmt.Errorf("-bootclock=%q: want icount or real", *bootClock)
	}
	if runs < 1 {
		return fmt.Errorf("-bootruns=%d: need at least 1", runs)
	}

	fmt.Println("building the initramfs images (cpinit's, the minimal init's with and without dm modules) and the A/B device...")
	cpinitRD, err := qt.CpinitInitramfs()
	if err != nil {
		return err
	}
	minimal := func(out, list string) (string, error) {
		out = filepath.Join(tmp, out)
		return out, initramfs.Build(initramfs.BuildOptions{
			Modules: k.Modules, List: list, Out: out,
			InitCmd: "minimalinit", Pkgs: []string{"./qemu-tests/minimalinit"},
			Cache: qt.ImageCache(),
		})
	}
	minimalRD, err := minimal("minimal.cpio", filepath.Join(qt.RepoRoot(), "qemu-tests", "minimalinit", "modules.list"))
	if err != nil {
		return err
	}
	minimalDMRD, err := minimal("minimal-dm.cpio", "") // "": cpinit's initramfs/modules.list
	if err != nil {
		return err
	}
	d, err := qt.NewABDevice(filepath.Join(tmp, "device"), k, cpinitRD, 32, 7)
	if err != nil {
		return err
	}
	// Slot a is the current, successful slot: the bootloader leaves misc
	// alone, every boot below is the same boot of slot a.
	slot, err := d.SelectSlot()
	if err != nil {
		return err
	}
	base := d.Options(slot, "sysinit.action=bootbench")
	minimalCheck := regexp.MustCompile(`BOOTBENCH kmsg \d+ minimalinit: switch_root `)
	variants := []bootVariant{
		{"minimal", minimalRD, false, minimalCheck},
		{"minimal + dm", minimalDMRD, false, minimalCheck},
		{"cpinit fresh", cpinitRD, true, regexp.MustCompile(`cpinit: state=fresh userdata=/dev/vdc mounted=/newroot/data via=/dev/vdc action=mount-plain`)},
	}

	fmt.Printf("host: %s, %d CPUs, %s; guest: kernel %s, 1 vCPU, 512 MiB, accel %s, 5 virtio-blk disks (cache=writeback): system_a/b 32 MiB, userdata 256 MiB ext4, metadata 16 MiB, misc 1 MiB\n",
		cpuModel(), runtime.NumCPU(), loadAvg(), k.Release, accel)
	fmt.Printf("kernel command line (all): %s\n", base.Append)
	for _, v := range variants {
		st, err := os.Stat(v.initrd)
		if err != nil {
			return err
		}
		fmt.Printf("initramfs %-14s %.2f MiB (uncompressed cpio)\n", v.name+":", float64(st.Size())/(1<<20))
	}

	boot := func(v bootVariant) (bootRun, error) {
		o := base
		o.Initrd = []string{v.initrd}
		return bootOnce(o, v)
	}
	// cpinit's first boot, not counted: it formats the blank metadata
	// store, once in a device's life. Every boot after it is the fresh
	// boot of every day.
	started := time.Now()
	first, err := boot(variants[2])
	if err != nil {
		return err
	}
	if r, err := d.Record(); err != nil || r.State != bootstate.StateFresh {
		return fmt.Errorf("after cpinit's first boot the metadata store should hold state fresh: %+v, %v", r, err)
	}
	res := make([][]bootRun, len(variants))
	for n := 0; n < runs; n++ {
		var line []string
		for j := range variants {
			i := (n + j) % len(variants) // rotate: no variant always goes first
			r, err := boot(variants[i])
			if err != nil {
				return err
			}
			res[i] = append(res[i], r)
		}
		for i, v := range variants {
			line = append(line, fmt.Sprintf("%s %.0f ms", v.name, bootMS(res[i][n].next)))
		}
		fmt.Printf("  round %d/%d to next init: %s\n", n+1, runs, strings.Join(line, ", "))
	}
	if r, err := d.Record(); err != nil || r.State != bootstate.StateFresh {
		return fmt.Errorf("after the boots the metadata store should still hold state fresh: %+v, %v", r, err)
	}
	fmt.Printf("\n%d boots in %v; host %s\n\n", 1+len(variants)*runs, time.Since(started).Round(time.Second), loadAvg())

	printBootTable(variants, res)
	fmt.Println()
	printBootBreakdown(variants, res)
	fmt.Printf("\ncpinit's first boot (not counted; it formats the blank metadata store): %.0f ms to next init, %.0f ms of it from \"Run /init\"\n",
		bootMS(first.next), bootMS(first.next-first.runInit))
	return nil
}

var (
	bootLineRe = regexp.MustCompile(`(?m)^BOOTBENCH run_init_us=(\d+) next_init_us=(\d+)\r?$`)
	bootKmsgRe = regexp.MustCompile(`(?m)^BOOTBENCH kmsg (\d+) (.*?)\r?$`)
)

// bootOnce boots once, waits for the next init's report and the power off,
// and checks that the boot went as meant.
func bootOnce(o qt.Options, v bootVariant) (bootRun, error) {
	if *verbose {
		o.Log = bootConsole{}
	}
	start := time.Now()
	vm, err := qt.Start(o)
	if err != nil {
		return bootRun{}, err
	}
	defer vm.Kill()
	limit := min(*timeout, 3*time.Minute)
	if err := vm.ExpectString("BOOTBENCH done", limit); err != nil {
		return bootRun{}, fmt.Errorf("%s: %v\nconsole:\n%s\n(QEMU: %s)", v.name, err, vm.Output(), vm.Cmdline)
	}
	if err := vm.Wait(limit); err != nil {
		return bootRun{}, fmt.Errorf("%s: no clean power off: %v (QEMU: %s)", v.name, err, vm.Cmdline)
	}
	out := vm.Output()
	r := bootRun{wall: time.Since(start)}
	m := bootLineRe.FindStringSubmatch(out)
	if m == nil || !v.check.MatchString(out) || strings.Contains(out, "FATAL") {
		return bootRun{}, fmt.Errorf("%s: the boot did not go as meant (want %q on the console)\nconsole:\n%s", v.name, v.check, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "BOOTBENCH warning") {
			fmt.Printf("  %s: %s\n", v.name, strings.TrimSpace(l))
		}
	}
	r.runInit, _ = strconv.ParseInt(m[1], 10, 64)
	r.next, _ = strconv.ParseInt(m[2], 10, 64)
	for _, k := range bootKmsgRe.FindAllStringSubmatch(out, -1) {
		us, _ := strconv.ParseInt(k[1], 10, 64)
		r.kmsg = append(r.kmsg, bootKmsg{us, k[2]})
	}
	return r, nil
}

// bootIcount makes the harness start QEMU with -icount shift=0 for this
// section: under plain TCG the guest's clock is the host's, and on a shared
// host every other VM stretches the boot (boots of one init varied by 2× in
// a trial). With icount the guest clock advances 1 ns per executed guest
// instruction (and in real time only while the guest idles, waiting for a
// disk or a timer), so both inits are measured by the work they make the
// guest do. The harness (qemu-tests/vm.go) takes no extra QEMU arguments;
// it runs $CPINIT_QEMU, which points at a wrapper here until restore.
func bootIcount(tmp string) (restore func(), err error) {
	old, had := os.LookupEnv("CPINIT_QEMU")
	real := old
	if real == "" {
		real = "qemu-system-x86_64"
	}
	if real, err = exec.LookPath(real); err != nil {
		return nil, err
	}
	wrapper := filepath.Join(tmp, "qemu-icount")
	script := fmt.Sprintf("#!/bin/sh\nexec '%s' \"$@\" -icount shift=0\n", strings.ReplaceAll(real, "'", `'\''`))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		return nil, err
	}
	os.Setenv("CPINIT_QEMU", wrapper)
	return func() {
		if had {
			os.Setenv("CPINIT_QEMU", old)
		} else {
			os.Unsetenv("CPINIT_QEMU")
		}
	}, nil
}

// bootConsole shows the whole console with -v.
type bootConsole struct{}

func (bootConsole) Write(b []byte) (int, error) { return os.Stdout.Write(b) }

func bootMS(us int64) float64 { return float64(us) / 1000 }

// bootStats are the median and range of a sample.
type bootStats struct{ med, lo, hi float64 }

func bootStat(xs []float64) bootStats {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return bootStats{med, s[0], s[n-1]}
}

func (s bootStats) String() string {
	return fmt.Sprintf("%6.0f [%4.0f–%4.0f]", s.med, s.lo, s.hi)
}

func printBootTable(variants []bootVariant, res [][]bootRun) {
	rows := []struct {
		label string
		f     func(bootRun) int64
		goal  bool
	}{
		{"kernel start → next init (total)", func(r bootRun) int64 { return r.next }, true},
		{"  kernel start → \"Run /init\"", func(r bootRun) int64 { return r.runInit }, false},
		{"  initramfs unpacking (part of it)", bootUnpack, false},
		{"  \"Run /init\" → next init (the init)", func(r bootRun) int64 { return r.next - r.runInit }, false},
	}
	n := len(res[0])
	fmt.Printf("boot to the next init, guest ms: median [min–max] of %d boots each; ratio to minimal: of the medians (min–max of the %d rounds' ratios)\n", n, n)
	head := fmt.Sprintf("%-38s %-18s", "", variants[0].name)
	for _, v := range variants[1:] {
		head += fmt.Sprintf(" %-39s", v.name)
	}
	fmt.Println(strings.TrimRight(head, " "))
	for _, row := range rows {
		xs := make([][]float64, len(variants))
		ok := true
		for i := range variants {
			for _, r := range res[i] {
				v := row.f(r)
				ok = ok && v >= 0
				xs[i] = append(xs[i], float64(v)/1000)
			}
		}
		if !ok {
			fmt.Printf("%-38s (not in every boot's kernel log)\n", row.label)
			continue
		}
		base := bootStat(xs[0])
		fmt.Printf("%-38s %-18s", row.label, base)
		var ratio float64
		for i := range variants[1:] {
			s := bootStat(xs[i+1])
			var rr []float64
			for j := range xs[0] {
				rr = append(rr, xs[i+1][j]/xs[0][j])
			}
			r := bootStat(rr)
			ratio = s.med / base.med
			fmt.Printf(" %-18s %.3f× (%.3f–%.3f)", s, ratio, r.lo, r.hi)
		}
		if row.goal {
			verdict := "met"
			if ratio > bootGoal {
				verdict = "NOT met"
			}
			fmt.Printf("  goal cpinit ≤ %.2f×: %s", bootGoal, verdict)
		}
		fmt.Println()
	}
	var walls []string
	for i, v := range variants {
		var w []float64
		for _, r := range res[i] {
			w = append(w, r.wall.Seconds())
		}
		walls = append(walls, fmt.Sprintf("%s %.1f", v.name, bootStat(w).med))
	}
	fmt.Printf("host wall clock per boot, QEMU start to exit, s (medians; the next init printing the log and powering off included): %s\n", strings.Join(walls, ", "))
}

// printBootBreakdown shows where the init's time goes: each milestone's
// time after "Run /init" and the step since the variant's previous one.
func printBootBreakdown(variants []bootVariant, res [][]bootRun) {
	fmt.Println("the init's part by milestone in the kernel log, guest ms after \"Run /init\" (medians): at, and step since the previous milestone")
	fmt.Printf("%-38s", "")
	for _, v := range variants {
		fmt.Printf(" %16s", v.name)
	}
	fmt.Printf(" %14s\n", "cpinit−minimal")
	fmt.Printf("%-38s", "milestone")
	for range variants {
		fmt.Printf(" %8s %7s", "at", "step")
	}
	fmt.Printf(" %14s\n", "at")
	at := func(i int, pat string) []float64 {
		if pat == "" {
			return nil
		}
		re := regexp.MustCompile(pat)
		var xs []float64
		for _, r := range res[i] {
			t := int64(-1)
			for _, k := range r.kmsg {
				if k.us >= r.runInit && k.us <= r.next && re.MatchString(k.msg) {
					t = k.us
				}
			}
			if t < 0 {
				return nil // not in every boot: not a milestone
			}
			xs = append(xs, float64(t-r.runInit)/1000)
		}
		return xs
	}
	prev := make([]float64, len(variants))
	last := len(variants) - 1
	const marker = "next init runs (marker)"
	for _, ms := range append(bootMilestones, bootMilestone{label: marker}) {
		fmt.Printf("%-38s", ms.label)
		meds := make([]float64, len(variants))
		for i, v := range variants {
			var xs []float64
			switch {
			case ms.label == marker:
				for _, r := range res[i] {
					xs = append(xs, float64(r.next-r.runInit)/1000)
				}
			case v.cpinit:
				xs = at(i, ms.cpinit)
			default:
				xs = at(i, ms.minimal)
			}
			if xs == nil {
				meds[i] = -1
				fmt.Printf(" %8s %7s", "–", "")
				continue
			}
			meds[i] = bootStat(xs).med
			fmt.Printf(" %8.0f %+7.0f", meds[i], meds[i]-prev[i])
			prev[i] = meds[i]
		}
		if meds[0] >= 0 && meds[last] >= 0 {
			fmt.Printf(" %+14.0f", meds[last]-meds[0])
		}
		fmt.Println()
	}
}

// bootUnpack is how long the kernel took to unpack the initramfs (it runs
// beside other initcalls, so it is only part of the kernel's time); -1 if
// the log lacks it.
func bootUnpack(r bootRun) int64 {
	start, end := int64(-1), int64(-1)
	for _, k := range r.kmsg {
		switch {
		case strings.HasPrefix(k.msg, "Trying to unpack rootfs image"):
			start = k.us
		case strings.HasPrefix(k.msg, "Freeing initrd memory"):
			end = k.us
		}
	}
	if start < 0 || end < start {
		return -1
	}
	return end - start
}
