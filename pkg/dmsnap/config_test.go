package dmsnap

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	good := Config{Origin: vda, OriginSectors: 524288, ChunkSectors: 8,
		Cow: []Segment{{vda, 400000, 4096}, {vda, 300000, 8192}}}
	k, err := New(nil, good)
	if err != nil {
		t.Fatal(err)
	}
	if k.Config().Names != DefaultNames || k.Config().PollInterval == 0 {
		t.Errorf("defaults not applied: %+v", k.Config())
	}
	bad := map[string]func(c *Config){
		"no origin":       func(c *Config) { c.Origin = Dev{} },
		"no size":         func(c *Config) { c.OriginSectors = 0 },
		"chunk":           func(c *Config) { c.ChunkSectors = 6 },
		"no cow":          func(c *Config) { c.Cow = nil },
		"unaligned start": func(c *Config) { c.Cow[0].Start = 400004 },
		"unaligned len":   func(c *Config) { c.Cow[0].Length = 4100 },
		"beyond origin":   func(c *Config) { c.Cow[0].Start = 524288 - 8 },
		"overlap":         func(c *Config) { c.Cow[1].Start = 400000 - 8 },
		"too small":       func(c *Config) { c.Cow = []Segment{{vda, 0, 16}} },
		"same names":      func(c *Config) { c.Names = Names{"a", "a", "b"} },
		"empty name":      func(c *Config) { c.Names = Names{"a", "", "b"} },
	}
	for name, f := range bad {
		c := good
		c.Cow = append([]Segment(nil), good.Cow...)
		f(&c)
		if _, err := New(nil, c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A COW on another device need not be chunk aligned there.
	c := good
	c.Cow = []Segment{{Dev{8, 16}, 3, 100}}
	if _, err := New(nil, c); err != nil {
		t.Errorf("COW on another disk: %v", err)
	}
	c.Cow = []Segment{{vda, 3, 100}}
	if _, err := New(nil, c); err == nil || !strings.Contains(err.Error(), "aligned") {
		t.Errorf("unaligned COW inside the origin: %v", err)
	}
}
