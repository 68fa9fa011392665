package main

import (
	"bytes"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/devspec"
)

// fencedBlocks returns the contents of the ```lang blocks of a markdown file.
func fencedBlocks(t *testing.T, doc, lang string) []string {
	t.Helper()
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, part := range strings.Split(string(b), "```"+lang+"\n")[1:] {
		body, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatalf("%s: unterminated ```%s block", doc, lang)
		}
		blocks = append(blocks, body)
	}
	return blocks
}

var paramRow = regexp.MustCompile("(?m)^\\| `(cpinit\\.[a-z_]+)=` \\| ([^|]*) \\|")

// TestDocsParams keeps docs/params.md true: it lists every key ParseParams
// knows, each default it shows is the default, and its example command
// lines parse to the `cpinit params` output shown under them.
func TestDocsParams(t *testing.T) {
	b, err := os.ReadFile("../../docs/params.md")
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, m := range paramRow.FindAllStringSubmatch(string(b), -1) {
		key, def := m[1], strings.TrimSpace(m[2])
		documented = append(documented, key)
		if v, ok := strings.CutPrefix(def, "`"); ok {
			// "cpinit.key=default" must change nothing.
			v = strings.TrimSuffix(v, "`")
			line := "cpinit.userdata=/dev/vda " + key + "=" + v
			p, warn, err := ParseParams(line)
			if err != nil || len(warn) > 0 {
				t.Errorf("%s: documented default %q does not parse: %v %q", key, v, err, warn)
				continue
			}
			want := DefaultParams()
			want.Userdata = devspec.Spec{Kind: devspec.Path, Value: "/dev/vda"}
			if !reflect.DeepEqual(p, want) {
				t.Errorf("%s: documented default %q is not the default:\n got %+v\nwant %+v", key, v, p, want)
			}
		} else if def != "(none)" && def != "(required)" {
			t.Errorf("%s: default column %q: want `value`, (none) or (required)", key, def)
		}
	}
	slices.Sort(documented)
	if !slices.Equal(documented, knownKeys) {
		t.Errorf("docs/params.md lists %q,\nParseParams knows %q", documented, knownKeys)
	}

	lines := fencedBlocks(t, "../../docs/params.md", "cmdline")
	outs := fencedBlocks(t, "../../docs/params.md", "params-output")
	if len(lines) == 0 || len(lines) != len(outs) {
		t.Fatalf("%d cmdline blocks, %d params-output blocks: want pairs", len(lines), len(outs))
	}
	for i, line := range lines {
		var out bytes.Buffer
		if err := runCLI([]string{"params", strings.TrimSpace(line)}, &out); err != nil {
			t.Errorf("example %d: cpinit params: %v", i+1, err)
			continue
		}
		if out.String() != outs[i] {
			t.Errorf("example %d: cpinit params prints\n%s\ndocs/params.md shows\n%s", i+1, out.String(), outs[i])
		}
	}
}
