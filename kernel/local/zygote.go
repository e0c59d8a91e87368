package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	executorimage "github.com/codegw/codegw/executor-image"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/internal/cgroupv1"
	"github.com/codegw/codegw/kernel/internal/forked"
	"github.com/codegw/codegw/kernel/internal/zygotectl"
)

// zygoteFD is the descriptor on which the zygote finds its control socket
// (EXECUTOR_ZYGOTE_FD), after the lifeline at lifelineFD.
const zygoteFD = 4

// zygoteWatch is watchScript for the zygote: its watcher also closes the
// control socket, so that only the zygote holds it.
const zygoteWatch = `(while read -r x <&3; do :; done; kill -KILL 0) </dev/null >/dev/null 2>&1 4<&- & exec "$@"`

// zygoteStartTimeout bounds the zygote's start: imports of the data stack.
const zygoteStartTimeout = 60 * time.Second

// zygote is one running fork server (executor-image/zygote.py) and the
// kernels it forked.
type zygote struct {
	p        *Provisioner
	cmd      *exec.Cmd
	pid      int
	c        *zygotectl.Conn
	tail     *tailBuffer
	readDone chan struct{}   // closed when the connection's Read returned
	orphans  []zygotectl.Run // what Read returned: kernels not yet exited
	dead     chan struct{}   // closed once the zygote process ended

	closing atomic.Bool // the provisioner ended it
}

// startZygote starts a zygote and waits until it is ready to fork.
func (p *Provisioner) startZygote(ctx context.Context) (*zygote, error) {
	zdir := filepath.Join(p.cfg.StateDir, "z")
	tmp := filepath.Join(zdir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("local: zygote: %w", err)
	}
	env := p.envMap(zdir, nil)
	env["HOME"], env["TMPDIR"], env["EXECUTOR_WORKDIR"] = tmp, tmp, zdir
	env["EXECUTOR_ZYGOTE_FD"] = strconv.Itoa(zygoteFD)

	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("local: zygote: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "zygote-ctl"), os.NewFile(uintptr(fds[1]), "zygote-ctl")
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return nil, fmt.Errorf("local: zygote: %w", err)
	}
	lr, lw, err := os.Pipe()
	if err != nil {
		conn.Close()
		theirs.Close()
		return nil, fmt.Errorf("local: zygote: %w", err)
	}
	cmd := exec.Command("/bin/sh", "-c", zygoteWatch, "codegw-zygote",
		p.cfg.Python, filepath.Join(p.execDir, executorimage.Zygote))
	cmd.Dir = zdir
	cmd.Env = envList(env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	pr, pw, err := os.Pipe()
	if err != nil {
		conn.Close()
		theirs.Close()
		lr.Close()
		lw.Close()
		return nil, fmt.Errorf("local: zygote: %w", err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.ExtraFiles = []*os.File{lr, theirs}
	err = p.spawn.start(cmd)
	pw.Close()
	lr.Close()
	theirs.Close()
	if err != nil {
		conn.Close()
		pr.Close()
		lw.Close()
		return nil, fmt.Errorf("%w: local: start zygote: %v", kernel.ErrProvisioner, err)
	}
	z := &zygote{p: p, cmd: cmd, pid: cmd.Process.Pid, c: zygotectl.New(conn, p.log, "local"), tail: newTailBuffer(outputTail),
		dead: make(chan struct{}), readDone: make(chan struct{})}
	output := make(chan struct{})
	go func() {
		defer close(output)
		io.Copy(z.tail, pr)
		pr.Close()
	}()
	go func() {
		z.orphans = z.c.Read()
		close(z.readDone)
	}()
	go z.wait(lw, output)

	ctx, cancel := context.WithTimeout(ctx, zygoteStartTimeout)
	defer cancel()
	select {
	case <-z.c.Ready():
		p.log.Info("local: zygote ready", "pid", z.pid)
		return z, nil
	case <-z.dead:
		<-output
		return nil, fmt.Errorf("%w: local: zygote exited before it was ready: %s", kernel.ErrProvisioner, lastLine(z.tail.String()))
	case <-ctx.Done():
		z.Stop()
		return nil, fmt.Errorf("%w: local: zygote not ready: %v", kernel.ErrProvisioner, ctx.Err())
	}
}

// wait is the one goroutine that waits for the zygote process. When it
// ends, its kernels get their parent-death signal or see end-of-file on the
// zygote's lifeline and end, with their namespaces; wait confirms they are
// gone and reports them dead.
func (z *zygote) wait(lifeline *os.File, output chan struct{}) {
	err := z.cmd.Wait()
	syscall.Kill(-z.pid, syscall.SIGKILL)
	lifeline.Close()
	z.c.Close()
	<-z.readDone // no message is being handled any more
	runs := z.orphans
	if z.closing.Load() {
		z.p.log.Info("local: zygote stopped", "pid", z.pid, "kernels", len(runs))
	} else {
		select {
		case <-output:
		case <-time.After(time.Second):
		}
		z.p.log.Warn("local: zygote exited", "pid", z.pid, "err", err, "kernels", len(runs), "output", lastLine(z.tail.String()))
	}
	close(z.dead)
	for _, r := range runs {
		go r.(*forked.Run).Orphaned()
	}
}

// Stop ends the zygote; its kernels follow.
func (z *zygote) Stop() {
	z.closing.Store(true)
	syscall.Kill(-z.pid, syscall.SIGKILL)
}

// Dead reports whether the zygote process ended.
func (z *zygote) Dead() bool {
	select {
	case <-z.dead:
		return true
	default:
		return false
	}
}

// getZygote returns the running zygote, starting one when there is none or
// the last one died.
func (p *Provisioner) getZygote(ctx context.Context) (*zygote, error) {
	z, err := p.zyg.Get(ctx, p.startZygote)
	switch {
	case errors.Is(err, zygotectl.ErrClosed):
		return nil, errClosed
	case err != nil && !errors.Is(err, kernel.ErrProvisioner):
		return nil, fmt.Errorf("local: %w", err)
	}
	return z, err
}

// startForked forks the kernel's first process from the zygote.
func (p *Provisioner) startForked(ctx context.Context, files *kernelFiles, spec kernel.Spec) (*forked.Kernel, error) {
	return forked.Start(ctx, forked.Config{
		ID: spec.ID, Prefix: "local", Log: p.log, Attrs: []any{"sandbox", p.sandbox, "transport", files.info.Transport},
		Info: files.info, Dir: files.Dir(), OneShot: spec.OneShot,
		Limits: forked.Limits{Cgroups: p.cg, Memory: p.cfg.Memory, Pids: int64(p.cfg.PidsLimit)},
		Seq:    &p.seq, HostPIDs: true,
	}, files)
}

var _ forked.Host = (*kernelFiles)(nil)

// Zygote returns the running zygote's connection (forked.Host).
func (k *kernelFiles) Zygote(ctx context.Context) (*zygotectl.Conn, error) {
	z, err := k.p.getZygote(ctx)
	if err != nil {
		return nil, err
	}
	k.ztail.Store(z.tail)
	return z.c, nil
}

// Request writes a fresh connection file (a one-shot child gets the
// connection in the request instead) and returns the fork request
// (forked.Host). Children build their root in the provisioner's root
// directory, each in its own mount namespace.
func (k *kernelFiles) Request(oneShot bool) (zygotectl.Request, error) {
	p := k.p
	req := zygotectl.Request{Code: k.Dir(), Sock: filepath.Join(k.kdir, "s"),
		Root: p.rootDir(), Sandbox: p.sandbox, ShareNet: k.info.Transport == "tcp", Binds: []string{p.execDir}}
	k.removeSockets() // a restart's killed child left them
	if oneShot {
		info := k.info
		req.ConnInfo = &info
	} else {
		connFile, err := k.writeConnFile()
		if err != nil {
			return zygotectl.Request{}, err
		}
		req.Conn = connFile
	}
	env := p.envMap(k.kdir, k.spec)
	delete(env, "EXECUTOR_LIFELINE_FD") // the kernel watches the zygote
	delete(env, "EXECUTOR_MPL_CACHE")   // the zygote loaded the fonts
	req.Env = env
	if p.cred != nil {
		req.UID, req.GID = int(p.cred.Uid), int(p.cred.Gid)
	}
	return req, nil
}

// CgroupDirs are g's directories: the zygote sees the host's (forked.Host).
func (k *kernelFiles) CgroupDirs(g *cgroupv1.Group) []string { return g.Dirs() }

// Remove removes the kernel's directory, socket files included, and lets
// go of its lock (forked.Host).
func (k *kernelFiles) Remove() error {
	defer k.unlock()
	return removeKernelDir(k.kdir)
}

// removeKernelDir removes a kernel's directory: an rmdir for each directory
// prepare made (kernelDirs, children first) when the kernel left them empty (a stateless call that
// wrote no file: most), else everything, as os.RemoveAll. The kernel's uid
// owns code/ but cannot replace it (its mount point) nor the directory
// above: rmdir follows no link the kernel made.
func removeKernelDir(kdir string) error {
	for _, d := range slices.Backward(kernelDirs) {
		if err := syscall.Rmdir(filepath.Join(kdir, d)); err != nil && (err != syscall.ENOENT || d != "tmp") {
			return os.RemoveAll(kdir)
		}
	}
	if err := syscall.Rmdir(kdir); err != nil {
		return os.RemoveAll(kdir)
	}
	return nil
}

// envList turns an environment map into sorted KEY=value strings.
func envList(m map[string]string) []string {
	env := make([]string, 0, len(m))
	for k, v := range m {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env
}
