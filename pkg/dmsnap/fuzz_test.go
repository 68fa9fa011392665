package dmsnap

import (
	"testing"
)

// FuzzDecode feeds arbitrary kernel answers to every decoder: none may
// panic, and whatever decodes must be internally consistent. The committed
// corpus (testdata/fuzz/FuzzDecode) holds valid answers made by the kernel
// emulation and a few broken ones.
func FuzzDecode(f *testing.F) {
	f.Add(kernelStatusAnswer(ioctlHeader{Name: "cp-snap"}, []TargetSpec{{0, 524288, "snapshot", "16/98304 16"}}, 1024))
	f.Add(kernelNameList([]DeviceEntry{{Name: "cp-origin", Dev: Dev{254, 2}, UUID: "CPINIT-cp-origin"}}, 1024))
	f.Add(kernelVersions([]TargetVersion{{"linear", [3]uint32{1, 4, 0}}}, 1024))
	f.Fuzz(func(t *testing.T, b []byte) {
		if specs, err := decodeTargets(b); err == nil {
			for _, s := range specs {
				if len(s.Type) >= maxTargetType {
					t.Fatalf("type %q too long", s.Type)
				}
			}
		}
		_, _ = decodeNameList(b)
		_, _ = decodeVersions(b)
		_, _ = decodeMessage(b)
		if len(b) >= 16 {
			_, _ = ParseCowHeader(b)
		}
	})
}

// FuzzParseSnapshotStatus: the parser never panics and what it accepts
// prints back to an equivalent status.
func FuzzParseSnapshotStatus(f *testing.F) {
	for _, s := range []string{"16/98304 16", "Invalid", "Overflow", "Merge failed", "Unknown", "0/0 0", "1/2", "a/b c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ParseSnapshotStatus(s)
		if err != nil {
			return
		}
		back, err := ParseSnapshotStatus(st.String())
		if err != nil || back != st {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, st, st.String(), back, err)
		}
	})
}
