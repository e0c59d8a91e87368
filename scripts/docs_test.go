package scripts_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// root is the repository, seen from this package's directory.
const root = ".."

// markdownFiles lists every Markdown document of the repository (not
// under .git or node_modules), relative to root.
func markdownFiles(t *testing.T) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".md") {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil || len(out) == 0 {
		t.Fatalf("no Markdown files found: %v", err)
	}
	return out
}

var (
	linkRE    = regexp.MustCompile(`\]\(([^()\s]+)\)`)
	headingRE = regexp.MustCompile("(?m)^#{1,6} +(.+?) *$")
	fenceRE   = regexp.MustCompile("(?ms)^```.*?^```")
)

// anchors returns the GitHub anchors of the headings of a Markdown text.
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	for _, m := range headingRE.FindAllStringSubmatch(fenceRE.ReplaceAllString(text, ""), -1) {
		out[slug(m[1])] = true
	}
	return out
}

// slug is GitHub's anchor for a heading: lower case, letters, digits,
// hyphens and underscores kept, spaces made hyphens, the rest dropped.
func slug(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 0x7f && !strings.ContainsRune("—–·→", r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestDocLinks checks that every relative link in a Markdown document
// resolves to a file or directory of the repository (and, with a #
// fragment into a Markdown file, to one of its headings), and that no link
// leaves the repository.
func TestDocLinks(t *testing.T) {
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range markdownFiles(t) {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		text := fenceRE.ReplaceAllString(string(b), "")
		for _, m := range linkRE.FindAllStringSubmatch(text, -1) {
			link := m[1]
			if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
				continue
			}
			target, frag, _ := strings.Cut(link, "#")
			path := filepath.Join(root, f)
			if target != "" {
				path = filepath.Join(root, filepath.Dir(f), target)
				full, _ := filepath.Abs(path)
				if !strings.HasPrefix(full+string(filepath.Separator), abs+string(filepath.Separator)) {
					t.Errorf("%s: link %q leaves the repository", f, link)
					continue
				}
				if _, err := os.Stat(path); err != nil {
					t.Errorf("%s: link %q: no such file", f, link)
					continue
				}
			}
			if frag == "" || !strings.HasSuffix(path, ".md") {
				continue
			}
			tb, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("%s: link %q: %v", f, link, err)
				continue
			}
			if !anchors(string(tb))[frag] {
				t.Errorf("%s: link %q: no heading with that anchor in %s", f, link, target)
			}
		}
	}
}

// TestDocsStandAlone checks that no document or Go file names a design
// note or a directory outside the repository: the repository's documents
// must stand alone.
func TestDocsStandAlone(t *testing.T) {
	banned := []string{"DESIGN" + ".md", "../" + "shared"}
	var files []string
	files = append(files, markdownFiles(t)...)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") {
			rel, _ := filepath.Rel(root, p)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range banned {
			if strings.Contains(string(b), s) {
				t.Errorf("%s mentions %s, which is not in the repository", f, s)
			}
		}
	}
}

// TestDocsIndex checks that docs/README.md names every document in docs/.
func TestDocsIndex(t *testing.T) {
	index, err := os.ReadFile(filepath.Join(root, "docs", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		if name := filepath.Base(d); name != "README.md" && !strings.Contains(string(index), name) {
			t.Errorf("docs/README.md does not list %s", name)
		}
	}
}

// TestSlug pins the anchor rule on headings the documents use.
func TestSlug(t *testing.T) {
	for h, want := range map[string]string{
		"Quotas per key": "quotas-per-key",
		"`bench/kernelbench` — the kernel client":        "benchkernelbench--the-kernel-client",
		"`bench/gwcpu` — the gateway's own CPU":          "benchgwcpu--the-gateways-own-cpu",
		"Input and output limits":                        "input-and-output-limits",
		"`kernel/docker` `BenchmarkForkLaunch` — forked": "kerneldocker-benchmarkforklaunch--forked",
	} {
		if got := slug(h); got != want {
			t.Errorf("slug(%q) = %q, want %q", h, got, want)
		}
	}
}
