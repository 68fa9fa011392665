package bootstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// mkEnvCopy lays out one copy by hand (not with the code under test): CRC,
// flags if redundant, the entries in the order given, "\0", pad.
func mkEnvCopy(t testing.TB, size int, redundant bool, flags byte, pad byte, entries ...string) []byte {
	t.Helper()
	off := 4
	if redundant {
		off = 5
	}
	data := []byte{}
	for _, e := range entries {
		data = append(append(data, e...), 0)
	}
	data = append(data, 0)
	if len(data) > size-off {
		t.Fatalf("entries do not fit %d bytes", size)
	}
	data = append(data, bytes.Repeat([]byte{pad}, size-off-len(data))...)
	b := make([]byte, off, size)
	binary.LittleEndian.PutUint32(b, crc32.ChecksumIEEE(data))
	if redundant {
		b[4] = flags
	}
	return append(b, data...)
}

func TestUBootEnvDecodeSortsAndDedups(t *testing.T) {
	c := mkEnvCopy(t, 256, false, 0, 0xff, "zeta=1", "BOOT_ORDER=A B", "noequals", "alpha=x=y", "zeta=2", "empty=")
	img, err := DecodeUBootEnv([][]byte{c}, UBootFlagsIncremental)
	if err != nil {
		t.Fatal(err)
	}
	want := []UBootVar{{Name: "BOOT_ORDER", Value: "A B"}, {Name: "alpha", Value: "x=y"}, {Name: "empty"}, {Name: "zeta", Value: "2"}}
	if got := img.Env.Vars(); !reflect.DeepEqual(got, want) {
		t.Fatalf("vars %+v, want %+v", got, want)
	}
	if img.Pad != 0xff {
		t.Fatalf("pad %#x, want the old padding 0xff", img.Pad)
	}
	// Re-encoded: sorted, the duplicate and the entry without '=' gone,
	// the same 0xff padding.
	_, b, err := img.EncodeNext(img.Env)
	if err != nil {
		t.Fatal(err)
	}
	if want := mkEnvCopy(t, 256, false, 0, 0xff, "BOOT_ORDER=A B", "alpha=x=y", "empty=", "zeta=2"); !bytes.Equal(b, want) {
		t.Fatalf("encoded\n%q\nwant\n%q", b, want)
	}
}

func TestUBootEnvFlagsVariable(t *testing.T) {
	c := mkEnvCopy(t, 256, false, 0, 0, ".flags=serial#:sr,ethaddr:mo,gone:sr,bootcount:d,ipaddr:i,hexv:x", "serial#=123", "ethaddr=00:11", "bootcount=0", "ipaddr=10.0.0.1", "hexv=0x10", "plain=1")
	img, err := DecodeUBootEnv([][]byte{c}, UBootFlagsIncremental)
	if err != nil {
		t.Fatal(err)
	}
	env := img.Env
	if err := env.Set("serial#", "999"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("set read-only serial#: %v", err)
	}
	if err := env.Unset("ethaddr"); err == nil || !strings.Contains(err.Error(), "write-once") {
		t.Fatalf("unset write-once ethaddr: %v", err)
	}
	if err := env.Set("bootcount", "x1"); err == nil {
		t.Fatal("bootcount is decimal in .flags, x1 accepted")
	}
	if err := env.Set("bootcount", "1"); err != nil {
		t.Fatal(err)
	}
	if err := env.Set(".flags", "x:s"); err == nil {
		t.Fatal(".flags set directly")
	}
	_, b, err := img.EncodeNext(env)
	if err != nil {
		t.Fatal(err)
	}
	// libubootenv's store: variables sorted, then .flags for the
	// variables that exist and have attributes, in their order.
	want := mkEnvCopy(t, 256, false, 0, 0, "bootcount=1", "ethaddr=00:11", "hexv=0x10", "ipaddr=10.0.0.1", "plain=1", "serial#=123",
		".flags=bootcount:da,ethaddr:mo,hexv:xa,ipaddr:ia,serial#:sr")
	if !bytes.Equal(b, want) {
		t.Fatalf("encoded\n%q\nwant\n%q", b, want)
	}
}

func TestUBootEnvRedundantCurrentCopy(t *testing.T) {
	for _, tc := range []struct {
		f0, f1 byte
		fs     UBootFlagScheme
		want   int
	}{
		{1, 2, UBootFlagsIncremental, 1},
		{2, 1, UBootFlagsIncremental, 0},
		{1, 1, UBootFlagsIncremental, 0},
		{0xff, 0, UBootFlagsIncremental, 1},
		{0, 0xff, UBootFlagsIncremental, 0},
		{0xfe, 0xff, UBootFlagsIncremental, 1},
		{1, 0, UBootFlagsBoolean, 0},
		{0, 1, UBootFlagsBoolean, 1},
		{1, 0xff, UBootFlagsBoolean, 1},
		{0xff, 1, UBootFlagsBoolean, 0},
	} {
		c0 := mkEnvCopy(t, 64, true, tc.f0, 0, "v=0")
		c1 := mkEnvCopy(t, 64, true, tc.f1, 0, "v=1")
		img, err := DecodeUBootEnv([][]byte{c0, c1}, tc.fs)
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := img.Env.Get("v"); img.Current != tc.want || v != []string{"0", "1"}[tc.want] {
			t.Errorf("flags %#x/%#x scheme %d: current %d (v=%s), want %d", tc.f0, tc.f1, tc.fs, img.Current, v, tc.want)
		}
	}
	// The next write goes to the other copy with flags+1, wrapping.
	img, err := DecodeUBootEnv([][]byte{mkEnvCopy(t, 64, true, 0xfe, 0, "v=0"), mkEnvCopy(t, 64, true, 0xff, 0, "v=1")}, UBootFlagsIncremental)
	if err != nil {
		t.Fatal(err)
	}
	i, b, err := img.EncodeNext(img.Env)
	if err != nil || i != 0 || b[4] != 0 {
		t.Fatalf("next write: copy %d flags %#x, %v; want copy 0 flags 0", i, b[4], err)
	}
}

func TestUBootEnvBadInput(t *testing.T) {
	good := mkEnvCopy(t, 64, true, 1, 0, "v=0")
	bad := bytes.Clone(good)
	bad[10] ^= 1
	if _, err := DecodeUBootEnv([][]byte{bad, bad}, UBootFlagsIncremental); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("both copies bad: %v", err)
	}
	if _, err := DecodeUBootEnv([][]byte{bad[:0x40]}, UBootFlagsIncremental); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("single bad copy: %v", err)
	}
	img, err := DecodeUBootEnv([][]byte{bad, good}, UBootFlagsIncremental)
	if err != nil || img.Current != 1 {
		t.Fatalf("copy 0 bad: current %v, %v", img, err)
	}
	img, err = DecodeUBootEnv([][]byte{good, bad}, UBootFlagsIncremental)
	if err != nil || img.Current != 0 {
		t.Fatalf("copy 1 bad: current %v, %v", img, err)
	}
	// Valid CRC, but an empty name (U-Boot refuses the import) or an
	// entry without its NUL.
	for _, data := range [][]byte{[]byte("a=1\x00=x\x00\x00"), []byte("a=1\x00" + strings.Repeat("b", 64-4-4))} {
		c := make([]byte, 4, 64)
		c = append(c, data...)
		c = append(c, make([]byte, 64-len(c))...)
		binary.LittleEndian.PutUint32(c, crc32.ChecksumIEEE(c[4:]))
		if _, err := DecodeUBootEnv([][]byte{c}, UBootFlagsIncremental); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%q: %v", data, err)
		}
	}
	// Full: the entries plus the final NUL must fit the data area.
	env, _ := NewUBootEnv("a", strings.Repeat("x", 64-4-3-1)) // "a=" + value + NUL + NUL = 60
	if _, err := env.EncodeUBootEnvData(60, 0); err != nil {
		t.Fatalf("exactly full: %v", err)
	}
	if _, err := env.EncodeUBootEnvData(59, 0); !errors.Is(err, ErrFull) {
		t.Fatalf("one byte over: %v", err)
	}
}

func TestParseFWEnvConfig(t *testing.T) {
	cfg := `# MTD device name	Device offset	Env. size	Flash sector size	Number of sectors
/dev/mmcblk0	0x400000	0x4000
  # indented comment
/dev/mmcblk0	-0x4000	4000	0x200	1

`
	l, err := ParseFWEnvConfig(strings.NewReader(cfg))
	if err != nil {
		t.Fatal(err)
	}
	want := UBootEnvLocation{Areas: []UBootEnvArea{
		{Device: "/dev/mmcblk0", Offset: 0x400000, Size: 0x4000},
		{Device: "/dev/mmcblk0", Offset: -0x4000, Size: 0x4000, SectorSize: 0x200, Sectors: 1},
	}}
	if !reflect.DeepEqual(l, want) {
		t.Fatalf("%+v, want %+v", l, want)
	}
	// %lli offsets: decimal, octal; %zx sizes: always hex.
	l, err = ParseFWEnvConfig(strings.NewReader("/dev/x 4096 16384\n/dev/x 0400000 16384\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a := l.Areas[0]; a.Offset != 4096 || a.Size != 0x16384 || l.Areas[1].Offset != 0o400000 {
		t.Fatalf("%+v", l)
	}
	for _, bad := range []string{
		"",
		"# only comments\n",
		"/dev/x 0x0\n",                       // libubootenv would skip it
		"/dev/x 0x0 0x4000\n/dev/x 0x4000\n", // ...and so turn redundant into single
		"/dev/x 0x0 0\n",                     // size 0
		"/dev/x 0x0 0x4000\n/dev/x 0x4000 0x2000\n", // sizes differ
		"/dev/x 0x0 0x4000\n/dev/x 0x2000 0x4000\n", // overlap
		"/dev/x 0x0 0x4000\n/dev/x 0x4000 0x4000\n/dev/x 0x8000 0x4000\n",
		"/dev/x zz 0x4000\n",
		"/dev/x 0x0 0x4000zz\n",
		"/dev/mtd1 0x0 0x4000 0x10000\n",
		"/dev/ubi0:env 0x0 0x4000\n",
		"devices:\n  - path: /dev/x\n",
	} {
		if _, err := ParseFWEnvConfig(strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseUBootEnvLocation(t *testing.T) {
	l, err := ParseUBootEnvLocation("/dev/vdb:0x0:0x4000,/dev/disk/by-path/pci-0000:00:05.0:16384:16384")
	if err != nil {
		t.Fatal(err)
	}
	want := []UBootEnvArea{{Device: "/dev/vdb", Size: 0x4000}, {Device: "/dev/disk/by-path/pci-0000:00:05.0", Offset: 16384, Size: 16384}}
	if !reflect.DeepEqual(l.Areas, want) {
		t.Fatalf("%+v", l.Areas)
	}
	if s := l.String(); s != "/dev/vdb:0x0:0x4000,/dev/disk/by-path/pci-0000:00:05.0:0x4000:0x4000" {
		t.Fatalf("String() = %s", s)
	}
	l, err = ParseUBootEnvLocation("/dev/vdb:-0x8000:0x4000")
	if err != nil || l.Areas[0].Offset != -0x8000 || l.Redundant() {
		t.Fatalf("%+v %v", l, err)
	}
	if l2, err := ParseUBootEnvLocation(l.String()); err != nil || !reflect.DeepEqual(l, l2) {
		t.Fatalf("round trip %+v %v", l2, err)
	}
	for _, bad := range []string{"", "/etc/fw_env.config", "/dev/vdb:0x0", ":0:0x4000", "/dev/vdb:0:0", "/dev/vdb:x:0x4000",
		"/dev/vdb:0:0x4000,/dev/vdb:0x2000:0x4000", "/dev/vdb:0:0x4000,/dev/vdb:0x4000:0x4000,/dev/vdb:0x8000:0x4000"} {
		if _, err := ParseUBootEnvLocation(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// envFile writes a redundant (two copies at 0 and size) or single
// environment file and returns its Bootloader.
func envFile(t testing.TB, size int, copies [][]byte, scheme UBootSchemeConfig) (*UBootBootloader, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(p, bytes.Join(copies, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	l := UBootEnvLocation{Areas: []UBootEnvArea{{Device: p, Size: int64(size)}}}
	if len(copies) == 2 {
		l.Areas = append(l.Areas, UBootEnvArea{Device: p, Offset: int64(size), Size: int64(size)})
	}
	return &UBootBootloader{Location: l, Scheme: scheme}, p
}

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var raucEntries = []string{"BOOT_A_LEFT=3", "BOOT_B_LEFT=3", "BOOT_ORDER=A B", "bootcmd=run rauc_boot"}

func TestUBootBootloaderRedundantSave(t *testing.T) {
	const size = 0x1000
	c0 := mkEnvCopy(t, size, true, 7, 0, raucEntries...)
	c1 := mkEnvCopy(t, size, true, 6, 0, "BOOT_ORDER=A B", "stale=1")
	bl, p := envFile(t, size, [][]byte{c0, c1}, UBootSchemeConfig{})
	if d := bl.Describe(); !strings.Contains(d, "redundant") {
		t.Fatalf("Describe %q", d)
	}
	s, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.Scheme() != UBootSchemeRAUC || s.Next() != "a" {
		t.Fatalf("loaded %s next %s", s.Scheme(), s.Next())
	}
	if err := bl.Save(s); err != nil { // nothing changed: nothing written
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, p), append(bytes.Clone(c0), c1...)) {
		t.Fatal("an unchanged state was written")
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatal(err)
	}
	got := readFile(t, p)
	if !bytes.Equal(got[:size], c0) {
		t.Fatal("Save touched the current copy")
	}
	if want := mkEnvCopy(t, size, true, 8, 0, "BOOT_A_LEFT=3", "BOOT_B_LEFT=3", "BOOT_ORDER=B A", "bootcmd=run rauc_boot"); !bytes.Equal(got[size:], want) {
		t.Fatalf("copy 1:\n%q\nwant\n%q", got[size:size+80], want[:80])
	}
	// A second Save from the same state writes copy 0 next.
	if err := s.MarkSuccessful("b"); err != nil {
		t.Fatal(err)
	}
	if err := s.(UBootState).Env().Set("BOOT_B_LEFT", "2"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatal(err)
	}
	got2 := readFile(t, p)
	if !bytes.Equal(got2[size:], got[size:]) || got2[4] != 9 {
		t.Fatalf("second save: copy 0 flags %d (want 9), copy 1 changed %v", got2[4], !bytes.Equal(got2[size:], got[size:]))
	}
	s2, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if si, _ := SlotOf(s2, "b"); si.Tries != 2 || s2.Next() != "b" {
		t.Fatalf("reloaded: %+v next %s", si, s2.Next())
	}
}

func TestUBootBootloaderSingleCopy(t *testing.T) {
	const size = 0x800
	c := mkEnvCopy(t, size, false, 0, 0xff, "bootpart=0:2", "bootlimit=3", "upgrade_available=0", "altbootcmd=run swap", "ustate=0")
	bl, p := envFile(t, size, [][]byte{c}, UBootSchemeConfig{})
	if d := bl.Describe(); !strings.Contains(d, "not power-cut safe") {
		t.Fatalf("Describe %q", d)
	}
	s, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.Scheme() != UBootSchemeBootcount {
		t.Fatal(s.Scheme())
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatal(err)
	}
	want := mkEnvCopy(t, size, false, 0, 0xff, "altbootcmd=run swap", "bootcount=0", "bootlimit=3", "bootpart=0:3", "upgrade_available=1", "ustate=1")
	if got := readFile(t, p); !bytes.Equal(got, want) {
		t.Fatalf("file\n%q\nwant\n%q", got[:100], want[:100])
	}
}

func TestUBootBootloaderOneCopyBad(t *testing.T) {
	const size = 0x400
	c0 := mkEnvCopy(t, size, true, 3, 0, raucEntries...)
	c0[100] ^= 0x40 // in the padding: only the CRC notices
	c1 := mkEnvCopy(t, size, true, 2, 0, "BOOT_A_LEFT=1", "BOOT_B_LEFT=3", "BOOT_ORDER=B A")
	bl, p := envFile(t, size, [][]byte{c0, c1}, UBootSchemeConfig{Scheme: UBootSchemeRAUC})
	s, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.Next() != "b" {
		t.Fatalf("the valid copy 1 says B first; next %s", s.Next())
	}
	if err := s.MarkSuccessful("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatal(err)
	}
	got := readFile(t, p)
	if !bytes.Equal(got[size:], c1) || got[4] != 3 {
		t.Fatalf("Save must rewrite the bad copy 0 with flags 3 and keep copy 1; flags %d", got[4])
	}
}

// Every refusal leaves the file as it was.
func TestUBootBootloaderBadInputWritesNothing(t *testing.T) {
	const size = 0x200
	mender := []string{"altbootcmd=run mender_altbootcmd; run bootcmd", "bootlimit=1", "mender_boot_part=2", "mender_boot_part_hex=2", "upgrade_available=0"}
	badCRC := func(c []byte) []byte { c = bytes.Clone(c); c[0] ^= 1; return c }
	for _, tc := range []struct {
		name   string
		copies [][]byte
		cfg    UBootSchemeConfig
		change func(ABState) error
		want   error
	}{
		{"both copies bad", [][]byte{badCRC(mkEnvCopy(t, size, true, 1, 0, raucEntries...)), badCRC(mkEnvCopy(t, size, true, 2, 0, raucEntries...))}, UBootSchemeConfig{}, nil, ErrCorrupt},
		{"single copy bad", [][]byte{badCRC(mkEnvCopy(t, size, false, 0, 0, raucEntries...))}, UBootSchemeConfig{}, nil, ErrCorrupt},
		{"blank device", [][]byte{make([]byte, size), make([]byte, size)}, UBootSchemeConfig{}, nil, ErrCorrupt},
		{"no scheme", [][]byte{mkEnvCopy(t, size, false, 0, 0, "bootcmd=boot")}, UBootSchemeConfig{}, nil, ErrNoScheme},
		{"two schemes", [][]byte{mkEnvCopy(t, size, false, 0, 0, append([]string{"BOOT_ORDER=A B", "BOOT_A_LEFT=3", "BOOT_B_LEFT=3"}, mender...)...)}, UBootSchemeConfig{}, nil, ErrNoScheme},
		{"rauc missing BOOT_B_LEFT", [][]byte{mkEnvCopy(t, size, false, 0, 0, "BOOT_ORDER=A B", "BOOT_A_LEFT=3")}, UBootSchemeConfig{}, nil, ErrNoScheme},
		{"mender missing bootlimit", [][]byte{mkEnvCopy(t, size, false, 0, 0, "mender_boot_part=2", "mender_boot_part_hex=2", "upgrade_available=0", "altbootcmd=x")}, UBootSchemeConfig{}, nil, ErrNoScheme},
		{"mender unknown partition", [][]byte{mkEnvCopy(t, size, false, 0, 0, "altbootcmd=x", "bootlimit=1", "mender_boot_part=5", "mender_boot_part_hex=5", "upgrade_available=0")}, UBootSchemeConfig{}, nil, ErrNoScheme},
		{"bootcount missing altbootcmd", [][]byte{mkEnvCopy(t, size, false, 0, 0, "bootpart=0:2", "bootlimit=3", "upgrade_available=0")}, UBootSchemeConfig{}, nil, ErrNoScheme},
		{"unknown scheme", [][]byte{mkEnvCopy(t, size, false, 0, 0, raucEntries...)}, UBootSchemeConfig{Scheme: "uboot-swupdate"}, nil, ErrNoScheme},
		{"scheme named but absent", [][]byte{mkEnvCopy(t, size, false, 0, 0, raucEntries...)}, UBootSchemeConfig{Scheme: UBootSchemeMender}, nil, ErrNoScheme},
		{"unknown slot", [][]byte{mkEnvCopy(t, size, true, 1, 0, raucEntries...), mkEnvCopy(t, size, true, 0, 0, raucEntries...)}, UBootSchemeConfig{},
			func(s ABState) error { return s.SetActive("c") }, ErrUnknownSlot},
		{"full", [][]byte{mkEnvCopy(t, size, true, 1, 0, nearlyFull(mender, size-5, 5)...), mkEnvCopy(t, size, true, 0, 0, mender...)}, UBootSchemeConfig{},
			func(s ABState) error { return s.SetActive("b") }, ErrFull},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bl, p := envFile(t, size, tc.copies, tc.cfg)
			before := readFile(t, p)
			s, err := bl.Load()
			if err == nil && tc.change != nil {
				err = tc.change(s)
				if err == nil {
					err = bl.Save(s)
				}
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			t.Log(err)
			if !bytes.Equal(readFile(t, p), before) {
				t.Fatal("the file changed")
			}
		})
	}
}

// nearlyFull adds a "pad" variable to entries so that they leave slack bytes
// of a data area free.
func nearlyFull(entries []string, data, slack int) []string {
	used := 1 + len("pad=") + 1
	for _, e := range entries {
		used += len(e) + 1
	}
	return append(slices.Clone(entries), "pad="+strings.Repeat("p", data-slack-used))
}

func TestUBootBootloaderRefusesStaleState(t *testing.T) {
	const size = 0x400
	bl, p := envFile(t, size, [][]byte{mkEnvCopy(t, size, true, 1, 0, raucEntries...), mkEnvCopy(t, size, true, 0, 0, raucEntries...)}, UBootSchemeConfig{})
	s, err := bl.Load()
	if err != nil {
		t.Fatal(err)
	}
	// Someone else (fw_setenv) writes copy 1 meanwhile.
	other := append(mkEnvCopy(t, size, true, 1, 0, raucEntries...), mkEnvCopy(t, size, true, 2, 0, "BOOT_A_LEFT=0", "BOOT_B_LEFT=3", "BOOT_ORDER=B")...)
	if err := os.WriteFile(p, other, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err == nil || !strings.Contains(err.Error(), "changed since it was loaded") {
		t.Fatalf("stale save: %v", err)
	}
	if !bytes.Equal(readFile(t, p), other) {
		t.Fatal("the file changed")
	}
	// A state from another environment is refused too.
	bl2, _ := envFile(t, size, [][]byte{mkEnvCopy(t, size, false, 0, 0, raucEntries...)}, UBootSchemeConfig{})
	if err := bl2.Save(s); err == nil {
		t.Fatal("saved another environment's state")
	}
}

func TestUBootBootloaderNegativeOffsetAndForceRO(t *testing.T) {
	const size = 0x200
	dir := t.TempDir()
	p := filepath.Join(dir, "disk")
	img := append(make([]byte, 0x1000), mkEnvCopy(t, size, false, 0, 0, raucEntries...)...)
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := ParseUBootEnvLocation(p + ":-0x200:0x200")
	if err != nil {
		t.Fatal(err)
	}
	bl := &UBootBootloader{Location: l}
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
	if got := readFile(t, p); !bytes.Equal(got[:0x1000], make([]byte, 0x1000)) || !bytes.Contains(got[0x1000:], []byte("BOOT_ORDER=B A\x00")) {
		t.Fatal("negative offset: wrong place written")
	}
	if _, err := (&UBootBootloader{Location: UBootEnvLocation{Areas: []UBootEnvArea{{Device: p, Offset: 0x1000, Size: 0x400}}}}).Load(); err == nil {
		t.Fatal("an area past the end of the file loaded")
	}
	// force_ro: only /dev/mmcblkNbootM names have it.
	if got := bl.forceRO(p); got != "" {
		t.Fatalf("force_ro for a file: %q", got)
	}
}

// The decoder never panics, and what it decodes encodes and decodes back to
// the same variables (or does not fit: a .flags item can grow, "a:r" is
// written "a:sr").
func FuzzDecodeUBootEnv(f *testing.F) {
	f.Add(mkEnvCopy(f, 64, false, 0, 0, "a=1", "b=2"), false)
	f.Add(append(mkEnvCopy(f, 64, true, 1, 0xff, "BOOT_ORDER=A B", ".flags=BOOT_ORDER:sr"), mkEnvCopy(f, 64, true, 0xff, 0, "x")...), true)
	f.Fuzz(func(t *testing.T, b []byte, redundant bool) {
		copies := [][]byte{b}
		if redundant {
			copies = [][]byte{b[:len(b)/2], b[len(b)/2 : len(b)/2*2]}
		}
		img, err := DecodeUBootEnv(copies, UBootFlagsIncremental)
		if err != nil {
			return
		}
		i, enc, err := img.EncodeNext(img.Env)
		if errors.Is(err, ErrFull) {
			return
		}
		if err != nil || len(enc) != img.Size {
			t.Fatalf("encode: %v", err)
		}
		copies[i] = enc
		img2, err := DecodeUBootEnv(copies, UBootFlagsIncremental)
		if err != nil || img2.Current != i || !img2.Env.Equal(img.Env) {
			t.Fatalf("re-decode: current %v, %v", img2, err)
		}
	})
}

// A power cut during Save: the new copy is written from its first byte on
// and cut after k bytes (a disk writes sectors in any order, but any prefix
// of a copy that is not all of it fails its CRC just the same). Redundant:
// every cut leaves the old state current. Single copy: every cut leaves a
// corrupt environment, which is why Describe says so.
func TestUBootBootloaderTornSave(t *testing.T) {
	const size = 0x200
	for _, redundant := range []bool{true, false} {
		copies := [][]byte{mkEnvCopy(t, size, redundant, 1, 0, raucEntries...)}
		if redundant {
			copies = append(copies, mkEnvCopy(t, size, true, 0, 0, raucEntries...))
		}
		bl, p := envFile(t, size, copies, UBootSchemeConfig{})
		before := readFile(t, p)
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
		after := readFile(t, p)
		start := 0
		if redundant {
			start = size
		}
		for k := 0; k < size; k++ {
			torn := bytes.Clone(before)
			copy(torn[start:start+k], after[start:start+k])
			if bytes.Equal(torn, after) || bytes.Equal(torn, before) {
				continue // the cut fell before the first or after the last changed byte
			}
			if err := os.WriteFile(p, torn, 0o644); err != nil {
				t.Fatal(err)
			}
			s2, err := bl.Load()
			switch {
			case redundant && err != nil:
				t.Fatalf("cut after %d bytes: %v", k, err)
			case redundant && s2.Next() != "a":
				t.Fatalf("cut after %d bytes: next %s, want the old state's a", k, s2.Next())
			case !redundant && !errors.Is(err, ErrCorrupt):
				t.Fatalf("single copy cut after %d bytes: %v", k, err)
			}
		}
	}
}

// TestUBootBootloaderLockDirMissing: a system without /var/lock (found by
// the U-Boot QEMU test: its slot's `cpinit begin` failed "open
// /var/lock/fw_printenv.lock: no such file or directory"). No tool can hold
// a lock on a file in a directory that does not exist, so Load and Save go
// on without it; a lock file that exists is still taken.
func TestUBootBootloaderLockDirMissing(t *testing.T) {
	const size = 0x800
	c := mkEnvCopy(t, size, false, 0, 0xff, "bootpart=0:2", "bootlimit=3", "upgrade_available=0", "altbootcmd=run swap", "ustate=0")
	bl, _ := envFile(t, size, [][]byte{c}, UBootSchemeConfig{})
	bl.LockPath = filepath.Join(t.TempDir(), "no-such-dir", "fw_printenv.lock")
	s, err := bl.Load()
	if err != nil {
		t.Fatalf("Load with the lock's directory missing: %v", err)
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Save(s); err != nil {
		t.Fatalf("Save with the lock's directory missing: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(bl.LockPath)); !os.IsNotExist(err) {
		t.Fatalf("the lock's directory was made (stat: %v)", err)
	}

	// A lock file in a directory that is not one is still an error.
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	bl.LockPath = filepath.Join(notDir, "fw_printenv.lock")
	if _, err := bl.Load(); err == nil || !strings.Contains(err.Error(), "lock") {
		t.Fatalf("Load with the lock under a regular file: %v, want a lock error", err)
	}
}
