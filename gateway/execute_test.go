package gateway_test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/testwait"
)

func TestStatelessExecute(t *testing.T) {
	e := newEnv(t, envOptions{publicBase: "https://ci.example.com"})

	t.Run("original fields", func(t *testing.T) {
		var raw map[string]json.RawMessage
		if st := e.do("POST", "/api/v1/execute", map[string]any{"code": "print('  hello  ')\nimport sys\nprint('warn', file=sys.stderr)"}, &raw); st != 200 {
			t.Fatalf("status %d", st)
		}
		for _, f := range []string{"result", "error", "execution_time", "image_url", "files", "inputs", "status", "stdout", "stderr", "outputs", "execution_count", "truncated"} {
			if _, ok := raw[f]; !ok {
				t.Errorf("answer lacks %q", f)
			}
		}
		var res codegw.ExecuteResult
		b, _ := json.Marshal(raw)
		json.Unmarshal(b, &res)
		if res.Result != "hello" || res.Error != nil || res.ImageURL != nil || res.Status != codegw.StatusOK {
			t.Errorf("answer = %+v", res)
		}
		if res.Stdout != "  hello  \n" || res.Stderr != "warn\n" || res.ExecutionTime <= 0 || res.ExecutionCount != 1 {
			t.Errorf("extensions = stdout %q stderr %q time %v count %d", res.Stdout, res.Stderr, res.ExecutionTime, res.ExecutionCount)
		}
		if string(raw["files"]) != "[]" || string(raw["inputs"]) != "[]" || string(raw["error"]) != "null" {
			t.Errorf("files %s inputs %s error %s", raw["files"], raw["inputs"], raw["error"])
		}
	})

	t.Run("code fence and fresh kernel per call", func(t *testing.T) {
		res := e.exec(map[string]any{"code": "```python\nsecret = 42\nprint(secret)\n```"})
		if res.Result != "42" {
			t.Fatalf("fenced code: %+v", res)
		}
		res = e.exec(map[string]any{"code": "print(secret)"})
		if res.Status != codegw.StatusError || res.EName != "NameError" {
			t.Errorf("state leaked between stateless calls: %+v", res)
		}
	})

	t.Run("error", func(t *testing.T) {
		res := e.exec(map[string]any{"code": "print('before')\n1/0"})
		if res.Status != codegw.StatusError || res.Error == nil || !strings.Contains(*res.Error, "ZeroDivisionError") || res.Result != "before" {
			t.Fatalf("answer = %+v", res)
		}
		if strings.Contains(*res.Error, "\x1b[") {
			t.Errorf("traceback keeps terminal colours: %q", *res.Error)
		}
	})

	t.Run("images", func(t *testing.T) {
		res := e.exec(map[string]any{"code": "import matplotlib.pyplot as plt\nplt.plot([1,2,3]); plt.title('中文标题'); plt.show()\nplt.figure(); plt.bar([1],[2])\nfrom IPython.display import SVG, HTML, display\ndisplay(HTML('<b>hi</b>'))\ndisplay(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\"/>'))"})
		if res.Status != codegw.StatusOK {
			t.Fatalf("answer = %+v", res)
		}
		if len(res.Images) != 3 || res.ImageURL == nil || *res.ImageURL != res.Images[0] {
			t.Fatalf("images = %v, image_url = %v", res.Images, res.ImageURL)
		}
		if !strings.HasPrefix(*res.ImageURL, "https://ci.example.com/images/") {
			t.Errorf("PUBLIC_BASE_URL not applied: %s", *res.ImageURL)
		}
		var mimes []string
		for _, o := range res.Outputs {
			mimes = append(mimes, o.MIME)
		}
		if got := strings.Join(mimes, ","); got != "image/png,text/html,image/svg+xml,image/png" {
			t.Errorf("outputs in order = %s", got)
		}
		st, hdr, body := e.get(res.Images[0])
		if st != 200 || hdr.Get("Content-Type") != "image/png" || !strings.HasPrefix(string(body), "\x89PNG") {
			t.Errorf("GET image: %d %s %q", st, hdr.Get("Content-Type"), truncate(string(body), 8))
		}
		if st, hdr, _ := e.get(res.Outputs[2].URL); st != 200 || hdr.Get("Content-Type") != "image/svg+xml" {
			t.Errorf("GET svg: %d %s", st, hdr.Get("Content-Type"))
		}
	})

	t.Run("inline images", func(t *testing.T) {
		res := e.exec(map[string]any{"code": "import matplotlib.pyplot as plt\nplt.plot([1]);", "inline_images": true})
		if len(res.Outputs) != 1 || res.Outputs[0].URL == "" {
			t.Fatalf("outputs = %+v", res.Outputs)
		}
		b, err := base64.StdEncoding.DecodeString(res.Outputs[0].Data)
		if err != nil || !strings.HasPrefix(string(b), "\x89PNG") {
			t.Errorf("inline data is not a base64 png: %v", err)
		}
	})

	t.Run("output files", func(t *testing.T) {
		res := e.exec(map[string]any{"code": `
import os
open('/code/output/report.md','w').write('# Hello')
open('/code/output/data.csv','w').write('a,b\n1,2\n')
open('/code/output/evil.exe','w').write('x')
os.symlink('/etc/passwd', '/code/output/passwd.txt')
os.mkdir('/code/output/sub'); open('/code/output/sub/x.txt','w').write('x')
`})
		if res.Status != codegw.StatusOK {
			t.Fatalf("answer = %+v", res)
		}
		names := map[string]codegw.OutputFile{}
		for _, f := range res.Files {
			names[f.OriginalName] = f
		}
		if len(names) != 2 || names["report.md"].SizeBytes != 7 || names["data.csv"].URL == "" {
			t.Fatalf("files = %+v", res.Files)
		}
		st, hdr, body := e.get(names["data.csv"].URL)
		if st != 200 || string(body) != "a,b\n1,2\n" || !strings.HasPrefix(hdr.Get("Content-Type"), "text/csv") || !strings.Contains(hdr.Get("Content-Disposition"), "data.csv") {
			t.Errorf("GET file: %d %q %v", st, body, hdr)
		}
	})

	t.Run("unknown image and file are 404", func(t *testing.T) {
		for _, p := range []string{"/images/0123456789abcdef0123456789abcdef.png", "/files/nope.csv", "/images/..%2F..%2Fetc%2Fpasswd", "/files/"} {
			var ae apiError
			st, _, body := e.get(p)
			json.Unmarshal(body, &ae)
			if st != 404 || ae.Code != codegw.ENOTFOUND {
				t.Errorf("GET %s: %d %s", p, st, body)
			}
		}
	})

	t.Run("capabilities and health", func(t *testing.T) {
		for _, p := range []string{"/capabilities", "/healthz", "/readyz"} {
			if st, _, body := e.get(p); st != 200 || !json.Valid(body) {
				t.Errorf("GET %s: %d %s", p, st, body)
			}
		}
	})
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 1})
	big := strings.Repeat("x", 1<<20+1000) // over the 1 MiB JSON limit, under Fiber's upload-sized one
	cases := []struct {
		name   string
		body   string
		status int
		code   string
	}{
		{"malformed JSON", `{"code": "print(1)"`, 400, codegw.EINVALID},
		{"not an object", `[1,2]`, 400, codegw.EINVALID},
		{"empty body", ``, 400, codegw.EINVALID},
		{"missing code", `{"files": []}`, 400, codegw.EINVALID},
		{"empty code", `{"code": "   \n"}`, 400, codegw.EINVALID},
		{"code is a number", `{"code": 5}`, 400, codegw.EINVALID},
		{"files is a string", `{"code": "1", "files": "http://x"}`, 400, codegw.EINVALID},
		{"timeout is a string", `{"code": "1", "timeout": "soon"}`, 400, codegw.EINVALID},
		{"negative timeout", `{"code": "1", "timeout": -1}`, 400, codegw.EINVALID},
		{"too many files", `{"code": "1", "files": ["http://127.0.0.1/a","http://127.0.0.1/b","http://127.0.0.1/c","http://127.0.0.1/d"]}`, 413, codegw.ETOOLARGE},
		{"oversized body", `{"code": "` + big + `"}`, 413, codegw.ETOOLARGE},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ae apiError
			st := e.do("POST", "/api/v1/execute", tc.body, &ae)
			if st != tc.status || ae.Code != tc.code || ae.Error == "" {
				t.Errorf("got %d %+v, want %d %s", st, ae, tc.status, tc.code)
			}
		})
	}
	// The server keeps serving.
	if res := e.exec(map[string]any{"code": "print(1)"}); res.Result != "1" {
		t.Errorf("after bad requests: %+v", res)
	}
}

func TestFaults(t *testing.T) {
	e := newEnv(t, envOptions{timeout: 3 * time.Second, maxOutput: 64 << 10})
	cases := []struct {
		name   string
		req    map[string]any
		status codegw.Status
		errHas string
	}{
		{"timeout", map[string]any{"code": "import time\nprint('started')\ntime.sleep(100)"}, codegw.StatusTimeout, "timed out"},
		{"per-request timeout", map[string]any{"code": "import time; time.sleep(100)", "timeout": 1}, codegw.StatusTimeout, "1s"},
		{"timeout capped by server", map[string]any{"code": "import time; time.sleep(100)", "timeout": 1000}, codegw.StatusTimeout, "3s"},
		{"ignores interrupt", map[string]any{"code": "import time\nwhile True:\n    try: time.sleep(10)\n    except KeyboardInterrupt: pass", "timeout": 1}, codegw.StatusTimeout, "killed"},
		{"os._exit", map[string]any{"code": "import os; os._exit(1)"}, codegw.StatusDied, "died"},
		{"segfault", map[string]any{"code": "import ctypes; ctypes.string_at(0)"}, codegw.StatusDied, "signal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			res := e.exec(tc.req)
			if res.Status != tc.status || res.Error == nil || !strings.Contains(*res.Error, tc.errHas) {
				t.Fatalf("status %q error %v, want %q with %q", res.Status, strOr(res.Error), tc.status, tc.errHas)
			}
			t.Logf("%s: %q in %v", tc.status, *res.Error, time.Since(start).Round(time.Millisecond))
			if next := e.exec(map[string]any{"code": "print('next')"}); next.Result != "next" {
				t.Errorf("next request after %s: %+v", tc.name, next)
			}
		})
	}

}

func TestStdoutFlood(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 1, maxOutput: 64 << 10})
	{
		stopPeak := heapPeak()
		// 200 MB of output in 1 MB writes.
		res := e.exec(map[string]any{"code": "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(200): sys.stdout.write(chunk)\nprint('end')", "timeout": 60})
		peak := stopPeak()
		if res.Status != codegw.StatusOK || !res.Truncated || len(res.Stdout) != 64<<10 {
			t.Fatalf("status %s truncated %v stdout %d bytes", res.Status, res.Truncated, len(res.Stdout))
		}
		t.Logf("peak heap in use during a 200 MB flood: %d MB", peak>>20)
		if peak > 150<<20 {
			t.Errorf("gateway heap peaked at %d MB while dropping output", peak>>20)
		}
		if next := e.exec(map[string]any{"code": "print('next')"}); next.Result != "next" {
			t.Errorf("next request after the flood: %+v", next)
		}
	}
}

// TestAnswerBound floods the output past a small MAX_OUTPUT_BYTES in every
// way text reaches an answer and checks that the whole JSON answer, and the
// streamed events, stay within the limit plus a fixed frame.
func TestAnswerBound(t *testing.T) {
	const limit, frame = 64 << 10, 2 << 10
	e := newEnv(t, envOptions{poolSize: 1, maxOutput: limit})
	bigFrame := "import pandas as pd\npd.set_option('display.max_rows', None)\ndf = pd.DataFrame({'n': range(20000), 's': ['<b>&</b>'] * 20000})\n"
	cases := []struct {
		name   string
		code   string
		status codegw.Status
	}{
		{"stdout flood, then a huge html DataFrame", "import sys\nfor _ in range(8): sys.stdout.write('x' * (1 << 20))\n" + bigFrame + "display(df)\ndf", codegw.StatusOK},
		{"a huge html DataFrame, then stderr", bigFrame + "display(df)\nimport sys\nsys.stderr.write('y' * (1 << 20))\ndf", codegw.StatusOK},
		{"a huge exception", "raise ValueError('v' * (4 << 20))", codegw.StatusError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var raw json.RawMessage
			if st := e.do("POST", "/api/v1/execute", map[string]any{"code": tc.code, "timeout": 60}, &raw); st != 200 {
				t.Fatalf("status %d", st)
			}
			var res codegw.ExecuteResult
			json.Unmarshal(raw, &res)
			t.Logf("answer: %d bytes; stdout %d, stderr %d, result %d, outputs %d", len(raw), len(res.Stdout), len(res.Stderr), len(res.Result), len(res.Outputs))
			if len(raw) > limit+frame {
				t.Errorf("the answer is %d bytes; the limit is %d (+%d of frame)", len(raw), limit, frame)
			}
			if res.Status != tc.status || !res.Truncated || res.Result == "" || (res.Status != codegw.StatusOK) != (res.Error != nil) {
				t.Errorf("status %s truncated %v result %q error %v", res.Status, res.Truncated, truncate(res.Result, 80), strOr(res.Error))
			}
			for _, o := range res.Outputs {
				if o.MIME == "text/html" && !strings.HasSuffix(strings.TrimSpace(o.Data), "</div>") {
					t.Errorf("an html output was cut: ...%q", o.Data[max(0, len(o.Data)-40):])
				}
			}

			// The same code streamed: the events stay within the budget too.
			body, _ := json.Marshal(map[string]any{"code": tc.code, "timeout": 60})
			resp, err := http.Post(e.base+"/api/v1/execute?stream=1", "application/json", strings.NewReader(string(body)))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 4<<20), 4<<20)
			events, last := 0, ""
			for sc.Scan() {
				if last != "" {
					events += len(last)
				}
				last = sc.Text()
			}
			if err := sc.Err(); err != nil {
				t.Fatalf("streamed: %v", err)
			}
			if !strings.HasPrefix(last, `{"type":"response"`) || len(last) > limit+frame || events > limit+frame {
				t.Errorf("streamed: events %d bytes, answer line %d bytes (%q...)", events, len(last), truncate(last, 40))
			}
		})
	}
}

func strOr(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func TestInputFiles(t *testing.T) {
	e := newEnv(t, envOptions{})
	var hits atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/data.csv", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, "a,b\n1,2\n3,4\n")
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Disposition", `attachment; filename="report.txt"`)
		fmt.Fprint(w, "from disposition")
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 2<<20))
	})
	mux.HandleFunc("/to-internal", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.2:"+r.URL.Query().Get("port")+"/secret", http.StatusFound)
	})
	srv := httptest.NewServer(mux) // 127.0.0.1, admitted by the allow-list
	defer srv.Close()

	t.Run("downloaded, renamed and replaced in code", func(t *testing.T) {
		u1 := srv.URL + "/data.csv"
		u2 := srv.URL + "/data.csv?v=2"
		u3 := srv.URL + "/download"
		code := fmt.Sprintf("import pandas as pd, os\ndf = pd.read_csv('data.csv')\nprint(df['b'].sum(), os.getcwd())\nprint(open(%q).read())\nprint(open('%s').read().count('\\n'))", u3, u2)
		res := e.exec(map[string]any{"code": code, "files": []string{u1, u2, u3}})
		if res.Status != codegw.StatusOK {
			t.Fatalf("answer = %+v %s", res, strOr(res.Error))
		}
		if !strings.Contains(res.Result, "6 /code/input") || !strings.Contains(res.Result, "from disposition") || !strings.HasSuffix(res.Result, "3") {
			t.Errorf("result = %q", res.Result)
		}
		var locals []string
		for _, in := range res.Inputs {
			locals = append(locals, in.LocalName+"@"+in.LocalPath)
		}
		want := "data.csv@/code/input/data.csv,2_data.csv@/code/input/2_data.csv,report.txt@/code/input/report.txt"
		if strings.Join(locals, ",") != want {
			t.Errorf("inputs = %s, want %s", strings.Join(locals, ","), want)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		internal := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			t.Error("the refused internal server was reached")
		}))
		ln, err := netListen("127.0.0.2:0")
		if err != nil {
			t.Skipf("no 127.0.0.2: %v", err)
		}
		internal.Listener = ln
		internal.Start()
		defer internal.Close()
		port := internal.URL[strings.LastIndex(internal.URL, ":")+1:]
		cases := []struct {
			url    string
			status int
			code   string
			reason string
		}{
			{srv.URL + "/to-internal?port=" + port, 403, codegw.EFORBIDDEN, "127.0.0.2"},
			{"http://10.1.2.3/x.csv", 403, codegw.EFORBIDDEN, "private"},
			{"http://169.254.169.254/latest/meta-data", 403, codegw.EFORBIDDEN, "link-local"},
			{"http://[::1]:1/x", 403, codegw.EFORBIDDEN, "loopback"},
			{"ftp://example.com/x", 400, codegw.EINVALID, "http"},
			{srv.URL + "/big", 413, codegw.ETOOLARGE, "limit"},
		}
		for _, tc := range cases {
			var ae apiError
			st := e.do("POST", "/api/v1/execute", map[string]any{"code": "print(1)", "files": []string{tc.url}}, &ae)
			if st != tc.status || ae.Code != tc.code || !strings.Contains(ae.Error, tc.url) || !strings.Contains(ae.Error, tc.reason) {
				t.Errorf("%s: %d %+v; want %d %s naming the URL and %q", tc.url, st, ae, tc.status, tc.code, tc.reason)
			}
		}
	})
}

func TestConcurrencyLimits(t *testing.T) {
	t.Run("queue full and queue timeout", func(t *testing.T) {
		e := newEnv(t, envOptions{workers: 1, queue: 1, queueWait: 1500 * time.Millisecond, poolSize: 2})
		type answer struct {
			status int
			code   string
		}
		answers := make(chan answer, 3)
		var wg sync.WaitGroup
		// The first takes the worker, the second waits in the queue (and
		// times out), the third finds the queue full.
		for i := 0; i < 3; i++ {
			switch i {
			case 1:
				testwait.Until(t, 30*time.Second, "the first execution to hold the worker", func() bool { return e.mgr.Stats().Busy == 1 })
			case 2:
				testwait.Until(t, 30*time.Second, "the second execution to queue", func() bool { return e.mgr.Stats().Waiting == 1 })
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				var raw map[string]any
				st, _ := e.post("/api/v1/execute", map[string]any{"code": "import time; time.sleep(4)"}, &raw)
				code, _ := raw["code"].(string)
				answers <- answer{st, code}
			}()
		}
		wg.Wait()
		close(answers)
		got := map[int]string{}
		for a := range answers {
			got[a.status] = a.code
		}
		if _, ok := got[200]; !ok || got[429] != codegw.ELIMIT || got[503] != codegw.EBUSY {
			t.Errorf("answers = %v; want one 200, one 429 (queue full), one 503 (queue timeout)", got)
		}
	})

	t.Run("outputs never mix", func(t *testing.T) {
		e := newEnv(t, envOptions{workers: 2, poolSize: 2})
		var wg sync.WaitGroup
		for i := 0; i < 6; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				token := fmt.Sprintf("token-%d", i)
				var res codegw.ExecuteResult
				if st, err := e.post("/api/v1/execute", map[string]any{"code": fmt.Sprintf("import time\nfor _ in range(5):\n    print(%q); time.sleep(0.05)\nopen('/code/output/%s.txt','w').write(%q)", token, token, token)}, &res); st != 200 || err != nil {
					t.Errorf("request %d: %d %v", i, st, err)
					return
				}
				if res.Stdout != strings.Repeat(token+"\n", 5) {
					t.Errorf("request %d got stdout %q", i, res.Stdout)
				}
				if len(res.Files) != 1 || res.Files[0].OriginalName != token+".txt" {
					t.Errorf("request %d got files %+v", i, res.Files)
				}
			}(i)
		}
		wg.Wait()
	})
}

func TestRetention(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 1, retention: time.Second})
	res := e.exec(map[string]any{"code": "import matplotlib.pyplot as plt\nplt.plot([1])\nopen('/code/output/a.txt','w').write('a')"})
	if len(res.Images) != 1 || len(res.Files) != 1 {
		t.Fatalf("answer = %+v", res)
	}
	if st, _, _ := e.get(res.Images[0]); st != 200 {
		t.Fatalf("fresh image: %d", st)
	}
	later := time.Now().Add(1100 * time.Millisecond) // past the retention
	for _, s := range []interface {
		Sweep(time.Time) (int, error)
	}{e.images, e.files} {
		if n, err := s.Sweep(later); err != nil || n != 1 {
			t.Errorf("sweep removed %d, err %v", n, err)
		}
	}
	for _, u := range []string{res.Images[0], res.Files[0].URL} {
		if st, _, _ := e.get(u); st != 404 {
			t.Errorf("GET %s after retention: %d", u, st)
		}
	}
}
