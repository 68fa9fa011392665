package bootstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf16"
)

// systemd-boot's boot counting (issue 16): the Boot Loader Specification's
// entry files, whose names carry the counter ("<id>+LEFT[-DONE].conf"),
// read and renamed on the ESP. This file is the pure part (names, entry and
// loader.conf contents, EFI variables, systemd-boot's version comparison and
// pattern matching) and the directory type BLSDir; bls_ab.go maps the entries
// to cpinit's two slots, mirrors how systemd-boot picks the entry it boots,
// and plans the renames. Source of every rule: systemd v252 (Debian
// bookworm's systemd 252.x, v252-stable branch), src/boot/efi/boot.c,
// src/boot/efi/efi-string.c, src/fundamental/string-util-fundamental.c and
// src/boot/bless-boot.c; docs/bootloader-systemd-boot.md says what cpinit
// relies on.

// Where systemd-boot keeps its state, relative to the ESP's root.
const (
	// BLSEntriesDir holds the Type #1 entries (boot.c config_load_entries:
	// "\loader\entries").
	BLSEntriesDir = "loader/entries"
	// BLSLoaderConf is the loader's own configuration (boot.c
	// config_load_defaults: "\loader\loader.conf").
	BLSLoaderConf = "loader/loader.conf"
	// BLSType2Dir holds Type #2 entries, unified kernel images (boot.c
	// config_entry_add_unified: "\EFI\Linux"). cpinit does not manage them
	// and refuses an ESP that has any (see BLSDir.Load).
	BLSType2Dir = "EFI/Linux"
	// BLSLoaderGUID is the vendor GUID of systemd-boot's EFI variables
	// (LOADER_GUID, 4a67b082-0a4c-41cf-b6c7-440b29bb8c4f).
	BLSLoaderGUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
)

// blsIntMax is boot.c's cap on either counter: config_entry_parse_tries
// ignores a counter above INT_MAX (the entry then does not count at all).
const blsIntMax = 1<<31 - 1

// BLSName is an entry file name split as systemd-boot splits it: the name
// before the counter, the counter, and the suffix. A name without a counter
// that systemd-boot recognises has Counting false and ID the whole name
// before the suffix.
type BLSName struct {
	// ID is the name before "+LEFT[-DONE]" ("cpinit-2-b" in
	// "cpinit-2-b+3-0.conf"); systemd-boot 252 itself uses the whole file
	// name, lowercased, as the entry's id (boot.c config_entry_add_type1),
	// systemd-bless-boot's "good" name is ID+Suffix.
	ID string
	// Suffix is ".conf" (Type #1) or ".efi" (Type #2), spelt as in the
	// name: systemd-boot 252 matches it case-insensitively.
	Suffix string
	// Counting: the name has a counter, so systemd-boot counts the entry's
	// boots (tries_left >= 0 in boot.c).
	Counting bool
	// Left and Done are the counters ("tries left", "tries done").
	Left, Done int
	// HasDone: the name spells "-DONE" ("+3-0" rather than "+3"; boot.c
	// reads a missing DONE as 0).
	HasDone bool
}

// ParseBLSName splits an entry file name as boot.c's
// config_entry_parse_tries does: the counter starts after the last '+' in
// the name; LEFT is one or more decimal digits, then optionally '-' and
// DONE (one or more digits), then the suffix and nothing else; either
// number above INT_MAX, or anything else after the last '+', means the
// entry does not count (Counting false; systemd-boot boots it like any
// other). Leading zeros are accepted ("+03" is 3). The only error is a name
// that is not an entry at all: no ".conf" or ".efi" suffix (any case), or a
// '/' or NUL in it.
func ParseBLSName(name string) (BLSName, error) {
	var suffix string
	for _, s := range []string{".conf", ".efi"} {
		if len(name) >= len(s) && strings.EqualFold(name[len(name)-len(s):], s) {
			suffix = name[len(name)-len(s):]
		}
	}
	if suffix == "" {
		return BLSName{}, fmt.Errorf("bootstate: %q is not a boot loader entry name (no .conf or .efi suffix)", name)
	}
	if strings.ContainsAny(name, "/\x00") {
		return BLSName{}, fmt.Errorf("bootstate: %q is not a file name", name)
	}
	stem := name[:len(name)-len(suffix)]
	plain := BLSName{ID: stem, Suffix: suffix}
	plus := strings.LastIndexByte(stem, '+')
	if plus < 0 {
		return plain, nil
	}
	// boot.c searches the whole name, suffix included, for the last '+';
	// neither suffix has one, so the stem's last '+' is the same.
	rest := stem[plus+1:]
	left, rest, ok := blsParseNumber(rest)
	if !ok {
		return plain, nil
	}
	done, hasDone := 0, false
	if strings.HasPrefix(rest, "-") {
		done, rest, ok = blsParseNumber(rest[1:])
		if !ok {
			return plain, nil
		}
		hasDone = true
	}
	if rest != "" {
		// "Boot counter in the middle of the name?" (boot.c)
		return plain, nil
	}
	return BLSName{ID: stem[:plus], Suffix: suffix, Counting: true, Left: left, Done: done, HasDone: hasDone}, nil
}

// blsParseNumber mirrors efi-string.c's parse_number16 with a tail: at least
// one digit, no overflow of uint64; and boot.c's cap at INT_MAX.
func blsParseNumber(s string) (n int, rest string, ok bool) {
	i := 0
	var u uint64
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		d := uint64(s[i] - '0')
		if u > (1<<64-1-d)/10 {
			return 0, s, false
		}
		u = u*10 + d
		i++
	}
	if i == 0 || u > blsIntMax {
		return 0, s, false
	}
	return int(u), s[i:], true
}

// String formats the name: ID, then "+LEFT" and "-DONE" if counting (DONE
// only if HasDone), then the suffix. Use FormatBLSName to check the result.
func (n BLSName) String() string {
	s := n.ID
	if n.Counting {
		s += "+" + strconv.Itoa(n.Left)
		if n.HasDone {
			s += "-" + strconv.Itoa(n.Done)
		}
	}
	return s + n.Suffix
}

// FormatBLSName formats n and checks that systemd-boot reads the result
// back as n: a suffix of ".conf" or ".efi", counters within 0..INT_MAX, and
// an ID that does not make the name mean something else (a non-counting ID
// ending in "+3" would count).
func FormatBLSName(n BLSName) (string, error) {
	if n.Counting && (n.Left < 0 || n.Left > blsIntMax || n.Done < 0 || n.Done > blsIntMax) {
		return "", fmt.Errorf("bootstate: boot counter +%d-%d out of range 0..%d", n.Left, n.Done, blsIntMax)
	}
	if !n.Counting && (n.Left != 0 || n.Done != 0 || n.HasDone) {
		return "", fmt.Errorf("bootstate: entry name %q: counters without Counting", n.ID)
	}
	s := n.String()
	back, err := ParseBLSName(s)
	if err != nil {
		return "", err
	}
	if back != n {
		return "", fmt.Errorf("bootstate: entry name %+v formats as %q, which systemd-boot reads as %+v", n, s, back)
	}
	return s, nil
}

// Bumped is the name systemd-boot renames a counting entry to when it boots
// it (boot.c config_entry_parse_tries' next_name, "%.*s%u-%u%s"): LEFT one
// less (never below 0, LESS_BY), DONE one more (at most INT_MAX), always
// spelt with "-DONE". A name that does not count is not renamed.
func (n BLSName) Bumped() BLSName {
	if !n.Counting {
		return n
	}
	n.Left = max(n.Left-1, 0)
	n.Done = min(n.Done+1, blsIntMax)
	n.HasDone = true
	return n
}

// Good is systemd-bless-boot's "good" name (bless-boot.c make_good): the
// counter dropped, boot counting off for the entry.
func (n BLSName) Good() BLSName {
	return BLSName{ID: n.ID, Suffix: n.Suffix}
}

// Bad is systemd-bless-boot's "bad" name (bless-boot.c make_bad): LEFT 0,
// DONE kept, spelt "+0" when DONE is 0 and "+0-DONE" otherwise. For a name
// without a counter it is "+0" (bless-boot itself refuses those: it only
// marks the entry booted with counting; cpinit uses the same spelling).
func (n BLSName) Bad() BLSName {
	done := 0
	if n.Counting {
		done = n.Done
	}
	return BLSName{ID: n.ID, Suffix: n.Suffix, Counting: true, Left: 0, Done: done, HasDone: done != 0}
}

// blsID is systemd-boot 252's id of an entry: its whole file name, counter
// and suffix included, ASCII-lowercased (boot.c config_entry_add_type1:
// entry->id = xstrdup16(file); strtolower16(entry->id)). Patterns
// (loader.conf "default", LoaderEntryDefault, LoaderEntryOneShot) are
// matched against it and it orders entries.
func blsID(file string) string {
	return blsLowerASCII(file)
}

// blsLowerASCII mirrors efi-string.c's strtolower16: A-Z only.
func blsLowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// blsUCS2 converts as efi-string.c's xstrn8_to_16 does: UTF-8 to UCS-2,
// characters outside the Basic Multilingual Plane dropped; "" is NULL
// there, which every caller here treats as absent.
func blsUCS2(s string) []uint16 {
	out := make([]uint16, 0, len(s))
	for _, r := range s {
		if r <= 0xd7ff || (r >= 0xe000 && r <= 0xffff) {
			out = append(out, uint16(r))
		}
	}
	return out
}

// blsStrcmp16 is efi-string.c's strcmp16 on converted strings: by UCS-2
// code unit, a shorter prefix first, NULL ("") before anything.
func blsStrcmp16(a, b string) int {
	x, y := blsUCS2(a), blsUCS2(b)
	for i := 0; i < len(x) && i < len(y); i++ {
		if x[i] != y[i] {
			return blsCmp(x[i], y[i])
		}
	}
	return blsCmp(len(x), len(y))
}

func blsCmp[T int | uint16 | byte](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func blsCmpBool(a, b bool) int {
	x, y := 0, 0
	if a {
		x = 1
	}
	if b {
		y = 1
	}
	return blsCmp(x, y)
}

func blsIsDigit(c byte) bool { return c >= '0' && c <= '9' }
func blsIsAlpha(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }

// blsVersCmp is src/fundamental/string-util-fundamental.c's
// strverscmp_improved, which systemd-boot orders entries by (ids newest
// first, boot.c config_entry_compare): segments of digits or letters,
// prefixed by '~' (oldest), '-', '^' or '.'; other characters separate
// segments and are dropped; a numeric segment is newer than an alphabetic
// one, and numbers compare by value (leading zeros skipped). Ported
// statement by statement; non-ASCII bytes are dropped as the non-ASCII
// UCS-2 characters are there.
func blsVersCmp(a, b string) int {
	valid := func(c byte) bool {
		return blsIsDigit(c) || blsIsAlpha(c) || c == '~' || c == '-' || c == '^' || c == '.'
	}
	at := func(s string, i int) byte {
		if i < len(s) {
			return s[i]
		}
		return 0
	}
	i, j := 0, 0
	for {
		for i < len(a) && !valid(a[i]) {
			i++
		}
		for j < len(b) && !valid(b[j]) {
			j++
		}
		if at(a, i) == '~' || at(b, j) == '~' {
			if r := blsCmpBool(at(a, i) != '~', at(b, j) != '~'); r != 0 {
				return r
			}
			i++
			j++
		}
		if at(a, i) == 0 || at(b, j) == 0 {
			return blsCmp(at(a, i), at(b, j))
		}
		for _, sep := range []byte{'-', '^', '.'} {
			if at(a, i) == sep || at(b, j) == sep {
				if r := blsCmpBool(at(a, i) != sep, at(b, j) != sep); r != 0 {
					return r
				}
				i++
				j++
			}
		}
		var aa, bb int
		if blsIsDigit(at(a, i)) || blsIsDigit(at(b, j)) {
			for aa = i; blsIsDigit(at(a, aa)); aa++ {
			}
			for bb = j; blsIsDigit(at(b, bb)); bb++ {
			}
			if r := blsCmpBool(i != aa, j != bb); r != 0 {
				return r
			}
			for at(a, i) == '0' {
				i++
			}
			for at(b, j) == '0' {
				j++
			}
			if r := blsCmp(aa-i, bb-j); r != 0 {
				return r
			}
			if r := strings.Compare(a[i:aa], b[j:bb]); r != 0 {
				return r
			}
		} else {
			for aa = i; blsIsAlpha(at(a, aa)); aa++ {
			}
			for bb = j; blsIsAlpha(at(b, bb)); bb++ {
			}
			n := min(aa-i, bb-j)
			if r := strings.Compare(a[i:i+n], b[j:j+n]); r != 0 {
				return r
			}
			if r := blsCmp(aa-i, bb-j); r != 0 {
				return r
			}
		}
		i, j = aa, bb
	}
}

// blsFnmatch is efi-string.c's efi_fnmatch, systemd-boot's matcher for
// "default" patterns: '*', '?', '[...]' with ranges and '\' escapes, no
// backtracking (each '*'-separated piece is matched at its first place).
// Both strings are already lowercased by the caller, as boot.c does.
func blsFnmatch(pattern, haystack string) bool {
	p := append(blsUCS2(pattern), 0)
	h := append(blsUCS2(haystack), 0)
	pi, hi := 0, 0
	for first := true; ; {
		match, pt, ht, star := blsFnmatchPrefix(p, pi, h, hi)
		if first {
			if !match {
				return false
			}
			if !star {
				return true
			}
			first = false
		}
		if star {
			pi, hi = pt, ht
		} else {
			if match || h[hi] == 0 {
				return match
			}
			hi++
		}
	}
}

// blsFnmatchPrefix is efi_fnmatch_prefix: matches the pattern up to its
// next '*' (star true, with the positions after it) or its end. p and h end
// in 0.
func blsFnmatchPrefix(p []uint16, pi int, h []uint16, hi int) (match bool, pt, ht int, star bool) {
	for ; ; pi, hi = pi+1, hi+1 {
		switch p[pi] {
		case 0:
			return h[hi] == 0, 0, 0, false
		case '\\':
			pi++
			if p[pi] == 0 || p[pi] != h[hi] {
				return false, 0, 0, false
			}
		case '?':
			if h[hi] == 0 {
				return false, 0, 0, false
			}
		case '*':
			for p[pi] == '*' {
				pi++
			}
			return true, pi, hi, true
		case '[':
			if h[hi] == 0 {
				return false, 0, 0, false
			}
			first, canRange, m := true, true, false
			for ; ; first = false {
				pi++
				if p[pi] == 0 {
					return false, 0, 0, false
				}
				if p[pi] == '\\' {
					pi++
					if p[pi] == 0 {
						return false, 0, 0, false
					}
					if p[pi] == h[hi] {
						m = true
					}
					canRange = true
					continue
				}
				if p[pi] == ']' && !first {
					break
				}
				if p[pi] == '-' && canRange && !first && p[pi+1] != ']' {
					low := p[pi-1]
					pi++
					if p[pi] == '\\' {
						pi++
					}
					if p[pi] == 0 {
						return false, 0, 0, false
					}
					if low <= h[hi] && h[hi] <= p[pi] {
						m = true
					}
					canRange = false
					continue
				}
				if p[pi] == h[hi] {
					m = true
				}
				canRange = true
			}
			if !m {
				return false, 0, 0, false
			}
		default:
			if p[pi] != h[hi] {
				return false, 0, 0, false
			}
		}
	}
}

// blsKeyValues splits a loader.conf or entry file into key/value pairs as
// boot.c's line_get_key_value does: lines end at '\n' or '\r'; blanks
// (' ', '\t') trimmed at both ends; '#' starts a comment line; the key
// ends at the first blank and a line without one is skipped; the value
// starts after the blanks; a value starting with '"' on a line ending in
// '"' loses both quotes. The content ends at its first NUL (it is a C
// string there).
func blsKeyValues(content []byte) [][2]string {
	if i := strings.IndexByte(string(content), 0); i >= 0 {
		content = content[:i]
	}
	var out [][2]string
	for _, line := range strings.FieldsFunc(string(content), func(r rune) bool { return r == '\n' || r == '\r' }) {
		line = strings.Trim(line, " \t")
		if line == "" || line[0] == '#' {
			continue
		}
		k := strings.IndexAny(line, " \t")
		if k < 0 {
			continue
		}
		key, value := line[:k], strings.TrimLeft(line[k:], " \t")
		if strings.HasPrefix(value, `"`) && strings.HasSuffix(line, `"`) {
			value = strings.TrimSuffix(value[1:], `"`)
		}
		out = append(out, [2]string{key, value})
	}
	return out
}

// BLSEntryInfo is what systemd-boot takes from a Type #1 entry file's
// contents for choosing the entry (boot.c config_entry_add_type1).
type BLSEntryInfo struct {
	Title string
	// SortKey, MachineID, Version: the "sort-key", "machine-id" and
	// "version" lines (the last one wins); "" when absent or empty
	// (xstr8_to_16 makes an empty value NULL).
	SortKey, MachineID, Version string
	// Loader is the "linux" or "efi" path (the last of them wins), "" if
	// neither: systemd-boot skips such an entry.
	Loader string
	// WrongArch: an "architecture" line names another architecture than
	// the configured one; systemd-boot skips the entry.
	WrongArch bool
}

// ParseBLSEntry reads an entry file's contents. arch is systemd-boot's
// EFI_MACHINE_TYPE_NAME ("x64", "aa64", ...), compared case-insensitively
// as boot.c does.
func ParseBLSEntry(content []byte, arch string) BLSEntryInfo {
	var e BLSEntryInfo
	for _, kv := range blsKeyValues(content) {
		switch kv[0] {
		case "title":
			e.Title = kv[1]
		case "sort-key":
			e.SortKey = kv[1]
		case "version":
			e.Version = kv[1]
		case "machine-id":
			e.MachineID = kv[1]
		case "linux", "efi":
			e.Loader = kv[1]
		case "architecture":
			if !strings.EqualFold(kv[1], arch) {
				// boot.c: the entry becomes LOADER_UNDEFINED and the
				// parsing stops.
				e.WrongArch = true
				return e
			}
		}
	}
	return e
}

// BLSLoaderConfig is what cpinit takes from loader.conf: the "default"
// pattern (boot.c config_defaults_load_from_file; the last valid line
// wins; a value starting with '@' other than "@saved" is ignored with an
// error message on the console).
type BLSLoaderConfig struct {
	Default    string
	HasDefault bool
}

// ParseBLSLoaderConf reads loader.conf's contents.
func ParseBLSLoaderConf(content []byte) BLSLoaderConfig {
	var c BLSLoaderConfig
	for _, kv := range blsKeyValues(content) {
		if kv[0] != "default" {
			continue
		}
		if strings.HasPrefix(kv[1], "@") && !strings.EqualFold(kv[1], "@saved") {
			continue
		}
		c.Default, c.HasDefault = kv[1], true
	}
	return c
}

// ParseBLSEFIVarString decodes an efivarfs file holding one of
// systemd-boot's string variables: 4 bytes of attributes, then UTF-16LE,
// up to a NUL if there is one (efivar_set writes it).
func ParseBLSEFIVarString(data []byte) (string, error) {
	if len(data) < 4 || len(data)%2 != 0 {
		return "", fmt.Errorf("EFI variable of %d bytes: not 4 bytes of attributes and UTF-16 text: %w", len(data), ErrCorrupt)
	}
	u := make([]uint16, 0, (len(data)-4)/2)
	for i := 4; i < len(data); i += 2 {
		c := binary.LittleEndian.Uint16(data[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u)), nil
}

// blsMaxFile caps what cpinit reads of an entry or loader.conf: a real one
// has a few lines.
const blsMaxFile = 1 << 20

// BLSDir is systemd-boot's state on a mounted ESP: the entries in
// loader/entries, loader.conf, and optionally systemd-boot's EFI variables
// in efivarfs. Load reads them into a *BLSState; Save renames the slot
// entries from their loaded names to the state's names in an order that
// keeps every intermediate state booting a correct slot, flushing the
// directory after each rename.
type BLSDir struct {
	// ESP is where the ESP is mounted (vfat), e.g. "/boot/efi".
	ESP string
	// EFIVars is where efivarfs is mounted ("/sys/firmware/efi/efivars"),
	// to read LoaderEntryDefault and LoaderEntryOneShot; "" to not read
	// them (then they must not be set: docs/bootloader-systemd-boot.md).
	EFIVars string
	// Config names the slot entries and the tries; zero fields take the
	// defaults (BLSConfig).
	Config BLSConfig
}

// Describe implements Bootloader.
func (d *BLSDir) Describe() string {
	return "systemd-boot entries " + filepath.Join(d.ESP, BLSEntriesDir)
}

// Load implements Bootloader: it lists the entries in directory order (the
// order systemd-boot reads them in, which decides ties), reads each one
// systemd-boot would read (boot.c config_load_entries: not starting with
// '.' or "auto-", ending in ".conf" in any case, not a directory), checks
// that the kernel or EFI program it names exists (systemd-boot skips the
// entry otherwise), and reads loader.conf and the EFI variables.
func (d *BLSDir) Load() (ABState, error) {
	cfg, err := d.Config.withDefaults()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(d.ESP, BLSEntriesDir)
	names, err := blsReadDirNames(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("bootstate: systemd-boot: %s: %w (no entries directory: is the ESP mounted at %s? create %s with one entry per slot, docs/bootloader-systemd-boot.md)", dir, ErrNoScheme, d.ESP, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("bootstate: systemd-boot: %w", err)
	}
	var entries []BLSEntry
	for _, name := range names {
		if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "auto-") ||
			len(name) < len(".conf") || !strings.EqualFold(name[len(name)-len(".conf"):], ".conf") {
			continue
		}
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("bootstate: systemd-boot: %w", err)
		}
		if fi.IsDir() {
			continue
		}
		content, err := blsReadFile(p)
		if err != nil {
			return nil, err
		}
		info := ParseBLSEntry(content, cfg.Arch)
		e := BLSEntry{File: name, Info: info}
		if info.Loader != "" && !info.WrongArch {
			// boot.c: root_dir->Open(entry->loader) must succeed;
			// the path is relative to the ESP's root either way.
			lp := filepath.Join(d.ESP, filepath.Clean("/"+strings.ReplaceAll(info.Loader, `\`, "/")))
			if _, err := os.Stat(lp); err == nil {
				e.Loadable = true
			} else if !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("bootstate: systemd-boot: entry %s: %w", p, err)
			}
		}
		entries = append(entries, e)
	}
	var lc BLSLoaderConfig
	lcPath := filepath.Join(d.ESP, BLSLoaderConf)
	if content, err := blsReadFile(lcPath); err == nil {
		lc = ParseBLSLoaderConf(content)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var vars BLSVars
	if d.EFIVars != "" {
		for _, v := range []struct {
			name string
			to   *string
		}{{"LoaderEntryDefault", &vars.EntryDefault}, {"LoaderEntryOneShot", &vars.EntryOneShot}} {
			p := filepath.Join(d.EFIVars, v.name+"-"+BLSLoaderGUID)
			data, err := blsReadFile(p)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, err
			}
			s, err := ParseBLSEFIVarString(data)
			if err != nil {
				return nil, fmt.Errorf("bootstate: systemd-boot: %s: %w", p, err)
			}
			*v.to = s
		}
	}
	t2 := filepath.Join(d.ESP, BLSType2Dir)
	uki, err := blsReadDirNames(t2)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("bootstate: systemd-boot: %w", err)
	}
	for _, name := range uki {
		if !strings.HasPrefix(name, ".") && len(name) >= 4 && strings.EqualFold(name[len(name)-4:], ".efi") {
			return nil, fmt.Errorf("bootstate: systemd-boot: %s: %w (Type #2 entry %s: cpinit manages Type #1 entries in %s only, and a unified kernel image competes with them for the default; move it away)", t2, ErrNoScheme, name, dir)
		}
	}
	s, err := NewBLSState(cfg, dir, entries, lc, vars)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// blsReadDirNames lists a directory in the order the kernel returns its
// entries (for vfat, their order on disk, which is the order systemd-boot's
// readdir sees them in), unlike os.ReadDir, which sorts them.
func blsReadDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	return names, nil
}

func blsReadFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, blsMaxFile+1))
	if err != nil {
		return nil, fmt.Errorf("bootstate: systemd-boot: read %s: %w", p, err)
	}
	if len(b) > blsMaxFile {
		return nil, fmt.Errorf("bootstate: systemd-boot: %s: %w (over %d bytes: not a boot loader file)", p, ErrCorrupt, blsMaxFile)
	}
	return b, nil
}

// Save implements Bootloader. s must come from this BLSDir's Load. Only
// slot entries are renamed, each by one rename(2) with RENAME_NOREPLACE;
// before the first, Save checks every rename's source is still there (or
// its target, when systemd-bless-boot made the same rename meanwhile, as
// bless-boot.c verb_set accepts), so an error leaves the directory as it
// was. After each rename it fsyncs the directory and syncfs()es the ESP,
// as bless-boot.c does after its rename, so a later rename never reaches
// the disk before an earlier one.
func (d *BLSDir) Save(st ABState) error {
	s, ok := st.(*BLSState)
	if !ok {
		return fmt.Errorf("bootstate: %s: cannot save a %s state", d.Describe(), st.Scheme())
	}
	dir := filepath.Join(d.ESP, BLSEntriesDir)
	if s.Dir != dir {
		return fmt.Errorf("bootstate: %s: the state was loaded from %s", d.Describe(), s.Dir)
	}
	plan, err := s.Renames()
	if err != nil {
		return err
	}
	if len(plan) == 0 {
		return nil
	}
	names, err := blsReadDirNames(dir)
	if err != nil {
		return fmt.Errorf("bootstate: systemd-boot: %w", err)
	}
	have := map[string]bool{}
	for _, n := range names {
		have[blsLowerASCII(n)] = true // vfat names are case-insensitive
	}
	skip := make([]bool, len(plan))
	for i, r := range plan {
		src, dst := have[blsLowerASCII(r.From)], have[blsLowerASCII(r.To)]
		switch {
		case src && dst:
			return fmt.Errorf("bootstate: systemd-boot: %s: both %s and %s exist: %w (one slot, two entries: a rename cut short on FAT leaves both; delete the one with the older contents)", dir, r.From, r.To, ErrCorrupt)
		case !src && dst:
			skip[i] = true // renamed meanwhile, e.g. by systemd-bless-boot
		case !src:
			return fmt.Errorf("bootstate: systemd-boot: %s: %s is gone since it was read (renamed by systemd-boot or systemd-bless-boot?): load the state again", dir, r.From)
		}
	}
	df, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("bootstate: systemd-boot: %w", err)
	}
	defer df.Close()
	for i, r := range plan {
		if skip[i] {
			continue
		}
		if err := blsRenameNoReplace(df, r.From, r.To); err != nil {
			return fmt.Errorf("bootstate: systemd-boot: rename %s to %s in %s: %w", r.From, r.To, dir, err)
		}
		if err := blsSyncDir(df); err != nil {
			return fmt.Errorf("bootstate: systemd-boot: flush %s after renaming %s to %s: %w", dir, r.From, r.To, err)
		}
	}
	s.loaded = s.files()
	return nil
}
