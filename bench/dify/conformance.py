#!/usr/bin/python3
"""Drive a running codegw with Dify's own code-executor client.

A by-hand conformance check: it imports Dify's CodeExecutor (its HTTP
client for dify-sandbox) and its Python3, NodeJs and Jinja2 template
transformers from a Dify checkout, and runs Dify's code node cases against
codegw's /v1/sandbox API: parsed outputs, an exception's message, a timeout,
a Jinja2 template and a burst of concurrent runs. Only Dify's configuration
loading is shimmed (a `configs` module with `dify_config`); where the
checkout imports a package Debian does not ship, a minimal stand-in is
reported and used (`graphon`, Dify's workflow library: its JSON encoder;
pydantic 1's `parse_obj` as pydantic 2's `model_validate`).

    /usr/bin/python3 bench/dify/conformance.py --dify PATH --url http://127.0.0.1:14564 --key KEY

It needs python3-httpx, python3-pydantic and python3-yarl (Dify's client
libraries) and a codegw started with DIFY_NETWORK=offline and DIFY_TIMEOUT
short enough for the timeout case (the default, 15 s, is fine). It prints
one line per case and exits 1 if any failed.
"""

import argparse
import json
import os
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor


def shim_config(url, key):
    """Dify reads its settings with pydantic-settings from the environment;
    this is the only part of Dify replaced: the values its code executor
    reads, as Dify's defaults (api/configs/feature)."""
    cfg = types.SimpleNamespace(
        CODE_EXECUTION_ENDPOINT=url,
        CODE_EXECUTION_API_KEY=key,
        CODE_EXECUTION_SSL_VERIFY=True,
        CODE_EXECUTION_POOL_MAX_CONNECTIONS=100,
        CODE_EXECUTION_POOL_MAX_KEEPALIVE_CONNECTIONS=20,
        CODE_EXECUTION_POOL_KEEPALIVE_EXPIRY=5.0,
        CODE_EXECUTION_CONNECT_TIMEOUT=10.0,
        CODE_EXECUTION_READ_TIMEOUT=60.0,
        CODE_EXECUTION_WRITE_TIMEOUT=10.0,
        CODE_EXECUTION_PROXY_RETRY_COUNT=2,
        CODE_EXECUTION_PROXY_RETRY_DELAY=0.5,
    )
    mod = types.ModuleType("configs")
    mod.dify_config = cfg
    sys.modules["configs"] = mod


def stand_ins():
    """Stand-ins for what Debian lacks; each is reported."""
    notes = []
    try:
        import graphon.variables.utils  # noqa: F401
    except ImportError:
        for name in ("graphon", "graphon.variables", "graphon.variables.utils"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["graphon.variables.utils"].dumps_with_segments = lambda obj, **kw: json.dumps(obj, **kw)
        notes.append("graphon (Dify's workflow library) is not installed: dumps_with_segments is json.dumps")
    import pydantic

    if not hasattr(pydantic.BaseModel, "model_validate"):
        pydantic.BaseModel.model_validate = classmethod(lambda cls, obj: cls.parse_obj(obj))
        notes.append("pydantic %s: model_validate is parse_obj" % pydantic.VERSION)
    return notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dify", required=True, help="path of a Dify checkout (the directory holding api/)")
    ap.add_argument("--url", default="http://127.0.0.1:14564")
    ap.add_argument("--key", default=os.environ.get("CODEGW_KEY", ""))
    ap.add_argument("--burst", type=int, default=50, help="concurrent runs of the burst case")
    args = ap.parse_args()

    shim_config(args.url, args.key)
    sys.path.insert(0, os.path.join(os.path.abspath(args.dify), "api"))
    for note in stand_ins():
        print("stand-in:", note)
    from core.helper.code_executor.code_executor import CodeExecutionError, CodeExecutor, CodeLanguage

    failures = 0

    def case(name, fn, check):
        nonlocal failures
        start = time.monotonic()
        try:
            got = fn()
            err = None
        except Exception as e:  # Dify's node shows str(e)
            got, err = None, e
        took = time.monotonic() - start
        ok, detail = check(got, err)
        failures += not ok
        print("%-4s %-22s %6.2fs  %s" % ("ok" if ok else "FAIL", name, took, detail))

    run = CodeExecutor.execute_workflow_code_template
    py = "def main(arg1: str, arg2: str) -> dict:\n    import pandas as pd\n    return {'result': arg1 + arg2, 'n': int(pd.Series([1, 2, 3]).sum())}\n"
    case("python3", lambda: run(CodeLanguage.PYTHON3, py, {"arg1": "hello ", "arg2": "世界"}),
         lambda got, err: (got == {"result": "hello 世界", "n": 6}, repr(got if err is None else err)))
    js = "function main({arg1, arg2}) {\n    return {result: arg1 + arg2, v: process.version}\n}\n"
    case("javascript", lambda: run(CodeLanguage.JAVASCRIPT, js, {"arg1": "hello ", "arg2": "world"}),
         lambda got, err: (bool(got) and got.get("result") == "hello world", repr(got if err is None else err)))
    tmpl = "Dear {{ name }}, {% for i in items %}[{{ i }}]{% endfor %} \"quoted\" '''"
    case("jinja2", lambda: run(CodeLanguage.JINJA2, tmpl, {"name": "Dify", "items": [1, 2]}),
         lambda got, err: (got == {"result": "Dear Dify, [1][2] \"quoted\" '''"}, repr(got if err is None else err)))
    bad = "def main(x: int) -> dict:\n    raise ValueError('bad input %d' % x)\n"
    case("python3 exception", lambda: run(CodeLanguage.PYTHON3, bad, {"x": 7}),
         lambda got, err: (isinstance(err, CodeExecutionError) and str(err).startswith("process exited with code 1\n")
                           and "ValueError: bad input 7" in str(err), repr(err)[:300]))
    jsbad = "function main({x}) {\n    throw new Error('boom ' + x)\n}\n"
    case("javascript exception", lambda: run(CodeLanguage.JAVASCRIPT, jsbad, {"x": 7}),
         lambda got, err: (isinstance(err, CodeExecutionError) and "Error: boom 7" in str(err), repr(err)[:300]))
    slow = "def main() -> dict:\n    while True:\n        pass\n"
    case("timeout", lambda: run(CodeLanguage.PYTHON3, slow, {}),
         lambda got, err: (isinstance(err, CodeExecutionError) and str(err).startswith("process exited with code -1\nerror: timeout"),
                           repr(err)[:300]))
    noresult = "def main() -> dict:\n    return 5\n"
    case("not a dict", lambda: run(CodeLanguage.PYTHON3, noresult, {}),
         lambda got, err: (isinstance(err, ValueError) and "Result must be a dict" in str(err), repr(err)[:200]))
    deps = CodeExecutor
    if hasattr(deps, "list_dependencies"):
        case("dependencies", lambda: deps.list_dependencies("python3"),
             lambda got, err: (bool(got), "%d packages" % len(got or [])))

    def burst():
        with ThreadPoolExecutor(args.burst) as ex:
            futs = [ex.submit(run, CodeLanguage.PYTHON3, "def main(i: int) -> dict:\n    return {'r': i * 2}\n", {"i": i})
                    for i in range(args.burst)]
            return [f.result() for f in futs]

    case("burst of %d" % args.burst, burst,
         lambda got, err: (err is None and got == [{"r": 2 * i} for i in range(args.burst)], repr(err)[:300] if err else "all answered"))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
