package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"

	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/pkg/bootstate"
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
  check [--json] [--size N] [--reserve N]
                     preflight before the first update, writing nothing:
                     dm-snapshot, userdata's filesystem and room for the
                     COW, the metadata store, the bootloader's state, the
                     parameters and devices; one PASS/WARN/SKIP/FAIL line
                     each with the fix, exit 1 if any fails
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
  help [COMMAND]     this text, or COMMAND's usage, flags and exit statuses
                     (as COMMAND --help)
  version            print cpinit's version (also: cpinit --version)

exit status: 0 done (or nothing to do), 1 failed or refused, 2 bad usage
(checked before anything is read or opened); boot-step also 3 (reboot) and
4 (power off), watch 3 (the COW overflowed). With --json (status, extents,
check) a failure is also one JSON object on stdout:
{"error":{"code":...,"message":...,"exit":...}}.
`

// errUsage is a bad command line: exit status 2, like flag's own. Every
// usage error is found before anything is read or opened: commands parse
// and check their flags and arguments first (parseFlags, openCmd), then
// act.
var errUsage = errors.New("bad usage")

// errRefused marks a command that declined because of the checkpoint's
// state or the system's configuration, having written nothing (refusef).
var errRefused = errors.New("refused")

// taggedError is err that is also tag for errors.Is, with err's message:
// the JSON error codes (errorCode) without changing what people read.
type taggedError struct{ err, tag error }

func (e *taggedError) Error() string   { return e.err.Error() }
func (e *taggedError) Unwrap() []error { return []error{e.err, e.tag} }

// usagef is a usage error saying what is wrong with the command line and
// what is allowed; runCLI adds the command's usage line.
func usagef(format string, a ...any) error {
	return &taggedError{fmt.Errorf(format, a...), errUsage}
}

// usageErr is a usage error that says no more than the usage line runCLI
// adds to it; kept for code written before usagef, which says what is
// wrong and is to be preferred.
func usageErr(synopsis string) error {
	return usagef("bad arguments or flags for %s", strings.Fields(synopsis)[0])
}

// errJSONAnswered tags a failure whose JSON answer the command has
// printed itself (check's report, with "ok": false): runCLI adds no error
// object after it, so --json output stays one JSON object.
var errJSONAnswered = errors.New("answered in JSON")

// refusef is a refusal (exit status 1, code refused): the message starts
// with "refusing to ...", says why and what to do.
func refusef(format string, a ...any) error {
	return &taggedError{fmt.Errorf(format, a...), errRefused}
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

// exitMeaning is each exit status in a command's --help.
var exitMeaning = map[int]string{
	exitOK:       "done (or nothing to do)",
	exitError:    "failed or refused",
	exitUsage:    "bad usage",
	exitReboot:   "reboot now",
	exitPowerOff: "power off",
}

// runCLI runs the command line tool: args without the program name, the
// command's output on stdout. The error (nil, a usage error, a failure)
// gives the exit status (exitStatus); main prints it on stderr.
func runCLI(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return usagef("no command given")
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		name = "help"
	case "-version", "--version":
		name = "version"
	}
	c := lookupCommand(name)
	if c == nil {
		return usagef("unknown command %q: the commands are %s (see cpinit help)", name, strings.Join(commandNames(), ", "))
	}
	err := c.run(args[1:], stdout)
	var h *helpRequest
	if errors.As(err, &h) {
		c.printHelp(stdout, h.fs)
		return nil
	}
	if errors.Is(err, errUsage) {
		err = fmt.Errorf("%s: %w; usage: cpinit %s (cpinit %s --help explains)", c.name, err, c.synopsis, c.name)
	}
	if err != nil && c.json && jsonRequested(args[1:]) && !errors.Is(err, errJSONAnswered) {
		writeJSONError(stdout, err)
	}
	return err
}

// command is one command of the tool: runCLI's dispatch, its --help and
// its row in docs/cli.md's exit status table. A new command is one entry
// in commands (commands.go) whose run parses its flags with newFlags and
// parseFlags (or openCmd) before it touches anything.
type command struct {
	name string
	// synopsis is the usage line after "cpinit ", as in `cpinit help`.
	synopsis string
	// about says what the command does, for --help: whole sentences,
	// wrapped at 76 columns.
	about string
	// json: the command takes --json, and then prints a failure as one
	// JSON error object on stdout too (writeJSONError).
	json bool
	// exits are the exit statuses the command can return, in order
	// (docs/cli.md's table, TestDocsCLIExits).
	exits []int
	run   func(args []string, stdout io.Writer) error
}

func lookupCommand(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

func commandNames() []string {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	return names
}

// printHelp is the command's --help: usage line, what it does, its flags
// (fs's, as flag.PrintDefaults prints them) and its exit statuses.
func (c *command) printHelp(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: cpinit %s\n\n%s", c.synopsis, c.about)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintf(w, "\nflags:\n")
		// flag.PrintDefaults names the flags "-json"; the usage lines and
		// the docs say "--json" (flag accepts both): help says the same.
		var b strings.Builder
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		for _, line := range strings.SplitAfter(b.String(), "\n") {
			if strings.HasPrefix(line, "  -") {
				line = "  --" + line[len("  -"):]
			}
			io.WriteString(w, line)
		}
	}
	var st []string
	for _, e := range c.exits {
		m := exitMeaning[e]
		if c.name == "watch" && e == exitOverflow {
			m = "the COW overflowed (no restart helps)"
		}
		st = append(st, fmt.Sprintf("%d %s", e, m))
	}
	fmt.Fprintf(w, "\nexit status: %s\n", strings.Join(st, ", "))
}

// helpRequest is -h or --help given to a command: runCLI prints the
// command's help with the flags of fs, and exits 0.
type helpRequest struct{ fs *flag.FlagSet }

func (h *helpRequest) Error() string { return "help requested" }
func (h *helpRequest) Unwrap() error { return flag.ErrHelp }

// newFlags is a command's flag set: it prints nothing (runCLI prints
// errors and help) and returns its errors (parseFlags).
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseFlags parses a command's flags: -h or --help is a *helpRequest, any
// other failure a usage error with flag's own words (an unknown flag, a
// missing or invalid value: the flag's Value says what it allows).
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return &helpRequest{fs}
	case err != nil:
		return usagef("%v", err)
	}
	return nil
}

// noArgs refuses arguments after the flags.
func noArgs(rest []string) error {
	if len(rest) != 0 {
		return usagef("unexpected argument %q: this command takes flags only", rest[0])
	}
	return nil
}

// jsonRequested says whether args, a command's arguments, ask for JSON
// output: the last --json (or -json, --json=BOOL) before a "--" decides,
// as it does for flag. It looks at the arguments rather than the parsed
// flags so that a failure to parse them is JSON too.
func jsonRequested(args []string) bool {
	on := false
	for _, a := range args {
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if name != "json" {
			continue
		}
		if !hasVal {
			on = true
		} else if b, err := strconv.ParseBool(val); err == nil {
			on = b
		}
	}
	return on
}

// Error codes of the JSON error object (docs/cli.md): stable, a script
// may switch on them. A new code is added only for a new kind of failure;
// a code is never renamed or given another meaning.
const (
	codeUsage           = "usage"            // bad command line (exit status 2)
	codeNotConfigured   = "not-configured"   // checkpoints are off: no metadata store, or no A/B bootloader state where one is needed
	codeNotFound        = "not-found"        // a device or file named does not exist
	codeUnreadableStore = "unreadable-store" // the metadata store cannot be read as cpinit's: no valid copy, copies that disagree, another program's data
	codeLocked          = "locked"           // another cpinit process held the store lock past --lock-wait
	codeRefused         = "refused"          // the checkpoint's state or the configuration forbids it; nothing was written
	codeFailed          = "failed"           // anything else: an I/O error, a kernel or device failure, a failed step
)

// errorCodes are the codes in the order errorCode tries them.
var errorCodes = []string{codeUsage, codeLocked, codeUnreadableStore, codeNotConfigured, codeNotFound, codeRefused, codeFailed}

// errorCode is the JSON error code of a command's error (nil: "").
func errorCode(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, errUsage):
		return codeUsage
	case errors.Is(err, errStoreLocked):
		return codeLocked
	case errors.Is(err, bootstate.ErrStoreCorrupt), errors.Is(err, bootstate.ErrStoreAmbiguous), errors.Is(err, bootstate.ErrStoreForeign):
		return codeUnreadableStore
	case errors.Is(err, errNoMetadata), errors.Is(err, bootstate.ErrNoSlotSwitch):
		return codeNotConfigured
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, devspec.ErrNotFound):
		return codeNotFound
	case errors.Is(err, errRefused):
		return codeRefused
	}
	return codeFailed
}

// jsonError is what a command given --json prints on stdout when it fails:
// one object, alone, instead of its output (docs/cli.md).
type jsonError struct {
	Error jsonErrorBody `json:"error"`
}

type jsonErrorBody struct {
	Code    string `json:"code"`    // errorCode
	Message string `json:"message"` // what main prints on stderr
	Exit    int    `json:"exit"`    // the exit status
}

func writeJSONError(w io.Writer, err error) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(jsonError{jsonErrorBody{Code: errorCode(err), Message: err.Error(), Exit: exitStatus(err)}})
}

func cmdParams(args []string, stdout io.Writer) error {
	fs := newFlags("params")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var cmdline string
	switch fs.NArg() {
	case 0:
		b, err := readCmdline()
		if err != nil {
			return err
		}
		cmdline = b
	case 1:
		cmdline = fs.Arg(0)
	default:
		return usagef("%d arguments: give the whole command line as one (quote it)", fs.NArg())
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
	fs := newFlags("extents")
	asJSON := fs.Bool("json", false, "print the extent map as JSON: extents, flags and fingerprint")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("want one FILE, got %d arguments", fs.NArg())
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

// cmdHelp is `cpinit help [COMMAND]`: the overview, or COMMAND's --help.
func cmdHelp(args []string, stdout io.Writer) error {
	fs := newFlags("help")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch fs.NArg() {
	case 0:
		fmt.Fprint(stdout, usage)
		return nil
	case 1:
		c := lookupCommand(fs.Arg(0))
		if c == nil {
			return usagef("no command %q: the commands are %s", fs.Arg(0), strings.Join(commandNames(), ", "))
		}
		// Every command's run answers -h before it looks at anything.
		var h *helpRequest
		if err := c.run([]string{"-h"}, stdout); !errors.As(err, &h) {
			return fmt.Errorf("help %s: the command did not answer -h (%v)", c.name, err)
		}
		c.printHelp(stdout, h.fs)
		return nil
	}
	return usagef("%d arguments: help takes at most one command name", fs.NArg())
}

// cmdVersion is `cpinit version` (and `cpinit --version`).
func cmdVersion(args []string, stdout io.Writer) error {
	fs := newFlags("version")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs.Args()); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "cpinit %s\n", cpinitVersion())
	return nil
}
