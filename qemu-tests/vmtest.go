package qemutests

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

var bootCount struct {
	sync.Mutex
	n map[string]int
}

// StartT boots a VM for a test: the console goes to a log file under
// out/vmlogs, which is removed when the test passes and kept (with its path
// printed) when it fails; the QEMU command line is logged; the VM is killed
// at the end of the test if it still runs.
func StartT(t testing.TB, o Options) *VM {
	t.Helper()
	bootCount.Lock()
	if bootCount.n == nil {
		bootCount.n = map[string]int{}
	}
	bootCount.n[t.Name()]++
	n := bootCount.n[t.Name()]
	bootCount.Unlock()

	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	logPath := filepath.Join(OutDir(), "vmlogs", fmt.Sprintf("%s-boot%d.log", name, n))
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	o.Log = logf
	vm, err := Start(o)
	if err != nil {
		logf.Close()
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "# %s\n", vm.Cmdline)
	t.Logf("boot %d: %s", n, vm.Cmdline)
	t.Cleanup(func() {
		vm.Kill()
		logf.Close()
		if t.Failed() {
			t.Logf("boot %d console log kept: %s", n, logPath)
		} else {
			os.Remove(logPath)
		}
	})
	return vm
}

// Expect fails the test unless the console shows re within timeout.
func (vm *VM) ExpectT(t testing.TB, re string, timeout time.Duration) []string {
	t.Helper()
	m, err := vm.Expect(regexp.MustCompile(re), timeout)
	if err != nil {
		t.Fatalf("%v\n--- console ---\n%s", err, Tail(vm.Output(), 60))
	}
	return m
}

func Tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// BootTimeout bounds one boot of the small test images under TCG, which take
// a few seconds; generous because CI machines are shared.
const BootTimeout = 120 * time.Second
