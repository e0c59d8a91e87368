package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/testwait"
)

// stack is one run of docker-compose.yml under a project name of its own,
// driven through scripts/compose.sh as the README says.
type stack struct {
	t       *testing.T
	project string
	env     []string
	lb      *instance // the load balancer's published port
}

// compose runs scripts/compose.sh -p project args... from the repository's
// root (its .env is read) and returns its combined output.
func (s *stack) compose(args ...string) (string, error) {
	cmd := exec.Command("scripts/compose.sh", append([]string{"-p", s.project}, args...)...)
	cmd.Dir = ".."
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// containers lists the ids of the project's containers of service svc
// ("" for all), running ones only unless all is set, by Compose's labels.
func (s *stack) containers(svc string, all bool) []string {
	args := []string{"ps", "-q", "--no-trunc", "--filter", "label=com.docker.compose.project=" + s.project}
	if svc != "" {
		args = append(args, "--filter", "label=com.docker.compose.service="+svc)
	}
	if all {
		args = append(args, "-a")
	}
	out, _ := exec.Command("docker", args...).Output()
	return strings.Fields(string(out))
}

// inspect formats a container (or anything docker inspect knows) with tmpl.
func inspect(t *testing.T, id, tmpl string) string {
	t.Helper()
	out, err := exec.Command("docker", "inspect", "-f", tmpl, id).CombinedOutput()
	if err != nil {
		t.Fatalf("docker inspect %s: %v\n%s", id, err, out)
	}
	return strings.TrimSpace(string(out))
}

// registered lists the instance ids in the stack's Redis registry whose
// entries have not expired, asked with redis-cli inside the Redis container
// (Redis publishes no port).
func (s *stack) registered() ([]string, error) {
	r := s.containers("redis", false)
	if len(r) != 1 {
		return nil, fmt.Errorf("%d running redis containers", len(r))
	}
	out, err := exec.Command("docker", "exec", r[0], "redis-cli", "--scan", "--pattern", "codegw:instance:*").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("redis-cli: %v: %s", err, out)
	}
	var ids []string
	for _, k := range strings.Fields(string(out)) {
		ids = append(ids, strings.TrimPrefix(k, "codegw:instance:"))
	}
	slices.Sort(ids)
	return ids, nil
}

// leftovers lists what of the project, or of the kernels its replicas
// started (by their instance ids), the engine still has.
func (s *stack) leftovers(instances []string) []string {
	var left []string
	list := func(what string, args ...string) {
		out, _ := exec.Command("docker", args...).Output()
		for _, f := range strings.Fields(string(out)) {
			left = append(left, what+" "+f)
		}
	}
	byLabel := "label=com.docker.compose.project=" + s.project
	list("container", "ps", "-aq", "--filter", byLabel)
	list("container", "ps", "-aq", "--filter", "name="+s.project)
	list("network", "network", "ls", "-q", "--filter", byLabel)
	list("network", "network", "ls", "-q", "--filter", "name="+s.project)
	list("volume", "volume", "ls", "-q", "--filter", byLabel)
	list("volume", "volume", "ls", "-q", "--filter", "name="+s.project)
	for _, id := range instances {
		list("kernel container", "ps", "-aq", "--filter", "label=codegw.instance="+id)
	}
	slices.Sort(left)
	return slices.Compact(left)
}

// slowly is eventually for checks that run docker commands: once a second.
func slowly(t *testing.T, d time.Duration, what string, check func() string) {
	t.Helper()
	testwait.Every(t, d, time.Second, what, check)
}

// TestCompose brings docker-compose.yml up as the README says
// (scripts/compose-check.sh, then scripts/compose.sh up -d --scale api=3)
// on a project name and loopback port of its own, with the images
// compose-check.sh selected in .env, and checks through the load balancer:
// stateless executions, a session used across the replicas over REST and
// websockets with its state kept, an image and an output file fetched, the
// loss of a replica (docker kill: its sessions answer 503, then 410
// session_lost, while the others serve), and that `down -v` leaves nothing
// behind (containers, networks, volumes, the replicas' kernel containers).
// Without a Docker engine or Compose it skips, or fails under CI=true.
func TestCompose(t *testing.T) {
	if err := exec.Command("docker", "info").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but no Docker engine answers: %v (run scripts/docker-up.sh)", err)
		}
		t.Skipf("no Docker engine: %v", err)
	}
	version := exec.Command("scripts/compose.sh", "version")
	version.Dir = ".."
	if out, err := version.CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but no Compose: %v\n%s", err, out)
		}
		t.Skipf("no Compose: %v\n%s", err, out)
	}
	build := exec.Command("scripts/compose-check.sh")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("scripts/compose-check.sh: %v\n%s", err, tail(string(out), 30))
	}

	port := freePort(t)
	// STATE_DIR is bound at the same path in the replicas: a directory of
	// this run's own (ipc socket paths must be short).
	state, err := os.MkdirTemp("", "cgcmp")
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 9 // INSTANCE_TTL, seconds
	s := &stack{t: t, project: fmt.Sprintf("codegw_e2e_%d", port)}
	s.env = append(os.Environ(),
		"API_KEYS="+key1+","+key2, "CLUSTER_SECRET=compose-test-"+strconv.Itoa(port),
		"CODEGW_ADDR=127.0.0.1", "CODEGW_PORT="+strconv.Itoa(port), "CODEGW_STATE_DIR="+state,
		"INSTANCE_TTL="+strconv.Itoa(ttl), "POOL_SIZE=1")
	s.lb = &instance{t: t, name: "lb", base: fmt.Sprintf("http://127.0.0.1:%d", port)}

	var instances []string // the replicas' instance ids (their hostnames)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := s.compose("logs", "--no-color", "--tail", "30")
			t.Logf("compose logs:\n%s", out)
		}
		start := time.Now()
		if out, err := s.compose("down", "-v", "--remove-orphans", "-t", "30"); err != nil {
			t.Errorf("compose down -v: %v\n%s", err, out)
		}
		t.Logf("compose down -v took %v", time.Since(start).Round(100*time.Millisecond))
		// The replicas' zygote containers end with their control
		// connection and remove themselves: wait for that, then nothing
		// may be left.
		var left []string
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		testwait.PollEvery(ctx, 500*time.Millisecond, func() string {
			if left = s.leftovers(instances); len(left) > 0 {
				return "left"
			}
			return ""
		})
		cancel()
		if len(left) > 0 {
			t.Errorf("left behind after compose down -v: %s", strings.Join(left, ", "))
			for _, l := range left {
				f := strings.Fields(l)
				id := f[len(f)-1]
				switch f[0] {
				case "network":
					exec.Command("docker", "network", "rm", id).Run()
				case "volume":
					exec.Command("docker", "volume", "rm", "-f", id).Run()
				default:
					exec.Command("docker", "rm", "-f", "-v", id).Run()
				}
			}
		}
		os.RemoveAll(state)
	})

	start := time.Now()
	if out, err := s.compose("up", "-d", "--no-build", "--scale", "api=3"); err != nil {
		t.Fatalf("compose up -d --scale api=3: %v\n%s", err, out)
	}
	t.Logf("compose up -d took %v", time.Since(start).Round(100*time.Millisecond))

	// Ready: three replicas running and registered in Redis (each reached
	// Redis from another container), then the load balancer serving /readyz.
	api := map[string]string{} // instance id (hostname) -> container id
	slowly(t, 5*time.Minute, "three api replicas registered in Redis", func() string {
		ids := s.containers("api", false)
		if len(ids) != 3 {
			return fmt.Sprintf("%d api containers running", len(ids))
		}
		for _, id := range ids {
			api[inspect(t, id, "{{.Config.Hostname}}")] = id
		}
		reg, err := s.registered()
		if err != nil {
			return err.Error()
		}
		instances = slices.Sorted(maps.Keys(api))
		if !slices.Equal(reg, instances) {
			return fmt.Sprintf("registered %v, replicas %v", reg, instances)
		}
		return ""
	})
	ready := 0
	testwait.For(t, 2*time.Minute, "/readyz through the load balancer 5 times in a row", func() string {
		a, err := s.lb.call("GET", "/readyz", "", nil)
		if err != nil || a.status != 200 {
			ready = 0
			return fmt.Sprintf("%v %v", a, err)
		}
		if ready++; ready < 5 {
			return "not yet 5"
		}
		return ""
	})
	t.Logf("stack ready %v after compose up", time.Since(start).Round(100*time.Millisecond))

	t.Run("redis", func(t *testing.T) {
		r := s.containers("redis", false)[0]
		if p := inspect(t, r, "{{json .HostConfig.PortBindings}}"); p != "{}" && p != "null" {
			t.Errorf("redis publishes ports: %s", p)
		}
		if m := inspect(t, r, `{{range .Mounts}}{{if eq .Destination "/data"}}{{.Type}} {{.Name}}{{end}}{{end}}`); m != "volume "+s.project+"_redis" {
			t.Errorf("redis /data mount: %q, want the volume %s_redis", m, s.project)
		}
		out, err := exec.Command("docker", "exec", r, "redis-cli", "config", "get", "dir").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "/data") {
			t.Errorf("redis dir: %v %s", err, out)
		}
	})

	t.Run("stateless", func(t *testing.T) {
		for range 6 {
			s.lb.stateless(t)
		}
	})

	// Sessions through the load balancer until two replicas hold some.
	holder := map[string]string{} // session -> instance
	var kept, doomed string       // on two different replicas
	for i := 0; i < 8 && doomed == ""; i++ {
		var sess codegw.SessionInfo
		a := s.lb.must(t, "POST", "/api/v1/sessions", key1, map[string]any{}, 201)
		if err := json.Unmarshal(a.body, &sess); err != nil || api[sess.Instance] == "" {
			t.Fatalf("create through the load balancer: %s (replicas %v)", a, instances)
		}
		holder[sess.ID] = sess.Instance
		if kept == "" {
			kept = sess.ID
		} else if sess.Instance != holder[kept] {
			doomed = sess.ID
		}
	}
	if doomed == "" {
		t.Fatalf("8 sessions created through the load balancer all on one replica: %v", holder)
	}
	for id := range holder {
		if id != kept && id != doomed {
			s.lb.must(t, "DELETE", "/api/v1/sessions/"+id, key1, nil, 204)
		}
	}

	t.Run("session over REST", func(t *testing.T) {
		s.lb.exec(t, kept, "x = 0")
		s.lb.exec(t, doomed, "y = 7")
		// Six calls, spread by nginx over the three replicas: most reach a
		// replica that does not hold the session and forwards them.
		for i := 1; i <= 6; i++ {
			if r := s.lb.exec(t, kept, "x += 1\nprint(x)"); r.Stdout != strconv.Itoa(i)+"\n" {
				t.Fatalf("call %d: stdout %q", i, r.Stdout)
			}
		}
		var info codegw.SessionInfo
		json.Unmarshal(s.lb.must(t, "GET", "/api/v1/sessions/"+kept, key1, nil, 200).body, &info)
		if info.Instance != holder[kept] || info.Executions != 7 {
			t.Fatalf("session info: %+v", info)
		}
		s.lb.must(t, "GET", "/api/v1/sessions/"+kept, key2, nil, 404)
	})

	t.Run("session over websocket", func(t *testing.T) {
		hdr := http.Header{"Authorization": {"Bearer " + key1}}
		for i := 7; i <= 9; i++ { // a connection each: nginx spreads them too
			w := dialWS(t, s.lb, kept, "", hdr)
			w.next(t, "connected", func(ev map[string]any) bool { return ev["state"] == "connected" })
			w.send(t, map[string]any{"type": "execute", "id": "e" + strconv.Itoa(i), "code": "x += 1\nprint(x)"})
			st := w.next(t, "stream", typed("stream"))
			if st["text"] != strconv.Itoa(i)+"\n" {
				t.Fatalf("websocket %d: stream %v", i, st)
			}
			if d := w.next(t, "done", typed("done")); d["status"] != "ok" {
				t.Fatalf("websocket %d: done %v", i, d)
			}
			w.conn.Close()
		}
	})

	t.Run("image and file", func(t *testing.T) {
		r := s.lb.exec(t, kept, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()\nopen('/code/output/out.txt', 'w').write('x=%d' % x)")
		if len(r.Images) != 1 || len(r.Files) != 1 {
			t.Fatalf("images %v, files %+v", r.Images, r.Files)
		}
		// Fetched several times: any replica serves them (shared volume).
		for range 6 {
			img := s.lb.must(t, "GET", r.Images[0], key1, nil, 200)
			if !bytes.HasPrefix(img.body, []byte("\x89PNG")) {
				t.Fatalf("image %s: %q", r.Images[0], tail(string(img.body), 1))
			}
			if f := s.lb.must(t, "GET", r.Files[0].URL, key1, nil, 200); string(f.body) != "x=9" {
				t.Fatalf("file %s: %q", r.Files[0].URL, f.body)
			}
		}
	})

	t.Run("replica killed", func(t *testing.T) {
		victim := holder[doomed]
		cid := api[victim]
		killed := time.Now()
		if out, err := exec.Command("docker", "kill", cid).CombinedOutput(); err != nil {
			t.Fatalf("docker kill %s: %v\n%s", victim, err, out)
		}
		// Until its registry entry expires its sessions answer 503, then
		// 410 session_lost (README, "Several instances").
		// Generous: on a loaded machine the store's answers may be slow
		// too (503 "session store unavailable" is the same code).
		var last answer
		seen := map[string]int{} // the 503s' messages, for the log
		testwait.For(t, ttl*time.Second+3*time.Minute, "410 for the killed replica's session", func() string {
			r, err := s.lb.call("POST", "/api/v1/sessions/"+doomed+"/execute", key1, map[string]any{"code": "y"})
			if err != nil {
				return err.Error()
			}
			last = r
			if r.status == 410 {
				return ""
			}
			code, msg := r.apiErr()
			if r.status != 503 || code != codegw.EUNAVAILABLE {
				t.Fatalf("before expiry: %s", r)
			}
			seen[msg]++
			return r.String()
		})
		t.Logf("the killed replica's session reported lost %v after docker kill (INSTANCE_TTL %ds); 503s before: %v",
			time.Since(killed).Round(100*time.Millisecond), ttl, seen)
		if code, msg := last.apiErr(); code != codegw.ELOST || !strings.Contains(msg, doomed) {
			t.Fatalf("lost answer: %s", last)
		}
		if r := s.lb.must(t, "GET", "/api/v1/sessions/"+doomed+"/ws", key1, nil, 410); !strings.Contains(string(r.body), codegw.ELOST) {
			t.Fatalf("websocket to the lost session: %s", r)
		}
		if l := list(t, s.lb, key1); l[doomed].State != "lost" || l[kept].State != "idle" {
			t.Fatalf("list: %+v", l)
		}
		// The others serve: the kept session (its state too) and stateless calls.
		for i := 10; i <= 12; i++ {
			if r := s.lb.exec(t, kept, "x += 1\nprint(x)"); r.Stdout != strconv.Itoa(i)+"\n" {
				t.Fatalf("kept session after the kill: stdout %q", r.Stdout)
			}
			s.lb.stateless(t)
		}
		// docker kill is a manual stop: the engine does not restart it.
		if st := inspect(t, cid, "{{.State.Status}}"); st != "exited" {
			t.Errorf("killed replica: %s", st)
		}
		reg, err := s.registered()
		if err != nil || len(reg) != 2 || slices.Contains(reg, victim) {
			t.Errorf("registry after the kill: %v %v", reg, err)
		}
		// Its zygote saw its control connection end and removed itself.
		slowly(t, time.Minute, "the killed replica's kernel containers gone", func() string {
			out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=codegw.instance="+victim).Output()
			return strings.TrimSpace(string(out))
		})
	})
}
