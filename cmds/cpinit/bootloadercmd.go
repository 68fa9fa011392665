package main

import (
	"fmt"
	"strings"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// `cpinit bootloader`: the bootloader's A/B state as an update agent sees
// it, through cpinit. Its verbs and output are those of RAUC's custom
// bootloader backend (RAUC docs/integration.rst, "Custom bootloader backend
// interface"; src/bootchooser.c custom_backend_get/set in RAUC 1.8):
//
//	get-primary            print the slot booted next; exit 0
//	set-primary SLOT       make SLOT the slot booted next
//	get-state SLOT         print "good" or "bad"
//	set-state SLOT good|bad
//	get-current            print the booted slot (RAUC 1.10 and later ask)
//
// so that RAUC, configured with bootloader=custom and this command as its
// bootloader-custom-backend (dist/rauc), changes the bootloader's state
// only through cpinit, and cpinit sees every transition: set-primary of the
// other slot after RAUC wrote it is `cpinit begin`, marking the update good
// in its trial is `cpinit commit`, marking it bad is `cpinit rollback`.
// What is not a checkpoint transition is passed to the bootloader's state
// as it is (marking the running slot good at every boot, marking a slot
// bad before RAUC writes it).
//
// Slots are named as the bootloader names them (SlotInfo.BootName: RAUC's
// A and B under the U-Boot and GRUB schemes), else as cpinit does (a, b).

// blOp is what one bootloader request does.
type blOp int

const (
	opPrint         blOp = iota // a get verb
	opBegin                     // arm a checkpoint for the slot (cpinit begin)
	opCommit                    // the update's trial is good (cpinit commit)
	opRollback                  // the update is bad, or its old slot is wanted back (cpinit rollback)
	opSetActive                 // bootloader only: the slot next, on trial
	opMarkGood                  // bootloader only: the slot good
	opSetUnbootable             // bootloader only: the slot never picked
	opKeepCurrent               // bootloader only: the running slot next, good
	opNothing                   // already so: say why, succeed
)

func (o blOp) String() string {
	return [...]string{"print", "begin", "commit", "rollback", "set-active", "mark-good", "set-unbootable", "keep-current", "nothing"}[o]
}

// blRequest is one parsed request: verb, slot (as given), state word.
type blRequest struct {
	verb, slot, state string
}

const bootloaderSynopsis = "bootloader [--size N] [--reserve N] [--tries N] get-primary | get-current | set-primary SLOT | get-state SLOT | set-state SLOT good|bad"

// parseBootloaderArgs checks the verb and its arguments (after the flags),
// before anything is opened: a bad request is a usage error.
func parseBootloaderArgs(args []string) (blRequest, error) {
	const verbs = "get-primary, get-current, set-primary SLOT, get-state SLOT or set-state SLOT good|bad"
	if len(args) == 0 {
		return blRequest{}, usagef("no verb: want %s", verbs)
	}
	r := blRequest{verb: args[0]}
	want := map[string]int{"get-primary": 0, "get-current": 0, "set-primary": 1, "get-state": 1, "set-state": 2}
	n, ok := want[r.verb]
	switch {
	case !ok:
		return blRequest{}, usagef("unknown verb %q: want %s", r.verb, verbs)
	case len(args)-1 != n:
		return blRequest{}, usagef("%s takes %d arguments, got %d: want %s", r.verb, n, len(args)-1, verbs)
	}
	if n >= 1 {
		r.slot = args[1]
		if r.slot == "" {
			return blRequest{}, usagef("%s: the slot is empty", r.verb)
		}
	}
	if n == 2 {
		r.state = args[2]
		if r.state != "good" && r.state != "bad" {
			return blRequest{}, usagef("set-state %s %q: the state is good or bad", r.slot, r.state)
		}
	}
	return r, nil
}

// resolveBootSlot finds the slot a request names: the bootloader's own
// name first (exactly, as RAUC compares bootnames), then cpinit's ("a",
// "_a").
func resolveBootSlot(st bootstate.ABState, name string) (bootstate.SlotInfo, error) {
	slots := st.Slots()
	for _, si := range slots {
		if si.BootName != "" && si.BootName == name {
			return si, nil
		}
	}
	for _, si := range slots {
		if bootstate.SameSlot(si.Name, name) {
			return si, nil
		}
	}
	names := make([]string, len(slots))
	for i, si := range slots {
		names[i] = bootName(si)
	}
	return bootstate.SlotInfo{}, fmt.Errorf("slot %q: %w (%s has %s)", name, bootstate.ErrUnknownSlot, st.Scheme(), strings.Join(names, ", "))
}

// bootName is how the bootloader names a slot, for the agent.
func bootName(si bootstate.SlotInfo) string {
	if si.BootName != "" {
		return si.BootName
	}
	return si.Name
}

// decideBootloaderOp maps a set request for slot (cpinit's name) to what it
// does, given the checkpoint record and the booted slot (cpinit's name, ""
// if unknown). It is pure: the command runs what it returns under the
// store lock it read the record with. msg says why for opNothing; err
// refuses (nothing is written). docs/rauc.md has the same table.
func decideBootloaderOp(req blRequest, slot string, r *bootstate.Record, booted string) (op blOp, msg string, err error) {
	isTarget := r.TargetSlot != "" && bootstate.SameSlot(r.TargetSlot, slot)
	isBooted := booted != "" && bootstate.SameSlot(booted, slot)
	armed := r.State == bootstate.StateCheckpointing && !r.Active
	trial := r.State == bootstate.StateCheckpointing && r.Active
	pending := r.State == bootstate.StateRollbackPending
	good := req.state == "good"
	switch req.verb {
	case "set-primary":
		switch {
		case pending && isTarget:
			return 0, "", refusef("refusing to make slot %s primary: the rollback of its update is pending (%s); reboot to run it, then install again", slot, r.Reason)
		case pending:
			return opNothing, fmt.Sprintf("slot %s is primary already: the rollback to it is pending; reboot to run it", slot), nil
		case (armed || trial) && isTarget:
			// Installed to the same slot again before rebooting (the armed
			// checkpoint still holds: the snapshot is taken at the update's
			// first boot), or the trial asks to stay primary (commit ends
			// it): the slot gets its tries back.
			return opSetActive, "", nil
		case armed || trial:
			// The old slot back: during the trial a rollback, before it the
			// armed checkpoint cancelled.
			return opRollback, "", nil
		case isBooted:
			// No update in progress: keep booting the running slot, good.
			return opKeepCurrent, "", nil
		}
		return opBegin, "", nil
	case "set-state":
		switch {
		case good && trial && isTarget && isBooted:
			return opCommit, "", nil
		case good && armed && isTarget:
			return 0, "", refusef("refusing to mark slot %s good: its update has not booted yet (the checkpoint is armed); it is marked good from its own trial boot", slot)
		case good && trial && isTarget:
			return 0, "", refusef("refusing to mark slot %s good from slot %q: only the update's trial boot can commit it", slot, booted)
		case good && pending && isTarget:
			return 0, "", refusef("refusing to mark slot %s good: the rollback of its update is pending (%s); it runs at the next boot", slot, r.Reason)
		case good:
			return opMarkGood, "", nil
		case armed && isTarget:
			// About to be written again (an agent marks its target bad
			// before writing it): the armed checkpoint still holds, the
			// next set-primary makes the slot active again. Should the
			// install stop here, the old slot boots and cpinit drops the
			// unused checkpoint.
			return opSetUnbootable, "", nil
		case trial && isTarget:
			return opRollback, "", nil
		case pending && isTarget:
			return opNothing, fmt.Sprintf("slot %s is bad already: the rollback of its update is pending; reboot to run it", slot), nil
		case armed || trial || pending:
			return 0, "", refusef("refusing to mark slot %s bad: it is the fallback of the update to slot %s, which the rollback boots (state %s)", slot, r.TargetSlot, r.State)
		}
		return opSetUnbootable, "", nil
	}
	return 0, "", usagef("bootloader %s: not a set verb", req.verb)
}
