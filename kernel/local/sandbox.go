package local

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// inlineBackend is matplotlib's inline backend, as the launcher also sets it.
const inlineBackend = "module://matplotlib_inline.backend_inline"

// lifelineFD is the descriptor on which a kernel's processes find the read
// end of its lifeline: a pipe whose write end only the gateway holds, for as
// long as the kernel's process runs. It reads end-of-file once the gateway
// is gone, however it died. It is the first of exec.Cmd.ExtraFiles, which
// bwrap passes on to the sandboxed command.
//
// Pdeathsig and bwrap's --die-with-parent leave a window of some
// milliseconds, while bwrap sets up the sandbox, in which a gateway killed
// with SIGKILL leaves the sandbox behind: either running the kernel (the
// sandbox's init had not yet asked for --die-with-parent), or blocked
// forever in bwrap's set-up handshake (the outer bwrap died before it let
// the sandbox go on). Two readers close it:
//
//   - watchScript's watcher, outside the sandbox in the kernel's process
//     group, kills the group at end-of-file, whatever state bwrap is in;
//   - the launcher (EXECUTOR_LIFELINE_FD) does the same from inside.
const lifelineFD = 3

// boundFD is the descriptor of a spawned kernel's bound pipe
// (EXECUTOR_READY_FD): the launcher writes a byte on it once the kernel's
// sockets are bound, so the gateway dials once. The watcher closes it.
const boundFD = 4

// watchScript is run by /bin/sh with the kernel's command as arguments. It
// forks the watcher, then becomes the command: bwrap or the plain kernel,
// the process group leader (setsid) with Pdeathsig. The watcher does not
// inherit Pdeathsig, so it outlives the gateway until it reads end-of-file
// on the lifeline; then it kills the process group, itself included. While
// the gateway lives it sleeps in read(2), and dies with the group when the
// kernel ends.
const watchScript = `(while read -r x <&3; do :; done; kill -KILL 0) </dev/null >/dev/null 2>&1 4>&- & exec "$@"`

// bwrapArgs returns bubblewrap's options for a kernel whose directory is
// kdir (empty for the probe, which binds no kernel directory). shareNet keeps
// the host network, needed only by the tcp fallback.
func (p *Provisioner) bwrapArgs(kdir, codeDir string, shareNet bool) []string {
	args := []string{
		"--unshare-all",
		"--die-with-parent",
		"--cap-drop", "ALL",
		"--ro-bind", "/usr", "/usr",
		"--ro-bind", "/etc", "/etc",
	}
	if shareNet {
		args = append(args, "--share-net")
	}
	// Merged-/usr systems have /bin, /lib... as symlinks into /usr; older
	// ones have real directories.
	for _, d := range []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
		fi, err := os.Lstat(d)
		switch {
		case err != nil:
		case fi.Mode()&os.ModeSymlink != 0:
			if target, err := os.Readlink(d); err == nil {
				args = append(args, "--symlink", target, d)
			}
		case fi.IsDir():
			args = append(args, "--ro-bind", d, d)
		}
	}
	args = append(args,
		"--proc", "/proc",
		"--dev", "/dev",
		"--tmpfs", "/tmp",
	)
	if underBound(p.execDir) {
		// Nothing to do: already visible.
	} else {
		args = append(args, "--ro-bind", p.execDir, p.execDir)
	}
	if fi, err := os.Stat(p.mplCache); err == nil && fi.IsDir() && !underBound(p.mplCache) {
		args = append(args, "--ro-bind", p.mplCache, p.mplCache)
	}
	if kdir != "" {
		sock := filepath.Join(kdir, "s")
		args = append(args,
			"--bind", codeDir, "/code",
			"--bind", sock, sock,
			"--chdir", "/code",
		)
	}
	return args
}

// underBound reports whether path is inside a directory the sandbox already
// shows read-only.
func underBound(path string) bool {
	for _, d := range []string{"/usr/", "/etc/"} {
		if strings.HasPrefix(path, d) {
			return true
		}
	}
	return false
}

// env returns the kernel's whole environment: nothing is inherited from the
// gateway, whose environment may hold secrets.
func (p *Provisioner) env(kdir string, spec map[string]string) []string {
	return envList(p.envMap(kdir, spec))
}

// envMap is env as a map.
func (p *Provisioner) envMap(kdir string, spec map[string]string) map[string]string {
	m := map[string]string{
		"PATH":                    "/usr/local/bin:/usr/bin:/bin",
		"LANG":                    "C.UTF-8",
		"HOME":                    "/tmp",
		"TMPDIR":                  "/tmp",
		"MPLBACKEND":              inlineBackend,
		"PYTHONDONTWRITEBYTECODE": "1",
		"EXECUTOR_WORKDIR":        "/code",
	}
	if _, err := os.Stat(p.mplCache); err == nil {
		m["EXECUTOR_MPL_CACHE"] = p.mplCache
	}
	if p.cfg.Preload != nil {
		m["EXECUTOR_PRELOAD"] = strings.Join(p.cfg.Preload, ",")
	}
	if !p.sandbox {
		tmp := filepath.Join(kdir, "tmp")
		m["HOME"], m["TMPDIR"] = tmp, tmp
		m["EXECUTOR_WORKDIR"] = filepath.Join(kdir, "code")
	}
	for k, v := range p.cfg.Env {
		m[k] = v
	}
	for k, v := range spec {
		m[k] = v
	}
	// Last, so that no configured environment can turn it off.
	m["EXECUTOR_LIFELINE_FD"] = strconv.Itoa(lifelineFD)
	return m
}
