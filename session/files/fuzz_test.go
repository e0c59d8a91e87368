package files

import (
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// checkName asserts what every name the gateway derives from a client or
// a remote server must be: a single path element, not hidden, bounded,
// valid UTF-8, without control characters.
func checkName(t *testing.T, from, name string) {
	t.Helper()
	if name == "" {
		return
	}
	switch {
	case strings.ContainsAny(name, `/\`):
		t.Fatalf("%s: %q contains a separator", from, name)
	case name == "." || name == ".." || strings.HasPrefix(name, "."):
		t.Fatalf("%s: %q is a dot name", from, name)
	case len(name) > maxNameBytes:
		t.Fatalf("%s: %q is %d bytes, over %d", from, name, len(name), maxNameBytes)
	case !utf8.ValidString(name):
		t.Fatalf("%s: %q is not UTF-8", from, name)
	case strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		t.Fatalf("%s: %q has a control character", from, name)
	case filepath.Base(name) != name:
		t.Fatalf("%s: %q is not its own base name", from, name)
	}
}

// FuzzFileName feeds hostile names to every place an input or upload file
// name comes from: an upload's file name (SanitizeName), a download's
// Content-Disposition header, and its URL's query and path.
func FuzzFileName(f *testing.F) {
	f.Add("report.csv", `attachment; filename="data.csv"`, "https://example.com/a/b/data.csv?x=1")
	f.Add("../../etc/passwd", `attachment; filename*=UTF-8''%E6%95%B0%E6%8D%AE.csv`, "https://example.com/dl?filename=..%2F..%2Fx")
	f.Add(`..\..\win.ini`, `attachment; filename=unquoted name.txt; filename*=bad`, "http://h/%2e%2e/%2e%2e")
	f.Add(strings.Repeat("数", 100)+".csv", `inline; filename="`+strings.Repeat("a", 300)+`.tar.gz"`, "http://[::1]/"+strings.Repeat("x", 250))
	f.Add(strings.Repeat("0", 199)+" 000000", "", "") // cut at a space: found by CI's fuzzing
	f.Add(strings.Repeat("a", 250)+"   .txt", "", "")
	f.Add("\x00\u202e.txt", "attachment; filename*=''%ff%fe", "https://h/?name=%00%0a.&file=.")
	f.Fuzz(func(t *testing.T, name, disposition, raw string) {
		checkName(t, "SanitizeName", SanitizeName(name))
		if s := SanitizeName(name); SanitizeName(s) != s {
			t.Fatalf("SanitizeName is not idempotent: %q -> %q -> %q", name, s, SanitizeName(s))
		}
		checkName(t, "Content-Disposition", nameFromDisposition(disposition))
		if u, err := url.Parse(raw); err == nil {
			checkName(t, "query", nameFromQuery(u))
			checkName(t, "path", nameFromPath(u))
		}
		if ValidName(name) && strings.ContainsAny(name, `/\`) {
			t.Fatalf("store name %q accepted with a separator", name)
		}
	})
}

// FuzzStripCodeFence checks the code-fence stripping of execute bodies and
// the UTF-8 truncation used on names and close reasons: both return a part
// of their input, never more, and never split a character.
func FuzzStripCodeFence(f *testing.F) {
	f.Add("```python\nprint(1)\n```", 10)
	f.Add("```\nx = 1```", 3)
	f.Add("````py\n```inner```\n````", 0)
	f.Add("  ```PYTHON3 \r\nimport os\r\n```  ", -1)
	f.Add("```\n", 1)
	f.Add("```js\nalert(1)\n```", 200)
	f.Add("数据数据", 4)
	f.Fuzz(func(t *testing.T, code string, n int) {
		out := StripCodeFence(code)
		if out != code && !strings.Contains(code, out) {
			t.Fatalf("StripCodeFence(%q) = %q, not a part of its input", code, out)
		}
		if out != code {
			// Backticks inside a line are code (a string may hold them);
			// a line that opens a fence is not.
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "```") {
					t.Fatalf("StripCodeFence(%q) = %q kept a fence line", code, out)
				}
			}
			if again := StripCodeFence(out); again != out {
				t.Fatalf("StripCodeFence is not idempotent: %q -> %q -> %q", code, out, again)
			}
		}
		if n < 0 {
			n = -n
		}
		n %= len(code) + 2
		cut := TruncateUTF8(code, n)
		if len(cut) > n || !strings.HasPrefix(code, cut) {
			t.Fatalf("TruncateUTF8(%q, %d) = %q", code, n, cut)
		}
		if utf8.ValidString(code) && !utf8.ValidString(cut) {
			t.Fatalf("TruncateUTF8(%q, %d) = %q split a character", code, n, cut)
		}
	})
}
