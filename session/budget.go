package session

import (
	"math"
	"unicode/utf8"
)

// budget is what is left of MaxOutputBytes (MAX_OUTPUT_BYTES) for the text
// of one answer. It covers every string the kernel produced that the answer
// carries — stdout, stderr, rich text outputs (html, markdown, latex, json,
// text/plain), display ids, the exception's name, value and traceback — and
// the two fields copied from them, result and error. Image bytes are not
// text: they have their own limits (MaxImages, MaxImageBytes) and travel as
// URLs.
//
// The rule, applied in the order the kernel produces its messages:
//
//   - Stream text and text/plain are cut between two characters at the
//     limit; what comes after is dropped without being decoded.
//   - A rich representation (html, markdown, latex, json) is kept whole or
//     not at all, since cut html or json is broken: when it does not fit,
//     its output falls back to text/plain, cut like stream text.
//   - Each output and traceback line also pays for its JSON frame, so a
//     flood of tiny displays is bounded too.
//   - error (the traceback) and result (stdout stripped plus the final
//     expression's value) are copies of text the answer already holds,
//     charged when the answer is assembled, error first. A copy that no
//     longer fits is cut to what is left and ends with truncatedNote; error
//     keeps the exception's name when nothing else fits. result also ends
//     with the note whenever anything was cut, because the original
//     project's clients read only result, not truncated. When stdout and
//     stderr alone filled the budget, result is therefore the note, not a
//     second copy of the same megabyte: the text is in stdout.
//
// Bytes are counted as encoding/json writes them (jsonLen): that is what
// the answer weighs on the wire, so an answer is never longer than the
// limit plus a fixed frame (field names, the note, fixed status messages,
// image and file URLs, which have their own count limits). The streamed
// events carry the same admitted text, so they stay within the same budget.
type budget struct {
	left    int
	cut     bool // some text was dropped or shortened
	dropped int  // bytes of text dropped (for the metrics)
}

// truncatedNote ends a copy (result or error) cut short by the budget. It
// is part of the fixed frame, not charged.
const truncatedNote = "[truncated: the output was over its limit; what was kept is in stdout, stderr, outputs and traceback]"

// maxNameInNote bounds the exception name repeated in a cut error, which is
// not charged either.
const maxNameInNote = 256

// Frames charged besides the text: an output object's keys, type and MIME
// (`,{"type":"update_display_data","mime":"application/json","data":"",
// "text":"","display_id":""}` is 93 bytes), and a traceback line's quotes
// and comma.
const (
	outputFrame = 96
	lineFrame   = 3
)

// take admits the longest prefix of s that fits, cut between characters,
// and reports whether it cut s.
func (b *budget) take(s string) (string, bool) {
	n, cost := jsonPrefix(s, b.left)
	b.left -= cost
	if n < len(s) {
		b.cut = true
		b.dropped += len(s) - n
		return s[:n], true
	}
	return s, false
}

// takeWhole admits s only whole and reports whether it did.
func (b *budget) takeWhole(s string) bool {
	return b.spend(jsonLen(s))
}

// spend charges n bytes if they fit and reports whether they did.
func (b *budget) spend(n int) bool {
	if n > b.left {
		b.cut = true
		return false
	}
	b.left -= n
	return true
}

// withNote ends s, a copy cut short, with truncatedNote.
func withNote(s string) string {
	if s == "" {
		return truncatedNote
	}
	return s + "\n" + truncatedNote
}

// jsonLen is the length of s inside a JSON string as encoding/json writes
// it (HTML-safe, as Fiber's and the websocket's encoders do), quotes aside.
func jsonLen(s string) int {
	_, cost := jsonPrefix(s, math.MaxInt)
	return cost
}

// jsonPrefix returns the length of the longest prefix of s, ending between
// two characters, whose JSON encoding fits in max bytes, and that size.
func jsonPrefix(s string, max int) (n, cost int) {
	for n < len(s) {
		c, size := 1, 1
		switch b := s[n]; {
		case b == '"' || b == '\\' || b == '\n' || b == '\r' || b == '\t' || b == '\b' || b == '\f':
			c = 2
		case b < 0x20 || b == '<' || b == '>' || b == '&':
			c = 6 // \u00XX
		case b >= utf8.RuneSelf:
			var r rune
			r, size = utf8.DecodeRuneInString(s[n:])
			c = size
			if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
				c = 6 // \ufffd, \u2028, \u2029
			}
		}
		if cost+c > max {
			return n, cost
		}
		n += size
		cost += c
	}
	return n, cost
}
