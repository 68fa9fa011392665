package cmdline

import (
	"reflect"
	"strings"
	"testing"
)

func kv(k, v string) Param { return Param{Key: k, Value: v, HasValue: true} }
func bare(k string) Param  { return Param{Key: k} }

func TestParse(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []Param
		init []Param
	}{
		{"empty", "", nil, nil},
		{"spaces only", " \t\n", nil, nil},
		{"words", "console=ttyS0 quiet root=/dev/vda", []Param{kv("console", "ttyS0"), bare("quiet"), kv("root", "/dev/vda")}, nil},
		// /proc/cmdline ends in a newline; tabs, CR, VT, FF separate too.
		{"proc newline", "a=1 b\n", []Param{kv("a", "1"), bare("b")}, nil},
		{"tabs and newlines", "\ta=1\t\tb=2\nc=3\r\vd\fe", []Param{kv("a", "1"), kv("b", "2"), kv("c", "3"), bare("d"), bare("e")}, nil},
		// The kernel's isspace() includes 0xA0 (lib/ctype.c).
		{"latin-1 nbsp", "a=1\xa0b=2", []Param{kv("a", "1"), kv("b", "2")}, nil},
		{"empty value vs bare", "foo= bar", []Param{kv("foo", ""), bare("bar")}, nil},
		{"quoted value", `cpinit.userdata="LABEL=my data" quiet`, []Param{kv("cpinit.userdata", "LABEL=my data"), bare("quiet")}, nil},
		{"quote opens the word", `"foo=a b" c`, []Param{kv("foo", "a b"), bare("c")}, nil},
		{"quoted bare word", `"a b" c`, []Param{bare("a b"), bare("c")}, nil},
		{"empty quoted value", `foo="" x`, []Param{kv("foo", ""), bare("x")}, nil},
		{"lone quote value", `foo=" x`, []Param{kv("foo", " x")}, nil},
		// Only a quote that opens the word or the value, and the one
		// that then ends the word, are dropped: next_arg cannot
		// escape, and keeps quotes inside a value.
		{"embedded quotes kept", `foo=a"b c"d e`, []Param{kv("foo", `a"b c"d`), bare("e")}, nil},
		{"quote after text kept", `foo="a b"c e`, []Param{kv("foo", `a b"c`), bare("e")}, nil},
		{"unterminated quote runs to the end", `foo="a b c`, []Param{kv("foo", "a b c")}, nil},
		{"first = separates", "cpinit.userdata=PARTLABEL=userdata", []Param{kv("cpinit.userdata", "PARTLABEL=userdata")}, nil},
		// equals == 0 means "none" in next_arg, so a leading '=' is
		// part of the key.
		{"leading equals", "=a=b =c", []Param{kv("=a", "b"), bare("=c")}, nil},
		{"duplicates kept in order", "a=1 a=2", []Param{kv("a", "1"), kv("a", "2")}, nil},
		{"dashdash", "a=1 -- cpinit.root=/dev/vdb single", []Param{kv("a", "1")}, []Param{kv("cpinit.root", "/dev/vdb"), bare("single")}},
		{"second dashdash goes to init", "a -- b -- c", []Param{bare("a")}, []Param{bare("b"), bare("--"), bare("c")}},
		// Only a bare "--" ends the kernel's parameters (parse_args:
		// !val && strcmp(param, "--") == 0); quotes are dropped first.
		{"dashdash with value is a parameter", "--=x -x", []Param{kv("--", "x"), bare("-x")}, nil},
		{"quoted dashdash", `a "--" b`, []Param{bare("a")}, []Param{bare("b")}},
		{"NUL ends the line", "a=1\x00b=2", []Param{kv("a", "1")}, nil},
	}
	for _, tc := range cases {
		c := Parse(tc.in)
		if !reflect.DeepEqual(c.Params, tc.want) || !reflect.DeepEqual(c.Init, tc.init) {
			t.Errorf("%s: Parse(%q) = %q, init %q; want %q, init %q", tc.name, tc.in, c.Params, c.Init, tc.want, tc.init)
		}
		if c.DashDash != (tc.init != nil || strings.Contains(tc.name, "dashdash") && !strings.Contains(tc.name, "with value")) {
			t.Errorf("%s: DashDash = %v", tc.name, c.DashDash)
		}
	}
}

func TestDashDashAtEnd(t *testing.T) {
	c := Parse("a --\n")
	if !c.DashDash || c.Init != nil || !reflect.DeepEqual(c.Params, []Param{bare("a")}) {
		t.Fatalf("%+v", c)
	}
}

func TestLookup(t *testing.T) {
	c := Parse("quiet a=1 b= a=2 c -- a=3 d=4\n")
	for _, tc := range []struct {
		key           string
		val           string
		hasVal, found bool
	}{
		{"a", "2", true, true}, // the last wins; a=3 is init's
		{"b", "", true, true},
		{"c", "", false, true},
		{"quiet", "", false, true},
		{"d", "", false, false}, // after --: not a kernel parameter
		{"e", "", false, false},
	} {
		v, hv, ok := c.Lookup(tc.key)
		if v != tc.val || hv != tc.hasVal || ok != tc.found {
			t.Errorf("Lookup(%q) = %q, %v, %v; want %q, %v, %v", tc.key, v, hv, ok, tc.val, tc.hasVal, tc.found)
		}
	}
	if c.Value("a") != "2" || c.Value("nope") != "" {
		t.Error("Value")
	}
	// A bare key after a valued one wins too: it is the last.
	if v, hv, _ := Parse("x=1 x").Lookup("x"); v != "" || hv {
		t.Errorf("bare after valued: %q %v", v, hv)
	}
}

func TestLast(t *testing.T) {
	got := Parse("a=1 b=1 a=2 c b=2 a=3").Last()
	want := []Param{bare("c"), kv("b", "2"), kv("a", "3")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := Parse("").Last(); len(got) != 0 {
		t.Fatalf("empty: %q", got)
	}
}

func TestParamString(t *testing.T) {
	for p, want := range map[Param]string{kv("a", "b c"): "a=b c", kv("a", ""): "a=", bare("q"): "q"} {
		if got := p.String(); got != want {
			t.Errorf("%#v: %q, want %q", p, got, want)
		}
	}
}

// FuzzParse: Parse never panics, every parameter lands in Params or Init
// intact, and a parameter with nothing to quote reads back the same.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "a=1 b", `x="a b" "y=c d"`, "a -- b", "\"", "=", `""=""`, "a=\"\xa0\"", "--", `"--"`, "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := Parse(s)
		all := append(append([]Param(nil), c.Params...), c.Init...)
		for _, p := range all {
			if strings.IndexByte(p.Key, 0) >= 0 || strings.IndexByte(p.Value, 0) >= 0 {
				t.Fatalf("%q: NUL in %#v", s, p)
			}
			if !p.HasValue && p.Value != "" {
				t.Fatalf("%q: bare key with a value: %#v", s, p)
			}
			w := p.String()
			if w == "" || w == "--" || needsQuoting(w) || w[0] == '=' {
				continue
			}
			if again := Parse(w).Params; len(again) != 1 || again[0] != p {
				t.Fatalf("%q: %#v reads back as %#v", s, p, again)
			}
		}
		if len(c.Init) > 0 && !c.DashDash {
			t.Fatalf("%q: init args without --", s)
		}
		if last := c.Last(); len(last) > len(c.Params) {
			t.Fatalf("%q: Last longer than Params", s)
		}
	})
}

// needsQuoting reports whether w holds a quote or a byte the kernel's
// isspace() separates at.
func needsQuoting(w string) bool {
	for i := 0; i < len(w); i++ {
		if w[i] == '"' || isSpace(w[i]) {
			return true
		}
	}
	return false
}
