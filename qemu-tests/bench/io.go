package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	qt "github.com/cpinit/cpinit/qemu-tests"
)

// The io section: pkg/dmsnap's TestBenchCheckpointInGuest in one boot:
// fio write cost through snapshot-origin vs the raw device at queue depth 1
// and deep, and the merge of a sequential and a scattered COW vs dd, by
// chunk size.

var (
	seqMiB    = flag.Int("seqmib", 16, "MiB written sequentially in 4 KiB writes, at each queue depth")
	rand      = flag.Int("rand", 512, "random 4 KiB writes at each queue depth (distinct 64 KiB slots of 256 MiB)")
	chunks    = flag.String("chunks", "4,16,64", "chunk sizes to try, in KiB")
	reps      = flag.Int("reps", 3, "rounds over all chunk sizes (tables show medians and ranges)")
	qd        = flag.Int("qd", 32, "the deep queue depth (the other is 1)")
	ioengine  = flag.String("ioengine", "libaio", "fio ioengine (libaio or io_uring)")
	modparams = flag.String("modparams", "", "module parameters the guest sets first, e.g. dm_mod/kcopyd_subjob_size_kb=1024")
)

var exitRe = regexp.MustCompile(`VMTEST: exit=(\d+)`)

// console prints the guest's progress lines as they arrive.
type console struct{ w *io.PipeWriter }

func newConsole() *console {
	r, w := io.Pipe()
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			l := strings.TrimRight(s.Text(), "\r")
			if *verbose || strings.HasPrefix(l, "DMSNAP-BENCH-LOG ") || strings.Contains(l, "--- ") || strings.Contains(l, "WATCHDOG") || strings.Contains(l, "bench_vm_test.go") {
				fmt.Printf("  | %s\n", strings.TrimPrefix(l, "DMSNAP-BENCH-LOG "))
			}
		}
	}()
	return &console{w}
}

func (c *console) Write(b []byte) (int, error) { return c.w.Write(b) }

func init() { register("io", runIO) }

func runIO(tmp string) error {
	k, err := qt.FetchKernel()
	if err != nil {
		return err
	}
	// The test guest's initramfs plus dd, the merge's baseline, and fio,
	// which writes (u-root adds their shared libraries).
	var files []string
	for _, f := range append(append([]string(nil), qt.GuestTools...), "/usr/bin/dd", "/usr/bin/fio") {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s missing on the host (make deps installs the packages): %w", f, err)
		}
		files = append(files, f+":"+strings.TrimPrefix(f, "/"))
	}
	base := filepath.Join(tmp, "guest.cpio")
	fmt.Println("building the guest initramfs and pkg/dmsnap's test binary...")
	if err := qt.BuildInitramfs(base, "guestinit", files, "./qemu-tests/guestinit"); err != nil {
		return err
	}
	bin := filepath.Join(tmp, "dmsnap.test")
	if err := qt.BuildTestBinary("./pkg/dmsnap", bin); err != nil {
		return err
	}
	args := []string{
		"-test.v", "-test.run=^TestBenchCheckpointInGuest$", fmt.Sprintf("-test.timeout=%s", *timeout-time.Minute),
		"-dmsnap.bench", fmt.Sprintf("-dmsnap.bench.seqmib=%d", *seqMiB), fmt.Sprintf("-dmsnap.bench.rand=%d", *rand),
		"-dmsnap.bench.chunks=" + *chunks, fmt.Sprintf("-dmsnap.bench.reps=%d", *reps),
		fmt.Sprintf("-dmsnap.bench.qd=%d", *qd), "-dmsnap.bench.ioengine=" + *ioengine,
	}
	if *modparams != "" {
		args = append(args, "-dmsnap.bench.modparams="+*modparams)
	}
	overlay := filepath.Join(tmp, "overlay.cpio")
	if err := qt.TestOverlay(overlay, bin, args, nil); err != nil {
		return err
	}
	disk := filepath.Join(tmp, "vda.img")
	if err := qt.MakeDisk(disk, 1<<30); err != nil {
		return err
	}
	accel := "tcg"
	if os.Getenv("CPINIT_QEMU_ACCEL") == "kvm" {
		accel = "kvm"
	}
	fmt.Printf("host: %s, %d CPUs, %s; guest: kernel %s, 1 vCPU, 512 MiB, accel %s, virtio-blk cache=writeback on a sparse 1 GiB image in %s\n",
		cpuModel(), runtime.NumCPU(), loadAvg(), k.Release, accel, tmp)
	fmt.Printf("guest runs: dmsnap.test %s\n", strings.Join(args, " "))
	started := time.Now()
	vm, err := qt.Start(qt.Options{
		Kernel: k.Vmlinuz,
		Initrd: []string{base, overlay},
		Append: "vmtest.disks=1",
		Disks:  []string{disk},
		Log:    newConsole(),
	})
	if err != nil {
		return err
	}
	defer vm.Kill()
	m, err := vm.Expect(exitRe, *timeout)
	out := vm.Output()
	if err != nil {
		return fmt.Errorf("%v (QEMU: %s)", err, vm.Cmdline)
	}
	if code, _ := strconv.Atoi(m[1]); code != 0 || !strings.Contains(out, "--- PASS: TestBenchCheckpointInGuest") {
		return fmt.Errorf("the benchmark failed in the guest (exit %s); rerun with -v for the whole console", m[1])
	}
	fmt.Printf("\nguest run took %v; host %s\n\n", time.Since(started).Round(time.Second), loadAvg())
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), "DMSNAP-BENCH|"); ok {
			fmt.Println(rest)
		}
	}
	return nil
}
