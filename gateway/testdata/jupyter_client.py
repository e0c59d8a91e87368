"""Real Jupyter clients against codegw's kernel API, driven by the Go tests.

notebook BASE TOKEN GATEWAY GWKEY: BASE is a Notebook 6.4 server started
    with --gateway-url=GATEWAY; everything goes through the notebook
    server's own REST and websocket API. GATEWAY and GWKEY are used only to
    check that the kernel lives on the gateway.
openwebui BASE TOKEN: the calls Open WebUI's code interpreter makes,
    straight to the gateway with ?token=.

Prints one JSON object with what was observed; exits non-zero on failure.
"""

import json
import sys
import threading
import time
import uuid

import requests
import websocket


def msg(msg_type, content, channel="shell", parent=None, date=""):
    return {
        "header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "t",
                   "session": SESSION, "date": date, "version": "5.3"},
        "parent_header": parent or {}, "metadata": {}, "content": content, "channel": channel,
    }


SESSION = uuid.uuid4().hex


class Kernel:
    def __init__(self, ws_url, header=None):
        self.ws = websocket.create_connection(ws_url, header=header or [], timeout=120)

    def execute(self, code, on_input=None):
        """Runs code; returns (reply content, iopub messages)."""
        m = msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                    "user_expressions": {}, "allow_stdin": on_input is not None,
                                    "stop_on_error": True})
        self.ws.send(json.dumps(m))
        mid = m["header"]["msg_id"]
        reply, idle, out = None, False, []
        while reply is None or not idle:
            r = json.loads(self.ws.recv())
            if r.get("parent_header", {}).get("msg_id") != mid:
                continue
            t = r["header"]["msg_type"]
            if r["channel"] == "shell" and t == "execute_reply":
                reply = r["content"]
            elif r["channel"] == "stdin" and t == "input_request":
                self.ws.send(json.dumps(msg("input_reply", {"value": on_input(r["content"]["prompt"])},
                                            channel="stdin", parent=r["header"])))
            elif r["channel"] == "iopub":
                if t == "status" and r["content"]["execution_state"] == "idle":
                    idle = True
                elif t != "status":
                    out.append(r)
        return reply, out


def result(out):
    for r in out:
        if r["header"]["msg_type"] == "execute_result":
            return r["content"]["data"]["text/plain"]
    return None


def check(cond, what):
    if not cond:
        raise SystemExit("FAILED: " + what)


def notebook(base, token, gateway, gwkey):
    s = requests.Session()
    s.headers["Authorization"] = "token " + token
    seen = {}
    specs = s.get(base + "/api/kernelspecs").json()
    check("python3" in specs["kernelspecs"], "kernelspecs through the notebook: %r" % specs)
    seen["kernelspecs"] = sorted(specs["kernelspecs"])
    km = s.post(base + "/api/kernels", json={"name": "python3"}).json()
    kid = km["id"]
    gw = requests.get(gateway + "/api/kernels", headers={"Authorization": "token " + gwkey}).json()
    check(any(k["id"] == kid for k in gw), "the notebook's kernel %s is not on the gateway: %r" % (kid, gw))
    ws = base.replace("http", "ws", 1) + "/api/kernels/%s/channels?session_id=%s" % (kid, SESSION)
    k = Kernel(ws, header=["Authorization: token " + token])

    reply, out = k.execute("import pandas as pd; x = 41")
    check(reply["status"] == "ok", "import pandas: %r" % reply)
    reply, out = k.execute("x + 1")
    seen["x+1"] = result(out)
    check(seen["x+1"] == "42", "x + 1 gave %r" % out)

    reply, out = k.execute("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()")
    pngs = [r for r in out if r["header"]["msg_type"] == "display_data" and "image/png" in r["content"]["data"]]
    seen["png_bytes"] = len(pngs[0]["content"]["data"]["image/png"]) if pngs else 0
    check(pngs, "no image/png display_data: %r" % [r["header"]["msg_type"] for r in out])

    reply, out = k.execute("name = input('who? ')\nprint('hello', name)", on_input=lambda p: "notebook")
    text = "".join(r["content"].get("text", "") for r in out if r["header"]["msg_type"] == "stream")
    seen["input"] = text
    check(text == "hello notebook\n", "input(): %r" % text)

    def interrupt():
        time.sleep(1.5)
        r = s.post(base + "/api/kernels/%s/interrupt" % kid, json={})
        seen["interrupt_status"] = r.status_code
    th = threading.Thread(target=interrupt)
    th.start()
    t0 = time.time()
    reply, out = k.execute("import time; time.sleep(100)")
    th.join()
    seen["interrupt"] = reply.get("ename")
    seen["interrupt_seconds"] = round(time.time() - t0, 2)
    check(reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", "interrupt: %r" % reply)

    r = s.post(base + "/api/kernels/%s/restart" % kid, json={})
    check(r.status_code == 200, "restart: %d %s" % (r.status_code, r.text))
    k.ws.close()
    k = Kernel(ws, header=["Authorization: token " + token])
    reply, out = k.execute("'x' in dir()")
    seen["x_after_restart"] = result(out)
    check(seen["x_after_restart"] == "False", "state survived the restart: %r" % out)

    k.ws.close()
    r = s.delete(base + "/api/kernels/" + kid)
    seen["shutdown_status"] = r.status_code
    check(r.status_code == 204, "shutdown: %d" % r.status_code)
    gw = requests.get(gateway + "/api/kernels", headers={"Authorization": "token " + gwkey}).json()
    check(not any(k["id"] == kid for k in gw), "kernel still on the gateway after shutdown")
    return seen


def openwebui(base, token):
    # As open_webui/utils/code_interpreter.py: POST /api/kernels?token=,
    # the channels websocket with ?token=, channel "shell", an empty date,
    # read until status idle, then DELETE.
    seen = {}
    r = requests.post(base + "/api/kernels?token=" + token, json={"name": "python3"})
    check(r.status_code == 201, "start: %d %s" % (r.status_code, r.text))
    kid = r.json()["id"]
    ws = websocket.create_connection(base.replace("http", "ws", 1) + "/api/kernels/%s/channels?token=%s" % (kid, token))
    m = msg("execute_request", {"code": "print('hi'); 6 * 7", "silent": False, "store_history": True,
                                "user_expressions": {}, "allow_stdin": False, "stop_on_error": True, "execution_count": 0})
    ws.send(json.dumps(m))
    stdout, res = "", None
    while True:
        r = json.loads(ws.recv())
        if r.get("parent_header", {}).get("msg_id") != m["header"]["msg_id"]:
            continue
        t = r["msg_type"]
        if t == "stream":
            stdout += r["content"]["text"]
        elif t == "execute_result":
            res = r["content"]["data"].get("text/plain")
        elif t == "status" and r["content"]["execution_state"] == "idle":
            break
    ws.close()
    seen["stdout"], seen["result"] = stdout, res
    check(stdout == "hi\n" and res == "42", "openwebui run: %r %r" % (stdout, res))
    r = requests.delete(base + "/api/kernels/%s?token=%s" % (kid, token))
    seen["delete_status"] = r.status_code
    check(r.status_code == 204, "delete: %d" % r.status_code)
    return seen


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "notebook":
        out = notebook(*sys.argv[2:6])
    else:
        out = openwebui(*sys.argv[2:4])
    print(json.dumps(out))
