# Regenerate: /usr/bin/python3 kernel/testdata/gen_golden.py > kernel/testdata/golden_frames.json
# Generates golden wire frames with jupyter_client's own Session, so the Go
# codec is checked against the reference implementation.
import json, sys
from jupyter_client.session import Session
s = Session(key=b"0123456789abcdef0123456789abcdef", session="golden-session", username="golden")
cases = {}
def frames(msg_type, content, parent=None, ident=None, buffers=None):
    msg = s.msg(msg_type, content, parent=parent)
    msg["header"]["date"] = "2026-11-27T00:00:00.000000Z"
    msg["header"]["msg_id"] = "msgid-" + msg_type
    fr = s.serialize(msg, ident=ident)
    if buffers:
        fr += buffers
    return fr
parent = s.msg("execute_request", {"code": "1+1"})
parent["header"]["msg_id"] = "parent-1"; parent["header"]["date"] = "2026-11-27T00:00:00.000000Z"
cases["stream"] = frames("stream", {"name": "stdout", "text": "héllo 世界\n"}, parent=parent, ident=[b"stream.stdout"])
cases["execute_reply"] = frames("execute_reply", {"status": "ok", "execution_count": 1, "user_expressions": {}}, parent=parent, ident=[b"routing-id"])
cases["display_data"] = frames("display_data", {"data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}, "metadata": {}, "transient": {}}, parent=parent, ident=[b"display_data"])
cases["status_idle"] = frames("status", {"execution_state": "idle"}, parent=parent, ident=[b"status"])
cases["with_buffers"] = frames("comm_msg", {"comm_id": "c", "data": {}}, parent=parent, ident=[], buffers=[b"\x00\x01\x02"])
out = {k: [f.hex() if isinstance(f, bytes) else f.encode().hex() for f in v] for k, v in cases.items()}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
