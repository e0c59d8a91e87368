package gateway_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codegw/codegw/app"
)

// The runner scripts below are what Dify's code node sends to its sandbox
// (api/core/helper/code_executor: the Python3, NodeJs and Jinja2 template
// transformers), with {{code}}, {{inputs}} (base64 JSON) and, for Jinja2,
// {{template_b64}} filled in as Dify fills them. Dify reads the answer's
// data.stdout between two <<RESULT>> markers; a non-empty data.error, or a
// code other than 0, is the node's error message.
const (
	difyPython3Runner = `
# Override built-in print to add auto-flush for real-time logs
import builtins
original_print = builtins.print
def print(*args, **kwargs):
    kwargs.setdefault('flush', True)
    return original_print(*args, **kwargs)
builtins.print = print

# declare main function
{{code}}

import json
import sys
from base64 import b64decode

# decode and prepare input dict
inputs_obj = json.loads(b64decode('{{inputs}}').decode('utf-8'))

# execute main function
output_obj = main(**inputs_obj)

# convert output to json and print
output_json = json.dumps(output_obj, indent=4)
result = f'''<<RESULT>>{output_json}<<RESULT>>'''
print(result)
`
	difyNodeRunner = `{{code}}

// decode and prepare input object
var inputs_obj = JSON.parse(Buffer.from('{{inputs}}', 'base64').toString('utf-8'))

// execute main function
var output_obj = main(inputs_obj)

// convert output to json and print
var output_json = JSON.stringify(output_obj)
var result = ` + "`<<RESULT>>${output_json}<<RESULT>>`" + `
console.log(result)
`
	difyJinja2Runner = `
import jinja2
import json
from base64 import b64decode

# declare main function
def main(**inputs):
    # Decode base64-encoded template to handle special characters safely
    template_code = b64decode('{{template_b64}}').decode('utf-8')
    template = jinja2.Template(template_code)
    return template.render(**inputs)

# decode and prepare input dict
inputs_obj = json.loads(b64decode('{{inputs}}').decode('utf-8'))

# execute main function
output = main(**inputs_obj)

# convert output and print
result = f'''<<RESULT>>{output}<<RESULT>>'''
print(result)

`
	difyJinja2Preload = `
import jinja2
from base64 import b64decode

def _jinja2_preload_():
    # prepare jinja2 environment, load template and render before to avoid sandbox issue
    template = jinja2.Template('{{s}}')
    template.render(s='a')

if __name__ == '__main__':
    _jinja2_preload_()

`
)

// difyScript fills a runner as Dify's TemplateTransformer does.
func difyScript(runner, code string, inputs map[string]any) string {
	in, _ := json.Marshal(inputs)
	s := strings.ReplaceAll(runner, "{{template_b64}}", base64.StdEncoding.EncodeToString([]byte(code)))
	s = strings.ReplaceAll(s, "{{code}}", code)
	return strings.ReplaceAll(s, "{{inputs}}", base64.StdEncoding.EncodeToString(in))
}

// difyResponse is dify-sandbox's answer as Dify's CodeExecutionResponse
// reads it, with the fields dify-sandbox adds.
type difyResponse struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    *struct {
		Stdout   string `json:"stdout"`
		Stderr   string `json:"stderr"`
		Error    string `json:"error"`
		ExitCode int    `json:"exit_code"`
	} `json:"data"`
}

var difyResultTag = regexp.MustCompile(`(?s)<<RESULT>>(.*)<<RESULT>>`)

// difyPost sends a request as Dify's code executor does: JSON, X-Api-Key.
func difyPost(base, key string, body any) (int, difyResponse, string, error) {
	var b []byte
	switch v := body.(type) {
	case string:
		b = []byte(v)
	default:
		b, _ = json.Marshal(v)
	}
	req, _ := http.NewRequest("POST", base+"/v1/sandbox/run", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("X-Api-Key", key)
	}
	resp, err := (&http.Client{Timeout: 3 * time.Minute}).Do(req)
	if err != nil {
		return 0, difyResponse{}, "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out difyResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return resp.StatusCode, out, string(raw), fmt.Errorf("answer %q is not JSON: %v", truncate(string(raw), 200), err)
	}
	return resp.StatusCode, out, string(raw), nil
}

// difyParse does what Dify does with an answer: the message of a failure,
// else the JSON between the result markers.
func difyParse(st int, r difyResponse) (map[string]any, error) {
	switch {
	case st == 503:
		return nil, fmt.Errorf("Code execution service is unavailable")
	case st != 200:
		return nil, fmt.Errorf("Failed to execute code, got status code %d", st)
	case r.Code != 0:
		return nil, fmt.Errorf("%s", r.Message)
	case r.Data == nil:
		return nil, fmt.Errorf("no data")
	case r.Data.Error != "":
		return nil, fmt.Errorf("%s", r.Data.Error)
	}
	m := difyResultTag.FindStringSubmatch(r.Data.Stdout)
	if m == nil {
		return nil, fmt.Errorf("Failed to parse result: no result tag found in response. Response: %s", truncate(r.Data.Stdout, 200))
	}
	var out map[string]any
	if err := json.Unmarshal([]byte(m[1]), &out); err != nil {
		return map[string]any{"result": m[1]}, nil // Jinja2: the text itself
	}
	return out, nil
}

func TestDifySandboxAPI(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"dify-key", "other-key"}, tune: func(c *app.Config) {
		c.DifyNetwork, c.DifyTimeout = "offline", 6*time.Second
	}})
	run := func(lang, code, preload string) (int, difyResponse) {
		t.Helper()
		st, r, raw, err := difyPost(e.base, "dify-key", map[string]any{"language": lang, "code": code, "preload": preload, "enable_network": true})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s -> %d %s", lang, st, truncate(raw, 400))
		return st, r
	}

	t.Run("python3", func(t *testing.T) {
		code := "import pandas as pd\ndef main(arg1: str, arg2: str) -> dict:\n    print('side output')\n    return {\"result\": arg1 + arg2, \"rows\": int(pd.DataFrame({'a': [1, 2, 3]}).a.sum())}\n"
		st, r := run("python3", difyScript(difyPython3Runner, code, map[string]any{"arg1": "hello ", "arg2": "世界"}), "")
		out, err := difyParse(st, r)
		if err != nil || out["result"] != "hello 世界" || out["rows"] != 6.0 || r.Message != "success" || r.Data.ExitCode != 0 {
			t.Fatalf("parsed %v, %v", out, err)
		}
	})
	t.Run("nodejs", func(t *testing.T) {
		code := "function main({arg1, arg2}) {\n    return {\n        result: arg1 + arg2, v: process.version\n    }\n}\n"
		st, r := run("nodejs", difyScript(difyNodeRunner, code, map[string]any{"arg1": "hello ", "arg2": "world"}), "")
		out, err := difyParse(st, r)
		if err != nil || out["result"] != "hello world" || !strings.HasPrefix(fmt.Sprint(out["v"]), "v") {
			t.Fatalf("parsed %v, %v", out, err)
		}
	})
	t.Run("jinja2", func(t *testing.T) {
		tmpl := "Hello {{ name }}! {% for x in items %}[{{ x }}]{% endfor %} \"quoted\" '''"
		st, r := run("python3", difyScript(difyJinja2Runner, tmpl, map[string]any{"name": "Dify", "items": []int{1, 2}}), difyJinja2Preload)
		out, err := difyParse(st, r)
		if err != nil || out["result"] != "Hello Dify! [1][2] \"quoted\" '''" {
			t.Fatalf("parsed %v, %v", out, err)
		}
	})
	t.Run("exception", func(t *testing.T) {
		code := "def main(arg1: str) -> dict:\n    raise ValueError('bad input: ' + arg1)\n"
		st, r := run("python3", difyScript(difyPython3Runner, code, map[string]any{"arg1": "x"}), "")
		_, err := difyParse(st, r)
		if err == nil || !strings.HasPrefix(err.Error(), "process exited with code 1\n") || !strings.Contains(err.Error(), "ValueError: bad input: x") ||
			r.Data.ExitCode != 1 || !strings.Contains(r.Data.Stderr, "ValueError: bad input: x") {
			t.Fatalf("error %v, data %+v", err, r.Data)
		}
	})
	t.Run("nodejs exception", func(t *testing.T) {
		code := "function main({arg1}) {\n    throw new Error('boom ' + arg1)\n}\n"
		st, r := run("nodejs", difyScript(difyNodeRunner, code, map[string]any{"arg1": "y"}), "")
		_, err := difyParse(st, r)
		if err == nil || !strings.HasPrefix(err.Error(), "process exited with code 1\n") || !strings.Contains(err.Error(), "Error: boom y") || r.Data.ExitCode != 1 {
			t.Fatalf("error %v, data %+v", err, r.Data)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		for _, lang := range []string{"python3", "nodejs"} {
			code := "print('before', flush=True)\nwhile True:\n    pass\n"
			if lang == "nodejs" {
				code = "console.log('before'); while (true) {}"
			}
			start := time.Now()
			st, r := run(lang, code, "")
			_, err := difyParse(st, r)
			if err == nil || !strings.HasPrefix(err.Error(), "process exited with code -1\nerror: timeout\n") || r.Data.ExitCode != -1 {
				t.Fatalf("%s: error %v, data %+v", lang, err, r.Data)
			}
			if took := time.Since(start); took > time.Minute {
				t.Errorf("%s: the timeout of 6 s took %v", lang, took)
			}
		}
	})
	t.Run("preload", func(t *testing.T) {
		st, r := run("python3", "print(PRELOADED)", "PRELOADED = 41 + 1")
		if st != 200 || r.Code != 0 || strings.TrimSpace(r.Data.Stdout) != "42" {
			t.Fatalf("%d %+v", st, r)
		}
	})
	t.Run("dependencies and health", func(t *testing.T) {
		var deps struct {
			Code int
			Data struct {
				Dependencies []struct{ Name, Version string }
			}
		}
		if st := e.do("GET", "/v1/sandbox/dependencies?language=python3", nil, &deps, "X-Api-Key", "dify-key", "Authorization", ""); st != 200 || deps.Code != 0 || len(deps.Data.Dependencies) == 0 || deps.Data.Dependencies[0].Name != "pandas" {
			t.Fatalf("dependencies: %d %+v", st, deps)
		}
		var refresh struct{ Code int }
		if st := e.do("GET", "/v1/sandbox/dependencies/refresh?language=python3", nil, &refresh, "X-Api-Key", "dify-key", "Authorization", ""); st != 200 || refresh.Code != 0 {
			t.Fatalf("refresh: %d %+v", st, refresh)
		}
		var health string
		if st := e.do("GET", "/health", nil, &health, "Authorization", ""); st != 200 || health != "ok" {
			t.Fatalf("health: %d %q", st, health)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		cases := []struct {
			name, key string
			body      any
			status    int
			message   string
		}{
			{"wrong key", "nope", map[string]any{"language": "python3", "code": "print(1)"}, 401, "unknown API key"},
			{"no key", "", map[string]any{"language": "python3", "code": "print(1)"}, 401, "missing API key"},
			{"malformed JSON", "dify-key", `{"language": "python3", "code": `, 400, "not a JSON object"},
			{"not an object", "dify-key", `[1, 2]`, 400, "not a JSON object"},
			{"missing language", "dify-key", map[string]any{"code": "print(1)"}, 400, "language is required"},
			{"missing code", "dify-key", map[string]any{"language": "python3"}, 400, "code is required"},
			{"code of another type", "dify-key", map[string]any{"language": "python3", "code": 5}, 400, "not a JSON object"},
			{"unsupported language", "dify-key", map[string]any{"language": "ruby", "code": "puts 1"}, 400, "unsupported language"},
			{"huge body", "dify-key", map[string]any{"language": "python3", "code": strings.Repeat("#", 3<<19)}, 413, ""},
		}
		for _, c := range cases {
			st, r, raw, err := difyPost(e.base, c.key, c.body)
			if err != nil || st != c.status || r.Code >= 0 || !strings.Contains(r.Message, c.message) {
				t.Errorf("%s: %d %s (%v)", c.name, st, truncate(raw, 300), err)
			}
		}
	})
}

// TestDifyNetworkRefused: by default a run asking for network (Dify always
// asks) gets dify-sandbox's own refusal, which Dify shows, and never runs.
func TestDifyNetworkRefused(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"k"}})
	st, r, raw, err := difyPost(e.base, "k", map[string]any{"language": "python3", "code": "print(1)", "preload": "", "enable_network": true})
	if err != nil || st != 200 || r.Code != -400 || !strings.HasPrefix(r.Message, "network is disabled, please enable it in the configuration") || !strings.Contains(r.Message, "DIFY_NETWORK=offline") {
		t.Fatalf("%d %s %v", st, raw, err)
	}
	st, r, raw, err = difyPost(e.base, "k", map[string]any{"language": "python3", "code": "print(1)", "enable_network": false})
	if err != nil || st != 200 || r.Code != 0 || r.Data.Stdout != "1\n" {
		t.Fatalf("without network: %d %s %v", st, raw, err)
	}
}

// TestDifyBurst: 50 concurrent runs, as in dify issue #24286, queue within
// the limits and all answer; none is a server error.
func TestDifyBurst(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"k"}, queueWait: 5 * time.Minute, tune: func(c *app.Config) {
		c.DifyNetwork, c.DifyTimeout = "offline", time.Minute
	}})
	const n = 50
	code := "def main(i: int) -> dict:\n    return {\"result\": i * 2}\n"
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := map[string]any{"language": "python3", "code": difyScript(difyPython3Runner, code, map[string]any{"i": i}), "preload": "", "enable_network": true}
			if i%5 == 0 {
				body["language"] = "nodejs"
				body["code"] = difyScript(difyNodeRunner, "function main({i}) { return {result: i * 2} }", map[string]any{"i": i})
			}
			st, r, raw, err := difyPost(e.base, "k", body)
			if err != nil {
				errs <- err
				return
			}
			out, err := difyParse(st, r)
			if err != nil || out["result"] != float64(2*i) {
				errs <- fmt.Errorf("run %d: %d %s: %v", i, st, truncate(raw, 300), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
