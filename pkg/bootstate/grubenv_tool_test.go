package bootstate

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
)

// Cross-checks against GRUB's own grub-editenv (Debian package
// grub-common), run for real: it writes, cpinit reads; cpinit writes, it
// reads; and for the same changes both write the same bytes.

func grubEditenvTool(t *testing.T) string {
	t.Helper()
	t.Parallel() // each test runs the tool a few hundred times, ~15 ms a run
	if _, err := exec.LookPath("grub-editenv"); err != nil && !testutil.InCI() {
		t.Skipf("SKIPPING the cross-check against GRUB's grub-editenv: not installed (%v); install the Debian package grub-common (apt-get install --no-install-recommends grub-common)", err)
	}
	return testutil.LookPath(t, "grub-editenv") // fails in CI when missing
}

// grubEditenv runs grub-editenv FILE args... and returns its stdout; err is
// non-nil when it exits non-zero (stderr in the message).
func grubEditenv(t *testing.T, tool, file string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(tool, append([]string{file}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), errors.New(strings.TrimSpace(stderr.String()) + ": " + err.Error())
	}
	return stdout.String(), nil
}

func grubMustEditenv(t *testing.T, tool, file string, args ...string) string {
	t.Helper()
	out, err := grubEditenv(t, tool, file, args...)
	if err != nil {
		t.Fatalf("grub-editenv %s %q: %v", file, args, err)
	}
	return out
}

// The committed goldens are what the installed grub-editenv writes.
func TestGrubEnvGoldensFromTool(t *testing.T) {
	tool := grubEditenvTool(t)
	for _, g := range grubEnvGoldens {
		t.Run(g.file, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "grubenv")
			grubMustEditenv(t, tool, f, "create")
			if len(g.sets) > 0 {
				args := []string{"set"}
				for _, v := range g.sets {
					args = append(args, v.Name+"="+v.Value)
				}
				grubMustEditenv(t, tool, f, args...)
			}
			got, _ := os.ReadFile(f)
			if want := grubReadGolden(t, g.file); !bytes.Equal(got, want) {
				t.Fatalf("grub-editenv wrote\n%q\ntestdata has\n%q", got, want)
			}
		})
	}
}

// Random sequences of set and unset, by the tool on a file and by cpinit
// on its own copy: after every step the bytes are identical, cpinit
// decodes the tool's file to what `grub-editenv list` prints, and when the
// tool says "environment block too small" cpinit says ErrFull and neither
// block changed. Run on the tool's 1024-byte block and on a 512-byte one
// (which fills up).
func TestGrubEnvSameBytesAsTool(t *testing.T) {
	tool := grubEditenvTool(t)
	for _, size := range []int{GrubEnvSize, 512} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "grubenv")
			ours, err := NewGrubEnv(size)
			if err != nil {
				t.Fatal(err)
			}
			if size == GrubEnvSize {
				grubMustEditenv(t, tool, f, "create")
			} else if err := os.WriteFile(f, ours.Encode(), 0o644); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(f); !bytes.Equal(got, ours.Encode()) {
				t.Fatalf("initial block differs:\n tool %q\n ours %q", got, ours.Encode())
			}
			r := rand.New(rand.NewPCG(16, uint64(size)))
			fulls := 0
			for i, op := range grubEnvRandomOps(r, 80) {
				before, _ := os.ReadFile(f)
				_, toolErr := grubEditenv(t, tool, f, op...)
				ourErr := grubApplyEditenvOp(ours, op)
				got, _ := os.ReadFile(f)
				switch {
				case toolErr != nil && errors.Is(ourErr, ErrFull) && strings.Contains(toolErr.Error(), "environment block too small"):
					fulls++
					if !bytes.Equal(got, before) {
						t.Fatalf("step %d %q: the tool failed but changed the file", i, op)
					}
				case toolErr != nil || ourErr != nil:
					t.Fatalf("step %d %q: tool: %v; cpinit: %v", i, op, toolErr, ourErr)
				}
				if !bytes.Equal(got, ours.Encode()) {
					t.Fatalf("step %d %q: bytes differ:\n tool %q\n ours %q", i, op, got, ours.Encode())
				}
				d, err := DecodeGrubEnv(got)
				if err != nil {
					t.Fatalf("step %d: cpinit refuses the tool's block: %v", i, err)
				}
				if list := grubMustEditenv(t, tool, f, "list"); list != d.List() {
					t.Fatalf("step %d: grub-editenv list\n%q\ncpinit decodes\n%q", i, list, d.List())
				}
			}
			if size == 512 && fulls == 0 {
				t.Fatal("the 512-byte block never filled up: the ErrFull path went untested")
			}
			t.Logf("%d-byte block: 80 steps, %d refused as too small by both", size, fulls)
		})
	}
}

// cpinit's encoder writes, grub-editenv lists: the variables it prints are
// the ones cpinit was given, formatted independently of cpinit's decoder.
func TestGrubEnvToolReadsOurs(t *testing.T) {
	tool := grubEditenvTool(t)
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 20 {
		e, _ := NewGrubEnv(GrubEnvSize)
		var want []GrubEnvVar
		for range 1 + r.IntN(8) {
			name := []string{"ORDER", "A_OK", "B_TRY", "saved_entry", "k", "x_y"}[r.IntN(6)]
			var val []byte
			for range r.IntN(30) {
				const alphabet = "ab =#\\\n\t\"'$01"
				val = append(val, alphabet[r.IntN(len(alphabet))])
			}
			v := GrubEnvVar{name, string(val)}
			if err := e.Set(v); err != nil {
				t.Fatal(err)
			}
			if j := grubEnvVarIndex(want, name); j >= 0 {
				want[j] = v
			} else {
				want = append(want, v)
			}
		}
		f := filepath.Join(t.TempDir(), "grubenv")
		if err := os.WriteFile(f, e.Encode(), 0o644); err != nil {
			t.Fatal(err)
		}
		var sb strings.Builder
		for _, v := range want {
			sb.WriteString(v.Name + "=" + v.Value + "\n") // print_var's "%s=%s\n"
		}
		if got := grubMustEditenv(t, tool, f, "list"); got != sb.String() {
			t.Fatalf("round %d: grub-editenv list\n%q\nwant\n%q", round, got, sb.String())
		}
	}
}

// GRUB's lenient reading and editing, on blocks cpinit would refuse:
// random damage to a good block, then `grub-editenv list` against the port
// of grub_envblk_iterate (what GrubRaucBoot's load_env uses), and
// `grub-editenv set` / `unset` against the ports of grub_envblk_set and
// _delete (what its save_env uses): same output, same bytes, same
// failures.
func TestGrubEnvPortMatchesToolOnDamagedBlocks(t *testing.T) {
	tool := grubEditenvTool(t)
	good := grubReadGolden(t, "escapes.grubenv")
	r := rand.New(rand.NewPCG(5, 6))
	dir := t.TempDir()
	refused := 0
	for round := range 80 {
		b := bytes.Clone(good)
		for range 1 + r.IntN(4) {
			p := r.IntN(300)
			if round%10 == 0 {
				p = r.IntN(len(b))
			}
			b[p] = "\n=\\#x\x00 "[r.IntN(7)]
		}
		if round%15 == 0 { // sometimes no padding at all
			for i := 900; i < len(b); i++ {
				b[i] = 'p'
			}
		}
		f := filepath.Join(dir, "grubenv")
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		list, lerr := grubEditenv(t, tool, f, "list")
		var sb strings.Builder
		grubEnvblkIterate(b, func(n, v string) bool { sb.WriteString(n + "=" + v + "\n"); return false })
		if (lerr != nil) != !grubEnvOpen(b) || lerr == nil && list != sb.String() {
			t.Fatalf("round %d %q:\ngrub-editenv list: %q (%v)\nport: %q", round, b, list, lerr, sb.String())
		}
		if _, err := DecodeGrubEnv(b); err != nil {
			refused++
		}

		name := []string{"A_OK", "ORDER", "new", "odd", "B_TRY"}[r.IntN(5)]
		val := []string{"1", "B A", "", "a\\b\nc", strings.Repeat("v", 40)}[r.IntN(5)]
		want := bytes.Clone(b)
		ok := grubEnvblkSet(want, name, val)
		_, serr := grubEditenv(t, tool, f, "set", name+"="+val)
		got, _ := os.ReadFile(f)
		if ok != (serr == nil) || !ok && !bytes.Equal(got, b) || ok && !bytes.Equal(got, want) {
			t.Fatalf("round %d set %s=%q on %q:\ntool %v %q\nport %v %q", round, name, val, b, serr, got, ok, want)
		}

		os.WriteFile(f, b, 0o644)
		want = bytes.Clone(b)
		grubEnvblkDelete(want, name)
		_, uerr := grubEditenv(t, tool, f, "unset", name)
		got, _ = os.ReadFile(f)
		if (uerr == nil) != grubEnvOpen(b) || uerr == nil && !bytes.Equal(got, want) {
			t.Fatalf("round %d unset %s on %q:\ntool %v %q\nport %q", round, name, b, uerr, got, want)
		}
	}
	if refused == 0 {
		t.Fatal("no damaged block was one cpinit refuses: the damage is too mild to test anything")
	}
	t.Logf("80 damaged blocks, %d of them refused by DecodeGrubEnv", refused)
}

// What RAUC does through grub-editenv (src/bootloaders/grub.c) and what
// cpinit's ABState does write the same bytes, step by step, along an
// update's life: install marks the target bad then primary, GRUB boots
// it, mark-good; then a second update that fails and falls back.
func TestGrubRaucMatchesRAUCCommands(t *testing.T) {
	tool := grubEditenvTool(t)
	f := filepath.Join(t.TempDir(), "grubenv")
	grubMustEditenv(t, tool, f, "create")
	grubMustEditenv(t, tool, f, "set", "ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0")
	b, _ := os.ReadFile(f)
	e, err := DecodeGrubEnv(b)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewGrubRaucState(e, nil)
	if err != nil {
		t.Fatal(err)
	}
	boot := func() {
		// GRUB at boot, played by GrubRaucBoot on cpinit's copy and by
		// grub-editenv with the values its script saves.
		_, after, saved := GrubRaucBoot(s.Env().Encode(), nil)
		if !saved {
			t.Fatal("save_env failed")
		}
		a, _ := DecodeGrubEnv(after)
		args := []string{"set"}
		for _, n := range []string{"A_TRY", "A_OK", "B_TRY", "B_OK", "ORDER"} {
			v, _ := a.Get(n)
			args = append(args, n+"="+v)
		}
		grubMustEditenv(t, tool, f, args...)
		if s, err = NewGrubRaucState(a, nil); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		what string
		rauc []string // grub-editenv arguments RAUC runs
		ours func() error
	}{
		{"install: mark-bad B (r_grub_set_state bad)", []string{"set", "B_OK=0", "B_TRY=0"}, func() error { return s.SetUnbootable("b") }},
		{"install: mark-active B (r_grub_set_primary)", []string{"set", "B_OK=1", "B_TRY=0", "ORDER=B A"}, func() error { return s.SetActive("b") }},
		{"GRUB boots B", nil, nil},
		{"mark-good B (r_grub_set_state good)", []string{"set", "B_OK=1", "B_TRY=0"}, func() error { return s.MarkSuccessful("b") }},
		{"GRUB boots B", nil, nil},
		{"mark-good B", []string{"set", "B_OK=1", "B_TRY=0"}, func() error { return s.MarkSuccessful("b") }},
		{"install: mark-bad A", []string{"set", "A_OK=0", "A_TRY=0"}, func() error { return s.SetUnbootable("a") }},
		{"install: mark-active A", []string{"set", "A_OK=1", "A_TRY=0", "ORDER=A B"}, func() error { return s.SetActive("a") }},
		{"GRUB boots A (which crashes)", nil, nil},
		{"GRUB boots B", nil, nil},
		{"fall back from A: mark-active B, mark-bad A", []string{"set", "B_OK=1", "B_TRY=0", "ORDER=B A", "A_OK=0", "A_TRY=0"}, func() error { return s.FallBackFrom("a") }},
	}
	for i, st := range steps {
		if st.rauc == nil {
			boot()
		} else {
			grubMustEditenv(t, tool, f, st.rauc...)
			if err := st.ours(); err != nil {
				t.Fatalf("step %d %s: %v", i, st.what, err)
			}
		}
		got, _ := os.ReadFile(f)
		if !bytes.Equal(got, s.Env().Encode()) {
			t.Fatalf("step %d %s:\n RAUC's %q\ncpinit's %q", i, st.what, got, s.Env().Encode())
		}
	}
	if s.Next() != "b" {
		t.Fatalf("after the fallback GRUB would boot %q, want b", s.Next())
	}
}

// A block cpinit's Bootloader saved is one grub-editenv lists as expected,
// and a block grub-editenv then changes is one cpinit loads.
func TestGrubEnvFileWithTool(t *testing.T) {
	tool := grubEditenvTool(t)
	f := filepath.Join(t.TempDir(), "grubenv")
	grubMustEditenv(t, tool, f, "create")
	fb := &GrubEnvFile{Path: f}
	if _, err := fb.Load(); !errors.Is(err, ErrNoScheme) {
		t.Fatalf("Load of grub-editenv's empty block: %v, want ErrNoScheme", err)
	}
	grubMustEditenv(t, tool, f, "set", "ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0", "saved_entry=0")
	s, err := fb.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetActive("b"); err != nil {
		t.Fatal(err)
	}
	if err := fb.Save(s); err != nil {
		t.Fatal(err)
	}
	want := "ORDER=B A\nA_OK=1\nA_TRY=0\nB_OK=1\nB_TRY=0\nsaved_entry=0\n"
	if got := grubMustEditenv(t, tool, f, "list"); got != want {
		t.Fatalf("grub-editenv list after cpinit's Save:\n%q\nwant\n%q", got, want)
	}
	grubMustEditenv(t, tool, f, "set", "B_TRY=1")
	s, err = fb.Load()
	if err != nil {
		t.Fatal(err)
	}
	if si, _ := SlotOf(s, "b"); si.Bootable || s.Next() != "a" {
		t.Fatalf("after the tool set B_TRY=1: b %+v, next %q", si, s.Next())
	}
}
