"""Round-trip timer for kernelbench: the jupyter_client side.

    /usr/bin/python3 jupyter_client_rt.py CONNECTION_FILE

Reads one JSON command per line on stdin, {"n": N, "warmup": W, "code": C},
and answers each with one JSON line on stdout:
{"lat_ns": [...], "cpu_s": x, "syscalls": n}.
For every command it connects a fresh BlockingKernelClient (so it is the
only client connected while it measures, as the Go side is during its
rounds), runs W untimed executions, then N timed ones, and disconnects.

One round trip is execute() until both the execute_reply on the shell
channel and the iopub status idle of the same request have arrived: the
same thing kernel.Client.Execute waits for. cpu_s is this process's CPU time
(all threads, including the heartbeat thread) over the timed executions,
syscalls its read and write system calls (/proc/self/io syscr + syscw).
"""

import json
import resource
import sys
import time

from jupyter_client import BlockingKernelClient


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def syscalls():
    """Read and write system calls of this process so far (/proc/self/io)."""
    counts = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, _, v = line.partition(":")
            counts[k] = int(v)
    return counts.get("syscr", 0) + counts.get("syscw", 0)


def round_trip(kc, code):
    t0 = time.perf_counter_ns()
    # The options the gateway sends (session/exec.go): history on, no stdin.
    msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
    while True:
        m = kc.get_shell_msg(timeout=30)
        if m["parent_header"].get("msg_id") == msg_id:
            if m["content"].get("status") != "ok":
                raise RuntimeError("execute_reply: %r" % (m["content"],))
            break
    while True:
        m = kc.get_iopub_msg(timeout=30)
        if (
            m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "status"
            and m["content"].get("execution_state") == "idle"
        ):
            break
    return time.perf_counter_ns() - t0


def main():
    conn = sys.argv[1]
    for line in sys.stdin:
        cmd = json.loads(line)
        kc = BlockingKernelClient()
        kc.load_connection_file(conn)
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            for _ in range(cmd.get("warmup", 0)):
                round_trip(kc, cmd["code"])
            lat = []
            c0, s0 = cpu_seconds(), syscalls()
            for _ in range(cmd["n"]):
                lat.append(round_trip(kc, cmd["code"]))
            cpu, sys_calls = cpu_seconds() - c0, syscalls() - s0
        finally:
            kc.stop_channels()
        sys.stdout.write(json.dumps({"lat_ns": lat, "cpu_s": cpu, "syscalls": sys_calls}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
