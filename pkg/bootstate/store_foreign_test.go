package bootstate

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"pgregory.net/rapid"
)

// firstNonZero returns the offset of the first non-zero byte of b and up
// to 4 bytes from there, as a store error shows them; -1 if b is all zero.
func firstNonZero(b []byte) (int, string) {
	for i, c := range b {
		if c != 0 {
			return i, fmt.Sprintf("% x", b[i:min(i+4, len(b))])
		}
	}
	return -1, ""
}

// checkForeign opens the image at path as a store and checks that it is
// refused: Load fails with ErrStoreForeign naming the store and the offset
// and bytes of the first non-zero data, and neither Save nor Format writes
// a byte.
func checkForeign(t *testing.T, path string) {
	t.Helper()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off, hex := firstNonZero(before[:min(len(before), StoreSize)])
	if off < 0 {
		t.Fatalf("%s: test image is blank", path)
	}
	s, f, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, _, err = s.Load()
	if !errors.Is(err, ErrStoreForeign) {
		t.Errorf("Load: %v, want ErrStoreForeign", err)
	} else {
		for _, want := range []string{path, fmt.Sprintf("offset %d: %s", off, hex)} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Load: %q does not name %q", err, want)
			}
		}
	}
	fresh := NewFreshRecord()
	if _, err := s.Save(&fresh); !errors.Is(err, ErrStoreForeign) {
		t.Errorf("Save: %v, want ErrStoreForeign", err)
	}
	keep := RecoveryKeepCurrent("/.cpinit/cow")
	if _, err := s.Format(&keep); !errors.Is(err, ErrStoreForeign) {
		t.Errorf("Format: %v, want ErrStoreForeign", err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		off, _ := firstDiff(before, after)
		t.Errorf("the refused store was written (first change at byte %d)", off)
	}
}

func firstDiff(a, b []byte) (int, bool) {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i, true
		}
	}
	return min(len(a), len(b)), len(a) != len(b)
}

// An ext4 filesystem starts with 1024 zero bytes, so its copy A header reads
// as blank; without a look at the whole store it would be formatted.
func TestStoreRefusesExt4(t *testing.T) {
	mkfs := testutil.LookPath(t, "mkfs.ext4")
	// 8 MiB: the store region exactly, nothing in copy B's area; 64 MiB:
	// filesystem metadata in both areas.
	for _, size := range []int64{StoreSize, 64 << 20} {
		t.Run(fmt.Sprintf("%dMiB", size>>20), func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "ext4.img")
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(p, size); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(mkfs, "-q", "-F", "-L", "not_a_store", p).CombinedOutput(); err != nil {
				t.Fatalf("mkfs.ext4: %v\n%s", err, out)
			}
			checkForeign(t, p)
		})
	}
}

// Random bytes anywhere in the store region, with no cpinit record header
// in either copy, are not a cpinit store, whichever copy's area they are in.
func TestStoreRefusesRandomBytes(t *testing.T) {
	cases := []struct {
		name       string
		start, end int64
		also       int64 // a second range of the same length at this offset, if > 0
	}{
		{"whole store", 0, StoreSize, 0},
		{"copy A beyond its header", recordHeaderSize, CopyStride, 0},
		{"copy B area only", CopyStride, StoreSize, 0},
		// What a torn first write leaves is the only non-blank store that
		// may be taken for blank: random bytes in copy A with copy B blank
		// are not that.
		{"copy A first 4 KiB", 0, 4096, 0},
		{"first sector only, like a partition table", 0, 512, 0},
		{"both copies' first 4 KiB", 0, 4096, CopyStride},
	}
	for _, c := range cases {
		for seed := range uint64(3) {
			t.Run(fmt.Sprintf("%s/seed%d", c.name, seed), func(t *testing.T) {
				img := make([]byte, StoreSize)
				rng := rand.NewChaCha8([32]byte{byte(seed), 'c', 'p'})
				rng.Read(img[c.start:c.end])
				if c.also > 0 {
					copy(img[c.also:], img[c.start:c.end])
				}
				p := filepath.Join(t.TempDir(), "random.img")
				if err := os.WriteFile(p, img, 0o600); err != nil {
					t.Fatal(err)
				}
				checkForeign(t, p)
			})
		}
	}
}

// A store whose only non-zero bytes are past copy A's header, in copy A's
// area or in copy B's, is not blank either, however few they are.
func TestStoreOneStrayByte(t *testing.T) {
	for _, off := range []int64{recordHeaderSize, 1080, MaxRecordSize, CopyStride - 1, CopyStride + recordHeaderSize, StoreSize - 1} {
		d := newMemDev()
		d.setByte(off, 0x53)
		before := d.snapshot()
		s := NewStore(d, "mem")
		_, _, err := s.Load()
		if !errors.Is(err, ErrStoreForeign) || !strings.Contains(err.Error(), fmt.Sprintf("offset %d: 53", off)) {
			t.Errorf("one byte at %d: %v, want ErrStoreForeign naming it", off, err)
		}
		fresh := NewFreshRecord()
		if _, err := s.Save(&fresh); !errors.Is(err, ErrStoreForeign) {
			t.Errorf("one byte at %d: Save: %v", off, err)
		}
		if _, err := s.Format(&fresh); !errors.Is(err, ErrStoreForeign) {
			t.Errorf("one byte at %d: Format: %v", off, err)
		}
		if !mapsEqual(before, d.snapshot()) {
			t.Errorf("one byte at %d: a refused store was written", off)
		}
	}
}

func mapsEqual(a, b map[int64][pageSize]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || v != w {
			return false
		}
	}
	return true
}

// TestPropertyStoreBlankOnlyWhenBlank: whatever the store region holds,
// Load reports a blank store (ErrNoRecord, which PID 1 formats) only if the
// region is all zero or copy B's area is all zero and copy A holds the
// beginning of a first write: the record magic, or a prefix of it, first,
// and nothing past the record that was being written. Data without a
// cpinit header in either copy is ErrStoreForeign; Save writes only over a
// blank store and Format never over a foreign one.
func TestPropertyStoreBlankOnlyWhenBlank(t *testing.T) {
	prepared := mustApply(t, NewFreshRecord(), Step{Event: EventPrepare, Path: "/.cpinit/cow"})
	records := [][]byte{
		encodeT(t, ptr(NewFreshRecord()), 1),
		encodeT(t, &prepared, 1),
		encodeT(t, ptr(armedRecord(t, CounterNative, "")), 1),
		encodeT(t, ptr(RecoveryKeepCurrent("/.cpinit/cow")), 1),
	}
	rapid.Check(t, func(t *rapid.T) {
		d := &bufDev{}
		var rec []byte // the record a first write was cut in, if any
		switch rapid.IntRange(0, 2).Draw(t, "start") {
		case 1:
			rec = rapid.SampledFrom(records).Draw(t, "record")
			d.WriteAt(rec[:rapid.IntRange(0, len(rec)-1).Draw(t, "cut")], 0)
		case 2:
			// An arbitrary header.
			d.WriteAt(rapid.SliceOfN(rapid.Byte(), 1, 2*recordHeaderSize).Draw(t, "header"), 0)
		}
		// Stray data: arbitrary bytes anywhere, or none.
		strays := rapid.IntRange(0, 3).Draw(t, "strays")
		for range strays {
			off := rapid.OneOf(
				rapid.Int64Range(0, 4096),
				rapid.Int64Range(0, StoreSize-1),
				rapid.Int64Range(CopyStride-16, CopyStride+2*recordHeaderSize),
			).Draw(t, "stray offset")
			b := rapid.SliceOfN(rapid.Byte(), 1, 32).Draw(t, "stray")
			d.WriteAt(b[:min(int64(len(b)), StoreSize-off)], off)
		}
		img := make([]byte, StoreSize)
		copy(img, d.b)
		a, b := img[:CopyStride], img[CopyStride:]
		allZero := func(p []byte) bool { return bytes.Count(p, []byte{0}) == len(p) }
		last := len(bytes.TrimRight(a, "\x00")) - 1
		n := min(last+1, len(recordMagic))
		magicFirst := last >= 0 && string(a[:n]) == recordMagic[:n]
		// Headers within a few bits of the magic may be taken for damaged
		// cpinit records (ErrStoreCorrupt); beyond this many, never.
		const nearMagicBits = 8
		ours := func(h []byte) bool { return hamming(h[:len(recordMagic)], []byte(recordMagic)) <= nearMagicBits }

		s := NewStore(d, "prop")
		_, _, err := s.Load()
		switch {
		case allZero(img):
			if !errors.Is(err, ErrNoRecord) {
				t.Fatalf("all-zero store: %v", err)
			}
		case errors.Is(err, ErrNoRecord):
			if !allZero(b) || !magicFirst {
				t.Fatalf("taken for blank: copy B blank=%v, copy A starts %q", allZero(b), a[:16])
			}
			end := tornUnit
			if n, err := RecordLen(a); err == nil {
				end = max(end, n)
			}
			if last >= end {
				// Past the sector a cut could leave junk in, and past the
				// record: not a torn first write.
				t.Fatalf("taken for blank with data at %d, past %d", last, end)
			}
		case err == nil:
			// Only where the cut-off end of the record was zeros anyway.
			if rec == nil || !bytes.Equal(a[:len(rec)], rec) {
				t.Fatalf("decoded a record from an image no complete write made")
			}
		case !ours(a) && !ours(b) && !(allZero(b) && magicFirst):
			if !errors.Is(err, ErrStoreForeign) {
				t.Fatalf("no cpinit header anywhere, copy A starts %q: %v, want ErrStoreForeign", a[:16], err)
			}
		}
		if rec != nil && strays == 0 && err != nil && !errors.Is(err, ErrNoRecord) {
			t.Fatalf("a torn first write is not blank: %v", err)
		}
		d.writes = nil
		fresh := NewFreshRecord()
		_, serr := s.Save(&fresh)
		switch {
		case err == nil:
		case errors.Is(err, ErrNoRecord) && serr != nil:
			t.Fatalf("Save over a blank store: %v", serr)
		case !errors.Is(err, ErrNoRecord) && (serr == nil || len(d.writes) > 0):
			t.Fatalf("Save over a store that loads as %v: %v, writes at %v", err, serr, d.writes)
		}
		if errors.Is(err, ErrStoreForeign) {
			if _, ferr := s.Format(&fresh); ferr == nil || len(d.writes) > 0 {
				t.Fatalf("Format over a foreign store: %v, writes at %v", ferr, d.writes)
			}
		}
	})
}

func hamming(a, b []byte) int {
	n := 0
	for i := range a {
		x := a[i] ^ b[i]
		for ; x != 0; x &= x - 1 {
			n++
		}
	}
	return n
}
