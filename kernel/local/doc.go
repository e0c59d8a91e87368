// Package local provisions IPython kernels as local processes, each
// sandboxed: forked from a zygote into namespaces of its own, or started in
// a bubblewrap (bwrap) sandbox where bubblewrap is installed.
//
// Every kernel gets a directory <StateDir>/k/<id>/, flock'ed by the gateway
// while the kernel lives (so Reap can tell kernels of a crashed instance
// from live ones), holding:
//
//	code/          the kernel's /code: input/ (files given to the code) and
//	               output/ (files the code writes); the kernel's Dir returns it
//	s/             private socket directory: the connection file (none for a
//	               one-shot kernel, which gets its address in the fork
//	               request) and the ipc socket files of the kernel's channels
//
// Forked kernels build their own root inside their mount namespace on
// <StateDir>/root, one mount point for all, empty on the host.
//
// Either way the kernel says when its sockets are bound (Bound,
// kernel.Binder), so the gateway dials once: a spawned kernel's launcher
// writes a byte to a pipe at fd 4 (EXECUTOR_READY_FD), a forked one to a
// pipe its zygote holds, which forwards it as a "bound" event.
//
// Kernels are made in one of two ways (Config.Start, KERNEL_START):
//
//   - fork (default): a zygote, executor-image/zygote.py, started once per
//     provisioner under <StateDir>/z, imports ipykernel and the preload list,
//     freezes its heap and forks one child per kernel; see "Forked kernels".
//     New falls back to spawn, with a warning, when the zygote cannot start
//     or when the sandbox is wanted and the gateway is not root.
//   - spawn: a cold start, "python3 launch.py -f s/kernel.json" with the
//     launcher from executor-image, extracted into <StateDir>/executor, so
//     local and Docker kernels behave the same (inline matplotlib, CJK font,
//     history off, preloaded data stack).
//
// # Forked kernels
//
// The zygote runs as the gateway's user (root, for the sandbox) with the
// same lifeline, process-group watcher and Pdeathsig as a spawned kernel,
// and talks to the provisioner over a socket (fd 4) in JSON lines: fork,
// kill; forked, bound, exit. Each child is pid 1 of a new pid namespace and, with
// the sandbox, isolates itself before running any user code as bubblewrap
// would: its own mount (a new root: read-only system, private /tmp and
// /dev/shm, its /code and socket directory), network (lo only), ipc and uts
// namespaces; its own memory and pids cgroups (cgroup v1, under the
// gateway's own, codegw-<pid>/<kernel>.<n>) or, where those cannot be
// written, RLIMIT_AS and RLIMIT_NPROC; then uid 65534, no capabilities,
// no_new_privs. Exit reads the cgroups: OOMKilled from memory.oom_control,
// PidsLimited from pids.events. A zygote that dies takes its kernels with it
// (parent-death signal and a lifeline pipe to each child); they are reported
// killed and the next Start starts a new zygote. Provisioner.Close ends the
// zygote and so any forked kernel still running. The forked kernel's
// lifecycle (the fork request and its limits, kill through the zygote,
// Restart, Close, exits) is kernel/internal/forked's, shared with
// kernel/docker; this package supplies the zygote and the kernel's files.
//
// # The sandbox of spawned kernels
//
// With bubblewrap the kernel runs with:
//
//   - all namespaces unshared (--unshare-all): a network namespace with only
//     the loopback interface, so the code cannot reach any other host (the
//     gateway talks to the kernel through ipc socket files, which work across
//     network namespaces); its own pid namespace, so it sees no other process
//     and everything in it dies when bwrap dies; its own mount, ipc and uts
//     namespaces and a user namespace;
//   - a read-only view of /usr, /etc, the /lib*, /bin and /sbin directories
//     or symlinks, and the executor directory; nothing else of the host file
//     system: a private tmpfs at /tmp, a minimal /dev, a /proc of its own;
//   - the kernel's code directory bound read-write at /code (the working
//     directory) and its socket directory bound at the same path as on the
//     host, so the ipc paths in the connection file mean the same inside;
//   - a clean environment: HOME=/tmp, PATH, LANG=C.UTF-8, MPLBACKEND,
//     PYTHONDONTWRITEBYTECODE=1, then Config.Env and Spec.Env;
//   - when the gateway runs as root, an unprivileged user (Config.UID and GID,
//     default nobody): as root, bwrap would keep every capability inside the
//     sandbox and the code could read root-only files under /etc. The kernel's
//     code and socket directories are handed to that user.
//   - --die-with-parent, and bwrap is started from one long-lived OS thread
//     with Pdeathsig, so kernels do not outlive the gateway. Both leave a
//     window of some milliseconds while bwrap sets up the sandbox, so every
//     kernel, sandboxed or not, also gets a lifeline: the read end of a pipe
//     as fd 3 (EXECUTOR_LIFELINE_FD) whose write end only the gateway holds.
//     When the gateway dies, however, a watcher process in the kernel's
//     process group (forked by /bin/sh before it execs bwrap) and the
//     launcher read end-of-file and kill the group.
//
// The process is started in a new session (setsid, so it has its own process
// group and no controlling terminal, which also rules out TIOCSTI input
// injection without bwrap's --new-session). Interrupts come through the
// control channel, not signals. Kill sends SIGKILL to the whole group.
//
// bwrap reports a child killed by signal N as exit status 128+N; Exit maps
// such statuses back to the signal ("segmentation fault", "killed"). A kernel
// that calls sys.exit(139) therefore also reads as a segmentation fault.
//
// Without bubblewrap (Sandbox "none", or "auto" when bwrap is missing or does
// not work here) the kernel is a plain child process of the gateway's user
// with full access to the host and the network: only for trusted code or
// development; "auto" logs a loud warning. There /code does not exist: the
// working directory is the code directory's host path, and TMPDIR and HOME
// point to a private tmp/ in the kernel's directory.
//
// When the socket paths would be too long for a unix socket (about 107
// bytes) the kernel falls back to tcp on 127.0.0.1, which under bwrap means
// sharing the host's network namespace; New warns about it. Keep StateDir
// short.
package local
