package docker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/internal/cgroupv1"
	"github.com/codegw/codegw/kernel/internal/forked"
	"github.com/codegw/codegw/kernel/internal/zygotectl"
)

// forkedKernel is one kernel forked by a zygote container
// (KERNEL_START=fork): the lifecycle of package forked, with its files.
type forkedKernel struct {
	*forked.Kernel
	files *kernelFiles
}

var (
	_ kernel.Process    = (*forkedKernel)(nil)
	_ kernel.Binder     = (*forkedKernel)(nil)
	_ kernel.OneShotter = (*forkedKernel)(nil)
)

// kernelFiles is what a forked kernel owns on the host, and its forked.Host.
// Its files live in <fork dir>/<id>: run/ (sockets and connection file,
// bound at the same path inside the kernel), code/ (its /code, with input/
// and output/) and root/ (where the child builds its root file system).
// The kernel runs as its own uid, from the range starting at
// Config.KernelUID; its directories are that uid's.
type kernelFiles struct {
	p     *Provisioner
	id    string
	dir   string // host: <fork dir>/<id>
	uid   int
	info  kernel.ConnectionInfo // host paths, where the gateway dials
	kinfo kernel.ConnectionInfo // container paths, where the kernel binds
	env   map[string]string
}

var _ forked.Host = (*kernelFiles)(nil)

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
func (p *Provisioner) startForked(ctx context.Context, spec kernel.Spec) (_ *forkedKernel, err error) {
	k := &kernelFiles{p: p, id: spec.ID, dir: filepath.Join(p.forkDir, spec.ID), env: map[string]string{}}
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
	fk, err := forked.Start(ctx, forked.Config{
		ID: spec.ID, Prefix: "docker", Log: p.log, Attrs: []any{"uid", uid},
		Info: k.info, Dir: k.codeDir(), OneShot: spec.OneShot,
		Limits: forked.Limits{Cgroups: p.cg, Memory: p.cfg.Memory, Pids: p.cfg.PidsLimit},
		Seq:    &p.seq,
	}, k)
	if err != nil {
		return nil, err
	}
	return &forkedKernel{Kernel: fk, files: k}, nil
}

// codeDir is the host directory the kernel sees as /code.
func (k *kernelFiles) codeDir() string { return filepath.Join(k.dir, "code") }

// makeDirs makes the kernel's directory tree: its own uid's, but for the
// parent and root/, which stay root's (the zygote mounts there before the
// child drops to the kernel's uid).
func (k *kernelFiles) makeDirs() error {
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

// Zygote returns the running zygote's connection (forked.Host).
func (k *kernelFiles) Zygote(ctx context.Context) (*zygotectl.Conn, error) {
	z, err := k.p.getZygote(ctx)
	if err != nil {
		return nil, err
	}
	return z.c, nil
}

// Request writes a fresh connection file and returns the fork request,
// paths as the zygote container sees them (forked.Host).
func (k *kernelFiles) Request(oneShot bool) (zygotectl.Request, error) {
	p := k.p
	k.removeSockets()
	req := zygotectl.Request{
		Code: p.containerPath(k.codeDir()),
		Sock: p.containerPath(filepath.Join(k.dir, "run")), Root: p.containerPath(filepath.Join(k.dir, "root")),
		Sandbox: true, ShareNet: p.cfg.NetworkMode != "none", Binds: []string{containerExecDir},
		UID: k.uid, GID: k.kernelGID(), Env: k.env, Contain: map[string]int{"umask": k.kernelUmask()},
	}
	if oneShot { // it reads only its address: no file to write
		info := k.kinfo
		req.ConnInfo = &info
		return req, nil
	}
	connFile := filepath.Join(k.dir, "run", connectionFile)
	if err := k.kinfo.WriteFile(connFile); err != nil {
		return zygotectl.Request{}, fmt.Errorf("docker: kernel %s: %w", k.id, err)
	}
	if err := k.giveFile(connFile); err != nil {
		return zygotectl.Request{}, fmt.Errorf("docker: kernel %s: %w", k.id, err)
	}
	req.Conn = p.containerPath(connFile)
	return req, nil
}

// CgroupDirs are where the zygote container sees g (forked.Host).
func (k *kernelFiles) CgroupDirs(g *cgroupv1.Group) []string { return containerDirs(g) }

// Remove removes the kernel's directory and gives back its uid and id
// (forked.Host).
func (k *kernelFiles) Remove() error {
	k.removeSockets()
	err := os.RemoveAll(k.dir)
	k.p.releaseUID(k.uid)
	k.p.forget(k.id)
	return err
}

func (k *kernelFiles) removeSockets() {
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
