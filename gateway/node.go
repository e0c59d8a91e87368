package gateway

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/codegw/codegw"
)

// nodeErrorName is the exception the Node.js cell raises when node exits
// with a status other than 0; its value is "node exited with code N".
const nodeErrorName = "NodeError"

// nodeCell returns the Python cell that runs src with Node.js in the
// kernel's own sandbox: one fresh node process per call, a child of the
// kernel, so it has the kernel's namespaces, uid, cgroup or rlimits, no
// network, and its working directory. The script comes on node's stdin
// (node -), args follow it in process.argv. node's stdout and stderr are
// written to the cell's, and a non-zero exit raises NodeError. The
// execution's deadline interrupts the cell, and subprocess.run kills node
// on the KeyboardInterrupt; a killed kernel takes node with it.
func nodeCell(src string, args []string) string {
	if args == nil {
		args = []string{}
	}
	a, _ := json.Marshal(args)
	return `import base64 as _cg_b, json as _cg_j, subprocess as _cg_s, sys as _cg_y
class NodeError(Exception):
    pass
def _cg_node(src, args):
    try:
        p = _cg_s.run(["node", "-"] + args, input=src, capture_output=True)
    except FileNotFoundError:
        raise NodeError("Node.js is not installed in this executor") from None
    _cg_y.stdout.write(p.stdout.decode("utf-8", "replace"))
    _cg_y.stderr.write(p.stderr.decode("utf-8", "replace"))
    _cg_y.stdout.flush(); _cg_y.stderr.flush()
    if p.returncode != 0:
        raise NodeError("node exited with code %d" % p.returncode) from None
_cg_node(_cg_b.b64decode("` + base64.StdEncoding.EncodeToString([]byte(src)) + `"), _cg_j.loads(_cg_b.b64decode("` + base64.StdEncoding.EncodeToString(a) + `")))
`
}

// nodeExit returns the exit code of a Node.js cell's answer: 0 when it
// ran to completion, node's code when it failed, and -1 when the cell
// ended otherwise (timeout, kill), as a process killed by a signal reports.
func nodeExit(res *codegw.ExecuteResult) int {
	switch {
	case res.Status == codegw.StatusOK:
		return 0
	case res.Status == codegw.StatusError && res.EName == nodeErrorName:
		if n, err := strconv.Atoi(strings.TrimPrefix(res.EValue, "node exited with code ")); err == nil {
			return n
		}
		return 1
	case res.Status == codegw.StatusError:
		return 1
	}
	return -1
}
