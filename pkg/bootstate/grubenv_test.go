package bootstate

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

// The blocks in testdata/grubenv were written by grub-editenv (its README
// says how; TestGrubEnvGoldensFromTool remakes them with the installed
// tool). Here, without the tool: cpinit's encoder writes the same bytes
// and its decoder reads the variables grub-editenv was given.
var grubEnvGoldens = []struct {
	file string
	sets []GrubEnvVar // applied to `grub-editenv create`'s block, in order
}{
	{"created.grubenv", nil},
	{"rauc-a.grubenv", []GrubEnvVar{{"ORDER", "A B"}, {"A_OK", "1"}, {"A_TRY", "0"}, {"B_OK", "0"}, {"B_TRY", "0"}}},
	{"escapes.grubenv", []GrubEnvVar{{"ORDER", "A B"}, {"A_OK", "1"}, {"A_TRY", "0"}, {"B_OK", "0"}, {"B_TRY", "0"},
		{"saved_entry", "Debian GNU/Linux"}, {"kernelopts", "root=/dev/sda2 ro quiet"}, {"odd", "back\\slash\nnew line"}}},
}

func grubReadGolden(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "grubenv", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGrubEnvGolden(t *testing.T) {
	for _, g := range grubEnvGoldens {
		t.Run(g.file, func(t *testing.T) {
			raw := grubReadGolden(t, g.file)
			e, err := NewGrubEnv(GrubEnvSize)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Set(g.sets...); err != nil {
				t.Fatal(err)
			}
			if got := e.Encode(); !bytes.Equal(got, raw) {
				t.Errorf("encode differs from grub-editenv's block:\n got %q\nwant %q", got, raw)
			}
			d, err := DecodeGrubEnv(raw)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if got := d.Vars(); !reflect.DeepEqual(got, g.sets) && len(g.sets)+len(got) > 0 {
				t.Errorf("decode: %q, want %q", got, g.sets)
			}
			for _, v := range g.sets {
				if got, ok := d.Get(v.Name); !ok || got != v.Value {
					t.Errorf("Get(%s) = %q, %v; want %q", v.Name, got, ok, v.Value)
				}
			}
			if _, ok := d.Get("nope"); ok {
				t.Error("Get of an unset name reported it set")
			}
		})
	}
}

// The escaping of envblk.c, byte by byte: '\\' and '\n' get a '\\' in
// front, nothing else does, and the decoder undoes exactly that.
func TestGrubEnvEscaping(t *testing.T) {
	e, _ := NewGrubEnv(GrubEnvSize)
	before := len(e.Encode()) - e.Free()
	val := "a\\b\nc=d#e\tf"
	if err := e.Set(GrubEnvVar{"x", val}); err != nil {
		t.Fatal(err)
	}
	b := e.Encode()
	want := "x=a\\\\b\\\nc=d#e\tf\n"
	if got := string(b[before : before+len(want)]); got != want {
		t.Fatalf("line written %q, want %q", got, want)
	}
	if before+len(want) != len(b)-e.Free() {
		t.Fatalf("free space %d after a %d-byte line, had %d", e.Free(), len(want), len(b)-before)
	}
	d, err := DecodeGrubEnv(b)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := d.Get("x"); v != val {
		t.Fatalf("decoded %q, want %q", v, val)
	}
	if l := d.List(); !strings.HasSuffix(l, "x="+val+"\n") {
		t.Fatalf("List = %q", l)
	}
}

// Set rewrites a value where it is, shifting the lines after it and
// refilling the padding; new variables go last; Unset closes the gap. The
// expected blocks are spelled out, not computed by the code under test.
func TestGrubEnvSetUnsetLayout(t *testing.T) {
	const size = 512
	block := func(lines string) []byte {
		b := []byte(GrubEnvHeader + grubEnvWarning + lines)
		return append(b, bytes.Repeat([]byte("#"), size-len(b))...)
	}
	e, err := NewGrubEnv(size)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		do   func() error
		want string
	}{
		{func() error { return e.Set(GrubEnvVar{"A", "1"}, GrubEnvVar{"B", "22"}, GrubEnvVar{"C", "3"}) }, "A=1\nB=22\nC=3\n"},
		{func() error { return e.Set(GrubEnvVar{"A", "longer"}) }, "A=longer\nB=22\nC=3\n"},
		{func() error { return e.Set(GrubEnvVar{"B", ""}) }, "A=longer\nB=\nC=3\n"},
		{func() error { return e.Set(GrubEnvVar{"D", "4"}, GrubEnvVar{"A", "a"}) }, "A=a\nB=\nC=3\nD=4\n"},
		{func() error { return e.Unset("B", "nope") }, "A=a\nC=3\nD=4\n"},
		{func() error { return e.Unset("D") }, "A=a\nC=3\n"},
		{func() error { return e.Set(GrubEnvVar{"B", "2"}) }, "A=a\nC=3\nB=2\n"},
	}
	for i, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got, want := e.Encode(), block(s.want); !bytes.Equal(got, want) {
			t.Fatalf("step %d:\n got %q\nwant %q", i, got, want)
		}
	}
}

// A full block: ErrFull, and the block is unchanged, even when earlier
// variables of the same Set did fit (grub-editenv writes nothing then
// either).
func TestGrubEnvFull(t *testing.T) {
	e, _ := NewGrubEnv(512)
	if err := e.Set(GrubEnvVar{"A", "1"}); err != nil {
		t.Fatal(err)
	}
	free := e.Free()
	before := e.Encode()
	// "B=" + value + "\n" needs free bytes exactly: fits; one more does not.
	if err := e.Set(GrubEnvVar{"Z", "z"}, GrubEnvVar{"B", strings.Repeat("x", free-3)}); !errors.Is(err, ErrFull) {
		t.Fatalf("Set past the end: %v, want ErrFull", err)
	}
	if !bytes.Equal(e.Encode(), before) {
		t.Fatal("a failed Set changed the block")
	}
	if err := e.Set(GrubEnvVar{"A", "1" + strings.Repeat("\n", free/2+1)}); !errors.Is(err, ErrFull) {
		t.Fatalf("growing A past the end (escapes count double): %v, want ErrFull", err)
	}
	if !bytes.Equal(e.Encode(), before) {
		t.Fatal("a failed Set changed the block")
	}
	if err := e.Set(GrubEnvVar{"B", strings.Repeat("x", free-3)}); err != nil {
		t.Fatalf("a line that fills the padding exactly: %v", err)
	}
	if e.Free() != 0 {
		t.Fatalf("free %d after filling the block", e.Free())
	}
	if _, err := DecodeGrubEnv(e.Encode()); err != nil {
		t.Fatalf("a block with no padding left: %v", err)
	}
	if err := e.Set(GrubEnvVar{"A", "2"}); err != nil {
		t.Fatalf("same-length change in a full block: %v", err)
	}
	// Deleting from a full block refills the end with '#' (there is no
	// padding left to shift in).
	if err := e.Unset("A"); err != nil {
		t.Fatal(err)
	}
	want := GrubEnvHeader + grubEnvWarning + "B=" + strings.Repeat("x", free-3) + "\n####"
	if got := string(e.Encode()); got != want {
		t.Fatalf("unset in a full block:\n got %q\nwant %q", got, want)
	}
}

func TestGrubEnvBadNames(t *testing.T) {
	e, _ := NewGrubEnv(GrubEnvSize)
	before := e.Encode()
	for _, n := range []string{"", "a=b", "a\nb", "a\\b", "#a", "a\x00"} {
		if err := e.Set(GrubEnvVar{"ok", "1"}, GrubEnvVar{n, "1"}); err == nil {
			t.Errorf("Set(%q) accepted", n)
		}
		if err := e.Unset(n); err == nil {
			t.Errorf("Unset(%q) accepted", n)
		}
	}
	if err := e.Set(GrubEnvVar{"v", "a\x00b"}); err == nil {
		t.Error("a NUL in a value accepted")
	}
	if !bytes.Equal(e.Encode(), before) {
		t.Fatal("refused Sets changed the block")
	}
}

// Blocks cpinit refuses, each with ErrCorrupt, starting from a good one.
func TestDecodeGrubEnvCorrupt(t *testing.T) {
	good := grubReadGolden(t, "rauc-a.grubenv")
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	at := func(s string) int { return bytes.Index(good, []byte(s)) }
	cases := []struct {
		name string
		b    []byte
	}{
		{"empty file", nil},
		{"cut short (truncated by grub-editenv's fopen wb, then a power cut)", good[:600]},
		{"one sector short of the header's", good[:20]},
		{"too big", bytes.Repeat(good, GrubEnvMaxSize/len(good)+1)},
		{"no header", mod(func(b []byte) []byte { b[2] = 'g'; return b })},
		{"zeroed first sector", mod(func(b []byte) []byte { copy(b, make([]byte, 512)); return b })},
		{"zeroed second sector", mod(func(b []byte) []byte { copy(b[512:], make([]byte, 512)); return b })},
		{"NUL in a value", mod(func(b []byte) []byte { b[at("A_OK=1")+5] = 0; return b })},
		{"line without '='", mod(func(b []byte) []byte { b[at("A_OK=1")+4] = ':'; return b })},
		{"empty name", mod(func(b []byte) []byte { copy(b[at("A_OK=1"):], "=OK_1"); return b })},
		{"backslash in a name", mod(func(b []byte) []byte { b[at("A_OK=1")+1] = '\\'; return b })},
		{"duplicate", mod(func(b []byte) []byte { copy(b[at("B_OK=0"):], "A_OK=1"); return b })},
		{"last line without its newline", mod(func(b []byte) []byte { b[at("B_TRY=0")+7] = '#'; return b })},
		{"garbage in the padding", mod(func(b []byte) []byte { b[1000] = 'x'; return b })},
		{"escape running off the end", mod(func(b []byte) []byte {
			p := at("B_TRY=0") + 8
			for i := p; i < len(b); i++ {
				b[i] = 'y'
			}
			copy(b[p:], "Z=")
			b[len(b)-1] = '\\'
			return b
		})},
		{"comment with a backslash hiding a variable", mod(func(b []byte) []byte {
			w := at("!!!\n")
			b[w+2] = '\\'
			return b
		})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := DecodeGrubEnv(c.b); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeGrubEnv: %v, want ErrCorrupt", err)
			}
		})
	}
	if _, err := DecodeGrubEnv(good); err != nil {
		t.Fatalf("the unmodified block: %v", err)
	}
}

// Other sizes than 1024 are kept: a 2048-byte block stays 2048 bytes.
func TestGrubEnvKeepsSize(t *testing.T) {
	e, err := NewGrubEnv(2048)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Set(GrubEnvVar{"ORDER", "A B"}); err != nil {
		t.Fatal(err)
	}
	d, err := DecodeGrubEnv(e.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != 2048 || d.Free() != 2048-len(GrubEnvHeader)-len(grubEnvWarning)-len("ORDER=A B\n") {
		t.Fatalf("decode of a 2048-byte block: size %d, free %d", d.Size(), d.Free())
	}
	for _, n := range []int{0, 511, 1000, GrubEnvMaxSize + 512} {
		if _, err := NewGrubEnv(n); !errors.Is(err, ErrCorrupt) {
			t.Errorf("NewGrubEnv(%d): %v", n, err)
		}
	}
}

// grubEnvRandomOps returns n random grub-editenv argument lists (set and
// unset, over RAUC's names and others, values with escapes, some long),
// for the cross-checks to apply with the tool and with GrubEnv.
func grubEnvRandomOps(r *rand.Rand, n int) [][]string {
	names := []string{"ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY", "saved_entry", "x", "kernelopts"}
	vals := []string{"", "0", "1", "A B", "B A", "back\\slash", "two\nlines", "\\\n\\", strings.Repeat("long ", 40), "#hash#"}
	var ops [][]string
	for range n {
		if r.IntN(4) == 0 {
			op := []string{"unset"}
			for range 1 + r.IntN(2) {
				op = append(op, names[r.IntN(len(names))])
			}
			ops = append(ops, op)
			continue
		}
		op := []string{"set"}
		for range 1 + r.IntN(3) {
			op = append(op, names[r.IntN(len(names))]+"="+vals[r.IntN(len(vals))])
		}
		ops = append(ops, op)
	}
	return ops
}

// grubApplyEditenvOp applies one grub-editenv argument list to e.
func grubApplyEditenvOp(e *GrubEnv, op []string) error {
	switch op[0] {
	case "set":
		var vs []GrubEnvVar
		for _, a := range op[1:] {
			n, v, _ := strings.Cut(a, "=")
			vs = append(vs, GrubEnvVar{n, v})
		}
		return e.Set(vs...)
	case "unset":
		return e.Unset(op[1:]...)
	}
	return fmt.Errorf("unknown op %q", op[0])
}

func FuzzDecodeGrubEnv(f *testing.F) {
	for _, g := range grubEnvGoldens {
		f.Add(grubReadGolden(f, g.file))
	}
	good := grubReadGolden(f, "rauc-a.grubenv")
	torn := bytes.Clone(good)
	copy(torn[512:], make([]byte, 512))
	f.Add(torn)
	f.Add([]byte(GrubEnvHeader))
	f.Add(append([]byte(GrubEnvHeader+"A=\\"), bytes.Repeat([]byte("#"), 512-len(GrubEnvHeader)-3)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeGrubEnv(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error without ErrCorrupt: %v", err)
			}
			// GRUB's own reading must not panic on it either.
			GrubRaucBoot(b, nil)
			return
		}
		if !bytes.Equal(e.Encode(), b) {
			t.Fatal("decode/encode changed the bytes")
		}
		// What cpinit accepts, GRUB reads the same way: the strict walk
		// and envblk.c's iterate agree on every variable.
		var lenient []GrubEnvVar
		grubEnvblkIterate(b, func(n, v string) bool { lenient = append(lenient, GrubEnvVar{n, v}); return false })
		if vs := e.Vars(); !reflect.DeepEqual(vs, lenient) {
			t.Fatalf("Vars %q, envblk iterate %q", vs, lenient)
		}
		// A new variable set then unset leaves the block as it was,
		// or does not fit and leaves it untouched.
		n := e.Clone()
		if err := n.Set(GrubEnvVar{"cpinit_fuzz", "v\\\n"}); err != nil {
			if !errors.Is(err, ErrFull) || !bytes.Equal(n.Encode(), b) {
				t.Fatalf("failed Set: %v, block changed %v", err, !bytes.Equal(n.Encode(), b))
			}
			return
		}
		if _, err := DecodeGrubEnv(n.Encode()); err != nil {
			t.Fatalf("Set produced a block cpinit refuses: %v", err)
		}
		if v, _ := n.Get("cpinit_fuzz"); v != "v\\\n" {
			t.Fatalf("Get after Set = %q", v)
		}
		if err := n.Unset("cpinit_fuzz"); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(n.Encode(), b) {
			t.Fatalf("set+unset of a new variable:\n got %q\nwant %q", n.Encode(), b)
		}
	})
}

// Variables in, block out, variables back: the fuzzer picks names and
// values (the names made valid), the block is grub-editenv's 1024 bytes.
func FuzzGrubEnvRoundTrip(f *testing.F) {
	f.Add("ORDER\x00A B\x00A_OK\x001\x00x\x00a\\b\nc")
	f.Add("a\x00\x00b\x00#\x00a\x002")
	f.Fuzz(func(t *testing.T, s string) {
		parts := strings.Split(s, "\x00")
		var want []GrubEnvVar
		e, _ := NewGrubEnv(GrubEnvSize)
		for i := 0; i+1 < len(parts); i += 2 {
			name := "v" + strings.Map(func(r rune) rune {
				if strings.ContainsRune("=\n\\", r) {
					return '_'
				}
				return r
			}, parts[i])
			v := GrubEnvVar{name, parts[i+1]}
			if err := e.Set(v); err != nil {
				if !errors.Is(err, ErrFull) {
					t.Fatalf("Set(%q): %v", v, err)
				}
				continue
			}
			if j := grubEnvVarIndex(want, name); j >= 0 {
				want[j] = v
			} else {
				want = append(want, v)
			}
		}
		d, err := DecodeGrubEnv(e.Encode())
		if err != nil {
			t.Fatalf("decode of our own block: %v", err)
		}
		if got := d.Vars(); !reflect.DeepEqual(got, want) && len(got)+len(want) > 0 {
			t.Fatalf("round trip: %q, want %q", got, want)
		}
	})
}

func grubEnvVarIndex(vs []GrubEnvVar, name string) int {
	for i, v := range vs {
		if v.Name == name {
			return i
		}
	}
	return -1
}

// The file backend: Load reads, Save writes in place (same inode, same
// size, no temporary file) and durably; on any error the file is unchanged.
func TestGrubEnvFileLoadSave(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "grubenv")
	orig := grubReadGolden(t, "rauc-a.grubenv")
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	ino := func() uint64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	ino0 := ino()
	f := &GrubEnvFile{Path: path}
	if d := f.Describe(); !strings.Contains(d, path) || !strings.Contains(d, "grub-rauc") {
		t.Errorf("Describe = %q", d)
	}
	var bl Bootloader = f
	s, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	want, _ := NewGrubEnv(GrubEnvSize)
	want.Set(GrubEnvVar{"ORDER", "B A"}, GrubEnvVar{"A_OK", "1"}, GrubEnvVar{"A_TRY", "0"}, GrubEnvVar{"B_OK", "1"}, GrubEnvVar{"B_TRY", "0"})
	if !bytes.Equal(got, want.Encode()) {
		t.Fatalf("saved:\n got %q\nwant %q", got, want.Encode())
	}
	if ino() != ino0 {
		t.Fatal("Save replaced the file instead of writing it in place")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("Save left files behind: %v", ents)
	}
	// A second change through the same state: Save knows what it wrote.
	if err := s.MarkSuccessful("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatalf("second Save: %v", err)
	}
	s2, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if s2.Next() != "b" {
		t.Fatalf("after reload: next %q", s2.Next())
	}

	// Someone else (RAUC) writes meanwhile: Save refuses, writes nothing.
	other := bytes.Clone(got)
	copy(other[bytes.Index(other, []byte("A_OK=1")):], "A_OK=0")
	if err := os.WriteFile(path, other, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s2.SetActive("a"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s2); !errors.Is(err, ErrGrubEnvChanged) {
		t.Fatalf("Save over a changed file: %v", err)
	}
	if now, _ := os.ReadFile(path); !bytes.Equal(now, other) {
		t.Fatal("a refused Save wrote")
	}

	// A state of another backend.
	if err := bl.Save(&AndroidState{BC: &BootControl{NbSlot: 2}}); err == nil {
		t.Fatal("Save of an android state accepted")
	}
	// A missing file is not created.
	gone := &GrubEnvFile{Path: filepath.Join(dir, "missing")}
	if _, err := gone.Load(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v", err)
	}
	if _, err := os.Stat(gone.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Load created the file")
	}
}

// Bad files: Load fails with the sentinel and the path, the file is left
// as it was.
func TestGrubEnvFileBadInput(t *testing.T) {
	good := grubReadGolden(t, "rauc-a.grubenv")
	created := grubReadGolden(t, "created.grubenv")
	order := bytes.Index(good, []byte("ORDER=A B"))
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"wrong header", append([]byte("# GRUB Environment Blocc\n"), good[25:]...), ErrCorrupt},
		{"wrong size", good[:1000], ErrCorrupt},
		{"empty", nil, ErrCorrupt},
		{"garbage", bytes.Repeat([]byte{0xa5}, 1024), ErrCorrupt},
		{"no RAUC variables (grub-editenv create)", created, ErrNoScheme},
		{"B_TRY missing", func() []byte {
			e, _ := DecodeGrubEnv(good)
			e.Unset("B_TRY")
			return e.Encode()
		}(), ErrNoScheme},
		{"ORDER names an unknown slot", func() []byte {
			b := bytes.Clone(good)
			copy(b[order:], "ORDER=A C")
			return b
		}(), ErrNoScheme},
		{"x_OK not 0 or 1", func() []byte {
			b := bytes.Clone(good)
			copy(b[bytes.Index(b, []byte("A_OK=1")):], "A_OK=2")
			return b
		}(), ErrNoScheme},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "grubenv")
			if err := os.WriteFile(path, c.b, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := (&GrubEnvFile{Path: path}).Load()
			if !errors.Is(err, c.want) {
				t.Fatalf("Load: %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error does not name the file: %v", err)
			}
			if now, _ := os.ReadFile(path); !bytes.Equal(now, c.b) {
				t.Fatal("Load changed the file")
			}
		})
	}
	t.Run("not a regular file", func(t *testing.T) {
		if _, err := (&GrubEnvFile{Path: t.TempDir()}).Load(); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Load of a directory: %v", err)
		}
	})
}

// A change that does not fit: ErrFull from the ABState, and Save is never
// reached, so the file is unchanged. RAUC's set_primary lengthens ORDER
// when it held one name only.
func TestGrubEnvFileFull(t *testing.T) {
	e, _ := NewGrubEnv(512)
	if err := e.Set(GrubEnvVar{"ORDER", "A"}, GrubEnvVar{"A_OK", "1"}, GrubEnvVar{"A_TRY", "0"}, GrubEnvVar{"B_OK", "0"}, GrubEnvVar{"B_TRY", "0"}); err != nil {
		t.Fatal(err)
	}
	if err := e.Set(GrubEnvVar{"filler", strings.Repeat("f", e.Free()-len("filler=\n")-1)}); err != nil {
		t.Fatal(err)
	}
	if e.Free() != 1 {
		t.Fatalf("free %d", e.Free())
	}
	path := filepath.Join(t.TempDir(), "grubenv")
	orig := e.Encode()
	os.WriteFile(path, orig, 0o644)
	f := &GrubEnvFile{Path: path}
	s, err := f.Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.Next() != "a" || s.Slots()[1].Bootable {
		t.Fatalf("ORDER=A: next %q, slots %+v", s.Next(), s.Slots())
	}
	if err := s.SetActive("b"); !errors.Is(err, ErrFull) {
		t.Fatalf("SetActive(b) needing 2 more bytes with 1 free: %v", err)
	}
	if err := s.FallBackFrom("a"); !errors.Is(err, ErrFull) {
		t.Fatalf("FallBackFrom(a): %v", err)
	}
	// The state is unchanged, so saving it writes the same bytes.
	if err := f.Save(s); err != nil {
		t.Fatal(err)
	}
	if now, _ := os.ReadFile(path); !bytes.Equal(now, orig) {
		t.Fatal("file changed after refused changes")
	}
	// Same-length changes still work in the full block.
	if err := s.SetUnbootable("b"); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkSuccessful("a"); err != nil {
		t.Fatal(err)
	}
}
