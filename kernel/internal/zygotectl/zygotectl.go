// Package zygotectl is the gateway's end of the fork server's control
// connection (executor-image/zygote.py), shared by the local and the Docker
// provisioners: one JSON object a line each way. The gateway asks for a
// kernel ("fork") or its end ("kill"); the zygote answers each fork
// ("forked" or "error") and tells when a kernel has bound its sockets
// ("bound") and when it exited ("exit"). Starting the zygote, its limits and
// what a dead zygote means for its kernels are the provisioners' own.
package zygotectl

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel"
)

// ErrDied is the error of a request to a zygote whose connection ended.
var ErrDied = errors.New("zygote died")

// Request is one line to the zygote; zygote.py's specialise and contain
// say what each field means. Paths are as the zygote sees them.
type Request struct {
	Op    string `json:"op"`
	Token string `json:"token"`
	Conn  string `json:"conn,omitempty"`
	// ConnInfo is the connection itself, instead of Conn's file (one-shot
	// children read only their address from it).
	ConnInfo *kernel.ConnectionInfo `json:"conn_info,omitempty"`
	Code     string                 `json:"code,omitempty"`
	Sock     string                 `json:"sock,omitempty"`
	Root     string                 `json:"root,omitempty"`
	Sandbox  bool                   `json:"sandbox,omitempty"`
	ShareNet bool                   `json:"share_net,omitempty"`
	Binds    []string               `json:"binds,omitempty"`
	UID      int                    `json:"uid,omitempty"`
	GID      int                    `json:"gid,omitempty"`
	Cgroups  []string               `json:"cgroups,omitempty"`
	Rlimits  map[string]int64       `json:"rlimits,omitempty"`
	Env      map[string]string      `json:"env,omitempty"`
	Contain  map[string]int         `json:"contain,omitempty"`
	// OneShot makes the child a one-shot kernel (zygote.py's run_oneshot).
	OneShot bool `json:"oneshot,omitempty"`
}

// msg is one line from the zygote.
type msg struct {
	Op      string `json:"op"`
	Token   string `json:"token"`
	PID     int    `json:"pid"`
	Status  int    `json:"status"`
	Error   string `json:"error"`
	Threads int    `json:"threads"`
	OneShot bool   `json:"oneshot"`
}

// Run is a kernel asked of a zygote. Its methods are called from the
// connection's reader, one at a time.
type Run interface {
	// Forked gives the kernel's pid (as the zygote sees it) before Fork
	// returns and before its exit can be reported.
	Forked(pid int)
	// Bound says the kernel's sockets are bound.
	Bound()
	// Exited gives the kernel's exit status: the code, or 128 + the
	// signal that ended it.
	Exited(status int)
}

// Conn is the control connection to one zygote.
type Conn struct {
	conn   net.Conn
	log    *slog.Logger
	prefix string // "local", "docker": the start of errors and log lines
	ready  chan struct{}
	// oneShots: the zygote said it makes one-shot kernels; set before
	// ready closes.
	oneShots bool

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	ended   bool                // the connection ended: no new forks
	pending map[string]chan msg // forks awaiting their answer
	runs    map[string]Run      // kernels forked and not yet exited
}

// New wraps the control connection c; Read must then run.
func New(c net.Conn, log *slog.Logger, prefix string) *Conn {
	return &Conn{conn: c, log: log, prefix: prefix, ready: make(chan struct{}),
		pending: map[string]chan msg{}, runs: map[string]Run{}}
}

// Ready is closed when the zygote said it is ready to fork.
func (z *Conn) Ready() <-chan struct{} { return z.ready }

// OneShots reports whether the zygote said, when ready, that it makes
// one-shot kernels (an older executor image does not): a fork request
// asks for one only then. False before Ready.
func (z *Conn) OneShots() bool {
	select {
	case <-z.ready:
		return z.oneShots
	default:
		return false
	}
}

// Read dispatches the zygote's messages until the connection ends, which
// is the zygote's end (or Close). Then forks still waiting fail with
// ErrDied, and so does every later one; it returns the kernels that were
// running, whose exits the zygote can no longer report.
func (z *Conn) Read() (orphans []Run) {
	z.dispatch()
	z.conn.Close()
	z.mu.Lock()
	defer z.mu.Unlock()
	z.ended = true
	for _, ch := range z.pending {
		close(ch)
	}
	z.pending = nil
	for _, r := range z.runs {
		orphans = append(orphans, r)
	}
	z.runs = nil
	return orphans
}

// dispatch acts on the zygote's messages until the connection ends. A
// panic while doing so ends the connection, as the zygote's death would,
// not the process.
func (z *Conn) dispatch() {
	defer codegw.Recover(context.Background(), z.prefix+" zygote control reader", nil)
	r := bufio.NewReaderSize(z.conn, 4096)
	ready := false
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			break
		}
		var m msg
		if err := json.Unmarshal(line, &m); err != nil {
			z.log.Error(z.prefix+": zygote: bad message", "err", err)
			continue
		}
		switch m.Op {
		case "ready":
			// Said once by a sane zygote; a second one must not close
			// the channel again (that panic would end the gateway).
			if ready {
				z.log.Warn(z.prefix + ": zygote: ready again, ignored")
				continue
			}
			ready = true
			z.log.Debug(z.prefix+": zygote loaded", "pid", m.PID, "threads", m.Threads, "oneshot", m.OneShot)
			z.oneShots = m.OneShot
			close(z.ready)
		case "forked", "error":
			z.mu.Lock()
			if r := z.runs[m.Token]; r != nil && m.Op == "forked" {
				r.Forked(m.PID)
			}
			ch := z.pending[m.Token]
			delete(z.pending, m.Token)
			z.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		case "bound":
			if r := z.run(m.Token, false); r != nil {
				r.Bound()
			}
		case "exit":
			if r := z.run(m.Token, true); r != nil {
				r.Exited(m.Status)
			}
		}
	}
}

func (z *Conn) run(token string, remove bool) Run {
	z.mu.Lock()
	defer z.mu.Unlock()
	r := z.runs[token]
	if remove {
		delete(z.runs, token)
	}
	return r
}

// Ended reports whether the connection ended (Read returned or is
// returning).
func (z *Conn) Ended() bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.ended
}

// Fork asks the zygote for kernel r (req.Token names it) and returns its
// pid. When ctx ends first the fork may still happen, so the kill follows
// it: r then learns of its exit as usual.
func (z *Conn) Fork(ctx context.Context, r Run, req Request) (int, error) {
	ch := make(chan msg, 1)
	z.mu.Lock()
	if z.ended {
		z.mu.Unlock()
		return 0, fmt.Errorf("%s: %w", z.prefix, ErrDied)
	}
	z.pending[req.Token] = ch
	z.runs[req.Token] = r
	z.mu.Unlock()
	req.Op = "fork"
	if err := z.send(req); err != nil {
		z.forget(req.Token)
		return 0, err
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return 0, fmt.Errorf("%s: %w", z.prefix, ErrDied)
		}
		if m.Op != "forked" {
			z.forget(req.Token)
			return 0, fmt.Errorf("%s: fork kernel: %s", z.prefix, m.Error)
		}
		return m.PID, nil
	case <-ctx.Done():
		z.Kill(req.Token)
		return 0, fmt.Errorf("%s: fork kernel: %w", z.prefix, ctx.Err())
	}
}

func (z *Conn) forget(token string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	delete(z.pending, token)
	delete(z.runs, token)
}

// Kill asks the zygote to kill a kernel, which ends its pid namespace (or,
// without the sandbox, its process group). The error wraps ErrDied when
// the zygote is gone, and its kernels with it.
func (z *Conn) Kill(token string) error {
	return z.send(Request{Op: "kill", Token: token})
}

func (z *Conn) send(req Request) error {
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("%s: zygote: %w", z.prefix, err)
	}
	z.wmu.Lock()
	defer z.wmu.Unlock()
	z.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := z.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("%s: %w: %v", z.prefix, ErrDied, err)
	}
	return nil
}

// Close ends the connection; a zygote then kills its kernels and exits.
func (z *Conn) Close() error { return z.conn.Close() }
