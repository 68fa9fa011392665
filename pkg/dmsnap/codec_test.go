package dmsnap

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func TestHeaderRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := ioctlHeader{
			Version:     [3]uint32{rapid.Uint32().Draw(t, "v0"), rapid.Uint32().Draw(t, "v1"), rapid.Uint32().Draw(t, "v2")},
			DataSize:    sizeofIoctl,
			DataStart:   rapid.Uint32().Draw(t, "start"),
			TargetCount: rapid.Uint32().Draw(t, "count"),
			OpenCount:   rapid.Int32().Draw(t, "open"),
			Flags:       rapid.Uint32().Draw(t, "flags"),
			EventNr:     rapid.Uint32().Draw(t, "event"),
			Dev:         rapid.Uint64().Draw(t, "dev"),
			Name:        rapid.StringMatching(`[a-zA-Z0-9_.-]{0,127}`).Draw(t, "name"),
			UUID:        rapid.StringMatching(`[a-zA-Z0-9_.-]{0,128}`).Draw(t, "uuid"),
		}
		buf := make([]byte, sizeofIoctl)
		if err := putHeader(buf, &h); err != nil {
			t.Fatal(err)
		}
		got, err := parseHeader(buf)
		if err != nil {
			t.Fatal(err)
		}
		if got != h {
			t.Fatalf("round trip: got %+v, want %+v", got, h)
		}
	})
}

func TestHeaderRejectsBadNames(t *testing.T) {
	for _, h := range []ioctlHeader{
		{Name: strings.Repeat("n", nameLen)},
		{Name: "a/b"},
		{Name: "a\x00b"},
		{UUID: strings.Repeat("u", uuidLen)},
	} {
		if err := putHeader(make([]byte, sizeofIoctl), &h); err == nil {
			t.Errorf("putHeader(%q, %q): no error", h.Name, h.UUID)
		}
	}
	if err := putHeader(make([]byte, sizeofIoctl-1), &ioctlHeader{}); err == nil {
		t.Error("putHeader into short buffer: no error")
	}
}

// The layout constants must match struct dm_ioctl; ioctl_linux_test.go also
// checks them against golang.org/x/sys/unix.DmIoctl.
func TestLayoutConstants(t *testing.T) {
	if dataStart != 312 || ioctlDataOffset != 305 || offName != 48 || offUUID != 176 {
		t.Fatalf("layout: dataStart=%d dataOffset=%d name=%d uuid=%d", dataStart, ioctlDataOffset, offName, offUUID)
	}
	if got := offUUID + uuidLen; got != ioctlDataOffset {
		t.Fatalf("uuid ends at %d, data at %d", got, ioctlDataOffset)
	}
}

func linearSpecs(n int) []TargetSpec {
	specs := make([]TargetSpec, n)
	var pos uint64
	for i := range specs {
		l := uint64(1 + i%17)
		specs[i] = TargetSpec{Start: pos, Length: l, Type: "linear", Params: fmt.Sprintf("254:%d %d", i%7, uint64(i)*1000003)}
		pos += l
	}
	return specs
}

func TestEncodeTableLoadLayout(t *testing.T) {
	specs := []TargetSpec{
		{Start: 0, Length: 8, Type: "linear", Params: "8:0 0"},         // 6+NUL: record 40+6 -> 48
		{Start: 8, Length: 16, Type: "linear", Params: "8:16 1234567"}, // 12+NUL -> 56
		{Start: 24, Length: 1, Type: "snapshot-origin", Params: "8:0"}, // 15-byte type, 3+NUL -> 48
	}
	buf, err := encodeTableLoad(ioctlHeader{Name: "t"}, specs)
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseHeader(buf)
	if err != nil {
		t.Fatal(err)
	}
	if h.TargetCount != 3 || h.DataStart != dataStart || int(h.DataSize) != len(buf) || h.Version != ioctlVersion {
		t.Fatalf("header %+v, len %d", h, len(buf))
	}
	wantNext := []uint32{48, 56, 48}
	off := dataStart
	for i, w := range wantNext {
		if off%8 != 0 {
			t.Errorf("spec %d at unaligned offset %d", i, off)
		}
		if got := ne.Uint32(buf[off+20:]); got != w {
			t.Errorf("spec %d next = %d, want %d", i, got, w)
		}
		off += int(w)
	}
	if off != len(buf) {
		t.Errorf("specs end at %d, buffer %d", off, len(buf))
	}
	got, err := kernelPopulate(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, specs) {
		t.Fatalf("kernel reads %v, want %v", got, specs)
	}
}

func TestEncodeTableLoadProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 50).Draw(t, "n")
		specs := make([]TargetSpec, n)
		var pos uint64
		for i := range specs {
			l := rapid.Uint64Range(1, 1<<40).Draw(t, "len")
			specs[i] = TargetSpec{
				Start:  pos,
				Length: l,
				Type:   rapid.StringMatching(`[a-z-]{1,15}`).Draw(t, "type"),
				Params: rapid.StringMatching(`[ -~]{0,100}`).Draw(t, "params"),
			}
			pos += l
		}
		buf, err := encodeTableLoad(ioctlHeader{Name: "x"}, specs)
		if err != nil {
			t.Fatal(err)
		}
		got, err := kernelPopulate(buf)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, specs) {
			t.Fatalf("kernel reads %v, want %v", got, specs)
		}
		// And the status answer for the same table decodes to the same lines.
		ans := kernelStatusAnswer(ioctlHeader{Name: "x"}, specs, len(buf)+64*n+1024)
		back, err := decodeTargets(ans)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, specs) {
			t.Fatalf("status decodes to %v, want %v", back, specs)
		}
	})
}

func TestEncodeTableLoadRejects(t *testing.T) {
	bad := map[string][]TargetSpec{
		"empty":      nil,
		"gap":        {{Start: 0, Length: 1, Type: "linear", Params: "8:0 0"}, {Start: 2, Length: 1, Type: "linear", Params: "8:0 0"}},
		"not at 0":   {{Start: 1, Length: 1, Type: "linear", Params: "8:0 0"}},
		"zero len":   {{Start: 0, Length: 0, Type: "linear", Params: "8:0 0"}},
		"long type":  {{Start: 0, Length: 1, Type: strings.Repeat("t", 16), Params: ""}},
		"NUL params": {{Start: 0, Length: 1, Type: "linear", Params: "8:0\x000"}},
	}
	for name, specs := range bad {
		if _, err := encodeTableLoad(ioctlHeader{Name: "x"}, specs); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// A COW file can have tens of thousands of extents (AOSP's libfiemap caps at
// 50,000); the issue asks for 100k+.
func TestTable100kTargets(t *testing.T) {
	const n = 120_000
	specs := linearSpecs(n)
	buf, err := encodeTableLoad(ioctlHeader{Name: "cow"}, specs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := kernelPopulate(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, specs) {
		t.Fatal("kernel reads a different table")
	}
	// Reading it back: a small first buffer is answered with
	// DM_BUFFER_FULL_FLAG; doubling until it fits yields the whole table.
	size := smallAnswer
	var rounds int
	for {
		rounds++
		ans := kernelStatusAnswer(ioctlHeader{Name: "cow"}, specs, size)
		back, err := decodeTargets(ans)
		if errors.Is(err, errBufferFull) {
			size *= 2
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, specs) {
			t.Fatal("status decodes to a different table")
		}
		break
	}
	if rounds < 2 {
		t.Errorf("expected at least one buffer-full round, got %d rounds", rounds)
	}
}

func TestDecodeTargetsBufferFullEveryCut(t *testing.T) {
	specs := linearSpecs(20)
	full := len(kernelStatusAnswer(ioctlHeader{}, specs, 1<<16))
	for size := sizeofIoctl; size < 2000; size++ {
		ans := kernelStatusAnswer(ioctlHeader{}, specs, size)
		got, err := decodeTargets(ans)
		if err == nil {
			if !reflect.DeepEqual(got, specs) {
				t.Fatalf("size %d: decoded %d targets without buffer-full flag, differ", size, len(got))
			}
			continue
		}
		if !errors.Is(err, errBufferFull) {
			t.Fatalf("size %d: %v", size, err)
		}
	}
	_ = full
}

func TestDecodeTargetsMalformed(t *testing.T) {
	specs := linearSpecs(5)
	good := kernelStatusAnswer(ioctlHeader{Name: "x"}, specs, 4096)
	h, _ := parseHeader(good)
	mutate := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	cases := map[string][]byte{
		"short":           good[:sizeofIoctl-1],
		"data_size > len": mutate(func(b []byte) { ne.PutUint32(b[offDataSize:], uint32(len(b)+1)) }),
		"count too big":   mutate(func(b []byte) { ne.PutUint32(b[offTargetCount:], 1<<30) }),
		"next backwards":  mutate(func(b []byte) { ne.PutUint32(b[dataStart+20:], 0) }),
		"next unaligned":  mutate(func(b []byte) { ne.PutUint32(b[dataStart+20:], 49) }),
		"next beyond":     mutate(func(b []byte) { ne.PutUint32(b[dataStart+20:], 1<<20) }),
		"data_start low":  mutate(func(b []byte) { ne.PutUint32(b[offDataStart:], 8) }),
		"unterminated": mutate(func(b []byte) {
			for i := dataStart; i < int(h.DataSize); i++ {
				if b[i] == 0 {
					b[i] = 'x'
				}
			}
		}),
	}
	for name, b := range cases {
		if got, err := decodeTargets(b); err == nil {
			t.Errorf("%s: decoded %v, want error", name, got)
		}
	}
	// Every truncation of a valid answer (data_size kept) is rejected
	// or decodes without panicking.
	for n := 0; n < int(h.DataSize); n++ {
		_, _ = decodeTargets(good[:n])
	}
}

func TestNameListRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(0, 20).Draw(t, "n")
		devs := make([]DeviceEntry, n)
		for i := range devs {
			devs[i] = DeviceEntry{
				Name:    rapid.StringMatching(`[a-z0-9-]{1,127}`).Draw(t, "name"),
				Dev:     Dev{Major: 254, Minor: rapid.Uint32Range(0, 1<<20-1).Draw(t, "minor")},
				EventNr: rapid.Uint32().Draw(t, "ev"),
				UUID:    rapid.StringMatching(`(CPINIT-[a-z]{1,20})?`).Draw(t, "uuid"),
			}
		}
		buf := kernelNameList(devs, 64<<10)
		got, err := decodeNameList(buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			devs = nil
		}
		if !reflect.DeepEqual(got, devs) {
			t.Fatalf("got %+v, want %+v", got, devs)
		}
	})
	if _, err := decodeNameList(kernelNameList([]DeviceEntry{{Name: "a", Dev: Dev{254, 1}}}, dataStart+4)); !errors.Is(err, errBufferFull) {
		t.Errorf("small buffer: %v, want errBufferFull", err)
	}
}

func TestVersionsRoundTrip(t *testing.T) {
	vs := []TargetVersion{
		{"snapshot-merge", [3]uint32{1, 5, 0}}, {"snapshot-origin", [3]uint32{1, 9, 0}},
		{"snapshot", [3]uint32{1, 16, 0}}, {"striped", [3]uint32{1, 6, 0}},
		{"linear", [3]uint32{1, 4, 0}}, {"error", [3]uint32{1, 5, 0}},
	}
	got, err := decodeVersions(kernelVersions(vs, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, vs) {
		t.Fatalf("got %v", got)
	}
	if err := missingTargets(got); err != nil {
		t.Errorf("missingTargets: %v", err)
	}
	if _, err := decodeVersions(kernelVersions(vs, dataStart+32)); !errors.Is(err, errBufferFull) {
		t.Errorf("small buffer: %v, want errBufferFull", err)
	}
}

func TestMissingTargets(t *testing.T) {
	base := []TargetVersion{{Name: "linear"}, {Name: "striped"}, {Name: "error"}}
	err := missingTargets(base)
	if !errors.Is(err, ErrNoSnapshotTarget) || !strings.Contains(err.Error(), "load dm-snapshot") {
		t.Errorf("no snapshot: %v", err)
	}
	if err := missingTargets(nil); !errors.Is(err, ErrNoSnapshotTarget) {
		t.Errorf("nothing: %v", err)
	}
	err = missingTargets([]TargetVersion{{Name: "snapshot"}, {Name: "snapshot-origin"}, {Name: "snapshot-merge"}})
	if !errors.Is(err, ErrNoDeviceMapper) {
		t.Errorf("no linear: %v", err)
	}
}

func TestTargetMessage(t *testing.T) {
	buf, err := encodeTargetMsg(ioctlHeader{Name: "cp-origin"}, 7, "@stats_list", 1024)
	if err != nil {
		t.Fatal(err)
	}
	if got := ne.Uint64(buf[dataStart:]); got != 7 {
		t.Errorf("sector %d", got)
	}
	if s, _ := cstring(buf[dataStart+8:]); s != "@stats_list" {
		t.Errorf("message %q", s)
	}
	if len(buf) < dataStart+1024 {
		t.Errorf("no room for an answer: %d bytes", len(buf))
	}
	// An answer: DM_DATA_OUT_FLAG and text at data_start.
	h := ioctlHeader{Flags: flagDataOut, DataStart: dataStart, DataSize: dataStart + 3}
	if err := putHeader(buf, &h); err != nil {
		t.Fatal(err)
	}
	copy(buf[dataStart:], "ok\x00")
	if s, err := decodeMessage(buf); err != nil || s != "ok" {
		t.Errorf("answer %q, %v", s, err)
	}
	if _, err := encodeTargetMsg(ioctlHeader{}, 0, "", 0); err == nil {
		t.Error("empty message accepted")
	}
}

func TestInfoFromHeader(t *testing.T) {
	h := ioctlHeader{Name: "cp-cow", UUID: "CPINIT-cp-cow", Dev: encodeDev(Dev{254, 3}), OpenCount: 2, EventNr: 5, TargetCount: 9,
		Flags: flagSuspend | flagActivePresent | flagInactivePresent}
	got := infoFromHeader(h)
	want := DeviceInfo{Name: "cp-cow", UUID: "CPINIT-cp-cow", Dev: Dev{254, 3}, OpenCount: 2, EventNr: 5, TargetCount: 9,
		Suspended: true, ActivePresent: true, InactivePresent: true}
	if got != want {
		t.Fatalf("got %+v", got)
	}
}

func TestParseProcMisc(t *testing.T) {
	text := "229 fuse\n236 device-mapper\n 62 ecryptfs\n"
	if m, ok := parseProcMisc(text); !ok || m != 236 {
		t.Errorf("got %d %v", m, ok)
	}
	if _, ok := parseProcMisc("229 fuse\n"); ok {
		t.Error("found device-mapper in a list without it")
	}
}
