package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// cmdBootloader runs one request of RAUC's custom bootloader backend
// protocol (bootloadercmd.go). The get verbs only read the bootloader's
// state, without the store lock (as status); the set verbs run under it,
// as every command that writes misc does, with the record they decided on.
func cmdBootloader(args []string, stdout io.Writer) error {
	var o beginOpts
	var req blRequest
	sc, err := openCmd("bootloader", args, func(fs *flag.FlagSet) {
		o.register(fs, false)
	}, func(rest []string) error {
		var err error
		if req, err = parseBootloaderArgs(rest); err != nil {
			return err
		}
		return o.check()
	})
	if err != nil {
		return err
	}
	defer sc.close()
	if strings.HasPrefix(req.verb, "set-") {
		// Held from before the bootloader's state and the record are read
		// until the command exits, as for begin, commit and rollback.
		if err := sc.lockStore(); err != nil {
			return err
		}
	}
	bl := sc.bootloader()
	if bl == nil {
		return fmt.Errorf("bootloader %s: no A/B bootloader state is configured (cpinit.bootloader= or cpinit.misc=, docs/params.md): %w", req.verb, bootstate.ErrNoSlotSwitch)
	}
	st, err := bl.Load()
	if err != nil {
		return fmt.Errorf("bootloader %s: %s: %w", req.verb, bl.Describe(), err)
	}
	booted := sc.bootedSlot()
	switch req.verb {
	case "get-primary":
		next := st.Next()
		if next == "" {
			return fmt.Errorf("bootloader get-primary: %s has no bootable slot", bl.Describe())
		}
		si, err := resolveBootSlot(st, next)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, bootName(si))
		return nil
	case "get-current":
		if booted == "" {
			return fmt.Errorf("bootloader get-current: the booted slot is unknown (no cpinit.slot=, androidboot.slot_suffix= or androidboot.slot= on the kernel command line)")
		}
		si, err := resolveBootSlot(st, booted)
		if err != nil {
			return fmt.Errorf("bootloader get-current: %w", err)
		}
		fmt.Fprintln(stdout, bootName(si))
		return nil
	}
	si, err := resolveBootSlot(st, req.slot)
	if err != nil {
		return fmt.Errorf("bootloader %s: %w", req.verb, err)
	}
	if req.verb == "get-state" {
		if si.Bootable {
			fmt.Fprintln(stdout, "good")
		} else {
			fmt.Fprintln(stdout, "bad")
		}
		return nil
	}
	r, err := sc.load()
	if err != nil {
		return err
	}
	op, msg, err := decideBootloaderOp(req, si.Name, r, booted)
	if err != nil {
		return err
	}
	// Messages go to stderr: RAUC reads only the exit status of a set
	// verb, and logs stderr.
	switch op {
	case opBegin:
		o.slot = "_" + si.Name
		return sc.begin(o, os.Stderr)
	case opCommit:
		return sc.commit(r, os.Stderr)
	case opRollback:
		return sc.rollback(r, os.Stderr)
	case opNothing:
		stderrf("%s", msg)
		return nil
	}
	err = sc.updateMisc(func(s bootstate.ABState) error {
		switch op {
		case opSetActive:
			return s.SetActive(si.Name)
		case opMarkGood:
			return s.MarkSuccessful(si.Name)
		case opSetUnbootable:
			return s.SetUnbootable(si.Name)
		case opKeepCurrent:
			if err := s.SetActive(si.Name); err != nil {
				return err
			}
			return s.MarkSuccessful(si.Name)
		}
		return fmt.Errorf("bootloader %s: unexpected operation %v", req.verb, op)
	})
	if err != nil {
		return fmt.Errorf("bootloader %s %s: %w", req.verb, req.slot, err)
	}
	stderrf("slot %s: %s in %s", bootName(si), op, bl.Describe())
	return nil
}
