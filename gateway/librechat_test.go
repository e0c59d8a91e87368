package gateway_test

import (
	"bytes"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw/app"
)

// libreExecResult is /librechat/exec's answer as @librechat/agents reads it.
type libreExecResult struct {
	SessionID string `json:"session_id"`
	Stdout    string `json:"stdout"`
	Stderr    string `json:"stderr"`
	Error     string `json:"error"`
	Files     []struct {
		ID   string `json:"id"`
		Name string `json:"name"`
		Path string `json:"path"`
	} `json:"files"`
}

// libreCall sends a request as LibreChat does (x-api-key) and returns the
// status and body.
func libreCall(t *testing.T, e *env, key, method, path, ctype string, body []byte) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, e.base+"/librechat"+path, bytes.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("User-Agent", "LibreChat/1.0")
	if key != "" {
		req.Header.Set("x-api-key", key)
	}
	resp, err := (&http.Client{Timeout: 3 * time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func libreExec(t *testing.T, e *env, key string, body map[string]any) (int, libreExecResult, string) {
	t.Helper()
	j, _ := json.Marshal(body)
	st, b := libreCall(t, e, key, "POST", "/exec", "application/json", j)
	var r libreExecResult
	if st == 200 {
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("exec answer %q: %v", truncate(string(b), 300), err)
		}
	}
	return st, r, string(b)
}

func libreUpload(t *testing.T, e *env, key, name string, data []byte) (sessionID, fileID string) {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	w.WriteField("entity_id", "agent_1")
	fw, _ := w.CreateFormFile("file", name)
	fw.Write(data)
	w.Close()
	st, b := libreCall(t, e, key, "POST", "/upload", w.FormDataContentType(), buf.Bytes())
	var r struct {
		Message   string `json:"message"`
		SessionID string `json:"session_id"`
		Files     []struct{ FileID, Filename string }
	}
	if err := json.Unmarshal(b, &r); st != 200 || err != nil || r.Message != "success" || len(r.Files) != 1 || r.Files[0].Filename != name {
		t.Fatalf("upload: %d %s", st, b)
	}
	return r.SessionID, r.Files[0].FileID
}

func TestLibreChatAPI(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"lc-key", "other-key"}, tune: func(c *app.Config) { c.LibreChatStorePath = t.TempDir() }})

	// An upload, then code that reads it and writes a CSV and a plot.
	sid, fid := libreUpload(t, e, "lc-key", "data.csv", []byte("x,y\n1,2\n3,4\n"))
	st, r, raw := libreExec(t, e, "lc-key", map[string]any{"lang": "py", "session_id": sid, "files": []map[string]any{{"id": fid, "session_id": sid, "name": "data.csv"}},
		"code": `import pandas as pd, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
df = pd.read_csv("/mnt/data/data.csv")
print(int(df.y.sum()))
df.assign(z=df.x * 10).to_csv("/mnt/data/out.csv", index=False)
plt.plot(df.x, df.y); plt.savefig("/mnt/data/plot.png")`})
	if st != 200 || r.SessionID != sid || strings.TrimSpace(r.Stdout) != "6" || r.Stderr != "" || len(r.Files) != 2 {
		t.Fatalf("exec: %d %s", st, raw)
	}
	got := map[string]string{}
	for _, f := range r.Files {
		got[f.Name] = f.ID
	}
	st, b := libreCall(t, e, "lc-key", "GET", "/download/"+sid+"/"+got["out.csv"], "", nil)
	if st != 200 || string(b) != "x,y,z\n1,2,10\n3,4,30\n" {
		t.Fatalf("download out.csv: %d %q", st, b)
	}
	st, b = libreCall(t, e, "lc-key", "GET", "/download/"+sid+"/"+got["plot.png"], "", nil)
	if st != 200 || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("download plot.png: %d %d bytes", st, len(b))
	}
	st, b = libreCall(t, e, "lc-key", "GET", "/files/"+sid+"?detail=full", "", nil)
	var list []struct{ Name, ID, Filename string }
	if json.Unmarshal(b, &list); st != 200 || len(list) != 3 || list[0].Name != sid+"/"+fid {
		t.Fatalf("files: %d %s", st, b)
	}

	// A second call in the session sees its files; variables do not persist.
	st, r, raw = libreExec(t, e, "lc-key", map[string]any{"lang": "js", "session_id": sid, "args": []string{"A"},
		"code": `const fs = require("fs"); console.log(fs.readFileSync("/mnt/data/out.csv", "utf8").split("\n").length, process.argv[2]); fs.writeFileSync("note.txt", "from js")`})
	if st != 200 || strings.TrimSpace(r.Stdout) != "4 A" || len(r.Files) != 1 || r.Files[0].Name != "note.txt" {
		t.Fatalf("js exec: %d %s", st, raw)
	}
	st, r, raw = libreExec(t, e, "lc-key", map[string]any{"lang": "py", "session_id": sid, "code": "print(df)"})
	if st != 200 || !strings.Contains(r.Stderr, "NameError: name 'df' is not defined") || r.Error == "" {
		t.Fatalf("error: %d %s", st, raw)
	}

	// Delete.
	st, _ = libreCall(t, e, "lc-key", "DELETE", "/files/"+sid+"/"+got["out.csv"], "", nil)
	if st != 200 {
		t.Fatalf("delete: %d", st)
	}
	if st, _ = libreCall(t, e, "lc-key", "GET", "/download/"+sid+"/"+got["out.csv"], "", nil); st != 404 {
		t.Fatalf("download after delete: %d", st)
	}

	t.Run("bad input", func(t *testing.T) {
		cases := []struct {
			name, key, method, path string
			body                    string
			status                  int
			want                    string
		}{
			{"wrong key", "nope", "POST", "/exec", `{"lang":"py","code":"print(1)"}`, 401, "unknown API key"},
			{"no key", "", "POST", "/exec", `{"lang":"py","code":"print(1)"}`, 401, "missing API key"},
			{"malformed JSON", "lc-key", "POST", "/exec", `{"lang":"py",`, 400, "not a JSON object"},
			{"missing lang", "lc-key", "POST", "/exec", `{"code":"print(1)"}`, 400, "lang is required; supported: py, js"},
			{"missing code", "lc-key", "POST", "/exec", `{"lang":"py"}`, 400, "code is required"},
			{"typescript", "lc-key", "POST", "/exec", `{"lang":"ts","code":"let x: number = 1"}`, 400, `unsupported language "ts"; supported: py, js`},
			{"unknown language", "lc-key", "POST", "/exec", `{"lang":"cobol","code":"x"}`, 400, "supported: py, js"},
			{"huge body", "lc-key", "POST", "/exec", `{"lang":"py","code":"` + strings.Repeat("#", 3<<19) + `"}`, 413, "the limit is"},
			{"another key's session", "other-key", "POST", "/exec", `{"lang":"py","code":"print(1)","session_id":"` + sid + `"}`, 404, "not found"},
			{"another key's file", "other-key", "POST", "/exec", `{"lang":"py","code":"print(1)","files":[{"id":"` + fid + `","session_id":"` + sid + `","name":"data.csv"}]}`, 404, "not found"},
			{"another key's listing", "other-key", "GET", "/files/" + sid, "", 404, "not found"},
			{"another key's download", "other-key", "GET", "/download/" + sid + "/" + fid, "", 404, "not found"},
			{"another key's delete", "other-key", "DELETE", "/files/" + sid + "/" + fid, "", 404, "not found"},
			{"a path as id", "lc-key", "GET", "/download/" + sid + "/..%2f..%2fx", "", 404, "not found"},
			{"upload without a file", "lc-key", "POST", "/upload", "", 400, "multipart"},
		}
		for _, c := range cases {
			ctype := "application/json"
			if c.body == "" {
				ctype = ""
			}
			st, b := libreCall(t, e, c.key, c.method, c.path, ctype, []byte(c.body))
			var ae apiError
			if json.Unmarshal(b, &ae); st != c.status || !strings.Contains(ae.Error, c.want) || ae.Code == "" || strings.Contains(string(b), "data.csv") {
				t.Errorf("%s: %d %s", c.name, st, truncate(string(b), 300))
			}
		}
		// The file is still there for its owner.
		if st, b := libreCall(t, e, "lc-key", "GET", "/download/"+sid+"/"+fid, "", nil); st != 200 || string(b) != "x,y\n1,2\n3,4\n" {
			t.Errorf("owner's download: %d %q", st, b)
		}
	})
}
