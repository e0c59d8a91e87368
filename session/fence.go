package session

import "strings"

// fenceLangs are the info strings of a fence stripCodeFence removes.
var fenceLangs = map[string]bool{
	"": true, "python": true, "python3": true, "py": true, "py3": true,
	"ipython": true, "ipython3": true,
}

// stripCodeFence removes a markdown code fence surrounding the whole of
// code: an opening line of three or more backticks with an optional python
// language tag ("```python", "```py", "```") and a closing line of the same
// backticks, possibly glued to the last line of code. Surrounding white
// space is tolerated. Code that is not one fenced block (plain code, two
// blocks, another language) is returned unchanged.
func stripCodeFence(code string) string {
	s := strings.TrimSpace(code)
	if !strings.HasPrefix(s, "```") {
		return code
	}
	nl := strings.IndexByte(s, '\n')
	if nl < 0 {
		return code
	}
	open := strings.TrimSpace(s[:nl])
	ticks := len(open) - len(strings.TrimLeft(open, "`"))
	fence := open[:ticks]
	if lang := strings.TrimSpace(open[ticks:]); !fenceLangs[strings.ToLower(lang)] {
		return code
	}
	body := s[nl+1:]
	if !strings.HasSuffix(body, fence) {
		return code
	}
	body = strings.TrimSuffix(body, fence)
	if strings.HasSuffix(body, "`") {
		return code // the closing fence is longer than the opening one
	}
	// Another fence line inside means several blocks (or prose between
	// them): leave the text alone.
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			return code
		}
	}
	body = strings.TrimRight(body, " \t")
	body = strings.TrimSuffix(body, "\n")
	body = strings.TrimSuffix(body, "\r")
	return body
}
