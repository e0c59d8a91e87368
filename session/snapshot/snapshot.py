# The kernel side of session snapshots. The gateway runs this file's text as
# a silent execution in the session's own kernel, followed by one call:
#
#   _codegw_snapshot(dir, limit)   writes dir/ns.bin (the user namespace),
#                                  dir/code.tar (the /code tree) and
#                                  dir/report.json
#   _codegw_restore(dir)           loads them back into a fresh kernel and
#                                  writes dir/report.json
#
# Unpickling runs code: it happens only here, in a sandboxed kernel of the
# snapshot's owner, never in the gateway. Everything it defines is deleted
# from the namespace afterwards.


def _codegw_snapshot(out, limit, root="/code"):
    import io, json, os, socket, struct, sys, tarfile, threading, types

    import dill

    ip = get_ipython()  # noqa: F821 (IPython's builtin)
    ns = ip.user_ns
    hidden = ip.user_ns_hidden
    os.makedirs(out, exist_ok=True)
    os.chmod(out, 0o755)
    for f in ("ns.bin", "code.tar", "report.json"):
        try:
            os.unlink(os.path.join(out, f))
        except FileNotFoundError:
            pass
    unsaveable = (
        (io.IOBase, "an open file"),
        (socket.socket, "a socket"),
        (threading.Thread, "a thread"),
        (types.GeneratorType, "a generator"),
        (types.CoroutineType, "a coroutine"),
        (types.AsyncGeneratorType, "an async generator"),
        (types.FrameType, "a frame"),
    )
    saved, skipped, modules = [], [], {}
    total = 0
    over = False
    with open(os.path.join(out, "ns.bin"), "wb") as f:
        os.fchmod(f.fileno(), 0o644)
        for name in sorted(ns):
            if name.startswith("_") or (name in hidden and ns[name] is hidden[name]):
                continue
            value = ns[name]
            if isinstance(value, types.ModuleType):
                modules[name] = value.__name__
                continue
            reason = next((what for t, what in unsaveable if isinstance(value, t)), None)
            if reason:
                skipped.append({"name": name, "reason": reason + " (" + type(value).__name__ + ") cannot be saved"})
                continue
            # Pickled straight into the file (no copy of a large value in
            # memory); a value that fails is cut off again.
            key = name.encode()
            start = f.tell()
            f.write(struct.pack("<IQ", len(key), 0))
            f.write(key)
            try:
                dill.dump(value, f, protocol=5)
            except BaseException as e:  # noqa: BLE001 (anything a reduce may raise)
                f.seek(start)
                f.truncate()
                if isinstance(e, KeyboardInterrupt):
                    raise
                skipped.append({"name": name, "reason": "cannot be serialized: " + type(e).__name__ + ": " + str(e)[:200]})
                continue
            end = f.tell()
            total = end
            if total > limit:
                over = True
                break
            f.seek(start)
            f.write(struct.pack("<IQ", len(key), end - start - 12 - len(key)))
            f.seek(end)
            saved.append(name)
    env = dict(os.environ)
    state = {
        "cwd": os.getcwd(),
        "env": env,
        "execution_count": ip.execution_count,
        "modules": modules,
    }
    code_bytes = 0
    if not over:
        skip_dir = os.path.realpath(out)
        with tarfile.open(os.path.join(out, "code.tar"), "w", format=tarfile.PAX_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) != skip_dir)
                rel = os.path.relpath(dirpath, root)
                if rel != ".":
                    tar.add(dirpath, arcname=rel, recursive=False)
                for fn in sorted(filenames):
                    p = os.path.join(dirpath, fn)
                    if os.path.islink(p) or not os.path.isfile(p):
                        continue
                    code_bytes += os.path.getsize(p) + 1024
                    if total + code_bytes > limit:
                        over = True
                        break
                    tar.add(p, arcname=os.path.normpath(os.path.join(rel, fn)), recursive=False)
                if over:
                    break
        os.chmod(os.path.join(out, "code.tar"), 0o644)
    report = {"saved": saved, "skipped": skipped, "modules": sorted(modules), "state": state, "over_limit": over}
    with open(os.path.join(out, "report.json"), "w") as f:
        os.fchmod(f.fileno(), 0o644)
        json.dump(report, f)


def _codegw_restore(src, root="/code"):
    import importlib, json, os, struct, tarfile

    import dill

    ip = get_ipython()  # noqa: F821
    ns = ip.user_ns
    with open(os.path.join(src, "state.json")) as f:
        state = json.load(f)
    restored, skipped = [], []
    # The /code tree first: variables may refer to its files.
    with tarfile.open(os.path.join(src, "code.tar")) as tar:
        for m in tar:
            name = os.path.normpath(m.name)
            if name.startswith(("/", "..")) or name == "." or ".." in name.split(os.sep):
                continue
            dest = os.path.join(root, name)
            if m.isdir():
                os.makedirs(dest, exist_ok=True)
            elif m.isfile():
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                if os.path.islink(dest):
                    os.unlink(dest)
                with tar.extractfile(m) as r, open(dest, "wb") as w:
                    while True:
                        b = r.read(1 << 20)
                        if not b:
                            break
                        w.write(b)
                os.utime(dest, (m.mtime, m.mtime))
    for name, mod in state.get("modules", {}).items():
        try:
            ns[name] = importlib.import_module(mod)
            restored.append(name)
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            skipped.append({"name": name, "reason": "module " + mod + " did not import: " + type(e).__name__})
    with open(os.path.join(src, "ns.bin"), "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                break
            klen, dlen = struct.unpack("<IQ", head)
            name = f.read(klen).decode()
            start = f.tell()
            try:
                # Read from the file itself: no copy of a large value.
                ns[name] = dill.load(f)
                restored.append(name)
            except BaseException as e:  # noqa: BLE001
                if isinstance(e, KeyboardInterrupt):
                    raise
                skipped.append({"name": name, "reason": "cannot be restored: " + type(e).__name__ + ": " + str(e)[:200]})
            f.seek(start + dlen)
    keep = os.environ
    # What each kernel sets for itself is not carried over.
    kernel_env = {"HOME", "PWD", "OLDPWD", "HOSTNAME", "MPLCONFIGDIR", "TMPDIR", "PATH", "PYTHONPATH"}
    for k, v in state.get("env", {}).items():
        if k.startswith(("JPY_", "CODEGW_", "EXECUTOR_")) or k in kernel_env or keep.get(k) == v:
            continue
        keep[k] = v
    try:
        os.chdir(state.get("cwd") or root)
    except OSError:
        pass
    n = state.get("execution_count")
    if isinstance(n, int) and n > 0:
        ip.execution_count = n
    with open(os.path.join(src, "report.json"), "w") as f:
        json.dump({"saved": restored, "skipped": skipped}, f)
