package devspec

import (
	"encoding/binary"
	"testing"
)

func TestParseMBRPartUUID(t *testing.T) {
	for v, want := range map[string]struct {
		sig  uint32
		part int
		ok   bool
	}{
		"8c2f0b9e-01":                          {0x8c2f0b9e, 1, true},
		"00000001-05":                          {1, 5, true},           // the first logical partition
		"deadbeef-0a":                          {0xdeadbeef, 10, true}, // the number is hexadecimal
		"8c2f0b9e-00":                          {},                     // partitions count from 1
		"8c2f0b9e-1":                           {},                     // the kernel zero-fills: %02x
		"8c2f0b9-01":                           {},
		"8c2f0b9g-01":                          {},
		"0b5e1c8a-3c1f-4a52-9d25-6d0c5c1f8a10": {}, // a GPT GUID
		"":                                     {},
	} {
		sig, part, ok := ParseMBRPartUUID(v)
		if ok != want.ok || sig != want.sig || part != want.part {
			t.Errorf("ParseMBRPartUUID(%q) = %#x, %d, %v; want %#x, %d, %v", v, sig, part, ok, want.sig, want.part, want.ok)
		}
	}
}

func TestMBRDiskSignature(t *testing.T) {
	sector := make([]byte, 512)
	binary.LittleEndian.PutUint32(sector[0x1b8:], 0x8c2f0b9e)
	sector[0x1be+4] = 0x83 // a Linux partition
	if _, ok := MBRDiskSignature(sector); ok {
		t.Errorf("a sector without the 0x55AA boot signature was taken for an MBR")
	}
	sector[510], sector[511] = 0x55, 0xaa
	if sig, ok := MBRDiskSignature(sector); !ok || sig != 0x8c2f0b9e {
		t.Errorf("MBRDiskSignature = %#x, %v; want 0x8c2f0b9e, true", sig, ok)
	}
	sector[0x1be+16+4] = 0xee // GPT's protective MBR
	if sig, ok := MBRDiskSignature(sector); ok {
		t.Errorf("a protective MBR was read as a DOS table with signature %#x", sig)
	}
	if _, ok := MBRDiskSignature(sector[:511]); ok {
		t.Errorf("a short sector was read as an MBR")
	}
}
