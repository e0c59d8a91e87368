package inputs

import (
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/codegw/codegw"
)

func TestSanitizeName(t *testing.T) {
	long := strings.Repeat("a", 300) + ".csv"
	longCJK := strings.Repeat("数", 100) + ".csv" // 300 bytes of 3-byte runes
	tests := []struct {
		in, want string
	}{
		{"data.csv", "data.csv"},
		{"  data.csv  ", "data.csv"},
		{"../../etc/passwd", "passwd"},
		{`..\..\win.ini`, "win.ini"},
		{"dir/sub/report.md", "report.md"},
		{"..", ""},
		{".", ""},
		{"...", ""},
		{".bashrc", "bashrc"},
		{"..hidden.txt", "hidden.txt"},
		{"a..b.csv", "a..b.csv"},
		{"bad\x00name\n.csv", "badname.csv"},
		{"tab\tname.csv", "tabname.csv"},
		{"rtl\u202eevil.csv", "rtlevil.csv"},
		{"bad\xffutf8.csv", "bad_utf8.csv"},
		{"数据.csv", "数据.csv"},
		{"", ""},
		{"/", ""},
		{"dir/", ""},
		{long, strings.Repeat("a", 196) + ".csv"},
	}
	for _, tt := range tests {
		if got := SanitizeName(tt.in); got != tt.want {
			t.Errorf("SanitizeName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	got := SanitizeName(longCJK)
	if len(got) > maxNameBytes || !utf8.ValidString(got) || !strings.HasSuffix(got, ".csv") {
		t.Errorf("SanitizeName(long CJK) = %q (%d bytes): want valid UTF-8, <= %d bytes, .csv kept", got, len(got), maxNameBytes)
	}
}

func TestNameFromQuery(t *testing.T) {
	tests := []struct {
		url, want string
	}{
		{"http://h/x?filename=a.csv&file_name=b.csv&name=c.csv&file=d.csv", "a.csv"},
		{"http://h/x?file_name=b.csv&name=c.csv&file=d.csv", "b.csv"},
		{"http://h/x?name=c.csv&file=d.csv", "c.csv"},
		{"http://h/x?file=d.csv", "d.csv"},
		{"http://h/x?filename=&name=c.csv", "c.csv"},
		{"http://h/x?filename=..&name=c.csv", "c.csv"},
		{"http://h/x?filename=%E6%95%B0%E6%8D%AE.csv", "数据.csv"},
		{"http://h/x?filename=..%2F..%2Fetc%2Fpasswd", "passwd"},
		{"http://h/x?other=1", ""},
	}
	for _, tt := range tests {
		u, _ := url.Parse(tt.url)
		if got := nameFromQuery(u); got != tt.want {
			t.Errorf("nameFromQuery(%s) = %q, want %q", tt.url, got, tt.want)
		}
	}
}

func TestNameFromDisposition(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", ""},
		{"inline", ""},
		{`attachment; filename="report.csv"`, "report.csv"},
		{`attachment; filename=report.csv`, "report.csv"},
		{`attachment; filename*=UTF-8''%E6%95%B0%E6%8D%AE.csv`, "数据.csv"},
		{`attachment; filename="fallback.csv"; filename*=UTF-8''%E6%95%B0%E6%8D%AE.csv`, "数据.csv"},
		{`attachment; filename="../../etc/passwd"`, "passwd"},
		{`attachment; filename=my report.csv`, "my report.csv"}, // malformed: unquoted space
		{`attachment; filename*=UTF-8''a%20b.csv; filename=x y.csv`, "a b.csv"},
		{`attachment; filename=".."`, ""},
	}
	for _, tt := range tests {
		if got := nameFromDisposition(tt.in); got != tt.want {
			t.Errorf("nameFromDisposition(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestNameFromPath(t *testing.T) {
	tests := []struct {
		url, want string
	}{
		{"http://h/data/sales.csv", "sales.csv"},
		{"http://h/data/sales.csv?x=1#frag", "sales.csv"},
		{"http://h/%E6%95%B0%E6%8D%AE.csv", "数据.csv"},
		{"http://h/a%2Fb.csv", "b.csv"},
		{"http://h/dir/", ""},
		{"http://h/", ""},
		{"http://h", ""},
		{"http://h/..", ""},
	}
	for _, tt := range tests {
		u, _ := url.Parse(tt.url)
		if got := nameFromPath(u); got != tt.want {
			t.Errorf("nameFromPath(%s) = %q, want %q", tt.url, got, tt.want)
		}
	}
}

func TestUniqueName(t *testing.T) {
	taken := map[string]bool{}
	var got []string
	for i, n := range []string{"data.csv", "data.csv", "x.csv", "2_data.csv", "data.csv"} {
		local := uniqueName(n, i+1, taken)
		taken[local] = true
		got = append(got, local)
	}
	want := []string{"data.csv", "2_data.csv", "x.csv", "4_2_data.csv", "5_data.csv"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("names = %v, want %v", got, want)
	}
	// <n>_<name> already taken by an earlier file's own name.
	taken = map[string]bool{"data.csv": true, "3_data.csv": true}
	if got := uniqueName("data.csv", 3, taken); got != "3_2_data.csv" {
		t.Errorf("uniqueName = %q, want 3_2_data.csv", got)
	}
}

func TestReplaceURLs(t *testing.T) {
	in := func(u, p string) codegw.InputFile { return codegw.InputFile{URL: u, LocalPath: p} }
	tests := []struct {
		name   string
		code   string
		inputs []codegw.InputFile
		want   string
	}{
		{
			"simple",
			`pd.read_csv("http://h/a.csv"); open('http://h/a.csv')`,
			[]codegw.InputFile{in("http://h/a.csv", "/code/input/a.csv")},
			`pd.read_csv("/code/input/a.csv"); open('/code/input/a.csv')`,
		},
		{
			"prefix URL listed first",
			`x("http://h/a"); y("http://h/a.csv?v=2")`,
			[]codegw.InputFile{in("http://h/a", "/code/input/a"), in("http://h/a.csv?v=2", "/code/input/a.csv")},
			`x("/code/input/a"); y("/code/input/a.csv")`,
		},
		{
			"duplicate URL keeps the first file",
			`x("http://h/d.csv")`,
			[]codegw.InputFile{in("http://h/d.csv", "/code/input/d.csv"), in("http://h/d.csv", "/code/input/2_d.csv")},
			`x("/code/input/d.csv")`,
		},
		{
			"replacement is not rewritten",
			`x("http://h/p")`,
			[]codegw.InputFile{in("http://h/p", "/code/input/http://h/q"), in("http://h/q", "/code/input/q")},
			`x("/code/input/http://h/q")`,
		},
		{"no inputs", "print(1)", nil, "print(1)"},
		{"absent URL", "print(1)", []codegw.InputFile{in("http://h/a", "/code/input/a")}, "print(1)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ReplaceURLs(tt.code, tt.inputs); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}
