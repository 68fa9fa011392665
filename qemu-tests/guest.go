package qemutests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cpinit/cpinit/initramfs"
	"github.com/u-root/u-root/pkg/cpio"
)

// GuestTools are host binaries copied into the test-only initramfs (u-root
// adds their shared libraries): dmsetup is the oracle the dm tests compare
// our ioctls with; the e2fsprogs tools make and check filesystems in the
// guest (mkfs.ext4 is a symlink to mke2fs, and u-root copies symlinks as
// symlinks, so both are listed).
var GuestTools = []string{"/usr/sbin/dmsetup", "/usr/sbin/mke2fs", "/usr/sbin/mkfs.ext4", "/usr/sbin/e2fsck", "/usr/bin/cmp", "/usr/bin/sha256sum"}

var (
	guestMu    sync.Mutex
	guestBuilt = map[string]string{} // kernel env + tools -> initramfs path
)

// GuestInitramfs builds the test-only initramfs (guestinit as /init, with
// GuestTools) for the cloud kernel once per process.
func GuestInitramfs() (string, error) {
	k, err := FetchKernel()
	if err != nil {
		return "", err
	}
	return guestInitramfsFor(initramfs.CloudKernel, k, nil)
}

// GuestInitramfsFor fetches the pinned kernel of env and builds the
// test-only initramfs (guestinit, GuestTools) for it once per process: for
// tests that boot it themselves, as RunGuestTests does with GuestRun.Kernel.
func GuestInitramfsFor(env string) (Kernel, string, error) {
	k, err := initramfs.FetchPinnedKernel(env)
	if err != nil {
		return k, "", err
	}
	p, err := guestInitramfsFor(env, k, nil)
	return k, p, err
}

// guestInitramfsFor builds the test-only initramfs for the pinned kernel of
// env, with GuestTools and tools, once per process and combination.
func guestInitramfsFor(env string, k Kernel, tools []string) (string, error) {
	key := env + "\x00" + strings.Join(tools, "\x00")
	guestMu.Lock()
	defer guestMu.Unlock()
	if p, ok := guestBuilt[key]; ok {
		return p, nil
	}
	name := "guest.cpio"
	if env != initramfs.CloudKernel || len(tools) > 0 {
		name = fmt.Sprintf("guest-%s-%d.cpio", strings.TrimSuffix(env, ".env"), len(guestBuilt))
	}
	p := filepath.Join(OutDir(), name)
	// The host's tools, or on another architecture Debian's builds of
	// them for it (guesttools.go).
	files, err := guestToolFiles(k.Arch, append(append([]string(nil), GuestTools...), tools...))
	if err != nil {
		return "", err
	}
	if err := initramfs.Build(initramfs.BuildOptions{Modules: k.Modules, List: k.ModuleList, Arch: k.Arch, Out: p, InitCmd: "guestinit", Files: files, Pkgs: []string{"./qemu-tests/guestinit"}, Cache: ImageCache()}); err != nil {
		return "", err
	}
	guestBuilt[key] = p
	return p, nil
}

// GuestRun is one run of a test binary in the guest.
type GuestRun struct {
	Pkg  string   // Go package to test, e.g. "./pkg/dmsnap"
	Args []string // test binary arguments, e.g. -test.run=^TestVM
	Env  []string // extra KEY=value for the test binary
	// Disks are attached as /dev/vda, ...: image files, created (256 MiB)
	// if missing, or the NBD URIs of cachedisk disks.
	Disks []string
	// Kernel is the pinned kernel's env file (initramfs.GenericKernel for
	// f2fs, initramfs.Arm64Kernel for an arm64 guest: the test binary,
	// guestinit and the tools are then arm64 programs); the cloud kernel
	// when empty.
	Kernel string
	// Tools are host binaries the guest needs besides GuestTools.
	Tools []string
	// Timeout for the whole run; default 5 minutes.
	Timeout time.Duration
}

// BuildTestBinary compiles a package's tests as a static binary for an
// amd64 guest.
func BuildTestBinary(pkg, out string) error { return BuildTestBinaryFor(pkg, out, "amd64") }

// BuildTestBinaryFor compiles a package's tests as a static binary for a
// guest of arch (a GOARCH; initramfs.GoEnv's environment).
func BuildTestBinaryFor(pkg, out, arch string) error {
	env, err := initramfs.GoEnv(arch)
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "test", "-c", "-trimpath", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go test -c %s (GOARCH=%s): %w\n%s", pkg, arch, err, b)
	}
	if _, err := os.Stat(out); err != nil {
		return fmt.Errorf("go test -c %s wrote no binary (no test files?): %w", pkg, err)
	}
	return nil
}

// TestOverlay writes a cpio archive holding /vmtest/test and /vmtest/args,
// to be concatenated after the guest initramfs.
func TestOverlay(out, testBinary string, args, env []string) error {
	bin, err := os.ReadFile(testBinary)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := cpio.Newc.Writer(f)
	recs := []cpio.Record{
		cpio.Directory("vmtest", 0o755),
		cpio.StaticFile("vmtest/test", string(bin), 0o755),
		cpio.StaticFile("vmtest/args", strings.Join(args, "\n")+"\n", 0o644),
		cpio.StaticFile("vmtest/env", strings.Join(env, "\n")+"\n", 0o644),
	}
	if err := cpio.WriteRecordsAndDirs(w, recs); err != nil {
		f.Close()
		return err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

var exitRe = regexp.MustCompile(`VMTEST: exit=(\d+)`)

// RunGuestTests runs a package's tests inside the guest and fails t if the
// binary fails, if any test skips (everything in the guest must run), or if
// no test ran at all. It returns the console output.
func RunGuestTests(t testing.TB, r GuestRun) string {
	t.Helper()
	out, err := runGuestTests(t, r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RunGuestTestsErr is RunGuestTests returning the failure instead of
// failing t, with the console output either way.
func RunGuestTestsErr(t testing.TB, r GuestRun) (string, error) {
	t.Helper()
	return runGuestTests(t, r)
}

var testBinaries struct {
	sync.Mutex
	dir  string
	path map[string]string
}

// testBinary builds a package's test binary for arch once per process.
func testBinary(pkg, arch string) (string, error) {
	testBinaries.Lock()
	defer testBinaries.Unlock()
	key := arch + "\x00" + pkg
	if p, ok := testBinaries.path[key]; ok {
		return p, nil
	}
	if testBinaries.dir == "" {
		d, err := os.MkdirTemp("", "cpinit-guesttest-")
		if err != nil {
			return "", err
		}
		testBinaries.dir, testBinaries.path = d, map[string]string{}
	}
	p := filepath.Join(testBinaries.dir, fmt.Sprintf("t%d.test", len(testBinaries.path)))
	if err := BuildTestBinaryFor(pkg, p, arch); err != nil {
		return "", err
	}
	testBinaries.path[key] = p
	return p, nil
}

// StartGuestTests boots the guest running a package's test binary and
// returns at once, for tests that cut the power mid-run. RunGuestTests is
// the usual way.
func StartGuestTests(t testing.TB, r GuestRun) (*VM, error) {
	t.Helper()
	env := r.Kernel
	if env == "" {
		env = initramfs.CloudKernel
	}
	k, err := initramfs.FetchPinnedKernel(env)
	if err != nil {
		return nil, err
	}
	base, err := guestInitramfsFor(env, k, r.Tools)
	if err != nil {
		return nil, err
	}
	bin, err := testBinary(r.Pkg, k.Arch)
	if err != nil {
		return nil, err
	}
	if r.Timeout == 0 {
		r.Timeout = 5 * time.Minute
	}
	// -test.timeout inside the guest, shorter than ours: a hung test then
	// prints every goroutine's stack on the console before we give up.
	args := append([]string{"-test.v", fmt.Sprintf("-test.timeout=%s", r.Timeout-30*time.Second)}, r.Args...)
	overlay := filepath.Join(t.TempDir(), "overlay.cpio")
	if err := TestOverlay(overlay, bin, args, r.Env); err != nil {
		return nil, err
	}
	for _, d := range r.Disks {
		if strings.HasPrefix(d, "nbd") {
			continue
		}
		if _, err := os.Stat(d); os.IsNotExist(err) {
			if err := MakeDisk(d, 256<<20); err != nil {
				return nil, err
			}
		}
	}
	t.Logf("guest runs %s %s", r.Pkg, strings.Join(args, " "))
	return StartT(t, Options{
		Arch:   k.Arch,
		Kernel: k.Vmlinuz,
		Initrd: []string{base, overlay},
		Append: fmt.Sprintf("vmtest.disks=%d", len(r.Disks)),
		Disks:  r.Disks,
	}), nil
}

func runGuestTests(t testing.TB, r GuestRun) (string, error) {
	t.Helper()
	vm, err := StartGuestTests(t, r)
	if err != nil {
		return "", err
	}
	if r.Timeout == 0 {
		r.Timeout = 5 * time.Minute
	}
	m, err := vm.Expect(exitRe, r.Timeout)
	out := vm.Output()
	t.Logf("guest output of %s:\n%s", r.Pkg, guestTestLines(out))
	if err != nil {
		return out, fmt.Errorf("guest tests of %s: %v", r.Pkg, err)
	}
	if code, _ := strconv.Atoi(m[1]); code != 0 {
		return out, fmt.Errorf("guest tests of %s failed (exit %d)", r.Pkg, code)
	}
	if bytes.Contains([]byte(out), []byte("--- SKIP")) {
		return out, fmt.Errorf("guest tests of %s: a test skipped inside the VM, where everything must run", r.Pkg)
	}
	if !strings.Contains(out, "--- PASS") {
		return out, fmt.Errorf("guest tests of %s: no test ran (check -test.run)", r.Pkg)
	}
	return out, nil
}

// guestTestLines drops kernel and init noise from the console output.
func guestTestLines(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimRight(l, "\r")
		if strings.HasPrefix(l, "[") && strings.Contains(l, "]") && !strings.Contains(l, "F2FS") {
			continue // kernel printk (f2fs's own GC and pin messages are kept)
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}
