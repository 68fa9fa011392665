package bootstate

import (
	"errors"
	"fmt"
)

// The bootloader's A/B state, whatever the bootloader (issue 16).
//
// cpinit talks to one of several bootloaders: Android's bootloader_control
// in misc (bootctl.go), U-Boot's environment under RAUC, Mender or a plain
// bootcount scheme, GRUB's environment block under RAUC's scheme, and
// systemd-boot's boot counting. Each backend decodes its state into an
// ABState (pure: decoding and encoding are tested on bytes), and a
// Bootloader reads and writes it where it lives (a block device region, a
// file, a directory of entries). PID 1 and the commands see only these two
// interfaces.

// SlotInfo is one slot as the bootloader sees it.
type SlotInfo struct {
	// Name is cpinit's name of the slot: "a", "b" (the Android suffix
	// without its "_"; a scheme that names its slots otherwise, RAUC's
	// "A"/"B" or Mender's partition numbers, maps them).
	Name string
	// BootName is the bootloader's own name for the slot where its scheme
	// names slots otherwise than cpinit: RAUC's bootname ("A"), a Mender
	// partition number ("2"), a bootcount slot value ("0:2"); "" where the
	// bootloader uses cpinit's names (Android misc, systemd-boot). An
	// update agent that talks to the bootloader through cpinit (RAUC's
	// custom backend: `cpinit bootloader`) sees these names.
	BootName string
	// Bootable: the bootloader may still pick the slot.
	Bootable bool
	// Successful: the bootloader's record says the slot booted well and
	// it boots it without counting tries (Android's successful_boot,
	// RAUC-on-GRUB's x_OK=1 with x_TRY=0, Mender's upgrade_available=0 on
	// the running partition, a blessed systemd-boot entry). Meaningful
	// only when TracksSuccess.
	Successful bool
	// TracksSuccess: the scheme records success apart from the try count.
	// RAUC's U-Boot scheme does not: a good slot and one on trial both
	// have BOOT_x_LEFT > 0. Where it is false, cpinit never infers a
	// commit from the bootloader.
	TracksSuccess bool
	// Tries is the number of boot attempts left before the bootloader
	// gives up on the slot; -1 when the scheme does not count them for
	// this slot (a successful Android slot, a blessed entry).
	Tries int
}

// ABState is a bootloader's A/B state, decoded. Its methods do no I/O: a
// Bootloader loads it, the caller changes it, the Bootloader saves it.
// Every change is a whole-state change the caller can redo after a power
// cut (setting a value, never counting).
type ABState interface {
	// Scheme names the backend and variable scheme, for messages and
	// `cpinit status`: "android-misc", "uboot-rauc", "uboot-mender",
	// "uboot-bootcount", "grub-rauc", "systemd-boot".
	Scheme() string
	// Slots returns the slots in the bootloader's order of names (a, b).
	Slots() []SlotInfo
	// Next returns the slot the bootloader will try at the next boot, ""
	// if it will find none bootable.
	Next() string
	// SetActive makes slot the one booted next, on trial (not
	// successful), with the scheme's full number of tries: what an update
	// agent does after writing the slot.
	SetActive(slot string) error
	// MarkSuccessful records that slot booted well: the bootloader keeps
	// booting it and stops counting (the commit).
	MarkSuccessful(slot string) error
	// SetUnbootable makes the bootloader never pick slot until a later
	// SetActive.
	SetUnbootable(slot string) error
	// FallBackFrom abandons slot's update as a bootloader that ran out of
	// tries would: the other slot is booted next, slot is unbootable.
	FallBackFrom(slot string) error
}

// BootRecorder is an ABState that records which slot the bootloader picked
// last (Android's slot_suffix). cpinit only compares it with the kernel
// command line (CheckBootedSlot); the command line decides.
type BootRecorder interface {
	// RecordedBoot returns the recorded slot ("" if none) and where it is
	// recorded, for the warning ("misc's slot_suffix").
	RecordedBoot() (slot, where string)
}

// Reverter is an ABState that can take back the content of an older state
// of the same backend: how a caller undoes a change it saved (a failed
// `cpinit begin`). Saving the older state itself would not do: backends
// that guard against concurrent writers refuse to save a state loaded
// before the storage last changed. The caller loads the current state,
// reverts it to the older one's content and saves it.
type Reverter interface {
	RevertTo(old ABState) error
}

// Bootloader is where an ABState lives: it reads and writes it, durably
// (flushed) before Save returns. Save must leave either the old or the new
// state readable after a power cut at any point (a redundant copy, a
// rename, a single-sector write), never neither.
type Bootloader interface {
	// Describe names the backend and where its state lives, e.g.
	// "android misc /dev/vde", for messages.
	Describe() string
	Load() (ABState, error)
	Save(ABState) error
}

// Errors a backend wraps (with the device or file and what to do) so that
// callers and tests can tell bad input apart with errors.Is. On any of them
// the backend has written nothing.
var (
	// ErrUnknownSlot: a slot name the bootloader's state does not have.
	ErrUnknownSlot = errors.New("no such slot in the bootloader's state")
	// ErrCorrupt: the stored state fails its own check (a bad CRC, a
	// wrong magic or size, a malformed entry).
	ErrCorrupt = errors.New("the bootloader's state is corrupt")
	// ErrNoScheme: the state is intact but holds no A/B variable scheme
	// cpinit knows, or misses a variable the scheme needs.
	ErrNoScheme = errors.New("the bootloader's state has no A/B scheme cpinit knows")
	// ErrFull: the new state does not fit where the bootloader keeps it.
	ErrFull = errors.New("the bootloader's state does not fit its storage")
)

// OtherSlotOf returns the one other slot of a two-slot state: the slot a
// fallback from slot boots. cpinit knows the fallback only on two-slot
// devices.
func OtherSlotOf(s ABState, slot string) (string, error) {
	slots := s.Slots()
	if len(slots) != 2 {
		return "", fmt.Errorf("bootstate: %s: the slot to fall back to from %s: cpinit knows it only on two-slot devices, this one has %d", s.Scheme(), slot, len(slots))
	}
	switch {
	case SameSlot(slots[0].Name, slot):
		return slots[1].Name, nil
	case SameSlot(slots[1].Name, slot):
		return slots[0].Name, nil
	}
	return "", fmt.Errorf("bootstate: %s: slot %q: %w (it has %s and %s)", s.Scheme(), slot, ErrUnknownSlot, slots[0].Name, slots[1].Name)
}

// SlotOf returns the SlotInfo of slot in s.
func SlotOf(s ABState, slot string) (SlotInfo, error) {
	for _, si := range s.Slots() {
		if SameSlot(si.Name, slot) {
			return si, nil
		}
	}
	return SlotInfo{}, fmt.Errorf("bootstate: %s: slot %q: %w", s.Scheme(), slot, ErrUnknownSlot)
}
