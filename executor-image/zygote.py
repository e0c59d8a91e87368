"""Fork server (zygote): one warm interpreter that forks a kernel per request.

    python3 zygote.py

Started by the local provisioner with KERNEL_START=fork. It imports
ipykernel and the EXECUTOR_PRELOAD modules once, freezes its heap
(gc.freeze(), so that the children's garbage collector does not touch, and
so copy, the shared pages) and then forks one child per request. A child
becomes an ordinary IPython kernel that the gateway drives over the Jupyter
protocol, like a kernel started by launch.py.

Fork hygiene: the zygote creates no thread, no event loop, no ZeroMQ context
and no jupyter_client Session; BLAS runs single-threaded (OPENBLAS_NUM_THREADS
and friends are 1 before numpy loads), so no thread pool is torn by the fork.
It checks that it has exactly one thread before it says it is ready. The
zygote prepares what of a kernel can cross a fork (prepare_kernel: the
IPKernelApp with its parsed options and config, and the IPython shell); each
child makes the rest (initialize_prepared: connection, ZeroMQ context and
sockets, Session, heartbeat and IO threads, the kernel object, the loop) and
points the shell at its own environment, directories and IPython profile.
EXECUTOR_ZYGOTE_PREPARE=0 makes each child build its kernel whole instead.
Python's and numpy's global random generators are reseeded in the child and
tempfile forgets the zygote's directory.

Descriptors (set by the provisioner):

- EXECUTOR_ZYGOTE_FD: a unix stream socket to the gateway carrying one JSON
  object per line. Requests: {"op": "fork", "token", ...} (see specialise)
  and {"op": "kill", "token"}. Answers and events: {"op": "ready",
  "oneshot"} (whether it makes one-shot kernels: run_oneshot),
  {"op": "forked", "token", "pid"}, {"op": "error", "token", "error"},
  {"op": "bound", "token"} (the kernel's sockets are bound: the child wrote
  to its bound pipe, see launch.signal_bound), {"op": "exit", "token",
  "status"}. End-of-file ends the zygote.
- EXECUTOR_LIFELINE_FD: as for launch.py; end-of-file means the gateway is
  gone, and the zygote exits.

In an executor container (the Docker provisioner, container mode) no
descriptor can be passed: EXECUTOR_ZYGOTE_SOCKET names a unix socket path in
a bind-mounted directory where the zygote listens and accepts exactly one
connection, the gateway's, which then carries the same lines. Its end is the
gateway's end: the zygote kills its kernels and exits, and so the container
ends. The zygote runs there as root of the container (no user namespace)
with CAP_SYS_ADMIN, SYS_CHROOT, NET_ADMIN, SETUID, SETGID and KILL only, so
the children get the same namespaces as with the local sandbox (the
container's seccomp profile refuses pivot_root: see switch_root); see
contain() for what a request with "contain" adds.

Standalone (EXECUTOR_ZYGOTE_SERVE=1 with EXECUTOR_ZYGOTE_SOCKET: the zygote
container of a Kubernetes pod, started by the kubelet, not by the gateway)
it serves one gateway connection after another: see serve().

Each kernel is one process, a child of the zygote, forked into a new pid
namespace (the zygote unshares CLONE_NEWPID before the fork and returns to
its own with setns after it) where the kernel is pid 1: when it ends, every
process it started ends with it. With the sandbox (the request's "sandbox")
the child then, before any user code:

- joins its own cgroups (memory, pids) or sets rlimits;
- joins a network namespace of its own (only lo, up: the zygote makes it,
  or hands over one whose kernel has ended, with all its processes and
  sockets), unshares its mount, ipc and uts namespaces and pivots into a
  root of its own: read-only /usr, /etc, /lib*, the
  executor directory; private tmpfs at /tmp and /dev/shm; a minimal /dev;
  its own /proc; its /code and socket directory bound read-write;
- drops to the unprivileged uid (setuid: no capability left), sets
  no_new_privs and a parent-death signal, and watches the zygote's lifeline
  (a pipe whose write end only the zygote holds) from a thread: when the
  zygote dies, however it died, the kernel exits and its namespace with it.

The zygote needs root for this (unshare(CLONE_NEWPID), mounts, cgroups,
setuid); the provisioner uses it only when it runs as root, else it spawns
sandboxed kernels with bubblewrap. Without the sandbox the child runs in
its own session as the gateway's user, without namespaces.

As pid 1 the kernel reaps nothing it did not start itself: a background
process whose parent died stays a zombie until the kernel ends (the pids
limit bounds them).
"""

import ctypes
import errno
import gc
import importlib
import json
import os
import platform
import select
import signal
import socket
import struct
import sys

# Before anything imports numpy: one BLAS thread, created in each child if at
# all, never a pool torn in half by fork.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import launch  # noqa: E402  (the launcher, in the same directory)

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.unshare.argtypes = [ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_MOVE = 8192
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def effective_caps():
    """This process's effective capabilities (CapEff), as a bit mask."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


CAP_MKNOD = 27
# Children make their device nodes where the zygote may (not in a
# Kubernetes pod, nor Docker's zygote container, which drop it), else bind
# the host's.
CAN_MKNOD = bool(effective_caps() & (1 << CAP_MKNOD))


def log(msg):
    print("zygote: " + msg, file=sys.__stderr__, flush=True)


def _check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(src, target, fstype, flags, data=None):
    _check(libc.mount(_b(src), _b(target), _b(fstype), flags, _b(data)), "mount %s" % target)


def prctl(option, arg):
    _check(libc.prctl(option, arg, 0, 0, 0), "prctl %d" % option)


# --- the zygote ------------------------------------------------------------


def load():
    """Import what every kernel needs, then freeze the heap."""
    launch.import_ipykernel()
    launch.bound_stream_buffers()
    names = os.environ.get("EXECUTOR_PRELOAD", launch.DEFAULT_PRELOAD)
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:
            log("preload %s failed: %s" % (name, e))
    for name in ("matplotlib_inline.backend_inline", "random", "tempfile", "uuid"):
        try:
            importlib.import_module(name)
        except Exception:
            pass
    global PREPARED
    if os.environ.get("EXECUTOR_ZYGOTE_PREPARE", "1") != "0":
        try:
            PREPARED = prepare_kernel()
        except Exception as e:
            log("kernel not prepared (each kernel builds it whole): %s: %s" % (type(e).__name__, e))
    if PREPARED is not None and os.environ.get("EXECUTOR_ZYGOTE_WARM", "1") != "0":
        warm(PREPARED[1])
    gc.collect()
    gc.freeze()
    if os.environ.get("EXECUTOR_ZYGOTE_HUGEPAGES", "1") != "0":
        collapse_heap()


MADV_COLLAPSE = 25
HUGE_PAGE = 2 << 20


def collapse_heap():
    """Back the zygote's anonymous memory with huge pages where the kernel
    can (MADV_COLLAPSE, Linux 6.1 and later; elsewhere nothing changes).

    Every fork copies the page table of the zygote's ~100 MB of heap, and
    every child's exit tears its copy down: a 2 MiB page is one entry where
    there were 512. A child's first write to a huge page splits it, and
    only the 4 KiB page written is copied, as before. Measured on a 2-CPU
    VM: fork and exit of a child ~25 % less CPU, parent and child.
    """
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            # Private writable anonymous memory: obmalloc's arenas, numpy's
            # buffers, malloc's heap; not the libraries' data sections.
            if not fields[1].startswith("rw") or fields[1][3] != "p" or (len(fields) > 5 and fields[5] != "[heap]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            start = -(-start // HUGE_PAGE) * HUGE_PAGE
            end = end // HUGE_PAGE * HUGE_PAGE
            if end > start:
                libc.madvise(start, end - start, MADV_COLLAPSE)


# A cell run once in the zygote's shell before the freeze, so that what a
# first cell builds (IPython's compiler and AST passes, pandas' and
# matplotlib's lazily made parts, a PNG encoder) is in every child already.
# Only what the preload imported is warmed: the cell imports nothing new.
WARM_CELL = "_cg_x = 1\ndel _cg_x\n"
WARM_PANDAS = """
import pandas as _cg_pd
_cg_pd.DataFrame({"a": [1, 2]}).sum()
_cg_pd.DataFrame({"a": [1, 2]})._repr_html_()
del _cg_pd
"""
WARM_PLOT = """
import matplotlib.pyplot as _cg_plt
import io as _cg_io
_cg_f = _cg_plt.figure()
_cg_plt.plot([1, 2])
_cg_f.savefig(_cg_io.BytesIO(), format="png")
_cg_plt.close("all")
del _cg_plt, _cg_io, _cg_f
"""


def warm(shell):
    """Run the warm-up cells silently, without history; a failure is only
    logged."""
    cell = WARM_CELL
    if "pandas" in sys.modules:
        cell += WARM_PANDAS
    if "matplotlib.pyplot" in sys.modules:
        cell += WARM_PLOT
    try:
        res = shell.run_cell(cell, store_history=False, silent=True)
        if not res.success:
            log("warm-up cell failed: %r" % (res.error_in_exec or res.error_before_exec))
    except Exception as e:
        log("warm-up failed: %s: %s" % (type(e).__name__, e))


# (app, shell, excepthook) built by prepare_kernel, or None.
PREPARED = None
# The zygote's own __main__, which IPython's shell replaces in sys.modules.
_MAIN = None
# A ProfileDir with no location, which a child points at its own (profile_dir).
BLANK_PROFILE = None


def prepare_kernel():
    """Build, once, the parts of a kernel that may cross a fork.

    IPKernelApp.initialize() costs a forked child ~200 ms of CPU, most of it
    copy-on-write faults as traitlets, IPython and zmq touch the zygote's
    pages. Whatever holds no socket, thread, loop or process id is built
    here instead and inherited by every child ready-made: the application
    with its parsed command line and config files, and the IPython shell
    (magics, completer, formatters, display hooks: InteractiveShell's
    __init__ is most of the cost). The child makes the rest, see
    initialize_prepared: the connection, the ZeroMQ sockets, the heartbeat
    and IO threads, the Session (its pid check drops a forked process's
    messages) and the kernel object, which ipykernel builds around the shell
    it finds (ZMQInteractiveShell.instance() returns this one).

    Nothing here creates a thread, socket or loop; run() checks that the
    zygote still has one thread before it says it is ready.
    """
    global _MAIN
    from ipykernel.compiler import XCachingCompiler
    from ipykernel.kernelapp import IPKernelApp
    from ipykernel.zmqshell import ZMQInteractiveShell

    _MAIN = sys.modules.get("__main__")
    hook = sys.excepthook
    app = IPKernelApp.instance()
    app._init_asyncio_patch()
    # BaseIPythonApplication.initialize: the command line, the profile and
    # config files (IPKernelApp.initialize would go on to the sockets).
    super(IPKernelApp, app).initialize(KERNEL_ARGS)
    app.init_pdb()
    app.init_blackhole()
    # IPython's crash handler, installed above, is the kernel's: the zygote
    # keeps Python's.
    kernel_hook, sys.excepthook = sys.excepthook, hook
    shell = ZMQInteractiveShell.instance(
        parent=app,
        profile_dir=app.profile_dir,
        user_module=None,
        user_ns=app.user_ns,
        kernel=None,
        compiler_class=XCachingCompiler,
    )
    # What IPKernelApp.initialize() does with the shell once the kernel has
    # made it (init_shell and after): none of it needs the kernel. The
    # startup code (init_code: startup files, exec_lines) runs here, once,
    # in the zygote's environment.
    app.shell = shell
    shell.configurables.append(app)
    app.init_path()
    app.init_gui_pylab()
    app.init_extensions()
    app.init_code()
    global BLANK_PROFILE
    from IPython.core.profiledir import ProfileDir

    BLANK_PROFILE = ProfileDir()
    # The preload's inline matplotlib set-up (figure formats, the hook that
    # sends figures after each cell) too. It asks the kernel for the inline
    # backend's event loop, which is none: there is no kernel to ask yet.
    shell.enable_gui = lambda gui=None: None
    try:
        launch.preload(shell)
    finally:
        del shell.enable_gui
    return app, shell, kernel_hook


# The options every kernel gets (as launch.py gives them).
KERNEL_ARGS = ["--HistoryManager.enabled=False", "--IPKernelApp.parent_handle=1"]


def threads():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def kill_kernel(pid):
    """Kill a kernel and its process group (its pid namespace ends with it)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Zygote:
    def __init__(self, ctl_fd, lifeline_fd):
        self.ctl = socket.socket(fileno=ctl_fd)
        self.lifeline = lifeline_fd
        self.buf = b""
        self.kernels = {}  # pid -> token
        self.tokens = {}  # token -> pid
        # The zygote's own lifeline: the kernels hold the read end; only
        # the zygote holds the write end.
        self.zr, self.zw = os.pipe()
        self.sig_r, self.sig_w = os.pipe()
        os.set_blocking(self.sig_r, False)
        os.set_blocking(self.sig_w, False)
        self.pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.bound = {}  # read end of a child's bound pipe -> token
        # Network namespaces (lo only, up) for sandboxed kernels. One whose
        # kernel was reaped serves the next: its pid namespace ended with
        # it, so every process that could hold a socket in it is gone, and
        # making a namespace and tearing it down costs several times
        # joining one. Concurrent kernels never share one.
        self.netns = None  # our own, to come back to after making one
        self.netns_free = []
        self.netns_of = {}  # pid -> the namespace it joined

    def send(self, obj):
        self.ctl.sendall((json.dumps(obj) + "\n").encode())

    def run(self):
        signal.set_wakeup_fd(self.sig_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        n = threads()
        if n != 1:
            log("warning: %d threads before the first fork" % n)
        # "oneshot": this zygote makes one-shot kernels ("oneshot" in a
        # fork request); a gateway asks only a zygote that says so.
        self.send({"op": "ready", "pid": os.getpid(), "threads": n, "oneshot": PREPARED is not None})
        while True:
            r, _, _ = select.select([self.ctl, self.sig_r, self.lifeline, *self.bound], [], [])
            for fd in r:
                if fd in self.bound:
                    self.forward_bound(fd)
            if self.lifeline in r:
                try:
                    data = os.read(self.lifeline, 64)
                except OSError:
                    data = b""
                if not data:
                    self.shutdown()
            if self.sig_r in r:
                try:
                    while os.read(self.sig_r, 64):
                        pass
                except BlockingIOError:
                    pass
                self.reap()
            if self.ctl in r:
                data = self.ctl.recv(1 << 16)
                if not data:
                    self.shutdown()
                self.buf += data
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    self.handle(json.loads(line))

    def forward_bound(self, fd):
        """Forward a child's bound byte (end-of-file: it died first)."""
        token = self.bound.pop(fd)
        try:
            data = os.read(fd, 1)
        except OSError:
            data = b""
        os.close(fd)
        if data:
            self.send({"op": "bound", "token": token})

    def take_netns(self):
        """A network namespace no live kernel is in: a kept one, or a new
        one with lo up."""
        if self.netns_free:
            return self.netns_free.pop()
        if self.netns is None:
            self.netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        _check(libc.unshare(CLONE_NEWNET), "unshare net")
        try:
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                loopback_up()
            except BaseException:
                os.close(fd)
                raise
        finally:
            _check(libc.setns(self.netns, CLONE_NEWNET), "setns net")
        return fd

    def give_netns(self, fd):
        """Keep the network namespace of a kernel that is gone."""
        if len(self.netns_free) < NETNS_KEEP:
            self.netns_free.append(fd)
        else:
            os.close(fd)

    def shutdown(self):
        for pid in self.kernels:
            kill_kernel(pid)
        os._exit(0)

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            token = self.kernels.pop(pid, None)
            netns = self.netns_of.pop(pid, None)
            if netns is not None:
                self.give_netns(netns)
            if token is None:
                continue
            self.tokens.pop(token, None)
            # Without a pid namespace the kernel's children outlive it:
            # end its process group (its pid is not reused while the group
            # has members).
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            if os.WIFSIGNALED(status):
                code = 128 + os.WTERMSIG(status)
            else:
                code = os.waitstatus_to_exitcode(status)
            self.send({"op": "exit", "token": token, "status": code})

    def handle(self, req):
        op, token = req.get("op"), req.get("token")
        if op == "kill":
            pid = self.tokens.get(token)
            if pid is not None:
                kill_kernel(pid)
            return
        if op != "fork":
            self.send({"op": "error", "token": token, "error": "unknown op %r" % op})
            return
        try:
            pid = self.fork(req)
        except Exception as e:
            self.send({"op": "error", "token": token, "error": "%s: %s" % (type(e).__name__, e)})
            return
        self.kernels[pid] = token
        self.tokens[token] = pid
        self.send({"op": "forked", "token": token, "pid": pid})

    def fork(self, req):
        """Fork a kernel; return its pid. Its set-up runs in the child."""
        sandbox = req.get("sandbox")
        netns = self.take_netns() if sandbox and not req.get("share_net") else None
        # The child says through this pipe when its sockets are bound.
        br, bw = os.pipe()
        if sandbox:
            try:
                _check(libc.unshare(CLONE_NEWPID), "unshare pid")
            except BaseException:
                os.close(br)
                os.close(bw)
                if netns is not None:
                    self.give_netns(netns)
                raise
        pid = -1
        try:
            pid = os.fork()
        finally:
            if sandbox and pid != 0:
                # Our next children are born in our own pid namespace again.
                _check(libc.setns(self.pidns, CLONE_NEWPID), "setns pid")
            if pid != 0:
                os.close(bw)
                if pid > 0:
                    self.bound[br] = req.get("token")
                    if netns is not None:
                        self.netns_of[pid] = netns
                else:
                    os.close(br)
                    if netns is not None:
                        self.give_netns(netns)
        if pid == 0:
            try:
                self.ctl.close()
                others = [*self.netns_free, *self.netns_of.values()]
                if self.netns is not None:
                    others.append(self.netns)
                for fd in (self.zw, self.sig_r, self.sig_w, self.lifeline, self.pidns, br, *self.bound, *others):
                    os.close(fd)
                req["netns_fd"] = netns
                req["ready_fd"] = bw
                req.setdefault("env", {})["EXECUTOR_READY_FD"] = str(bw)
                signal.set_wakeup_fd(-1)
                specialise(req, self.zr)
                contain(req)
                if req.get("oneshot"):
                    run_oneshot(req, self.zr)
                else:
                    run_kernel(req, self.zr)
            except BaseException as e:
                log("kernel %s: %s: %s" % (req.get("token"), type(e).__name__, e))
            os._exit(70)
        return pid


# How many network namespaces of ended kernels the zygote keeps.
NETNS_KEEP = 32


# --- in the child -----------------------------------------------------------


def specialise(req, zr):
    """Isolate this process (pid 1 of its pid namespace) as req asks.

    req holds: token; conn (the connection file), or conn_info (the
    connection itself, for one-shot kernels); code (host directory of
    /code); sock (the socket directory, bound at the same path); root (an
    empty directory to build the root in, which children may share: each
    mounts its own tmpfs there in its own mount namespace); sandbox (bool); share_net (bool,
    for the tcp transport); binds (read-only host directories to show);
    uid, gid; cgroups (directories whose cgroup.procs the kernel joins);
    rlimits ({"as": bytes, "nproc": n}, used without cgroups); env (the
    kernel's whole environment). The zygote adds netns_fd: the network
    namespace to join (sandbox without share_net).
    """
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    for cg in req.get("cgroups") or []:
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    import resource

    rl = req.get("rlimits") or {}
    if rl.get("as"):
        resource.setrlimit(resource.RLIMIT_AS, (rl["as"], rl["as"]))
    if rl.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (rl["nproc"], rl["nproc"]))
    sandbox = req.get("sandbox")
    if sandbox:
        netns = req.get("netns_fd")
        if netns is not None:
            # The zygote's (Zygote.take_netns): lo only, up.
            _check(libc.setns(netns, CLONE_NEWNET), "setns net")
            os.close(netns)
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
        make_root(req)
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        libc.sethostname(b"codegw", 6)
    if os.geteuid() == 0 and req.get("uid"):
        os.setgroups([])
        os.setresgid(req["gid"], req["gid"], req["gid"])
        os.setresuid(req["uid"], req["uid"], req["uid"])
        # setuid made us undumpable, which also hides our own /proc
        # entries from us; nothing privileged is left to protect.
        prctl(PR_SET_DUMPABLE, 1)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    # After setuid, which clears it. The parent is the zygote.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    watch_zygote(zr, sandbox)


def contain(req):
    """What a kernel forked in an executor container adds to specialise.

    req["contain"] (Docker provisioner) holds "umask": the kernel's files
    are its own (077), and its siblings, with other uids, cannot read them
    even where they could reach them. The rest of the isolation is
    specialise's: namespaces, cgroups or rlimits, the uid drop (which
    clears every capability), no_new_privs. Checked here: no capability is
    left, since a kernel running as root of the container would keep them.
    """
    c = req.get("contain")
    if not c:
        return
    os.umask(c.get("umask", 0o077))
    caps = effective_caps()
    if caps:
        raise OSError(errno.EPERM, "kernel kept capabilities: CapEff: %016x" % caps)


def watch_zygote(zr, sandbox):
    """End the kernel when the zygote's lifeline reads end-of-file.

    The zygote may have died before PR_SET_PDEATHSIG was set, and user code
    can unset that; this thread backs it up. Without a pid namespace the
    kernel's process group is killed too.
    """
    import threading

    def watch(fd=zr, read=os.read, killpg=os.killpg, _exit=os._exit):
        try:
            while read(fd, 64):
                pass
        except OSError:
            pass
        try:
            if not sandbox:
                killpg(0, signal.SIGKILL)
        finally:
            _exit(137)

    threading.Thread(target=watch, name="zygote-lifeline", daemon=True).start()


def make_root(req):
    """Build the kernel's root file system and pivot into it."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = req["root"]
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")

    def inside(path):
        return os.path.join(root, path.lstrip("/"))

    def bind(src, dst, ro, dev=False):
        target = inside(dst)
        if os.path.isdir(src):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        mount(src, target, None, MS_BIND | MS_REC)
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID
        if not dev:
            flags |= MS_NODEV
        if ro:
            flags |= MS_RDONLY
        mount(None, target, None, flags)

    # /tmp first: the directories bound below may lie under it.
    tmp = inside("/tmp")
    os.makedirs(tmp)
    mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for d in ("/usr", "/etc"):
        bind(d, d, True)
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            os.symlink(os.readlink(d), inside(d))
        elif os.path.isdir(d):
            bind(d, d, True)
    for d in req.get("binds") or []:
        if not (d.startswith("/usr/") or d.startswith("/etc/")):
            bind(d, d, True)
    # /dev: a few device nodes, a private /dev/shm.
    dev = inside("/dev")
    os.makedirs(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        try:
            st = os.stat("/dev/" + name)
        except OSError:
            continue
        if CAN_MKNOD:
            # A node of its own: cheaper than a bind mount, to make and at
            # the kernel's end.
            node = os.path.join(dev, name)
            try:
                os.mknod(node, 0o600 | (st.st_mode & 0o170000), st.st_rdev)
                os.chmod(node, st.st_mode & 0o7777)
                continue
            except PermissionError:
                pass  # a device cgroup that refuses it: bind the host's
        bind("/dev/" + name, "/dev/" + name, False, dev=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    os.makedirs(os.path.join(dev, "shm"))
    mount("tmpfs", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    os.makedirs(inside("/proc"))
    bind(req["code"], "/code", False)
    bind(req["sock"], req["sock"], False)

    os.chdir(root)
    if libc.syscall(SYS_PIVOT_ROOT, b".", b".") != 0:
        if ctypes.get_errno() != errno.EPERM:
            _check(-1, "pivot_root")
        switch_root()
        return
    _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


def switch_root():
    """Enter the root built in the working directory without pivot_root.

    Docker's default seccomp profile refuses pivot_root (EPERM) in an
    executor container. As initramfs's switch_root does: move the new root's
    mount over /, which hides the old root in this mount namespace, and
    chroot into it (CAP_SYS_CHROOT, gone with the uid drop like every
    capability).
    """
    mount(".", "/", None, MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def loopback_up():
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


# --- the kernel -------------------------------------------------------------


def run_kernel(req, zr):
    child_environment(req, zr)
    if PREPARED is not None:
        app = initialize_prepared(req["conn"], *PREPARED)
    else:
        from ipykernel.kernelapp import IPKernelApp

        IPKernelApp.clear_instance()
        app = IPKernelApp.instance()
        app.initialize(["-f", req["conn"]] + KERNEL_ARGS)
    launch.signal_bound()
    if os.getpid() == 1:
        interrupt_as_init(app.kernel)
    if PREPARED is None:
        launch.preload(app.shell)
    app.start()
    os._exit(0)


def child_environment(req, zr, completion=True):
    """What every child does first: its descriptors, environment, RNGs.
    completion: whether the child completes code (a full kernel), whose
    caches must move to the child's HOME."""
    # Nothing of the zygote's but the lifeline reaches user code.
    close_fds_but(zr, req.get("ready_fd"))

    os.environ.clear()
    os.environ.update(req.get("env") or {})
    import tempfile

    tempfile.tempdir = None
    launch.setup_environment()
    if completion:
        # Modules imported in the zygote computed paths from its environment:
        # jedi and parso (completion) cache under the zygote's HOME, which the
        # child cannot write (completion then finds nothing).
        parso_cache = sys.modules.get("parso.cache")
        if parso_cache is not None:
            parso_cache._default_cache_path = parso_cache._get_default_cache_path()
        jedi_settings = sys.modules.get("jedi.settings")
        if jedi_settings is not None:
            jedi_settings.cache_directory = os.path.expanduser(
                os.path.join(os.getenv("XDG_CACHE_HOME") or "~/.cache", "jedi"))

    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        try:
            np.random.seed()
        except Exception as e:
            log("numpy reseed failed: %s" % e)


def initialize_prepared(conn, app, shell, excepthook):
    """Finish, in the child, the kernel prepare_kernel began in the zygote.

    The rest of IPKernelApp.initialize(), in its order, plus what the shell
    computed from the zygote's environment (point_shell).
    """
    sys.excepthook = excepthook
    point_shell(app, shell)
    app.connection_file = conn
    app.init_connection_file()
    app.init_poller()
    app.init_sockets()
    app.init_heartbeat()
    app.write_connection_file()
    app.log_connection_info()
    app.init_io()
    app.init_signal()
    app.init_kernel()
    # IPythonKernel took the prepared shell from ZMQInteractiveShell.instance(),
    # which ignores the arguments naming the kernel. The shell's own set-up
    # (init_shell to init_code, and the preload's) was done in the zygote.
    shell.kernel = app.kernel
    sys.stdout.flush()
    sys.stderr.flush()
    return app


def point_shell(app, shell):
    """Point the prepared shell at the child's environment: its
    environment, working and home directories and IPython directory differ
    from the zygote's."""
    import tempfile

    from IPython.utils.path import get_home_dir
    from pickleshare import PickleShareDB

    shell.init_environment()
    shell.starting_dir = os.getcwd()
    # The directory history (_dh, %dhist) began in the zygote's directory.
    shell.history_manager.dir_hist[:] = [shell.starting_dir]
    shell.home_dir = get_home_dir()
    shell.logger.home_dir = shell.home_dir
    # The zygote's IPython directory is not the child's (nor, in the sandbox,
    # even visible to it): the profile, %cd's bookmarks database and the
    # extension directory move to the child's IPYTHONDIR.
    ipython_dir = os.environ.get("IPYTHONDIR") or os.path.join(tempfile.gettempdir(), ".ipython")
    profile = profile_dir(ipython_dir)
    # Past the observers, which cost a child ~0.4 ms: the directories exist
    # (profile_dir made them), and the zygote's IPython directory is not on
    # sys.path for the application's to remove (IPython 8 adds it only with
    # add_ipython_dir_to_sys_path).
    for configurable in (app, shell):
        configurable._trait_values.update(ipython_dir=ipython_dir, profile_dir=profile)
    shell.db = PickleShareDB(os.path.join(profile.location, "db"))


def profile_dir(ipython_dir):
    """What ProfileDir.create_profile_dir_by_name(ipython_dir, "default")
    returns, made with plain mkdirs. Its observers (each directory checked
    twice, the startup directory's README copied) cost a forked child
    ~1.5 ms, most of it copy-on-write faults in traitlets."""
    from IPython.core.profiledir import ProfileDir

    location = os.path.join(ipython_dir, "profile_default")
    values = {"location": location, "_location_isset": True}
    for name, mode in (("security", 0o700), ("log", 0o777), ("pid", 0o700), ("startup", 0o777), ("static", None)):
        path = os.path.join(location, name)
        if mode is not None:
            os.makedirs(path, mode, exist_ok=True)
        values[name + "_dir"] = path
    # A child uses it once: the zygote's blank one saves constructing it.
    profile = BLANK_PROFILE if BLANK_PROFILE is not None else ProfileDir()
    # Past the observers, which would make the directories again.
    profile._trait_values.update(values)
    return profile


# --- the one-shot kernel ------------------------------------------------------


def run_oneshot(req, zr):
    """Serve a stateless call: the prepared shell, no ZeroMQ, no kernel object.

    The child listens on a unix stream socket at its shell endpoint's path
    (ipc transport; tcp: 127.0.0.1 at the shell port), says it is bound,
    accepts the gateway's one connection and checks its key, then answers
    requests until the gateway hangs up: execute_request (the cell runs in
    the zygote's prepared shell with shell.run_cell), interrupt_request (a
    SIGINT, as ipykernel sends) and kernel_info_request. It sends back the
    Jupyter messages a kernel would (stream, display_data, execute_result,
    error, status busy/idle, the replies) with the request's header as their
    parent header. A frame is a 4-byte big-endian length and a JSON object:
    {"channel", "header", "parent_header", "metadata", "content"}.

    Writes block when the gateway reads slowly (back-pressure); stream text
    past the request's "codegw_output_limit" characters is dropped here.
    """
    # No completion requests: jedi's and parso's caches stay where they were.
    child_environment(req, zr, completion=False)
    if PREPARED is None:
        raise RuntimeError("one-shot kernels need the prepared shell (EXECUTOR_ZYGOTE_PREPARE=1)")
    app, shell, _ = PREPARED
    point_shell(app, shell)
    info = req.get("conn_info")
    if info is None:
        with open(req["conn"]) as f:
            info = json.load(f)
    if info.get("transport") == "ipc":
        addr = "%s-%d" % (info["ip"], info["shell_port"])
        ln = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(addr)
        except FileNotFoundError:
            pass
        ln.bind(addr)
    else:
        addr = None
        ln = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ln.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ln.bind((info.get("ip") or "127.0.0.1", info["shell_port"]))
    ln.listen(1)
    launch.signal_bound()
    conn, _ = ln.accept()
    ln.close()
    if addr:
        try:
            os.unlink(addr)
        except OSError:
            pass
    OneShot(conn, shell, info.get("key", "")).serve()
    os._exit(0)


# How often a running cell's buffered stream text is sent.
FLUSH_INTERVAL = 0.2


class FrameSession:
    """What the shell's display publisher, display hook and traceback
    sender use of a jupyter_client Session (msg, send), writing frames."""

    def __init__(self, oneshot):
        self.oneshot = oneshot

    def msg(self, msg_type, content=None, parent=None, header=None, metadata=None):
        return {"header": self.oneshot.header(msg_type), "parent_header": parent or {},
                "metadata": metadata or {}, "content": content if content is not None else {}, "msg_type": msg_type}

    def send(self, stream, msg_or_type, content=None, parent=None, ident=None, buffers=None,
             track=False, header=None, metadata=None):
        if isinstance(msg_or_type, dict):
            msg = msg_or_type
        else:
            msg = self.msg(msg_or_type, content, parent, metadata=metadata)
        self.oneshot.flush_streams()
        self.oneshot.send("iopub", msg["header"], msg["content"], msg.get("metadata"), msg.get("parent_header"))
        return msg


class FrameStream:
    """sys.stdout and sys.stderr of a one-shot kernel: text is buffered and
    sent as stream messages on flush, past 64 KiB, before any other message,
    at the end of the cell and every 0.2 s (the flusher thread)."""

    encoding = "utf-8"
    errors = "strict"
    chunk = 64 << 10

    def __init__(self, oneshot, name):
        self.oneshot = oneshot
        self.name = name
        self.buf = []
        self.size = 0

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        o = self.oneshot
        with o.lock:
            self.buf.append(text)
            self.size += len(text)
            if self.size >= self.chunk:
                self._flush()
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        # An explicit flush (print(..., flush=True)) returns once the text
        # is on the socket, as ipykernel's does: what a cell flushed before
        # it crashes or is OOM-killed reaches the answer.
        with self.oneshot.lock:
            self._flush()
        self.oneshot.drain()

    def _flush(self):
        if not self.buf:
            return
        text = "".join(self.buf)
        self.buf, self.size = [], 0
        self.oneshot.send_stream(self.name, text)

    def isatty(self):
        return False

    def fileno(self):
        raise OSError("stream has no file descriptor")

    def readable(self):
        return False

    def writable(self):
        return True

    def seekable(self):
        return False

    @property
    def closed(self):
        return False

    def close(self):
        pass


class OneShot:
    def __init__(self, conn, shell, key):
        import threading

        self.conn = conn
        self.shell = shell
        self.key = key
        self.session_id = os.urandom(8).hex()
        self.seq = 0
        self.lock = threading.RLock()  # frames and stream buffers
        self.parent = {}
        self.limit = -1  # stream characters left to send; negative: no limit
        self.requests = []
        self.cond = threading.Condition()
        self.closed = False
        self.ran = False  # a cell has begun: the writer starts the flusher once it waits long
        self.stdout = FrameStream(self, "stdout")
        self.stderr = FrameStream(self, "stderr")
        # Frames go out through the writer thread: a KeyboardInterrupt in
        # the main thread can then never cut one in half. The queue is
        # short, so a flood waits for the gateway (back-pressure).
        import queue

        self.out = queue.Queue(maxsize=8)

    def header(self, msg_type):
        self.seq += 1
        return {"msg_id": "%s_%d" % (self.session_id, self.seq), "session": self.session_id,
                "username": "kernel", "date": "", "msg_type": msg_type, "version": "5.3"}

    def send(self, channel, header, content, metadata=None, parent=None):
        body = json.dumps({"channel": channel, "header": header, "parent_header": self.parent if parent is None else parent,
                           "metadata": metadata or {}, "content": content}, default=repr).encode("utf-8", "surrogatepass")
        self.out.put(struct.pack(">I", len(body)) + body)

    def write_frames(self):
        """Send the queued frames. Once a cell has run FLUSH_INTERVAL with
        nothing to send, start the flusher: a cell that ends sooner (most
        stateless calls) never pays for its thread."""
        import queue
        import threading

        flushing = False
        try:
            while True:
                try:
                    frame = self.out.get(timeout=FLUSH_INTERVAL if self.ran and not flushing else None)
                except queue.Empty:
                    flushing = True
                    threading.Thread(target=self.flusher, name="oneshot-flusher", daemon=True).start()
                    continue
                self.conn.sendall(frame)
                self.out.task_done()
        except BaseException:
            pass
        os._exit(0)  # the gateway hung up

    def drain(self, timeout=10.0):
        """Waits until the writer sent every queued frame, at most timeout
        seconds (ipykernel's flush_timeout)."""
        import time

        q = self.out
        deadline = time.monotonic() + timeout
        with q.all_tasks_done:
            while q.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                q.all_tasks_done.wait(left)

    def reply(self, channel, msg_type, content):
        self.send(channel, self.header(msg_type), content)

    def send_stream(self, name, text):
        if self.limit >= 0:
            if self.limit == 0:
                return
            if len(text) > self.limit:
                text = text[: self.limit]
            self.limit -= len(text)
        self.send("iopub", self.header("stream"), {"name": name, "text": text})

    def flush_streams(self):
        with self.lock:
            self.stdout._flush()
            self.stderr._flush()

    def status(self, state):
        self.send("iopub", self.header("status"), {"execution_state": state})

    # --- the reader thread: requests in, interrupts, kernel_info ---

    def read_frames(self):
        import hmac

        f = self.conn.makefile("rb")
        authed = False
        while True:
            head = f.read(4)
            if len(head) < 4:
                break
            (n,) = struct.unpack(">I", head)
            if n > (64 << 20):
                break
            body = f.read(n)
            if len(body) < n:
                break
            try:
                msg = json.loads(body)
                msg_type = msg["header"]["msg_type"]
            except Exception:
                break
            if not authed:
                if msg_type != "hello" or not hmac.compare_digest(str(msg.get("content", {}).get("key", "")), self.key):
                    break
                authed = True
                continue
            if msg_type == "interrupt_request":
                self.interrupt()
                self.send("control", self.header("interrupt_reply"), {"status": "ok"}, parent=msg["header"])
            elif msg_type == "kernel_info_request":
                self.kernel_info(msg["header"])
            else:
                with self.cond:
                    self.requests.append(msg)
                    self.cond.notify()
        # The gateway hung up (or broke the protocol): nobody waits for
        # this kernel any more.
        os._exit(0)

    def interrupt(self):
        if os.getpid() == 1:
            # pid 1 of its namespace: its processes, then itself.
            for pid in (-1, 1):
                try:
                    os.kill(pid, signal.SIGINT)
                except OSError:
                    pass
        else:
            try:
                os.killpg(0, signal.SIGINT)
            except OSError:
                os.kill(os.getpid(), signal.SIGINT)

    def kernel_info(self, parent):
        import IPython

        info = {"status": "ok", "protocol_version": "5.3", "implementation": "codegw-oneshot",
                "implementation_version": "1", "banner": "",
                "language_info": {"name": "python", "version": platform.python_version(), "mimetype": "text/x-python",
                                  "file_extension": ".py"},
                "ipython_version": IPython.__version__}
        self.send("shell", self.header("kernel_info_reply"), info, parent=parent)
        self.send("iopub", self.header("status"), {"execution_state": "idle"}, parent=parent)

    def flusher(self):
        import time

        while not self.closed:
            time.sleep(FLUSH_INTERVAL)
            try:
                self.flush_streams()
            except Exception:
                return

    # --- the main thread: cells ---

    def next_request(self):
        with self.cond:
            while not self.requests and not self.closed:
                self.cond.wait()
            if self.requests:
                return self.requests.pop(0)
            return None

    def serve(self):
        import threading

        shell = self.shell
        session = FrameSession(self)
        for part in (shell.display_pub, shell.displayhook):
            # Not a Session: set past the trait's validation.
            part._trait_values["session"] = session
            part.pub_socket = None
        sys.stdout, sys.stderr = self.stdout, self.stderr
        threading.Thread(target=self.read_frames, name="oneshot-reader", daemon=True).start()
        threading.Thread(target=self.write_frames, name="oneshot-writer", daemon=True).start()
        while True:
            try:
                msg = self.next_request()
                if msg is None:
                    break
                if msg["header"].get("msg_type") == "execute_request":
                    self.execute(msg)
            except KeyboardInterrupt:
                continue  # an interrupt between cells

    def no_stdin(self):
        """input() and getpass() as a full kernel has them for a request
        without stdin: ipykernel's own, which raise at once (the same
        error and traceback)."""
        import types

        class NoStdin:
            _allow_stdin = False

        try:
            from ipykernel.kernelbase import Kernel

            stub = NoStdin()
            return types.MethodType(Kernel.raw_input, stub), types.MethodType(Kernel.getpass, stub)
        except Exception:
            from IPython.core.error import StdinNotImplementedError

            def no_input(*args, **kwargs):
                raise StdinNotImplementedError("raw_input was called, but this frontend does not support input requests.")

            return no_input, no_input

    def execute(self, msg):
        import builtins
        import getpass

        shell = self.shell
        parent = msg["header"]
        content = msg.get("content") or {}
        with self.lock:
            self.parent = parent
        shell.display_pub.parent_header = parent
        shell.displayhook.parent_header = parent
        limit = content.get("codegw_output_limit")
        self.limit = limit + 1 if isinstance(limit, int) and limit > 0 else -1
        self.ran = True
        self.status("busy")
        silent = bool(content.get("silent"))
        store_history = bool(content.get("store_history", not silent))

        saved = builtins.input, getpass.getpass
        builtins.input, getpass.getpass = self.no_stdin()
        reply = {}
        try:
            res = shell.run_cell(content.get("code", ""), store_history=store_history, silent=silent)
            err = res.error_before_exec if res.error_before_exec is not None else res.error_in_exec
            if res.success:
                reply["status"] = "ok"
            else:
                reply["status"] = "error"
                reply.update({"traceback": shell._last_traceback or [], "ename": str(type(err).__name__),
                              "evalue": str(err)})
            reply["execution_count"] = shell.execution_count - 1
            reply["user_expressions"] = {}
            reply["payload"] = shell.payload_manager.read_payload()
            shell.payload_manager.clear_payload()
        except KeyboardInterrupt:
            reply = {"status": "error", "ename": "KeyboardInterrupt", "evalue": "", "traceback": [],
                     "execution_count": shell.execution_count - 1}
        finally:
            builtins.input, getpass.getpass = saved
        self.flush_streams()
        self.send("shell", self.header("execute_reply"), reply)
        self.status("idle")


def close_fds_but(*keep):
    """Close every descriptor from 3 up but those in keep (None is ignored).

    The bound pipe's write end (req["ready_fd"]) is kept for
    launch.signal_bound, which closes it once the sockets are bound.
    """
    lo = 3
    for fd in sorted(fd for fd in keep if fd is not None and fd >= 3):
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 16)


def interrupt_as_init(kernel):
    """Make interrupt_request reach the kernel when it is pid 1.

    ipykernel interrupts with killpg(getpgid(), SIGINT) when the kernel leads
    its process group; as pid 1 that is killpg(1), which is kill(-1): every
    process of the namespace but the kernel. Send SIGINT to those and to
    the kernel itself (pid 1 gets it: Python has a handler for it).
    """

    def interrupt(kill=os.kill, sigint=signal.SIGINT):
        for pid in (-1, 1):
            try:
                kill(pid, sigint)
            except OSError:
                pass

    for name in ("_send_interupt_children", "_send_interrupt_children"):  # ipykernel 6.17 spells it so
        if hasattr(kernel, name):
            setattr(kernel, name, interrupt)


def accept_gateway(path):
    """Listen at path and return the descriptor of the first connection."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ln:
        old = os.umask(0o077)
        try:
            ln.bind(path)
        finally:
            os.umask(old)
        ln.listen(1)
        conn, _ = ln.accept()
    os.unlink(path)
    return conn.detach()


def serve(path):
    """Serve gateways at path, one at a time, for as long as the container runs.

    The standalone zygote (EXECUTOR_ZYGOTE_SERVE=1: a Kubernetes pod's
    zygote container, next to the gateway's container, which connects to
    it): it loads once, listens at path (mode EXECUTOR_ZYGOTE_SOCKET_MODE,
    default 0660: the pod's shared group reaches it) and forks a Zygote for
    each gateway connection, the ready message included. When that
    connection ends (the gateway restarted) that Zygote kills its kernels
    and exits as usual, and the next connection gets a new one. SIGTERM (the
    pod is stopping) does not cut a gateway that is draining: the server
    exits when the connection being served ends, or at once when none is.
    """
    launch.setup_environment()
    load()
    mode = int(os.environ.pop("EXECUTOR_ZYGOTE_SOCKET_MODE", "0660"), 8)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    ln = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ln.bind(path)
    os.chmod(path, mode)
    ln.listen(4)
    state = {"busy": False, "stopping": False}

    def on_term(*_):
        state["stopping"] = True
        if not state["busy"]:
            os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    log("serving gateways at %s" % path)
    while True:
        conn, _ = ln.accept()
        state["busy"] = True
        pid = os.fork()
        if pid == 0:
            ln.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            ctl = conn.detach()
            os.set_inheritable(ctl, False)
            lifeline, _keep = os.pipe()
            Zygote(ctl, lifeline).run()
            os._exit(0)
        conn.close()
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue
        state["busy"] = False
        if state["stopping"]:
            os._exit(0)
        log("gateway gone; serving the next one")


def main():
    path = os.environ.pop("EXECUTOR_ZYGOTE_SOCKET", "")
    if path and os.environ.pop("EXECUTOR_ZYGOTE_SERVE", "") == "1":
        serve(path)
    if path:
        os.environ["EXECUTOR_ZYGOTE_FD"] = str(accept_gateway(path))
    ctl = int(os.environ.pop("EXECUTOR_ZYGOTE_FD"))
    lifeline = int(os.environ.pop("EXECUTOR_LIFELINE_FD", "-1"))
    for fd in (ctl, lifeline):
        if fd >= 0:
            os.set_inheritable(fd, False)
    if lifeline >= 0:
        os.set_blocking(lifeline, True)
    launch.setup_environment()
    load()
    if lifeline < 0:
        # No lifeline given: one that never ends (we hold its write end).
        lifeline, _keep = os.pipe()
    z = Zygote(ctl, lifeline)
    z.run()


if __name__ == "__main__":
    main()
