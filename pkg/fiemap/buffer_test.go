package fiemap

import (
	"errors"
	"testing"
)

// putExtent writes a struct fiemap_extent at index i of a reply buffer, the
// way the kernel's fiemap_fill_next_extent does.
func putExtent(buf []byte, i int, e Extent) {
	p := buf[headerSize+i*extentSize:]
	byteOrder.PutUint64(p[0:], e.Logical)
	byteOrder.PutUint64(p[8:], e.Physical)
	byteOrder.PutUint64(p[16:], e.Length)
	// Reserved fields: garbage must be ignored.
	byteOrder.PutUint64(p[24:], 0xdeadbeef)
	byteOrder.PutUint32(p[40:], e.Flags)
	byteOrder.PutUint32(p[44:], 0xfeedface)
}

func TestEncodeRequest(t *testing.T) {
	buf := make([]byte, headerSize+3*extentSize)
	for i := range buf {
		buf[i] = 0xff
	}
	if err := encodeRequest(buf, 4096, fiemapFlagSync, 3); err != nil {
		t.Fatal(err)
	}
	if got := byteOrder.Uint64(buf[0:]); got != 4096 {
		t.Errorf("fm_start = %d", got)
	}
	if got := byteOrder.Uint64(buf[8:]); got != ^uint64(0)-4096 {
		t.Errorf("fm_length = %#x", got)
	}
	if got := byteOrder.Uint32(buf[16:]); got != 1 {
		t.Errorf("fm_flags = %#x, want FIEMAP_FLAG_SYNC", got)
	}
	if got := byteOrder.Uint32(buf[20:]); got != 0 {
		t.Errorf("fm_mapped_extents = %d", got)
	}
	if got := byteOrder.Uint32(buf[24:]); got != 3 {
		t.Errorf("fm_extent_count = %d", got)
	}
	for i, b := range buf[28:] {
		if b != 0 {
			t.Fatalf("byte %d not zeroed", 28+i)
		}
	}
	if err := encodeRequest(buf, 0, 0, 4); err == nil {
		t.Error("encodeRequest accepted a buffer too small")
	}
}

func TestDecodeReply(t *testing.T) {
	want := []Extent{
		{Logical: 0, Physical: 1 << 20, Length: 8192, Flags: FlagUnwritten},
		{Logical: 8192, Physical: 1 << 30, Length: 4096, Flags: FlagUnwritten | FlagLast},
	}
	buf := make([]byte, headerSize+4*extentSize)
	if err := encodeRequest(buf, 0, fiemapFlagSync, 4); err != nil {
		t.Fatal(err)
	}
	byteOrder.PutUint32(buf[20:], uint32(len(want)))
	for i, e := range want {
		putExtent(buf, i, e)
	}
	got, err := decodeReply(nil, buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d extents, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("extent %d = %v, want %v", i, got[i], want[i])
		}
	}

	// fm_mapped_extents beyond fm_extent_count or beyond the buffer.
	byteOrder.PutUint32(buf[20:], 5)
	if _, err := decodeReply(nil, buf); err == nil {
		t.Error("accepted mapped > count")
	}
	byteOrder.PutUint32(buf[20:], 2)
	if _, err := decodeReply(nil, buf[:headerSize+extentSize]); !errors.Is(err, errShortBuffer) {
		t.Errorf("short buffer: %v", err)
	}
	if _, err := decodeReply(nil, buf[:10]); !errors.Is(err, errShortBuffer) {
		t.Errorf("short header: %v", err)
	}
}

// fakeKernel serves FIEMAP pages from a fixed extent list like
// fs/iomap/fiemap.c: the extents that end after start, at most count per
// call, LAST on the file's last extent only.
func fakeKernel(all []Extent, count int, calls *int) func(uint64) ([]Extent, error) {
	return func(start uint64) ([]Extent, error) {
		*calls++
		buf := make([]byte, headerSize+count*extentSize)
		if err := encodeRequest(buf, start, fiemapFlagSync, uint32(count)); err != nil {
			return nil, err
		}
		n := 0
		for _, e := range all {
			if e.Logical+e.Length <= start {
				continue
			}
			if n == count {
				break
			}
			putExtent(buf, n, e)
			n++
		}
		byteOrder.PutUint32(buf[20:], uint32(n))
		return decodeReply(nil, buf)
	}
}

func TestCollectPaging(t *testing.T) {
	var all []Extent
	for i := uint64(0); i < 10; i++ {
		all = append(all, Extent{Logical: i * 4096, Physical: (100 - i) * 4096, Length: 4096})
	}
	all[len(all)-1].Flags |= FlagLast
	for _, batch := range []int{1, 3, 9, 10, 11, 100} {
		calls := 0
		got, err := collect(fakeKernel(all, batch, &calls))
		if err != nil {
			t.Fatalf("batch %d: %v", batch, err)
		}
		if len(got) != len(all) {
			t.Fatalf("batch %d: %d extents, want %d", batch, len(got), len(all))
		}
		for i := range all {
			if got[i] != all[i] {
				t.Errorf("batch %d: extent %d = %v, want %v", batch, i, got[i], all[i])
			}
		}
		if want := (len(all) + batch - 1) / batch; calls != want {
			t.Errorf("batch %d: %d calls, want %d", batch, calls, want)
		}
	}

	// No LAST flag (e.g. trailing hole): stops at the empty batch and
	// Validate then reports the missing LAST / hole.
	noLast := append([]Extent(nil), all...)
	noLast[len(noLast)-1].Flags = 0
	calls := 0
	got, err := collect(fakeKernel(noLast, 4, &calls))
	if err != nil || len(got) != len(noLast) {
		t.Fatalf("no LAST: %d extents, %v", len(got), err)
	}
	if err := Validate("f", 10*4096, got); err == nil {
		t.Error("Validate accepted a list without LAST")
	}

	// A kernel that returns the same page forever must not hang us.
	stuck := func(uint64) ([]Extent, error) {
		return []Extent{{Logical: 0, Physical: 0, Length: 4096}}, nil
	}
	if _, err := collect(stuck); err == nil {
		t.Error("collect did not detect a reply that does not advance")
	}
}

// FuzzDecodeReply: arbitrary bytes from the kernel never panic and never
// yield more extents than the buffer holds.
func FuzzDecodeReply(f *testing.F) {
	buf := make([]byte, headerSize+2*extentSize)
	_ = encodeRequest(buf, 0, fiemapFlagSync, 2)
	byteOrder.PutUint32(buf[20:], 2)
	putExtent(buf, 0, Extent{Length: 4096})
	putExtent(buf, 1, Extent{Logical: 4096, Length: 4096, Flags: FlagLast})
	f.Add(buf)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeReply(nil, b)
		if err != nil {
			return
		}
		if max := (len(b) - headerSize) / extentSize; len(got) > max {
			t.Fatalf("%d extents from a %d-byte buffer", len(got), len(b))
		}
	})
}
