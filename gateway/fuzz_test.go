package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/session"
	"github.com/codegw/codegw/session/inputs"
)

// fuzzCtx returns a Fiber context holding a request with body and
// content type, and its release.
func fuzzCtx(app *fiber.App, contentType string, body []byte) (*fiber.Ctx, func()) {
	rc := &fasthttp.RequestCtx{}
	rc.Request.Header.SetMethod(fiber.MethodPost)
	rc.Request.Header.SetContentType(contentType)
	rc.Request.SetBody(body)
	c := app.AcquireCtx(rc)
	return c, func() { app.ReleaseCtx(c) }
}

// isClientError reports whether err is answered with a 4xx.
func isClientError(err error) bool {
	switch codegw.ErrorCode(err) {
	case codegw.EINVALID, codegw.ETOOLARGE, codegw.ENOTFOUND:
		return true
	}
	return false
}

// FuzzExecuteBody feeds arbitrary bodies to the execute decoder (stateless
// and session calls share it): every refusal is a client error, and what
// it accepts has its code and only non-empty input URLs.
func FuzzExecuteBody(f *testing.F) {
	for _, b := range []string{
		`{"code":"print(1)"}`,
		`{"code":"` + "```python\\nprint(1)\\n```" + `","files":["https://example.com/a.csv"],"timeout":2.5,"inline_images":true}`,
		`{"code":""}`, `{}`, `[]`, `null`, `{"code":1}`, `{"files":"x","code":"1"}`, `{"code":"1","files":[" "]}`,
		`{"code":"1","timeout":1e400}`, `{"code":"1","timeout":-1}`, `{"code":"\ud800"}`, `{"code":"1"} trailing`,
	} {
		f.Add([]byte(b))
	}
	s := &Server{cfg: Config{BodyLimit: 64 << 10}}
	app := fiber.New()
	f.Fuzz(func(t *testing.T, body []byte) {
		c, release := fuzzCtx(app, fiber.MIMEApplicationJSON, body)
		defer release()
		req, err := s.decodeExecute(c)
		if err != nil {
			if !isClientError(err) {
				t.Fatalf("refusal %v is not a client error", err)
			}
			return
		}
		for _, u := range req.Files {
			if strings.TrimSpace(u) == "" {
				t.Fatal("accepted an empty input URL")
			}
		}
	})
}

// FuzzSessionMessage feeds arbitrary frames of a session websocket to its
// decoder, the body of POST /sessions to its own, and builds the error
// frame a refusal gets: refusals are client errors, accepted messages have
// a known type and a bounded id, and no idle timeout turns negative.
func FuzzSessionMessage(f *testing.F) {
	for _, b := range []string{
		`{"type":"execute","id":"e1","code":"print(1)","files":[],"timeout":5}`,
		`{"type":"input_reply","value":"42"}`, `{"type":"interrupt","id":"i"}`, `{"type":"restart"}`, `{"type":"ping"}`,
		`{"type":""}`, `{"type":"execute","id":"` + strings.Repeat("x", 65) + `"}`, `{"type":"nope"}`, `not json`,
		`{"idle_timeout":60,"env":{"A":"1"}}`, `{"idle_timeout":1e10}`, `{"idle_timeout":-1e300}`, `{"env":{"":"x"}}`,
	} {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseClientMessage(data)
		id := messageID(data)
		if len(id) > 64 {
			t.Fatalf("messageID kept a %d-byte id", len(id))
		}
		if err != nil {
			if !isClientError(err) {
				t.Fatalf("refusal %v is not a client error", err)
			}
			if _, err := json.Marshal(errorFrame(err, id)); err != nil {
				t.Fatalf("error frame does not encode: %v", err)
			}
		} else {
			switch m.Type {
			case "execute", "interrupt", "restart", "input_reply", "ping":
			default:
				t.Fatalf("accepted type %q", m.Type)
			}
			if len(m.ID) > 64 {
				t.Fatalf("accepted a %d-byte id", len(m.ID))
			}
		}
		opts, err := parseSessionOptions(data)
		if err != nil {
			if !isClientError(err) {
				t.Fatalf("refusal %v is not a client error", err)
			}
			return
		}
		var body struct {
			IdleTimeout float64 `json:"idle_timeout"`
		}
		json.Unmarshal(data, &body)
		if (body.IdleTimeout >= 0) != (opts.IdleTimeout >= 0) {
			t.Fatalf("idle_timeout %v became %v", body.IdleTimeout, opts.IdleTimeout)
		}
	})
}

// FuzzUpload feeds arbitrary multipart bodies to the upload path (Fiber's
// form parser, then the save of each file): every refusal is a client
// error, and every file saved lies directly in the input directory under
// its sanitised name, within the limit, with no temporary file left.
func FuzzUpload(f *testing.F) {
	form := func(parts ...string) []byte {
		var b bytes.Buffer
		w := multipart.NewWriter(&b)
		w.SetBoundary("fuzzboundary")
		for i := 0; i+1 < len(parts); i += 2 {
			fw, _ := w.CreateFormFile("file", parts[i])
			fw.Write([]byte(parts[i+1]))
		}
		w.Close()
		return b.Bytes()
	}
	f.Add(form("data.csv", "a,b\n1,2\n"))
	f.Add(form("../../etc/passwd", "x", `..\win.ini`, "y", "same.txt", "1", "same.txt", "2"))
	f.Add(form(".", "", strings.Repeat("数", 100)+".csv", strings.Repeat("z", 100)))
	f.Add([]byte("--fuzzboundary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\x00b\"\r\n\r\nx\r\n--fuzzboundary--\r\n"))
	f.Add([]byte("--fuzzboundary\r\nContent-Disposition: form-data; name=\"f\"; filename*=UTF-8''%2e%2e%2fx\r\n\r\n"))
	const limit = 64
	app := fiber.New()
	f.Fuzz(func(t *testing.T, body []byte) {
		c, release := fuzzCtx(app, "multipart/form-data; boundary=fuzzboundary", body)
		defer release()
		form, err := c.MultipartForm()
		if err != nil {
			return // answered EINVALID by the handler
		}
		defer form.RemoveAll()
		dir := t.TempDir()
		saved, err := saveForm(form, limit, func(name string, r io.Reader, limit int64) (session.FileInfo, error) {
			return session.SaveUpload(dir, name, r, limit)
		})
		if err != nil && !isClientError(err) {
			t.Fatalf("refusal %v is not a client error", err)
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".upload-") {
				t.Fatalf("temporary file %s left", e.Name())
			}
			fi, _ := e.Info()
			if !e.Type().IsRegular() || fi.Size() > limit {
				t.Fatalf("%s: mode %v, %d bytes", e.Name(), e.Type(), fi.Size())
			}
		}
		for _, fi := range saved {
			if fi.Name != inputs.SanitizeName(fi.Name) || fi.Name == "" || strings.ContainsAny(fi.Name, `/\`) {
				t.Fatalf("saved under %q", fi.Name)
			}
			if _, err := os.Lstat(filepath.Join(dir, fi.Name)); err != nil {
				t.Fatalf("saved %q is not in the directory: %v", fi.Name, err)
			}
		}
	})
}

// FuzzContentDisposition checks the download header of output files, whose
// names the kernel's code chooses (any bytes but '/' and NUL): no control
// character reaches the header, and a client reading it gets the name back.
func FuzzContentDisposition(f *testing.F) {
	for _, n := range []string{"plot.png", "数据.csv", "a\r\nSet-Cookie: x=1", `q"u\o;te.txt`, "100%.txt", "\xff\xfe", "it's (1).txt"} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, name string) {
		h := contentDisposition(name)
		if strings.ContainsFunc(h, func(r rune) bool { return r < 0x20 || r >= 0x7f }) {
			t.Fatalf("header %q has a control or non-ASCII character", h)
		}
		_, params, err := mime.ParseMediaType(h)
		if err != nil {
			t.Fatalf("header %q does not parse: %v", h, err)
		}
		if utf8.ValidString(name) && params["filename"] != name {
			t.Fatalf("header %q gives back %q, want %q", h, params["filename"], name)
		}
	})
}
