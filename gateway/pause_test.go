package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/session/snapshot/snaptest"
)

// stateCell builds every kind of state a snapshot carries, and two it must
// skip by name.
const stateCell = `
import os, numpy as np, pandas as pd
x = 41
df = pd.DataFrame({'a': np.arange(1000), 'b': np.arange(1000) * 2.0})
add = lambda v: v + x
class Point:
    def __init__(self, a, b): self.a, self.b = a, b
    def norm2(self): return self.a * self.a + self.b * self.b
p = Point(3, 4)
def total(): return int(df.b.sum()) + x
gen = (i for i in range(3))
fh = open('/code/output/notes.txt', 'w'); fh.write('kept'); fh.flush()
os.makedirs('/code/work', exist_ok=True)
open('/code/work/w.txt', 'w').write('tree')
os.environ['MY_SETTING'] = 'on'
os.chdir('/code/work')
`

const checkCell = `print(x, add(1), p.norm2(), total(), len(df), os.environ.get('MY_SETTING'), os.getcwd(), open('/code/output/notes.txt').read(), open('/code/work/w.txt').read())`

const checkWant = "41 42 25 999041 1000 on /code/work kept tree"

func skippedNames(r *codegw.Restored) []string {
	var out []string
	for _, s := range r.Skipped {
		out = append(out, s.Name)
	}
	slices.Sort(out)
	return out
}

func TestSessionPauseResume(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 1, keys: []string{"ka", "kb"}})
	s := e.createSession(t, map[string]any{"env": map[string]string{"GREETING": "hi"}})
	if res := e.sexec(t, s.ID, map[string]any{"code": stateCell}); res.Status != "ok" {
		t.Fatalf("state cell: %+v %s", res, strOr(res.Error))
	}
	// Another key can neither pause, resume, checkpoint nor list snapshots.
	for _, path := range []string{"/pause", "/resume", "/checkpoint"} {
		if st := e.do("POST", "/api/v1/sessions/"+s.ID+path, nil, nil, "Authorization", "Bearer kb"); st != 404 {
			t.Errorf("key B %s: %d, want 404", path, st)
		}
	}
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/checkpoint", nil, nil); st != 201 {
		t.Fatalf("checkpoint: %d", st)
	}
	if st := e.do("GET", "/api/v1/sessions/"+s.ID+"/snapshots", nil, nil, "Authorization", "Bearer kb"); st != 404 {
		t.Errorf("key B lists key A's snapshots: %d, want 404", st)
	}
	if st := e.do("POST", "/api/v1/sessions", map[string]any{"from_session": s.ID}, nil, "Authorization", "Bearer kb"); st != 404 {
		t.Errorf("key B branches from key A's session: %d, want 404", st)
	}
	var paused struct {
		Status   string
		Session  codegw.SessionInfo
		Snapshot codegw.Snapshot
	}
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/pause", nil, &paused); st != 200 || paused.Session.State != "paused" {
		t.Fatalf("pause: %d %+v", st, paused)
	}
	if got := strings.Join(paused.Snapshot.Variables, ","); !strings.Contains(got, "df") || !strings.Contains(got, "add") || !strings.Contains(got, "Point") {
		t.Errorf("saved variables = %v", paused.Snapshot.Variables)
	}
	if e.mgr.Local(s.ID) {
		t.Fatal("a paused session still holds its kernel")
	}
	var info codegw.SessionInfo
	if st := e.do("GET", "/api/v1/sessions/"+s.ID, nil, &info); st != 200 || info.State != "paused" || info.Snapshot == "" {
		t.Errorf("get paused: %d %+v", st, info)
	}
	if st := e.do("GET", "/api/v1/sessions/"+s.ID, nil, nil, "Authorization", "Bearer kb"); st != 404 {
		t.Errorf("key B reads a paused session: %d", st)
	}
	var list struct{ Sessions []codegw.SessionInfo }
	if e.do("GET", "/api/v1/sessions", nil, &list); len(list.Sessions) != 1 || list.Sessions[0].State != "paused" {
		t.Errorf("list = %+v", list)
	}
	// The next execution resumes it, and its answer says what came back.
	res := e.sexec(t, s.ID, map[string]any{"code": checkCell + "\nprint(os.environ['GREETING'])"})
	if res.Stdout != checkWant+"\nhi\n" {
		t.Fatalf("after resume: %q %s", res.Stdout, strOr(res.Error))
	}
	if res.Restored == nil || res.Restored.Kind != "pause" || !slices.Contains(res.Restored.Variables, "df") {
		t.Fatalf("restored = %+v", res.Restored)
	}
	if got := skippedNames(res.Restored); !slices.Equal(got, []string{"fh", "gen"}) {
		t.Errorf("skipped = %v (%+v)", got, res.Restored.Skipped)
	}
	if res.ExecutionCount != 2 {
		t.Errorf("execution count after resume = %d, want 2 (the kernel's count goes on)", res.ExecutionCount)
	}
	// A function defined before the pause sees globals changed after it.
	if res := e.sexec(t, s.ID, map[string]any{"code": "x = 100\nprint(add(1), total())"}); res.Result != "101 999100" {
		t.Errorf("globals after resume: %q", res.Result)
	}

	// A checkpoint, then a branch from it: the branch has the state, the
	// original goes on independently.
	var ck codegw.Snapshot
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/checkpoint", nil, &ck); st != 201 || !strings.HasPrefix(ck.ID, "ck_") {
		t.Fatalf("checkpoint: %d %+v", st, ck)
	}
	e.sexec(t, s.ID, map[string]any{"code": "x = 7"})
	var branch struct {
		codegw.SessionInfo
		Restored *codegw.Restored
	}
	if st := e.do("POST", "/api/v1/sessions", map[string]any{"from_snapshot": ck.ID}, &branch); st != 201 || branch.Restored == nil {
		t.Fatalf("branch: %d %+v", st, branch)
	}
	if res := e.sexec(t, branch.ID, map[string]any{"code": "print(x, p.norm2())"}); res.Result != "100 25" {
		t.Errorf("branch state: %q %s", res.Result, strOr(res.Error))
	}
	if res := e.sexec(t, s.ID, map[string]any{"code": "print(x)"}); res.Result != "7" {
		t.Errorf("original after branch: %q", res.Result)
	}
	if st := e.do("POST", "/api/v1/sessions", map[string]any{"from_snapshot": ck.ID}, nil, "Authorization", "Bearer kb"); st != 404 {
		t.Errorf("key B branches from key A's checkpoint: %d", st)
	}

	// A websocket client sees the pause close it, and reconnecting with its
	// last seq resumes the session: the first event is the "restored"
	// status, numbered after what it saw.
	w := e.mustDial(t, s.ID, "")
	closedEv := make(chan codegw.Event, 1)
	go func() {
		for ev := range w.events {
			if ev.Type == codegw.EventClosed {
				closedEv <- ev
				return
			}
		}
	}()
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/pause", nil, nil); st != 200 {
		t.Fatalf("pause with a websocket: %d", st)
	}
	var last codegw.Event
	select {
	case last = <-closedEv:
	case <-time.After(30 * time.Second):
		t.Fatal("no closed event at the pause")
	}
	if !strings.Contains(last.Reason, "paused") || last.Seq == 0 {
		t.Errorf("closed event: %+v", last)
	}
	w2 := e.mustDial(t, s.ID, fmt.Sprintf("?last_seq=%d", last.Seq))
	evs := w2.until(func(ev codegw.Event) bool { return ev.Type == codegw.EventStatus && ev.State == "restored" }, 60*time.Second)
	if got := evs[len(evs)-1]; got.Seq != last.Seq+1 || got.Restored == nil || !slices.Contains(got.Restored.Variables, "x") {
		t.Errorf("restored event %+v after seq %d", got, last.Seq)
	}
	for _, ev := range evs {
		if ev.Type == codegw.EventGap {
			t.Errorf("a gap reported across the resume: %+v", ev)
		}
	}

	// Deleting a paused session deletes its snapshots.
	if st := e.do("POST", "/api/v1/sessions/"+branch.ID+"/pause", nil, nil); st != 200 {
		t.Fatalf("pause branch: %d", st)
	}
	if st := e.do("DELETE", "/api/v1/sessions/"+branch.ID, nil, nil); st != 204 {
		t.Errorf("delete paused: %d", st)
	}
	if st := e.do("GET", "/api/v1/sessions/"+branch.ID, nil, nil); st != 404 {
		t.Errorf("deleted paused session: %d", st)
	}
}

// TestSnapshotDamaged: a corrupted snapshot is refused with a clear error
// and the session stays paused; a snapshot over the limit is refused and
// the session runs on.
func TestSnapshotDamaged(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, envOptions{poolSize: 1, tune: func(c *app.Config) {
		c.SnapshotDir, c.MaxSnapshotBytes = dir, 4<<20
	}})
	s := e.createSession(t, nil)
	e.sexec(t, s.ID, map[string]any{"code": "big = bytearray(8 << 20)\nsmall = 1"})
	var errBody struct{ Error, Code string }
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/pause", nil, &errBody); st != 413 || !strings.Contains(errBody.Error, "MAX_SNAPSHOT_BYTES") {
		t.Fatalf("pause over the limit: %d %+v", st, errBody)
	}
	if res := e.sexec(t, s.ID, map[string]any{"code": "del big\nprint(small)"}); res.Result != "1" {
		t.Fatalf("session after a refused pause: %+v %s", res, strOr(res.Error))
	}
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/pause", nil, nil); st != 200 {
		t.Fatalf("pause: %d", st)
	}
	// Flip one byte in the middle of the stored snapshot.
	paths, _ := filepath.Glob(filepath.Join(dir, s.ID, "*.zst"))
	if len(paths) != 1 {
		t.Fatalf("snapshot files: %v", paths)
	}
	b, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x55
	os.WriteFile(paths[0], b, 0o600)
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/execute", map[string]any{"code": "print(small)"}, &errBody); st != 400 || !strings.Contains(errBody.Error, "damaged") {
		t.Errorf("resume from a damaged snapshot: %d %+v", st, errBody)
	}
	var info codegw.SessionInfo
	if st := e.do("GET", "/api/v1/sessions/"+s.ID, nil, &info); st != 200 || info.State != "paused" {
		t.Errorf("after a failed resume: %d %+v", st, info)
	}
	// Truncated: the same.
	os.WriteFile(paths[0], b[:len(b)/3], 0o600)
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/resume", nil, &errBody); st != 400 || !strings.Contains(errBody.Error, "damaged") {
		t.Errorf("resume from a truncated snapshot: %d %+v", st, errBody)
	}
}

// TestMCPCheckpoint: the MCP tools checkpoint and restore_checkpoint, with
// the MCP SDK's client: a checkpoint, a change, then the checkpoint again.
func TestMCPCheckpoint(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"mk"}, poolSize: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client := mcp.NewClient(&mcp.Implementation{Name: "snapshot-test", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: e.base + "/mcp",
		HTTPClient: &http.Client{Transport: bearer{"mk"}}, DisableStandaloneSSE: true}, nil)
	if err != nil {
		t.Fatalf("MCP connect: %v", err)
	}
	defer cs.Close()
	call := func(tool string, args map[string]any) string {
		t.Helper()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		var text strings.Builder
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				text.WriteString(tc.Text)
			}
		}
		if res.IsError {
			t.Fatalf("%s: error %q", tool, text.String())
		}
		return text.String()
	}
	call("execute_python", map[string]any{"code": "x = 5\ng = (i for i in range(3))"})
	text := call("checkpoint", nil)
	i := strings.Index(text, "ck_")
	if i < 0 || !strings.Contains(text, "not saved: g") {
		t.Fatalf("checkpoint: %q", text)
	}
	ck := strings.Fields(text[i:])[0]
	call("execute_python", map[string]any{"code": "x = 6"})
	if text := call("restore_checkpoint", map[string]any{"checkpoint": ck}); !strings.Contains(text, "restored from "+ck) {
		t.Fatalf("restore: %q", text)
	}
	if text := call("execute_python", map[string]any{"code": "print(x)"}); !strings.Contains(text, "5") || strings.Contains(text, "6") {
		t.Errorf("after the restore: %q", text)
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "restore_checkpoint", Arguments: map[string]any{"checkpoint": "ck_nosuch"}})
	if err != nil || !res.IsError {
		t.Errorf("restore of a missing checkpoint: %v %+v", err, res)
	}
}

// TestSnapshotsOnS3: pause and resume with the snapshots in an
// S3-compatible object store (a real server: scripts/s3-up.sh), then a
// second gateway on the same bucket resumes a session the first paused.
func TestSnapshotsOnS3(t *testing.T) {
	s3 := snaptest.S3(t)
	tune := func(c *app.Config) {
		c.SnapshotDir, c.SnapshotS3Bucket, c.SnapshotS3Endpoint, c.SnapshotS3Prefix = "", s3.Bucket, s3.Endpoint, s3.Prefix
		c.SnapshotS3AccessKey, c.SnapshotS3SecretKey = s3.AccessKey, s3.SecretKey
	}
	e := newEnv(t, envOptions{poolSize: 1, tune: tune})
	s := e.createSession(t, nil)
	e.sexec(t, s.ID, map[string]any{"code": stateCell})
	var paused struct{ Snapshot codegw.Snapshot }
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/pause", nil, &paused); st != 200 || paused.Snapshot.Bytes == 0 {
		t.Fatalf("pause: %d %+v", st, paused)
	}
	if res := e.sexec(t, s.ID, map[string]any{"code": checkCell}); res.Stdout != checkWant+"\n" || res.Restored == nil {
		t.Fatalf("after resume from S3: %q %+v %s", res.Stdout, res.Restored, strOr(res.Error))
	}
	var ck codegw.Snapshot
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/checkpoint", nil, &ck); st != 201 {
		t.Fatalf("checkpoint: %d", st)
	}
	// Another gateway on the same bucket branches from the checkpoint.
	e2 := newEnv(t, envOptions{poolSize: 1, tune: tune})
	var branch struct {
		codegw.SessionInfo
		Restored *codegw.Restored
	}
	if st := e2.do("POST", "/api/v1/sessions", map[string]any{"from_snapshot": ck.ID}, &branch); st != 201 || branch.Restored == nil {
		t.Fatalf("branch on another gateway: %d %+v", st, branch)
	}
	if res := e2.sexec(t, branch.ID, map[string]any{"code": "print(x, p.norm2())"}); res.Result != "41 25" {
		t.Errorf("branch state: %q %s", res.Result, strOr(res.Error))
	}
}

// TestIdlePauseAndTTL: with IDLE_ACTION=pause an idle session is paused,
// not deleted, and its next use resumes it; PAUSED_TTL deletes a paused
// session and its snapshots.
func TestIdlePauseAndTTL(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, envOptions{poolSize: 1, sessIdle: time.Second, tune: func(c *app.Config) {
		// The TTL counts from the snapshot's capture: it must outlast
		// compressing and writing 104 MB on a loaded machine, or the
		// session expires before the test sees it paused.
		c.SnapshotDir, c.IdleAction, c.PausedTTL = dir, "pause", 10*time.Second
	}})
	s := e.createSession(t, map[string]any{"idle_timeout": 1})
	e.sexec(t, s.ID, map[string]any{"code": "import numpy as np, pandas as pd\nbig = pd.DataFrame({'a': np.arange(13_000_000, dtype='float64')})\nprint(big.memory_usage().sum() >= 100e6)"})
	testwait.For(t, 30*time.Second, "the idle session to pause", func() string {
		var info codegw.SessionInfo
		if e.do("GET", "/api/v1/sessions/"+s.ID, nil, &info); info.State != "paused" {
			return fmt.Sprintf("%+v", info)
		}
		return ""
	})
	// 104 MB of DataFrame came back whole.
	res := e.sexec(t, s.ID, map[string]any{"code": "print(int(big.a.sum()), len(big))"})
	if res.Result != "84499993500000 13000000" || res.Restored == nil {
		t.Fatalf("after the idle pause: %q %+v %s", res.Result, res.Restored, strOr(res.Error))
	}
	// Paused again by idling, then expired by PAUSED_TTL: gone, snapshots too.
	testwait.For(t, 60*time.Second, "PAUSED_TTL to expire the paused session", func() string {
		if st := e.do("GET", "/api/v1/sessions/"+s.ID, nil, nil); st != 404 {
			return fmt.Sprint("status ", st)
		}
		return ""
	})
	if left, _ := filepath.Glob(filepath.Join(dir, s.ID, "*")); len(left) != 0 {
		t.Errorf("snapshots left after the TTL: %v", left)
	}
}
