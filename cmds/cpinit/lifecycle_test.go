package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"golang.org/x/sys/unix"
)

func TestChunkFor(t *testing.T) {
	for bs, want := range map[uint32]uint32{512: 1, 1024: 2, 2048: 4, 4096: 8, 16384: 8, 65536: 8} {
		if got := chunkFor(bs); got != want {
			t.Errorf("chunkFor(%d) = %d sectors, want %d", bs, got, want)
		}
	}
}

func TestDefaultCOWSize(t *testing.T) {
	for _, c := range []struct{ free, reserve, want uint64 }{
		{1 << 30, 128 << 20, 448 << 20},
		{100 << 20, 128 << 20, 0},
		{(128 << 20) + 3<<20 + 5, 128 << 20, 1 << 20},
	} {
		if got := defaultCOWSize(c.free, c.reserve); got != c.want {
			t.Errorf("defaultCOWSize(%d, %d) = %d, want %d", c.free, c.reserve, got, c.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"4096": 4096, "64M": 64 << 20, "1G": 1 << 30, "2K": 2048} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "1X", "M", "99999999999T"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

func TestCheckCOWFits(t *testing.T) {
	const mib = 1 << 20
	if err := checkCOWFits(64*mib, 200*mib, 128*mib); err != nil {
		t.Fatalf("64 MiB in 200 MiB free with 128 MiB reserve: %v", err)
	}
	for _, c := range []struct{ want, free, reserve uint64 }{
		{100 * mib, 200 * mib, 128 * mib},
		{300 * mib, 200 * mib, 0},
		{16 * mib, 10 * mib, 128 * mib},
	} {
		err := checkCOWFits(c.want, c.free, c.reserve)
		if err == nil || !strings.Contains(err.Error(), "does not fit") || !strings.Contains(err.Error(), "--size") {
			t.Errorf("checkCOWFits(%d, %d, %d) = %v", c.want>>20, c.free>>20, c.reserve>>20, err)
		}
	}
}

func TestSplitMountOpts(t *testing.T) {
	for in, want := range map[string]struct {
		flags uintptr
		data  string
	}{
		"":                              {0, ""},
		"noatime":                       {unix.MS_NOATIME, ""},
		"errors=remount-ro":             {0, "errors=remount-ro"},
		"noatime,errors=remount-ro,rw,": {unix.MS_NOATIME, "errors=remount-ro"},
		"discard,lazytime,commit=30":    {unix.MS_LAZYTIME, "discard,commit=30"},
	} {
		f, d := splitMountOpts(in)
		if f != want.flags || d != want.data {
			t.Errorf("splitMountOpts(%q) = %#x, %q; want %#x, %q", in, f, d, want.flags, want.data)
		}
	}
}

func TestMapsOneToOne(t *testing.T) {
	ud := userdata{Dev: dmsnap.Dev{Major: 254, Minor: 32}, Sectors: 1000}
	tbl := func(typ, params string, length uint64) []dmsnap.TargetSpec {
		return []dmsnap.TargetSpec{{Start: 0, Length: length, Type: typ, Params: params}}
	}
	for _, c := range []struct {
		tbl          []dmsnap.TargetSpec
		plain, store bool
	}{
		{tbl("linear", "254:32 0", 1000), true, true},
		{tbl("snapshot-origin", "254:32", 1000), false, true},
		{tbl("linear", "254:32 8", 1000), false, false},
		{tbl("linear", "254:48 0", 1000), false, false},
		{tbl("linear", "254:32 0", 999), false, false},
		{tbl("snapshot-merge", "254:32 254:33 P 8", 1000), false, false},
		{append(tbl("linear", "254:32 0", 500), dmsnap.TargetSpec{Start: 500, Length: 500, Type: "linear", Params: "254:32 500"}), false, false},
	} {
		if got := isPlainLinear(c.tbl, ud); got != c.plain {
			t.Errorf("isPlainLinear(%v) = %v", c.tbl, got)
		}
		if got := mapsOneToOne(c.tbl, ud, true); got != c.store {
			t.Errorf("mapsOneToOne(%v, origin) = %v", c.tbl, got)
		}
	}
}

func TestNotATrial(t *testing.T) {
	rec := func(st bootstate.State, target string, active bool) *bootstate.Record {
		r := bootstate.NewFreshRecord()
		r.State, r.TargetSlot, r.Active = st, target, active
		return &r
	}
	for _, c := range []struct {
		name   string
		r      *bootstate.Record
		booted string
		skip   string // substring of the reason; "" = commit goes ahead
	}{
		{"fresh", rec(bootstate.StateFresh, "", false), "_a", "no checkpoint"},
		{"trial boot", rec(bootstate.StateCheckpointing, "_b", true), "_b", ""},
		{"trial boot, suffix without underscore", rec(bootstate.StateCheckpointing, "_b", true), "b", ""},
		{"old slot", rec(bootstate.StateCheckpointing, "_b", true), "_a", "not the update's slot"},
		{"armed", rec(bootstate.StateCheckpointing, "_b", false), "_b", "armed"},
		{"rollback pending", rec(bootstate.StateRollbackPending, "_b", true), "_b", "rollback is pending"},
		{"committed, cleanup may be left", rec(bootstate.StateCommitted, "_b", false), "_b", ""},
	} {
		got := notATrial(c.r, c.booted)
		if (c.skip == "") != (got == "") || !strings.Contains(got, c.skip) {
			t.Errorf("%s: notATrial = %q, want %q", c.name, got, c.skip)
		}
	}
}

func TestExitStatus(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("refusing to commit: a rollback is pending"), 1},
		{usagef("unexpected argument %q", "x"), 2},
		{errUsage, 2},
		{fmt.Errorf("wrapped: %w", usagef("x")), 2},
	} {
		if got := exitStatus(c.err); got != c.want {
			t.Errorf("exitStatus(%v) = %d, want %d", c.err, got, c.want)
		}
	}
	// Every command's bad flags are usage errors.
	for _, args := range [][]string{{"status", "--bogus"}, {"commit", "x"}, {"begin", "--size"}, {"extents"}, {"recover"}, {"nosuch"}} {
		err := runCLI(append(args, "--cmdline", "cpinit.userdata=/dev/null"), io.Discard)
		if exitStatus(err) != 2 {
			t.Errorf("%v: %v (exit %d), want a usage error", args, err, exitStatus(err))
		}
	}
}

func TestParseCOWSize(t *testing.T) {
	const free, reserve = 10 << 30, 128 << 20
	for in, want := range map[string]uint64{
		"512M": 512 << 20,
		"2G":   2 << 30,
		"50%":  (free - reserve) / 2,
		"100%": free - reserve,
		"1%":   (free - reserve) / 100 &^ (1<<20 - 1),
	} {
		c, err := parseCOWSize(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if got := c.resolve(free, reserve); got != want {
			t.Errorf("%q resolves to %d, want %d", in, got, want)
		}
	}
	for _, in := range []string{"", "0%", "101%", "-5%", "x%", "12Q", "0"} {
		if _, err := parseCOWSize(in); err == nil || !strings.Contains(err.Error(), "COW size") {
			t.Errorf("%q: %v, want an error naming the COW size", in, err)
		}
	}
	if got := (cowSize{percent: 50}).resolve(100<<20, 128<<20); got != 0 {
		t.Errorf("less free than the reserve: %d", got)
	}
}
