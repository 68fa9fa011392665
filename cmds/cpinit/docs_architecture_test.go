package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
)

// docs/architecture.md names dm devices, dm target types, mount points and
// the functions that implement each safety rule. TestArchitectureDoc keeps
// those true to the code:
//
//   - the block between "<!-- BEGIN GENERATED: dm-tables -->" and
//     "<!-- END GENERATED: dm-tables -->" is rendered from dmConfig and the
//     pkg/dmsnap table builders (go generate ./cmds/cpinit rewrites it);
//   - every cp-* name in the doc is one of dmsnap.DefaultNames, and each of
//     those is in the doc;
//   - every dm target type named in code spans or code blocks is one the
//     builders produce, and each of those is in the doc;
//   - the mount points are the code's (newRoot, the default cpinit.datadir,
//     DefaultCOWPath; /run/cpinit/... paths must be string literals here);
//   - every `pkg.Name` or `pkg.Type.Method` reference (pkg one of
//     bootstate, dmsnap, fiemap, main, pid1, devspec) in architecture.md and
//     formats.md names a declaration in that package's non-test sources.

//go:generate go test -run ^TestArchitectureDoc$ -update-architecture-doc .

var updateArchitectureDoc = flag.Bool("update-architecture-doc", false, "rewrite the generated blocks of ../../docs/architecture.md")

const archDocPath = "../../docs/architecture.md"

// archExampleMap is the COW geometry of docs/formats.md's record example:
// 16 MiB in two extents on a 1 GiB partition 254:0, 4 KiB chunks.
func archExampleMap() *bootstate.ExtentMap {
	return &bootstate.ExtentMap{DevMajor: 254, DevMinor: 0, DevSectors: 2 << 20, ChunkSector: 8,
		Segments: []bootstate.Segment{
			{Logical: 0, Physical: 264192, Length: 24576},
			{Logical: 24576, Physical: 1048576, Length: 8192},
		}}
}

// archCowDev stands for the number the kernel gives cp-cow.
var archCowDev = dmsnap.Dev{Major: 253, Minor: 0}

// archTables builds every table cpinit loads, for the example map, with
// the code that builds them at boot, and returns them by role.
func archTables(t testing.TB) (roles []string, tables map[string][]dmsnap.TargetSpec) {
	t.Helper()
	cfg := dmConfig(archExampleMap())
	cow, err := dmsnap.Linear(cfg.Cow)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := dmsnap.Snapshot(cfg.Origin, archCowDev, cfg.OriginSectors, cfg.ChunkSectors)
	if err != nil {
		t.Fatal(err)
	}
	origin, err := dmsnap.SnapshotOrigin(cfg.Origin, cfg.OriginSectors)
	if err != nil {
		t.Fatal(err)
	}
	merge, err := dmsnap.SnapshotMerge(cfg.Origin, archCowDev, cfg.OriginSectors, cfg.ChunkSectors)
	if err != nil {
		t.Fatal(err)
	}
	// The plain mapping (Checkpoint.Commit, FinishMerge, MapPlain): one
	// linear target over the whole partition, which is what
	// isPlainLinear accepts.
	plain, err := dmsnap.Linear([]dmsnap.Segment{{Dev: cfg.Origin, Start: 0, Length: cfg.OriginSectors}})
	if err != nil {
		t.Fatal(err)
	}
	ud := userdata{Dev: cfg.Origin, Sectors: cfg.OriginSectors}
	if !isPlainLinear(plain.Targets(), ud) || !mapsOneToOne(origin.Targets(), ud, true) {
		t.Fatal("the plain and origin tables are not what mapsOneToOne accepts")
	}
	n := dmsnap.DefaultNames
	tables = map[string][]dmsnap.TargetSpec{
		n.Cow:                     cow.Targets(),
		n.Snap:                    snap.Targets(),
		n.Origin + " (trial)":     origin.Targets(),
		n.Origin + " (rollback)":  merge.Targets(),
		n.Origin + " (committed)": plain.Targets(),
	}
	roles = []string{n.Cow, n.Snap, n.Origin + " (trial)", n.Origin + " (rollback)", n.Origin + " (committed)"}
	return roles, tables
}

func archBlocks(t testing.TB) map[string]string {
	roles, tables := archTables(t)
	var b strings.Builder
	b.WriteString("```\n")
	for _, r := range roles {
		lines := strings.Split(strings.TrimSuffix(dmsnap.FormatTable(tables[r]), "\n"), "\n")
		for i, l := range lines {
			name := ""
			if i == 0 {
				name = r
			}
			fmt.Fprintf(&b, "%-24s %s\n", name, l)
		}
	}
	b.WriteString("```\n")
	return map[string]string{"dm-tables": b.String()}
}

var archGeneratedRE = regexp.MustCompile(`(?s)(<!-- BEGIN GENERATED: ([a-z0-9-]+) -->\n)(.*?)(<!-- END GENERATED: ([a-z0-9-]+) -->)`)

func readArchDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(archDocPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestArchitectureDoc(t *testing.T) {
	doc := readArchDoc(t)
	blocks := archBlocks(t)
	seen := map[string]bool{}
	var stale []string
	out := archGeneratedRE.ReplaceAllStringFunc(doc, func(m string) string {
		g := archGeneratedRE.FindStringSubmatch(m)
		want, ok := blocks[g[2]]
		if !ok || g[5] != g[2] {
			t.Errorf("%s: unknown or badly closed generated block %q", archDocPath, g[2])
			return m
		}
		seen[g[2]] = true
		if g[3] != want {
			stale = append(stale, g[2])
		}
		return g[1] + want + g[4]
	})
	for name := range blocks {
		if !seen[name] {
			t.Errorf("%s: generated block %q missing", archDocPath, name)
		}
	}
	if *updateArchitectureDoc {
		if out != doc {
			if err := os.WriteFile(archDocPath, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	if len(stale) > 0 {
		t.Errorf("%s: generated blocks %v are stale: run go generate ./cmds/cpinit", archDocPath, stale)
	}
}

// archCode returns the text of every code span and code block of a
// markdown document.
func archCode(doc string) []string {
	var out []string
	fences := strings.Split(doc, "```")
	for i, part := range fences {
		if i%2 == 1 {
			out = append(out, part)
			continue
		}
		spans := strings.Split(part, "`")
		for j := 1; j < len(spans); j += 2 {
			out = append(out, spans[j])
		}
	}
	return out
}

// kernelTargets are the device-mapper target types of Linux 6.x (and
// Android's dm-bow), so that a doc naming one cpinit does not build fails.
var kernelTargets = []string{
	"linear", "striped", "mirror", "snapshot", "snapshot-origin", "snapshot-merge",
	"zero", "error", "crypt", "delay", "flakey", "multipath", "raid", "thin",
	"thin-pool", "cache", "era", "verity", "integrity", "writecache", "log-writes",
	"dust", "clone", "switch", "unstriped", "zoned", "ebs", "bow", "user", "vdo",
}

func TestArchitectureDocNames(t *testing.T) {
	doc := readArchDoc(t)
	n := dmsnap.DefaultNames
	names := []string{n.Origin, n.Cow, n.Snap}
	for _, m := range regexp.MustCompile(`\bcp-[a-z0-9-]+`).FindAllString(doc, -1) {
		if !slices.Contains(names, m) {
			t.Errorf("%s names dm device %q; the code's names are %v (dmsnap.DefaultNames)", archDocPath, m, names)
		}
	}
	for _, name := range names {
		if !strings.Contains(doc, name) {
			t.Errorf("%s does not show dm device %q", archDocPath, name)
		}
	}

	_, tables := archTables(t)
	built := map[string]bool{}
	for _, specs := range tables {
		for _, s := range specs {
			built[s.Type] = true
		}
	}
	token := regexp.MustCompile(`[A-Za-z0-9_.:/-]+`)
	mentioned := map[string]bool{}
	for _, code := range archCode(doc) {
		for _, w := range token.FindAllString(code, -1) {
			if slices.Contains(kernelTargets, w) {
				mentioned[w] = true
				if !built[w] {
					t.Errorf("%s names dm target %q, which cpinit never loads", archDocPath, w)
				}
			}
		}
	}
	for typ := range built {
		if !mentioned[typ] {
			t.Errorf("%s does not name the dm target %q in code", archDocPath, typ)
		}
	}

	// Diagram lines "NAME TYPE [<param>...]" must pair a device with a
	// target type it really gets, with as many parameters.
	shapes := map[string][]dmsnap.TargetSpec{}
	for role, specs := range tables {
		name, _, _ := strings.Cut(role, " ")
		shapes[name] = append(shapes[name], specs[0])
	}
	shape := regexp.MustCompile(`(cp-[a-z]+)\s+(snapshot-origin|snapshot-merge|snapshot|linear)\b((?:[ \t]+(?:<[^>]+>|P\b|\d+\b))*)`)
	pairs := 0
	for _, code := range archCode(doc) {
		for _, m := range shape.FindAllStringSubmatch(code, -1) {
			pairs++
			ok := false
			for _, s := range shapes[m[1]] {
				nparams := len(strings.Fields(m[3]))
				if s.Type == m[2] && (nparams == 0 || nparams == len(strings.Fields(s.Params))) {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s shows %q, but the code never gives %s a %s table of that shape (it gives %v)", archDocPath, strings.TrimSpace(m[0]), m[1], m[2], shapes[m[1]])
			}
		}
	}
	if pairs < 4 {
		t.Errorf("%s: only %d diagram lines pair a device with its table", archDocPath, pairs)
	}

	p, _, err := ParseParams("cpinit.userdata=/dev/vda")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{newRoot, p.DataDir, DefaultCOWPath, "/proc", "/sys", "/dev"} {
		if !strings.Contains(doc, "`"+path) {
			t.Errorf("%s does not show the mount point or path %s", archDocPath, path)
		}
	}
	lits := archStringLiterals(t, ".")
	for _, m := range regexp.MustCompile(`/run/cpinit/[a-z]+`).FindAllString(doc, -1) {
		if !lits[m] {
			t.Errorf("%s names %s, which is not a string literal in cmds/cpinit", archDocPath, m)
		}
	}
}

// archPackages maps the package names the docs cite to their directories.
var archPackages = map[string]string{
	"bootstate": "../../pkg/bootstate",
	"dmsnap":    "../../pkg/dmsnap",
	"fiemap":    "../../pkg/fiemap",
	"main":      ".",
	"pid1":      "../../internal/pid1",
	"devspec":   "../../internal/devspec",
}

func archParse(t *testing.T, dir string) []*ast.File {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	fset := token.NewFileSet()
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		t.Fatalf("no Go files in %s", dir)
	}
	return files
}

// archSymbols returns the declarations of the package in dir: "Name" for
// functions, types, constants and variables, "Type.Method" for methods and
// "Type.Field" for struct fields.
func archSymbols(t *testing.T, dir string) map[string]bool {
	syms := map[string]bool{}
	for _, f := range archParse(t, dir) {
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil {
					syms[d.Name.Name] = true
					continue
				}
				rt := d.Recv.List[0].Type
				if s, ok := rt.(*ast.StarExpr); ok {
					rt = s.X
				}
				if id, ok := rt.(*ast.Ident); ok {
					syms[id.Name+"."+d.Name.Name] = true
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						syms[s.Name.Name] = true
						if st, ok := s.Type.(*ast.StructType); ok {
							for _, fl := range st.Fields.List {
								for _, n := range fl.Names {
									syms[s.Name.Name+"."+n.Name] = true
								}
							}
						}
					case *ast.ValueSpec:
						for _, n := range s.Names {
							syms[n.Name] = true
						}
					}
				}
			}
		}
	}
	return syms
}

func archStringLiterals(t *testing.T, dir string) map[string]bool {
	lits := map[string]bool{}
	for _, f := range archParse(t, dir) {
		ast.Inspect(f, func(n ast.Node) bool {
			if bl, ok := n.(*ast.BasicLit); ok && bl.Kind == token.STRING {
				if s, err := strconv.Unquote(bl.Value); err == nil {
					lits[s] = true
				}
			}
			return true
		})
	}
	return lits
}

func TestArchitectureDocSymbols(t *testing.T) {
	ref := regexp.MustCompile(`\b(bootstate|dmsnap|fiemap|main|pid1|devspec)\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?`)
	syms := map[string]map[string]bool{}
	for pkg, dir := range archPackages {
		syms[pkg] = archSymbols(t, dir)
	}
	for _, path := range []string{archDocPath, "../../docs/formats.md"} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		refs := 0
		for _, code := range archCode(string(b)) {
			for _, m := range ref.FindAllStringSubmatch(code, -1) {
				if slices.Contains([]string{"go", "md", "rst", "h", "c", "cpp"}, m[2]) {
					continue // a file name
				}
				refs++
				name := m[2]
				if m[3] != "" {
					name += "." + m[3]
				}
				if !syms[m[1]][name] {
					t.Errorf("%s cites %s, which %s does not declare", path, m[0], archPackages[m[1]])
				}
			}
		}
		if path == archDocPath && refs < 20 {
			t.Errorf("%s cites only %d functions; the safety rules name theirs", path, refs)
		}
	}
}
