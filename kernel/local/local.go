package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	executorimage "github.com/codegw/codegw/executor-image"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/internal/cgroupv1"
	"github.com/codegw/codegw/kernel/internal/zygotectl"
)

// DefaultPython is Config.Python's default, and the service's
// (KERNEL_PYTHON): Debian's interpreter, which has python3-ipykernel.
const DefaultPython = "/usr/bin/python3"

// Sandbox modes for Config.Sandbox.
const (
	SandboxAuto  = "auto"  // bwrap when it is installed and works, else none with a warning
	SandboxBwrap = "bwrap" // bwrap or fail
	SandboxNone  = "none"  // a plain process: no isolation at all
)

// Transports for Config.Transport.
const (
	TransportAuto = ""    // ipc when the socket paths fit, else tcp
	TransportIPC  = "ipc" // ipc or fail
	TransportTCP  = "tcp" // tcp on 127.0.0.1; under bwrap this shares the host network
)

// Start modes for Config.Start.
const (
	StartFork  = "fork"  // fork kernels from a zygote (default); spawn when it cannot start
	StartSpawn = "spawn" // start every kernel as a new interpreter
)

// Config configures a Provisioner. The zero value is usable: see New.
type Config struct {
	// Python is the interpreter that has ipykernel (default DefaultPython).
	Python string
	// StateDir holds the extracted executor files and one directory per
	// kernel (default /tmp/codegw-<uid>). Keep it short: the ipc socket
	// paths under it must fit in a unix socket address (~107 bytes).
	StateDir string
	// Sandbox is "auto" (default), "bwrap" or "none".
	Sandbox string
	// Bwrap is the bubblewrap binary (default: "bwrap" on PATH).
	Bwrap string
	// Transport is "" (ipc when possible, default), "ipc" or "tcp".
	Transport string
	// Preload lists the modules kernels import at start (EXECUTOR_PRELOAD).
	// Nil means the launcher's default (numpy, pandas, matplotlib, pyplot);
	// an empty non-nil slice preloads nothing.
	Preload []string
	// Env is extra environment for every kernel; Spec.Env overrides it.
	Env map[string]string
	// UID and GID run sandboxed kernels when the gateway is root (default
	// 65534, nobody). Ignored when not root or without the sandbox.
	UID, GID int
	// Start is how kernels are made: "fork" (default, "" too) forks them
	// from a zygote that loaded the kernel's modules once; "spawn" starts
	// each as a new interpreter (a cold start). When the zygote cannot
	// start, New warns and spawns.
	Start string
	// Memory is the memory limit of each forked kernel in bytes; zero is
	// none. Enforced by a memory cgroup where the gateway can make one,
	// else by RLIMIT_AS. Spawned kernels have no limit.
	Memory int64
	// PidsLimit is the process limit of each forked kernel; zero is none.
	// Enforced by a pids cgroup, else by RLIMIT_NPROC (which counts every
	// process of the kernel's uid, so siblings share it).
	PidsLimit int
	// Logger receives one line per kernel start and exit (default slog.Default()).
	Logger *slog.Logger
}

// Provisioner starts kernels as local processes. It implements
// kernel.Provisioner and kernel.Reaper.
type Provisioner struct {
	cfg      Config
	log      *slog.Logger
	sandbox  bool   // bwrap in use
	bwrap    string // path of bwrap
	execDir  string // extracted executor-image
	mplCache string // prebuilt matplotlib font cache
	cred     *syscall.Credential
	spawn    *spawner

	fork bool              // kernels are forked from a zygote
	cg   *cgroupv1.Parents // nil: limits of forked kernels by rlimits
	seq  atomic.Int64

	zyg zygotectl.Keeper[*zygote]
}

var (
	_ kernel.Provisioner = (*Provisioner)(nil)
	_ kernel.Reaper      = (*Provisioner)(nil)
)

var errClosed = errors.New("local: provisioner closed")

// New checks the runtime, extracts the executor files into StateDir and
// builds matplotlib's font cache there once. Errors caused by a missing or
// unusable Python, ipykernel or bubblewrap wrap kernel.ErrProvisioner.
func New(cfg Config) (*Provisioner, error) {
	if cfg.Python == "" {
		cfg.Python = DefaultPython
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(os.TempDir(), fmt.Sprintf("codegw-%d", os.Geteuid()))
	}
	if cfg.Sandbox == "" {
		cfg.Sandbox = SandboxAuto
	}
	if cfg.UID == 0 {
		cfg.UID = 65534
	}
	if cfg.GID == 0 {
		cfg.GID = 65534
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch cfg.Transport {
	case TransportAuto, TransportIPC, TransportTCP:
	default:
		return nil, fmt.Errorf("local: unknown transport %q", cfg.Transport)
	}
	p := &Provisioner{cfg: cfg, log: cfg.Logger}

	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("local: state dir: %w", err)
	}
	p.cfg.StateDir = abs
	if err := makeStateDir(abs); err != nil {
		return nil, err
	}
	p.execDir = filepath.Join(abs, "executor")
	if err := executorimage.WriteTo(p.execDir); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(abs, "k"), 0o711); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	if err := os.Chmod(filepath.Join(abs, "k"), 0o711); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}

	if err := os.MkdirAll(p.rootDir(), 0o700); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}

	if err := checkPython(cfg.Python); err != nil {
		return nil, err
	}
	p.mplCache = filepath.Join(abs, "mplcache")
	if err := p.buildFontCache(); err != nil {
		// Kernels still work; each just builds its own cache, slowly.
		p.log.Warn("local: matplotlib font cache not built; kernels will start slower", "err", err)
	}

	if err := p.chooseSandbox(); err != nil {
		return nil, err
	}
	if !p.sandbox {
		p.log.Warn("local: kernel sandbox is OFF: kernels run as plain processes with full access to this host and its network; install bubblewrap to isolate them",
			"sandbox", cfg.Sandbox)
	}
	if cfg.Transport != TransportTCP && !p.ipcFits() {
		if cfg.Transport == TransportIPC {
			return nil, fmt.Errorf("local: state dir %q too long for ipc socket paths", abs)
		}
		p.log.Warn("local: state dir too long for ipc socket paths; kernels use tcp on 127.0.0.1, which under bwrap shares the host network", "state_dir", abs)
	}
	p.spawn = newSpawner()
	if err := p.chooseStart(); err != nil {
		p.spawn.stop()
		return nil, err
	}
	return p, nil
}

// chooseStart settles Config.Start: the first zygote is started here, and
// when it cannot start kernels are spawned.
func (p *Provisioner) chooseStart() error {
	switch p.cfg.Start {
	case "", StartFork:
	case StartSpawn:
		return nil
	default:
		return fmt.Errorf("local: unknown start mode %q (want fork or spawn)", p.cfg.Start)
	}
	if p.sandbox && os.Geteuid() != 0 {
		// The zygote builds each kernel's namespaces and drops its uid,
		// which takes root; bubblewrap does without.
		p.log.Warn("local: fork server needs root to sandbox kernels; kernels are cold-started in bubblewrap (KERNEL_START=spawn)")
		return nil
	}
	if cg, err := detectCgroups(); err == nil {
		p.cg = cg
		p.log.Info("local: forked kernels are limited by cgroups", "memory_bytes", p.cfg.Memory, "pids", p.cfg.PidsLimit,
			"memory_cgroup", cg.Mem, "pids_cgroup", cg.Pids)
	} else {
		p.log.Warn("local: cgroups unavailable: forked kernels are limited by rlimits (RLIMIT_AS, and RLIMIT_NPROC shared by all kernels of one uid)",
			"reason", err)
	}
	p.fork = true
	if _, err := p.getZygote(context.Background()); err != nil {
		p.fork = false
		p.log.Warn("local: fork server unavailable; kernels are cold-started (KERNEL_START=spawn)", "err", err)
	}
	return nil
}

// MakesOneShots reports whether Spec.OneShot gets a one-shot kernel: only
// the zygote forks them.
func (p *Provisioner) MakesOneShots() bool {
	z, err := p.getZygote(context.Background())
	return p.fork && err == nil && z.c.OneShots()
}

// StartMode says how kernels are made: "fork" or "spawn".
func (p *Provisioner) StartMode() string {
	if p.fork {
		return StartFork
	}
	return StartSpawn
}

// ZygotePID is the pid of the running zygote, or 0 (for benchmarks: its
// reaped-children CPU time is its kernels').
func (p *Provisioner) ZygotePID() int {
	z, ok := p.zyg.Current()
	if !ok {
		return 0
	}
	return z.pid
}

// LimitMode says how forked kernels are limited: "cgroup" or "rlimit"
// (spawned kernels: "none").
func (p *Provisioner) LimitMode() string {
	switch {
	case !p.fork:
		return "none"
	case p.cg != nil:
		return "cgroup"
	}
	return "rlimit"
}

// makeStateDir creates dir, or checks that an existing one is a directory
// owned by us and not a symlink planted by someone else in /tmp.
func makeStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("local: state dir: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("local: state dir: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("local: state dir %s is not a directory owned by uid %d", dir, os.Geteuid())
	}
	// Others may traverse (the sandbox user must reach its directories)
	// but not list it.
	if err := os.Chmod(dir, 0o711); err != nil {
		return fmt.Errorf("local: state dir: %w", err)
	}
	return nil
}

func checkPython(python string) error {
	out, err := exec.Command(python, "-c", "import ipykernel, matplotlib_inline").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s cannot run kernels (install python3-ipykernel, see scripts/deps.sh): %v: %s",
			kernel.ErrProvisioner, python, err, strings.TrimSpace(lastLine(string(out))))
	}
	return nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// buildFontCache runs the launcher once to build matplotlib's font cache,
// unless it is there already. Kernels copy it instead of scanning the fonts.
func (p *Provisioner) buildFontCache() error {
	if m, _ := filepath.Glob(filepath.Join(p.mplCache, "fontlist-*.json")); len(m) > 0 {
		return nil
	}
	cmd := exec.Command(p.cfg.Python, filepath.Join(p.execDir, executorimage.Launcher), "--build-mpl-cache", p.mplCache)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, lastLine(string(out)))
	}
	return os.Chmod(p.mplCache, 0o755)
}

// chooseSandbox settles Config.Sandbox into p.sandbox, probing bwrap by
// running it the way kernels will run.
func (p *Provisioner) chooseSandbox() error {
	switch p.cfg.Sandbox {
	case SandboxNone:
		return nil
	case SandboxAuto, SandboxBwrap:
	default:
		return fmt.Errorf("local: unknown sandbox %q (want auto, bwrap or none)", p.cfg.Sandbox)
	}
	bwrap := p.cfg.Bwrap
	if bwrap == "" {
		bwrap = "bwrap"
	}
	path, err := exec.LookPath(bwrap)
	if err == nil {
		p.bwrap = path
		if os.Geteuid() == 0 {
			p.cred = &syscall.Credential{Uid: uint32(p.cfg.UID), Gid: uint32(p.cfg.GID), Groups: []uint32{}}
		}
		err = p.probe()
	}
	if err != nil {
		if p.cfg.Sandbox == SandboxBwrap {
			return fmt.Errorf("%w: bubblewrap sandbox unusable (install bubblewrap, see scripts/deps.sh): %v", kernel.ErrProvisioner, err)
		}
		p.log.Warn("local: bubblewrap unusable", "err", err)
		p.bwrap, p.cred = "", nil
		return nil
	}
	p.sandbox = true
	return nil
}

// probe runs the interpreter inside the sandbox as kernels will run.
func (p *Provisioner) probe() error {
	args := p.bwrapArgs("", "", false)
	args = append(args, "--", p.cfg.Python, "-c", "import ipykernel")
	cmd := exec.Command(p.bwrap, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: p.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, lastLine(string(out)))
	}
	return nil
}

// socketPathMax is the longest path that fits a unix socket address
// (sun_path is 108 bytes with the terminating NUL).
const socketPathMax = 107

// idMax bounds the length of kernel ids in paths.
const idMax = 64

// ipcFits reports whether socket paths of a kernel with the longest id fit.
func (p *Provisioner) ipcFits() bool {
	return len(ipcPrefix(p.kernelDir(strings.Repeat("x", idMax))))+len("-5") <= socketPathMax
}

func (p *Provisioner) kernelDir(id string) string {
	return filepath.Join(p.cfg.StateDir, "k", id)
}

// rootDir is where forked children mount their root file system, each in
// its own mount namespace: one directory for all.
func (p *Provisioner) rootDir() string { return filepath.Join(p.cfg.StateDir, "root") }

func ipcPrefix(kdir string) string { return filepath.Join(kdir, "s", "k") }

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// Start creates the kernel's directory and starts its process. It returns
// once the process runs; the caller dials ConnectionInfo and waits for the
// kernel to be ready.
func (p *Provisioner) Start(ctx context.Context, spec kernel.Spec) (kernel.Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("local: start: %w", err)
	}
	if !validID.MatchString(spec.ID) || len(spec.ID) > idMax {
		return nil, fmt.Errorf("local: invalid kernel id %q", spec.ID)
	}
	kdir := p.kernelDir(spec.ID)
	if err := os.Mkdir(kdir, 0o711); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("local: kernel %s exists already", spec.ID)
		}
		return nil, fmt.Errorf("local: %w", err)
	}
	files, err := p.prepare(kdir, spec)
	if err != nil {
		os.RemoveAll(kdir)
		return nil, err
	}
	var c core
	if p.fork {
		c, err = p.startForked(ctx, files, spec)
	} else {
		s := &spawned{kernelFiles: files}
		c, err = s, s.start()
	}
	if err != nil {
		files.unlock()
		os.RemoveAll(kdir)
		return nil, err
	}
	return &instance{core: c, files: files}, nil
}

// kernelDirs are the directories prepare makes in a kernel's directory,
// each after its parent, for the sandbox user: its /code with input/ and
// output/, its sockets' directory, and (without the sandbox) its /tmp.
var kernelDirs = []string{"code", "code/input", "code/output", "s", "tmp"}

// prepare makes the kernel's directory tree in kdir, takes its lock and writes the
// connection file.
func (p *Provisioner) prepare(kdir string, spec kernel.Spec) (*kernelFiles, error) {
	lock, err := lockDir(kdir, true)
	if err != nil {
		return nil, fmt.Errorf("local: lock: %w", err)
	}
	proc := &kernelFiles{p: p, id: spec.ID, kdir: kdir, lock: lock, env: p.env(kdir, spec.Env), spec: spec.Env}
	for _, name := range kernelDirs {
		if name == "tmp" && p.sandbox {
			continue // the sandbox mounts a tmpfs of its own
		}
		d := filepath.Join(kdir, name)
		mode := os.FileMode(0o755)
		if name == "s" || name == "tmp" {
			mode = 0o700
		}
		if err := os.Mkdir(d, mode); err != nil {
			proc.unlock()
			return nil, fmt.Errorf("local: %w", err)
		}
		if err := p.chown(d); err != nil {
			proc.unlock()
			return nil, err
		}
	}

	useIPC := p.cfg.Transport == TransportIPC || (p.cfg.Transport == TransportAuto && p.ipcFits())
	if useIPC {
		proc.info, err = kernel.NewIPCConnection(ipcPrefix(kdir))
	} else {
		proc.info, err = kernel.NewTCPConnection()
	}
	if err != nil {
		proc.unlock()
		return nil, fmt.Errorf("local: %w", err)
	}
	return proc, nil
}

// chown hands path to the sandbox user, when there is one.
func (p *Provisioner) chown(path string) error {
	if p.cred == nil {
		return nil
	}
	if err := os.Lchown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

// Close stops the provisioner's own helpers. Spawned kernels keep running
// until they are closed; forked kernels end with the zygote, which Close
// ends.
func (p *Provisioner) Close() error {
	if z, ok := p.zyg.Close(); ok {
		z.Stop()
		<-z.dead
	}
	if p.cg != nil {
		p.cg.Remove()
	}
	p.spawn.stop()
	return nil
}

// Reap removes the directories of kernels whose owner is gone: an instance
// that crashed. A live owner holds the flock on the kernel's directory
// (on its lock file, in versions before 2026-12: still honoured); its
// kernels are left alone, whichever instance it is. The kernels of a dead
// owner died with it (Pdeathsig, --die-with-parent, the lifeline).
func (p *Provisioner) Reap(ctx context.Context) (int, error) {
	root := filepath.Join(p.cfg.StateDir, "k")
	entries, err := os.ReadDir(root)
	if err != nil {
		return 0, fmt.Errorf("local: reap: %w", err)
	}
	n := 0
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return n, fmt.Errorf("local: reap: %w", err)
		}
		if !e.IsDir() {
			continue
		}
		kdir := filepath.Join(root, e.Name())
		f, err := lockDir(kdir, false)
		if err != nil {
			continue // held by a live owner, or gone
		}
		if old, err := os.Open(filepath.Join(kdir, "lock")); err == nil {
			held := syscall.Flock(int(old.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil
			old.Close()
			if held {
				f.Close()
				continue
			}
		}
		if names, _ := f.Readdirnames(1); len(names) == 0 {
			// Empty: a start between its mkdir and its lock (which
			// waits for this one); a start that died there is stale
			// once old.
			if fi, serr := f.Stat(); serr != nil || time.Since(fi.ModTime()) < time.Minute {
				f.Close()
				continue
			}
		}
		err = os.RemoveAll(kdir)
		f.Close()
		if err != nil {
			return n, fmt.Errorf("local: reap: %w", err)
		}
		p.log.Info("local: reaped kernel directory", "kernel", e.Name())
		n++
	}
	return n, nil
}

// lockDir opens the directory path and takes an exclusive flock on it,
// waiting for it when wait is set. The lock lasts while the directory
// stays open; the descriptor is close-on-exec, so kernels do not inherit
// it.
func lockDir(path string, wait bool) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	how := unix.LOCK_EX
	if !wait {
		how |= unix.LOCK_NB
	}
	for {
		err = unix.Flock(fd, how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "flock", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}
