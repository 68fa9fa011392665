package main

import "io"

// commands is the command line tool's table (runCLI, `cpinit help
// COMMAND`, every command's --help, docs/cli.md's exit status table). It
// is set in init: help's run looks commands up in it.
var commands []command

// Exit statuses for the table: most commands return these.
var exitsCommon = []int{exitOK, exitError, exitUsage}

func init() {
	commands = []command{
		{name: "params", synopsis: "params [CMDLINE]", exits: exitsCommon, run: cmdParams, about: `Parse the cpinit.* kernel parameters of CMDLINE (default: /proc/cmdline) and
print what PID 1 would use. It reads nothing else.
`},
		{name: "extents", synopsis: "extents [--json] FILE", json: true, exits: exitsCommon, run: cmdExtents, about: `Print the dm table (dmsetup format) that maps FILE's blocks on its device,
after checking that the extents are safe to map. --json prints the extents,
their flags and the map's fingerprint instead.
`},
		{name: "check", synopsis: checkSynopsis, json: true, exits: exitsCommon, run: cmdCheck, about: `A preflight before the first update, writing nothing: the kernel's
device-mapper and dm-snapshot, userdata's filesystem (ext4 or f2fs, with
the room begin's COW would take), the metadata store (blank or cpinit's),
the bootloader's state, the parameters and the devices they name. One
PASS, WARN, SKIP or FAIL line per check, with the fix; exit 1 if any fails.
`},
		{name: "status", synopsis: "status [--json] [--window D]", json: true, exits: exitsCommon, run: cmdStatus, about: `Show the checkpoint's state, the slots, tries, COW usage and fill rate,
whether a rollback is still possible, and the running or last rollback's
progress. It only reads, takes no lock, and exits 0 whenever it could read
the devices, whatever the state (docs/cli.md).
`},
		{name: "begin", synopsis: "begin [--size N] [--slot S] [--tries N] [--reserve N] [--no-activate]", exits: exitsCommon, run: cmdBegin, about: `Arm a checkpoint for the update's first boot: allocate and pin the COW file
in userdata, record its extents in the metadata store and make the update's
slot active in the bootloader (unless --no-activate). A begin that fails
undoes what it did.
`},
		{name: "commit", synopsis: "commit [--if-trial]", exits: exitsCommon, run: cmdCommit, about: `Keep the update: mark its slot good, drop the snapshot online and delete the
COW file. --if-trial commits only on the update's trial boot and otherwise
succeeds doing nothing.
`},
		{name: "rollback", synopsis: "rollback", exits: exitsCommon, run: cmdRollback, about: `Request a rollback of userdata at the next boot: the old slot is made
active, and the next boot merges the checkpoint back. Before the update has
booted it cancels the checkpoint instead.
`},
		{name: "watch", synopsis: "watch [--policy abort|commit|warn] [--warn P] [--act P] [--interval D] [--lead D] [--once] [--no-reboot]", exits: []int{exitOK, exitError, exitUsage, exitOverflow}, run: cmdWatch, about: `During a trial, watch the COW fill up: warn at --warn percent, and at --act
percent, or past the warning when it would be full within --lead, apply the
policy: roll back and reboot (abort), commit, or only warn (and keep
watching). It exits at once when there is no trial, 0 when the trial
ends, and with status 3 if the COW overflowed.
`},
		{name: "merge", synopsis: "merge [--method restore|kernel]", exits: exitsCommon, run: cmdMerge, about: `Run a pending rollback now, in recovery mode with userdata unmounted, with
progress: restore copies the saved chunks home offline, kernel has the
kernel's snapshot-merge do it.
`},
		{name: "recover", synopsis: "recover keep-current [--yes] [--cow-path P]", exits: exitsCommon, run: cmdRecover, about: recoverAbout},
		{name: "bootloader", synopsis: bootloaderSynopsis, exits: exitsCommon, run: cmdBootloader, about: `The bootloader's A/B state through cpinit, as RAUC's custom bootloader
backend asks for it (docs/rauc.md): get-primary, get-current, get-state
SLOT, set-primary SLOT (the other slot: begin, with these flags), set-state
SLOT good|bad (in the update's trial: commit, rollback).
`},
		{name: "boot-step", synopsis: "boot-step --root DIR [--cmdline CMDLINE]", exits: []int{exitOK, exitError, exitUsage, exitReboot, exitPowerOff}, run: func(args []string, _ io.Writer) error { return cmdBootStep(args) }, about: `PID 1's boot step, run by a distribution's initramfs once it has mounted the
root at DIR: create, reattach or merge the snapshot as the cpinit.*
parameters say and mount userdata at DIR + cpinit.datadir. The exit status
says what the calling script does next: 0 go on, 3 reboot now, 4 power
off, 1 stop the boot.
`},
		{name: "help", synopsis: "help [COMMAND]", exits: []int{exitOK, exitUsage}, run: cmdHelp, about: `Print the overview of the commands, or COMMAND's usage, flags and exit
statuses (the same as cpinit COMMAND --help).
`},
		{name: "version", synopsis: "version", exits: []int{exitOK, exitUsage}, run: cmdVersion, about: `Print cpinit's version: the one stamped at build time (make install, the
initramfs builder), else the go command's build information.
`},
	}
}
