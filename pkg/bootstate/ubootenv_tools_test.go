package bootstate

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

// The cross-check with the real tools (Debian: libubootenv-tool's
// fw_printenv/fw_setenv, u-boot-tools' mkenvimage), in both directions:
// what they write cpinit reads as they do, what cpinit writes they read as
// cpinit does, and the same change made by fw_setenv and by cpinit gives the
// same bytes (see ubootenv.go for the one place they may differ: padding
// after an environment that shrank).

type fwTools struct {
	printenvBin, setenvBin, mkenvimageBin string
}

func needFWTools(t *testing.T) fwTools {
	t.Helper()
	return fwTools{
		printenvBin:   testutil.LookPath(t, "fw_printenv"),
		setenvBin:     testutil.LookPath(t, "fw_setenv"),
		mkenvimageBin: testutil.LookPath(t, "mkenvimage"),
	}
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

// mkenvimage runs the real mkenvimage on text.
func (ft fwTools) mkenvimage(t *testing.T, text string, size int, redundant bool, pad string) []byte {
	t.Helper()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "env.txt"), filepath.Join(dir, "env.bin")
	if err := os.WriteFile(in, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-s", fmt.Sprint(size), "-o", out}
	if redundant {
		args = append(args, "-r")
	}
	if pad != "" {
		args = append(args, "-p", pad)
	}
	run(t, ft.mkenvimageBin, append(args, in)...)
	return readFile(t, out)
}

// fwConfig writes an fw_env.config for the file at p.
func fwConfig(t *testing.T, p string, size int, redundant bool) string {
	t.Helper()
	cfg := fmt.Sprintf("# made by the test\n%s\t0x0\t%#x\n", p, size)
	if redundant {
		cfg += fmt.Sprintf("%s\t%#x\t%#x\n", p, size, size)
	}
	c := p + ".config"
	if err := os.WriteFile(c, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return c
}

// printenv is fw_printenv's listing ("name=value" lines, its order).
func (ft fwTools) printenv(t *testing.T, cfg string) string {
	t.Helper()
	return string(run(t, ft.printenvBin, "-c", cfg, "-f", "/nonexistent-default-env"))
}

// listing is cpinit's variables in fw_printenv's form.
func listing(e *UBootEnv) string {
	var b strings.Builder
	for _, v := range e.Vars() {
		fmt.Fprintf(&b, "%s=%s\n", v.Name, v.Value)
	}
	return b.String()
}

// From the tools to cpinit: mkenvimage's images (file order, duplicates,
// comments, 0xff or 0x00 padding) decode to what fw_printenv prints.
func TestUBootEnvCrossMkenvimageToCpinit(t *testing.T) {
	ft := needFWTools(t)
	text := `# a comment
zeta=1
bootcmd=if test "${a}" = "b"; then echo x=y; fi; run mender_setup
BOOT_ORDER=B A

alpha=x=y
zeta=2
mender_boot_part_hex=a
`
	for _, redundant := range []bool{false, true} {
		for _, pad := range []string{"", "0"} {
			const size = 0x2000
			c := ft.mkenvimage(t, text, size, redundant, pad)
			copies := [][]byte{c}
			if redundant {
				copies = append(copies, c)
			}
			img, err := DecodeUBootEnv(copies, UBootFlagsIncremental)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(t.TempDir(), "env")
			if err := os.WriteFile(p, bytes.Join(copies, nil), 0o644); err != nil {
				t.Fatal(err)
			}
			if got, want := listing(img.Env), ft.printenv(t, fwConfig(t, p, size, redundant)); got != want {
				t.Errorf("redundant %v pad %q: cpinit reads\n%s\nfw_printenv\n%s", redundant, pad, got, want)
			}
			if wantPad := map[string]byte{"": 0xff, "0": 0}[pad]; img.Pad != wantPad {
				t.Errorf("pad %#x, want %#x", img.Pad, wantPad)
			}
		}
	}
}

// From cpinit to the tools: fw_printenv prints what cpinit wrote, flags and
// wrap-around included.
func TestUBootEnvCrossCpinitToFWPrintenv(t *testing.T) {
	ft := needFWTools(t)
	const size = 0x1000
	env, err := NewUBootEnv("zz", "last", "BOOT_ORDER", "A B", "a b", "spaces in name", "bootcmd", "run x; run y", "empty", "")
	if err != nil {
		t.Fatal(err)
	}
	// Copies with flags 0xfe and 0xff (current); cpinit's write goes to
	// copy 0 with flags 0, which must now be current for libubootenv.
	old, _ := NewUBootEnv("old", "1")
	c0 := encodeCopy(t, old, size, true, 0xfe, 0)
	c1 := encodeCopy(t, old, size, true, 0xff, 0)
	bl, p := envFile(t, size, [][]byte{c0, c1}, UBootSchemeConfig{})
	img, err := DecodeUBootEnv([][]byte{c0, c1}, UBootFlagsIncremental)
	if err != nil {
		t.Fatal(err)
	}
	i, b, err := img.EncodeNext(env)
	if err != nil || i != 0 || b[4] != 0 {
		t.Fatalf("copy %d flags %#x %v", i, b[4], err)
	}
	if err := bl.writeCopy(bl.Location.Areas[i], b); err != nil {
		t.Fatal(err)
	}
	cfg := fwConfig(t, p, size, true)
	if got, want := ft.printenv(t, cfg), listing(env); got != want {
		t.Fatalf("fw_printenv after cpinit's wrapped write:\n%s\nwant\n%s", got, want)
	}
	// fw_setenv then writes copy 1 with flags 1, and cpinit reads it.
	run(t, ft.setenvBin, "-c", cfg, "zz", "from fw_setenv")
	s, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	img2, err := DecodeUBootEnv([][]byte{s[:size], s[size:]}, UBootFlagsIncremental)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := img2.Env.Get("zz"); img2.Current != 1 || img2.Flags[1] != 1 || v != "from fw_setenv" {
		t.Fatalf("after fw_setenv: current %d flags %v zz=%q", img2.Current, img2.Flags, v)
	}
	// Both refuse an environment whose copies both fail their CRC.
	s[10] ^= 1
	s[size+10] ^= 1
	if err := os.WriteFile(p, s, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(ft.printenvBin, "-c", cfg, "-f", "/nonexistent-default-env").CombinedOutput(); err == nil {
		t.Fatalf("fw_printenv read a corrupt environment: %s", out)
	}
	if _, err := bl.Load(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("cpinit: %v", err)
	}
}

func encodeCopy(t *testing.T, env *UBootEnv, size int, redundant bool, flags, pad byte) []byte {
	t.Helper()
	off := ubootDataOffset(redundant)
	img := &UBootEnvImage{Size: size, Redundant: redundant, Pad: pad}
	if redundant {
		img.Flags[0] = flags - 1
	}
	_, b, err := img.EncodeNext(env)
	if err != nil {
		t.Fatal(err)
	}
	if redundant && b[4] != flags {
		t.Fatalf("flags %d", b[4])
	}
	_ = off
	return b
}

// The same change through fw_setenv and through cpinit: the same bytes.
func TestUBootEnvCrossSameChangeSameBytes(t *testing.T) {
	ft := needFWTools(t)
	const size = 0x2000
	rauc := "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nbootcmd=run rauc_boot\n"
	mender := "altbootcmd=run mender_altbootcmd; run bootcmd\nbootlimit=1\nbootcount=0\nupgrade_available=0\nmender_boot_part=2\nmender_boot_part_hex=2\nbootcmd=run mender_setup\n"
	menderNoCount := strings.Replace(mender, "bootcount=0\n", "", 1)
	plain := "bootpart=0:2\nbootlimit=3\nupgrade_available=0\naltbootcmd=run swap_bootpart\nustate=0\nbootcmd=run distro_bootcmd\n"
	// One .flags item: libubootenv 0.3.2 (Debian 12) keeps only the first
	// and drops the rest at every write (fixed in 0.3.3, "Fix parsing
	// multiple .flags variables"); cpinit keeps them all, as 0.3.3+.
	flagged := ".flags=serial#:sr\nserial#=0042\nipaddr=10.0.0.7\n" + mender
	for _, tc := range []struct {
		name, text string
		op         func(ABState) error
		// The fw_setenv run doing the same (the agent's own; RAUC runs
		// fw_setenv once per variable, here one run makes one store).
		setenv [][]string
	}{
		{"rauc mark-active B", rauc, func(s ABState) error { return s.SetActive("b") },
			[][]string{{"-s", "BOOT_B_LEFT=3\nBOOT_ORDER=B A\n"}}},
		{"rauc mark-good A", strings.Replace(rauc, "BOOT_A_LEFT=3", "BOOT_A_LEFT=1", 1), func(s ABState) error { return s.MarkSuccessful("a") },
			[][]string{{"BOOT_A_LEFT", "3"}}},
		{"rauc mark-bad B (shrinks)", rauc, func(s ABState) error { return s.SetUnbootable("b") },
			[][]string{{"-s", "BOOT_ORDER=A\nBOOT_B_LEFT=0\n"}}},
		{"mender install B", mender, func(s ABState) error { return s.SetActive("b") },
			[][]string{{"-s", "mender_boot_part=3\nmender_boot_part_hex=3\nupgrade_available=1\nbootcount=0\n"}}},
		{"mender install B, new bootcount", menderNoCount, func(s ABState) error { return s.SetActive("b") },
			[][]string{{"-s", "mender_boot_part=3\nmender_boot_part_hex=3\nupgrade_available=1\nbootcount=0\n"}}},
		{"mender commit", strings.Replace(mender, "upgrade_available=0", "upgrade_available=1", 1), func(s ABState) error { return s.MarkSuccessful("a") },
			[][]string{{"upgrade_available", "0"}}},
		{"mender rollback", strings.Replace(strings.Replace(strings.Replace(mender, "upgrade_available=0", "upgrade_available=1", 1), "part=2", "part=3", 1), "hex=2", "hex=3", 1),
			func(s ABState) error { return s.FallBackFrom("b") },
			[][]string{{"-s", "mender_boot_part=2\nmender_boot_part_hex=2\nupgrade_available=0\n"}}},
		{"bootcount set-active B", plain, func(s ABState) error { return s.SetActive("b") },
			[][]string{{"-s", "bootpart=0:3\nupgrade_available=1\nbootcount=0\nustate=1\n"}}},
		{".flags kept", flagged, func(s ABState) error { return s.SetActive("b") },
			[][]string{{"-s", "mender_boot_part=3\nmender_boot_part_hex=3\nupgrade_available=1\nbootcount=0\n"}}},
	} {
		for _, layout := range []string{"redundant, copy 0 current", "redundant, copy 1 current", "single"} {
			for _, pad := range []string{"", "0"} {
				t.Run(fmt.Sprintf("%s/%s/pad%q", tc.name, layout, pad), func(t *testing.T) {
					redundant := layout != "single"
					c := ft.mkenvimage(t, tc.text, size, redundant, pad)
					copies := [][]byte{c}
					if redundant {
						c1 := bytes.Clone(c)
						if layout == "redundant, copy 1 current" {
							c1[4] = 2
							// mkenvimage's CRC covers only the data, so the
							// flags byte can change freely.
						}
						copies = append(copies, c1)
					}
					// fw_setenv's file.
					dir := t.TempDir()
					pf := filepath.Join(dir, "fw")
					if err := os.WriteFile(pf, bytes.Join(copies, nil), 0o644); err != nil {
						t.Fatal(err)
					}
					cfg := fwConfig(t, pf, size, redundant)
					for _, args := range tc.setenv {
						if args[0] == "-s" {
							script := filepath.Join(dir, "script")
							if err := os.WriteFile(script, []byte(args[1]), 0o644); err != nil {
								t.Fatal(err)
							}
							args = []string{"-s", script}
						}
						run(t, ft.setenvBin, append([]string{"-c", cfg}, args...)...)
					}
					// cpinit's file.
					bl, pc := envFile(t, size, copies, UBootSchemeConfig{})
					s, err := bl.Load()
					if err != nil {
						t.Fatal(err)
					}
					if err := tc.op(s); err != nil {
						t.Fatal(err)
					}
					if err := bl.Save(s); err != nil {
						t.Fatal(err)
					}
					fw, cp := readFile(t, pf), readFile(t, pc)
					compareWrites(t, ft, copies, fw, cp, s.(UBootState).Env(), redundant, cfg, fwConfig(t, pc, size, redundant))
				})
			}
		}
	}
}

// compareWrites checks one change written by fw_setenv (fw) and by cpinit
// (cp) from the same copies. libubootenv 0.3.2 builds the new copy in a
// malloc'd buffer it never clears and writes it whole, so its padding after
// the entries is whatever the heap held: often the old copy's bytes, at
// times malloc's own chunk headers; the CRC covers it. So: the same copy is
// written, with the same flags byte and the same bytes up to the end of the
// entries; both CRCs hold; each tool reads the other's file as its own; and
// where fw_setenv's padding happens to be clean, the copies are equal to the
// last byte, CRC included.
func compareWrites(t *testing.T, ft fwTools, old [][]byte, fw, cp []byte, env *UBootEnv, redundant bool, fwCfg, cpCfg string) {
	t.Helper()
	size := len(old[0])
	written := func(b []byte) int {
		w := -1
		for i := range old {
			if !bytes.Equal(b[i*size:(i+1)*size], old[i]) {
				if w >= 0 {
					t.Fatal("both copies written by one change")
				}
				w = i
			}
		}
		return w
	}
	wf, wc := written(fw), written(cp)
	if wf != wc || wf < 0 {
		t.Fatalf("fw_setenv wrote copy %d, cpinit copy %d", wf, wc)
	}
	f, c := fw[wf*size:(wf+1)*size], cp[wc*size:(wc+1)*size]
	off := ubootDataOffset(redundant)
	n := off + env.EncodedLen()
	if !bytes.Equal(f[4:n], c[4:n]) {
		t.Fatalf("flags or entries differ:\nfw_setenv %s\ncpinit    %s", dumpDiff(f[4:n], c[4:n]), dumpDiff(c[4:n], f[4:n]))
	}
	for name, b := range map[string][]byte{"fw_setenv": fw, "cpinit": cp} {
		cs := [][]byte{b[:size]}
		if redundant {
			cs = append(cs, b[size:])
		}
		img, err := DecodeUBootEnv(cs, UBootFlagsIncremental)
		if err != nil || img.Current != wf {
			t.Fatalf("%s's file: current %v, %v; want the written copy %d", name, img, err, wf)
		}
	}
	if got, want := ft.printenv(t, cpCfg), ft.printenv(t, fwCfg); got != want || got != listing(env) {
		t.Fatalf("fw_printenv of cpinit's file\n%s\nof fw_setenv's\n%s\ncpinit's variables\n%s", got, want, listing(env))
	}
	if clean := bytes.Count(f[n:], c[n:n+1]) == size-n; clean {
		if !bytes.Equal(f, c) {
			t.Fatalf("fw_setenv's padding is clean, yet the copies differ: %s", dumpDiff(f, c))
		}
		t.Logf("copy %d byte-equal, CRC included", wf)
	} else {
		t.Logf("copy %d equal up to the end of the entries (%d bytes); fw_setenv's padding holds stale heap bytes", wf, n)
	}
}

// dumpDiff shows the first differing region of a, for messages.
func dumpDiff(a, b []byte) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	lo, hi := max(0, i-16), min(len(a), i+48)
	return fmt.Sprintf("at %#x: %q", i, a[lo:hi])
}
