package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGoInstall runs `go install` on the package (into a temporary GOBIN)
// and runs the result as a separate process: the CLI works outside an initramfs, and its exit
// statuses are the documented ones (docs/cli.md).
func TestGoInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command (~5 s); not in -short")
	}
	gobin := t.TempDir()
	bin := filepath.Join(gobin, "cpinit")
	install := exec.Command("go", "install", ".")
	install.Env = append(os.Environ(), "GOBIN="+gobin)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("go install: %v\n%s", err, out)
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
