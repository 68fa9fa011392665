package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// COW sizing (docs/cow-sizing.md has the measurements).
//
// dm-snapshot copies a chunk into the COW on the first write to any chunk
// of the origin (Documentation/admin-guide/device-mapper/snapshot.rst; it
// knows nothing of the filesystem), so the COW must hold every block the
// trial writes: overwrites of existing data and new files written into free
// space alike, plus ~0.4% of metadata at 4 KiB chunks. The COW file is itself
// carved from the free space the new files need. With F bytes free above the
// reserve and a COW of X, new files can take F−X before the filesystem is
// full, and each costs COW: the trial overflows the COW when
// overwrites + new data > X, and runs out of space when new data > F−X.
// X = F/2 makes the two limits meet for new files, the common case (an
// update's migrations and caches write mostly new files): neither runs out
// first, and each gets as much as possible. Overwrite-heavy trials can still
// overflow; `cpinit watch` guards that. The default is therefore 50% of the
// free space above the reserve, settable as a size or a percentage by
// `cpinit begin --size` or cpinit.cow_size=.

// minCOW is the smallest checkpoint worth making: below it the first few
// minutes of a booting system overflow it, and the rollback is lost anyway.
const minCOW = 16 << 20

// defaultCOWPercent is the default COW size, in percent of the free space
// above the reserve.
const defaultCOWPercent = 50

// cowSize is a requested COW size: bytes, or a percentage of the free space
// above the reserve.
type cowSize struct {
	bytes   uint64
	percent uint64
}

func (c cowSize) String() string {
	if c.percent > 0 {
		return fmt.Sprintf("%d%%", c.percent)
	}
	return strconv.FormatUint(c.bytes, 10)
}

// parseCOWSize accepts a size (parseSize) or "P%" with 1 ≤ P ≤ 100.
func parseCOWSize(s string) (cowSize, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.ParseUint(p, 10, 8)
		if err != nil || n == 0 || n > 100 {
			return cowSize{}, fmt.Errorf("COW size %q: want a percentage from 1%% to 100%% of the free space above the reserve, or a size such as 512M", s)
		}
		return cowSize{percent: n}, nil
	}
	b, err := parseSize(s)
	if err != nil {
		return cowSize{}, fmt.Errorf("COW size %q: want a size such as 512M or a percentage such as 50%%", s)
	}
	return cowSize{bytes: b}, nil
}

// resolve turns the request into bytes for a filesystem with free bytes
// available, keeping reserve free: a multiple of 1 MiB for percentages.
func (c cowSize) resolve(free, reserve uint64) uint64 {
	if c.percent == 0 {
		return c.bytes
	}
	if free <= reserve {
		return 0
	}
	d := free - reserve
	if d > math.MaxUint64/100 {
		return d / 100 * c.percent &^ (1<<20 - 1)
	}
	return d * c.percent / 100 &^ (1<<20 - 1)
}

// defaultCOWSize is the default: defaultCOWPercent of the free space above
// the reserve.
func defaultCOWSize(free, reserve uint64) uint64 {
	return cowSize{percent: defaultCOWPercent}.resolve(free, reserve)
}

// parseSize accepts bytes or a K/M/G/T (binary) suffix.
func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	case strings.HasSuffix(s, "T"):
		mult = 1 << 40
	}
	n, err := strconv.ParseUint(strings.TrimRight(s, "KMGT"), 10, 64)
	if err != nil || n == 0 || n > (1<<63)/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with K, M, G or T", s)
	}
	return n * mult, nil
}
