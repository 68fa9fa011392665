package bootstate

import (
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// The A/B scheme on systemd-boot's entries (issue 16): one Type #1 entry per
// slot, named "<stem>-<rank>-<slot>[+LEFT[-DONE]].conf", e.g.
// "cpinit-7-b+3.conf". The slot is cpinit's "a" or "b"; the rank orders the
// two entries.
//
// Why a rank in the name: systemd-boot boots, when no pattern or EFI
// variable selects an entry, the first entry in its sort order (boot.c
// config_default_entry_select), and that order (boot.c
// config_entry_compare) puts entries with 0 tries left last, then compares
// the sort-key, machine-id and version lines if both entries have a
// sort-key, then the ids, newest version first (strverscmp_improved);
// the counters only break ties between equal ids. Two fixed names
// ("slot-a.conf", "slot-b.conf") therefore always sort the same way: the
// "b" entry first, whatever cpinit renames their counters to, and a
// loader.conf "default" naming the trial slot's entry would keep booting
// it after its tries run out (config_entry_find matches entries with 0 tries
// too). The rank comes before the slot letter, so it decides: SetActive
// gives the new slot the other's rank + 1 and its tries, one rename.
// Every other change is one rename of a counter, except FallBackFrom onto
// a slot that is itself at 0 tries (two renames, ordered by Renames).

// BLSConfig names the slot entries and sets the tries. Zero fields take the
// defaults.
type BLSConfig struct {
	// Stem starts every slot entry's name: "<stem>-<rank>-<slot>".
	// Lowercase ASCII letters, digits, '.', '_' and '-', starting with a
	// letter or digit; not "auto" (systemd-boot ignores "auto-*" entry
	// files). Default "cpinit". Every entry file starting with "<stem>-"
	// must be a slot entry.
	Stem string
	// Tries is the counter SetActive gives the new slot ("+Tries"), and
	// FallBackFrom the old one if it is at 0. Default 3, the example of
	// systemd's docs/AUTOMATIC_BOOT_ASSESSMENT.md.
	Tries int
	// Arch is systemd-boot's EFI_MACHINE_TYPE_NAME, compared with entries'
	// "architecture" lines. Default from GOARCH: x64, ia32, aa64, arm,
	// riscv64, loongarch64.
	Arch string
}

// BLSDefaultStem and BLSDefaultTries are BLSConfig's defaults.
const (
	BLSDefaultStem  = "cpinit"
	BLSDefaultTries = 3
)

// blsMaxRank keeps ranks far from int limits; SetActive adds one each time.
const blsMaxRank = 999_999_999

func (c BLSConfig) withDefaults() (BLSConfig, error) {
	if c.Stem == "" {
		c.Stem = BLSDefaultStem
	}
	if c.Tries == 0 {
		c.Tries = BLSDefaultTries
	}
	if c.Arch == "" {
		c.Arch = map[string]string{"amd64": "x64", "386": "ia32", "arm64": "aa64", "arm": "arm",
			"riscv64": "riscv64", "loong64": "loongarch64"}[runtime.GOARCH]
	}
	ok := c.Stem[0] != '-' && c.Stem[0] != '.' && c.Stem[0] != '_' && !strings.HasPrefix(c.Stem+"-", "auto-")
	for i := 0; i < len(c.Stem); i++ {
		ch := c.Stem[i]
		if !(ch >= 'a' && ch <= 'z') && !blsIsDigit(ch) && ch != '.' && ch != '_' && ch != '-' {
			ok = false
		}
	}
	switch {
	case !ok:
		return c, fmt.Errorf("bootstate: systemd-boot entry stem %q: want lowercase letters, digits, '.', '_', '-', starting with a letter or digit, not \"auto\"", c.Stem)
	case c.Tries < 1 || c.Tries > 1000:
		return c, fmt.Errorf("bootstate: systemd-boot tries %d: want 1..1000", c.Tries)
	case c.Arch == "":
		return c, fmt.Errorf("bootstate: systemd-boot: no EFI architecture name known for GOARCH %s: set BLSConfig.Arch", runtime.GOARCH)
	}
	return c, nil
}

// blsSlotID parses a slot entry's name: "<stem>-<rank>-<a|b>" and the
// ".conf" suffix exactly (systemd-boot 256 matches the suffix after the
// counter case-sensitively, 252 does not). ours: the name starts with
// "<stem>-" in any case, so it must be a slot entry.
func (c BLSConfig) blsSlotID(n BLSName) (slot, rank int, ours bool, err error) {
	pre := c.Stem + "-"
	if len(n.ID) < len(pre) || !strings.EqualFold(n.ID[:len(pre)], pre) {
		return -1, 0, false, nil
	}
	bad := fmt.Errorf("want %s<rank>-<a|b>[+LEFT[-DONE]].conf, e.g. %s1-a.conf", pre, pre)
	rest, ok := strings.CutPrefix(n.ID, pre)
	r, letter, ok2 := strings.Cut(rest, "-")
	if !ok || !ok2 || n.Suffix != ".conf" || r == "" || len(r) > 9 || (len(r) > 1 && r[0] == '0') {
		return -1, 0, true, bad
	}
	for i := 0; i < len(r); i++ {
		if !blsIsDigit(r[i]) {
			return -1, 0, true, bad
		}
	}
	rank, _ = strconv.Atoi(r)
	switch letter {
	case "a":
		return 0, rank, true, nil
	case "b":
		return 1, rank, true, nil
	}
	return -1, 0, true, bad
}

func (c BLSConfig) blsSlotFile(slot, rank int, n BLSName) BLSName {
	n.ID = fmt.Sprintf("%s-%d-%s", c.Stem, rank, blsSlotLetter(slot))
	n.Suffix = ".conf"
	return n
}

func blsSlotLetter(slot int) string { return SlotSuffixes[slot][1:] }

// BLSEntry is one Type #1 entry file as systemd-boot reads it.
type BLSEntry struct {
	// File is the file name in loader/entries.
	File string
	Info BLSEntryInfo
	// Loadable: systemd-boot adds the entry to its list (boot.c
	// config_entry_add_type1): it has a "linux" or "efi" line, no
	// "architecture" line naming another architecture, and the file it
	// names exists.
	Loadable bool
}

// BLSVars are systemd-boot's EFI variables that select the entry.
type BLSVars struct {
	// EntryDefault is LoaderEntryDefault (`bootctl set-default`), a
	// pattern that wins over loader.conf's "default"; "" if unset.
	EntryDefault string
	// EntryOneShot is LoaderEntryOneShot (`bootctl set-oneshot`), a
	// pattern for the next boot only; systemd-boot deletes it at that
	// boot. "" if unset.
	EntryOneShot string
}

// BLSState is the systemd-boot backend's ABState: every Type #1 entry in
// directory order (the slot entries and any others, which compete for the
// default), loader.conf's default pattern and the EFI variables. Its
// methods rename slot entries in memory; BLSDir.Save applies the renames.
type BLSState struct {
	Config  BLSConfig
	Dir     string // the entries directory, for messages
	Entries []BLSEntry
	Loader  BLSLoaderConfig
	Vars    BLSVars

	slot   [2]int   // index in Entries of slot a's and b's entry
	loaded []string // Entries' file names as loaded or last saved
}

// RevertTo implements Reverter: each slot's entry renamed back to the name
// it has in old (as old was loaded).
func (s *BLSState) RevertTo(old ABState) error {
	o, ok := old.(*BLSState)
	if !ok {
		return fmt.Errorf("bootstate: systemd-boot: cannot revert to a %s state", old.Scheme())
	}
	for k := range s.slot {
		s.Entries[s.slot[k]].File = o.loaded[o.slot[k]]
	}
	return nil
}

// NewBLSState checks entries for the A/B scheme: exactly one entry per slot,
// every entry named "<stem>-..." a well-formed slot entry, sort lines that
// let the ids decide the order, and no "@saved" default (it boots whatever
// booted last and defeats the fallback). dir is for messages.
func NewBLSState(cfg BLSConfig, dir string, entries []BLSEntry, lc BLSLoaderConfig, vars BLSVars) (*BLSState, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &BLSState{Config: cfg, Dir: dir, Entries: append([]BLSEntry(nil), entries...), Loader: lc, Vars: vars, slot: [2]int{-1, -1}}
	if lc.HasDefault && strings.EqualFold(lc.Default, "@saved") {
		return nil, fmt.Errorf("bootstate: systemd-boot: %s: %w (\"default @saved\" boots the entry booted last, so a new slot would never boot and a failed one never be left: remove the line, or write \"default %s-*\")", filepath.Join(filepath.Dir(dir), "loader.conf"), ErrNoScheme, cfg.Stem)
	}
	if strings.EqualFold(vars.EntryDefault, "@saved") {
		return nil, fmt.Errorf("bootstate: systemd-boot: EFI variable LoaderEntryDefault is \"@saved\": %w (remove it: bootctl set-default \"\")", ErrNoScheme)
	}
	var found [2][]string
	for i, e := range s.Entries {
		n, err := ParseBLSName(e.File)
		if err != nil {
			return nil, fmt.Errorf("bootstate: systemd-boot: %s: %w: %w", dir, ErrCorrupt, err)
		}
		k, _, ours, err := cfg.blsSlotID(n)
		if err != nil {
			return nil, fmt.Errorf("bootstate: systemd-boot: entry %s/%s: %w (names starting with %q are cpinit's slot entries: %w; rename or remove it)", dir, e.File, ErrCorrupt, cfg.Stem+"-", err)
		}
		if ours {
			found[k] = append(found[k], e.File)
			s.slot[k] = i
		}
	}
	for k, f := range found {
		l := blsSlotLetter(k)
		switch {
		case len(f) == 0:
			return nil, fmt.Errorf("bootstate: systemd-boot: %s: %w (no entry for slot %s: create %s-0-%s+0.conf, booting slot %s's kernel with cpinit.slot=%s, or %s-0-%s.conf if it is the slot running now)", dir, ErrNoScheme, l, cfg.Stem, l, l, l, cfg.Stem, l)
		case len(f) > 1:
			return nil, fmt.Errorf("bootstate: systemd-boot: %s: %w (%d entries for slot %s: %s; keep one: a rename cut short by a power loss on FAT can leave two)", dir, ErrNoScheme, len(f), l, strings.Join(f, ", "))
		}
	}
	a, b := s.Entries[s.slot[0]].Info, s.Entries[s.slot[1]].Info
	if a.SortKey != "" || b.SortKey != "" {
		if a.SortKey != b.SortKey || a.MachineID != b.MachineID || blsVersCmp(a.Version, b.Version) != 0 {
			return nil, fmt.Errorf("bootstate: systemd-boot: %s: %w (entries %s and %s have sort-key lines and differ in sort-key, machine-id or version, so systemd-boot orders them by those and cpinit cannot switch slots by renaming: remove the sort-key lines, or make sort-key, machine-id and version the same)", dir, ErrNoScheme, s.Entries[s.slot[0]].File, s.Entries[s.slot[1]].File)
		}
	}
	s.loaded = s.files()
	return s, nil
}

func (s *BLSState) files() []string {
	out := make([]string, len(s.Entries))
	for i, e := range s.Entries {
		out[i] = e.File
	}
	return out
}

func (s *BLSState) clone() *BLSState {
	c := *s
	c.Entries = append([]BLSEntry(nil), s.Entries...)
	c.loaded = append([]string(nil), s.loaded...)
	return &c
}

// name is Entries[i]'s parsed name (checked by NewBLSState or made by
// FormatBLSName).
func (s *BLSState) name(i int) BLSName {
	n, _ := ParseBLSName(s.Entries[i].File)
	return n
}

func (s *BLSState) rank(k int) int {
	_, r, _, _ := s.Config.blsSlotID(s.name(s.slot[k]))
	return r
}

func (s *BLSState) setName(k int, n BLSName) error {
	f, err := FormatBLSName(n)
	if err != nil {
		return err
	}
	s.Entries[s.slot[k]].File = f
	return nil
}

// Scheme implements ABState.
func (s *BLSState) Scheme() string { return "systemd-boot" }

func (s *BLSState) index(slot string) (int, error) {
	i := SlotIndex(slot)
	if i < 0 || i > 1 {
		return -1, fmt.Errorf("bootstate: systemd-boot %s: slot %q: %w (it has a and b)", s.Dir, slot, ErrUnknownSlot)
	}
	return i, nil
}

// Slots implements ABState: a slot is successful when its entry has no
// counter (blessed), on trial with +LEFT > 0, not bootable at +0 (sorted
// last: systemd-boot boots it only when no other entry is left) or when
// systemd-boot skips its entry (not Loadable).
func (s *BLSState) Slots() []SlotInfo {
	out := make([]SlotInfo, 2)
	for k := range out {
		n := s.name(s.slot[k])
		tries := -1
		if n.Counting {
			tries = n.Left
		}
		out[k] = SlotInfo{Name: blsSlotLetter(k), Bootable: s.Entries[s.slot[k]].Loadable && tries != 0,
			Successful: !n.Counting, TracksSuccess: true, Tries: tries}
	}
	return out
}

// blsSortEntry is what boot.c config_entry_compare looks at.
type blsSortEntry struct {
	i                           int
	id                          string
	left, done                  int // -1 when the entry does not count
	sortKey, machineID, version string
}

// blsCompare is boot.c config_entry_compare.
func blsCompare(a, b blsSortEntry) int {
	// "Order entries that have no tries left to the end of the list"
	if r := blsCmpBool(a.left == 0, b.left == 0); r != 0 {
		return r
	}
	// New-style (sort-key) before old-style.
	if r := blsCmpBool(a.sortKey == "", b.sortKey == ""); r != 0 {
		return r
	}
	if a.sortKey != "" && b.sortKey != "" {
		if r := blsStrcmp16(a.sortKey, b.sortKey); r != 0 {
			return r
		}
		if r := blsStrcmp16(a.machineID, b.machineID); r != 0 {
			return r
		}
		if r := -blsVersCmp(a.version, b.version); r != 0 {
			return r
		}
	}
	if r := -blsVersCmp(a.id, b.id); r != 0 {
		return r
	}
	if a.left < 0 || b.left < 0 {
		return 0
	}
	if r := -blsCmp(a.left, b.left); r != 0 {
		return r
	}
	return blsCmp(a.done, b.done)
}

// Order returns the indexes in Entries of the entries systemd-boot lists, in
// its order: the loadable ones in directory order, sorted by util.c's
// sort_pointer_array (an insertion sort, so equal entries keep directory
// order) with config_entry_compare.
func (s *BLSState) Order() []int {
	var v []blsSortEntry
	for i, e := range s.Entries {
		if !e.Loadable {
			continue
		}
		n := s.name(i)
		se := blsSortEntry{i: i, id: blsID(e.File), left: -1, done: -1,
			sortKey: e.Info.SortKey, machineID: e.Info.MachineID, version: e.Info.Version}
		if n.Counting {
			se.left, se.done = n.Left, n.Done
		}
		v = append(v, se)
	}
	for i := 1; i < len(v); i++ {
		e := v[i]
		k := i
		for ; k > 0 && blsCompare(v[k-1], e) > 0; k-- {
			v[k] = v[k-1]
		}
		v[k] = e
	}
	out := make([]int, len(v))
	for i, e := range v {
		out[i] = e.i
	}
	return out
}

// pick is boot.c config_default_entry_select over Order: the first entry
// matching LoaderEntryOneShot, else LoaderEntryDefault, else loader.conf's
// "default" (patterns lowercased, matched with efi_fnmatch against the
// lowercased file name), else the first entry. -1 if there is none. why
// says which rule chose it. Not modelled: the menu (a key pressed at boot),
// the auto entries systemd-boot appends after sorting (Windows, EFI shell,
// ...; they can only be chosen by a pattern that matches no entry here),
// "efi" entries naming systemd-boot itself.
func (s *BLSState) pick() (idx int, why string) {
	order := s.Order()
	find := func(pattern string) int {
		if pattern == "" {
			return -1
		}
		p := blsLowerASCII(pattern)
		for _, i := range order {
			if blsFnmatch(p, blsID(s.Entries[i].File)) {
				return i
			}
		}
		return -1
	}
	if i := find(s.Vars.EntryOneShot); i >= 0 {
		return i, fmt.Sprintf("EFI variable LoaderEntryOneShot %q selects it", s.Vars.EntryOneShot)
	}
	if i := find(s.Vars.EntryDefault); i >= 0 {
		return i, fmt.Sprintf("EFI variable LoaderEntryDefault %q selects it (bootctl set-default \"\" removes it)", s.Vars.EntryDefault)
	}
	if s.Loader.HasDefault {
		if i := find(s.Loader.Default); i >= 0 {
			return i, fmt.Sprintf("loader.conf's \"default %s\" selects it", s.Loader.Default)
		}
	}
	if len(order) > 0 {
		return order[0], "it sorts first"
	}
	return -1, "no entry is loadable"
}

func (s *BLSState) slotOf(i int) string {
	for k, j := range s.slot {
		if i >= 0 && i == j {
			return blsSlotLetter(k)
		}
	}
	return ""
}

// Next implements ABState: the slot whose entry systemd-boot boots next, as
// boot.c picks it. Unlike other bootloaders, systemd-boot boots an entry at
// +0 when nothing else is left (it is sorted last, not removed), so Next
// can name a slot that is not Bootable. "" when it would boot an entry that
// is not a slot's, or none.
func (s *BLSState) Next() string {
	i, _ := s.pick()
	return s.slotOf(i)
}

// explain says why systemd-boot would not boot slot k's entry.
func (s *BLSState) explain(k int) string {
	e := s.Entries[s.slot[k]]
	switch {
	case e.Info.WrongArch:
		return fmt.Sprintf("entry %s has an architecture line other than %s, so systemd-boot skips it", e.File, s.Config.Arch)
	case e.Info.Loader == "":
		return fmt.Sprintf("entry %s has no linux or efi line, so systemd-boot skips it", e.File)
	case !e.Loadable:
		return fmt.Sprintf("entry %s boots %s, which is not on the ESP, so systemd-boot skips it", e.File, e.Info.Loader)
	}
	i, why := s.pick()
	if i < 0 {
		return why
	}
	if why == "it sorts first" && s.slotOf(i) == "" {
		why += fmt.Sprintf(" (a line \"default %s-*\" in loader.conf keeps other entries from being the default)", s.Config.Stem)
	}
	return fmt.Sprintf("systemd-boot would boot %s: %s", s.Entries[i].File, why)
}

// SetActive implements ABState: the slot's entry gets the other slot's rank
// + 1 and "+Tries", so it sorts first while it has tries and last once
// they are used up. Before changing anything it plays the trial with
// Boot: the slot boots Tries times, then the other slot; otherwise it
// returns why (a pattern or EFI variable pinning an entry, another entry
// sorting first, an entry systemd-boot skips, the other slot at 0 tries).
func (s *BLSState) SetActive(slot string) error {
	k, err := s.index(slot)
	if err != nil {
		return err
	}
	y := 1 - k
	ry := s.rank(y)
	if ry >= blsMaxRank {
		return fmt.Errorf("bootstate: systemd-boot %s: slot %s's rank %d: %w (rename the entries to small ranks, keeping their order)", s.Dir, blsSlotLetter(y), ry, ErrFull)
	}
	c := s.clone()
	if err := c.setName(k, s.Config.blsSlotFile(k, ry+1, BLSName{Counting: true, Left: s.Config.Tries})); err != nil {
		return err
	}
	if err := c.checkTrial(k); err != nil {
		return err
	}
	*s = *c
	return nil
}

// checkTrial plays slot k's trial from s with Boot (no bless): Tries boots
// of slot k, then slot y.
func (s *BLSState) checkTrial(k int) error {
	y := 1 - k
	sim := s
	for n := 1; n <= s.Config.Tries+1; n++ {
		want := k
		if n > s.Config.Tries {
			want = y
		}
		next, booted := sim.Boot()
		if booted.Slot == blsSlotLetter(want) {
			sim = next
			continue
		}
		if want == y {
			if ny := sim.name(sim.slot[y]); ny.Counting && ny.Left == 0 {
				return fmt.Errorf("bootstate: systemd-boot %s: refusing to make slot %s active: slot %s's entry %s has no tries left, so once slot %s's tries run out systemd-boot would keep booting it; mark slot %s good first (its entry without the counter)", s.Dir, blsSlotLetter(k), blsSlotLetter(y), sim.Entries[sim.slot[y]].File, blsSlotLetter(k), blsSlotLetter(y))
			}
			return fmt.Errorf("bootstate: systemd-boot %s: %w (after slot %s's %d tries, slot %s would not boot: %s)", s.Dir, ErrNoScheme, blsSlotLetter(k), s.Config.Tries, blsSlotLetter(y), sim.explain(y))
		}
		return fmt.Errorf("bootstate: systemd-boot %s: %w (slot %s would not boot on try %d: %s)", s.Dir, ErrNoScheme, blsSlotLetter(k), n, sim.explain(k))
	}
	return nil
}

// MarkSuccessful implements ABState: systemd-bless-boot good, the counter
// dropped (bless-boot.c make_good).
func (s *BLSState) MarkSuccessful(slot string) error {
	k, err := s.index(slot)
	if err != nil {
		return err
	}
	return s.setName(k, s.name(s.slot[k]).Good())
}

// SetUnbootable implements ABState: systemd-bless-boot bad, "+0-DONE"
// (bless-boot.c make_bad). The entry sorts last; systemd-boot still boots
// it if no other entry is loadable.
func (s *BLSState) SetUnbootable(slot string) error {
	k, err := s.index(slot)
	if err != nil {
		return err
	}
	return s.setName(k, s.name(s.slot[k]).Bad())
}

// FallBackFrom implements ABState: slot's entry goes to "+0-DONE"
// (bless-boot bad) and, if the other slot's entry is at 0 tries too, that
// one gets "+Tries" (it would otherwise tie at 0 and lose to the higher
// rank). The other slot's rank stays: an entry at 0 tries sorts last
// whatever its rank. It checks that systemd-boot then boots the other slot
// and changes nothing if not.
func (s *BLSState) FallBackFrom(slot string) error {
	k, err := s.index(slot)
	if err != nil {
		return err
	}
	y := 1 - k
	c := s.clone()
	if ny := c.name(c.slot[y]); ny.Counting && ny.Left == 0 {
		if err := c.setName(y, BLSName{ID: ny.ID, Suffix: ny.Suffix, Counting: true, Left: s.Config.Tries}); err != nil {
			return err
		}
	}
	if err := c.setName(k, c.name(c.slot[k]).Bad()); err != nil {
		return err
	}
	if c.Next() != blsSlotLetter(y) {
		return fmt.Errorf("bootstate: systemd-boot %s: %w (falling back from slot %s, slot %s would not boot: %s)", s.Dir, ErrNoScheme, blsSlotLetter(k), blsSlotLetter(y), c.explain(y))
	}
	*s = *c
	return nil
}

// BLSBooted is what one boot of the simulator did.
type BLSBooted struct {
	// File is the booted entry's name after systemd-boot's rename: the
	// last part of the LoaderBootCountPath it sets for
	// systemd-bless-boot (for an entry that counts). "" if no entry.
	File string
	// Slot is the slot of the booted entry, "" if not a slot's.
	Slot string
}

// Boot is the boot simulator: what systemd-boot does at one boot without a
// key pressed, on a copy of s. It picks the entry as boot.c
// config_default_entry_select does, renames it if it counts (boot.c
// config_entry_bump_counters, "+LEFT-DONE" to "+LEFT-1-DONE+1", never
// below 0), and deletes LoaderEntryOneShot (config_load_defaults). The
// returned state is what BLSDir.Load would read afterwards.
func (s *BLSState) Boot() (*BLSState, BLSBooted) {
	c := s.clone()
	c.Vars.EntryOneShot = ""
	i, _ := s.pick()
	if i < 0 {
		return c, BLSBooted{}
	}
	if n := s.name(i); n.Counting {
		c.Entries[i].File = n.Bumped().String()
	}
	return c, BLSBooted{File: c.Entries[i].File, Slot: s.slotOf(i)}
}

// Bless is systemd-bless-boot good (good true) or bad on a copy of s, for
// the entry booted as file (BLSBooted.File, from LoaderBootCountPath), as
// bless-boot.c verb_set does: rename file, or the other verdict's name, to
// the verdict's name; nothing if that name exists already. It fails as
// bless-boot does when file has no counter or no such entry is there.
func (s *BLSState) Bless(file string, good bool) (*BLSState, error) {
	n, err := ParseBLSName(file)
	if err != nil {
		return nil, err
	}
	if !n.Counting {
		return nil, fmt.Errorf("bootstate: systemd-bless-boot: %s has no counter (not booted with boot counting)", file)
	}
	target, other := n.Good().String(), n.Bad().String()
	if !good {
		target, other = other, target
	}
	c := s.clone()
	find := func(f string) int {
		for i, e := range c.Entries {
			if strings.EqualFold(e.File, f) {
				return i
			}
		}
		return -1
	}
	if find(target) >= 0 {
		return c, nil
	}
	for _, src := range []string{file, other} {
		if i := find(src); i >= 0 {
			c.Entries[i].File = target
			return c, nil
		}
	}
	return nil, fmt.Errorf("bootstate: systemd-bless-boot: can't find boot counter source file for %s", target)
}

// BLSRename is one rename BLSDir.Save makes in the entries directory.
type BLSRename struct{ From, To string }

// Renames returns the renames from the names as loaded (or last saved) to
// the current ones, in the order Save makes them. A single rename is atomic
// (as far as the file system makes it: see the doc on FAT). With two (only
// FallBackFrom onto a slot at 0 tries makes two, or several changes before
// one Save), each order is played: the order is kept if systemd-boot boots,
// after every prefix of it, the slot it boots before the first rename or
// after the last; among those, the one whose intermediate states boot a
// Bootable slot, then the one whose intermediate states boot the new
// state's slot. For FallBackFrom that is: first the other slot back to
// "+Tries" (systemd-boot still boots the abandoned slot's trial, as
// before), then the abandoned slot to +0; the opposite order would leave
// both at 0 tries for a moment, where systemd-boot boots the abandoned
// slot with no tries left.
func (s *BLSState) Renames() ([]BLSRename, error) {
	var rs []BLSRename
	for i, e := range s.Entries {
		if e.File != s.loaded[i] {
			rs = append(rs, BLSRename{From: s.loaded[i], To: e.File})
		}
	}
	if len(rs) <= 1 {
		return rs, nil
	}
	if len(rs) > 3 {
		return nil, fmt.Errorf("bootstate: systemd-boot %s: %d renames in one save, cpinit makes at most 2", s.Dir, len(rs))
	}
	old := s.clone()
	for i := range old.Entries {
		old.Entries[i].File = s.loaded[i]
	}
	from, to := old.Next(), s.Next()
	best, bestScore := []BLSRename(nil), 0
	for _, perm := range blsPermutations(len(rs)) {
		st := old.clone()
		score, ok := 0, true
		for step, p := range perm {
			r := rs[p]
			for _, e := range st.Entries {
				if strings.EqualFold(e.File, r.To) {
					ok = false // the name is taken at this point
				}
			}
			for i := range st.Entries {
				if st.Entries[i].File == r.From {
					st.Entries[i].File = r.To
				}
			}
			if step == len(perm)-1 || !ok {
				break
			}
			n := st.Next()
			if n != from && n != to {
				ok = false
				break
			}
			if si, err := SlotOf(st, n); err != nil || !si.Bootable {
				score += 10
			}
			if n != to {
				score++
			}
		}
		if ok && (best == nil || score < bestScore) {
			best, bestScore = nil, score
			for _, p := range perm {
				best = append(best, rs[p])
			}
		}
	}
	if best == nil {
		return nil, fmt.Errorf("bootstate: systemd-boot %s: no order of the renames %v keeps booting slot %q or %q in between", s.Dir, rs, from, to)
	}
	return best, nil
}

func blsPermutations(n int) [][]int {
	if n == 1 {
		return [][]int{{0}}
	}
	var out [][]int
	for _, p := range blsPermutations(n - 1) {
		for at := 0; at <= len(p); at++ {
			q := append(append(append([]int(nil), p[:at]...), n-1), p[at:]...)
			out = append(out, q)
		}
	}
	return out
}
