package docker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"

	"github.com/codegw/codegw/kernel"
)

// Paths of the fork server inside its container.
const (
	// containerForkDir is where the zygote container sees the provisioner's
	// fork directory: the control socket and one directory per kernel.
	containerForkDir = "/run/codegw"
	zygoteSocket     = "zygote.sock"
	containerZygote  = "/opt/executor/zygote.py"
	containerExecDir = "/opt/executor"
)

// zygoteCaps are the only capabilities of a zygote container. Its children
// drop them all (the uid change clears them; no_new_privs keeps them from
// coming back). SYS_ADMIN: a pid, mount, network, ipc and uts namespace per
// child, and the mounts of its root; SYS_CHROOT: entering that root
// (Docker's seccomp profile refuses pivot_root); NET_ADMIN: bringing up
// the loopback interface of the child's network namespace; SETUID,
// SETGID: the child's own uid; KILL: ending children that run under other
// uids.
var zygoteCaps = []string{"SYS_ADMIN", "SYS_CHROOT", "NET_ADMIN", "SETUID", "SETGID", "KILL"}

// zygoteStartTimeout bounds a zygote's start: the container, then the
// imports of the data stack.
const zygoteStartTimeout = 90 * time.Second

// zygote is one fork-server container and the kernels it forked.
type zygote struct {
	p     *Provisioner
	label string // its codegw.kernel label: "zygote-<n>"
	name  string
	cid   string
	conn  net.Conn
	ready chan struct{} // closed when the zygote said it is ready
	dead  chan struct{} // closed once the control connection ended and the kernels were told

	wmu     sync.Mutex     // serialises writes to conn
	closing atomic.Bool    // the provisioner stopped it
	ended   atomic.Bool    // its connection ended: no new kernels from it
	orphans sync.WaitGroup // kernels being reported dead after the zygote's end

	mu      sync.Mutex
	pending map[string]chan zmsg // fork requests awaiting their answer
	runs    map[string]*forkRun  // kernels forked and not yet exited
}

// zmsg is one line from the zygote (executor-image/zygote.py).
type zmsg struct {
	Op      string `json:"op"`
	Token   string `json:"token"`
	PID     int    `json:"pid"`
	Status  int    `json:"status"`
	Error   string `json:"error"`
	Threads int    `json:"threads"`
}

// forkRequest asks the zygote for a kernel; zygote.py's specialise and
// contain say what each field means. Paths are the container's.
type forkRequest struct {
	Op       string            `json:"op"`
	Token    string            `json:"token"`
	Conn     string            `json:"conn,omitempty"`
	Code     string            `json:"code,omitempty"`
	Sock     string            `json:"sock,omitempty"`
	Root     string            `json:"root,omitempty"`
	Sandbox  bool              `json:"sandbox,omitempty"`
	ShareNet bool              `json:"share_net,omitempty"`
	Binds    []string          `json:"binds,omitempty"`
	UID      int               `json:"uid,omitempty"`
	GID      int               `json:"gid,omitempty"`
	Cgroups  []string          `json:"cgroups,omitempty"`
	Rlimits  map[string]int64  `json:"rlimits,omitempty"`
	Env      map[string]string `json:"env,omitempty"`
	Contain  map[string]int    `json:"contain,omitempty"`
}

var errZygoteDied = errors.New("docker: zygote died")

// startZygote starts a zygote container and waits until it is ready.
func (p *Provisioner) startZygote(ctx context.Context) (_ *zygote, err error) {
	ctx, cancel := context.WithTimeout(ctx, zygoteStartTimeout)
	defer cancel()
	begin := time.Now()
	label := "zygote-" + strconv.FormatInt(p.zseq.Add(1), 10)
	z := &zygote{p: p, label: label, name: p.containerName(label),
		ready: make(chan struct{}), dead: make(chan struct{}),
		pending: map[string]chan zmsg{}, runs: map[string]*forkRun{}}
	p.mu.Lock()
	p.live[label] = true
	p.mu.Unlock()
	defer func() {
		if err != nil {
			if z.cid != "" {
				p.removeContainer(z.cid)
			}
			p.forget(label)
		}
	}()
	sock := filepath.Join(p.forkDir, zygoteSocket)
	os.Remove(sock)

	env := append(append([]string{}, p.env...), "EXECUTOR_ZYGOTE_SOCKET="+containerForkDir+"/"+zygoteSocket)
	noInit := false
	labels := map[string]string{LabelInstance: p.cfg.InstanceID, LabelKernel: label, LabelPrefix + "role": "zygote"}
	mounts := []mount.Mount{{Type: mount.TypeBind, Source: p.forkDir, Target: containerForkDir}}
	if p.cg != nil {
		mounts = append(mounts,
			mount.Mount{Type: mount.TypeBind, Source: p.cg.mem, Target: containerCgroupDir + "/memory"},
			mount.Mount{Type: mount.TypeBind, Source: p.cg.pids, Target: containerCgroupDir + "/pids"})
	}
	cfg := &container.Config{
		Image: p.cfg.Image, User: "0:0", Env: env, Labels: labels, Hostname: "kernel",
		Cmd: []string{"python3", containerZygote},
	}
	hcfg := &container.HostConfig{
		NetworkMode:    container.NetworkMode(p.cfg.NetworkMode),
		ReadonlyRootfs: true,
		Tmpfs: map[string]string{
			"/tmp": fmt.Sprintf("rw,nosuid,nodev,size=%d,mode=1777", p.cfg.TmpfsSize),
		},
		CapDrop:     []string{"ALL"},
		CapAdd:      zygoteCaps,
		SecurityOpt: []string{"no-new-privileges"},
		Init:        &noInit,
		IpcMode:     container.IPCModePrivate,
		Mounts:      mounts,
		// Gone when the zygote ends, however it ends: it ends when the
		// gateway's control connection does.
		AutoRemove:    true,
		LogConfig:     container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "1m", "max-file": "1"}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
	}
	created, err := p.api.ContainerCreate(ctx, cfg, hcfg, nil, nil, z.name)
	if cerrdefs.IsConflict(err) {
		// A zygote of an earlier gateway of this instance that has not
		// ended yet (its name holds the instance id): replace it.
		p.log.Warn("docker: replacing leftover zygote container", "container", z.name)
		if rerr := p.removeContainer(z.name); rerr != nil {
			return nil, fmt.Errorf("%w: docker: remove leftover zygote container: %v", kernel.ErrProvisioner, rerr)
		}
		created, err = p.api.ContainerCreate(ctx, cfg, hcfg, nil, nil, z.name)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: docker: create zygote container: %v", kernel.ErrProvisioner, err)
	}
	z.cid = created.ID
	if err := p.api.ContainerStart(ctx, z.cid, container.StartOptions{}); err != nil {
		return nil, fmt.Errorf("%w: docker: start zygote container: %v", kernel.ErrProvisioner, err)
	}
	// The zygote listens before it imports anything; the container's start
	// takes a few hundred milliseconds.
	var d net.Dialer
	for {
		z.conn, err = d.DialContext(ctx, "unix", sock)
		if err == nil {
			break
		}
		if st, ierr := p.containerState(z.cid); ierr != nil || !st.Running {
			return nil, fmt.Errorf("%w: docker: zygote container ended before it listened", kernel.ErrProvisioner)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: docker: zygote did not listen: %v", kernel.ErrProvisioner, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	go z.read()
	select {
	case <-z.ready:
	case <-z.dead:
		return nil, fmt.Errorf("%w: docker: zygote exited before it was ready (see docker logs of %s)", kernel.ErrProvisioner, z.name)
	case <-ctx.Done():
		z.conn.Close()
		<-z.dead
		return nil, fmt.Errorf("%w: docker: zygote not ready: %v", kernel.ErrProvisioner, ctx.Err())
	}
	p.log.Info("docker: zygote ready", "container", shortID(z.cid), "name", z.name, "ms", time.Since(begin).Milliseconds())
	return z, nil
}

func (p *Provisioner) containerState(id string) (*container.State, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := p.api.ContainerInspect(ctx, id)
	if err != nil {
		return nil, err
	}
	if in.ContainerJSONBase == nil || in.State == nil {
		return nil, errors.New("docker: inspect: no state")
	}
	return in.State, nil
}

// read dispatches the zygote's messages until its connection ends, which
// is the zygote's end: then the container is removed (its pid namespace
// takes every kernel with it) and each kernel is reported killed.
func (z *zygote) read() {
	r := bufio.NewReaderSize(z.conn, 4096)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			break
		}
		var m zmsg
		if err := json.Unmarshal(line, &m); err != nil {
			z.p.log.Error("docker: zygote: bad message", "err", err)
			continue
		}
		switch m.Op {
		case "ready":
			z.p.log.Debug("docker: zygote loaded", "pid", m.PID, "threads", m.Threads)
			close(z.ready)
		case "forked", "error":
			z.mu.Lock()
			ch := z.pending[m.Token]
			delete(z.pending, m.Token)
			z.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		case "bound":
			z.mu.Lock()
			r := z.runs[m.Token]
			z.mu.Unlock()
			if r != nil {
				r.markBound()
			}
		case "exit":
			z.mu.Lock()
			r := z.runs[m.Token]
			delete(z.runs, m.Token)
			z.mu.Unlock()
			if r != nil {
				r.finish(exitFromState(m.Status, false))
			}
		}
	}
	z.ended.Store(true)
	z.conn.Close()
	// Conflict: the engine is removing it already (--rm).
	if err := z.p.removeContainer(z.cid); err != nil && !cerrdefs.IsConflict(err) {
		z.p.log.Error("docker: remove zygote container", "container", shortID(z.cid), "err", err)
	}
	z.mu.Lock()
	runs := z.runs
	z.runs = map[string]*forkRun{}
	why := "zygote died"
	if z.closing.Load() {
		why = "provisioner closed"
	}
	for _, ch := range z.pending {
		ch <- zmsg{Op: "error", Error: why}
	}
	z.pending = map[string]chan zmsg{}
	z.mu.Unlock()
	if z.closing.Load() {
		z.p.log.Info("docker: zygote stopped", "container", shortID(z.cid), "kernels", len(runs))
	} else {
		z.p.log.Warn("docker: zygote died", "container", shortID(z.cid), "kernels", len(runs))
	}
	z.p.forget(z.label)
	z.orphans.Add(len(runs))
	close(z.dead)
	for _, r := range runs {
		go func() {
			defer z.orphans.Done()
			r.orphaned()
		}()
	}
}

// fork asks the zygote for kernel run r.
func (z *zygote) fork(ctx context.Context, r *forkRun, req forkRequest) (int, error) {
	ch := make(chan zmsg, 1)
	z.mu.Lock()
	select {
	case <-z.dead:
		z.mu.Unlock()
		return 0, errZygoteDied
	default:
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
	case m := <-ch:
		if m.Op != "forked" {
			z.forget(req.Token)
			if m.Error == "zygote died" {
				return 0, errZygoteDied
			}
			return 0, fmt.Errorf("docker: fork kernel: %s", m.Error)
		}
		return m.PID, nil
	case <-ctx.Done():
		// The fork may still happen: the kill follows it in the queue.
		z.send(forkRequest{Op: "kill", Token: req.Token})
		return 0, fmt.Errorf("docker: fork kernel: %w", ctx.Err())
	}
}

func (z *zygote) forget(token string) {
	z.mu.Lock()
	delete(z.pending, token)
	delete(z.runs, token)
	z.mu.Unlock()
}

func (z *zygote) send(req forkRequest) error {
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("docker: zygote: %w", err)
	}
	z.wmu.Lock()
	defer z.wmu.Unlock()
	z.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := z.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("%w: %v", errZygoteDied, err)
	}
	return nil
}

// stop ends the zygote: closing its connection makes it kill its kernels
// and exit; read then removes the container.
func (z *zygote) stop() {
	z.closing.Store(true)
	z.conn.Close()
}

// isDead reports whether the zygote ended (its kernels may still be being
// reported dead).
func (z *zygote) isDead() bool {
	if z.ended.Load() {
		return true
	}
	select {
	case <-z.dead:
		return true
	default:
		return false
	}
}

// getZygote returns the running zygote, starting one when there is none or
// the last one died. Concurrent callers share one start.
func (p *Provisioner) getZygote(ctx context.Context) (*zygote, error) {
	for {
		p.zmu.Lock()
		if p.zclosed {
			p.zmu.Unlock()
			return nil, errors.New("docker: provisioner closed")
		}
		if z := p.zyg; z != nil && !z.isDead() {
			p.zmu.Unlock()
			return z, nil
		}
		if p.zstarting == nil {
			done := make(chan struct{})
			p.zstarting = done
			go func() {
				z, err := p.startZygote(context.Background())
				p.zmu.Lock()
				if p.zclosed && z != nil {
					z.stop()
				}
				p.zyg, p.zerr, p.zstarting = z, err, nil
				p.zmu.Unlock()
				if err != nil {
					p.log.Error("docker: zygote did not start", "err", err)
				}
				close(done)
			}()
		}
		done := p.zstarting
		p.zmu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, fmt.Errorf("docker: zygote: %w", ctx.Err())
		}
		p.zmu.Lock()
		z, err := p.zyg, p.zerr
		p.zmu.Unlock()
		if err != nil {
			return nil, err
		}
		if z != nil && !z.isDead() {
			return z, nil
		}
	}
}

// ZygoteContainer is the id of the running zygote container, or "" (fork
// mode only; for tests and operators).
func (p *Provisioner) ZygoteContainer() string {
	p.zmu.Lock()
	defer p.zmu.Unlock()
	if p.zyg == nil || p.zyg.isDead() {
		return ""
	}
	return p.zyg.cid
}
