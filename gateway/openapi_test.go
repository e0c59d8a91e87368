package gateway_test

import (
	"bytes"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"

	"github.com/codegw/codegw/gateway"
)

func openAPIValidator(t *testing.T) validator.Validator {
	t.Helper()
	doc, err := libopenapi.NewDocument(gateway.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}
	return v
}

// TestOpenAPIDocumentValid validates openapi.json against the OpenAPI 3.1
// schema.
func TestOpenAPIDocumentValid(t *testing.T) {
	v := openAPIValidator(t)
	if ok, errs := v.ValidateDocument(); !ok {
		for _, e := range errs {
			t.Errorf("%s: %s", e.Message, e.Reason)
		}
	}
}

// TestOpenAPICoversRoutes holds the description to the routes the server
// registers: every route is described, every described route exists.
func TestOpenAPICoversRoutes(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(gateway.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	described := map[string]bool{}
	for path, item := range doc.Paths {
		for method := range item {
			if method != "parameters" {
				described[strings.ToUpper(method)+" "+path] = true
			}
		}
	}
	srv := gateway.New(gateway.Config{MCP: http.NotFoundHandler()})
	param := regexp.MustCompile(`:([A-Za-z_]+)`)
	registered := map[string]bool{}
	for _, r := range srv.App().GetRoutes(true) {
		if r.Method == http.MethodHead || r.Path == "/" || strings.HasSuffix(r.Path, "*") {
			continue // HEAD comes with GET; "/" and wildcards are middleware
		}
		registered[r.Method+" "+param.ReplaceAllString(r.Path, "{$1}")] = true
	}
	if len(registered) < 15 {
		t.Fatalf("only %d routes registered: %v", len(registered), registered)
	}
	for r := range registered {
		if !described[r] {
			t.Errorf("route %s is not described in openapi.json", r)
		}
	}
	for r := range described {
		if !registered[r] {
			t.Errorf("openapi.json describes %s, which the server does not register", r)
		}
	}
}

// TestOpenAPIMatchesTraffic validates real requests and answers of a
// gateway on real kernels against the description.
func TestOpenAPIMatchesTraffic(t *testing.T) {
	v := openAPIValidator(t)
	const key = "openapi-key"
	e := newEnv(t, envOptions{keys: []string{key}, poolSize: 1})
	call := func(method, path, ctype string, body []byte, k string) []byte {
		t.Helper()
		req, _ := http.NewRequest(method, e.base+path, bytes.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if k != "" {
			req.Header.Set("Authorization", "Bearer "+k)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(data))
		vreq, _ := http.NewRequest(method, e.base+path, bytes.NewReader(body))
		vreq.Header = req.Header
		if ok, errs := v.ValidateHttpRequestResponse(vreq, resp); !ok {
			for _, ve := range errs {
				t.Errorf("%s %s -> %d: %s: %s", method, path, resp.StatusCode, ve.Message, ve.Reason)
			}
		}
		return data
	}
	jsonCall := func(method, path string, body any) []byte {
		var b []byte
		if body != nil {
			b, _ = json.Marshal(body)
		}
		return call(method, path, "application/json", b, key)
	}
	call("GET", "/healthz", "", nil, "")
	call("GET", "/readyz", "", nil, "")
	call("GET", "/capabilities", "", nil, "")
	call("GET", "/openapi.json", "", nil, "")
	call("GET", "/api/v1/sessions", "", nil, "wrong-key")
	jsonCall("POST", "/api/v1/execute", map[string]any{"code": "print(1)\n2"})
	var sess struct{ ID string }
	json.Unmarshal(jsonCall("POST", "/api/v1/sessions", map[string]any{"idle_timeout": 60}), &sess)
	if sess.ID == "" {
		t.Fatal("no session")
	}
	p := "/api/v1/sessions/" + sess.ID
	jsonCall("GET", p, nil)
	jsonCall("GET", "/api/v1/sessions", nil)
	jsonCall("POST", p+"/execute", map[string]any{"code": "open('/code/output/o.txt','w').write('hi')\n1/0"})
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, _ := mw.CreateFormFile("file", "in.txt")
	fw.Write([]byte("data"))
	mw.Close()
	call("POST", p+"/files", mw.FormDataContentType(), buf.Bytes(), key)
	files := jsonCall("GET", p+"/files", nil)
	if !strings.Contains(string(files), "o.txt") {
		t.Fatalf("files: %s", files)
	}
	if got := call("GET", p+"/files/o.txt", "", nil, key); string(got) != "hi" {
		t.Errorf("download: %q", got)
	}
	// Dify's and LibreChat's APIs.
	call("GET", "/health", "", nil, "")
	jsonCall("POST", "/v1/sandbox/run", map[string]any{"language": "python3", "code": "print(1)", "preload": "", "enable_network": false})
	jsonCall("POST", "/v1/sandbox/run", map[string]any{"language": "ruby", "code": "1"})
	jsonCall("GET", "/v1/sandbox/dependencies?language=python3", nil)
	call("POST", "/v1/sandbox/run", "application/json", []byte(`{}`), "wrong-key")
	var lbuf bytes.Buffer
	lw := multipart.NewWriter(&lbuf)
	lf, _ := lw.CreateFormFile("file", "in.csv")
	lf.Write([]byte("a\n1\n"))
	lw.Close()
	var up struct {
		SessionID string `json:"session_id"`
		Files     []struct{ FileID string }
	}
	json.Unmarshal(call("POST", "/librechat/upload", lw.FormDataContentType(), lbuf.Bytes(), key), &up)
	if up.SessionID == "" || len(up.Files) != 1 {
		t.Fatalf("librechat upload: %+v", up)
	}
	jsonCall("POST", "/librechat/exec", map[string]any{"lang": "py", "code": "open('/mnt/data/o.txt','w').write('x')", "session_id": up.SessionID})
	jsonCall("POST", "/librechat/exec", map[string]any{"lang": "ts", "code": "1"})
	jsonCall("GET", "/librechat/files/"+up.SessionID, nil)
	call("GET", "/librechat/download/"+up.SessionID+"/"+up.Files[0].FileID, "", nil, key)
	jsonCall("DELETE", "/librechat/files/"+up.SessionID+"/"+up.Files[0].FileID, nil)
	jsonCall("GET", "/librechat/files/nosuchsession", nil)
	jsonCall("POST", p+"/interrupt", nil)
	jsonCall("POST", p+"/restart", nil)
	// Snapshots: checkpoint, branch, pause, read paused, resume.
	jsonCall("POST", p+"/execute", map[string]any{"code": "x = 1\ng = (i for i in range(2))"})
	var ck struct{ ID string }
	json.Unmarshal(jsonCall("POST", p+"/checkpoint", nil), &ck)
	jsonCall("GET", p+"/snapshots", nil)
	var br struct{ ID string }
	json.Unmarshal(jsonCall("POST", "/api/v1/sessions", map[string]any{"from_snapshot": ck.ID}), &br)
	jsonCall("POST", "/api/v1/sessions", map[string]any{"from_snapshot": "ck_nosuchsnapshot"})
	jsonCall("POST", p+"/pause", nil)
	jsonCall("GET", p, nil)
	jsonCall("GET", "/api/v1/sessions", nil)
	jsonCall("POST", p+"/pause", nil)
	jsonCall("POST", p+"/resume", nil)
	jsonCall("POST", p+"/execute", map[string]any{"code": "x"})
	jsonCall("DELETE", "/api/v1/sessions/"+br.ID, nil)
	jsonCall("DELETE", p, nil)
	jsonCall("GET", p, nil)
}
