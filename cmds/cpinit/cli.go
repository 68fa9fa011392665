package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/cpinit/cpinit/pkg/fiemap"
)

// usage is `cpinit help`; docs/cli.md holds a copy (docs_cli_test.go).
var usage = `usage: cpinit COMMAND [ARGS]

cpinit checkpoints userdata across A/B updates. As PID 1 in an initramfs it
maps and mounts userdata (boot-step does it in another initramfs);
otherwise it is this command line tool.

commands:
  params [CMDLINE]   parse cpinit.* kernel parameters (default: /proc/cmdline)
                     and print what PID 1 would use
  extents [--json] FILE
                     print the dm table (dmsetup format) that maps FILE's
                     blocks on its device, after checking the extents are
                     safe to map; --json adds extents, flags and fingerprint
  status [--json]    checkpoint state, slot, tries, COW usage, whether a
                     rollback is still possible, the running or last
                     rollback's progress
  begin [--size N] [--slot S] [--tries N] [--reserve N] [--no-activate]
                     allocate and pin the COW file, record its extents and
                     arm the checkpoint for the update's first boot; the
                     slot is made active in the bootloader, unless
                     --no-activate (the update agent does it after writing
                     the slot: docs/swupdate.md,
                     docs/mender.md)
  commit [--if-trial]
                     keep the update: mark the slot good, drop the snapshot
                     online, delete the COW file. --if-trial (for the
                     systemd unit run at boot-complete.target): commit only
                     when this boot is the update's trial boot, and succeed
                     doing nothing otherwise (no checkpoint, checkpoints off,
                     another slot, a rollback pending)
  rollback           request a rollback of userdata at the next boot
  watch [--policy abort|commit|warn] [--warn P] [--act P] [--interval D]
        [--lead D] [--once] [--no-reboot]
                     during a trial, watch the COW fill up: warn at P%
                     (75), and at P% (90), or past the warning when it
                     would be full within --lead (30s), roll back and
                     reboot (abort, the default), commit, or only warn;
                     exits at once when there is no trial, 3 if the COW
                     overflowed
  merge [--method restore|kernel]
                     run a pending rollback now (recovery mode; userdata
                     unmounted), with progress: restore copies the saved
                     chunks home offline, kernel has the kernel merge them
                     (default: cpinit.merge=, else ` + defaultMergeMethod + `)
  recover keep-current [--yes] [--cow-path P]
                     after a boot stopped for recovery: declare the current
                     userdata authoritative (rewrites the metadata store, even
                     an unreadable one); the next boot deletes the COW file.
                     Run it in recovery mode: boot with cpinit.recovery=1,
                     which starts the system with userdata unmounted.

  bootloader [--size N] [--reserve N] [--tries N] VERB [SLOT [good|bad]]
                     the bootloader's A/B state through cpinit, as RAUC's
                     custom bootloader backend asks for it (docs/rauc.md):
                     get-primary, get-current, get-state SLOT, set-primary
                     SLOT (the other slot: begin, with these flags),
                     set-state SLOT good|bad (in the update's trial:
                     commit, rollback)
  boot-step --root DIR [--cmdline CMDLINE]
                     PID 1's boot step, run by a distribution's initramfs
                     once it has mounted the root at DIR (initramfs-tools,
                     dracut: docs/initramfs-tools.md, docs/dracut.md):
                     create, reattach or merge the snapshot as the cpinit.*
                     parameters say and mount userdata at DIR+datadir; exit
                     0 go on, 3 reboot now, 4 power off, 1 stop the boot
  Every command but params, extents and boot-step takes --metadata, --misc,
  --userdata, --data and --cmdline to override what the kernel command line
  says. Commands that change the metadata store or misc (all but params,
  extents and status) run one at a time: each waits up to --lock-wait (30s)
  for another cpinit process to finish with the store, then fails.
  help               this text

exit status: 0 done (or nothing to do), 1 failed or refused, 2 bad usage;
boot-step also 3 (reboot) and 4 (power off), watch 3 (the COW overflowed).
`

var errUsage = errors.New("bad usage (see cpinit help)")

// usageErr is a bad command line: exit status 2, like flag's own.
func usageErr(synopsis string) error {
	return fmt.Errorf("usage: cpinit %s: %w", synopsis, errUsage)
}

// Exit statuses of the command line tool (docs/cli.md).
const (
	exitOK    = 0 // done, or nothing to do
	exitError = 1 // failed or refused; what was on disk is unchanged or resumable
	exitUsage = 2 // bad command line; nothing was done
	// watch: the COW overflowed, the rollback is lost; no restart helps
	// (cpinit-watch.service's RestartPreventExitStatus=).
	exitOverflow = 3
)

// exitStatus maps runCLI's error to the process exit status.
func exitStatus(err error) int {
	var bs *bootStepExit
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errUsage):
		return exitUsage
	case errors.Is(err, errCOWOverflowed):
		return exitOverflow
	case errors.As(err, &bs):
		return bs.status
	}
	return exitError
}

func runCLI(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return errUsage
	}
	switch args[0] {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "params":
		return cmdParams(args[1:], stdout)
	case "extents":
		return cmdExtents(args[1:], stdout)
	case "begin":
		return cmdBegin(args[1:], stdout)
	case "commit":
		return cmdCommit(args[1:], stdout)
	case "rollback":
		return cmdRollback(args[1:], stdout)
	case "status":
		return cmdStatus(args[1:], stdout)
	case "merge":
		return cmdMerge(args[1:], stdout)
	case "recover":
		return cmdRecover(args[1:], stdout)
	case "watch":
		return cmdWatch(args[1:], stdout)
	case "bootloader":
		return cmdBootloader(args[1:], stdout)
	case "boot-step":
		return cmdBootStep(args[1:])
	}
	return fmt.Errorf("unknown command %q: %w", args[0], errUsage)
}

func cmdParams(args []string, stdout io.Writer) error {
	var cmdline string
	switch len(args) {
	case 0:
		b, err := readCmdline()
		if err != nil {
			return err
		}
		cmdline = b
	case 1:
		cmdline = args[0]
	default:
		return errUsage
	}
	p, warnings, err := ParseParams(cmdline)
	for _, w := range warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	if err != nil {
		return err
	}
	root := "(none)"
	if p.Root != nil {
		root = p.Root.String()
	}
	fmt.Fprintf(stdout, "userdata=%s fstype=%s mountopts=%q root=%s rootfstype=%s datadir=%s init=%s rootwait=%s on_fatal=%s\n",
		p.Userdata, p.FSType, p.MountOpts, root, p.RootFSType, p.DataDir, p.Init, p.RootWait, p.OnFatal)
	return nil
}

func cmdExtents(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("extents", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print the extent map as JSON")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		return usageErr("extents [--json] FILE")
	}
	m, err := fiemap.MapFile(fs.Arg(0))
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(m)
	}
	_, err = io.WriteString(stdout, m.DMTable())
	return err
}
