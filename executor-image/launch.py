"""Kernel launcher shared by the local (bubblewrap) and Docker provisioners.

    python3 launch.py -f CONNECTION_FILE [more IPKernelApp options]
    python3 launch.py --build-mpl-cache DIR

The first form starts an IPython kernel (ipykernel's IPKernelApp) set up the
same way wherever it runs:

- IPYTHONDIR, MPLCONFIGDIR and, when HOME is not writable, HOME live under
  the temporary directory (TMPDIR, else /tmp): the root file system may be
  read-only and /tmp is private to the kernel.
- IPython history is off: the shared SQLite history database caps the
  throughput of busy kernels, and a kernel serves a single caller anyway.
- matplotlib uses the inline backend (Agg underneath): plt.show() and figures
  left open at the end of a cell are sent as image/png display_data.
- A CJK font, when one is installed, is matplotlib's default sans-serif font
  and axes.unicode_minus is off, so Chinese titles and minus signs render.
- The modules in EXECUTOR_PRELOAD (comma separated; default
  numpy,pandas,matplotlib,matplotlib.pyplot) are imported before the kernel
  answers its first request, so that a warm kernel imports them instantly.
  No names are added to the user's namespace.
- matplotlib's font cache is copied from EXECUTOR_MPL_CACHE (a directory made
  with --build-mpl-cache) instead of being rebuilt, which costs seconds.
- The working directory is EXECUTOR_WORKDIR, default /code.
- ipykernel's debugger (debugpy) is not loaded: it costs a third of the
  kernel's start. EXECUTOR_DEBUGGER=1 loads it.
- After a shutdown_request the kernel stops its threads in a safe order, runs
  its atexit handlers (ipykernel flushes iopub and closes its sockets) and
  exits at once, without Python's teardown of every module: see
  exit_after_shutdown.
- EXECUTOR_LIFELINE_FD names a descriptor whose other end only the process
  that started the kernel holds (the local provisioner sets it; Docker does
  not). When reading it gives end-of-file, that process is gone, however it
  died, and the kernel kills its process group and exits at once.
- Right after initialize() has bound the kernel's sockets, one byte is
  written to the descriptor EXECUTOR_READY_FD (a pipe: the local provisioner
  or the zygote holds its read end) or to the FIFO EXECUTOR_READY_FILE
  (Docker: in the bind-mounted socket directory), so the gateway dials once
  instead of retrying until the kernel listens: see signal_bound.

The second form builds that font cache into DIR, once, at image build time
(Docker) or when the local provisioner starts.

Only the standard library is imported before the kernel starts, and nothing
here writes outside the temporary directory.
"""

import atexit
import functools
import glob
import importlib
import os
import shutil
import signal
import sys
import tempfile
import threading

DEFAULT_PRELOAD = "numpy,pandas,matplotlib,matplotlib.pyplot"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# Bounds the wait for the control thread to finish after the kernel's loops
# stopped (see exit_after_shutdown); it takes milliseconds.
CONTROL_STOP_TIMEOUT = 5.0

# CJK fonts in order of preference: a file pattern and the family name
# matplotlib gives its first face.
CJK_FONTS = [
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "WenQuanYi Micro Hei"),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", "WenQuanYi Zen Hei"),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "Noto Sans CJK JP"),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK*.ttc", "Noto Sans CJK JP"),
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", "Droid Sans Fallback"),
]


def log(msg):
    # sys.__stderr__: once the kernel is initialised, sys.stderr goes to iopub.
    print("launch: " + msg, file=sys.__stderr__, flush=True)


def writable_dir(path):
    return bool(path) and os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


# Cached: a zygote looks once, and every kernel it forks knows.
@functools.lru_cache(maxsize=None)
def cjk_font():
    """Return the family name of the first installed CJK font, or None."""
    for pattern, family in CJK_FONTS:
        if glob.glob(pattern):
            return family
    return None


def write_matplotlibrc(configdir):
    """Write the kernel's matplotlibrc: CJK font first, no unicode minus.

    matplotlib reads $MPLCONFIGDIR/matplotlibrc at import, so the settings
    hold whether or not matplotlib is preloaded and survive plt.rcdefaults()
    less than rcParams set in code would.
    """
    lines = ["# Written by executor launch.py.", "axes.unicode_minus: False"]
    family = cjk_font()
    if family:
        lines.append("font.family: sans-serif")
        lines.append("font.sans-serif: %s, DejaVu Sans, Bitstream Vera Sans, sans-serif" % family)
    with open(os.path.join(configdir, "matplotlibrc"), "w") as f:
        f.write("\n".join(lines) + "\n")


def seed_mpl_cache(configdir):
    """Copy the prebuilt font cache (fontlist-*.json) into MPLCONFIGDIR."""
    for path in font_caches(os.environ.get("EXECUTOR_MPL_CACHE")):
        dst = os.path.join(configdir, os.path.basename(path))
        if not os.path.exists(dst):
            try:
                shutil.copyfile(path, dst)
            except OSError as e:
                log("font cache not copied: %s" % e)


@functools.lru_cache(maxsize=None)
def font_caches(src):
    """The prebuilt font caches in the directory src, looked for once per
    process tree as cjk_font is."""
    if not src or not os.path.isdir(src):
        return ()
    return tuple(glob.glob(os.path.join(src, "fontlist-*.json")))


def watch_lifeline():
    """Exit when the lifeline named by EXECUTOR_LIFELINE_FD reaches EOF.

    The local provisioner keeps the write end of a pipe for as long as it
    wants the kernel; this daemon thread blocks reading the read end. A
    gateway killed with SIGKILL while bwrap is still setting up the sandbox
    (before --die-with-parent is in force) would otherwise leave the kernel
    running. The end-of-file stays, so a kernel whose gateway died before
    this thread started exits as soon as it does start. (The provisioner's
    watcher process, outside the sandbox, does the same: each backs up the
    other.)

    The kill takes the whole process group: the kernel's own, made by the
    provisioner (setsid), with the children of user code in it. Without the
    variable (Docker) nothing happens.
    """
    value = os.environ.pop("EXECUTOR_LIFELINE_FD", None)
    if value is None:
        return
    try:
        fd = int(value)
        os.set_blocking(fd, True)
        # User code's subprocesses need not hold it.
        os.set_inheritable(fd, False)
    except (ValueError, OSError) as e:
        # Fail closed: a kernel that cannot see its gateway must not run.
        log("lifeline %r unusable: %s" % (value, e))
        os._exit(70)

    # Bound now, so that user code rebinding os.* cannot defuse the thread.
    def watch(fd=fd, read=os.read, killpg=os.killpg, _exit=os._exit):
        try:
            while read(fd, 64):
                pass  # the provisioner never writes; ignore it if it does
        except OSError:
            pass  # closed under us (by user code): treat as lost
        try:
            killpg(0, signal.SIGKILL)
        finally:
            _exit(137)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def setup_environment():
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    tmp = tempfile.gettempdir()
    if not writable_dir(os.environ.get("HOME")):
        os.environ["HOME"] = tmp
    for var, name in (("IPYTHONDIR", ".ipython"), ("MPLCONFIGDIR", ".matplotlib")):
        path = os.environ.get(var)
        if not writable_dir(path):
            path = os.path.join(tmp, name)
            os.environ[var] = path
        os.makedirs(path, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    configdir = os.environ["MPLCONFIGDIR"]
    seed_mpl_cache(configdir)
    write_matplotlibrc(configdir)
    sys.dont_write_bytecode = True

    workdir = os.environ.get("EXECUTOR_WORKDIR", "/code")
    try:
        os.chdir(workdir)
    except OSError as e:
        log("cannot use %s as working directory: %s" % (workdir, e))


def preload(shell):
    """Import the EXECUTOR_PRELOAD modules; a failure is logged, not fatal."""
    names = os.environ.get("EXECUTOR_PRELOAD", DEFAULT_PRELOAD)
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # a broken optional module must not stop the kernel
            log("preload %s failed: %s" % (name, e))
    # With pyplot loaded, do what %matplotlib inline does now rather than in
    # the user's first plotting cell: import the backend and register the
    # hook that sends open figures at the end of each cell.
    if "matplotlib.pyplot" in sys.modules and os.environ.get("MPLBACKEND") == INLINE_BACKEND:
        try:
            shell.enable_matplotlib("inline")
        except Exception as e:
            log("matplotlib inline setup failed: %s" % e)
    else:
        # The inline backend hooks itself into the shell when it is first
        # imported. A kernel forked from a zygote that had already imported
        # it (with no shell yet) must do that now, or its figures arrive as
        # text only.
        backend = sys.modules.get("matplotlib_inline.backend_inline")
        if backend is not None:
            try:
                backend._enable_matplotlib_integration()
            except Exception as e:
                log("matplotlib inline setup failed: %s" % e)


def bound_stream_buffers(limit=256 << 10):
    """Send stdout/stderr in chunks of about `limit` characters.

    ipykernel buffers writes and flushes every 0.2 s, so a tight print loop
    becomes one message of hundreds of MB that the gateway must hold whole.
    Flushing (which waits for the IO thread) once the buffer passes `limit`
    bounds every message and slows a flooding writer to the pace of the
    socket instead. The gateway's ZeroMQ sockets queue up to 10 messages
    each, so the chunk size bounds what a flood holds in the gateway.
    """
    from ipykernel import iostream

    orig = iostream.OutStream.write

    def write(self, string):
        if not isinstance(string, str) or not self._is_master_process():
            return orig(self, string)
        if len(string) > limit:
            for i in range(0, len(string), limit):
                orig(self, string[i : i + limit])
                self.flush()
            return len(string)
        n = orig(self, string)
        buf = getattr(self, "_buffer", None)
        try:
            full = buf is not None and buf.tell() > limit
        except ValueError:
            # The IO thread flushed and closed that buffer meanwhile: it is
            # empty now, so there is nothing to flush.
            full = False
        if full:
            self.flush()
        return n

    iostream.OutStream.write = write


def exit_after_shutdown(app):
    """End the kernel process once ipykernel's event loops have stopped.

    A shutdown_request stops the shell loop (app.start() returns here; the
    user's exit() does too) and the control loop, but the control thread
    then still flushes sys.stdout and sys.stderr, which waits (up to ten
    seconds) for the IOPub thread to take the flush. Python's exit would
    meanwhile run ipykernel's atexit handlers, which stop the IOPub thread
    first and join the control thread last: when the IOPub thread stopped
    between the flush's check that it runs and its hand-over, nothing ever
    took the flush and the kernel sat ten seconds before it closed its
    sockets and exited. On a loaded machine that happened often enough for
    the gateway to kill it. So the control thread is stopped and joined
    first, while the IOPub thread still runs.

    Then the atexit handlers run (ipykernel flushes iopub and closes its
    sockets; the user's handlers run too) and the process ends at once: what
    Python would do next, joining the user's non-daemon threads and tearing
    down every module of IPython, numpy, pandas and matplotlib, serves
    nothing and costs about 0.4 s of CPU, three quarters of the exit, which
    a busy machine stretches to seconds. Objects' __del__ methods do not
    run, as under the kill that ends a kernel the gateway no longer wants.
    """
    control = getattr(app, "control_thread", None)
    if control is not None and control.is_alive():
        try:
            control.stop()
        except RuntimeError:
            pass  # its loop closed meanwhile
        control.join(CONTROL_STOP_TIMEOUT)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(0)


def signal_bound():
    """Tell the gateway that the kernel's sockets are bound.

    Called right after IPKernelApp.initialize(), which binds them. One byte
    goes to EXECUTOR_READY_FD (a pipe's write end) or to the FIFO
    EXECUTOR_READY_FILE, which is then closed; user code sees neither. A
    failure is only logged: the gateway falls back to dialling with retries.
    """
    fd = os.environ.pop("EXECUTOR_READY_FD", None)
    path = os.environ.pop("EXECUTOR_READY_FILE", None)
    try:
        if fd is not None:
            fd = int(fd)
        elif path:
            # Non-blocking: no reader (a gateway gone) is ENXIO, not a hang.
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            return
        try:
            os.write(fd, b"b")
        finally:
            os.close(fd)
    except (ValueError, OSError) as e:
        log("bound signal not sent: %s" % e)


def import_ipykernel():
    """Import ipykernel and return its IPKernelApp.

    ipykernel imports debugpy (~130 ms, a third of its import time) for a
    debugger the gateway never uses. It is hidden while ipykernel loads, then
    user code can import it as usual. EXECUTOR_DEBUGGER=1 keeps it.
    """
    hide_debugpy = os.environ.get("EXECUTOR_DEBUGGER") != "1" and "debugpy" not in sys.modules
    if hide_debugpy:
        sys.modules["debugpy"] = None
    try:
        from ipykernel.kernelapp import IPKernelApp
        import ipykernel.ipkernel  # noqa: F401
        import ipykernel.zmqshell  # noqa: F401
    finally:
        if hide_debugpy:
            del sys.modules["debugpy"]
    return IPKernelApp


def build_mpl_cache(directory):
    """Build matplotlib's font cache into directory (for EXECUTOR_MPL_CACHE)."""
    os.makedirs(directory, exist_ok=True)
    os.environ["MPLCONFIGDIR"] = directory
    import matplotlib.font_manager as fm

    # Make sure the CJK font is in the list the cache was built from.
    family = cjk_font()
    if family:
        fm.findfont(fm.FontProperties(family=family), fallback_to_default=False)
    return 0


def main(argv):
    # First: a kernel whose gateway is gone must not go on starting.
    watch_lifeline()
    if len(argv) == 2 and argv[0] == "--build-mpl-cache":
        return build_mpl_cache(argv[1])

    setup_environment()
    IPKernelApp = import_ipykernel()
    bound_stream_buffers()
    app = IPKernelApp.instance()
    app.initialize(
        argv
        + [
            "--HistoryManager.enabled=False",
            # Marks the kernel as started by a manager: without it ipykernel
            # prints a terminal banner ("Ctrl-C will not work...") on stdout.
            # 1 is special-cased: no parent polling.
            "--IPKernelApp.parent_handle=1",
        ]
    )
    signal_bound()
    preload(app.shell)
    app.start()
    exit_after_shutdown(app)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
