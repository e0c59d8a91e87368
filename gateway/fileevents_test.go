package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/codegw/codegw"
)

// The example: two files written two seconds apart, each followed
// by a print.
const twoFiles = `import time
open('/code/output/a.csv','w').write('1'); print('wrote a', flush=True)
time.sleep(2)
open('/code/output/b.csv','w').write('2'); print('wrote b', flush=True)
time.sleep(2); print('end')`

// ndjsonEvents runs body at path with NDJSON and returns the events and the
// final answer. onEvent, when set, sees each event as it comes.
func (e *env) ndjsonEvents(t *testing.T, path string, body map[string]any, onEvent func(codegw.Event)) ([]codegw.Event, codegw.ExecuteResult) {
	t.Helper()
	j, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", e.base+path, strings.NewReader(string(j)))
	req.Header.Set("Accept", "application/x-ndjson")
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 3 * time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var evs []codegw.Event
	var res codegw.ExecuteResult
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	for sc.Scan() {
		var head struct{ Type string }
		json.Unmarshal(sc.Bytes(), &head)
		if head.Type == "response" {
			if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var ev codegw.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
		if onEvent != nil {
			onEvent(ev)
		}
	}
	if res.Status == "" {
		t.Fatalf("%s: no response line after %s", path, eventTypes(evs))
	}
	return evs, res
}

// at returns the index of the first event that matches, or fails.
func at(t *testing.T, evs []codegw.Event, what string, match func(codegw.Event) bool) int {
	t.Helper()
	for i, ev := range evs {
		if match(ev) {
			return i
		}
	}
	t.Fatalf("no %s among %s", what, eventTypes(evs))
	return -1
}

func fileEv(name string) func(codegw.Event) bool {
	return func(ev codegw.Event) bool {
		return ev.Type == codegw.EventFile && ev.File != nil && ev.File.OriginalName == name
	}
}

func streamEv(text string) func(codegw.Event) bool {
	return func(ev codegw.Event) bool { return ev.Type == codegw.EventStream && strings.Contains(ev.Text, text) }
}

func isDone(ev codegw.Event) bool { return ev.Type == codegw.EventDone }

// fileEvents returns the file events of evs.
func fileEvents(evs []codegw.Event) []codegw.OutputFile {
	var out []codegw.OutputFile
	for _, ev := range evs {
		if ev.Type == codegw.EventFile && ev.File != nil {
			out = append(out, *ev.File)
		}
	}
	return out
}

// sameFiles checks the invariant: the answer's files are the last version
// streamed of each name, nothing missing, nothing more.
func sameFiles(t *testing.T, evs []codegw.Event, files []codegw.OutputFile) {
	t.Helper()
	last := map[string]codegw.OutputFile{}
	for _, f := range fileEvents(evs) {
		last[f.OriginalName] = f
	}
	if len(files) != len(last) {
		t.Errorf("answer files %+v, streamed %+v", files, fileEvents(evs))
		return
	}
	for _, f := range files {
		if last[f.OriginalName] != f {
			t.Errorf("answer lists %+v, last streamed %+v", f, last[f.OriginalName])
		}
	}
}

// checkTwoFiles checks the issue's example: a.csv's event before "wrote
// b", b.csv's before "end", both before done (in event order).
func checkTwoFiles(t *testing.T, evs []codegw.Event) {
	t.Helper()
	a, b := at(t, evs, "a.csv", fileEv("a.csv")), at(t, evs, "b.csv", fileEv("b.csv"))
	wroteB, end, done := at(t, evs, "'wrote b'", streamEv("wrote b")), at(t, evs, "'end'", streamEv("end")), at(t, evs, "done", isDone)
	if !(a < wroteB && b < end && end < done) {
		t.Errorf("order: a.csv %d, 'wrote b' %d, b.csv %d, 'end' %d, done %d: %s", a, wroteB, b, end, done, eventTypes(evs))
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq != 0 && evs[i].Seq <= evs[i-1].Seq {
			t.Errorf("event %d has seq %d after %d", i, evs[i].Seq, evs[i-1].Seq)
		}
	}
}

func TestFileEventsWebsocket(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 1})
	s := e.createSession(t, nil)
	ws := e.mustDial(t, s.ID, "")
	ws.send(map[string]any{"type": "execute", "id": "two", "code": twoFiles})
	evs := ws.until(doneFor("two"), 2*time.Minute)
	checkTwoFiles(t, evs)
	if n := len(fileEvents(evs)); n != 2 {
		t.Errorf("%d file events, want 2: %s", n, eventTypes(evs))
	}
	// The REST listing of the session agrees.
	var listed struct {
		Files []struct{ Name string } `json:"files"`
	}
	e.do("GET", "/api/v1/sessions/"+s.ID+"/files", nil, &listed)
	if len(listed.Files) != 2 {
		t.Errorf("listed %+v", listed)
	}
}

func TestFileEventsNDJSON(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 2})
	evs, res := e.ndjsonEvents(t, "/api/v1/execute", map[string]any{"code": twoFiles}, nil)
	checkTwoFiles(t, evs)
	sameFiles(t, evs, res.Files)
	for _, f := range res.Files {
		if st, _, body := e.get(f.URL); st != 200 || (f.OriginalName == "a.csv") != (string(body) == "1") {
			t.Errorf("%s: %d %q", f.OriginalName, st, body)
		}
	}

	// A burst of 1,000 files: bounded by OUTPUT_MAX_FILES (10), one event
	// each, and the run is not flooded.
	evs, res = e.ndjsonEvents(t, "/api/v1/execute", map[string]any{"code": `import time
for i in range(1000):
    open(f'/code/output/f{i:04d}.txt', 'w').write(str(i))
print('burst done', flush=True); time.sleep(1); print('end')`}, nil)
	if n := len(fileEvents(evs)); n != 10 || len(res.Files) != 10 || res.Status != codegw.StatusOK {
		t.Errorf("burst: %d events, %d files, status %s", n, len(res.Files), res.Status)
	}
	if len(evs) > 20 {
		t.Errorf("burst: %d events: %s", len(evs), eventTypes(evs))
	}
	sameFiles(t, evs, res.Files)
}

// TestFileEventsCases runs the cases of one session over NDJSON: a file
// written in chunks, a rewrite, a rename into place, a symlink and a
// disallowed extension.
func TestFileEventsCases(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 1})
	s := e.createSession(t, nil)
	path := "/api/v1/sessions/" + s.ID + "/execute"

	t.Run("chunks", func(t *testing.T) {
		evs, res := e.ndjsonEvents(t, path, map[string]any{"code": `import time
f = open('/code/output/chunks.csv', 'w')
for i in range(4):
    f.write('row %d\n' % i); f.flush(); print('chunk', i, flush=True); time.sleep(0.5)
time.sleep(0.5); f.close(); print('closed', flush=True)
time.sleep(1.5); print('later')`}, nil)
		files := fileEvents(evs)
		if len(files) != 1 || files[0].SizeBytes != 24 {
			t.Fatalf("chunks: %+v", files)
		}
		ev, last, later := at(t, evs, "chunks.csv", fileEv("chunks.csv")), at(t, evs, "'chunk 3'", streamEv("chunk 3")), at(t, evs, "'later'", streamEv("later"))
		if !(last < ev && ev < later) {
			t.Errorf("chunks.csv event at %d, 'chunk 3' %d, 'later' %d: %s", ev, last, later, eventTypes(evs))
		}
		sameFiles(t, evs, res.Files)
	})

	t.Run("rewrite", func(t *testing.T) {
		evs, res := e.ndjsonEvents(t, path, map[string]any{"code": `import time
open('/code/output/r.csv', 'w').write('v1'); time.sleep(1.5); print('mid', flush=True)
open('/code/output/r.csv', 'w').write('v22'); time.sleep(1.5); print('end')`}, nil)
		files := fileEvents(evs)
		if len(files) != 2 || files[0].URL == files[1].URL || files[1].SizeBytes != 3 {
			t.Fatalf("rewrite: %+v", files)
		}
		// A file event and a line printed right before the file's write
		// travel different paths (inotify, iopub) and may come in either
		// order: each is checked against a line printed 1.5 s after it.
		first, mid := at(t, evs, "r.csv", fileEv("r.csv")), at(t, evs, "'mid'", streamEv("mid"))
		second := first + 1 + at(t, evs[first+1:], "r.csv again", fileEv("r.csv"))
		if end := at(t, evs, "'end'", streamEv("end")); !(first < mid && second < end) {
			t.Errorf("rewrite order: %s", eventTypes(evs))
		}
		for i, want := range []string{"v1", "v22"} {
			if _, _, b := e.get(files[i].URL); string(b) != want {
				t.Errorf("version %d: %q, want %q", i, b, want)
			}
		}
		sameFiles(t, evs, res.Files)
		if len(res.Files) != 1 || res.Files[0].URL != files[1].URL {
			t.Errorf("answer %+v, want the second version", res.Files)
		}
	})

	t.Run("rename symlink extension", func(t *testing.T) {
		evs, res := e.ndjsonEvents(t, path, map[string]any{"code": `import os, time
open('/code/output/.partial', 'w').write('moved')
os.replace('/code/output/.partial', '/code/output/moved.csv')
os.symlink('/etc/passwd', '/code/output/link.txt')
open('/code/output/script.py', 'w').write('print(1)')
time.sleep(1); print('end')`}, nil)
		files := fileEvents(evs)
		if len(files) != 1 || files[0].OriginalName != "moved.csv" || files[0].SizeBytes != 5 {
			t.Fatalf("files %+v", files)
		}
		if at(t, evs, "moved.csv", fileEv("moved.csv")) > at(t, evs, "'end'", streamEv("end")) {
			t.Errorf("moved.csv after 'end': %s", eventTypes(evs))
		}
		sameFiles(t, evs, res.Files)
	})

	t.Run("interrupted mid-write", func(t *testing.T) {
		var once sync.Once
		evs, res := e.ndjsonEvents(t, path, map[string]any{"code": `import time
open('/code/output/done.csv', 'w').write('done')
part = open('/code/output/part.csv', 'w'); part.write('part'); part.flush()
print('ready', flush=True)
time.sleep(60)`}, func(ev codegw.Event) {
			if fileEv("done.csv")(ev) {
				once.Do(func() {
					go e.post("/api/v1/sessions/"+s.ID+"/interrupt", nil, &struct{}{})
				})
			}
		})
		if res.Status != codegw.StatusInterrupted {
			t.Errorf("status %s", res.Status)
		}
		// done.csv was closed and streamed, which is what let the test
		// interrupt; part.csv, still open, comes from the end scan.
		names := map[string]bool{}
		for _, f := range fileEvents(evs) {
			names[f.OriginalName] = true
		}
		if !names["done.csv"] || len(names) > 2 {
			t.Errorf("files %+v", fileEvents(evs))
		}
		sameFiles(t, evs, res.Files)
	})
}

// TestFileEventsMCP: a file written during execute_python comes as a
// progress notification with its resource link before the call ends.
func TestFileEventsMCP(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"mk"}, poolSize: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var mu sync.Mutex
	var notes []*mcp.ProgressNotificationParams
	client := mcp.NewClient(&mcp.Implementation{Name: "fileevents-test", Version: "1"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, r *mcp.ProgressNotificationClientRequest) {
			mu.Lock()
			notes = append(notes, r.Params)
			mu.Unlock()
		}})
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: e.base + "/mcp",
		HTTPClient: &http.Client{Transport: bearer{"mk"}}, DisableStandaloneSSE: true}, nil)
	if err != nil {
		t.Fatalf("MCP connect: %v", err)
	}
	defer cs.Close()
	params := &mcp.CallToolParams{Name: "execute_python", Arguments: map[string]any{"code": `import time
open('/code/output/a.csv','w').write('1'); print('wrote a', flush=True)
time.sleep(1.5); print('end')`}}
	params.SetProgressToken("t1")
	res, err := cs.CallTool(ctx, params)
	if err != nil || res.IsError {
		t.Fatalf("execute_python: %v %+v", err, res)
	}
	mu.Lock()
	defer mu.Unlock()
	var msgs []string
	file, end := -1, -1
	for i, n := range notes {
		msgs = append(msgs, n.Message)
		if link, ok := n.Meta["codegw/file"].(map[string]any); ok && file < 0 {
			file = i
			if link["name"] != "a.csv" || !strings.Contains(fmt.Sprint(link["uri"]), "/files/") {
				t.Errorf("link %v", link)
			}
		}
		if n.Message == "end" {
			end = i
		}
	}
	if file < 0 || end < 0 || file > end {
		t.Errorf("notifications %q: the file's (at %d) should come before 'end' (at %d)", msgs, file, end)
	}
}
