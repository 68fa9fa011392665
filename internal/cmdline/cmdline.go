// Package cmdline splits a kernel command line (/proc/cmdline) into its
// parameters the way the kernel itself does, so that every part of cpinit
// (PID 1's cpinit.* parameters, the booted slot, boot-step, recover) reads
// one command line one way.
//
// The rules, from the Linux sources (v6.x; unchanged in substance since
// 2.6):
//
//   - Words: lib/cmdline.c next_arg() splits at whitespace outside double
//     quotes. "Whitespace" is the kernel's isspace(): lib/ctype.c marks
//     space, \t, \n, \v, \f, \r and the byte 0xA0 (Latin-1 no-break space)
//     as _S. The trailing newline of /proc/cmdline is whitespace like any
//     other.
//   - Quotes: next_arg() cannot escape a quote. It drops one quote that
//     opens the word ("foo=a b" → foo, a b), one that opens the value
//     (foo="a b" → foo, a b) and, when either was dropped, one that ends
//     the word. A quote anywhere else stays in the value (foo=a"b c"d keeps
//     both quotes, and still groups "b c" into the word).
//   - Key and value: the first '=' of the word (past its first byte)
//     separates them; a word without one is a bare key (quiet), which is
//     not the same as an empty value (foo=).
//   - "--": kernel/params.c parse_args() stops at the first bare word "--"
//     ("if (!val && strcmp(param, "--") == 0) return err ?: args;") and
//     init/main.c start_kernel() hands what follows to init only, as argv
//     ("Setting init args", set_init_arg). Those words are therefore not
//     kernel parameters: cpinit.* after "--" is not a cpinit parameter
//     either (they are in Cmdline.Init). /proc/cmdline still shows them
//     (it is saved_command_line, the whole line).
//   - Duplicates: the kernel calls a parameter's handler once per
//     occurrence, in order, so the last one wins (e.g. root=), and
//     init/main.c unknown_bootoption(), which turns unknown key=value words
//     into init's environment, replaces an earlier envp_init entry of the
//     same name ("if (!strncmp(param, envp_init[i], len+1)) break;
//     envp_init[i] = param;"). Lookup therefore returns the last value.
//
// The kernel treats '-' and '_' alike in the names of its own and of
// module parameters (kernel/params.c parameq); cpinit.* keys are neither,
// so keys compare exactly here.
package cmdline

import "strings"

// Param is one kernel parameter: key=value, or a bare key.
type Param struct {
	Key   string
	Value string
	// HasValue tells foo= (true, Value "") from foo (false).
	HasValue bool
}

// String is the parameter as init would see it: key=value (quotes
// dropped) or the bare key, as init/main.c repair_env_string rebuilds it.
func (p Param) String() string {
	if !p.HasValue {
		return p.Key
	}
	return p.Key + "=" + p.Value
}

// Cmdline is a parsed kernel command line.
type Cmdline struct {
	// Params are the kernel's parameters in command-line order,
	// duplicates included.
	Params []Param
	// Init are the words after "--", init's arguments, not kernel
	// parameters. Nil when there is no "--".
	Init []Param
	// DashDash reports whether the line had a "--" (Init may still be
	// empty).
	DashDash bool
}

// Parse splits a kernel command line. It never fails: every byte string is
// some command line to the kernel. A NUL ends the line, as it ends the
// kernel's C string.
func Parse(s string) *Cmdline {
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	c := &Cmdline{}
	s = skipSpaces(s)
	for s != "" {
		var p Param
		p, s = nextArg(s)
		if !c.DashDash && !p.HasValue && p.Key == "--" {
			c.DashDash = true
			continue
		}
		if c.DashDash {
			c.Init = append(c.Init, p)
		} else {
			c.Params = append(c.Params, p)
		}
	}
	return c
}

// Lookup returns the value of key's last occurrence among the kernel
// parameters (not Init): ok is false when key is absent; hasValue is false
// for a bare key.
func (c *Cmdline) Lookup(key string) (value string, hasValue, ok bool) {
	for i := len(c.Params) - 1; i >= 0; i-- {
		if p := c.Params[i]; p.Key == key {
			return p.Value, p.HasValue, true
		}
	}
	return "", false, false
}

// Value returns the last value of key, "" when absent or bare.
func (c *Cmdline) Value(key string) string {
	v, _, _ := c.Lookup(key)
	return v
}

// Last returns the kernel parameters with each key kept only at its last
// occurrence (the one that counts), in command-line order.
func (c *Cmdline) Last() []Param {
	seen := make(map[string]bool, len(c.Params))
	var out []Param
	for i := len(c.Params) - 1; i >= 0; i-- {
		if p := c.Params[i]; !seen[p.Key] {
			seen[p.Key] = true
			out = append(out, p)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// isSpace is the kernel's isspace(): lib/ctype.c _ctype marks 9-13, 32
// and 160 as _S.
func isSpace(b byte) bool {
	return b == ' ' || (b >= '\t' && b <= '\r') || b == 0xa0
}

// skipSpaces is lib/string_helpers.c skip_spaces.
func skipSpaces(s string) string {
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return s[i:]
}

// nextArg is lib/cmdline.c next_arg() on a Go string that starts with a
// non-space byte and holds no NUL. It returns the parameter and the rest of
// the line, its leading spaces skipped. The kernel writes NULs into the
// word to end the key and to drop a closing quote; the same is done here on
// a copy, and the C strings are read back from it.
func nextArg(s string) (Param, string) {
	inQuote, quoted := false, false
	if s[0] == '"' {
		s = s[1:]
		inQuote, quoted = true, true
	}
	i, equals := 0, 0
	for ; i < len(s); i++ {
		if isSpace(s[i]) && !inQuote {
			break
		}
		// equals == 0 also means "not found": like the kernel, a '='
		// at the word's first byte is not the separator.
		if equals == 0 && s[i] == '=' {
			equals = i
		}
		if s[i] == '"' {
			inQuote = !inQuote
		}
	}
	w := []byte(s[:i])
	val := -1
	if equals != 0 {
		w[equals] = 0
		val = equals + 1
		// "Don't include quotes in value."
		if val < len(w) && w[val] == '"' {
			val++
			if w[i-1] == '"' {
				w[i-1] = 0
			}
		}
	}
	if quoted && i > 0 && w[i-1] == '"' {
		w[i-1] = 0
	}
	p := Param{Key: cString(w)}
	if val >= 0 {
		p.Value, p.HasValue = cString(w[val:]), true
	}
	rest := s[i:]
	if rest != "" {
		rest = rest[1:] // the kernel overwrites the separator with NUL
	}
	return p, skipSpaces(rest)
}

// cString reads b up to its first NUL.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
