package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/internal/cgroupv1"
	"github.com/codegw/codegw/kernel/internal/zygotectl"
)

// forked is one kernel forked by a zygote container (KERNEL_START=fork).
// Its files live in <fork dir>/<id>: run/ (sockets and connection file,
// bound at the same path inside the kernel), code/ (its /code, with input/
// and output/) and root/ (where the child builds its root file system).
// The kernel runs as its own uid, from the range starting at
// Config.KernelUID; its directories are that uid's.
type forked struct {
	p     *Provisioner
	id    string
	dir   string // host: <fork dir>/<id>
	uid   int
	info  kernel.ConnectionInfo // host paths, where the gateway dials
	kinfo kernel.ConnectionInfo // container paths, where the kernel binds
	env   map[string]string
	// oneShot: the kernel is a one-shot kernel (Spec.OneShot).
	oneShot bool

	opMu   sync.Mutex // serialises Restart and Close
	closed bool

	mu  sync.Mutex
	cur *forkRun
}

var (
	_ kernel.Process    = (*forked)(nil)
	_ kernel.Binder     = (*forked)(nil)
	_ kernel.OneShotter = (*forked)(nil)
)

// OneShot reports whether the current process is a one-shot kernel: asked
// for and forked by a zygote that makes them.
func (k *forked) OneShot() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur != nil && k.cur.oneShot
}

// forkRun is one child of a zygote; Restart forks a new one.
type forkRun struct {
	z      *zygote
	token  string
	cg     *cgroupv1.Group // nil: limited by rlimits
	exited chan struct{}
	once   sync.Once
	// bound is closed on the zygote's "bound" event: the kernel's sockets
	// are bound, and kernel.Dial connects once.
	bound     chan struct{}
	boundOnce sync.Once
	exit      kernel.Exit
	t0        time.Time
	kid       string
	p         *Provisioner
	oneShot   bool // the zygote made it a one-shot kernel
}

// containerPath is where the zygote container sees a path under the fork
// directory.
func (p *Provisioner) containerPath(host string) string {
	if p.external != "" {
		return host // zygote mode: both see it at the same path
	}
	rel, _ := filepath.Rel(p.forkDir, host)
	return containerForkDir + "/" + filepath.ToSlash(rel)
}

// startForked makes the kernel's directories and forks it.
func (p *Provisioner) startForked(ctx context.Context, spec kernel.Spec) (_ *forked, err error) {
	k := &forked{p: p, id: spec.ID, dir: filepath.Join(p.forkDir, spec.ID), env: map[string]string{}, oneShot: spec.OneShot}
	for _, kv := range p.env {
		name, v, _ := strings.Cut(kv, "=")
		k.env[name] = v
	}
	for name, v := range map[string]string{
		"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp",
		"PYTHONDONTWRITEBYTECODE": "1", "EXECUTOR_WORKDIR": "/code",
		// The image's font cache, for a kernel that imports matplotlib
		// the zygote did not preload.
		"EXECUTOR_MPL_CACHE": containerExecDir + "/mpl-cache",
	} {
		if _, ok := k.env[name]; !ok {
			k.env[name] = v
		}
	}
	for name, v := range spec.Env {
		k.env[name] = v
	}
	uid, err := p.takeUID()
	if err != nil {
		return nil, err
	}
	k.uid = uid
	defer func() {
		if err != nil {
			os.RemoveAll(k.dir)
			p.releaseUID(uid)
		}
	}()
	if err := k.makeDirs(); err != nil {
		return nil, fmt.Errorf("docker: kernel %s: %w", spec.ID, err)
	}
	host, err := kernel.NewIPCConnection(filepath.Join(k.dir, "run", "k"))
	if err != nil {
		return nil, fmt.Errorf("docker: kernel %s: %w (use a shorter StateDir)", spec.ID, err)
	}
	k.info, k.kinfo = host, host
	k.kinfo.IP = p.containerPath(host.IP)
	if err := k.fork(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

// makeDirs makes the kernel's directory tree: its own uid's, but for the
// parent and root/, which stay root's (the zygote mounts there before the
// child drops to the kernel's uid).
func (k *forked) makeDirs() error {
	if err := os.RemoveAll(k.dir); err != nil {
		return err
	}
	if err := os.Mkdir(k.dir, 0o711); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(k.dir, "root"), 0o700); err != nil {
		return err
	}
	if k.p.shared {
		return k.makeSharedDirs()
	}
	for _, d := range []string{"run", "code", "code/input", "code/output"} {
		path := filepath.Join(k.dir, d)
		mode := os.FileMode(0o755)
		if d == "run" {
			mode = 0o700
		}
		if err := os.Mkdir(path, mode); err != nil {
			return err
		}
		if err := os.Chmod(path, mode); err != nil {
			return err
		}
		if err := os.Lchown(path, k.uid, k.uid); err != nil {
			return err
		}
	}
	return nil
}

// fork writes a fresh connection file and forks a child for the kernel.
func (k *forked) fork(ctx context.Context) error {
	p := k.p
	k.removeSockets()
	connFile := filepath.Join(k.dir, "run", connectionFile)
	if err := k.kinfo.WriteFile(connFile); err != nil {
		return fmt.Errorf("docker: kernel %s: %w", k.id, err)
	}
	if err := k.giveFile(connFile); err != nil {
		return fmt.Errorf("docker: kernel %s: %w", k.id, err)
	}
	z, err := p.getZygote(ctx)
	if err != nil {
		return err
	}
	token := k.id + "." + strconv.FormatInt(p.seq.Add(1), 10)
	req := zygotectl.Request{
		Token: token, Conn: p.containerPath(connFile), Code: p.containerPath(k.Dir()),
		Sock: p.containerPath(filepath.Join(k.dir, "run")), Root: p.containerPath(filepath.Join(k.dir, "root")),
		Sandbox: true, ShareNet: p.cfg.NetworkMode != "none", Binds: []string{containerExecDir},
		UID: k.uid, GID: k.kernelGID(), Env: k.env, Contain: map[string]int{"umask": k.kernelUmask()},
		OneShot: k.oneShot && z.c.OneShots(),
	}
	r := &forkRun{z: z, token: token, exited: make(chan struct{}), bound: make(chan struct{}), t0: time.Now(), kid: k.id, p: p, oneShot: req.OneShot}
	if p.cg != nil {
		cg, err := p.cg.Create(token, p.cfg.Memory, p.cfg.PidsLimit)
		if err != nil {
			return err
		}
		r.cg = cg
		req.Cgroups = containerDirs(cg)
	} else {
		req.Rlimits = map[string]int64{}
		if p.cfg.Memory > 0 {
			req.Rlimits["as"] = p.cfg.Memory
		}
		if p.cfg.PidsLimit > 0 {
			// Per uid, and every kernel has its own.
			req.Rlimits["nproc"] = p.cfg.PidsLimit
		}
	}
	pid, err := z.c.Fork(ctx, r, req)
	if err != nil {
		if r.cg != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			r.cg.Remove()
		}
		if errors.Is(err, zygotectl.ErrDied) {
			return fmt.Errorf("%w: %v", kernel.ErrProvisioner, err)
		}
		return err
	}
	k.mu.Lock()
	k.cur = r
	k.mu.Unlock()
	p.log.Info("docker: kernel forked", "kernel", k.id, "zygote", z.name, "pid", pid, "uid", k.uid,
		"took", time.Since(r.t0).Round(time.Microsecond))
	return nil
}

func (k *forked) current() *forkRun {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

// finish records a forked kernel's exit with what its cgroups say about it,
// removes them and closes r.exited. Only the first call counts.
func (r *forkRun) finish(e kernel.Exit) {
	r.once.Do(func() {
		if r.cg != nil {
			e.OOMKilled = r.cg.OOMKilled()
			e.PidsLimited = r.cg.PidsHits() > 0
			r.cg.Remove()
		}
		r.exit = e
		close(r.exited)
		r.p.log.Info("docker: kernel exited", "kernel", r.kid, "code", e.Code, "signal", e.Signal,
			"oom", e.OOMKilled, "pids_limited", e.PidsLimited, "uptime", time.Since(r.t0).Round(time.Millisecond))
	})
}

// orphaned reports a kernel whose zygote died killed, once its processes
// are gone (the zygote container's removal ends them).
func (r *forkRun) orphaned() {
	for i := 0; r.cg != nil && !r.cg.Empty() && i < 500; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	r.finish(kernel.Exit{Code: -1, Signal: syscall.SIGKILL.String()})
}

// ConnectionInfo returns the endpoints as the gateway dials them: host paths.
func (k *forked) ConnectionInfo() kernel.ConnectionInfo { return k.info }

// Dir is the host directory the kernel sees as /code.
func (k *forked) Dir() string { return filepath.Join(k.dir, "code") }

func (k *forked) Exited() <-chan struct{} { return k.current().exited }

// Bound is closed when the current kernel said its sockets are bound.
func (k *forked) Bound() <-chan struct{} { return k.current().bound }

// markBound closes r.bound; only the first call counts.
func (r *forkRun) markBound() { r.boundOnce.Do(func() { close(r.bound) }) }

func (k *forked) Exit() kernel.Exit {
	r := k.current()
	select {
	case <-r.exited:
		return r.exit
	default:
		return kernel.Exit{}
	}
}

// PidsLimitHits returns how many forks the kernel's pids cgroup refused so
// far (0 without cgroups): see the spawned kernels' method.
func (k *forked) PidsLimitHits() int64 {
	if r := k.current(); r.cg != nil {
		return r.cg.PidsHits()
	}
	return 0
}

// Kill asks the zygote to kill the kernel, which ends its pid namespace. It
// does not wait for Exited.
func (k *forked) Kill(ctx context.Context) error {
	r := k.current()
	select {
	case <-r.exited:
		return nil
	default:
	}
	if err := r.z.c.Kill(r.token); err != nil && !errors.Is(err, zygotectl.ErrDied) {
		return fmt.Errorf("docker: kill kernel %s: %w", k.id, err)
	}
	return nil
}

// kill kills r and waits for its end.
func (k *forked) kill(ctx context.Context, r *forkRun) error {
	if err := k.Kill(ctx); err != nil {
		return err
	}
	select {
	case <-r.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("docker: kill kernel %s: %w", k.id, ctx.Err())
	}
}

// Restart kills the kernel and forks a new one: same endpoints, key and
// directory, a fresh /tmp and a fresh interpreter.
func (k *forked) Restart(ctx context.Context) error {
	k.opMu.Lock()
	defer k.opMu.Unlock()
	if k.closed {
		return fmt.Errorf("docker: restart kernel %s: closed", k.id)
	}
	if err := k.kill(ctx, k.current()); err != nil {
		return err
	}
	if err := k.fork(ctx); err != nil {
		return fmt.Errorf("docker: restart kernel %s: %w", k.id, err)
	}
	return nil
}

// Close kills the kernel and removes its directory. Later calls return nil.
func (k *forked) Close(ctx context.Context) error {
	k.opMu.Lock()
	defer k.opMu.Unlock()
	if k.closed {
		return nil
	}
	if err := k.kill(ctx, k.current()); err != nil {
		return err
	}
	k.closed = true
	k.removeSockets()
	err := os.RemoveAll(k.dir)
	k.p.releaseUID(k.uid)
	k.p.forget(k.id)
	if err != nil {
		return fmt.Errorf("docker: close kernel %s: %w", k.id, err)
	}
	return nil
}

func (k *forked) removeSockets() {
	for _, f := range k.info.SocketFiles() {
		os.Remove(f)
	}
}

// takeUID hands out a kernel uid no live kernel of this provisioner has,
// from the block of uids it leased (leaseUIDs) on first use.
func (p *Provisioner) takeUID() (int, error) {
	p.uidMu.Lock()
	defer p.uidMu.Unlock()
	if n := len(p.uidFree); n > 0 {
		uid := p.uidFree[n-1]
		p.uidFree = p.uidFree[:n-1]
		return uid, nil
	}
	if p.uidLease == nil {
		if err := p.leaseUIDs(); err != nil {
			return 0, err
		}
	}
	if p.uidNext >= uidBlock {
		return 0, fmt.Errorf("docker: all %d kernel uids of this instance are in use", uidBlock)
	}
	uid := p.uidBase + p.uidNext
	p.uidNext++
	return uid, nil
}

func (p *Provisioner) releaseUID(uid int) {
	p.uidMu.Lock()
	p.uidFree = append(p.uidFree, uid)
	p.uidMu.Unlock()
}

// Kernel uids come in blocks of uidBlock from Config.KernelUID on, one
// block per provisioner on the host: RLIMIT_NPROC counts a uid's
// processes host-wide, and a uid is what tells kernels apart where
// namespaces do not, so no two instances' kernels may share one.
const (
	uidBlock  = 1024
	uidBlocks = 64
)

// leaseUIDs takes the first free block of kernel uids: it holds an
// exclusive lock on uidLockDir/<block>.lock for the provisioner's life
// (the lock ends with the process, however it ends). Instances that share
// the host's temporary directory never share a block. p.uidMu is held.
func (p *Provisioner) leaseUIDs() error {
	dir := filepath.Join(os.TempDir(), "codegw-kernel-uids")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("docker: kernel uid leases: %w", err)
	}
	for b := range uidBlocks {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", b)), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("docker: kernel uid leases: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		p.uidLease, p.uidBase = f, p.cfg.KernelUID+b*uidBlock
		return nil
	}
	return fmt.Errorf("docker: all %d blocks of kernel uids are leased by other instances on this host", uidBlocks)
}

// releaseUIDLease gives the block back (Close).
func (p *Provisioner) releaseUIDLease() {
	p.uidMu.Lock()
	defer p.uidMu.Unlock()
	if p.uidLease != nil {
		p.uidLease.Close()
		p.uidLease = nil
	}
}
