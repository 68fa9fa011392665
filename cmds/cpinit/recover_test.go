package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

func TestPlanKeepCurrent(t *testing.T) {
	rec := func(st bootstate.State, f func(*bootstate.Record)) *bootstate.Record {
		r := bootstate.NewFreshRecord()
		r.State, r.COWPath = st, "/.cpinit/cow"
		if f != nil {
			f(&r)
		}
		return &r
	}
	corrupt := &bootstate.StoreError{Name: "/dev/vdd", Op: "load", Err: bootstate.ErrStoreCorrupt}
	blank := &bootstate.StoreError{Name: "/dev/vdd", Op: "load", Err: bootstate.ErrNoRecord}
	for _, c := range []struct {
		name    string
		r       *bootstate.Record
		err     error
		write   bool
		refuse  bool
		explain string
	}{
		{"corrupt", nil, corrupt, true, false, "unreadable"},
		{"ambiguous", nil, &bootstate.StoreError{Err: bootstate.ErrStoreAmbiguous}, true, false, "e2fsck"},
		{"blank", nil, blank, false, false, "blank"},
		{"foreign", nil, &bootstate.StoreError{Name: "/dev/vdd", Op: "load", Err: &bootstate.ForeignDataError{Offset: 1024, Data: []byte{1}}}, false, true, ""},
		{"io error", nil, errors.New("read /dev/vdd: input/output error"), false, true, ""},
		{"fresh", rec(bootstate.StateFresh, func(r *bootstate.Record) { r.COWPath = "" }), nil, false, false, "nothing to recover"},
		{"committed", rec(bootstate.StateCommitted, nil), nil, false, false, "already committed"},
		{"checkpointing", rec(bootstate.StateCheckpointing, func(r *bootstate.Record) { r.Active = true }), nil, true, false, "like a commit"},
		{"rollback not started", rec(bootstate.StateRollbackPending, nil), nil, true, false, "cancels it"},
		{"merge started", rec(bootstate.StateRollbackPending, func(r *bootstate.Record) { r.MergeTries = 1 }), nil, false, true, ""},
	} {
		p := planKeepCurrent(c.r, c.err, "/.cpinit/cow")
		if p.Write != c.write || (p.Err != nil) != c.refuse || !strings.Contains(p.Explain, c.explain) {
			t.Errorf("%s: plan %+v; want write=%v refuse=%v explain containing %q", c.name, p, c.write, c.refuse, c.explain)
		}
	}
}
