// Command bench measures what a checkpoint costs, as ratios to a baseline
// measured side by side in the same run, and prints one table per section
// (`make bench`; results and reasoning in docs/BENCHMARKS.md):
//
//   - size: the cpinit initramfs, compressed;
//   - boot: kernel start to switch_root, cpinit in state fresh vs a minimal
//     init that only mounts userdata;
//   - setup: setting up a checkpoint on a 1 GiB COW file of 10, 10k and
//     200k extents;
//   - io: writes through snapshot-origin (first writes and rewrites) vs the
//     raw device, and the rollback merge vs dd, by chunk size;
//   - restore: rolling back a sequential and a scattered COW with the
//     offline restore and with the kernel's merge, vs dd and fio;
//   - cow: COW consumed per MiB written, overwrites vs new files, by chunk
//     size.
//
// -only picks sections. Guests run under TCG unless CPINIT_QEMU_ACCEL=kvm.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

var (
	only    = flag.String("only", "", "sections to run, comma separated (default: all, in the order size, boot, setup, io, restore, cow)")
	timeout = flag.Duration("timeout", 40*time.Minute, "give up on a guest after this long")
	verbose = flag.Bool("v", false, "show the whole console, kernel messages included")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

type section struct {
	name string
	run  func(tmp string) error
}

// sections in the order they run; each prints its own tables. Each
// section's file adds itself with register from an init function.
var sections []section

// order is the order in which sections run and -only's default.
var order = []string{"size", "boot", "setup", "io", "restore", "cow"}

func register(name string, run func(tmp string) error) {
	if !slices.Contains(order, name) {
		panic("bench: section " + name + " missing from order")
	}
	sections = append(sections, section{name, run})
	slices.SortFunc(sections, func(a, b section) int {
		return slices.Index(order, a.name) - slices.Index(order, b.name)
	})
}

func run() error {
	want := map[string]bool{}
	for _, s := range sections {
		want[s.name] = *only == ""
	}
	for _, name := range strings.Split(*only, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if _, ok := want[name]; !ok {
			return fmt.Errorf("-only: unknown section %q (have %s)", name, strings.Join(order, ", "))
		}
		want[name] = true
	}
	fmt.Printf("host: %s, %d CPUs, %s\n", cpuModel(), runtime.NumCPU(), loadAvg())
	for _, s := range sections {
		if !want[s.name] {
			continue
		}
		tmp, err := os.MkdirTemp("", "cpinit-bench-"+s.name+"-")
		if err != nil {
			return err
		}
		fmt.Printf("\n== %s ==\n", s.name)
		err = s.run(tmp)
		os.RemoveAll(tmp)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return runtime.GOARCH
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load average unknown"
	}
	return "load average " + strings.Join(f[:3], " ")
}
