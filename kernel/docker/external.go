package docker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/internal/zygotectl"
)

// NewExternal returns a Provisioner that forks every kernel from a zygote it
// did not start (EXECUTOR=zygote): one that listens at socket, started by
// something else with EXECUTOR_ZYGOTE_SERVE=1 — in Kubernetes, the pod's
// zygote container, which shares with the gateway's container the
// directory of the socket (an emptyDir mounted at the same path in both).
// No container engine is involved.
//
// Kernels are forked as in fork mode (forked.go): own namespaces, root and
// uid, limited by rlimits (RLIMIT_AS = Config.Memory, RLIMIT_NPROC =
// Config.PidsLimit of its own uid). The gateway needs no privilege: the
// kernels' directories, in the socket's directory, are shared through
// their group, the gateway's own gid, which the zygote (as a supplementary
// group: the pod's fsGroup) and the kernels (as their gid) have too; each
// kernel has its own uid and sees only its own directories.
//
// A gateway running as root gives each kernel its directories instead
// (its own uid and gid, umask 077), as in fork mode.
//
// The zygote's loss (its container restarted) is a zygote death: its
// kernels are reported killed, and the next kernel waits for the zygote
// to listen again (up to 90 s) and connects anew.
func NewExternal(ctx context.Context, cfg Config, socket string) (*Provisioner, error) {
	if socket == "" {
		return nil, fmt.Errorf("docker: %w: zygote mode needs the zygote's socket path (ZYGOTE_SOCKET)", kernel.ErrProvisioner)
	}
	socket, err := filepath.Abs(socket)
	if err != nil {
		return nil, fmt.Errorf("docker: zygote socket: %w", err)
	}
	cfg.StateDir = filepath.Dir(socket)
	cfg.Start = StartFork
	p, err := newProvisioner(ctx, cfg, noEngine{}, "")
	if err != nil {
		return nil, err
	}
	p.external = socket
	p.forkDir = cfg.StateDir
	// A gateway of this pod that ended before may have left its kernels'
	// directories (its kernels ended with its connection).
	if ents, err := os.ReadDir(p.forkDir); err == nil {
		for _, e := range ents {
			if e.IsDir() && validName.MatchString(e.Name()) {
				os.RemoveAll(filepath.Join(p.forkDir, e.Name()))
			}
		}
	}
	p.fork = true
	p.uid, p.gid = os.Getuid(), os.Getgid()
	// A root gateway gives each kernel its directories, as in fork mode.
	p.shared = os.Geteuid() != 0
	p.log.Info("zygote: forked kernels are limited by rlimits (RLIMIT_AS, RLIMIT_NPROC of their own uid)",
		"socket", socket, "memory_bytes", p.cfg.Memory, "pids", p.cfg.PidsLimit)
	if _, err := p.getZygote(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// connectZygote connects to the external zygote, waiting for it to listen
// (its container may be starting or restarting), and waits until it is
// ready.
func (p *Provisioner) connectZygote(ctx context.Context) (*zygote, error) {
	ctx, cancel := context.WithTimeout(ctx, zygoteStartTimeout)
	defer cancel()
	begin := time.Now()
	z := &zygote{p: p, label: "zygote", name: p.external, dead: make(chan struct{})}
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", p.external)
		if err == nil {
			z.c = zygotectl.New(conn, p.log, "zygote")
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: zygote: nothing listens at %s: %v", kernel.ErrProvisioner, p.external, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := z.awaitReady(ctx, "zygote", fmt.Sprintf("at %s closed the connection before it was ready", p.external)); err != nil {
		return nil, err
	}
	p.log.Info("zygote: connected", "socket", p.external, "ms", time.Since(begin).Milliseconds())
	return z, nil
}

// shareDir gives a kernel's directory to the kernels' shared group (zygote
// mode): rwx for the gateway and the group, setgid so that what the kernel
// makes in it stays in the group.
func (p *Provisioner) shareDir(path string) error {
	return os.Chmod(path, 0o770|os.ModeSetgid)
}

// kernelGID is the gid a forked kernel runs as: its own uid's in fork
// mode, the gateway's (the shared group) in zygote mode.
func (k *kernelFiles) kernelGID() int {
	if k.p.shared {
		return k.p.gid
	}
	return k.uid
}

// kernelUmask is a forked kernel's umask: its files are its own (077), or,
// in zygote mode, its own and the shared group's, so that the gateway
// reads its outputs and dials its sockets.
func (k *kernelFiles) kernelUmask() int {
	if k.p.shared {
		return 0o007
	}
	return 0o077
}

// errNoEngine is what the container calls of a zygote-mode provisioner
// answer: it has no container engine (nothing calls them there).
var errNoEngine = errors.New("docker: zygote mode has no container engine")

// noEngine stands in for the Docker client in zygote mode: there is no
// container to make, inspect or remove, and none to reap.
type noEngine struct{}

func (noEngine) Ping(context.Context) (types.Ping, error) { return types.Ping{}, nil }
func (noEngine) ImageInspect(context.Context, string, ...client.ImageInspectOption) (image.InspectResponse, error) {
	return image.InspectResponse{}, nil
}
func (noEngine) ContainerCreate(context.Context, *container.Config, *container.HostConfig, *network.NetworkingConfig, *ocispec.Platform, string) (container.CreateResponse, error) {
	return container.CreateResponse{}, errNoEngine
}
func (noEngine) ContainerStart(context.Context, string, container.StartOptions) error {
	return errNoEngine
}
func (noEngine) ContainerWait(context.Context, string, container.WaitCondition) (<-chan container.WaitResponse, <-chan error) {
	errc := make(chan error, 1)
	errc <- errNoEngine
	return nil, errc
}
func (noEngine) ContainerInspect(context.Context, string) (container.InspectResponse, error) {
	return container.InspectResponse{}, errNoEngine
}
func (noEngine) ContainerKill(context.Context, string, string) error   { return errNoEngine }
func (noEngine) ContainerRename(context.Context, string, string) error { return errNoEngine }
func (noEngine) ContainerRemove(context.Context, string, container.RemoveOptions) error {
	return nil
}
func (noEngine) ContainerList(context.Context, container.ListOptions) ([]container.Summary, error) {
	return nil, nil
}
func (noEngine) Close() error { return nil }

// makeSharedDirs makes the rest of a kernel's directory tree in zygote mode
// (k.dir and root/ exist): every directory shared with the group.
func (k *kernelFiles) makeSharedDirs() error {
	for _, d := range []string{"run", "code", "code/input", "code/output"} {
		if err := os.Mkdir(filepath.Join(k.dir, d), 0o700); err != nil {
			return err
		}
	}
	for _, d := range []string{"", "root", "run", "code", "code/input", "code/output"} {
		if err := k.p.shareDir(filepath.Join(k.dir, d)); err != nil {
			return err
		}
	}
	return nil
}

// giveFile makes a file the gateway wrote readable by the kernel: its own
// in fork mode, the shared group's in zygote mode.
func (k *kernelFiles) giveFile(path string) error {
	if k.p.shared {
		return os.Chmod(path, 0o640)
	}
	return os.Lchown(path, k.uid, k.uid)
}
