package main

import (
	"testing"

	"github.com/cpinit/cpinit/pkg/fiemap"
)

// A COW of many extents costs a flush per extent on every first write of a
// trial before Linux 6.10 (cowlimit.go): begin must accept fewer there.
func TestMaxCOWSegments(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    int
	}{
		{"6.1.0-50-cloud-amd64", oldKernelMaxCOWSegments},
		{"6.1.176", oldKernelMaxCOWSegments},
		{"5.15.0-105-generic", oldKernelMaxCOWSegments},
		{"6.9.12-arch1-1", oldKernelMaxCOWSegments},
		{"6.10.0", fiemap.DefaultMaxSegments},
		{"6.12.95+deb12-cloud-amd64", fiemap.DefaultMaxSegments},
		{"6.12-rc3", fiemap.DefaultMaxSegments},
		{"7.0.1", fiemap.DefaultMaxSegments},
		// Unparsable: the safe side.
		{"", oldKernelMaxCOWSegments},
		{"linux", oldKernelMaxCOWSegments},
		{"6", oldKernelMaxCOWSegments},
	} {
		if got := maxCOWSegments(tc.release); got != tc.want {
			t.Errorf("maxCOWSegments(%q) = %d, want %d", tc.release, got, tc.want)
		}
	}
	if oldKernelMaxCOWSegments >= fiemap.DefaultMaxSegments {
		t.Errorf("the old kernels' limit %d is not below the default %d", oldKernelMaxCOWSegments, fiemap.DefaultMaxSegments)
	}
}
