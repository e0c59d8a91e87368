// Package strutil holds the string helpers several layers share.
package strutil

import "unicode/utf8"

// TruncateUTF8 returns the longest prefix of s of at most n bytes that does
// not split a rune.
func TruncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
