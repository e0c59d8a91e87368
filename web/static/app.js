// The codegw playground: a reference client of the public API.
//
// Session mode: POST /api/v1/sessions, then the websocket
// /api/v1/sessions/{id}/ws?token=KEY (events below), reconnecting with
// ?last_seq=N after a drop so no output is lost. Stateless mode: POST
// /api/v1/execute with Accept: application/x-ndjson, one event per line and
// the answer last. Fetches carry Authorization: Bearer KEY; browsers cannot
// set headers on a websocket, so it carries ?token=KEY.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "codegw.key";
  const SESSION_STORE = "codegw.session";

  // ---- messages for HTTP and API errors ----

  class APIError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // describe turns an API error into a sentence a person can act on.
  function describe(status, code, message) {
    const detail = message ? ` (server: ${message})` : "";
    if (code === "session_lost" || status === 410) {
      return "Session lost: the instance that held this session went away, and its variables with it. " +
        "Press Run to start a new session." + detail;
    }
    switch (status || statusOfCode[code]) {
      case 401: return "Unauthorized: the API key is missing or wrong. Enter a valid key above and save it." + detail;
      case 403: return "Forbidden: this key may not do that." + detail;
      case 404: return "Not found: the session expired, was deleted, or belongs to another key. Press Run to start a new one." + detail;
      case 413: return "Too large: the code, upload or request exceeds the server's limit." + detail;
      case 429: return "Too many requests: the execution queue or the session limit is full. Wait a moment and try again." + detail;
      case 503: return "Service unavailable: no worker is free or the session store is down. Try again shortly." + detail;
    }
    return (message || "request failed") + (code ? ` [${code}]` : "") + (status ? ` (HTTP ${status})` : "");
  }
  const statusOfCode = {
    unauthorized: 401, forbidden: 403, not_found: 404, too_large: 413, limit: 429,
    busy: 503, unavailable: 503, session_lost: 410,
  };

  function banner(text, kind) {
    const b = $("banner");
    if (!text) { b.hidden = true; b.textContent = ""; return; }
    b.hidden = false;
    b.className = kind || "";
    b.textContent = text;
  }

  // ---- API ----

  function key() { return localStorage.getItem(KEY_STORE) || ""; }
  function authHeaders() {
    const k = key();
    return k ? { Authorization: "Bearer " + k } : {};
  }

  async function errorOf(res) {
    let body = {};
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    return new APIError(res.status, body.code || "", body.error || res.statusText);
  }

  async function api(method, path, body) {
    const init = { method, headers: authHeaders() };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (!res.ok) throw await errorOf(res);
    return res.status === 204 ? null : res.json();
  }

  function showError(err) {
    if (err instanceof APIError) banner(describe(err.status, err.code, err.message));
    else banner("Network error: " + err.message + ". Is the gateway running?");
  }

  // ---- cells: one per execution ----

  const cells = new Map(); // execution id -> Cell
  let cellSeq = 0;

  const stripANSI = (s) => s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "");

  class Cell {
    constructor(id, code, mode) {
      this.id = id;
      this.el = document.createElement("div");
      this.el.className = "cell";
      this.el.dataset.id = id;
      this.el.dataset.mode = mode;
      const head = document.createElement("div");
      head.className = "cell-head";
      this.count = document.createElement("span");
      this.count.className = "count";
      this.count.textContent = "In [ ]";
      this.dur = document.createElement("span");
      this.dur.className = "duration";
      this.st = document.createElement("span");
      this.st.className = "st";
      this.st.textContent = "sending";
      head.append(this.count, this.dur, this.st);
      const pre = document.createElement("pre");
      pre.className = "code";
      pre.textContent = code;
      this.out = document.createElement("div");
      this.out.className = "out";
      this.el.append(head, pre, this.out);
      this.done = false;
      this.started = performance.now();
      $("cells").prepend(this.el);
    }

    status(text, cls) {
      this.st.textContent = text;
      this.st.className = "st " + (cls || "");
      this.el.dataset.status = text;
    }

    stream(name, text) {
      const last = this.out.lastElementChild;
      const cls = name === "stderr" ? "stderr" : "stdout";
      if (last && last.tagName === "PRE" && last.classList.contains(cls)) {
        last.textContent += text;
        return;
      }
      const pre = document.createElement("pre");
      pre.className = cls;
      pre.textContent = text;
      this.out.append(pre);
    }

    output(o) {
      if (!o) return;
      const mime = o.mime || "";
      if (mime.startsWith("image/")) {
        const img = document.createElement("img");
        img.alt = o.text || mime;
        if (o.url) img.src = o.url;
        else if (mime === "image/svg+xml") img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(o.data || "");
        else img.src = `data:${mime};base64,${o.data || ""}`;
        this.out.append(img);
      } else if (mime === "text/html") {
        this.out.append(htmlFrame(o.data || ""));
      } else {
        const pre = document.createElement("pre");
        pre.className = "rich";
        pre.dataset.mime = mime;
        pre.textContent = o.data || o.text || "";
        this.out.append(pre);
      }
    }

    error(ev) {
      const pre = document.createElement("pre");
      pre.className = "traceback";
      const tb = (ev.traceback || []).map(stripANSI).join("\n");
      pre.textContent = tb || `${ev.ename}: ${ev.evalue}`;
      this.out.append(pre);
    }

    note(text) {
      const p = document.createElement("div");
      p.className = "note";
      p.textContent = text;
      this.out.append(p);
    }

    // ask shows an input() prompt; reply sends the answer.
    ask(prompt, password, reply) {
      const form = document.createElement("form");
      form.className = "input-form";
      const label = document.createElement("span");
      label.textContent = prompt;
      const input = document.createElement("input");
      input.type = password ? "password" : "text";
      input.className = "input-reply";
      const btn = document.createElement("button");
      btn.type = "submit";
      btn.textContent = "Send";
      form.append(label, input, btn);
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        reply(input.value);
        const echo = document.createElement("pre");
        echo.className = "stdout input-echo";
        echo.textContent = prompt + (password ? "••••" : input.value) + "\n";
        form.replaceWith(echo);
      });
      this.out.append(form);
      input.focus();
    }

    finish(status, count, duration, error) {
      this.done = true;
      this.el.dataset.done = "1";
      this.status(status || "done", status === "ok" ? "ok" : "bad");
      if (count) this.count.textContent = `In [${count}]`;
      if (duration !== undefined) this.dur.textContent = `${Number(duration).toFixed(3)} s`;
      if (status === "rejected" || (error && !this.out.querySelector(".traceback") && status !== "ok")) {
        this.note(error || "rejected");
      }
      for (const f of this.out.querySelectorAll(".input-form")) {
        f.replaceWith(Object.assign(document.createElement("div"), { className: "note", textContent: "(input no longer awaited)" }));
      }
      updateButtons();
    }

    fail(message) {
      this.done = true;
      this.el.dataset.done = "1";
      this.status("failed", "bad");
      this.note(message);
      updateButtons();
    }
  }

  // htmlFrame renders html (a pandas table, say) in a sandboxed iframe: no
  // scripts, no forms, no navigation of the page. allow-same-origin without
  // allow-scripts only lets this page measure the content to size it.
  function htmlFrame(html) {
    const f = document.createElement("iframe");
    f.setAttribute("sandbox", "allow-same-origin");
    f.className = "html-output";
    f.srcdoc = '<!doctype html><html><head><meta charset="utf-8">' +
      '<link rel="stylesheet" href="/playground/frame.css"></head><body>' + html + "</body></html>";
    f.addEventListener("load", () => {
      try {
        const body = f.contentDocument.body;
        f.style.height = Math.ceil(body.getBoundingClientRect().height + 8) + "px";
      } catch (e) { f.style.height = "20em"; }
    });
    return f;
  }

  function cellFor(id) {
    let c = cells.get(id);
    if (!c) {
      c = new Cell(id, "(output of an execution started elsewhere)", "session");
      cells.set(id, c);
    }
    return c;
  }

  // apply renders one event into a cell; shared by both modes.
  function apply(cell, ev, reply) {
    switch (ev.type) {
      case "status":
        if (ev.state === "busy") cell.status("running");
        // A cell that has started never goes back to waiting.
        else if (ev.state === "queued" && cell.el.dataset.status !== "running") cell.status("queued");
        break;
      case "stream": cell.stream(ev.name, ev.text || ""); break;
      case "display":
      case "result": cell.output(ev.output); break;
      case "error": cell.error(ev); break;
      case "input_request":
        if (reply) cell.ask(ev.prompt || "", ev.password, reply);
        else cell.note("input() needs session mode: stateless executions cannot be answered.");
        break;
      case "file": addFile(ev.file); break;
      case "done": cell.finish(ev.status, ev.execution_count, ev.duration, ev.error || ev.reason); break;
    }
  }

  // ---- output files ----

  const fileItems = new Map(); // original name -> <li>
  function addFile(f) {
    if (!f || !f.url) return;
    const name = f.original_name || f.filename;
    let li = fileItems.get(name);
    if (!li) {
      li = document.createElement("li");
      fileItems.set(name, li);
      $("files").append(li);
    }
    li.textContent = "";
    const a = document.createElement("a");
    a.href = f.url;
    a.download = name;
    a.textContent = name;
    a.className = "file-link";
    li.append(a, ` (${f.size_bytes} bytes)`);
  }

  // ---- session mode ----

  const sess = {
    id: sessionStorage.getItem(SESSION_STORE) || "",
    ws: null,
    open: false,
    lastSeq: 0,
    replayAll: false,
    want: false,   // keep the socket open (reconnect on drops)
    attempts: 0,
    timer: 0,
    pending: [],   // messages waiting for the socket
    waiting: null, // the cell whose execute was sent last and has no event yet
    reconnects: 0,
  };
  const sent = []; // types of the messages sent, for tests
  if (sess.id) sess.replayAll = true; // a reload: replay what is buffered

  function conn(text, cls) {
    const c = $("conn");
    c.textContent = text;
    c.className = "conn " + (cls || "");
  }

  async function ensureSession() {
    if (sess.id) return sess.id;
    const info = await api("POST", "/api/v1/sessions", {});
    sess.id = info.id;
    sess.lastSeq = 0;
    sess.replayAll = false;
    sessionStorage.setItem(SESSION_STORE, sess.id);
    $("sessinfo").textContent = `${info.id} (idle timeout ${info.idle_timeout}s)`;
    return sess.id;
  }

  function connect() {
    clearTimeout(sess.timer);
    if (!sess.id || sess.ws) return;
    const q = new URLSearchParams();
    if (key()) q.set("token", key());
    if (sess.lastSeq > 0 || sess.replayAll) q.set("last_seq", String(sess.lastSeq));
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/api/v1/sessions/${encodeURIComponent(sess.id)}/ws?${q}`);
    sess.ws = ws;
    conn(sess.attempts ? `reconnecting (attempt ${sess.attempts})…` : "connecting…");
    ws.onopen = () => {
      if (sess.ws !== ws) return;
      sess.open = true;
      if (sess.attempts) {
        sess.reconnects++;
        banner("Reconnected: missed output was replayed.", "info");
      }
      sess.attempts = 0;
      sess.replayAll = false;
      conn("connected", "ok");
      $("sessinfo").textContent = sess.id;
      for (const m of sess.pending.splice(0)) ws.send(JSON.stringify(m));
      updateButtons();
    };
    ws.onmessage = (m) => {
      if (sess.ws !== ws) return;
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      onEvent(ev);
    };
    ws.onclose = () => {
      if (sess.ws !== ws) return;
      sess.ws = null;
      sess.open = false;
      updateButtons();
      if (!sess.want || !sess.id) { conn("disconnected"); return; }
      conn("connection lost; reconnecting…", "bad");
      scheduleReconnect();
    };
  }

  // scheduleReconnect retries with backoff; before each try it asks the
  // REST API why the socket may have gone, since a browser websocket does
  // not reveal the HTTP status of a refused upgrade.
  function scheduleReconnect() {
    sess.attempts++;
    const delay = Math.min(5000, 200 * 2 ** Math.min(sess.attempts - 1, 5));
    sess.timer = setTimeout(async () => {
      if (!sess.id || sess.ws) return;
      try {
        await api("GET", "/api/v1/sessions/" + encodeURIComponent(sess.id));
      } catch (err) {
        if (err instanceof APIError && [401, 403, 404, 410].includes(err.status)) {
          showError(err);
          dropSession("gone");
          return;
        }
        conn(`offline; retrying (attempt ${sess.attempts})…`, "bad");
        scheduleReconnect();
        return;
      }
      connect();
    }, delay);
  }

  function dropSession(why) {
    sess.want = false;
    clearTimeout(sess.timer);
    const ws = sess.ws;
    sess.ws = null;
    sess.open = false;
    if (ws) ws.close();
    sess.id = "";
    sess.lastSeq = 0;
    sess.pending = [];
    sessionStorage.removeItem(SESSION_STORE);
    for (const c of cells.values()) {
      if (!c.done && c.el.dataset.mode === "session") c.fail(`session ${why}`);
    }
    conn("no session");
    $("sessinfo").textContent = "none: the next run or upload creates one.";
    updateButtons();
  }

  function send(msg) {
    sent.push(msg.type);
    sess.want = true;
    if (sess.open) sess.ws.send(JSON.stringify(msg));
    else { sess.pending.push(msg); connect(); }
  }

  function onEvent(ev) {
    if (ev.seq) {
      if (ev.seq <= sess.lastSeq) return; // already seen (replay overlap)
      sess.lastSeq = ev.seq;
    }
    if (ev.execution_id && sess.waiting && sess.waiting.id === ev.execution_id) sess.waiting = null;
    switch (ev.type) {
      case "status":
        if (ev.state === "restarted") {
          banner("Kernel restarted: variables are gone, files are kept.", "info");
          for (const c of cells.values()) if (!c.done && c.el.dataset.mode === "session") c.finish("restarted");
        } else if (ev.state === "restored" && ev.restored) {
          const r = ev.restored;
          const skipped = (r.skipped || []).map((s) => `${s.name} (${s.reason})`).join(", ");
          banner(`Session restored: ${r.message}. ${(r.variables || []).length} variables back` +
            (skipped ? `; not restored: ${skipped}.` : "."), "info");
        }
        break;
      case "closed":
        if (/session is paused/.test(ev.reason || "")) {
          // Paused, not gone: the next run reconnects, which resumes it.
          banner("The session was paused: " + ev.reason + ". Press Run to resume it with its variables.", "info");
          const ws = sess.ws;
          sess.ws = null;
          sess.open = false;
          sess.want = false;
          clearTimeout(sess.timer);
          if (ws) ws.close();
          conn("paused");
          updateButtons();
          return;
        }
        banner("The session ended: " + (ev.reason || "closed") + ". Press Run to start a new one.", "info");
        dropSession("closed");
        return;
      case "gap":
        banner("Some output was lost while disconnected: the server's replay buffer no longer held it.");
        return;
      case "error_response": {
        const msg = describe(statusOfCode[ev.code], ev.code, ev.error);
        if (sess.waiting && !sess.waiting.done) { sess.waiting.fail(msg); sess.waiting = null; }
        banner(msg);
        if (ev.code === "session_lost" || ev.code === "not_found") dropSession("lost");
        return;
      }
    }
    if (!ev.execution_id) return;
    apply(cellFor(ev.execution_id), ev, (value) => send({ type: "input_reply", value }));
  }

  async function runSession(code) {
    await ensureSession();
    const id = `p${Date.now().toString(36)}${++cellSeq}`;
    const cell = new Cell(id, code, "session");
    cells.set(id, cell);
    sess.waiting = cell;
    send({ type: "execute", id, code });
    cell.status(sess.open ? "sent" : "waiting for connection");
    updateButtons();
  }

  // ---- stateless mode ----

  let statelessAbort = null;

  async function runStateless(code) {
    const cell = new Cell(`s${++cellSeq}`, code, "stateless");
    cells.set(cell.id, cell);
    statelessAbort = new AbortController();
    updateButtons();
    try {
      const res = await fetch("/api/v1/execute", {
        method: "POST",
        headers: { ...authHeaders(), "Content-Type": "application/json", Accept: "application/x-ndjson" },
        body: JSON.stringify({ code }),
        signal: statelessAbort.signal,
      });
      if (!res.ok) {
        const err = await errorOf(res);
        cell.fail(describe(err.status, err.code, err.message));
        showError(err);
        return;
      }
      cell.status("running");
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (value) buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line) statelessLine(cell, JSON.parse(line));
        }
        if (done) break;
      }
      if (!cell.done) cell.fail("the stream ended without an answer");
    } catch (err) {
      if (err.name === "AbortError") cell.fail("stopped reading; the server still finishes the execution within its timeout");
      else cell.fail("network error: " + err.message);
    } finally {
      statelessAbort = null;
      updateButtons();
    }
  }

  function statelessLine(cell, ev) {
    if (ev.type === "response") {
      for (const f of ev.files || []) addFile(f);
      cell.finish(ev.status, ev.execution_count, ev.execution_time, ev.error);
    } else if (ev.type === "error_response") {
      cell.fail(describe(statusOfCode[ev.code], ev.code, ev.error));
      banner(describe(statusOfCode[ev.code], ev.code, ev.error));
    } else {
      apply(cell, ev, null);
    }
  }

  // ---- uploads ----

  async function upload(fileList) {
    const list = Array.from(fileList || []);
    if (!list.length) return;
    if ($("mode").value !== "session") {
      banner("Uploads go into a session's /code/input: switch to session mode.", "info");
      return;
    }
    try {
      await ensureSession();
      const form = new FormData();
      for (const f of list) form.append("file", f, f.name);
      const res = await api("POST", `/api/v1/sessions/${encodeURIComponent(sess.id)}/files`, form);
      for (const f of res.files || []) {
        const li = document.createElement("li");
        li.className = "input-file";
        li.textContent = `/code/input/${f.name} (${f.size_bytes} bytes)`;
        $("inputs").append(li);
      }
      sess.want = true;
      connect();
    } catch (err) {
      showError(err);
    }
  }

  // ---- wiring ----

  let editor;

  function running() {
    if (statelessAbort) return true;
    for (const c of cells.values()) if (!c.done) return true;
    return false;
  }

  function updateButtons() {
    const session = $("mode").value === "session";
    $("interrupt").disabled = session ? !(sess.id && running()) : !statelessAbort;
    $("restart").disabled = !session || !sess.id;
    $("newsession").disabled = !session;
  }

  async function run() {
    banner("");
    const code = editor.getValue();
    if (!code.trim()) return;
    try {
      if ($("mode").value === "session") await runSession(code);
      else await runStateless(code);
    } catch (err) {
      showError(err);
      if (err instanceof APIError && (err.status === 404 || err.status === 410)) dropSession("gone");
    }
  }

  const sample = [
    "import time",
    "for i in range(3):",
    "    print('line', i)",
    "    time.sleep(0.5)",
    "",
    "import pandas as pd, matplotlib.pyplot as plt",
    "df = pd.DataFrame({'x': range(5), 'y': [v * v for v in range(5)]})",
    "df.plot(x='x', y='y')",
    "plt.show()",
    "df",
  ].join("\n");

  function init() {
    const k = $("key");
    k.value = key();
    $("keyform").addEventListener("submit", (e) => {
      e.preventDefault();
      localStorage.setItem(KEY_STORE, k.value.trim());
      banner("Key saved in this browser's local storage.", "info");
      if (sess.ws) { const ws = sess.ws; sess.ws = null; sess.open = false; ws.close(); connect(); }
    });

    const host = $("editor");
    if (window.CodeGWEditor) {
      editor = window.CodeGWEditor.create(host, sample, run);
    } else { // the bundle failed to load: a plain textarea still works
      const ta = document.createElement("textarea");
      ta.value = sample;
      ta.spellcheck = false;
      ta.addEventListener("keydown", (e) => { if (e.key === "Enter" && e.shiftKey) { e.preventDefault(); run(); } });
      host.append(ta);
      editor = { getValue: () => ta.value, setValue: (v) => { ta.value = v; }, focus: () => ta.focus() };
    }

    $("run").addEventListener("click", run);
    $("interrupt").addEventListener("click", () => {
      if ($("mode").value === "session") send({ type: "interrupt" });
      else if (statelessAbort) statelessAbort.abort();
    });
    $("restart").addEventListener("click", () => { if (sess.id) send({ type: "restart" }); });
    $("newsession").addEventListener("click", async () => {
      const old = sess.id;
      dropSession("replaced");
      fileItems.clear();
      $("files").textContent = "";
      $("inputs").textContent = "";
      if (old) api("DELETE", "/api/v1/sessions/" + encodeURIComponent(old)).catch(() => {});
      try { await ensureSession(); sess.want = true; connect(); } catch (err) { showError(err); }
    });
    $("clear").addEventListener("click", () => {
      for (const [id, c] of cells) if (c.done) { c.el.remove(); cells.delete(id); }
    });
    $("mode").addEventListener("change", updateButtons);

    const dz = $("dropzone");
    const stop = (e) => { e.preventDefault(); e.stopPropagation(); };
    for (const t of ["dragenter", "dragover"]) document.addEventListener(t, (e) => { stop(e); dz.classList.add("over"); });
    document.addEventListener("dragleave", (e) => { if (e.target === document.documentElement || e.target === dz) dz.classList.remove("over"); });
    document.addEventListener("drop", (e) => { stop(e); dz.classList.remove("over"); upload(e.dataTransfer && e.dataTransfer.files); });
    $("filepick").addEventListener("change", (e) => { upload(e.target.files); e.target.value = ""; });

    if (sess.id) { sess.want = true; connect(); }
    updateButtons();
  }

  // The page's state, for the end-to-end test and for curious developers.
  window.playground = {
    get editor() { return editor; },
    get session() { return { id: sess.id, lastSeq: sess.lastSeq, open: sess.open, reconnects: sess.reconnects, sent: sent.slice() }; },
    run,
    describe,
  };

  init();
})();
