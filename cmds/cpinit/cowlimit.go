package main

import (
	"strconv"
	"strings"

	"github.com/cpinit/cpinit/pkg/fiemap"
)

// oldKernelMaxCOWSegments caps the COW file's extents (dm linear targets)
// that `cpinit begin` accepts on a kernel older than 6.10. There, a flush
// of a dm device goes to every target of its table: dm.c __send_empty_flush
// calls __send_duplicate_bios once per target, so a flush of the COW device
// is one empty flush bio per extent. dm-snapshot flushes the COW on every
// exception commit (dm-snap-persistent.c persistent_commit_exception →
// area_io with REQ_PREFLUSH|REQ_FUA), that is on the first write to every
// chunk during a trial. Linux 6.10 ("dm: optimize flushes", Mikulas
// Patocka) sends a flush of a table whose targets all set
// flush_bypasses_map (linear and stripe do) once per underlying device
// instead.
//
// Measured (docs/BENCHMARKS.md, "setup": first writes by COW
// fragmentation; QEMU 10 TCG, 3 rounds): on 6.1 a 10,090-extent COW made a
// random 4 KiB first write at queue depth 1 cost 131 ms against 2.7 ms with
// 7 extents (48x; one flush of the COW 164 ms against 3.8), about 13 µs per
// extent per commit, and 4.4x at queue depth 32; on 6.12 the same COW cost
// 0.9x and 1.2x. 1,000 extents keep the added cost near 13 ms per commit
// under TCG, around 1 ms natively (the user-space steps ran 15–20x faster
// natively), while a 1 GiB COW in 1,000 pieces still averages 1 MiB per
// extent, far more fragmented than ext4's or f2fs's fallocate gives on a
// filesystem with room.
const oldKernelMaxCOWSegments = 1000

// maxCOWSegments is the extent limit for fiemap.Allocate when `cpinit
// begin` runs on the kernel release (uname -r): fiemap.DefaultMaxSegments
// (AOSP's 50,000) from 6.10 on, oldKernelMaxCOWSegments before, and for a
// release it cannot parse. begin runs on the kernel of the running system,
// which is usually the one the trial boots; an update that moves from
// below 6.10 to 6.10 or later is held to the lower limit, the safe side.
func maxCOWSegments(release string) int {
	if major, minor, ok := kernelVersion(release); ok && (major > 6 || major == 6 && minor >= 10) {
		return fiemap.DefaultMaxSegments
	}
	return oldKernelMaxCOWSegments
}

// kernelVersion parses the major and minor numbers of a release such as
// "6.1.0-50-cloud-amd64" or "6.12.95+deb12-cloud-amd64".
func kernelVersion(release string) (major, minor int, ok bool) {
	f := strings.SplitN(release, ".", 3)
	if len(f) < 2 {
		return 0, 0, false
	}
	end := strings.IndexFunc(f[1], func(r rune) bool { return r < '0' || r > '9' })
	if end >= 0 {
		f[1] = f[1][:end]
	}
	major, err1 := strconv.Atoi(f[0])
	minor, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || major < 0 || minor < 0 {
		return 0, 0, false
	}
	return major, minor, true
}
