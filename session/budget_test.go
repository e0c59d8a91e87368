package session

import (
	"encoding/json"
	"testing"
)

func TestJSONLen(t *testing.T) {
	for _, s := range []string{
		"", "plain text", `"quoted" \ back`, "\n\r\t\b\f", "\x00\x01\x1f\x7f",
		"<td>a & b</td>", "日本語 é", "\u2028\u2029", "bad \xff\xfe utf-8 \xe6\x97", "emoji 🙂",
	} {
		b, _ := json.Marshal(s)
		if got, want := jsonLen(s), len(b)-2; got != want {
			t.Errorf("jsonLen(%q) = %d, encoding/json writes %d", s, got, want)
		}
	}
}

func TestBudgetTake(t *testing.T) {
	cases := []struct {
		name     string
		left     int
		in       string
		want     string
		cut      bool
		wantLeft int
	}{
		{"fits", 10, "hello", "hello", false, 5},
		{"exact fit", 5, "hello", "hello", false, 0},
		{"cut", 3, "hello", "hel", true, 0},
		{"multi-byte character at the cut", 4, "日本", "日", true, 1},
		{"multi-byte exact fit", 6, "日本", "日本", false, 0},
		{"escape counted as written", 3, "a\nb", "a\n", true, 0},
		{"escape not split", 2, "a\n", "a", true, 1},
		{"html-escaped character", 6, "<", "<", false, 0},
		{"already full", 0, "x", "", true, 0},
		{"nothing to take when full", 0, "", "", false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := budget{left: tc.left}
			got, cut := b.take(tc.in)
			if got != tc.want || cut != tc.cut || b.left != tc.wantLeft || b.cut != tc.cut {
				t.Errorf("take(%q) with %d left = %q cut %v, %d left; want %q cut %v, %d left",
					tc.in, tc.left, got, cut, b.left, tc.want, tc.cut, tc.wantLeft)
			}
		})
	}
}
