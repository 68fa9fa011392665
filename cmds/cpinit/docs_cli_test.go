package main

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestDocsCLI keeps docs/cli.md true: the help text is the binary's, and
// each status --json example validates against docs/status.schema.json and
// decodes into Status with no unknown field.
func TestDocsCLI(t *testing.T) {
	help := fencedBlocks(t, "../../docs/cli.md", "help")
	if len(help) != 1 {
		t.Fatalf("docs/cli.md: %d help blocks, want 1", len(help))
	}
	var out bytes.Buffer
	if err := runCLI([]string{"help"}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != help[0] {
		t.Errorf("docs/cli.md help block differs from `cpinit help`:\n%s", out.String())
	}

	root := loadStatusSchema(t)
	examples := fencedBlocks(t, "../../docs/cli.md", "json")
	if len(examples) == 0 {
		t.Fatal("docs/cli.md has no json examples")
	}
	for i, ex := range examples {
		var v any
		if err := json.Unmarshal([]byte(ex), &v); err != nil {
			t.Errorf("example %d: %v", i+1, err)
			continue
		}
		if err := validate(root, root, v, "status"); err != nil {
			t.Errorf("example %d: %v", i+1, err)
		}
		dec := json.NewDecoder(bytes.NewReader([]byte(ex)))
		dec.DisallowUnknownFields()
		var st Status
		if err := dec.Decode(&st); err != nil {
			t.Errorf("example %d does not decode into Status: %v", i+1, err)
		}
	}
}
