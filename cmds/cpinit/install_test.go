package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGoInstall builds the command as `go install` would (for GOARCH)
// and runs the result as a separate process: the CLI works outside an initramfs, and its exit
// statuses are the documented ones (docs/cli.md).
func TestGoInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command (~5 s); not in -short")
	}
	// go build -o, not go install: go install refuses to put a
	// cross-compiled binary in GOBIN, and this test also runs with
	// GOARCH=386 (natively, on the x86-64 host) in make test.
	bin := filepath.Join(t.TempDir(), "cpinit")
	install := exec.Command("go", "build", "-o", bin, ".")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, c := range []struct {
		args []string
		exit int
		out  string
	}{
		{[]string{"help"}, 0, "exit status: 0 done"},
		{[]string{"params", "cpinit.userdata=PARTLABEL=userdata"}, 0, "userdata=PARTLABEL=userdata fstype=ext4"},
		{[]string{"params", "quiet"}, 1, "cpinit.userdata= is missing"},
		{[]string{"status", "--no-such-flag"}, 2, "usage: cpinit status"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"commit", "--if-trial", "--cmdline", "cpinit.userdata=/dev/null"}, 0, "nothing to commit: checkpoints are off"},
		{[]string{"commit", "--cmdline", "cpinit.userdata=/dev/null"}, 1, "no metadata store"},
	} {
		cmd := exec.Command(bin, c.args...)
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.exit || !strings.Contains(string(out), c.out) {
			t.Errorf("cpinit %s: exit %d, output %q; want exit %d and %q", strings.Join(c.args, " "), code, out, c.exit, c.out)
		}
	}
}
