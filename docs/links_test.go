// Package docs holds no code: its test checks the Markdown documents of the
// repository (README.md, docs/, dist/) for relative links that lead nowhere.
package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// link is a Markdown inline link or image: [text](target) or
// [text](target "title"). Reference-style links are not used here.
var link = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// fence opens or closes a code block, whose text is not Markdown.
var fence = regexp.MustCompile("^\\s*(```|~~~)")

// TestRelativeLinks checks that every relative link in the repository's
// Markdown files names a file or directory that exists and, with a
// #fragment into a Markdown file, a heading of that file (GitHub's anchor
// for it). Links to the web are not fetched: CI has no network but the
// package registries.
func TestRelativeLinks(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "out" || d.Name() == ".cache" || d.Name() == ".git") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".md") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found only %d Markdown files under %s: wrong root?", len(files), root)
	}
	checked := 0
	for _, f := range files {
		for _, l := range links(t, f) {
			target := l.target
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			checked++
			path, frag, _ := strings.Cut(target, "#")
			dest := f
			if path != "" {
				dest = filepath.Join(filepath.Dir(f), path)
			}
			rel, _ := filepath.Rel(root, f)
			if r, err := filepath.Rel(root, dest); err != nil || strings.HasPrefix(r, "..") {
				// It may exist on this machine, but not in a clone.
				t.Errorf("%s:%d: link %q leads out of the repository", rel, l.line, target)
				continue
			}
			if _, err := os.Stat(dest); err != nil {
				t.Errorf("%s:%d: link %q: %v", rel, l.line, target, err)
				continue
			}
			if frag == "" || !strings.HasSuffix(dest, ".md") {
				continue
			}
			if !anchors(t, dest)[frag] {
				t.Errorf("%s:%d: link %q: no heading with the anchor #%s in %s", rel, l.line, target, frag, filepath.Base(dest))
			}
		}
	}
	if checked == 0 {
		t.Fatal("no relative link found: the link pattern is broken")
	}
	t.Logf("%d relative links in %d Markdown files", checked, len(files))
}

type mdLink struct {
	target string
	line   int
}

// links returns the links of the Markdown file f outside code blocks and
// code spans.
func links(t *testing.T, f string) []mdLink {
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	var out []mdLink
	inCode := false
	for i, line := range strings.Split(string(b), "\n") {
		if fence.MatchString(line) {
			inCode = !inCode
			continue
		}
		if inCode {
			continue
		}
		line = codeSpan.ReplaceAllString(line, "")
		for _, m := range link.FindAllStringSubmatch(line, -1) {
			out = append(out, mdLink{target: m[1], line: i + 1})
		}
	}
	return out
}

var codeSpan = regexp.MustCompile("`[^`]*`")

// anchors returns the anchors GitHub gives the headings of the Markdown
// file f: lower case, punctuation but hyphens and underscores dropped,
// spaces made hyphens, repeats numbered -1, -2, ...
func anchors(t *testing.T, f string) map[string]bool {
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	out := map[string]bool{}
	inCode := false
	for _, line := range strings.Split(string(b), "\n") {
		if fence.MatchString(line) {
			inCode = !inCode
			continue
		}
		if inCode || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var slug strings.Builder
		for _, r := range strings.ToLower(h) {
			switch {
			case r == ' ':
				slug.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
				slug.WriteRune(r)
			}
		}
		s := slug.String()
		if n := seen[s]; n > 0 {
			out[s+"-"+itoa(n)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	}
	return out
}

func itoa(n int) string {
	const digits = "0123456789"
	if n < 10 {
		return digits[n : n+1]
	}
	return itoa(n/10) + digits[n%10:n%10+1]
}
