package main

import (
	"os"
	"strings"
	"testing"
)

// TestDocsIntegration: the bootloader example in docs/integration.md is the
// Example function go test runs (pkg/bootstate/example_bootloader_test.go),
// and its kernel command line parses.
func TestDocsIntegration(t *testing.T) {
	src, err := os.ReadFile("../../pkg/bootstate/example_bootloader_test.go")
	if err != nil {
		t.Fatal(err)
	}
	fn := string(src[strings.Index(string(src), "func ExampleBootControl_BootloaderSelect"):])
	blocks := fencedBlocks(t, "../../docs/integration.md", "go")
	if len(blocks) != 1 || blocks[0] != fn {
		t.Errorf("docs/integration.md's go block is not ExampleBootControl_BootloaderSelect as in pkg/bootstate/example_bootloader_test.go:\n%s", fn)
	}
	lines := fencedBlocks(t, "../../docs/integration.md", "cmdline")
	n := 0
	for _, l := range lines {
		if strings.Contains(l, "cpinit.userdata=") {
			if _, warn, err := ParseParams(l); err != nil || len(warn) > 0 {
				t.Errorf("command line %q: %v %q", l, err, warn)
			}
			n++
		}
	}
	if n == 0 {
		t.Error("no kernel command line found in docs/integration.md")
	}
}
