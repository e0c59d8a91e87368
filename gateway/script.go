package gateway

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/codegw/codegw"
)

// The compatibility APIs (Dify's sandbox, LibreChat's Code Interpreter)
// run code as a script is run, not as a notebook cell: a fresh namespace,
// a plain Python traceback on stderr, and an exit code. Both kinds of
// script run in the kernel's own sandbox, by the cells below.

// scriptExitName is the exception a script cell raises when the script
// failed; its value is "exited with code N".
const scriptExitName = "ScriptExit"

// scriptPrelude defines ScriptExit in the kernel.
const scriptPrelude = `import base64 as _cg_b, json as _cg_j, subprocess as _cg_s, sys as _cg_y, traceback as _cg_t
class ScriptExit(Exception):
    pass
`

func b64(s []byte) string { return base64.StdEncoding.EncodeToString(s) }

// pythonCell returns the cell that runs src as python3 runs a script: in a
// fresh namespace named __main__, an exception printed to stderr as
// Python prints it (the frames of src only) and sys.exit honoured, then
// ScriptExit raised when the code is not 0. A KeyboardInterrupt (the
// deadline's interrupt) goes through.
func pythonCell(src string) string {
	return scriptPrelude + `def _cg_py(src):
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(src, "<string>", "exec"), g)
        return
    except KeyboardInterrupt:
        raise
    except SystemExit as e:
        c = e.code
        if c is None or c == 0:
            return
        if not isinstance(c, int):
            print(c, file=_cg_y.stderr)
            c = 1
    except BaseException as e:
        _cg_t.print_exception(type(e), e, e.__traceback__.tb_next)
        c = 1
    _cg_y.stdout.flush(); _cg_y.stderr.flush()
    raise ScriptExit("exited with code %d" % c) from None
_cg_py(_cg_b.b64decode("` + b64([]byte(src)) + `").decode("utf-8"))
`
}

// nodeCell returns the cell that runs src with Node.js in the kernel's
// sandbox: one fresh node process per call, a child of the kernel, so it
// has the kernel's namespaces, uid, cgroup or rlimits, no network, and its
// working directory. The script comes on node's stdin (node -), args
// follow it in process.argv. node's stdout and stderr are written to the
// cell's, and a non-zero exit raises ScriptExit. The execution's deadline
// interrupts the cell, and subprocess.run kills node on the
// KeyboardInterrupt; a killed kernel takes node with it.
func nodeCell(src string, args []string) string {
	if args == nil {
		args = []string{}
	}
	a, _ := json.Marshal(args)
	return scriptPrelude + `def _cg_node(src, args):
    try:
        p = _cg_s.run(["node", "-"] + args, input=src, capture_output=True)
    except FileNotFoundError:
        print("Node.js is not installed in this executor", file=_cg_y.stderr)
        raise ScriptExit("exited with code 127") from None
    _cg_y.stdout.write(p.stdout.decode("utf-8", "replace"))
    _cg_y.stderr.write(p.stderr.decode("utf-8", "replace"))
    _cg_y.stdout.flush(); _cg_y.stderr.flush()
    if p.returncode != 0:
        raise ScriptExit("exited with code %d" % p.returncode) from None
_cg_node(_cg_b.b64decode("` + b64([]byte(src)) + `"), _cg_j.loads(_cg_b.b64decode("` + b64(a) + `")))
`
}

// scriptExit returns the exit code of a script cell's answer: 0 when it
// ran to completion, the script's code when it failed, 1 when the cell
// itself raised, and -1 when it ended otherwise (timeout, kill), as a
// process killed by a signal reports.
func scriptExit(res *codegw.ExecuteResult) int {
	switch {
	case res.Status == codegw.StatusOK:
		return 0
	case res.Status == codegw.StatusError && res.EName == scriptExitName:
		if n, err := strconv.Atoi(strings.TrimPrefix(res.EValue, "exited with code ")); err == nil {
			return n
		}
		return 1
	case res.Status == codegw.StatusError:
		return 1
	}
	return -1
}
