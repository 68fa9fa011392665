package main

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var testName = regexp.MustCompile("`(Test[A-Z][A-Za-z0-9_]*)`")

// TestDocsReferences keeps the docs' pointers true: every test a doc names
// as the proof of a procedure exists, and every `cpinit ...` command line in
// a sh block is one the tool accepts (it may fail for want of devices here,
// but not as bad usage).
func TestDocsReferences(t *testing.T) {
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil || len(docs) == 0 {
		t.Fatalf("no docs: %v", err)
	}
	defined := map[string]bool{}
	filepath.WalkDir("../..", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == ".cache" || d.Name() == "out") {
			return filepath.SkipDir
		}
		if strings.HasSuffix(p, "_test.go") {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, m := range regexp.MustCompile(`(?m)^func (Test\w+)\(`).FindAllStringSubmatch(string(b), -1) {
				defined[m[1]] = true
			}
		}
		return nil
	})
	checked := 0
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range testName.FindAllStringSubmatch(string(b), -1) {
			if !defined[m[1]] {
				t.Errorf("%s names %s, which no test file defines", filepath.Base(doc), m[1])
			}
			checked++
		}
		for _, block := range fencedBlocks(t, doc, "sh") {
			for _, line := range strings.Split(block, "\n") {
				line, _, _ = strings.Cut(line, "#")
				args := strings.Fields(line)
				if len(args) == 0 || args[0] != "cpinit" {
					continue
				}
				// No devices named: a lifecycle command stops at "no
				// metadata store" before touching anything.
				cli := args[1:]
				if len(cli) > 0 && cli[0] != "params" && cli[0] != "extents" && cli[0] != "help" {
					cli = append(cli, "--cmdline", "cpinit.userdata=/dev/null")
				}
				err := runCLI(cli, io.Discard)
				if exitStatus(err) == exitUsage {
					t.Errorf("%s: %q is not a valid command line: %v", filepath.Base(doc), line, err)
				}
				checked++
			}
		}
	}
	if checked == 0 {
		t.Error("no test names or command lines found in docs/: the test checks nothing")
	}
}

var mdLink = regexp.MustCompile(`\]\(([^)#:\s]+)(#[^)]*)?\)`)

// TestDocsLinks: every relative link in README.md and docs/ names a file
// that exists.
func TestDocsLinks(t *testing.T) {
	docs, _ := filepath.Glob("../../docs/*.md")
	docs = append(docs, "../../README.md")
	n := 0
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mdLink.FindAllStringSubmatch(string(b), -1) {
			target := filepath.Join(filepath.Dir(doc), m[1])
			if rel, err := filepath.Rel("../..", target); err != nil || strings.HasPrefix(rel, "..") {
				continue // outside the repository (the design card in ../shared)
			}
			if _, err := os.Stat(target); err != nil {
				t.Errorf("%s links to %s, which does not exist", filepath.Base(doc), m[1])
			}
			n++
		}
	}
	if n == 0 {
		t.Error("no links found: the test checks nothing")
	}
}
