package fiemap

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Benchmarks (not timed tests). Run as root:
//
//	go test -run '^$' -bench . -benchtime 20x ./pkg/fiemap
//
// Results are recorded in docs/BENCHMARKS.md.

// fragmentedFile makes a file with about n single-block extents on a fresh
// 1 KiB-block ext4 image and returns its path.
func fragmentedFile(b *testing.B, n int) string {
	b.Helper()
	// 2n blocks for the filler pattern, plus metadata and ext4's reserve.
	mib := int64(2*n+n/4)/1024 + 48
	fs := newExt4(b, mib, 1024, "-N", "1024", "-m", "0")
	// ext4 holds back min(2%, 4096) blocks from fallocate (s_resv_clusters);
	// the filler leaves them as one free run, which the file takes first.
	resv := min(int(mib*1024/50), 4096)
	n += resv
	// Punching splits the filler's extent tree: ~1 leaf block per 80 holes.
	fragment(b, fs.mnt, n+n/40+200)
	p := fs.path("frag")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(n)<<10); err != nil {
		b.Fatal(err)
	}
	return p
}

func BenchmarkMapFile(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("extents=%dk", n/1000), func(b *testing.B) {
			p := fragmentedFile(b, n)
			m, err := MapFile(p)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := MapFile(p); err != nil {
					b.Fatal(err)
				}
			}
			// After the loop: ResetTimer drops reported metrics.
			b.ReportMetric(float64(m.RawExtents), "extents")
			b.ReportMetric(float64(len(m.Segments)), "segments")
		})
	}
}

// BenchmarkSegments measures the pure part (validate, coalesce, segments,
// fingerprint, dm table text) on synthetic lists.
func BenchmarkSegments(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("extents=%dk", n/1000), func(b *testing.B) {
			ext := make([]Extent, n)
			for i := range ext {
				ext[i] = Extent{Logical: uint64(i) * 4096, Physical: uint64(2*i) * 4096, Length: 4096, Flags: FlagUnwritten}
			}
			ext[n-1].Flags |= FlagLast
			size := uint64(n) * 4096
			dev := Device{Major: 7, Minor: 0, Sectors: 1 << 40}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := Validate("f", size, ext); err != nil {
					b.Fatal(err)
				}
				c := Coalesce(ext)
				segs := Segments(c, size)
				_ = Fingerprint(dev, size, c)
				_ = DMTable(segs, 7, 0)
			}
		})
	}
}

// BenchmarkAllocate1GiB: Allocate (create, fallocate, fsync, map, pin,
// fsync, re-map) of 1 GiB on a fresh 4 KiB-block ext4; Release is not timed.
func BenchmarkAllocate1GiB(b *testing.B) {
	fs := newExt4(b, 2048, 4096)
	cow := filepath.Join(fs.privateDir(".cpinit"), "cow")
	for i := 0; i < b.N; i++ {
		m, err := Allocate(cow, 1<<30, AllocOptions{Reserve: 64 << 20})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		b.ReportMetric(float64(len(m.Segments)), "segments")
		if err := Release(cow); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkZeroFill1GiB is the alternative policy for comparison: what AOSP
// libfiemap does on ext4 (fallocate, then write zeros so no extent stays
// UNWRITTEN, then fsync). Run it with a small -benchtime (it writes 1 GiB
// per iteration).
func BenchmarkZeroFill1GiB(b *testing.B) {
	fs := newExt4(b, 2048, 4096)
	p := fs.path("zeroed")
	buf := make([]byte, 1<<20)
	for i := 0; i < b.N; i++ {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		if err := unix.Fallocate(int(f.Fd()), 0, 0, 1<<30); err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < 1<<30; off += int64(len(buf)) {
			if _, err := f.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
		b.StopTimer()
		if err := os.Remove(p); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
