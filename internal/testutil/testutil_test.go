package testutil

import (
	"reflect"
	"testing"
)

// The gates decide whether a test runs at all, so they get tests of their
// own (vmtest's SkipIfInVM once used the same check as SkipIfNotInVM).
func TestInVM(t *testing.T) {
	t.Setenv(EnvInVM, "")
	if InVM() {
		t.Fatal("InVM with the variable empty")
	}
	t.Setenv(EnvInVM, "1")
	if !InVM() {
		t.Fatal("not InVM with the variable set")
	}
}

func TestInCI(t *testing.T) {
	for v, want := range map[string]bool{"true": true, "1": true, "TRUE": true, "": false, "false": false} {
		t.Setenv("CI", v)
		if InCI() != want {
			t.Errorf("CI=%q: InCI() = %v", v, !want)
		}
	}
}

func TestRequireVMSkipsOnHost(t *testing.T) {
	t.Setenv(EnvInVM, "")
	ran := false
	t.Run("gated", func(t *testing.T) {
		RequireVM(t)
		ran = true
	})
	if ran {
		t.Fatal("RequireVM let a test run outside the VM")
	}
}

func TestRequireVMRunsInVM(t *testing.T) {
	t.Setenv(EnvInVM, "1")
	ran := false
	t.Run("gated", func(t *testing.T) {
		RequireVM(t)
		ran = true
	})
	if !ran {
		t.Fatal("RequireVM skipped inside the VM")
	}
}

func TestTestDisks(t *testing.T) {
	t.Setenv(EnvTestDisks, "/dev/vda,,/dev/vdb")
	if got := TestDisks(t, 2); !reflect.DeepEqual(got, []string{"/dev/vda", "/dev/vdb"}) {
		t.Fatalf("got %q", got)
	}
}
