// Package bootstate decides, for each boot, what cpinit does with the
// userdata checkpoint, and keeps the state that decision needs across power
// cuts. It is pure Go with no device-mapper or filesystem code: those are
// behind the Env interface (implemented in cmds/cpinit with pkg/dmsnap and
// pkg/fiemap) so that everything here runs and is tested on the host.
//
// # Pieces
//
//   - The state machine (fsm.go), built on github.com/looplab/fsm: states
//     fresh, checkpointing (sub-phases armed and active, in Record.Active),
//     committed and rollback-pending; events prepare, begin, boot-attempt,
//     activate, commit, cancel, rollback, overflow, merge-attempt,
//     merge-done, cleanup-done. Apply(record, step) is pure and returns a
//     *TransitionError (From, Event, Err) for impossible events and failed
//     guards. docs/fsm.md is generated from the table (go generate).
//   - The record (record.go): versioned binary encoding with CRC32C, the
//     COW geometry (ExtentMap: device major:minor and size, chunk size, up
//     to MaxSegments segments in 512-byte sectors) and its SHA-256
//     fingerprint. The decoder rejects anything malformed, never panics,
//     and is fuzzed (FuzzDecodeRecord).
//   - The store (store.go): two copies at offsets 0 and CopyStride (4 MiB)
//     of a small device or file outside userdata, named by the
//     cpinit.metadata kernel parameter. Save writes both copies, one after
//     the other, each followed by a flush, so a torn write always leaves
//     one complete copy of the old or the new record; Load takes the valid
//     copy with the highest generation.
//   - The Android boot control block (bootctl.go): struct
//     bootloader_control at byte 2048 of misc, bit-compatible with AOSP
//     libboot_control and U-Boot (golden bytes from the C struct compiled by
//     GCC; FuzzDecodeBootControl), plus the libboot_control operations and
//     U-Boot's slot selection for test harnesses.
//   - Decide (decide.go): pure; takes the stored record (or why it could
//     not be read), the booted slot, the boot control block, the kernel
//     parameters and, in a second round, the re-verified extent map; it
//     returns one Action.
//   - RunBoot (boot.go): the loop PID 1 runs: Load, Decide, persist the
//     action's Before step, perform it through Env, persist its After
//     step. It is what the power-cut property test drives.
//
// # Write-ahead rules
//
// A state is persisted before the side effects that depend on it, and every
// step is idempotent, so a power cut at any point makes the next boot redo
// or continue the same step:
//
//   - boot-attempt is saved before the snapshot is created or reattached,
//     so every trial boot is counted even if it crashes.
//   - activate is saved after the kernel wrote the snapshot's COW header
//     and before the origin is mounted read-write: an armed record means
//     nothing was written through a snapshot, so zeroing the COW again is
//     safe; an active record means the COW holds saved chunks and is never
//     zeroed again.
//   - rollback (rollback-pending) is saved before verification and merge;
//     it is the point of no return: no event leads from it back to
//     checkpointing or to commit.
//   - merge-done is saved after the kernel reports the merge complete and
//     before the COW file is deleted; the fresh record keeps the file's path
//     as a leftover until cleanup-done, so a cut in between deletes it next
//     boot. A merge is only started after the extent map was re-derived
//     through a read-only dm view and its fingerprint matched the record.
//   - prepare records the COW path in the fresh record before the file is
//     allocated, so a crash before begin never leaks the file.
//   - Slot and data in step: an update abandoned on a boot of its own slot
//     (cpinit.abort=1, the attempt cap, the native counter, a pending
//     rollback resumed there) first switches the bootloader away from that
//     slot (Action.FallBack, Env.FallBack: the other slot active, the
//     update's unbootable, flushed), and only then records the rollback or
//     cancel. merge-done (and cleanup-done after a cancel) keeps the
//     update's slot in the fresh record's TargetSlot; while it is there a
//     boot of that slot never hands over: it switches the bootloader again
//     and reboots (RebootOtherSlot), or stops if cpinit cannot tell the
//     bootloader (ErrNoSlotSwitch). The first boot of another slot forgets
//     it (cleanup-done). So no power cut can start the update's system on
//     the data rolled back from it.
//   - Once a merge attempt was recorded, the kernel may have copied part of
//     the COW back: an Invalid snapshot then stops the boot (the COW holds
//     the only copy of the rest of the old data) instead of being dropped
//     like an overflow.
//   - The COW file is deleted only in committed or fresh, i.e. when no
//     rollback can be needed.
//
// Counters keep every loop finite: the native counter (Record.TriesLeft,
// at most MaxNativeTries) counts only in checkpointing; cpinit's hard cap
// MaxBootAttempts applies in both counter modes; MaxMergeAttempts stops a
// merge that fails every boot. A commit leaves TriesLeft >= 1, as AOSP's
// MarkBootSuccessful leaves tries_remaining = 1.
//
// # User-space protocols (cmds/cpinit)
//
//   - begin: Save prepare(path); allocate and pin the file, take FIEMAP
//     extents; Save begin; then (Android) SetUnbootable(target) and
//     SetActive(target) in misc, as update_engine does (a slot that once
//     booted successfully would otherwise never be counted down).
//   - commit: (Android) MarkSuccessful(current) in misc first, then Save
//     commit, then tear down cp-snap, delete the file, Save cleanup-done
//     (or leave that to the next boot). Marking the slot first means a cut
//     in between leaves a good slot with a pending trial, which cpinit's
//     attempt cap ends; the other order could let the bootloader fall back
//     to the old slot with committed data.
//   - rollback: (Android) FallBackFrom(update's slot) in misc first (old
//     slot active, the update's unbootable), then Save
//     rollback(abort) if active, else cancel; reboot. A cut in between
//     boots the old slot on a checkpointing record: a slot fallback, the
//     same rollback. The other order could boot the new slot on a
//     rollback-pending record and merge the old data under the new system.
//   - recovery: CmdStatus to inspect; CmdKeepCurrent writes
//     RecoveryKeepCurrent(path) with Store.Format.
//
// # Kernel parameters
//
// cpinit.slot=, else androidboot.slot_suffix=, else androidboot.slot= give
// the booted slot (SlotFromCmdline). The command line is the only source:
// misc's slot_suffix is what a bootloader last wrote there, and one that
// falls back without rewriting it would make the old slot look like the
// update's (CheckBootedSlot reports a disagreement); cpinit.abort=1 asks for a rollback
// (Params.Abort). cmds/cpinit also reads cpinit.metadata= (the store),
// cpinit.misc= (the misc partition, if the bootloader keeps A/B state
// there) and cpinit.userdata= (Params.Userdata).
//
// # Corruption policy
//
// Metadata store: a copy with a bad magic, version, CRC32C, field or
// fingerprint is invalid; Load uses the other copy and reports Degraded
// (the next Save rewrites both). If no copy is valid, Load fails with
// ErrStoreCorrupt, Decide returns StopForRecovery, and Save refuses to
// write (Format is the deliberate override), so the evidence is kept for a
// human. Two valid copies with one generation and different bytes are
// ErrStoreAmbiguous and stop the same way. A store whose whole region is
// zero, or whose copy B's area is zero while copy A holds the beginning of
// a record and nothing past it (only a torn very first write can produce
// that, see tornFirstWrite), holds no durable record (ErrNoRecord): Decide
// mounts plainly and formats it. Anything else without a valid copy and
// without the record magic in either header is ErrStoreForeign (a
// *ForeignDataError names the first non-zero bytes): a filesystem or
// another tool's data on a device wrongly named as the store. Decide stops
// for recovery, and Save and Format both refuse it; only a human who knows
// the data is disposable wipes it. These checks read both copy areas
// whole, which happens only when no copy is valid.
//
// Android misc block: DecodeBootControl checks CRC, magic, version and
// nb_slot in U-Boot's order and returns a typed *BootControlError.
// cpinit never repairs or rewrites a bad block: unlike libboot_control's
// BootControl::Init, which re-initialises defaults (marking the current
// slot successful), and U-Boot, which resets or restores a backup, cpinit
// leaves that to the bootloader, which owns the block ("The bootloader
// should repair this situation before booting", libboot_control.cpp). A
// bad block is never by itself a reason for a merge, a deletion or a
// commit: Decide then relies on the booted slot from the kernel command
// line and on cpinit's own counters, and if the booted slot is unknown
// while a checkpoint names a target slot, it stops for recovery.
//
// # Sources
//
// AOSP bootable/recovery: bootloader_message/include/bootloader_message/
// bootloader_message.h (struct bootloader_message, bootloader_message_ab,
// bootloader_control, slot_metadata) and boot_control/libboot_control.cpp
// (CRC32, offset, InitDefaultBootloaderControl, MarkBootSuccessful,
// SetActiveBootSlot, SetSlotAsUnbootable). U-Boot boot/android_ab.c
// (ab_select_slot, ab_compare_slots). AOSP system/vold Checkpoint.cpp for
// the idea of a retry counter in /metadata and a rollback that resumes
// after power loss. Linux Documentation/admin-guide/device-mapper/
// snapshot.rst for merge completion and persistence.
package bootstate
