package dmsnap

import (
	"context"
	"errors"
	"strings"
	"testing"
)

var fakeDisk = Dev{253, 0}

func fakeConfig() Config {
	segs := make([]Segment, 8)
	for i := range segs {
		segs[i] = Segment{Dev: fakeDisk, Start: uint64(400000 + 2048*((i*5)%8)), Length: 2048}
	}
	return Config{Origin: fakeDisk, OriginSectors: 524288, Cow: segs, ChunkSectors: 8}
}

type fakeScenario struct {
	name  string
	setup func(t *testing.T, f *fakeDM)
	op    func(k *Checkpoint) error
}

func run(t *testing.T, f *fakeDM, op func(k *Checkpoint) error) error {
	t.Helper()
	k, err := New(f.client(), fakeConfig())
	if err != nil {
		t.Fatal(err)
	}
	return op(k)
}

func must(t *testing.T, f *fakeDM, op func(k *Checkpoint) error) {
	t.Helper()
	if err := run(t, f, op); err != nil {
		t.Fatal(err)
	}
}

var (
	opStart    = func(k *Checkpoint) error { return k.StartCheckpoint(context.Background()) }
	opReattach = func(k *Checkpoint) error { return k.Reattach(context.Background()) }
	opCommit   = func(k *Checkpoint) error { return k.Commit(context.Background()) }
	opMerge    = func(k *Checkpoint) error {
		if err := k.StartMerge(context.Background()); err != nil {
			return err
		}
		return k.WaitMerge(context.Background(), nil)
	}
	opFinish   = func(k *Checkpoint) error { return k.FinishMerge(context.Background()) }
	opTeardown = func(k *Checkpoint) error { return k.Teardown(context.Background()) }
	opPlain    = func(k *Checkpoint) error { return k.MapPlain(context.Background()) }
)

func setOpen(f *fakeDM, name string, n int) { f.devs[name].open = n }

var fakeScenarios = []fakeScenario{
	{"start from nothing", func(*testing.T, *fakeDM) {}, opStart},
	{"start over a mounted plain origin", func(t *testing.T, f *fakeDM) {
		must(t, f, opPlain)
		setOpen(f, "cp-origin", 1)
	}, opStart},
	{"reattach after reboot", func(t *testing.T, f *fakeDM) {
		must(t, f, opStart)
		f.reboot()
	}, opReattach},
	{"commit while mounted", func(t *testing.T, f *fakeDM) {
		must(t, f, opStart)
		setOpen(f, "cp-origin", 1)
	}, opCommit},
	{"commit after reboot", func(t *testing.T, f *fakeDM) {
		must(t, f, opStart)
		f.reboot()
	}, opCommit},
	{"merge while attached", func(t *testing.T, f *fakeDM) { must(t, f, opStart) }, opMerge},
	{"merge at boot", func(t *testing.T, f *fakeDM) {
		must(t, f, opStart)
		f.reboot()
	}, opMerge},
	{"finish merge while mounted", func(t *testing.T, f *fakeDM) {
		must(t, f, opStart)
		must(t, f, opMerge)
		setOpen(f, "cp-origin", 1)
	}, opFinish},
	{"teardown attached", func(t *testing.T, f *fakeDM) { must(t, f, opStart) }, opTeardown},
	{"teardown merging", func(t *testing.T, f *fakeDM) {
		must(t, f, opStart)
		must(t, f, opMerge)
	}, opTeardown},
	{"map plain", func(*testing.T, *fakeDM) {}, opPlain},
}

// Every operation, interrupted before each of its state-changing steps
// (once, so its error path runs; or for good, as a crash), converges when
// run again to the state an uninterrupted run reaches, and never breaks the
// ordering rules the fake checks.
func TestOperationsConvergeAfterInterruption(t *testing.T) {
	for _, sc := range fakeScenarios {
		t.Run(sc.name, func(t *testing.T) {
			ref := newFakeDM(t, 16384)
			sc.setup(t, ref)
			ref.steps = 0
			must(t, ref, sc.op)
			want := ref.state()
			total := ref.steps
			if len(ref.violations) > 0 {
				t.Fatalf("uninterrupted run violates ordering: %v", ref.violations)
			}
			must(t, ref, sc.op) // idempotent
			if got := ref.state(); got != want {
				t.Fatalf("second run changed the state:\n%s\nwant\n%s", got, want)
			}
			if total == 0 {
				return
			}
			for _, die := range []bool{false, true} {
				for n := 1; n <= total; n++ {
					f := newFakeDM(t, 16384)
					sc.setup(t, f)
					f.steps, f.failAt, f.die = 0, n, die
					err := run(t, f, sc.op)
					if err == nil {
						t.Errorf("die=%v step %d: operation hid the failure", die, n)
					}
					f.failAt, f.dead = 0, false
					if err := run(t, f, sc.op); err != nil {
						t.Errorf("die=%v step %d: re-run: %v\nstate:\n%s", die, n, err, f.state())
						continue
					}
					if got := f.state(); got != want {
						t.Errorf("die=%v step %d: re-run reached\n%s\nwant\n%s", die, n, got, want)
					}
					if len(f.violations) > 0 {
						t.Errorf("die=%v step %d: %s", die, n, strings.Join(f.violations, "; "))
					}
				}
			}
		})
	}
}

func TestOperationsRefuse(t *testing.T) {
	ctx := context.Background()
	f := newFakeDM(t, 16384)
	must(t, f, opStart)
	setOpen(f, "cp-origin", 1)
	if err := run(t, f, func(k *Checkpoint) error { return k.StartMerge(ctx) }); !errors.Is(err, ErrOriginInUse) {
		t.Errorf("merge under a mounted origin: %v", err)
	}
	setOpen(f, "cp-origin", 0)
	must(t, f, opCommit)
	for name, op := range map[string]func(k *Checkpoint) error{"reattach": opReattach, "merge": opMerge} {
		if err := run(t, f, op); !errors.Is(err, ErrUnexpectedState) {
			t.Errorf("%s after commit: %v", name, err)
		}
	}
	// After a reboot the COW still holds the (committed) checkpoint: the
	// caller's state machine, not this package, must not merge it.
	f.reboot()
	clear(f.header)
	if err := run(t, f, opReattach); !errors.Is(err, ErrNoCheckpoint) {
		t.Errorf("reattach of a zero COW: %v", err)
	}
	copy(f.header, "garbage garbage!")
	if err := run(t, f, opMerge); !errors.Is(err, ErrNoCheckpoint) {
		t.Errorf("merge of a garbage COW: %v", err)
	}
	ne.PutUint32(f.header[0:], cowMagic)
	ne.PutUint32(f.header[4:], 0)
	ne.PutUint32(f.header[8:], 1)
	if err := run(t, f, opMerge); !errors.Is(err, ErrSnapshotInvalid) {
		t.Errorf("merge of an invalidated COW: %v", err)
	}
	ne.PutUint32(f.header[4:], 1)
	ne.PutUint32(f.header[12:], 16)
	if err := run(t, f, opMerge); !errors.Is(err, ErrUnexpectedState) {
		t.Errorf("merge with another chunk size: %v", err)
	}
	if len(f.violations) > 0 {
		t.Errorf("violations: %v", f.violations)
	}
}
