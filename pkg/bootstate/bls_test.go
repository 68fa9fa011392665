package bootstate

import (
	"encoding/binary"
	"errors"
	"regexp"
	"testing"
	"unicode/utf16"
)

// Entry names as boot.c config_entry_parse_tries reads them: the counter
// follows the last '+', digits only, "-DONE" optional, then exactly the
// suffix; anything else leaves the whole name as the id.
func TestParseBLSName(t *testing.T) {
	for _, c := range []struct {
		name string
		want BLSName
	}{
		{"foo.conf", BLSName{ID: "foo", Suffix: ".conf"}},
		{"foo+3.conf", BLSName{ID: "foo", Suffix: ".conf", Counting: true, Left: 3}},
		{"foo+3-0.conf", BLSName{ID: "foo", Suffix: ".conf", Counting: true, Left: 3, HasDone: true}},
		{"+3.conf", BLSName{ID: "", Suffix: ".conf", Counting: true, Left: 3}},
		{"+0-5.conf", BLSName{Suffix: ".conf", Counting: true, Left: 0, Done: 5, HasDone: true}},
		{"foo+bar+2-1.conf", BLSName{ID: "foo+bar", Suffix: ".conf", Counting: true, Left: 2, Done: 1, HasDone: true}},
		{"foo+1+2.conf", BLSName{ID: "foo+1", Suffix: ".conf", Counting: true, Left: 2}},
		{"foo++2.conf", BLSName{ID: "foo+", Suffix: ".conf", Counting: true, Left: 2}},
		{"foo+03.conf", BLSName{ID: "foo", Suffix: ".conf", Counting: true, Left: 3}},
		{"foo+2147483647.conf", BLSName{ID: "foo", Suffix: ".conf", Counting: true, Left: 2147483647}},
		{"foo+4-0.efi", BLSName{ID: "foo", Suffix: ".efi", Counting: true, Left: 4, HasDone: true}},
		// boot.c 252 compares the suffix with strcaseeq16.
		{"FOO+1.CONF", BLSName{ID: "FOO", Suffix: ".CONF", Counting: true, Left: 1}},
		// Not counters: the entry boots without counting.
		{"foo+bar.conf", BLSName{ID: "foo+bar", Suffix: ".conf"}},
		{"foo+3x.conf", BLSName{ID: "foo+3x", Suffix: ".conf"}},
		{"foo+3-.conf", BLSName{ID: "foo+3-", Suffix: ".conf"}},
		{"foo+-1.conf", BLSName{ID: "foo+-1", Suffix: ".conf"}},
		{"foo+3-1-2.conf", BLSName{ID: "foo+3-1-2", Suffix: ".conf"}},
		{"foo+ 3.conf", BLSName{ID: "foo+ 3", Suffix: ".conf"}},
		{"foo+2147483648.conf", BLSName{ID: "foo+2147483648", Suffix: ".conf"}},
		{"foo+1-2147483648.conf", BLSName{ID: "foo+1-2147483648", Suffix: ".conf"}},
		{"foo+99999999999999999999.conf", BLSName{ID: "foo+99999999999999999999", Suffix: ".conf"}},
		{"foo+3.conf+", BLSName{}},
	} {
		got, err := ParseBLSName(c.name)
		if c.want == (BLSName{}) {
			if err == nil {
				t.Errorf("ParseBLSName(%q) = %+v, want an error", c.name, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseBLSName(%q) = %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "foo", "foo.txt", ".con", "a/b.conf", "a\x00.conf"} {
		if n, err := ParseBLSName(bad); err == nil {
			t.Errorf("ParseBLSName(%q) = %+v, want an error", bad, n)
		}
	}
}

// The two series in boot.c's comment on config_entry_parse_tries, then
// STOP: at +0 the name stays +0 and DONE keeps counting (LESS_BY).
func TestBLSNameBumpedSeries(t *testing.T) {
	for _, series := range [][]string{
		{"foobar+3.efi", "foobar+2-1.efi", "foobar+1-2.efi", "foobar+0-3.efi", "foobar+0-4.efi"},
		{"foobar+4-0.efi", "foobar+3-1.efi", "foobar+2-2.efi", "foobar+1-3.efi", "foobar+0-4.efi", "foobar+0-5.efi"},
		{"plain.conf", "plain.conf"},
	} {
		n, err := ParseBLSName(series[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range series[1:] {
			n = n.Bumped()
			if n.String() != want {
				t.Errorf("series from %s: got %s, want %s", series[0], n, want)
			}
		}
	}
}

// systemd-bless-boot's names (bless-boot.c make_good, make_bad).
func TestBLSNameGoodBad(t *testing.T) {
	for _, c := range []struct{ in, good, bad string }{
		{"cpinit-2-b+2-1.conf", "cpinit-2-b.conf", "cpinit-2-b+0-1.conf"},
		{"cpinit-2-b+3.conf", "cpinit-2-b.conf", "cpinit-2-b+0.conf"},
		{"cpinit-2-b+3-0.conf", "cpinit-2-b.conf", "cpinit-2-b+0.conf"},
		{"x+y+0-7.conf", "x+y.conf", "x+y+0-7.conf"},
		{"cpinit-1-a.conf", "cpinit-1-a.conf", "cpinit-1-a+0.conf"},
	} {
		n, err := ParseBLSName(c.in)
		if err != nil {
			t.Fatal(err)
		}
		if g := n.Good().String(); g != c.good {
			t.Errorf("%s good: %s, want %s", c.in, g, c.good)
		}
		if b := n.Bad().String(); b != c.bad {
			t.Errorf("%s bad: %s, want %s", c.in, b, c.bad)
		}
		for _, m := range []BLSName{n.Good(), n.Bad(), n.Bumped()} {
			if _, err := FormatBLSName(m); err != nil {
				t.Errorf("%s: %+v does not format: %v", c.in, m, err)
			}
		}
	}
}

func TestFormatBLSNameRefusesAmbiguous(t *testing.T) {
	for _, n := range []BLSName{
		{ID: "x+3", Suffix: ".conf"}, // would read back as counting
		{ID: "x", Suffix: ".conf", Counting: true, Left: -1},
		{ID: "x", Suffix: ".conf", Left: 2},
		{ID: "x", Suffix: ".txt"},
		{ID: "a/b", Suffix: ".conf"},
		// A counter above boot.c's cap: only a 64-bit int can hold one
		// (on arm and 386 this is the negative MinInt32, refused too).
		{ID: "x", Suffix: ".conf", Counting: true, Left: 1, Done: blsIntMaxPlusOne(), HasDone: true},
	} {
		if s, err := FormatBLSName(n); err == nil {
			t.Errorf("FormatBLSName(%+v) = %q, want an error", n, s)
		}
	}
}

// blsIntMaxPlusOne is blsIntMax+1 computed at run time, where a 32-bit int
// wraps instead of failing to compile.
func blsIntMaxPlusOne() int {
	n := blsIntMax
	return n + 1
}

var blsLeadingZero = regexp.MustCompile(`[+-]0[0-9]`)

// The name parser never panics; formatting a parsed name reads back as the
// same name, and is the same string unless the counter had leading zeros.
func FuzzParseBLSName(f *testing.F) {
	for _, s := range []string{"foo.conf", "foo+3.conf", "+0-5.conf", "foo+bar+2-1.conf", "x+03-007.efi",
		"FOO+1.CONF", "foo+99999999999999999999.conf", "+.conf", "++.efi", "a+1-2-3.conf"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		n, err := ParseBLSName(name)
		if err != nil {
			return
		}
		s, err := FormatBLSName(n)
		if err != nil {
			t.Fatalf("parsed %q as %+v, which does not format: %v", name, n, err)
		}
		if s != name && !blsLeadingZero.MatchString(name) {
			t.Fatalf("parsed %q as %+v, formats as %q", name, n, s)
		}
		back, err := ParseBLSName(s)
		if err != nil || back != n {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", name, n, s, back, err)
		}
		if n.Counting {
			if g, _ := ParseBLSName(n.Good().String()); g.Counting && g.ID != n.ID {
				// a good name can count only if the id itself ends in a
				// counter; then it is a different entry's id
				t.Logf("%q: good name %q counts (id ends in a counter)", name, n.Good())
			}
			if b, err := ParseBLSName(n.Bad().String()); err != nil || !b.Counting || b.Left != 0 || b.ID != n.ID {
				t.Fatalf("%q: bad name %q reads as %+v, %v", name, n.Bad(), b, err)
			}
		}
	})
}

// strverscmp_improved's own test vectors (systemd v252
// src/test/test-string-util.c, TEST(strverscmp_improved)).
func TestBLSVersCmp(t *testing.T) {
	versions := []string{"~1", "", "ab", "abb", "abc", "0001", "002", "12", "122", "122.9", "123~rc1", "123",
		"123-a", "123-a.1", "123-a1", "123-a1.1", "123-3", "123-3.1", "123^patch1", "123^1", "123.a-1",
		"123.1-1", "123a-1", "124"}
	newer := func(older, newer string) {
		t.Helper()
		if blsVersCmp(older, newer) >= 0 || blsVersCmp(newer, older) <= 0 || blsVersCmp(older, older) != 0 {
			t.Errorf("want %q older than %q: %d, %d", older, newer, blsVersCmp(older, newer), blsVersCmp(newer, older))
		}
	}
	for i := range versions {
		for j := i + 1; j < len(versions); j++ {
			newer(versions[i], versions[j])
		}
	}
	for _, p := range [][2]string{
		{"123.45-67.88", "123.45-67.89"}, {"123.45-67.89", "123.45-67.89a"}, {"123.45-67.ab", "123.45-67.89"},
		{"123.45-67.9", "123.45-67.89"}, {"123.45-67", "123.45-67.89"}, {"123.45-66.89", "123.45-67.89"},
		{"123.45-9.99", "123.45-67.89"}, {"123.42-99.99", "123.45-67.89"}, {"123-99.99", "123.45-67.89"},
		{"123~rc1-99.99", "123.45-67.89"}, {"123~rc1-99.99", "123-45.67.89"}, {"123~rc1-99.99", "123~rc2-67.89"},
		{"123~rc1-99.99", "123^aa2-67.89"}, {"123~rc1-99.99", "123aa2-67.89"}, {"123-99.99", "123^aa2-67.89"},
		{"123-99.99", "123aa2-67.89"}, {"123^45-67.89", "123.45-67.89"}, {"123^aa1-99.99", "123^aa2-67.89"},
		{"123^aa2-67.89", "123aa2-67.89"}, {"123.aa2-67.89", "123aa2-67.89"}, {"123.aa2-67.89", "123.ab2-67.89"},
		// cpinit's slot entries: the rank decides, counters do not matter.
		{"cpinit-9-b+3.conf", "cpinit-10-a.conf"}, {"cpinit-1-a.conf", "cpinit-2-b+0-3.conf"},
		{"cpinit-1-a.conf", "cpinit-1-b.conf"},
	} {
		newer(p[0], p[1])
	}
	for _, c := range []struct {
		a, b string
		sign int
	}{
		{"123_aa2-67.89", "123aa+2-67.89", 0}, {"123.", "123", 1}, {"12_3", "123", -1}, {"12_3", "12", 1},
		{"12_3", "12.3", 1}, {"123.0", "123", 1}, {"123_0", "123", 1}, {"123..0", "123.0", -1},
		{"0_", "0", 0}, {"_0_", "0", 0}, {"_0", "0", 0}, {"0", "0___", 0}, {"", "_", 0}, {"_", "", 0},
		{"_", "_", 0}, {"", "~", 1}, {"~", "", -1},
	} {
		if got := blsVersCmp(c.a, c.b); got != c.sign {
			t.Errorf("blsVersCmp(%q, %q) = %d, want %d", c.a, c.b, got, c.sign)
		}
	}
}

// efi_fnmatch's own test vectors (systemd v252
// src/boot/efi/test-efi-string.c, TEST(efi_fnmatch)).
func TestBLSFnmatch(t *testing.T) {
	for _, c := range []struct {
		p, h string
		want bool
	}{
		{"", "", true}, {"abc", "abc", true}, {"aBc", "abc", false}, {"b", "a", false}, {"b", "", false},
		{"abc", "a", false}, {"a?c", "azc", true}, {"???", "?.9", true}, {"1?", "1", false}, {"***", "", true},
		{"*", "123", true}, {"**", "abcd", true}, {"*b*", "abcd", true}, {"abc*d", "abc", false},
		{"start*end", "startend", true}, {"start*end", "startendend", true}, {"start*end", "startenddne", false},
		{"start*end", "startendstartend", true}, {"start*end", "starten", false}, {"*.conf", "arch.conf", true},
		{"debian-*.conf", "debian-wheezy.conf", true}, {"debian-*.*", "debian-wheezy.efi", true},
		{"ab*cde", "abzcd", false}, {`\*\a\[`, "*a[", true}, {"[abc] [abc] [abc]", "a b c", true},
		{"abc]", "abc]", true}, {"[abc]", "z", false}, {"[abc", "a", false}, {"[][!] [][!] [][!]", "[ ] !", true},
		{"[]-] []-]", "] -", true}, {`[1\]] [1\]]`, "1 ]", true}, {`[$-\+]`, "&", true},
		{"[1-3A-C] [1-3A-C]", "2 B", true}, {"[3-5] [3-5] [3-5]", "3 4 5", true}, {"[f-h] [f-h] [f-h]", "f g h", true},
		{"[a-c-f] [a-c-f] [a-c-f] [a-c-f] [a-c-f]", "a b c - f", true}, {"[a-c-f]", "e", false},
		{"[--0] [--0] [--0]", "- . 0", true}, {"[+--] [+--] [+--]", "+ , -", true}, {"[f-l]", "m", false},
		{"[b]", "z-a", false}, {`[a\-z]`, "b", false}, {"?a*b[.-0]c", "/a/b/c", true},
		{"debian-*-*-*.*", "debian-jessie-2018-06-17-kernel-image-5.10.0-16-amd64.efi", true},
		{"a*b*c*d*e*f*g*h*i*j*k*l*m*n*o*p*q*r*s*t*u*v*w*x*y*z*", "aaaabbbbccccddddeeeeffffgggghhhhiiiijjjjkkkkllllmmmmnnnnooooppppqqqqrrrrssssttttuuuuvvvvwwwwxxxxyyyy", false},
		{"a*b*c*d*e*f*g*h*i*j*k*l*m*n*o*p*q*r*s*t*u*v*w*x*y*z*", "aaaabbbbccccddddeeeeffffgggghhhhiiiijjjjkkkkllllmmmmnnnnooooppppqqqqrrrrssssttttuuuuvvvvwwwwxxxxyyyyzzzz!!!!", true},
		// What cpinit's docs say about patterns and systemd-boot 252's ids
		// (the whole file name, counter included).
		{"cpinit-*", "cpinit-2-b+3.conf", true}, {"cpinit-2-b.conf", "cpinit-2-b+3.conf", false},
		{"cpinit-*-b*", "cpinit-2-b+0-3.conf", true},
	} {
		if got := blsFnmatch(c.p, c.h); got != c.want {
			t.Errorf("blsFnmatch(%q, %q) = %v, want %v", c.p, c.h, got, c.want)
		}
	}
}

// line_get_key_value's rules, on an entry and a loader.conf.
func TestParseBLSEntryAndLoaderConf(t *testing.T) {
	e := ParseBLSEntry([]byte("# comment\r\n  title   \"Slot B\"  \n\tsort-key\n"+
		"version 6.1\rlinux /a/vmlinuz\nlinux\t/b/vmlinuz\nmachine-id \"\"\n  # options x\n"+
		"architecture X64\noptions cpinit.slot=b\x00linux /c/vmlinuz\n"), "x64")
	want := BLSEntryInfo{Title: "Slot B", Version: "6.1", Loader: "/b/vmlinuz"}
	if e != want {
		t.Errorf("entry: %+v, want %+v", e, want)
	}
	e = ParseBLSEntry([]byte("linux /vmlinuz\narchitecture aa64\nsort-key late\n"), "x64")
	if !e.WrongArch || e.SortKey != "" {
		t.Errorf("entry for another architecture: %+v (parsing stops at the line)", e)
	}
	for _, c := range []struct {
		in   string
		want BLSLoaderConfig
	}{
		{"timeout 0\n", BLSLoaderConfig{}},
		{"default cpinit-*\n", BLSLoaderConfig{Default: "cpinit-*", HasDefault: true}},
		{"default a\ndefault @bogus\n", BLSLoaderConfig{Default: "a", HasDefault: true}},
		{"default a\ndefault @SAVED\n", BLSLoaderConfig{Default: "@SAVED", HasDefault: true}},
		{"default\n#default x\n", BLSLoaderConfig{}},
		{"default \"b*\"\n", BLSLoaderConfig{Default: "b*", HasDefault: true}},
	} {
		if got := ParseBLSLoaderConf([]byte(c.in)); got != c.want {
			t.Errorf("loader.conf %q: %+v, want %+v", c.in, got, c.want)
		}
	}
}

func blsEFIVar(s string, nul bool) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 7) // NV|BS|RT
	u := utf16.Encode([]rune(s))
	if nul {
		u = append(u, 0)
	}
	for _, c := range u {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return b
}

func TestParseBLSEFIVarString(t *testing.T) {
	for _, nul := range []bool{true, false} {
		if s, err := ParseBLSEFIVarString(blsEFIVar("cpinit-1-a.conf", nul)); err != nil || s != "cpinit-1-a.conf" {
			t.Errorf("nul %v: %q, %v", nul, s, err)
		}
	}
	for _, bad := range [][]byte{nil, {7, 0, 0}, {7, 0, 0, 0, 'a'}} {
		if s, err := ParseBLSEFIVarString(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%x: %q, %v; want ErrCorrupt", bad, s, err)
		}
	}
}
