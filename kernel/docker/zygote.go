package docker

import (
	"context"
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
	"github.com/codegw/codegw/kernel/internal/forked"
	"github.com/codegw/codegw/kernel/internal/zygotectl"
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
	c     *zygotectl.Conn
	dead  chan struct{} // closed once the control connection ended and the kernels were told

	closing atomic.Bool    // the provisioner stopped it
	orphans sync.WaitGroup // kernels being reported dead after the zygote's end
}

// startZygote starts a zygote container and waits until it is ready.
func (p *Provisioner) startZygote(ctx context.Context) (_ *zygote, err error) {
	ctx, cancel := context.WithTimeout(ctx, zygoteStartTimeout)
	defer cancel()
	begin := time.Now()
	label := "zygote-" + strconv.FormatInt(p.zseq.Add(1), 10)
	z := &zygote{p: p, label: label, name: p.containerName(label), dead: make(chan struct{})}
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
			mount.Mount{Type: mount.TypeBind, Source: p.cg.Mem, Target: containerCgroupDir + "/memory"},
			mount.Mount{Type: mount.TypeBind, Source: p.cg.Pids, Target: containerCgroupDir + "/pids"})
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
		conn, err := d.DialContext(ctx, "unix", sock)
		if err == nil {
			z.c = zygotectl.New(conn, p.log, "docker")
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
	if err := z.awaitReady(ctx, "docker", fmt.Sprintf("exited before it was ready (see docker logs of %s)", z.name)); err != nil {
		return nil, err
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

// read serves the zygote's connection until it ends, which is the
// zygote's end: then the container is removed (its pid namespace takes
// every kernel with it) and each kernel is reported killed.
// awaitReady reads z's connection and waits for its ready line; died says
// what a connection ended before it means, in errors prefixed by what.
func (z *zygote) awaitReady(ctx context.Context, what, died string) error {
	go z.read()
	select {
	case <-z.c.Ready():
		return nil
	case <-z.dead:
		return fmt.Errorf("%w: %s: zygote %s", kernel.ErrProvisioner, what, died)
	case <-ctx.Done():
		z.c.Close()
		<-z.dead
		return fmt.Errorf("%w: %s: zygote not ready: %v", kernel.ErrProvisioner, what, ctx.Err())
	}
}

func (z *zygote) read() {
	runs := z.c.Read()
	// Conflict: the engine is removing it already (--rm).
	if err := z.p.removeContainer(z.cid); err != nil && !cerrdefs.IsConflict(err) {
		z.p.log.Error("docker: remove zygote container", "container", shortID(z.cid), "err", err)
	}
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
			r.(*forked.Run).Orphaned()
		}()
	}
}

// Stop ends the zygote: closing its connection makes it kill its kernels
// and exit; read then removes the container.
func (z *zygote) Stop() {
	z.closing.Store(true)
	z.c.Close()
}

// Dead reports whether the zygote ended (its kernels may still be being
// reported dead).
func (z *zygote) Dead() bool { return z.c.Ended() }

// getZygote returns the running zygote, starting one when there is none or
// the last one died.
func (p *Provisioner) getZygote(ctx context.Context) (*zygote, error) {
	z, err := p.zyg.Get(ctx, func(ctx context.Context) (*zygote, error) {
		start := p.startZygote
		if p.external != "" {
			start = p.connectZygote
		}
		z, err := start(ctx)
		if err != nil {
			p.log.Error("docker: zygote did not start", "err", err)
		}
		return z, err
	})
	if err != nil && !errors.Is(err, kernel.ErrProvisioner) {
		err = fmt.Errorf("docker: %w", err)
	}
	return z, err
}

// ZygoteContainer is the id of the running zygote container, or "" (fork
// mode only; for tests and operators).
func (p *Provisioner) ZygoteContainer() string {
	z, ok := p.zyg.Current()
	if !ok {
		return ""
	}
	return z.cid
}
