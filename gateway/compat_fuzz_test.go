package gateway

import (
	"encoding/base64"
	"regexp"
	"testing"
	"unicode/utf8"
)

var cellPayload = regexp.MustCompile(`b64decode\("([A-Za-z0-9+/=]*)"\)`)

// checkCell holds a script cell to its contract: the code is in it only as
// base64, which decodes to the code exactly, so no code can break out of
// the cell's Python.
func checkCell(t *testing.T, cell, code string) {
	t.Helper()
	m := cellPayload.FindStringSubmatch(cell)
	if m == nil {
		t.Fatalf("no payload in the cell")
	}
	b, err := base64.StdEncoding.DecodeString(m[1])
	if err != nil || string(b) != code {
		t.Fatalf("payload %q decodes to %q (%v), not the code %q", m[1], b, err, code)
	}
}

// FuzzCompatDecode feeds hostile bodies to Dify's and LibreChat's decoders
// and the cells built from what they accept.
func FuzzCompatDecode(f *testing.F) {
	for _, s := range []string{
		`{"language": "python3", "code": "print(1)", "preload": "", "enable_network": true}`,
		`{"language": "nodejs", "code": "console.log(1)\"); import os #"}`,
		`{"language": "ruby", "code": "x"}`, `{"language": 5}`, `[]`, `null`, `{"code": ""}`, `{`,
		`{"lang": "py", "code": "print(1)", "args": ["a"], "session_id": "abc", "files": [{"id": "x", "session_id": "y", "name": "../../etc/passwd"}]}`,
		`{"lang": "JS", "code": "\u0000"}`, `{"lang": "ts", "code": "let x: number = 1"}`, `{"lang": "py", "code": "   "}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if req, err := decodeDifyRun(body); err == nil {
			if *req.Language != "python3" && *req.Language != "nodejs" || *req.Code == "" {
				t.Fatalf("accepted %+v", req)
			}
			checkCell(t, pythonCell(*req.Code), *req.Code)
			checkCell(t, nodeCell(*req.Code, nil), *req.Code)
		}
		if req, lang, err := decodeLibreExec(body); err == nil {
			if lang != "python" && lang != "javascript" || len(req.Args) > 100 {
				t.Fatalf("accepted %+v as %q", req, lang)
			}
			if utf8.ValidString(*req.Code) {
				checkCell(t, nodeCell(*req.Code, req.Args), *req.Code)
			}
		}
	})
}
