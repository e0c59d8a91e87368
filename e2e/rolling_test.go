package e2e_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/store/redis/redistest"
)

// fleet is the instances serving, replaced one at a time.
type fleet struct {
	mu   sync.RWMutex
	list []*instance
}

func (f *fleet) pick(r *rand.Rand) *instance {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.list[r.IntN(len(f.list))]
}

func (f *fleet) replace(i int, in *instance) {
	f.mu.Lock()
	f.list[i] = in
	f.mu.Unlock()
}

// TestRollingRestart: three instances on one Redis and one snapshot
// directory, 30 sessions with state, clients executing throughout while
// each instance in turn is stopped with SIGTERM and started again. The
// drain pauses the sessions of the instance it stops; their next use
// resumes them on whichever instance gets it. Every session's variables
// are intact afterwards, and no answer is wrong.
func TestRollingRestart(t *testing.T) {
	rs := redistest.Start(t)
	snapshots := t.TempDir()
	env := []string{"SNAPSHOT_DIR=" + snapshots, "DRAIN_TIMEOUT=20", "MAX_SESSIONS_PER_KEY=40"}
	names := []string{"a", "b", "c"}
	f := &fleet{}
	for _, n := range names {
		f.list = append(f.list, start(t, n, rs.URL(), env...))
	}
	const sessions = 30
	ids := make([]string, sessions)
	for i := range ids {
		in := f.list[i%len(f.list)]
		ids[i] = in.create(t, key1)
		in.exec(t, ids[i], fmt.Sprintf("v = %d\nhist = []\nsq = lambda n: n * n + v", i))
	}

	// Each client owns some sessions and knows what each must answer: the
	// cell appends to hist only when it is short of k, so an execution
	// retried after a lost answer changes nothing twice.
	var (
		stop    atomic.Bool
		wrong   atomic.Int32
		ok      atomic.Int32
		refused atomic.Int32
		wg      sync.WaitGroup
		mu      sync.Mutex
		errs    []string
		steps   = make([]int, sessions)
	)
	const clients = 5
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 7))
			for !stop.Load() {
				i := c + clients*r.IntN(sessions/clients)
				k := steps[i] + 1
				code := fmt.Sprintf("if len(hist) < %d: hist.append(%d)\nprint(v, len(hist), sq(2))", k, k)
				in := f.pick(r)
				a, err := in.call("POST", "/api/v1/sessions/"+ids[i]+"/execute", key1, map[string]any{"code": code})
				if err != nil || a.status != 200 {
					// A stopped or draining instance: another one is asked.
					refused.Add(1)
					if err == nil && a.status != 503 && a.status != 409 {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("session %d through %s: %s", i, in.name, a))
						mu.Unlock()
					}
					continue
				}
				var res codegw.ExecuteResult
				json.Unmarshal(a.body, &res)
				if want := fmt.Sprintf("%d %d %d", i, k, 4+i); res.Result != want {
					wrong.Add(1)
					mu.Lock()
					errs = append(errs, fmt.Sprintf("session %d through %s: %q, want %q (%s)", i, in.name, res.Result, want, tail(string(a.body), 3)))
					mu.Unlock()
					continue
				}
				steps[i] = k
				ok.Add(1)
			}
		}()
	}
	// Executions flow before, between and after the restarts.
	waitFor := func(n int32) {
		testwait.Every(t, 60*time.Second, 20*time.Millisecond, fmt.Sprintf("%d answers", n), func() string {
			if ok.Load() < n {
				return fmt.Sprint(ok.Load())
			}
			return ""
		})
	}
	waitFor(20)
	for i, n := range names {
		before := ok.Load()
		f.list[i].stop()
		f.replace(i, start(t, n, rs.URL(), env...))
		waitFor(before + 20)
	}
	waitFor(ok.Load() + 20)
	stop.Store(true)
	wg.Wait()

	// Every session has its variables, wherever it now lives.
	paused := 0
	for i, id := range ids {
		in := f.list[i%len(f.list)]
		res := in.exec(t, id, "print(v, len(hist), sq(3))")
		if want := fmt.Sprintf("%d %d %d", i, steps[i], 9+i); res.Result != want {
			t.Errorf("session %d after the rolling restart: %q, want %q", i, res.Result, want)
		}
		if res.Restored != nil {
			paused++
		}
	}
	t.Logf("rolling restart: %d answers checked, %d wrong, %d refused and retried; %d sessions resumed by the final check", ok.Load(), wrong.Load(), refused.Load(), paused)
	if wrong.Load() != 0 || len(errs) > 0 {
		t.Errorf("%d wrong answers; errors:\n%s", wrong.Load(), strings.Join(errs[:min(len(errs), 20)], "\n"))
	}
}

// TestKillResumesFromCheckpoint: an instance killed with SIGKILL leaves
// its sessions to the others. One that went idle after its executions has
// a checkpoint (CHECKPOINT_AFTER) and resumes from it on another instance,
// whose first answer says when it was taken and how many executions were
// lost; one with no checkpoint answers 410 session_lost as before.
func TestKillResumesFromCheckpoint(t *testing.T) {
	rs := redistest.Start(t)
	env := []string{"SNAPSHOT_DIR=" + t.TempDir(), "CHECKPOINT_AFTER=0.3"}
	a, b := start(t, "a", rs.URL(), env...), start(t, "b", rs.URL(), env...)
	kept := a.create(t, key1)
	a.exec(t, kept, "x = 1\nimport pandas as pd\ndf = pd.DataFrame({'v': [1, 2, 3]})")
	var snaps struct{ Snapshots []codegw.Snapshot }
	testwait.Every(t, 30*time.Second, 50*time.Millisecond, "an automatic checkpoint", func() string {
		a, err := a.call("GET", "/api/v1/sessions/"+kept+"/snapshots", key1, nil)
		if err != nil {
			return err.Error()
		}
		json.Unmarshal(a.body, &snaps)
		if len(snaps.Snapshots) == 0 || snaps.Snapshots[0].Kind != "auto" || snaps.Snapshots[0].Executions != 1 {
			return a.String()
		}
		return ""
	})
	// Two executions after the checkpoint, killed before the next one.
	a.exec(t, kept, "x = 2")
	a.exec(t, kept, "x = 3")
	none := a.create(t, key1) // no execution: no checkpoint
	a.kill9()

	var res codegw.ExecuteResult
	testwait.Every(t, 30*time.Second, 100*time.Millisecond, "the session resumed on b", func() string {
		ans, err := b.call("POST", "/api/v1/sessions/"+kept+"/execute", key1, map[string]any{"code": "print(x, int(df.v.sum()))"})
		if err != nil || ans.status != 200 {
			return fmt.Sprint(ans, err)
		}
		json.Unmarshal(ans.body, &res)
		return ""
	})
	if res.Result != "1 6" {
		t.Errorf("resumed from the checkpoint: %q, want %q", res.Result, "1 6")
	}
	if r := res.Restored; r == nil || r.Kind != "auto" || r.Lost != 2 || !strings.Contains(r.Message, "instance a") {
		t.Errorf("restored = %+v; want the checkpoint, 2 executions lost, naming instance a", r)
	}
	ans, err := b.call("POST", "/api/v1/sessions/"+none+"/execute", key1, map[string]any{"code": "1"})
	if code, _ := ans.apiErr(); err != nil || ans.status != 410 || code != "session_lost" {
		t.Errorf("session without a checkpoint: %v %v; want 410 session_lost", ans, err)
	}
	// The resumed session lives on b, under its id, for every later call.
	if r := b.exec(t, kept, "x += 10\nprint(x)"); r.Result != "11" || r.Restored != nil {
		t.Errorf("after the resume: %+v", r)
	}
}
