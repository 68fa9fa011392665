package bootstate

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The A/B variable schemes that update agents keep in the U-Boot environment
// (issue 16), each an ABState over a UBootEnv, and a boot simulator that does
// to the environment what U-Boot and the scheme's reference boot script do at
// one power-on (for tests: "set active, the boot fails N times, the
// bootloader falls back").
//
//   - "uboot-rauc": RAUC's U-Boot backend, src/bootloaders/uboot.c
//     (r_uboot_set_primary, r_uboot_set_state, r_uboot_get_state), and the
//     boot script contrib/uboot.sh that RAUC's docs (integration.rst, "Set up
//     U-Boot Boot Script for RAUC") point to.
//   - "uboot-mender": the Mender client's rootfs-image update module,
//     support/modules/rootfs-image (ArtifactInstall, ArtifactCommit,
//     ArtifactRollback), and meta-mender's U-Boot patch
//     0001-Generic-boot-code-for-Mender.patch (include/env_mender.h: the
//     default variables, mender_altbootcmd), with U-Boot's
//     CONFIG_BOOTCOUNT_ENV (drivers/bootcount/bootcount_env.c,
//     include/bootcount.h bootcount_inc/bootcount_error, common/autoboot.c).
//   - "uboot-bootcount": U-Boot's own bootcount/bootlimit/upgrade_available/
//     altbootcmd with a slot variable (default "bootpart", the name in
//     SWUpdate's dual-copy sw-description examples, with U-Boot's
//     "dev:part" values) and SWUpdate's optional "ustate"; the altbootcmd it
//     expects is in docs/bootloader-uboot.md.

// Scheme names.
const (
	UBootSchemeRAUC      = "uboot-rauc"
	UBootSchemeMender    = "uboot-mender"
	UBootSchemeBootcount = "uboot-bootcount"
)

// UBootSlotName maps one of cpinit's slots to the scheme's name for it: a
// RAUC bootname ("A"), a Mender partition number ("2"), a bootcount slot
// variable's value ("0:2").
type UBootSlotName struct {
	Slot  string // "a", "b" ("_a" accepted)
	Value string
}

// UBootSchemeConfig picks and configures a scheme.
type UBootSchemeConfig struct {
	// Scheme is one of the UBootScheme* names, or "" / "auto" to detect it
	// from the variables (ErrNoScheme if none or several match).
	Scheme string
	// Slots maps cpinit's slots to the scheme's names, in cpinit's order;
	// nil: the scheme's default (RAUC a=A,b=B; Mender a=2,b=3 as
	// MENDER_ROOTFS_PART_A/B's defaults; bootcount a=0:2,b=0:3).
	Slots []UBootSlotName
	// BootAttempts and BootAttemptsPrimary are RAUC's system.conf
	// boot-attempts (set by mark-good) and boot-attempts-primary (set by
	// mark-active); 0 means RAUC's default, 3.
	BootAttempts, BootAttemptsPrimary int
	// SlotVar is the bootcount scheme's slot variable; "" means "bootpart".
	SlotVar string
}

// ParseUBootSlotNames parses "a=A,b=B" (a kernel parameter's form).
func ParseUBootSlotNames(s string) ([]UBootSlotName, error) {
	var out []UBootSlotName
	for _, p := range strings.Split(s, ",") {
		slot, val, ok := strings.Cut(p, "=")
		if !ok || slot == "" || val == "" {
			return nil, fmt.Errorf("bootstate: u-boot slot names %q: want slot=name[,slot=name], e.g. a=A,b=B", s)
		}
		out = append(out, UBootSlotName{Slot: slot, Value: val})
	}
	return out, nil
}

// UBootState is the ABState of every U-Boot scheme: the variables, which a
// UBootBootloader saves.
type UBootState interface {
	ABState
	// Env is the environment the state reads and changes.
	Env() *UBootEnv
	base() *ubootBase
}

type ubootBase struct {
	env    *UBootEnv
	origin *ubootOrigin // nil unless loaded by a UBootBootloader
}

func (b *ubootBase) base() *ubootBase { return b }

// Env implements UBootState.
func (b *ubootBase) Env() *UBootEnv { return b.env }

// RevertTo implements Reverter: old's variables, saved over the copies
// this state was loaded from.
func (b *ubootBase) RevertTo(old ABState) error {
	o, ok := old.(UBootState)
	if !ok {
		return fmt.Errorf("bootstate: u-boot env: cannot revert to a %s state", old.Scheme())
	}
	b.env = o.Env().Clone()
	return nil
}

func (b *ubootBase) set(kv ...string) error {
	// Check every variable first so that a refused one changes nothing.
	for i := 0; i < len(kv); i += 2 {
		if j, ok := b.env.find(kv[i]); ok {
			if err := b.env.vars[j].writable(kv[i+1], false); err != nil {
				return err
			}
		}
	}
	for i := 0; i < len(kv); i += 2 {
		if err := b.env.Set(kv[i], kv[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// NewUBootState decodes the scheme of env (which the state then owns).
func NewUBootState(env *UBootEnv, cfg UBootSchemeConfig) (UBootState, error) {
	name := cfg.Scheme
	if name == "" || name == "auto" {
		var found []string
		keys := map[string]string{UBootSchemeRAUC: "BOOT_ORDER", UBootSchemeMender: "mender_boot_part", UBootSchemeBootcount: cfg.slotVar()}
		for _, sch := range []string{UBootSchemeRAUC, UBootSchemeMender, UBootSchemeBootcount} {
			if _, ok := env.Get(keys[sch]); ok {
				found = append(found, sch)
			}
		}
		switch len(found) {
		case 0:
			return nil, fmt.Errorf("bootstate: u-boot env: none of BOOT_ORDER (%s), mender_boot_part (%s), %s (%s) is set: %w",
				UBootSchemeRAUC, UBootSchemeMender, cfg.slotVar(), UBootSchemeBootcount, ErrNoScheme)
		case 1:
			name = found[0]
		default:
			return nil, fmt.Errorf("bootstate: u-boot env: the variables of several schemes are set (%s): name the scheme: %w",
				strings.Join(found, ", "), ErrNoScheme)
		}
	}
	switch name {
	case UBootSchemeRAUC:
		return newRAUCUBootState(env, cfg)
	case UBootSchemeMender, UBootSchemeBootcount:
		return newBootcountUBootState(env, cfg, name)
	}
	return nil, fmt.Errorf("bootstate: u-boot env: scheme %q: cpinit knows %s, %s, %s (or auto): %w",
		name, UBootSchemeRAUC, UBootSchemeMender, UBootSchemeBootcount, ErrNoScheme)
}

func (c UBootSchemeConfig) slotVar() string {
	if c.SlotVar != "" {
		return c.SlotVar
	}
	return "bootpart"
}

func checkSlotNames(scheme string, slots []UBootSlotName, exactlyTwo bool) error {
	if exactlyTwo && len(slots) != 2 || len(slots) == 0 {
		return fmt.Errorf("bootstate: %s: %d slot names; it needs two (a=...,b=...)", scheme, len(slots))
	}
	for i, a := range slots {
		if a.Slot == "" || a.Value == "" || strings.ContainsAny(a.Value, " =\x00") {
			return fmt.Errorf("bootstate: %s: bad slot name %q=%q", scheme, a.Slot, a.Value)
		}
		for _, b := range slots[:i] {
			if SameSlot(a.Slot, b.Slot) || a.Value == b.Value {
				return fmt.Errorf("bootstate: %s: slot names %s=%s and %s=%s clash", scheme, b.Slot, b.Value, a.Slot, a.Value)
			}
		}
	}
	return nil
}

func slotIndex(scheme string, slots []UBootSlotName, slot string) (int, error) {
	for i, s := range slots {
		if SameSlot(s.Slot, slot) {
			return i, nil
		}
	}
	names := make([]string, len(slots))
	for i, s := range slots {
		names[i] = strings.TrimPrefix(s.Slot, "_")
	}
	return -1, fmt.Errorf("bootstate: %s: slot %q: %w (it has %s)", scheme, slot, ErrUnknownSlot, strings.Join(names, ", "))
}

// parseLeadingUint reads the leading digits of s in base (with an optional
// 0x for base 16), 0 if there are none: U-Boot's simple_strtoul and glib's
// g_ascii_strtoull as the schemes use them.
func parseLeadingUint(s string, base int) uint64 {
	s = strings.TrimLeft(s, " \t")
	if base == 16 && len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		s = s[2:]
	}
	var v uint64
	for _, c := range []byte(s) {
		var d int
		switch {
		case c >= '0' && c <= '9':
			d = int(c - '0')
		case c >= 'a' && c <= 'f':
			d = int(c-'a') + 10
		case c >= 'A' && c <= 'F':
			d = int(c-'A') + 10
		default:
			return v
		}
		if d >= base {
			return v
		}
		v = v*uint64(base) + uint64(d)
	}
	return v
}

// RAUC.

// RAUCUBootState is RAUC's U-Boot scheme: BOOT_ORDER, a space-separated
// list of bootnames tried in order, and BOOT_<bootname>_LEFT, the attempts
// left, in hex as RAUC writes them ("%x") and the script counts them
// (setexpr). A good slot and a slot on trial look alike (RAUC's mark-good
// only sets LEFT back to boot-attempts), so TracksSuccess is false.
type RAUCUBootState struct {
	ubootBase
	slots                     []UBootSlotName
	attempts, attemptsPrimary int
}

func newRAUCUBootState(env *UBootEnv, cfg UBootSchemeConfig) (*RAUCUBootState, error) {
	s := &RAUCUBootState{ubootBase: ubootBase{env: env}, slots: cfg.Slots, attempts: cfg.BootAttempts, attemptsPrimary: cfg.BootAttemptsPrimary}
	if s.slots == nil {
		s.slots = []UBootSlotName{{"a", "A"}, {"b", "B"}}
	}
	if err := checkSlotNames(UBootSchemeRAUC, s.slots, false); err != nil {
		return nil, err
	}
	if s.attempts <= 0 {
		s.attempts = 3 // UBOOT_DEFAULT_ATTEMPTS
	}
	if s.attemptsPrimary <= 0 {
		s.attemptsPrimary = 3 // UBOOT_ATTEMPTS_PRIMARY
	}
	var missing []string
	if _, ok := env.Get("BOOT_ORDER"); !ok {
		missing = append(missing, "BOOT_ORDER")
	}
	for _, sl := range s.slots {
		if _, ok := env.Get(raucLeftVar(sl.Value)); !ok {
			missing = append(missing, raucLeftVar(sl.Value))
		}
	}
	if missing != nil {
		return nil, fmt.Errorf("bootstate: %s: %s not set (U-Boot's boot script sets and saves them at its first boot): %w",
			UBootSchemeRAUC, strings.Join(missing, ", "), ErrNoScheme)
	}
	return s, nil
}

func raucLeftVar(bootname string) string { return "BOOT_" + bootname + "_LEFT" }

// Scheme implements ABState.
func (s *RAUCUBootState) Scheme() string { return UBootSchemeRAUC }

// left is a slot's attempts as the script reads them; an empty or unset
// BOOT_x_LEFT is 3 (the script's "test -n ... || setenv BOOT_x_LEFT 3").
func (s *RAUCUBootState) left(bootname string) uint64 {
	v, _ := s.env.Get(raucLeftVar(bootname))
	if v == "" {
		return 3
	}
	return parseLeadingUint(v, 16)
}

// order is BOOT_ORDER as the script iterates it; empty, the script's default
// (the slots in cpinit's order, "A B").
func (s *RAUCUBootState) order() []string {
	if v, _ := s.env.Get("BOOT_ORDER"); v != "" {
		return strings.Fields(v)
	}
	names := make([]string, len(s.slots))
	for i, sl := range s.slots {
		names[i] = sl.Value
	}
	return names
}

func (s *RAUCUBootState) inOrder(bootname string) bool {
	for _, b := range s.order() {
		if b == bootname {
			return true
		}
	}
	return false
}

// Slots implements ABState: a slot is bootable as r_uboot_get_state sees it
// good: in BOOT_ORDER with attempts left.
func (s *RAUCUBootState) Slots() []SlotInfo {
	out := make([]SlotInfo, len(s.slots))
	for i, sl := range s.slots {
		tries := 0
		if s.inOrder(sl.Value) {
			tries = int(min(s.left(sl.Value), 1<<30))
		}
		out[i] = SlotInfo{Name: strings.TrimPrefix(sl.Slot, "_"), BootName: sl.Value, Bootable: tries > 0, Tries: tries}
	}
	return out
}

func (s *RAUCUBootState) slotOf(bootname string) (string, bool) {
	for _, sl := range s.slots {
		if sl.Value == bootname {
			return strings.TrimPrefix(sl.Slot, "_"), true
		}
	}
	return "", false
}

// Next implements ABState as contrib/uboot.sh picks: the first bootname in
// BOOT_ORDER that the script knows with attempts left; if there is none,
// the script sets every slot's attempts back to 3, saves and resets, and the
// next pass boots the first known bootname in BOOT_ORDER.
func (s *RAUCUBootState) Next() string {
	for _, b := range s.order() {
		if slot, ok := s.slotOf(b); ok && s.left(b) > 0 {
			return slot
		}
	}
	for _, b := range s.order() {
		if slot, ok := s.slotOf(b); ok {
			return slot
		}
	}
	return ""
}

// SetActive implements ABState: r_uboot_set_primary (`rauc status
// mark-active`, and what `rauc install` does): BOOT_<x>_LEFT =
// boot-attempts-primary, then BOOT_ORDER with x first and the others in
// their order. RAUC runs fw_setenv twice; cpinit saves both at once.
func (s *RAUCUBootState) SetActive(slot string) error {
	i, err := slotIndex(UBootSchemeRAUC, s.slots, slot)
	if err != nil {
		return err
	}
	b := s.slots[i].Value
	order := []string{b}
	cur, _ := s.env.Get("BOOT_ORDER")
	for _, n := range strings.Split(cur, " ") {
		if n != b && n != "" {
			order = append(order, n)
		}
	}
	return s.set(raucLeftVar(b), fmt.Sprintf("%x", s.attemptsPrimary), "BOOT_ORDER", strings.Join(order, " "))
}

// MarkSuccessful implements ABState: r_uboot_set_state(good) (`rauc status
// mark-good`): BOOT_<x>_LEFT = boot-attempts. BOOT_ORDER is not touched.
func (s *RAUCUBootState) MarkSuccessful(slot string) error {
	i, err := slotIndex(UBootSchemeRAUC, s.slots, slot)
	if err != nil {
		return err
	}
	return s.set(raucLeftVar(s.slots[i].Value), fmt.Sprintf("%x", s.attempts))
}

// SetUnbootable implements ABState: r_uboot_set_state(bad) (`rauc status
// mark-bad`): x leaves BOOT_ORDER, BOOT_<x>_LEFT = 0.
func (s *RAUCUBootState) SetUnbootable(slot string) error {
	i, err := slotIndex(UBootSchemeRAUC, s.slots, slot)
	if err != nil {
		return err
	}
	b := s.slots[i].Value
	var order []string
	cur, _ := s.env.Get("BOOT_ORDER")
	for _, n := range strings.Split(cur, " ") {
		if n != b && n != "" {
			order = append(order, n)
		}
	}
	return s.set("BOOT_ORDER", strings.Join(order, " "), raucLeftVar(b), "0")
}

// FallBackFrom implements ABState: mark-bad of slot; if the script would
// then still not boot the other slot (it is out of BOOT_ORDER or out of
// attempts), mark-active of the other slot as well.
func (s *RAUCUBootState) FallBackFrom(slot string) error {
	other, err := OtherSlotOf(s, slot)
	if err != nil {
		return err
	}
	saved := s.env.Clone()
	if err := s.SetUnbootable(slot); err != nil {
		return err
	}
	if SameSlot(s.Next(), other) {
		if oi, _ := slotIndex(UBootSchemeRAUC, s.slots, other); s.left(s.slots[oi].Value) > 0 {
			return nil
		}
	}
	if err := s.SetActive(other); err != nil {
		*s.env = *saved
		return err
	}
	return nil
}

// Mender and the plain bootcount scheme.

// BootcountUBootState is U-Boot's bootcount scheme (CONFIG_BOOTCOUNT_ENV) as
// Mender ("uboot-mender") and a plain integration ("uboot-bootcount") use
// it: a slot variable names the slot U-Boot boots; while
// upgrade_available is not 0, U-Boot counts each boot in bootcount and saves
// it, and once bootcount exceeds bootlimit it runs altbootcmd, which switches
// the slot variable to the other slot and sets upgrade_available to 0 (the
// fallback). upgrade_available=0 on the slot being booted is its success.
type BootcountUBootState struct {
	ubootBase
	scheme   string
	slotVar  string // mender_boot_part, or the configured slot variable
	hexVar   string // mender_boot_part_hex, or ""
	stateVar string // "ustate" if the environment has it (bootcount scheme)
	slots    []UBootSlotName
}

func newBootcountUBootState(env *UBootEnv, cfg UBootSchemeConfig, scheme string) (*BootcountUBootState, error) {
	s := &BootcountUBootState{ubootBase: ubootBase{env: env}, scheme: scheme, slots: cfg.Slots}
	required := []string{"upgrade_available", "bootlimit", "altbootcmd"}
	if scheme == UBootSchemeMender {
		s.slotVar, s.hexVar = "mender_boot_part", "mender_boot_part_hex"
		if s.slots == nil {
			s.slots = []UBootSlotName{{"a", "2"}, {"b", "3"}}
		}
		for _, sl := range s.slots {
			if _, err := strconv.ParseUint(sl.Value, 10, 32); err != nil {
				return nil, fmt.Errorf("bootstate: %s: slot %s=%q: Mender's slot names are partition numbers", scheme, sl.Slot, sl.Value)
			}
		}
		required = append([]string{s.slotVar, s.hexVar}, required...)
	} else {
		s.slotVar = cfg.slotVar()
		if s.slots == nil {
			s.slots = []UBootSlotName{{"a", "0:2"}, {"b", "0:3"}}
		}
		if _, ok := env.Get("ustate"); ok {
			s.stateVar = "ustate"
		}
		required = append([]string{s.slotVar}, required...)
	}
	if err := checkSlotNames(scheme, s.slots, true); err != nil {
		return nil, err
	}
	var missing []string
	for _, v := range required {
		if _, ok := env.Get(v); !ok {
			missing = append(missing, v)
		}
	}
	if missing != nil {
		why := ""
		for _, m := range missing {
			switch m {
			case "bootlimit":
				why += "; without bootlimit U-Boot never falls back"
			case "altbootcmd":
				why += "; without altbootcmd U-Boot stops at its prompt when the tries run out"
			}
		}
		return nil, fmt.Errorf("bootstate: %s: %s not set%s: %w", scheme, strings.Join(missing, ", "), why, ErrNoScheme)
	}
	if _, err := s.cur(); err != nil {
		return nil, err
	}
	return s, nil
}

// Scheme implements ABState.
func (s *BootcountUBootState) Scheme() string { return s.scheme }

// ulong is U-Boot's env_get_ulong(name, 10, 0).
func (s *BootcountUBootState) ulong(name string) uint64 {
	v, ok := s.env.Get(name)
	if !ok {
		return 0
	}
	return parseLeadingUint(v, 10)
}

// cur is the index of the slot the slot variable names.
func (s *BootcountUBootState) cur() (int, error) {
	v, _ := s.env.Get(s.slotVar)
	for i, sl := range s.slots {
		if sl.Value == v {
			return i, nil
		}
	}
	vals := make([]string, len(s.slots))
	for i, sl := range s.slots {
		vals[i] = sl.Slot + "=" + sl.Value
	}
	return -1, fmt.Errorf("bootstate: %s: %s=%q names neither slot (%s): %w", s.scheme, s.slotVar, v, strings.Join(vals, ", "), ErrNoScheme)
}

func (s *BootcountUBootState) trial() bool { return s.ulong("upgrade_available") != 0 }

// Slots implements ABState. The slot the variable names is successful unless
// upgrade_available is set; then its tries are bootlimit - bootcount
// (U-Boot falls back at the boot that makes bootcount exceed bootlimit; -1
// if bootlimit is 0, which U-Boot takes as no limit). The other slot is
// bootable only as the fallback of a trial.
func (s *BootcountUBootState) Slots() []SlotInfo {
	c, _ := s.cur()
	trial, limit, count := s.trial(), s.ulong("bootlimit"), s.ulong("bootcount")
	out := make([]SlotInfo, len(s.slots))
	for i, sl := range s.slots {
		si := SlotInfo{Name: strings.TrimPrefix(sl.Slot, "_"), BootName: sl.Value, TracksSuccess: true, Tries: -1}
		switch {
		case i == c && !trial:
			si.Bootable, si.Successful = true, true
		case i == c && limit == 0:
			si.Bootable = true
		case i == c:
			if count < limit {
				si.Tries = int(min(limit-count, 1<<30))
			} else {
				si.Tries = 0
			}
			si.Bootable = si.Tries > 0
		default:
			si.Bootable = trial && limit != 0
		}
		out[i] = si
	}
	return out
}

// Next implements ABState: U-Boot's bootcount_inc then bootcount_error.
func (s *BootcountUBootState) Next() string {
	c, err := s.cur()
	if err != nil {
		return ""
	}
	if limit := s.ulong("bootlimit"); s.trial() && limit != 0 && s.ulong("bootcount")+1 > limit {
		c = 1 - c
	}
	return strings.TrimPrefix(s.slots[c].Slot, "_")
}

// SetActive implements ABState: Mender's ArtifactInstall (one fw_setenv -s:
// mender_boot_part, mender_boot_part_hex, upgrade_available=1,
// bootcount=0); the bootcount scheme sets its slot variable the same way and
// ustate=1 (SWUpdate's STATE_INSTALLED) if the environment has ustate.
func (s *BootcountUBootState) SetActive(slot string) error {
	i, err := slotIndex(s.scheme, s.slots, slot)
	if err != nil {
		return err
	}
	kv := []string{s.slotVar, s.slots[i].Value}
	if s.hexVar != "" {
		n, _ := strconv.ParseUint(s.slots[i].Value, 10, 32)
		kv = append(kv, s.hexVar, fmt.Sprintf("%x", n))
	}
	kv = append(kv, "upgrade_available", "1", "bootcount", "0")
	if s.stateVar != "" {
		kv = append(kv, s.stateVar, "1")
	}
	return s.set(kv...)
}

// ErrNotBootSlot: the scheme records success only for the slot U-Boot boots.
var ErrNotBootSlot = errors.New("the slot is not the one the bootloader boots")

// MarkSuccessful implements ABState: Mender's ArtifactCommit,
// upgrade_available=0; the bootcount scheme also sets bootcount=0 and
// ustate=0 (SWUpdate's state machine: "ustate = 0, bootcounter = 0"). Only
// the slot the variable names can be marked: Mender refuses to commit
// otherwise ("Upgrade failed and was reverted").
func (s *BootcountUBootState) MarkSuccessful(slot string) error {
	i, err := slotIndex(s.scheme, s.slots, slot)
	if err != nil {
		return err
	}
	c, err := s.cur()
	if err != nil {
		return err
	}
	if i != c {
		return fmt.Errorf("bootstate: %s: mark %s successful: %s names %s: %w", s.scheme, slot, s.slotVar, s.slots[c].Slot, ErrNotBootSlot)
	}
	kv := []string{"upgrade_available", "0"}
	if s.scheme == UBootSchemeBootcount {
		kv = append(kv, "bootcount", "0")
		if s.stateVar != "" {
			kv = append(kv, s.stateVar, "0")
		}
	}
	return s.set(kv...)
}

// FallBackFrom implements ABState: what altbootcmd does (Mender's
// mender_altbootcmd, the same as its ArtifactRollback): the slot variable
// (and mender_boot_part_hex) names the other slot, upgrade_available=0; the
// bootcount scheme's altbootcmd also sets ustate=3 (SWUpdate's
// STATE_FAILED) if the environment has ustate.
func (s *BootcountUBootState) FallBackFrom(slot string) error {
	i, err := slotIndex(s.scheme, s.slots, slot)
	if err != nil {
		return err
	}
	o := 1 - i
	kv := []string{s.slotVar, s.slots[o].Value}
	if s.hexVar != "" {
		n, _ := strconv.ParseUint(s.slots[o].Value, 10, 32)
		kv = append(kv, s.hexVar, fmt.Sprintf("%x", n))
	}
	kv = append(kv, "upgrade_available", "0")
	if s.stateVar != "" {
		kv = append(kv, s.stateVar, "3")
	}
	return s.set(kv...)
}

// SetUnbootable implements ABState. The scheme has no "unbootable": the slot
// the variable does not name is booted only as a trial's fallback. So: the
// named slot falls back (FallBackFrom); the other slot needs nothing unless
// a trial is on, whose fallback it is, and that is refused.
func (s *BootcountUBootState) SetUnbootable(slot string) error {
	i, err := slotIndex(s.scheme, s.slots, slot)
	if err != nil {
		return err
	}
	c, err := s.cur()
	if err != nil {
		return err
	}
	if i == c {
		return s.FallBackFrom(slot)
	}
	if s.trial() && s.ulong("bootlimit") != 0 {
		return fmt.Errorf("bootstate: %s: cannot make %s unbootable: it is the fallback of the trial of %s (upgrade_available=1), which %s cannot express; commit or abandon that trial first",
			s.scheme, slot, s.slots[c].Slot, s.scheme)
	}
	return nil
}

// The boot simulator.

// SimulateUBootBoot does to s's environment what U-Boot and the scheme's
// reference boot script do at one power-on, saveenv included, and returns
// the slot that boots; "" with no error if the script resets the board
// instead (RAUC's script when no slot has attempts left: call it again).
//
//   - uboot-rauc: contrib/uboot.sh: unset BOOT_ORDER and BOOT_x_LEFT get
//     "A B" and 3; the first bootname in BOOT_ORDER the script knows whose
//     0x${BOOT_x_LEFT} is > 0 is decremented (setexpr, hex) and booted;
//     none: every BOOT_x_LEFT = 3, saveenv, reset.
//   - uboot-mender, uboot-bootcount: U-Boot's autoboot with
//     CONFIG_BOOTCOUNT_ENV: if upgrade_available != 0, bootcount+1 is saved
//     (bootcount_inc, bootcount_store); if bootlimit != 0 and bootcount >
//     bootlimit, altbootcmd runs: Mender's "run mender_altbootcmd; run
//     bootcmd" (switch mender_boot_part and _hex, upgrade_available=0,
//     saveenv), or the bootcount scheme's reference altbootcmd
//     (docs/bootloader-uboot.md: switch the slot variable,
//     upgrade_available=0, ustate=3 if set, saveenv); then bootcmd boots
//     the slot the variable names. (With upgrade_available=0 U-Boot also
//     sets bootcount=1 in memory without saving it; the stored environment,
//     which is what this returns, is unchanged.)
func SimulateUBootBoot(s UBootState) (string, error) {
	switch st := s.(type) {
	case *RAUCUBootState:
		return st.simulateBoot()
	case *BootcountUBootState:
		return st.simulateBoot()
	}
	return "", fmt.Errorf("bootstate: no boot simulator for %s", s.Scheme())
}

func (s *RAUCUBootState) simulateBoot() (string, error) {
	env := s.env
	if v, _ := env.Get("BOOT_ORDER"); v == "" {
		if err := env.Set("BOOT_ORDER", strings.Join(s.order(), " ")); err != nil {
			return "", err
		}
	}
	for _, sl := range s.slots {
		if v, _ := env.Get(raucLeftVar(sl.Value)); v == "" {
			if err := env.Set(raucLeftVar(sl.Value), "3"); err != nil {
				return "", err
			}
		}
	}
	for _, b := range s.order() {
		slot, ok := s.slotOf(b)
		if !ok {
			continue
		}
		if left := s.left(b); left > 0 {
			return slot, env.Set(raucLeftVar(b), fmt.Sprintf("%x", left-1))
		}
	}
	for _, sl := range s.slots {
		if err := env.Set(raucLeftVar(sl.Value), "3"); err != nil {
			return "", err
		}
	}
	return "", nil
}

func (s *BootcountUBootState) simulateBoot() (string, error) {
	c, err := s.cur()
	if err != nil {
		return "", err
	}
	if s.trial() {
		count := s.ulong("bootcount") + 1
		if err := s.env.Set("bootcount", strconv.FormatUint(count, 10)); err != nil {
			return "", err
		}
		if limit := s.ulong("bootlimit"); limit != 0 && count > limit {
			// altbootcmd
			if err := s.FallBackFrom(s.slots[c].Slot); err != nil {
				return "", err
			}
			c = 1 - c
		}
	}
	return strings.TrimPrefix(s.slots[c].Slot, "_"), nil
}
