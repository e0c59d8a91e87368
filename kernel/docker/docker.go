// Package docker is a kernel.Provisioner that runs each IPython kernel in its
// own executor container (the image built from Dockerfile.executor), on a
// Docker engine reached with github.com/docker/docker/client.
//
// The gateway talks to the kernel over ZeroMQ ipc sockets in a bind-mounted
// per-kernel directory, so containers run with no network at all by default.
// Containers are locked down: read-only root file system with a private tmpfs
// at /tmp, a non-root user, no capabilities, no-new-privileges, and memory
// (swap equal to memory), CPU and process limits. Each carries the labels
// codegw.instance and codegw.kernel so that Reap can find what a crashed
// gateway left behind.
//
// With Config.Start "fork" (the default, KERNEL_START) kernels are not
// containers of their own: one zygote container per provisioner runs
// executor-image/zygote.py, which has imported ipykernel and the preload
// list once, and forks a child per kernel. Each child gets its own pid,
// mount, network, ipc and uts namespaces, its own root (read-only system,
// private /tmp, only its own /code and socket directory), its own uid,
// umask 077 and its own memory and pids cgroups (rlimits where the
// gateway cannot make cgroups); see zygote.go, forked.go and the shared
// lifecycle of a forked kernel in kernel/internal/forked. When the
// zygote container cannot start, New warns and kernels are containers.
package docker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/internal/cgroupv1"
	"github.com/codegw/codegw/kernel/internal/zygotectl"
)

var (
	_ kernel.Provisioner = (*Provisioner)(nil)
	_ kernel.Reaper      = (*Provisioner)(nil)
	_ kernel.Binder      = (*process)(nil)
)

// Labels set on every container.
const (
	LabelInstance = "codegw.instance"
	LabelKernel   = "codegw.kernel"
	// LabelPrefix prefixes the keys of kernel.Spec.Labels ("session" becomes
	// "codegw.session").
	LabelPrefix = "codegw."
)

// Paths inside the container. They match Dockerfile.executor's CMD.
const (
	containerRunDir    = "/run/kernel"
	containerIPCPrefix = containerRunDir + "/k"
	containerInput     = "/code/input"
	containerOutput    = "/code/output"
	connectionFile     = "connection.json"
	// readyFIFO is the FIFO in the run directory on which the launcher
	// writes a byte once the kernel's sockets are bound
	// (EXECUTOR_READY_FILE), so the gateway dials once.
	readyFIFO    = "bound"
	instanceFile = "instance"
)

// Config configures a Provisioner. The zero value of a field means its
// default (see DefaultConfig).
type Config struct {
	// Image is the executor image (default "codegw/executor:latest").
	Image string
	// NetworkMode is the container network (default "none": the kernel
	// needs none, the gateway reaches it over ipc sockets).
	NetworkMode string
	// Memory is the memory limit in bytes; swap is limited to the same
	// (MemorySwap = Memory), so the kernel cannot swap. 0 is no limit.
	Memory int64
	// NanoCPUs is the CPU limit in billionths of a CPU; 0 is no limit.
	NanoCPUs int64
	// PidsLimit bounds the number of processes and threads (default 256).
	PidsLimit int64
	// TmpfsSize is the size of the tmpfs at /tmp in bytes (default 256 MiB).
	// It counts against the memory limit as it fills.
	TmpfsSize int64
	// InstanceID names this gateway instance in container names and labels
	// (default: the host name).
	InstanceID string
	// StateDir is the host directory for the per-kernel directories. It must
	// be a path on the engine's host, since it is bind mounted, and short,
	// since socket paths in it are limited to about 100 bytes (default
	// $TMPDIR/codegw-docker).
	StateDir string
	// Host is the Docker engine's address (default $DOCKER_HOST, else
	// unix:///var/run/docker.sock).
	Host string
	// User is the numeric "uid:gid" the kernel runs as; the per-kernel
	// directories are given to it (default "1000:1000", the image's
	// executor user).
	User string
	// Env is extra environment for every kernel; kernel.Spec.Env adds to it.
	Env map[string]string
	// Preload lists the modules the kernel imports before it answers its
	// first request (EXECUTOR_PRELOAD). nil keeps the launcher's default
	// (numpy, pandas, matplotlib); an empty non-nil slice preloads nothing.
	Preload []string
	// Start is how kernels are made: "fork" (default, "" too) forks them
	// from a zygote container; "spawn" starts a container per kernel. When
	// the zygote cannot start, New warns and spawns.
	Start string
	// KernelUID is the first of the uids forked kernels run as, one each
	// (default 200000; 65536 of them, leased in blocks of 1024 to the
	// instances on a host so that no two share a uid). The gateway must be
	// root to give them their directories; otherwise kernels are spawned.
	KernelUID int
	// Logger receives one line per kernel event (default slog.Default()).
	Logger *slog.Logger

	// noCgroups limits forked kernels by rlimits even where cgroups can be
	// made (tests: as on a host where they cannot).
	noCgroups bool
}

// Start modes for Config.Start.
const (
	StartFork  = "fork"  // fork kernels from a zygote container (default)
	StartSpawn = "spawn" // one container per kernel
)

// DefaultConfig returns the configuration used for zero fields.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Image:       "codegw/executor:latest",
		NetworkMode: "none",
		PidsLimit:   256,
		TmpfsSize:   256 << 20,
		InstanceID:  host,
		StateDir:    filepath.Join(os.TempDir(), "codegw-docker"),
		User:        "1000:1000",
		Start:       StartFork,
		KernelUID:   200000,
	}
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	if c.Image == "" {
		c.Image = d.Image
	}
	if c.NetworkMode == "" {
		c.NetworkMode = d.NetworkMode
	}
	if c.PidsLimit == 0 {
		c.PidsLimit = d.PidsLimit
	}
	if c.TmpfsSize == 0 {
		c.TmpfsSize = d.TmpfsSize
	}
	if c.InstanceID == "" {
		c.InstanceID = d.InstanceID
	}
	if c.StateDir == "" {
		c.StateDir = d.StateDir
	}
	if c.User == "" {
		c.User = d.User
	}
	if c.Start == "" {
		c.Start = d.Start
	}
	if c.KernelUID == 0 {
		c.KernelUID = d.KernelUID
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// dockerAPI is the part of the Docker client the provisioner uses; tests
// replace it to inject rare failures.
type dockerAPI interface {
	Ping(ctx context.Context) (types.Ping, error)
	ImageInspect(ctx context.Context, imageID string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ContainerCreate(ctx context.Context, config *container.Config, hostConfig *container.HostConfig, networkingConfig *network.NetworkingConfig, platform *ocispec.Platform, containerName string) (container.CreateResponse, error)
	ContainerStart(ctx context.Context, containerID string, options container.StartOptions) error
	ContainerWait(ctx context.Context, containerID string, condition container.WaitCondition) (<-chan container.WaitResponse, <-chan error)
	ContainerInspect(ctx context.Context, containerID string) (container.InspectResponse, error)
	ContainerKill(ctx context.Context, containerID, signal string) error
	ContainerRename(ctx context.Context, containerID, newContainerName string) error
	ContainerRemove(ctx context.Context, containerID string, options container.RemoveOptions) error
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	Close() error
}

// Provisioner starts one executor container per kernel.
type Provisioner struct {
	cfg      Config
	api      dockerAPI
	log      *slog.Logger
	uid, gid int
	env      []string // the base environment, sorted

	mu   sync.Mutex
	live map[string]bool // kernel ids started and not yet closed; Reap spares them

	// Fork mode (Config.Start "fork"); fork is false when kernels are
	// containers of their own.
	fork    bool
	forkDir string            // host directory bound at containerForkDir in the zygote
	cg      *cgroupv1.Parents // nil: forked kernels are limited by rlimits
	seq     atomic.Int64
	zseq    atomic.Int64

	zyg zygotectl.Keeper[*zygote]
	// external is the socket of a zygote the provisioner did not start
	// (zygote mode, external.go), or "".
	external string
	shared   bool // zygote mode, unprivileged: kernels' directories shared by group

	uidMu    sync.Mutex
	uidFree  []int
	uidNext  int
	uidBase  int      // first uid of the leased block
	uidLease *os.File // its lock, held while the provisioner lives
}

// New connects to the Docker engine and checks that the image exists. The
// error wraps kernel.ErrProvisioner when the engine does not answer or the
// image is missing.
func New(ctx context.Context, cfg Config) (*Provisioner, error) {
	cfg.setDefaults()
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker: %w: client for %q: %v", kernel.ErrProvisioner, cfg.Host, err)
	}
	p, err := newProvisioner(ctx, cfg, cli, cli.DaemonHost())
	if err != nil {
		cli.Close()
		return nil, err
	}
	if err := p.chooseStart(ctx); err != nil {
		cli.Close()
		return nil, err
	}
	return p, nil
}

// chooseStart settles Config.Start: in fork mode the first zygote starts
// here, and when it cannot, kernels are spawned as containers.
func (p *Provisioner) chooseStart(ctx context.Context) error {
	switch p.cfg.Start {
	case StartFork:
	case StartSpawn:
		return nil
	default:
		return fmt.Errorf("docker: unknown start mode %q (want fork or spawn)", p.cfg.Start)
	}
	if os.Geteuid() != 0 {
		p.log.Warn("docker: the fork server needs a root gateway (it gives each forked kernel its own uid); kernels are containers of their own (KERNEL_START=spawn)")
		return nil
	}
	sum := sha256.Sum256([]byte(p.cfg.InstanceID))
	name := "z-" + hex.EncodeToString(sum[:4])
	p.forkDir = filepath.Join(p.cfg.StateDir, name)
	// A crashed gateway of this instance may have left it: start clean.
	if err := os.RemoveAll(p.forkDir); err != nil {
		return fmt.Errorf("docker: fork dir: %w", err)
	}
	if err := os.Mkdir(p.forkDir, 0o711); err != nil {
		return fmt.Errorf("docker: fork dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(p.forkDir, instanceFile), []byte(p.cfg.InstanceID+"\n"), 0o600); err != nil {
		return fmt.Errorf("docker: fork dir: %w", err)
	}
	p.live[name] = true
	cg, err := detectCgroups("codegw-docker-" + hex.EncodeToString(sum[:4]))
	if err == nil && p.cfg.noCgroups {
		cg.Remove()
		err = errors.New("not asked for")
	}
	if err == nil {
		p.cg = cg
		p.log.Info("docker: forked kernels are limited by cgroups", "memory_bytes", p.cfg.Memory, "pids", p.cfg.PidsLimit,
			"memory_cgroup", cg.Mem, "pids_cgroup", cg.Pids)
	} else {
		p.log.Warn("docker: cgroups unavailable: forked kernels are limited by rlimits (RLIMIT_AS, RLIMIT_NPROC of their own uid)",
			"reason", err)
	}
	p.fork = true
	if _, err := p.getZygote(ctx); err != nil {
		p.fork = false
		p.forget(name)
		os.RemoveAll(p.forkDir)
		if p.cg != nil {
			p.cg.Remove()
			p.cg = nil
		}
		p.log.Warn("docker: fork server unavailable; kernels are containers of their own (KERNEL_START=spawn)", "err", err)
	}
	return nil
}

// MakesOneShots reports whether Spec.OneShot gets a one-shot kernel: only
// the zygote container forks them.
func (p *Provisioner) MakesOneShots() bool {
	if !p.fork {
		return false
	}
	z, err := p.getZygote(context.Background())
	return err == nil && z.c.OneShots()
}

// StartMode says how kernels are made: "fork" or "spawn".
func (p *Provisioner) StartMode() string {
	if p.fork {
		return StartFork
	}
	return StartSpawn
}

// LimitMode says how each kernel's memory and processes are limited:
// "container" (its own container's cgroups), "cgroup" (a forked kernel's
// own cgroups) or "rlimit".
func (p *Provisioner) LimitMode() string {
	switch {
	case !p.fork:
		return "container"
	case p.cg != nil:
		return "cgroup"
	}
	return "rlimit"
}

func newProvisioner(ctx context.Context, cfg Config, api dockerAPI, host string) (*Provisioner, error) {
	cfg.setDefaults()
	uid, gid, err := parseUser(cfg.User)
	if err != nil {
		return nil, err
	}
	if !validName.MatchString(cfg.InstanceID) {
		return nil, fmt.Errorf("docker: instance id %q: want letters, digits, '_', '.', '-'", cfg.InstanceID)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := api.Ping(pctx); err != nil {
		return nil, fmt.Errorf("docker: %w: no Docker engine answers at %s (start one with scripts/docker-up.sh, or set DOCKER_HOST): %v",
			kernel.ErrProvisioner, host, err)
	}
	if _, err := api.ImageInspect(pctx, cfg.Image); err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil, fmt.Errorf("docker: %w: image %s not found on %s; build it with scripts/docker-up.sh (docker build --network host -t %s -f Dockerfile.executor .)",
				kernel.ErrProvisioner, cfg.Image, host, cfg.Image)
		}
		return nil, fmt.Errorf("docker: %w: inspect image %s: %v", kernel.ErrProvisioner, cfg.Image, err)
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("docker: state dir: %w", err)
	}
	cfg.StateDir = stateDir
	if err := os.MkdirAll(stateDir, 0o711); err != nil {
		return nil, fmt.Errorf("docker: state dir: %w", err)
	}
	env := map[string]string{}
	for k, v := range cfg.Env {
		env[k] = v
	}
	if cfg.Preload != nil {
		env["EXECUTOR_PRELOAD"] = strings.Join(cfg.Preload, ",")
	}
	env["EXECUTOR_READY_FILE"] = containerRunDir + "/" + readyFIFO
	return &Provisioner{
		cfg: cfg, api: api, log: cfg.Logger, uid: uid, gid: gid,
		env:  envList(env, nil),
		live: map[string]bool{},
	}, nil
}

// Config returns the provisioner's configuration with defaults applied.
func (p *Provisioner) Config() Config { return p.cfg }

// Close releases the connection to the engine. Kernel containers keep
// running; close them first. Forked kernels end with their zygote, which
// Close stops.
func (p *Provisioner) Close() error {
	if z, ok := p.zyg.Close(); ok {
		z.Stop()
		<-z.dead
		z.orphans.Wait() // their cgroups are gone, then the parents can go
	}
	if p.cg != nil {
		p.cg.Remove()
	}
	if p.forkDir != "" && p.external == "" {
		p.forget(filepath.Base(p.forkDir))
		os.RemoveAll(p.forkDir)
	}
	p.releaseUIDLease()
	return p.api.Close()
}

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

func parseUser(s string) (uid, gid int, err error) {
	u, g, ok := strings.Cut(s, ":")
	if !ok {
		g = u
	}
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if err1 != nil || err2 != nil || uid < 0 || gid < 0 {
		return 0, 0, fmt.Errorf("docker: user %q: want numeric uid:gid", s)
	}
	return uid, gid, nil
}

// envList merges base and extra into a sorted KEY=value list.
func envList(base, extra map[string]string) []string {
	m := map[string]string{}
	for k, v := range base {
		m[k] = v
	}
	for k, v := range extra {
		m[k] = v
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func (p *Provisioner) containerName(id string) string {
	return "codegw-" + p.cfg.InstanceID + "-" + id
}

// Start creates the kernel's directories and container and starts it. It
// returns once the container runs; the caller dials the kernel and waits for
// readiness.
func (p *Provisioner) Start(ctx context.Context, spec kernel.Spec) (kernel.Process, error) {
	if !validName.MatchString(spec.ID) {
		return nil, fmt.Errorf("docker: kernel id %q: want 1-64 letters, digits, '_', '.', '-'", spec.ID)
	}
	p.mu.Lock()
	if p.live[spec.ID] {
		p.mu.Unlock()
		return nil, fmt.Errorf("docker: kernel %s is already running", spec.ID)
	}
	p.live[spec.ID] = true
	p.mu.Unlock()

	if p.fork {
		proc, err := p.startForked(ctx, spec)
		if err != nil {
			p.forget(spec.ID)
			return nil, err
		}
		return proc, nil
	}
	proc, err := p.start(ctx, spec)
	if err != nil {
		p.forget(spec.ID)
		return nil, err
	}
	return proc, nil
}

func (p *Provisioner) forget(id string) {
	p.mu.Lock()
	delete(p.live, id)
	p.mu.Unlock()
}

func (p *Provisioner) start(ctx context.Context, spec kernel.Spec) (_ *process, err error) {
	begin := time.Now()
	dir := filepath.Join(p.cfg.StateDir, spec.ID)
	proc := &process{
		p: p, id: spec.ID, name: p.containerName(spec.ID), root: dir,
		runDir: filepath.Join(dir, "run"), codeDir: filepath.Join(dir, "code"),
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if err := p.makeDirs(proc); err != nil {
		return nil, fmt.Errorf("docker: kernel %s: %w", spec.ID, err)
	}
	// One key and the same ports; only the socket path prefix differs between
	// the host (where the gateway dials) and the container (where the kernel
	// binds).
	host, err := kernel.NewIPCConnection(filepath.Join(proc.runDir, "k"))
	if err != nil {
		return nil, fmt.Errorf("docker: kernel %s: %w (use a shorter StateDir)", spec.ID, err)
	}
	proc.info = host
	proc.kinfo = host
	proc.kinfo.IP = containerIPCPrefix
	if err := proc.writeConnectionFile(); err != nil {
		return nil, fmt.Errorf("docker: kernel %s: %w", spec.ID, err)
	}

	cfg, hcfg := p.containerConfig(proc, spec)
	created, err := p.api.ContainerCreate(ctx, cfg, hcfg, nil, nil, proc.name)
	if cerrdefs.IsConflict(err) {
		// A container of the same name is a leftover of this instance (the
		// name holds the instance id): replace it.
		p.log.Warn("docker: replacing leftover container", "kernel", spec.ID, "container", proc.name)
		if rerr := p.api.ContainerRemove(ctx, proc.name, container.RemoveOptions{Force: true, RemoveVolumes: true}); rerr != nil && !cerrdefs.IsNotFound(rerr) {
			return nil, fmt.Errorf("docker: kernel %s: remove leftover container: %w", spec.ID, rerr)
		}
		created, err = p.api.ContainerCreate(ctx, cfg, hcfg, nil, nil, proc.name)
	}
	if err != nil {
		if ctx.Err() != nil {
			// The engine may have created it after we stopped listening.
			p.removeContainer(proc.name)
		}
		return nil, fmt.Errorf("docker: kernel %s: create container: %w", spec.ID, err)
	}
	proc.cid = created.ID
	bound, err := proc.openBound()
	if err != nil {
		p.removeContainer(proc.cid)
		return nil, fmt.Errorf("docker: kernel %s: %w", spec.ID, err)
	}
	if err := p.api.ContainerStart(ctx, proc.cid, container.StartOptions{}); err != nil {
		bound.close()
		p.removeContainer(proc.cid)
		return nil, fmt.Errorf("docker: kernel %s: start container: %w", spec.ID, err)
	}
	proc.startRun(bound)
	p.log.Info("docker: kernel started", "kernel", spec.ID, "session", spec.Labels["session"],
		"container", shortID(proc.cid), "ms", time.Since(begin).Milliseconds())
	return proc, nil
}

// makeDirs makes <StateDir>/<id>/{run,code/input,code/output}. The kernel's
// user owns the bind-mounted ones; the parent stays private to the gateway's
// user, which keeps other host users away from the sockets and the key.
func (p *Provisioner) makeDirs(proc *process) error {
	if err := os.Mkdir(proc.root, 0o700); err != nil {
		if !errors.Is(err, os.ErrExist) {
			return err
		}
		// A leftover of a crash: start clean.
		if err := os.RemoveAll(proc.root); err != nil {
			return err
		}
		if err := os.Mkdir(proc.root, 0o700); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(proc.root, instanceFile), []byte(p.cfg.InstanceID+"\n"), 0o600); err != nil {
		return err
	}
	for _, d := range []string{proc.runDir, proc.codeDir, proc.InputDir(), proc.OutputDir()} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		if err := p.giveToKernel(d); err != nil {
			return err
		}
	}
	return nil
}

// giveToKernel makes path the kernel user's. As root that is a chown; a
// gateway that is not root cannot, and opens the directory instead (its
// private parent still keeps other host users out).
func (p *Provisioner) giveToKernel(path string) error {
	if os.Geteuid() == 0 || os.Geteuid() == p.uid {
		if err := os.Lchown(path, p.uid, p.gid); err != nil {
			return err
		}
		return nil
	}
	return os.Chmod(path, 0o777)
}

func (p *Provisioner) containerConfig(proc *process, spec kernel.Spec) (*container.Config, *container.HostConfig) {
	labels := map[string]string{}
	for k, v := range spec.Labels {
		labels[LabelPrefix+k] = v
	}
	labels[LabelInstance] = p.cfg.InstanceID
	labels[LabelKernel] = spec.ID

	env := p.env
	if len(spec.Env) > 0 {
		base := map[string]string{}
		for _, kv := range p.env {
			k, v, _ := strings.Cut(kv, "=")
			base[k] = v
		}
		env = envList(base, spec.Env)
	}

	pids := p.cfg.PidsLimit
	noInit := false
	cfg := &container.Config{
		Image:    p.cfg.Image,
		User:     p.cfg.User,
		Env:      env,
		Labels:   labels,
		Hostname: "kernel",
		// ENTRYPOINT (tini) and CMD (the launcher) come from the image.
	}
	hcfg := &container.HostConfig{
		NetworkMode:    container.NetworkMode(p.cfg.NetworkMode),
		ReadonlyRootfs: true,
		Tmpfs: map[string]string{
			"/tmp": fmt.Sprintf("rw,nosuid,nodev,size=%d,mode=1777", p.cfg.TmpfsSize),
		},
		CapDrop:     []string{"ALL"},
		SecurityOpt: []string{"no-new-privileges"},
		Init:        &noInit, // tini is the image's ENTRYPOINT
		IpcMode:     container.IPCModePrivate,
		Resources: container.Resources{
			Memory:     p.cfg.Memory,
			MemorySwap: p.cfg.Memory, // no swap beyond memory; 0 with 0
			NanoCPUs:   p.cfg.NanoCPUs,
			PidsLimit:  &pids,
		},
		Mounts: []mount.Mount{
			{Type: mount.TypeBind, Source: proc.runDir, Target: containerRunDir},
			{Type: mount.TypeBind, Source: proc.InputDir(), Target: containerInput},
			{Type: mount.TypeBind, Source: proc.OutputDir(), Target: containerOutput},
		},
		// What the kernel writes to its own stdout/stderr (the launcher's
		// messages, C extensions, subprocesses) is kept, but bounded.
		LogConfig:     container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "1m", "max-file": "1"}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
	}
	return cfg, hcfg
}

// removeContainer force-removes a container with a fresh, bounded context:
// it runs on cleanup paths where the caller's context may be done.
func (p *Provisioner) removeContainer(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := p.api.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// Reap removes this instance's containers and kernel directories that no
// live kernel of this Provisioner owns: the leftovers of a crash. It returns
// how many kernels it removed.
func (p *Provisioner) Reap(ctx context.Context) (int, error) {
	list, err := p.api.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", LabelInstance+"="+p.cfg.InstanceID)),
	})
	if err != nil {
		return 0, fmt.Errorf("docker: reap: list containers: %w", err)
	}
	n := 0
	var errs []error
	reaped := map[string]bool{}
	for _, c := range list {
		id := c.Labels[LabelKernel]
		if p.isLive(id) {
			continue
		}
		err := p.api.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove %s: %w", shortID(c.ID), err))
			continue
		}
		n++
		if validName.MatchString(id) {
			reaped[id] = true
			if err := os.RemoveAll(filepath.Join(p.cfg.StateDir, id)); err != nil {
				errs = append(errs, err)
			}
		}
		p.log.Info("docker: reaped container", "kernel", id, "container", shortID(c.ID), "state", c.State)
	}
	// Directories without a container: a crash between mkdir and create.
	entries, err := os.ReadDir(p.cfg.StateDir)
	if err != nil {
		errs = append(errs, err)
	}
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || reaped[id] || p.isLive(id) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.cfg.StateDir, id, instanceFile))
		if err != nil || strings.TrimSpace(string(b)) != p.cfg.InstanceID {
			continue // another instance's, or not ours at all
		}
		// Make sure it was not just created by a Start racing with us.
		if p.isLive(id) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(p.cfg.StateDir, id)); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
		p.log.Info("docker: reaped kernel directory", "kernel", id)
	}
	if len(errs) > 0 {
		return n, fmt.Errorf("docker: reap: %w", errors.Join(errs...))
	}
	return n, nil
}

func (p *Provisioner) isLive(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.live[id]
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
