package bootstate

import (
	"fmt"
	"slices"
	"strings"
)

// RAUC's A/B scheme on GRUB's environment block ("grub-rauc", issue 16).
//
// Sources: rauc src/bootloaders/grub.c (r_grub_set_state,
// r_grub_get_state, r_grub_get_primary, r_grub_set_primary, which run
// `grub-editenv FILE set ...`), src/bootchooser.c
// (r_bootchooser_order_primary), src/mark.c and src/install.c (which of
// those an update and `rauc status mark-*` call), docs/reference.rst
// ("GRUB": state bad, state good, primary), and the reference grub.cfg in
// contrib/grub.conf (also in docs/examples.rst, without its Rescue entry).
//
// The variables, for each slot's RAUC bootname x (A, B):
//   - ORDER: the bootnames in the order GRUB tries them, "A B".
//   - x_OK: 1 if the slot may be booted at all, 0 if marked bad.
//   - x_TRY: 1 once GRUB has picked the slot for a boot, until userspace
//     marks it good again.
//
// At every boot the reference grub.cfg walks ORDER and boots the first
// slot with x_OK=1 and x_TRY=0, setting x_TRY=1 for it (and for every slot
// it passed over) and saving the environment before it boots. So each slot
// gets exactly one try per activation or mark-good: if the boot does not
// end in `rauc status mark-good` (x_OK=1 x_TRY=0), the next boot passes
// over it to the next slot in ORDER. If no slot qualifies, the script
// resets x_TRY to 0 for every slot with x_OK=1 and boots the Rescue entry
// (contrib/grub.conf) or its first menu entry, slot A (docs/examples.rst);
// the boot after that tries the slots again. GrubRaucBoot plays this.
//
// Consequence for cpinit: a slot that booted well and one activated but
// not yet booted look the same (x_OK=1, x_TRY=0), so the scheme does not
// track success apart from tries (TracksSuccess false, as with RAUC's
// U-Boot scheme), and even a long-good slot must be marked good at every
// boot, or its next boot is passed over (RAUC systems run `rauc status
// mark-good` from a service at every boot).

// GrubRaucSlot maps one RAUC bootname to a cpinit slot.
type GrubRaucSlot struct {
	// Name is cpinit's slot name, "a" or "b" ("_a", "_b" accepted).
	Name string
	// Bootname is RAUC's bootname (system.conf's bootname=), which names
	// the slot in ORDER and prefixes its x_OK and x_TRY variables.
	Bootname string
}

// DefaultGrubRaucSlots is RAUC's usual mapping: bootname A is slot a, B
// is b.
func DefaultGrubRaucSlots() []GrubRaucSlot {
	return []GrubRaucSlot{{Name: "a", Bootname: "A"}, {Name: "b", Bootname: "B"}}
}

// ParseGrubRaucSlots parses a bootname mapping "A:a,B:b" (bootname, ':',
// cpinit slot, for each of two slots), e.g. from a kernel parameter.
func ParseGrubRaucSlots(s string) ([]GrubRaucSlot, error) {
	var out []GrubRaucSlot
	for _, f := range strings.Split(s, ",") {
		bn, slot, ok := strings.Cut(f, ":")
		if !ok {
			return nil, fmt.Errorf("bootstate: grub-rauc slots %q: %q is not BOOTNAME:SLOT (e.g. A:a,B:b)", s, f)
		}
		out = append(out, GrubRaucSlot{Name: slot, Bootname: bn})
	}
	out, err := grubRaucCheckSlots(out)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// grubRaucCheckSlots checks a mapping and returns it with slot names
// without "_".
func grubRaucCheckSlots(slots []GrubRaucSlot) ([]GrubRaucSlot, error) {
	if len(slots) != 2 {
		return nil, fmt.Errorf("bootstate: grub-rauc: %d slots given; cpinit handles two, as RAUC's reference grub.cfg does (A and B)", len(slots))
	}
	out := make([]GrubRaucSlot, len(slots))
	for i, s := range slots {
		name := strings.TrimPrefix(s.Name, "_")
		if SlotIndex(name) < 0 {
			return nil, fmt.Errorf("bootstate: grub-rauc: cpinit slot %q for bootname %q: cpinit names slots a, b, c, d", s.Name, s.Bootname)
		}
		if s.Bootname == "" || strings.IndexFunc(s.Bootname, func(r rune) bool {
			return !(r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
		}) >= 0 {
			// The bootname becomes part of GRUB script variable
			// names ($A_OK) and a word of ORDER.
			return nil, fmt.Errorf("bootstate: grub-rauc: bootname %q: letters, digits and '_' only (it names GRUB variables %s_OK, %s_TRY)", s.Bootname, s.Bootname, s.Bootname)
		}
		for _, o := range out[:i] {
			if o.Name == name || o.Bootname == s.Bootname {
				return nil, fmt.Errorf("bootstate: grub-rauc: slot %s or bootname %s mapped twice", name, s.Bootname)
			}
		}
		out[i] = GrubRaucSlot{Name: name, Bootname: s.Bootname}
	}
	return out, nil
}

func grubRaucSlotsString(slots []GrubRaucSlot) string {
	var parts []string
	for _, s := range slots {
		parts = append(parts, s.Bootname+"="+s.Name)
	}
	return strings.Join(parts, " ")
}

// GrubRaucState is RAUC's GRUB scheme as an ABState: the environment
// block, the bootname mapping, and the block as it was loaded (for
// GrubEnvFile.Save). Every change is what RAUC's grub backend writes for
// the same command, in the same order, so a grubenv cpinit changed is
// byte for byte one that `grub-editenv FILE set ...` from RAUC would
// have left (TestGrubRaucMatchesRAUCCommands).
type GrubRaucState struct {
	env    *GrubEnv
	slots  []GrubRaucSlot
	loaded []byte
}

// NewGrubRaucState reads RAUC's variables from env (which it keeps and
// changes; Clone it first to keep the original). slots maps bootnames to
// cpinit slots; nil means DefaultGrubRaucSlots.
//
// It fails with ErrNoScheme, naming what to set, when the block is a
// valid grubenv but not RAUC's A/B one: ORDER or an x_OK or x_TRY
// variable missing, an x_OK or x_TRY other than 0 or 1, or an ORDER that
// is empty or is not distinct known bootnames separated by single spaces
// (RAUC's grub backend splits it on " "; the reference grub.cfg knows
// only the configured bootnames). A slot absent from ORDER is allowed:
// GRUB never boots it until a SetActive puts it back.
func NewGrubRaucState(env *GrubEnv, slots []GrubRaucSlot) (*GrubRaucState, error) {
	if slots == nil {
		slots = DefaultGrubRaucSlots()
	}
	slots, err := grubRaucCheckSlots(slots)
	if err != nil {
		return nil, err
	}
	s := &GrubRaucState{env: env, slots: slots, loaded: env.Encode()}
	if err := s.check(); err != nil {
		return nil, err
	}
	return s, nil
}

// grubRaucInitHint is what to run on a device that runs slot A and has
// nothing in slot B yet: the variables rauc's docs/examples.rst lists,
// with the running slot marked good.
func grubRaucInitHint(slots []GrubRaucSlot) string {
	a, b := slots[0].Bootname, slots[1].Bootname
	return fmt.Sprintf(`grub-editenv FILE set ORDER="%s %s" %s_OK=1 %s_TRY=0 %s_OK=0 %s_TRY=0 (for a device running %s; docs/bootloader-grub.md)`, a, b, a, a, b, b, a)
}

func (s *GrubRaucState) check() error {
	var missing []string
	if _, ok := s.env.Get("ORDER"); !ok {
		missing = append(missing, "ORDER")
	}
	for _, sl := range s.slots {
		for _, suf := range []string{"_OK", "_TRY"} {
			v, ok := s.env.Get(sl.Bootname + suf)
			if !ok {
				missing = append(missing, sl.Bootname+suf)
			} else if v != "0" && v != "1" {
				return fmt.Errorf("%w: RAUC's GRUB scheme: %s%s=%q; cpinit knows only 0 and 1 (what RAUC writes)", ErrNoScheme, sl.Bootname, suf, v)
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: RAUC's GRUB scheme needs ORDER and x_OK, x_TRY for each bootname (%s), and %s missing; set them once with %s",
			ErrNoScheme, grubRaucSlotsString(s.slots), strings.Join(missing, ", "), grubRaucInitHint(s.slots))
	}
	order, _ := s.env.Get("ORDER")
	if _, err := s.parseOrder(order); err != nil {
		return err
	}
	return nil
}

// parseOrder splits ORDER into slot indexes.
func (s *GrubRaucState) parseOrder(order string) ([]int, error) {
	if order == "" {
		return nil, fmt.Errorf("%w: RAUC's GRUB scheme: ORDER is empty, so GRUB boots no slot (RAUC: \"Variable ORDER is empty\"); set it, e.g. ORDER=\"%s %s\"", ErrNoScheme, s.slots[0].Bootname, s.slots[1].Bootname)
	}
	var idx []int
	for _, w := range strings.Split(order, " ") {
		i := slices.IndexFunc(s.slots, func(sl GrubRaucSlot) bool { return sl.Bootname == w })
		if i < 0 || slices.Contains(idx, i) {
			return nil, fmt.Errorf("%w: RAUC's GRUB scheme: ORDER=%q: %q is not one of the bootnames %s, or comes twice, or the names are not separated by single spaces", ErrNoScheme, order, w, grubRaucSlotsString(s.slots))
		}
		idx = append(idx, i)
	}
	return idx, nil
}

// RevertTo implements Reverter: old's block, written over the block this
// state was loaded from.
func (s *GrubRaucState) RevertTo(old ABState) error {
	o, ok := old.(*GrubRaucState)
	if !ok {
		return fmt.Errorf("bootstate: grub-rauc: cannot revert to a %s state", old.Scheme())
	}
	n, err := NewGrubRaucState(o.env.Clone(), s.slots)
	if err != nil {
		return err
	}
	n.loaded = s.loaded
	*s = *n
	return nil
}

// Env returns the environment block the state reads and changes.
func (s *GrubRaucState) Env() *GrubEnv { return s.env }

// Scheme implements ABState.
func (s *GrubRaucState) Scheme() string { return "grub-rauc" }

func (s *GrubRaucState) flag(i int, suffix string) bool {
	v, _ := s.env.Get(s.slots[i].Bootname + suffix)
	return v == "1"
}

func (s *GrubRaucState) order() []int {
	o, _ := s.env.Get("ORDER")
	idx, _ := s.parseOrder(o) // checked by NewGrubRaucState and kept valid by every change
	return idx
}

// pickable: what the reference grub.cfg boots, and what RAUC's
// r_grub_get_state calls good: in ORDER, x_OK=1, x_TRY=0.
func (s *GrubRaucState) pickable(i int) bool {
	return slices.Contains(s.order(), i) && s.flag(i, "_OK") && !s.flag(i, "_TRY")
}

// Slots implements ABState, in the mapping's order. Bootable and
// Successful are both RAUC's "good" (r_grub_get_state): in ORDER, x_OK=1,
// x_TRY=0, which is also what GRUB picks. TracksSuccess is false: a slot
// activated and not yet booted looks the same as one marked good. A slot
// that GRUB booted and nobody marked good yet (on trial, or failed) has
// x_TRY=1: not bootable, 0 tries. Tries is 1 for a bootable slot (one try
// per activation or mark-good), else 0.
func (s *GrubRaucState) Slots() []SlotInfo {
	out := make([]SlotInfo, len(s.slots))
	for i, sl := range s.slots {
		good := s.pickable(i)
		tries := 0
		if good {
			tries = 1
		}
		out[i] = SlotInfo{Name: sl.Name, BootName: sl.Bootname, Bootable: good, Successful: good, TracksSuccess: false, Tries: tries}
	}
	return out
}

// Next implements ABState: the slot the reference grub.cfg boots next,
// the first in ORDER with x_OK=1 and x_TRY=0 (r_grub_get_primary); "" if
// none, when GRUB resets the tries and boots its Rescue entry instead.
func (s *GrubRaucState) Next() string {
	for _, i := range s.order() {
		if s.flag(i, "_OK") && !s.flag(i, "_TRY") {
			return s.slots[i].Name
		}
	}
	return ""
}

func (s *GrubRaucState) index(slot string) (int, error) {
	for i, sl := range s.slots {
		if SameSlot(sl.Name, slot) {
			return i, nil
		}
	}
	return -1, fmt.Errorf("bootstate: grub-rauc: slot %q: %w (bootnames %s)", slot, ErrUnknownSlot, grubRaucSlotsString(s.slots))
}

// set applies vars all or nothing (GrubEnv.Set).
func (s *GrubRaucState) set(vars ...GrubEnvVar) error {
	if err := s.env.Set(vars...); err != nil {
		return fmt.Errorf("bootstate: grub-rauc: %w", err)
	}
	return nil
}

// primaryVars is r_grub_set_primary: x_OK=1, x_TRY=0, then ORDER with x
// first and the other bootnames after it (r_bootchooser_order_primary;
// RAUC takes them in hash-table order, cpinit in the mapping's, which is
// the same for two slots).
func (s *GrubRaucState) primaryVars(i int) []GrubEnvVar {
	bn := s.slots[i].Bootname
	order := []string{bn}
	for j, sl := range s.slots {
		if j != i {
			order = append(order, sl.Bootname)
		}
	}
	return []GrubEnvVar{{bn + "_OK", "1"}, {bn + "_TRY", "0"}, {"ORDER", strings.Join(order, " ")}}
}

// stateVars is r_grub_set_state: good is x_OK=1 x_TRY=0, bad x_OK=0
// x_TRY=0.
func (s *GrubRaucState) stateVars(i int, good bool) []GrubEnvVar {
	bn := s.slots[i].Bootname
	ok := "0"
	if good {
		ok = "1"
	}
	return []GrubEnvVar{{bn + "_OK", ok}, {bn + "_TRY", "0"}}
}

// SetActive implements ABState as `rauc status mark-active` and the end
// of `rauc install` do (r_mark_active, r_grub_set_primary): x_OK=1,
// x_TRY=0, ORDER with the slot first. It gets one try.
func (s *GrubRaucState) SetActive(slot string) error {
	i, err := s.index(slot)
	if err != nil {
		return err
	}
	return s.set(s.primaryVars(i)...)
}

// MarkSuccessful implements ABState as `rauc status mark-good` does
// (r_grub_set_state good): x_OK=1, x_TRY=0. On this scheme that also
// gives the slot its next boot: it must be done at every boot of a good
// slot.
func (s *GrubRaucState) MarkSuccessful(slot string) error {
	i, err := s.index(slot)
	if err != nil {
		return err
	}
	return s.set(s.stateVars(i, true)...)
}

// SetUnbootable implements ABState as `rauc status mark-bad` and the start
// of `rauc install` do (r_grub_set_state bad): x_OK=0, x_TRY=0. ORDER is
// left alone; GRUB passes over the slot.
func (s *GrubRaucState) SetUnbootable(slot string) error {
	i, err := s.index(slot)
	if err != nil {
		return err
	}
	return s.set(s.stateVars(i, false)...)
}

// FallBackFrom implements ABState as the Android backend does it
// (BootControl.FallBackFrom): the other slot made primary (SetActive,
// RAUC's mark-active), then slot marked bad (SetUnbootable), all in one
// change. GRUB running out of tries would leave slot at x_OK=1 x_TRY=1,
// which its grub.cfg resets to x_TRY=0 once no slot qualifies, trying the
// abandoned update again; x_OK=0 stops that until a later SetActive. The
// other slot gets x_TRY=0: if it is running now, GRUB set its x_TRY=1 at
// this boot, and without the reset the next boot would find no slot.
func (s *GrubRaucState) FallBackFrom(slot string) error {
	i, err := s.index(slot)
	if err != nil {
		return err
	}
	other, err := OtherSlotOf(s, s.slots[i].Name)
	if err != nil {
		return err
	}
	j, err := s.index(other)
	if err != nil {
		return err
	}
	return s.set(append(s.primaryVars(j), s.stateVars(i, false)...)...)
}

// GrubRaucBoot plays GRUB at one boot with RAUC's reference grub.cfg
// (rauc contrib/grub.conf) on the block: load_env over the script's
// defaults (ORDER = the bootnames in the mapping's order, every x_OK and
// x_TRY 0), the slot choice, the tries reset, and `save_env` of x_TRY and
// x_OK for each bootname and ORDER. It returns the cpinit slot booted (""
// for the Rescue entry, which contrib/grub.conf boots when no slot
// qualifies), the block after save_env, and whether save_env wrote it.
//
// It works on the raw block as GRUB does, with the ports of envblk.c, not
// through DecodeGrubEnv: a block GRUB rejects (bad header) loads nothing
// and saves nothing (load_env and save_env fail with "invalid environment
// block" and the script goes on with its defaults), and a block with a
// broken line loads the variables before it. Numbers compare as GRUB's
// test -eq does (grub_strtosl, base 0: "1" and "0x1" are 1, words are 0).
// A name in ORDER that is not a configured bootname keeps the previous
// iteration's OK and TRY, as the script's if-chain does. Tests use it to
// show GRUB's side of cpinit's changes; cpinit itself never runs it.
func GrubRaucBoot(block []byte, slots []GrubRaucSlot) (booted string, after []byte, saved bool) {
	if slots == nil {
		slots = DefaultGrubRaucSlots()
	}
	// The script's variables (GRUB's environment at boot), with its
	// defaults set before load_env.
	vars := map[string]string{}
	var names []string
	for _, sl := range slots {
		names = append(names, sl.Bootname)
		vars[sl.Bootname+"_OK"] = "0"
		vars[sl.Bootname+"_TRY"] = "0"
	}
	vars["ORDER"] = strings.Join(names, " ")
	grubEnvblkIterate(block, func(n, v string) bool { // load_env, all variables
		vars[n] = v
		return false
	})

	// for SLOT in $ORDER; do ... done
	chosen := -1
	var ok, try string
	for _, w := range strings.FieldsFunc(vars["ORDER"], func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' }) {
		i := slices.IndexFunc(slots, func(sl GrubRaucSlot) bool { return sl.Bootname == w })
		if i >= 0 {
			bn := slots[i].Bootname
			ok, try = vars[bn+"_OK"], vars[bn+"_TRY"]
			vars[bn+"_TRY"] = "1"
		}
		if grubStrtosl(ok) == 1 && grubStrtosl(try) == 0 {
			chosen = i
			break
		}
	}
	// Reset the booted flags when no slot qualified.
	if chosen < 0 {
		for _, sl := range slots {
			if grubStrtosl(vars[sl.Bootname+"_OK"]) == 1 && grubStrtosl(vars[sl.Bootname+"_TRY"]) == 1 {
				vars[sl.Bootname+"_TRY"] = "0"
			}
		}
	}

	// save_env A_TRY A_OK B_TRY B_OK ORDER: in GRUB's memory first, written
	// only if every grub_envblk_set succeeds (grub_cmd_save_env).
	after = slices.Clone(block)
	saved = grubEnvOpen(after)
	var order []string
	for _, sl := range slots {
		order = append(order, sl.Bootname+"_TRY", sl.Bootname+"_OK")
	}
	for _, n := range append(order, "ORDER") {
		if !saved {
			break
		}
		saved = grubEnvblkSet(after, n, vars[n])
	}
	if !saved {
		after = slices.Clone(block)
	}
	if chosen >= 0 {
		booted = slots[chosen].Name
	}
	return booted, after, saved
}

// grubStrtosl is grub_strtosl(s, 0, 0) as GRUB's test command uses it
// (grub-core/commands/test.c): a leading '-' negates grub_strtoul
// (kern/misc.c grub_strtoull: spaces skipped, "0x" means hex, '0' and an
// octal digit octal, the digits that follow; 0 when there are none, ~0 on
// overflow), and the result is truncated to a C int.
func grubStrtosl(s string) int32 {
	if strings.HasPrefix(s, "-") {
		return int32(uint32(-grubStrtoull(s[1:])))
	}
	return int32(uint32(grubStrtoull(s)))
}

func grubStrtoull(s string) uint64 {
	s = strings.TrimLeft(s, "\n\r \t")
	base := uint64(10)
	if len(s) >= 2 && s[0] == '0' {
		if s[1] == 'x' {
			base, s = 16, s[2:]
		} else if s[1] >= '0' && s[1] <= '7' {
			base = 8
		}
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		var d uint64
		switch {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case c >= 'a' && c <= 'z':
			d = uint64(c-'a') + 10
		case c >= 'A' && c <= 'Z':
			d = uint64(c-'A') + 10
		default:
			return n
		}
		if d >= base {
			return n
		}
		if n > (^uint64(0)-d)/base {
			return ^uint64(0)
		}
		n = n*base + d
	}
	return n
}
