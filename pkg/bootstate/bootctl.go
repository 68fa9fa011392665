package bootstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Android A/B boot control block ("bootloader_control").
//
// Source of the layout: AOSP bootable/recovery
// bootloader_message/include/bootloader_message/bootloader_message.h
// (struct bootloader_control, struct slot_metadata, both
// __attribute__((packed))), and its users: bootable/recovery
// boot_control/libboot_control.cpp (LoadBootloaderControl,
// UpdateAndSaveBootloaderControl, MarkBootSuccessful, SetActiveBootSlot)
// and U-Boot boot/android_ab.c (ab_select_slot, the bootloader side).
//
// The block lives at offsetof(bootloader_message_ab, slot_suffix) in the
// misc partition: struct bootloader_message is 32+32+768+32+1184 = 2048
// bytes, so the offset is 2048 (libboot_control's kBootloaderControlOffset;
// U-Boot's "A/B control at byte 0x800").
//
// Byte layout (32 bytes, little endian), as GCC >= 4.4 lays out the packed
// struct on a little-endian target. Bit-fields are allocated from the least
// significant bit of each byte, and in a packed struct a bit-field may
// straddle a byte boundary, so merge_status:3 takes bits 6-7 of byte 9 and
// bit 0 of byte 10 (GCC even warns "offset of packed bit-field
// 'merge_status' has changed in GCC 4.4": older GCC placed it in byte 10).
// reserved0[1] then starts at the next whole byte, 11. This was checked by
// compiling the struct with GCC 12 on this machine; testdata/bootctl_golden.c
// is the program that produced the golden bytes in bootctl_test.go.
//
//	0..3   slot_suffix[4]     NUL-terminated, e.g. "_a\0\0"
//	4..7   magic              0x42414342 ("BCAB" in memory)
//	8      version            1
//	9      bits 0-2 nb_slot, bits 3-5 recovery_tries_remaining,
//	       bits 6-7 merge_status bits 0-1
//	10     bit 0 merge_status bit 2; bits 1-7 unnamed padding (kept)
//	11     reserved0[0]
//	12..19 slot_info[4], 2 bytes each:
//	       byte 0: bits 0-3 priority, 4-6 tries_remaining, 7 successful_boot
//	       byte 1: bit 0 verity_corrupted, bits 1-7 reserved
//	20..27 reserved1[8]
//	28..31 crc32_le: CRC-32 (IEEE, as zlib) of bytes 0..27, little endian
//
// Reserved and padding bits are carried through decode/encode untouched:
// the header says A/B implementations may keep private data in this field.
const (
	// BootControlOffset is the byte offset of bootloader_control in misc.
	BootControlOffset = 2048
	// BootControlSize is sizeof(struct bootloader_control).
	BootControlSize = 32
	// BootControlMagic is BOOT_CTRL_MAGIC.
	BootControlMagic = 0x42414342
	// BootControlVersion is BOOT_CTRL_VERSION.
	BootControlVersion = 1
	// MaxSlots is the number of slot_info entries.
	MaxSlots = 4
	// MaxSlotTries is the largest tries_remaining value (3 bits).
	MaxSlotTries = 7
	// MaxSlotPriority is the largest priority value (4 bits).
	MaxSlotPriority = 15
)

// MergeStatus is android.hardware.boot@1.1 MergeStatus, stored in 3 bits.
type MergeStatus uint8

// Values from hardware/interfaces/boot/1.1/types.hal.
const (
	MergeNone        MergeStatus = 0
	MergeUnknown     MergeStatus = 1
	MergeSnapshotted MergeStatus = 2
	MergeMerging     MergeStatus = 3
	MergeCancelled   MergeStatus = 4
)

// SlotMetadata is struct slot_metadata.
type SlotMetadata struct {
	Priority        uint8 // 0..15; 0 means unbootable
	TriesRemaining  uint8 // 0..7
	SuccessfulBoot  bool
	VerityCorrupted bool
	Reserved        uint8 // 7 reserved bits, preserved
}

// BootControl is struct bootloader_control, field for field, including the
// reserved bytes so that a decode/encode round trip is the identity.
type BootControl struct {
	SlotSuffix             [4]byte
	Magic                  uint32
	Version                uint8
	NbSlot                 uint8 // 3 bits
	RecoveryTriesRemaining uint8 // 3 bits
	MergeStatus            MergeStatus
	Pad10                  uint8 // bits 1-7 of byte 10, unnamed padding
	Reserved0              uint8
	Slots                  [MaxSlots]SlotMetadata
	Reserved1              [8]byte
	CRC32LE                uint32 // as read; Encode recomputes it
}

// Errors from DecodeBootControl. Each is wrapped in a *BootControlError.
var (
	ErrBootControlShort   = errors.New("boot control block too short")
	ErrBootControlMagic   = errors.New("bad boot control magic")
	ErrBootControlVersion = errors.New("unsupported boot control version")
	ErrBootControlCRC     = errors.New("boot control CRC-32 mismatch")
	ErrBootControlSlots   = errors.New("boot control nb_slot out of range")
)

// BootControlError describes why a bootloader_control block was rejected.
type BootControlError struct {
	Err    error // one of the ErrBootControl* values
	Detail string
}

func (e *BootControlError) Error() string {
	return fmt.Sprintf("bootstate: misc bootloader_control: %v: %s", e.Err, e.Detail)
}

func (e *BootControlError) Unwrap() error { return e.Err }

// bootControlCRC is libboot_control's CRC32(): the reflected 0xEDB88320
// polynomial, init ~0, final xor ~0, i.e. crc32.ChecksumIEEE.
func bootControlCRC(b []byte) uint32 { return crc32.ChecksumIEEE(b[:28]) }

// DecodeBootControl parses the 32-byte block. It checks, in this order, the
// same things U-Boot's ab_select_slot checks before trusting the block:
// CRC, magic, version (> BOOT_CTRL_VERSION is unsupported), nb_slot <= 4.
// It never panics on any input; extra bytes after the first 32 are ignored
// so a caller may pass the whole 2048.. region.
func DecodeBootControl(b []byte) (*BootControl, error) {
	if len(b) < BootControlSize {
		return nil, &BootControlError{ErrBootControlShort, fmt.Sprintf("%d bytes, need %d", len(b), BootControlSize)}
	}
	b = b[:BootControlSize]
	c := &BootControl{}
	copy(c.SlotSuffix[:], b[0:4])
	c.Magic = binary.LittleEndian.Uint32(b[4:8])
	c.Version = b[8]
	c.NbSlot = b[9] & 7
	c.RecoveryTriesRemaining = b[9] >> 3 & 7
	c.MergeStatus = MergeStatus(b[9]>>6 | (b[10]&1)<<2)
	c.Pad10 = b[10] >> 1
	c.Reserved0 = b[11]
	for i := range c.Slots {
		x, y := b[12+2*i], b[13+2*i]
		c.Slots[i] = SlotMetadata{
			Priority:        x & 0xf,
			TriesRemaining:  x >> 4 & 7,
			SuccessfulBoot:  x>>7 == 1,
			VerityCorrupted: y&1 == 1,
			Reserved:        y >> 1,
		}
	}
	copy(c.Reserved1[:], b[20:28])
	c.CRC32LE = binary.LittleEndian.Uint32(b[28:32])

	if want := bootControlCRC(b); c.CRC32LE != want {
		return nil, &BootControlError{ErrBootControlCRC, fmt.Sprintf("stored %#08x, computed %#08x", c.CRC32LE, want)}
	}
	if c.Magic != BootControlMagic {
		return nil, &BootControlError{ErrBootControlMagic, fmt.Sprintf("%#08x, want %#08x", c.Magic, BootControlMagic)}
	}
	if c.Version > BootControlVersion || c.Version == 0 {
		return nil, &BootControlError{ErrBootControlVersion, fmt.Sprintf("%d, want %d", c.Version, BootControlVersion)}
	}
	if c.NbSlot > MaxSlots {
		return nil, &BootControlError{ErrBootControlSlots, fmt.Sprintf("%d, at most %d", c.NbSlot, MaxSlots)}
	}
	return c, nil
}

// Encode returns the 32 bytes with a freshly computed crc32_le, as
// UpdateAndSaveBootloaderControl does before writing. Out-of-range field
// values are an error rather than silently truncated to their bit width.
func (c *BootControl) Encode() ([]byte, error) {
	if c.NbSlot > 7 || c.RecoveryTriesRemaining > 7 || c.MergeStatus > 7 || c.Pad10 > 0x7f {
		return nil, fmt.Errorf("bootstate: boot control field out of range: %+v", *c)
	}
	b := make([]byte, BootControlSize)
	copy(b[0:4], c.SlotSuffix[:])
	binary.LittleEndian.PutUint32(b[4:8], c.Magic)
	b[8] = c.Version
	b[9] = c.NbSlot | c.RecoveryTriesRemaining<<3 | uint8(c.MergeStatus)<<6
	b[10] = uint8(c.MergeStatus)>>2 | c.Pad10<<1
	b[11] = c.Reserved0
	for i, s := range c.Slots {
		if s.Priority > MaxSlotPriority || s.TriesRemaining > MaxSlotTries || s.Reserved > 0x7f {
			return nil, fmt.Errorf("bootstate: boot control slot %d field out of range: %+v", i, s)
		}
		x := s.Priority | s.TriesRemaining<<4
		if s.SuccessfulBoot {
			x |= 0x80
		}
		y := s.Reserved << 1
		if s.VerityCorrupted {
			y |= 1
		}
		b[12+2*i], b[13+2*i] = x, y
	}
	copy(b[20:28], c.Reserved1[:])
	c.CRC32LE = bootControlCRC(b)
	binary.LittleEndian.PutUint32(b[28:32], c.CRC32LE)
	return b, nil
}

// SlotSuffixes are the suffixes libboot_control uses for slots 0..3.
var SlotSuffixes = [MaxSlots]string{"_a", "_b", "_c", "_d"}

// SlotIndex maps a suffix ("_a" or "a") to its slot number, or -1.
func SlotIndex(suffix string) int {
	for i, s := range SlotSuffixes {
		if suffix == s || suffix == s[1:] {
			return i
		}
	}
	return -1
}

// Suffix returns the NUL-terminated slot_suffix field as a string.
func (c *BootControl) Suffix() string {
	n := bytes.IndexByte(c.SlotSuffix[:], 0)
	if n < 0 {
		n = len(c.SlotSuffix)
	}
	return string(c.SlotSuffix[:n])
}

// NewBootControl returns the block libboot_control's
// InitDefaultBootloaderControl writes for nbSlot slots when running from
// current: every slot priority 7 with 7 tries, the current one marked
// successful, recovery_tries_remaining 0.
func NewBootControl(nbSlot, current int) (*BootControl, error) {
	if nbSlot < 1 || nbSlot > MaxSlots || current < 0 || current >= nbSlot {
		return nil, fmt.Errorf("bootstate: NewBootControl(%d slots, current %d): out of range", nbSlot, current)
	}
	c := &BootControl{Magic: BootControlMagic, Version: BootControlVersion, NbSlot: uint8(nbSlot)}
	copy(c.SlotSuffix[:], SlotSuffixes[current])
	for i := 0; i < nbSlot; i++ {
		c.Slots[i] = SlotMetadata{Priority: 7, TriesRemaining: MaxSlotTries, SuccessfulBoot: i == current}
	}
	return c, nil
}

// SetActive mirrors libboot_control BootControl::SetActiveBootSlot: the
// slot gets priority 15 and 6 tries, every other slot at 15 drops to 14; the
// successful bit is left alone; verity_corrupted is cleared only when
// switching to another slot than current.
func (c *BootControl) SetActive(slot, current int) error {
	if slot < 0 || slot >= int(c.NbSlot) || slot >= MaxSlots {
		return fmt.Errorf("bootstate: set active slot %d: only %d slots", slot, c.NbSlot)
	}
	for i := 0; i < int(c.NbSlot) && i < MaxSlots; i++ {
		if i != slot && c.Slots[i].Priority >= MaxSlotPriority {
			c.Slots[i].Priority = MaxSlotPriority - 1
		}
	}
	c.Slots[slot].Priority = MaxSlotPriority
	c.Slots[slot].TriesRemaining = 6
	if slot != current {
		c.Slots[slot].VerityCorrupted = false
	}
	return nil
}

// OtherSlot is the slot a two-slot device falls back to from slot.
func (c *BootControl) OtherSlot(slot int) (int, error) {
	if c.NbSlot != 2 || slot < 0 || slot > 1 {
		return -1, fmt.Errorf("bootstate: the slot to fall back to from slot %d: cpinit knows it only on two-slot devices, misc has %d", slot, c.NbSlot)
	}
	return 1 - slot, nil
}

// FallBackFrom abandons slot's update, as a bootloader that ran out of tries
// would: the other slot becomes active (SetActive) and slot unbootable
// (SetSlotAsUnbootable), so the bootloader boots the old system from the
// next boot on and never the update again until an update agent makes its
// slot active anew. current is the slot running now.
func (c *BootControl) FallBackFrom(slot, current int) error {
	other, err := c.OtherSlot(slot)
	if err != nil {
		return err
	}
	if err := c.SetActive(other, current); err != nil {
		return err
	}
	return c.SetUnbootable(slot)
}

// MarkSuccessful mirrors BootControl::MarkBootSuccessful: successful_boot=1
// and tries_remaining=1, because U-Boot treats tries_remaining==0 as
// unbootable even for a successful slot ("success leaves tries >= 1").
func (c *BootControl) MarkSuccessful(slot int) error {
	if slot < 0 || slot >= int(c.NbSlot) || slot >= MaxSlots {
		return fmt.Errorf("bootstate: mark slot %d successful: only %d slots", slot, c.NbSlot)
	}
	c.Slots[slot].SuccessfulBoot = true
	c.Slots[slot].TriesRemaining = 1
	return nil
}

// SetUnbootable mirrors BootControl::SetSlotAsUnbootable.
func (c *BootControl) SetUnbootable(slot int) error {
	if slot < 0 || slot >= int(c.NbSlot) || slot >= MaxSlots {
		return fmt.Errorf("bootstate: mark slot %d unbootable: only %d slots", slot, c.NbSlot)
	}
	c.Slots[slot].SuccessfulBoot = false
	c.Slots[slot].TriesRemaining = 0
	return nil
}

// BootloaderSelect plays the bootloader, as U-Boot's ab_select_slot does:
// among slots 0..nb_slot-1 that are not verity_corrupted and have
// tries_remaining > 0, pick the best by (priority, successful_boot,
// tries_remaining), lowest index on ties; if the pick has not booted
// successfully, decrement its tries_remaining before booting (the boot
// attempt is registered first, so a crashing slot is not picked forever);
// and set slot_suffix. It returns -1 when no slot is bootable. The QEMU
// harness and the property tests use it; cpinit itself never does this.
func (c *BootControl) BootloaderSelect() int {
	best := -1
	n := int(c.NbSlot)
	if n > MaxSlots {
		n = MaxSlots
	}
	better := func(a, b SlotMetadata) bool {
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		if a.SuccessfulBoot != b.SuccessfulBoot {
			return a.SuccessfulBoot
		}
		return a.TriesRemaining > b.TriesRemaining
	}
	for i := 0; i < n; i++ {
		s := c.Slots[i]
		if s.VerityCorrupted || s.TriesRemaining == 0 {
			continue
		}
		if best < 0 || better(s, c.Slots[best]) {
			best = i
		}
	}
	if best < 0 {
		return -1
	}
	if !c.Slots[best].SuccessfulBoot {
		c.Slots[best].TriesRemaining--
	}
	c.SlotSuffix = [4]byte{}
	copy(c.SlotSuffix[:], SlotSuffixes[best])
	return best
}

// AndroidState is the Android misc backend's ABState: the block, and the
// slot running now (libboot_control's SetActiveBootSlot clears
// verity_corrupted only when switching away from it; -1 if unknown).
type AndroidState struct {
	BC      *BootControl
	Current int
}

// Scheme implements ABState.
func (s *AndroidState) Scheme() string { return "android-misc" }

// RevertTo implements Reverter: the whole block as old has it.
func (s *AndroidState) RevertTo(old ABState) error {
	o, ok := old.(*AndroidState)
	if !ok || o.BC == nil {
		return fmt.Errorf("bootstate: android misc: cannot revert to a %s state", old.Scheme())
	}
	c := *o.BC
	s.BC = &c
	return nil
}

// RecordedBoot implements BootRecorder: misc's slot_suffix.
func (s *AndroidState) RecordedBoot() (slot, where string) {
	return s.BC.Suffix(), "misc's slot_suffix"
}

func (s *AndroidState) index(slot string) (int, error) {
	i := SlotIndex(slot)
	if i < 0 || i >= int(s.BC.NbSlot) || i >= MaxSlots {
		return -1, fmt.Errorf("bootstate: android misc: slot %q: %w (nb_slot %d)", slot, ErrUnknownSlot, s.BC.NbSlot)
	}
	return i, nil
}

// Slots implements ABState. A slot is bootable as BootloaderSelect (U-Boot's
// ab_select_slot) sees it: tries left (a successful slot keeps 1, see
// MarkSuccessful) and not verity_corrupted.
func (s *AndroidState) Slots() []SlotInfo {
	n := min(int(s.BC.NbSlot), MaxSlots)
	out := make([]SlotInfo, n)
	for i := range n {
		m := s.BC.Slots[i]
		tries := int(m.TriesRemaining)
		if m.SuccessfulBoot {
			tries = -1
		}
		out[i] = SlotInfo{Name: SlotSuffixes[i][1:], Bootable: m.TriesRemaining > 0 && !m.VerityCorrupted,
			Successful: m.SuccessfulBoot, TracksSuccess: true, Tries: tries}
	}
	return out
}

// Next implements ABState: BootloaderSelect's pick, on a copy (the pick
// itself counts a try).
func (s *AndroidState) Next() string {
	c := *s.BC
	if i := c.BootloaderSelect(); i >= 0 {
		return SlotSuffixes[i][1:]
	}
	return ""
}

// SetActive implements ABState (BootControl.SetActive).
func (s *AndroidState) SetActive(slot string) error {
	i, err := s.index(slot)
	if err != nil {
		return err
	}
	return s.BC.SetActive(i, s.Current)
}

// MarkSuccessful implements ABState (BootControl.MarkSuccessful).
func (s *AndroidState) MarkSuccessful(slot string) error {
	i, err := s.index(slot)
	if err != nil {
		return err
	}
	return s.BC.MarkSuccessful(i)
}

// SetUnbootable implements ABState (BootControl.SetUnbootable).
func (s *AndroidState) SetUnbootable(slot string) error {
	i, err := s.index(slot)
	if err != nil {
		return err
	}
	return s.BC.SetUnbootable(i)
}

// FallBackFrom implements ABState (BootControl.FallBackFrom).
func (s *AndroidState) FallBackFrom(slot string) error {
	i, err := s.index(slot)
	if err != nil {
		return err
	}
	return s.BC.FallBackFrom(i, s.Current)
}
