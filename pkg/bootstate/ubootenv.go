package bootstate

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// U-Boot environment (issue 16): the on-storage format, where it lives
// (fw_env.config or a cpinit parameter), and the Bootloader that reads and
// writes it. The A/B variable schemes on top are in ubootenv_schemes.go.
//
// Sources, each checked line by line (the cross-check tests run the real
// tools from Debian: fw_printenv/fw_setenv from libubootenv-tool 0.3.2,
// mkenvimage from u-boot-tools 2023.01):
//
//   - libubootenv src/uboot_env.c (v0.3.2 as in Debian 12, compared with
//     v0.3.7): libuboot_load, libuboot_env_store, libuboot_set_env,
//     libuboot_read_config; src/uboot_private.h (struct uboot_env_redund).
//   - U-Boot env/common.c env_check_redund and env_export, lib/hashtable.c
//     hexport_r and himport_r, tools/mkenvimage.c.
//
// # Layout of one copy (size bytes, "env size" in fw_env.config)
//
//	0..3  CRC-32 (IEEE, zlib's crc32(0, ...)) of the data area, little endian
//	4     flags (redundant environments only): the copy's serial
//	4/5.. data area to the end of the copy: "name=value\0" entries, then one
//	      more "\0"; the rest is padding, covered by the CRC
//
// # Which copy is current (two copies)
//
// A copy is valid if its CRC matches. One valid copy is current. Both valid:
// the one with the higher flags, except that 0xff and 0 wrap (0 after 0xff is
// newer); equal flags pick copy 0. That is libubootenv's rule for "flags
// incremental" storage (files, block devices, NAND, UBI) and U-Boot's own
// env_check_redund. On NOR flash libubootenv uses "flags boolean" (active 1,
// obsolete 0, the erased 0xff wins); cpinit decodes it (UBootFlagsBoolean)
// but writes only files and block devices, which are incremental.
//
// # What cpinit writes, and how it compares with the tools
//
//   - Variables in strcmp order of their names, each name once. That is what
//     both writers do: libubootenv inserts every variable, even at load, in
//     sorted position (so fw_setenv sorts an environment that mkenvimage wrote
//     in file order, and the last of two same-named entries wins), and U-Boot's
//     hexport_r qsorts. "Keep the order, append new variables" would differ
//     from fw_setenv on every environment, so cpinit does not do it.
//   - ".flags" as libubootenv writes it: the attributes of existing variables
//     only, after all variables, "name:TA" with T in sdxbim and A in aroc,
//     dropped if no variable has any, as libubootenv 0.3.3 and later do.
//     0.3.2 (Debian 12) has two bugs here, both fixed in 0.3.3: it reads
//     only the first ".flags" item (the others are lost at its next write)
//     and writes a hex type as 'h', which nothing reads back.
//   - A redundant Save writes the copy that is not current with flags+1 (mod
//     256) and flushes it; the current copy is not touched, so a power cut
//     leaves it valid and current. A single copy is rewritten in place: see
//     UBootBootloader.
//   - Padding: U-Boot's saveenv pads with 0x00, mkenvimage with 0xff (-p
//     changes it). fw_setenv (libubootenv 0.3.2 to 0.3.7) builds the copy in
//     a malloc'd buffer it never clears and writes it whole: its padding is
//     whatever the heap held, often the bytes of the copy it read (the old
//     padding, or old entries where the environment shrank), at times
//     malloc's own chunk headers; the CRC covers them. No other writer can
//     reproduce that, so cpinit pads with the old padding byte (the last byte
//     of the current copy's data area if that is 0xff, else 0x00). The
//     cross-check test shows cpinit's copy equal to fw_setenv's up to the end
//     of the entries (flags included) in every case, and to the last byte,
//     CRC included, wherever fw_setenv's padding came out clean.
//   - A change that does not fit (entries, .flags and the final NUL longer
//     than the data area) is ErrFull and nothing is written, as libubootenv
//     (-ENOMEM before any write) and hexport_r ("Env export buffer too small").
//   - Nothing to change: nothing is written (fw_setenv does not store either).

// UBootFlagScheme is how a redundant environment's flags byte orders the two
// copies (libubootenv's enum flags_type).
type UBootFlagScheme int

const (
	// UBootFlagsIncremental: a serial, +1 per write, wrapping (files, block
	// devices, NAND, UBI).
	UBootFlagsIncremental UBootFlagScheme = iota
	// UBootFlagsBoolean: active 1, obsolete 0 (NOR flash).
	UBootFlagsBoolean
)

// UBootVar is one environment variable, with the attributes ".flags" gives it
// (U-Boot's env_flags): Type is 0 (none, i.e. string) or one of 'd'
// (decimal), 'x' (hex), 'b' (bool), 'i' (IP), 'm' (MAC); Access is 0 (any)
// or 'r' (read-only), 'o' (write-once), 'c' (change-default).
type UBootVar struct {
	Name, Value  string
	Type, Access byte
}

// UBootEnv is an environment's variables as libubootenv holds them: sorted
// by name, each name once, ".flags" folded into the variables' attributes.
// Its methods do no I/O.
type UBootEnv struct {
	vars []UBootVar
}

func (e *UBootEnv) find(name string) (int, bool) {
	return slices.BinarySearchFunc(e.vars, name, func(v UBootVar, n string) int { return strings.Compare(v.Name, n) })
}

// Get returns a variable's value and whether it is set.
func (e *UBootEnv) Get(name string) (string, bool) {
	if i, ok := e.find(name); ok {
		return e.vars[i].Value, true
	}
	return "", false
}

// Vars returns a copy of the variables, in order.
func (e *UBootEnv) Vars() []UBootVar { return slices.Clone(e.vars) }

// Clone returns an independent copy.
func (e *UBootEnv) Clone() *UBootEnv { return &UBootEnv{vars: slices.Clone(e.vars)} }

// Equal reports whether two environments hold the same variables, values and
// attributes.
func (e *UBootEnv) Equal(o *UBootEnv) bool { return slices.Equal(e.vars, o.vars) }

// checkName is U-Boot's and libubootenv's rule for a variable name: not
// empty, no '=' (libubootenv_set_env returns -EINVAL), and cpinit adds: no
// NUL, no newline, not ".flags" (kept by the attributes).
func checkUBootName(name string) error {
	switch {
	case name == "":
		return errors.New("bootstate: u-boot env: an empty variable name")
	case strings.ContainsAny(name, "=\x00\n"):
		return fmt.Errorf("bootstate: u-boot env: variable name %q has '=', NUL or a newline", name)
	case name == ".flags":
		return errors.New("bootstate: u-boot env: .flags is written from the variables' attributes, not set")
	}
	return nil
}

// writable applies the access attribute: read-only and write-once variables
// are refused as libubootenv's libuboot_validate_flags refuses them (both
// -EPERM once the variable exists), and the type attribute as U-Boot's
// env_flags validates it.
func (v UBootVar) writable(value string, del bool) error {
	switch v.Access {
	case 'r', 'o':
		return fmt.Errorf("bootstate: u-boot env: %s is %s in .flags: fw_setenv and U-Boot refuse to change it", v.Name,
			map[byte]string{'r': "read-only", 'o': "write-once"}[v.Access])
	}
	if del {
		return nil
	}
	ok := true
	switch v.Type {
	case 'd':
		_, err := strconv.ParseUint(value, 10, 64)
		ok = err == nil
	case 'x':
		_, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimPrefix(value, "0x"), "0X"), 16, 64)
		ok = err == nil
	case 'b':
		ok = value != "" && strings.ContainsRune("1yYtT0nNfF", rune(value[0]))
	}
	if !ok {
		return fmt.Errorf("bootstate: u-boot env: %s=%q does not match its .flags type %q", v.Name, value, v.Type)
	}
	return nil
}

// Set sets a variable, keeping its attributes; a new variable takes its
// sorted place (libuboot_set_env).
func (e *UBootEnv) Set(name, value string) error {
	if err := checkUBootName(name); err != nil {
		return err
	}
	if strings.ContainsRune(value, 0) {
		return fmt.Errorf("bootstate: u-boot env: value of %s has a NUL byte", name)
	}
	i, ok := e.find(name)
	if ok {
		if err := e.vars[i].writable(value, false); err != nil {
			return err
		}
		e.vars[i].Value = value
		return nil
	}
	e.vars = slices.Insert(e.vars, i, UBootVar{Name: name, Value: value})
	return nil
}

// Unset removes a variable (fw_setenv NAME with no value).
func (e *UBootEnv) Unset(name string) error {
	i, ok := e.find(name)
	if !ok {
		return nil
	}
	if err := e.vars[i].writable("", true); err != nil {
		return err
	}
	e.vars = slices.Delete(e.vars, i, i+1)
	return nil
}

// NewUBootEnv builds an environment from name=value pairs, in any order; a
// later duplicate wins, as in libubootenv.
func NewUBootEnv(kv ...string) (*UBootEnv, error) {
	if len(kv)%2 != 0 {
		return nil, errors.New("bootstate: NewUBootEnv: odd number of arguments")
	}
	e := &UBootEnv{}
	for i := 0; i < len(kv); i += 2 {
		if err := e.Set(kv[i], kv[i+1]); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// DecodeUBootEnvData parses a data area (after the CRC and flags) as
// libubootenv's libuboot_load does: entries up to the first empty one; an
// entry without '=' is skipped (U-Boot's himport_r drops it too); the last
// of two same-named entries wins; ".flags" gives attributes to the variables
// it names that exist. An entry with an empty name, or entries that run off
// the end of the area, are ErrCorrupt (U-Boot refuses to import the first
// and boots its default environment; libubootenv fails on the second).
func DecodeUBootEnvData(data []byte) (*UBootEnv, error) {
	e := &UBootEnv{}
	var flagsVar string
	haveFlags := false
	for pos := 0; pos < len(data) && data[pos] != 0; {
		n := bytes.IndexByte(data[pos:], 0)
		if n < 0 {
			return nil, fmt.Errorf("bootstate: u-boot env: the entry at data byte %d runs to the end of the environment without a NUL: %w", pos, ErrCorrupt)
		}
		entry := string(data[pos : pos+n])
		pos += n + 1
		name, value, ok := strings.Cut(entry, "=")
		if !ok {
			continue
		}
		if name == "" {
			return nil, fmt.Errorf("bootstate: u-boot env: an entry with an empty name (%q), which U-Boot refuses to import: %w", trimForMsg(entry), ErrCorrupt)
		}
		if name == ".flags" {
			flagsVar, haveFlags = value, true
			continue
		}
		i, found := e.find(name)
		if found {
			e.vars[i].Value = value
		} else {
			e.vars = slices.Insert(e.vars, i, UBootVar{Name: name, Value: value})
		}
	}
	if haveFlags {
		// libuboot_load: "name:attrs" items separated by ','; parsing stops
		// at an item without ':'; later letters override earlier ones.
		for p := flagsVar; p != ""; {
			name, rest, ok := strings.Cut(p, ":")
			if !ok {
				break
			}
			attrs, next, _ := strings.Cut(rest, ",")
			p = next
			i, found := e.find(name)
			if !found {
				continue
			}
			for _, c := range []byte(attrs) {
				switch c {
				case 's':
					e.vars[i].Type = 0
				case 'd', 'x', 'b', 'i', 'm':
					e.vars[i].Type = c
				case 'a':
					e.vars[i].Access = 0
				case 'r', 'o', 'c':
					e.vars[i].Access = c
				}
			}
		}
	}
	return e, nil
}

func trimForMsg(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// EncodedLen is the number of data-area bytes the entries take, final NUL
// included.
func (e *UBootEnv) EncodedLen() int {
	return len(e.appendEntries(nil)) + 1
}

func (e *UBootEnv) appendEntries(b []byte) []byte {
	for _, v := range e.vars {
		b = append(b, v.Name...)
		b = append(b, '=')
		b = append(b, v.Value...)
		b = append(b, 0)
	}
	first := true
	for _, v := range e.vars {
		if v.Type == 0 && v.Access == 0 {
			continue
		}
		if first {
			b = append(b, ".flags="...)
		} else {
			b = append(b, ',')
		}
		first = false
		t, a := v.Type, v.Access
		if t == 0 {
			t = 's'
		}
		if a == 0 {
			a = 'a'
		}
		b = append(b, v.Name...)
		b = append(b, ':', t, a)
	}
	if !first {
		b = append(b, 0)
	}
	return b
}

// EncodeUBootEnvData lays out a data area of size bytes: the entries, the
// final NUL, then pad. ErrFull if they do not fit.
func (e *UBootEnv) EncodeUBootEnvData(size int, pad byte) ([]byte, error) {
	b := e.appendEntries(make([]byte, 0, size))
	if len(b)+1 > size {
		return nil, fmt.Errorf("bootstate: u-boot env: the variables take %d bytes and the environment holds %d: %w", len(b)+1, size, ErrFull)
	}
	b = append(b, 0)
	for len(b) < size {
		b = append(b, pad)
	}
	return b, nil
}

// UBootEnvImage is a whole environment as read from its storage: one copy or
// two, which is current, and the variables of the current one.
type UBootEnvImage struct {
	Size       int // bytes per copy (fw_env.config's env size)
	Redundant  bool
	FlagScheme UBootFlagScheme
	Valid      [2]bool // CRC matches (copy 1 only if Redundant)
	Flags      [2]byte // flags bytes as read (Redundant only)
	Current    int     // the copy the variables come from
	Pad        byte    // padding byte for the next write
	Env        *UBootEnv
}

func ubootDataOffset(redundant bool) int {
	if redundant {
		return 5
	}
	return 4
}

// DecodeUBootEnv decodes one copy (single environment) or two (redundant),
// each exactly size bytes. Neither copy valid is ErrCorrupt.
func DecodeUBootEnv(copies [][]byte, fs UBootFlagScheme) (*UBootEnvImage, error) {
	if len(copies) != 1 && len(copies) != 2 {
		return nil, fmt.Errorf("bootstate: u-boot env: %d copies, want 1 or 2", len(copies))
	}
	img := &UBootEnvImage{Size: len(copies[0]), Redundant: len(copies) == 2, FlagScheme: fs}
	off := ubootDataOffset(img.Redundant)
	if img.Size <= off+1 {
		return nil, fmt.Errorf("bootstate: u-boot env: a %d-byte environment has no room for data", img.Size)
	}
	for i, c := range copies {
		if len(c) != img.Size {
			return nil, fmt.Errorf("bootstate: u-boot env: copy %d is %d bytes, copy 0 is %d: both copies must have one size", i, len(c), img.Size)
		}
		img.Valid[i] = binary.LittleEndian.Uint32(c[:4]) == crc32.ChecksumIEEE(c[off:])
		if img.Redundant {
			img.Flags[i] = c[4]
		}
	}
	switch {
	case !img.Redundant && !img.Valid[0]:
		return nil, fmt.Errorf("bootstate: u-boot env: bad CRC (stored %#08x, computed %#08x): %w",
			binary.LittleEndian.Uint32(copies[0][:4]), crc32.ChecksumIEEE(copies[0][off:]), ErrCorrupt)
	case !img.Redundant:
		img.Current = 0
	case img.Valid[0] && !img.Valid[1]:
		img.Current = 0
	case !img.Valid[0] && img.Valid[1]:
		img.Current = 1
	case !img.Valid[0] && !img.Valid[1]:
		return nil, fmt.Errorf("bootstate: u-boot env: bad CRC in both copies: %w", ErrCorrupt)
	default:
		img.Current = currentUBootCopy(img.Flags, fs)
	}
	data := copies[img.Current][off:]
	env, err := DecodeUBootEnvData(data)
	if err != nil {
		return nil, fmt.Errorf("%w (copy %d)", err, img.Current)
	}
	img.Env = env
	if data[len(data)-1] == 0xff {
		img.Pad = 0xff
	}
	return img, nil
}

// currentUBootCopy is libubootenv's choice between two valid copies.
func currentUBootCopy(f [2]byte, fs UBootFlagScheme) int {
	cur := 0
	if f[1] > f[0] {
		cur = 1
	}
	switch fs {
	case UBootFlagsBoolean:
		if f[1] == 0xff {
			cur = 1
		} else if f[0] == 0xff {
			cur = 0
		}
	default:
		if f[0] == 0xff && f[1] == 0 {
			cur = 1
		} else if f[1] == 0xff && f[0] == 0 {
			cur = 0
		}
	}
	return cur
}

// EncodeNext lays out env as the next write: the copy to write (the one that
// is not current, or the only one) and its bytes. It changes nothing; after
// the write succeeded, Committed records it.
func (img *UBootEnvImage) EncodeNext(env *UBootEnv) (copyIndex int, b []byte, err error) {
	off := ubootDataOffset(img.Redundant)
	data, err := env.EncodeUBootEnvData(img.Size-off, img.Pad)
	if err != nil {
		return 0, nil, err
	}
	b = make([]byte, off, img.Size)
	binary.LittleEndian.PutUint32(b, crc32.ChecksumIEEE(data))
	if img.Redundant {
		copyIndex = 1 - img.Current
		if img.FlagScheme == UBootFlagsBoolean {
			b[4] = 1
		} else {
			b[4] = img.Flags[img.Current] + 1
		}
	}
	return copyIndex, append(b, data...), nil
}

// Committed records that EncodeNext's bytes for env were written to copy i.
func (img *UBootEnvImage) Committed(i int, b []byte, env *UBootEnv) {
	img.Valid[i] = true
	if img.Redundant {
		img.Flags[i] = b[4]
	}
	img.Current = i
	img.Env = env.Clone()
}

// Where the environment lives.

// UBootEnvArea is one copy's place: a line of fw_env.config.
type UBootEnvArea struct {
	Device string // a path: a block device or a file
	// Offset of the copy in Device; negative counts back from the end (as
	// libubootenv, which allows it for block devices; cpinit for files too).
	Offset int64
	Size   int64 // env size, bytes (the same for both copies)
	// SectorSize and Sectors are fw_env.config's erase-block fields, kept
	// for the record: only flash (MTD) uses them and cpinit does not
	// write flash.
	SectorSize, Sectors int64
}

// UBootEnvLocation is where an environment lives: one area, or two for a
// redundant environment.
type UBootEnvLocation struct {
	Areas []UBootEnvArea
}

// Redundant reports whether the environment has two copies.
func (l UBootEnvLocation) Redundant() bool { return len(l.Areas) == 2 }

// String is the location in ParseUBootEnvLocation's form.
func (l UBootEnvLocation) String() string {
	parts := make([]string, len(l.Areas))
	for i, a := range l.Areas {
		off := fmt.Sprintf("%#x", a.Offset)
		if a.Offset < 0 {
			off = fmt.Sprintf("-%#x", -a.Offset)
		}
		parts[i] = fmt.Sprintf("%s:%s:%#x", a.Device, off, a.Size)
	}
	return strings.Join(parts, ",")
}

// Validate checks what libubootenv's libuboot_read_config and
// check_compatible_devices check, and what cpinit cannot write.
func (l UBootEnvLocation) Validate() error {
	if len(l.Areas) != 1 && len(l.Areas) != 2 {
		return fmt.Errorf("bootstate: u-boot env location: %d areas, want 1 or 2 (a redundant environment has two)", len(l.Areas))
	}
	for i, a := range l.Areas {
		switch {
		case a.Device == "":
			return fmt.Errorf("bootstate: u-boot env location: area %d has no device", i)
		case a.Size <= 5:
			return fmt.Errorf("bootstate: u-boot env location: %s: env size %#x is too small", a.Device, a.Size)
		case a.Size > 64<<20:
			return fmt.Errorf("bootstate: u-boot env location: %s: env size %#x is over 64 MiB", a.Device, a.Size)
		case strings.HasPrefix(a.Device, "/dev/mtd"), strings.HasPrefix(a.Device, "/dev/ubi"):
			return fmt.Errorf("bootstate: u-boot env location: %s: cpinit writes environments on block devices and files, not on flash (MTD, UBI), which needs erase blocks and volume updates; use fw_setenv there", a.Device)
		}
	}
	if len(l.Areas) == 2 && l.Areas[0].Size != l.Areas[1].Size {
		return fmt.Errorf("bootstate: u-boot env location: the two copies have sizes %#x and %#x; they must be equal (libubootenv refuses it too)", l.Areas[0].Size, l.Areas[1].Size)
	}
	if len(l.Areas) == 2 && l.Areas[0].Device == l.Areas[1].Device {
		a, b := l.Areas[0], l.Areas[1]
		if (a.Offset < 0) == (b.Offset < 0) && a.Offset < b.Offset+b.Size && b.Offset < a.Offset+a.Size {
			return fmt.Errorf("bootstate: u-boot env location: the two copies on %s overlap (%#x and %#x, %#x bytes each)", a.Device, a.Offset, b.Offset, a.Size)
		}
	}
	return nil
}

// parseCLongLong parses as C's strtoll with base 0 (sscanf "%lli"): an
// optional sign, then 0x/0X hex, a leading 0 octal, or decimal.
func parseCLongLong(s string) (int64, error) {
	neg := false
	t := s
	if t != "" && (t[0] == '+' || t[0] == '-') {
		neg = t[0] == '-'
		t = t[1:]
	}
	var u uint64
	var err error
	switch {
	case strings.HasPrefix(t, "0x") || strings.HasPrefix(t, "0X"):
		u, err = strconv.ParseUint(t[2:], 16, 63)
	case len(t) > 1 && t[0] == '0':
		u, err = strconv.ParseUint(t[1:], 8, 63)
	default:
		u, err = strconv.ParseUint(t, 10, 63)
	}
	if err != nil {
		return 0, fmt.Errorf("%q is not a number (decimal, 0x hex or 0 octal)", s)
	}
	if neg {
		return -int64(u), nil
	}
	return int64(u), nil
}

// parseCHex parses as sscanf "%zx"/"%lx": hex digits with an optional 0x,
// whatever they look like ("16384" is 0x16384, as in libubootenv).
func parseCHex(s string) (int64, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	u, err := strconv.ParseUint(t, 16, 63)
	if err != nil {
		return 0, fmt.Errorf("%q is not a hex number (fw_env.config sizes are always hex, with or without 0x)", s)
	}
	return int64(u), nil
}

// ParseFWEnvConfig reads /etc/fw_env.config as libubootenv's
// libuboot_read_config does: a line is "device offset envsize [sectorsize
// [sectors]]" separated by blanks; the offset is read as C's %lli (decimal,
// 0x hex, 0 octal, negative from the end of the device) and the sizes as %zx
// (always hex: "0x4000" and "4000" are both 16 KiB); a line starting with '#'
// and a blank line are skipped; the first two entries are the copies. cpinit
// is stricter where libubootenv would silently do something else: a line with
// a device but fewer than three fields (libubootenv skips it, which can turn
// a redundant environment into a single one), a field that is not a whole
// number (libubootenv reads its leading digits), a third entry (ignored by
// libubootenv), or a YAML configuration (libubootenv 0.3.6+) are errors.
func ParseFWEnvConfig(r io.Reader) (UBootEnvLocation, error) {
	var l UBootEnvLocation
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		f := strings.Fields(line)
		if strings.HasPrefix(line, "#") || len(f) == 0 {
			continue
		}
		if strings.HasPrefix(f[0], "#") {
			continue // libubootenv: "%ms" reads "#...", "%lli" fails, the line is skipped
		}
		if n == 1 && (strings.HasSuffix(f[0], ":") || f[0] == "---") {
			return l, fmt.Errorf("bootstate: fw_env.config line %d: %q looks like libubootenv's YAML configuration, which cpinit does not read; use the one-line-per-copy form", n, line)
		}
		if len(f) < 3 {
			return l, fmt.Errorf("bootstate: fw_env.config line %d: %q: need at least device, offset and env size (libubootenv would skip this line)", n, line)
		}
		if len(f) > 6 {
			return l, fmt.Errorf("bootstate: fw_env.config line %d: %q: more than six fields", n, line)
		}
		var a UBootEnvArea
		a.Device = f[0]
		var err error
		if a.Offset, err = parseCLongLong(f[1]); err != nil {
			return l, fmt.Errorf("bootstate: fw_env.config line %d: offset: %v", n, err)
		}
		if a.Size, err = parseCHex(f[2]); err != nil {
			return l, fmt.Errorf("bootstate: fw_env.config line %d: env size: %v", n, err)
		}
		if a.Size == 0 {
			return l, fmt.Errorf("bootstate: fw_env.config line %d: env size 0 (libubootenv refuses it too)", n)
		}
		if len(f) > 3 {
			if a.SectorSize, err = parseCHex(f[3]); err != nil {
				return l, fmt.Errorf("bootstate: fw_env.config line %d: sector size: %v", n, err)
			}
		}
		if len(f) > 4 {
			if a.Sectors, err = parseCHex(f[4]); err != nil {
				return l, fmt.Errorf("bootstate: fw_env.config line %d: number of sectors: %v", n, err)
			}
		}
		// A sixth field is libubootenv 0.3.4+'s disable-MTD-lock flag,
		// meaningless off flash.
		if len(l.Areas) == 2 {
			return l, fmt.Errorf("bootstate: fw_env.config line %d: a third environment copy; U-Boot keeps one or two", n)
		}
		l.Areas = append(l.Areas, a)
	}
	if err := sc.Err(); err != nil {
		return l, fmt.Errorf("bootstate: fw_env.config: %w", err)
	}
	if len(l.Areas) == 0 {
		return l, errors.New("bootstate: fw_env.config: no environment line (device offset size)")
	}
	return l, l.Validate()
}

// ParseUBootEnvLocation parses cpinit's one-word form of a location, for a
// kernel parameter or a flag: one or two "device:offset:size" separated by
// ',', e.g. "/dev/vdb:0x0:0x4000,/dev/vdb:0x4000:0x4000". The offset reads
// as fw_env.config's (decimal, 0x hex, 0 octal, negative from the end); the
// size is a number in the same C form, so "0x4000" and "16384" are equal
// (unlike fw_env.config, whose sizes are always hex). The device is split
// off at the last two ':', so paths with ':' (by-path names) work. A word
// that names a file instead (no ':') is an error: read it with
// ParseFWEnvConfig.
func ParseUBootEnvLocation(s string) (UBootEnvLocation, error) {
	var l UBootEnvLocation
	if strings.TrimSpace(s) == "" {
		return l, errors.New("bootstate: u-boot env location: empty")
	}
	for _, part := range strings.Split(s, ",") {
		j := strings.LastIndexByte(part, ':')
		if j < 0 {
			return l, fmt.Errorf("bootstate: u-boot env location %q: want device:offset:size[,device:offset:size] (a fw_env.config file is read with its own option)", s)
		}
		i := strings.LastIndexByte(part[:j], ':')
		if i <= 0 {
			return l, fmt.Errorf("bootstate: u-boot env location %q: %q is not device:offset:size", s, part)
		}
		a := UBootEnvArea{Device: part[:i]}
		var err error
		if a.Offset, err = parseCLongLong(part[i+1 : j]); err != nil {
			return l, fmt.Errorf("bootstate: u-boot env location %q: offset: %v", s, err)
		}
		if a.Size, err = parseCLongLong(part[j+1:]); err != nil || a.Size <= 0 {
			return l, fmt.Errorf("bootstate: u-boot env location %q: size %q is not a positive number", s, part[j+1:])
		}
		l.Areas = append(l.Areas, a)
	}
	return l, l.Validate()
}

// The Bootloader.

// UBootBootloader reads and writes a U-Boot environment on block devices or
// files, and decodes it with one of the A/B variable schemes.
//
// Power cuts: with two copies, Save writes only the copy that is not
// current, with the next serial, and flushes it (fsync, which on a block
// device also flushes the disk's write cache); until that write is complete
// its CRC does not match and U-Boot and libubootenv keep the old copy, so a
// cut leaves the old state or the new one. With one copy, Save rewrites it in
// place: a cut in the middle leaves a copy whose CRC fails, and U-Boot then
// boots its built-in default environment (slot selection included). That is
// the integrator's choice (CONFIG_ENV_REDUNDANT off); cpinit writes it, and
// Describe says "single copy, not power-cut safe" so that `cpinit status`
// and the logs show it.
type UBootBootloader struct {
	Location UBootEnvLocation
	Scheme   UBootSchemeConfig
	// LockPath, if set, is flock'ed for each Load and Save: libubootenv's
	// "/var/lock/fw_printenv.lock", so that cpinit and fw_setenv never
	// interleave. Empty: no lock (the initramfs, where nothing else runs).
	LockPath string

	// sysBlock is /sys/class/block, for eMMC boot partitions' force_ro
	// (tests point it elsewhere).
	sysBlock string
}

// Describe implements Bootloader.
func (b *UBootBootloader) Describe() string {
	scheme := b.Scheme.Scheme
	if scheme == "" {
		scheme = "auto"
	}
	safety := "redundant"
	if !b.Location.Redundant() {
		safety = "single copy, not power-cut safe"
	}
	return fmt.Sprintf("u-boot env %s (%s), scheme %s", b.Location, safety, scheme)
}

// ubootOrigin is what a loaded state remembers of where it came from.
type ubootOrigin struct {
	b      *UBootBootloader
	img    *UBootEnvImage
	raw    [][]byte  // the copies as read
	loaded *UBootEnv // the variables as loaded or last saved
}

func (b *UBootBootloader) lock() (func(), error) {
	if b.LockPath == "" {
		return func() {}, nil
	}
	f, err := os.OpenFile(b.LockPath, os.O_WRONLY|os.O_CREATE, 0o666)
	if errors.Is(err, fs.ErrNotExist) {
		// The lock's directory does not exist (a system without
		// /var/lock). Every tool that takes this lock opens the same
		// path with O_CREAT and fails there too, so none can hold it:
		// going on unlocked interleaves with nobody. Making the
		// directory would change the system's root (read-only on many
		// devices) for a lock nobody else can take.
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bootstate: u-boot env lock %s: %w", b.LockPath, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("bootstate: u-boot env lock %s: %w", b.LockPath, err)
	}
	return func() { f.Close() }, nil
}

// areaOffset resolves a negative offset against the device's size.
func areaOffset(f *os.File, a UBootEnvArea) (int64, error) {
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("bootstate: u-boot env: %s: size: %w", a.Device, err)
	}
	off := a.Offset
	if off < 0 {
		off += end
	}
	if off < 0 || off+a.Size > end {
		return 0, fmt.Errorf("bootstate: u-boot env: %s: the copy at %#x (%#x bytes) is not inside the device (%#x bytes)", a.Device, a.Offset, a.Size, end)
	}
	return off, nil
}

func (b *UBootBootloader) readCopies() ([][]byte, error) {
	if err := b.Location.Validate(); err != nil {
		return nil, err
	}
	copies := make([][]byte, len(b.Location.Areas))
	for i, a := range b.Location.Areas {
		f, err := os.Open(a.Device)
		if err != nil {
			return nil, fmt.Errorf("bootstate: u-boot env: %w", err)
		}
		off, err := areaOffset(f, a)
		if err == nil {
			copies[i] = make([]byte, a.Size)
			_, err = f.ReadAt(copies[i], off)
			if err != nil {
				err = fmt.Errorf("bootstate: u-boot env: %s: read copy %d: %w", a.Device, i, err)
			}
		}
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return copies, nil
}

// Load implements Bootloader: it reads the copies, picks the current one and
// decodes the variable scheme.
func (b *UBootBootloader) Load() (ABState, error) {
	unlock, err := b.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	copies, err := b.readCopies()
	if err != nil {
		return nil, err
	}
	img, err := DecodeUBootEnv(copies, UBootFlagsIncremental)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.Location, err)
	}
	st, err := NewUBootState(img.Env.Clone(), b.Scheme)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.Location, err)
	}
	st.base().origin = &ubootOrigin{b: b, img: img, raw: copies, loaded: img.Env.Clone()}
	return st, nil
}

// Save implements Bootloader. s must come from this Bootloader's Load. It
// reads the copies again and refuses if they changed since (another writer,
// e.g. fw_setenv); writes nothing if no variable changed; else writes the
// next copy and flushes it.
func (b *UBootBootloader) Save(s ABState) error {
	st, ok := s.(UBootState)
	if !ok {
		return fmt.Errorf("bootstate: u-boot env %s: cannot save a %s state", b.Location, s.Scheme())
	}
	base := st.base()
	o := base.origin
	if o == nil || o.b != b {
		return fmt.Errorf("bootstate: u-boot env %s: the state was not loaded from this environment", b.Location)
	}
	unlock, err := b.lock()
	if err != nil {
		return err
	}
	defer unlock()
	now, err := b.readCopies()
	if err != nil {
		return err
	}
	for i := range now {
		if !bytes.Equal(now[i], o.raw[i]) {
			return fmt.Errorf("bootstate: u-boot env %s: copy %d changed since it was loaded (another writer, e.g. fw_setenv?): load it again; nothing written", b.Location, i)
		}
	}
	if base.env.Equal(o.loaded) {
		return nil
	}
	i, img, err := o.img.EncodeNext(base.env)
	if err != nil {
		return fmt.Errorf("%s: %w; nothing written", b.Location, err)
	}
	if err := b.writeCopy(b.Location.Areas[i], img); err != nil {
		return err
	}
	o.img.Committed(i, img, base.env)
	o.raw[i] = img
	o.loaded = base.env.Clone()
	return nil
}

var emmcBootPart = regexp.MustCompile(`^mmcblk[0-9]+boot[0-9]+$`)

func (b *UBootBootloader) writeCopy(a UBootEnvArea, img []byte) error {
	// An eMMC boot partition is read-only until force_ro is cleared;
	// libubootenv's fileprotect clears it around the write and sets it
	// again, and so does cpinit.
	if ro := b.forceRO(a.Device); ro != "" {
		if err := os.WriteFile(ro, []byte("0"), 0); err != nil {
			return fmt.Errorf("bootstate: u-boot env: %s: clear force_ro: %w; nothing written", a.Device, err)
		}
		defer os.WriteFile(ro, []byte("1"), 0)
	}
	f, err := os.OpenFile(a.Device, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("bootstate: u-boot env: %w; nothing written", err)
	}
	defer f.Close()
	off, err := areaOffset(f, a)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(img, off); err != nil {
		return fmt.Errorf("bootstate: u-boot env: %s: write at %#x: %w", a.Device, off, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("bootstate: u-boot env: %s: flush: %w", a.Device, err)
	}
	return f.Close()
}

func (b *UBootBootloader) forceRO(dev string) string {
	real, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return ""
	}
	name := filepath.Base(real)
	if !strings.HasPrefix(real, "/dev/") || !emmcBootPart.MatchString(name) {
		return ""
	}
	dir := b.sysBlock
	if dir == "" {
		dir = "/sys/class/block"
	}
	p := filepath.Join(dir, name, "force_ro")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}
