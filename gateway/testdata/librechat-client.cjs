// librechat-client.cjs drives codegw with LibreChat's own code tool: the
// real @librechat/agents package (createCodeExecutionTool), pointed at
// codegw by LIBRECHAT_CODE_BASEURL and LIBRECHAT_CODE_API_KEY, as LibreChat
// runs it. Uploads and downloads are made as LibreChat's server makes them
// (api/server/services/Files/Code/crud.js: multipart "file" with
// X-API-Key, GET /download/{session_id}/{file_id}). It prints one JSON
// object per line: {step, ok, content, artifact, error, ...}; the Go test
// (librechat_client_test.go) checks them.
//
// Usage: NODE_PATH=<dir with node_modules> node librechat-client.cjs
'use strict';
// The tool's own module of the package (dist/cjs/tools/CodeExecutor.cjs):
// the package's main entry also loads every LLM provider, some of whose
// optional peers npm does not install.
const path = require('path');
const { createCodeExecutionTool } = require(path.join(path.dirname(require.resolve('@librechat/agents')), 'tools', 'CodeExecutor.cjs'));

const base = process.env.LIBRECHAT_CODE_BASEURL;
const key = process.env.LIBRECHAT_CODE_API_KEY;

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function run(step, tool, input) {
  try {
    // The tool's content-and-artifact answer, as a ToolNode gets it.
    const msg = await tool.invoke({ id: 'call_' + step, name: tool.name, args: input, type: 'tool_call' });
    report({ step, ok: true, content: msg.content, artifact: msg.artifact });
    return msg.artifact;
  } catch (err) {
    report({ step, ok: false, error: String(err && err.message) });
    return undefined;
  }
}

async function upload(name, data) {
  const form = new FormData();
  form.append('entity_id', 'agent_test');
  form.append('file', new Blob([data]), name);
  const res = await fetch(base + '/upload', {
    method: 'POST', body: form,
    headers: { 'User-Agent': 'LibreChat/1.0', 'User-Id': 'user_1', 'X-API-Key': key },
  });
  const body = await res.json();
  report({ step: 'upload', ok: res.ok && body.message === 'success', status: res.status, body });
  return body;
}

async function download(step, sessionID, fileID) {
  const res = await fetch(`${base}/download/${sessionID}/${fileID}`, {
    headers: { 'User-Agent': 'LibreChat/1.0', 'X-API-Key': key },
  });
  const bytes = Buffer.from(await res.arrayBuffer());
  report({ step, ok: res.ok, status: res.status, size: bytes.length, base64: bytes.toString('base64') });
}

(async () => {
  const tool = createCodeExecutionTool({ apiKey: key });

  // A Python cell writing a CSV and a plot.
  const a = await run('py-files', tool, {
    lang: 'py',
    code: [
      'import pandas as pd, matplotlib',
      'matplotlib.use("Agg")',
      'import matplotlib.pyplot as plt',
      'df = pd.DataFrame({"x": [1, 2, 3], "y": [4, 5, 6]})',
      'df.to_csv("/mnt/data/table.csv", index=False)',
      'plt.plot(df.x, df.y); plt.savefig("/mnt/data/plot.png")',
      'print("rows", len(df))',
    ].join('\n'),
  });
  if (a && a.files) {
    for (const f of a.files) await download('download-' + f.name, a.session_id, f.id);
  }

  // A JavaScript cell.
  await run('js', tool, { lang: 'js', code: 'console.log([1, 2, 3].map((x) => x * 2).join(","), process.argv.slice(2).join(" "))', args: ['a1', 'a2'] });

  // An upload, then code that reads it (the session's files come in).
  const up = await upload('input.txt', 'hello from LibreChat\n');
  await run('read-upload', tool, { lang: 'py', session_id: up.session_id, code: 'print(open("/mnt/data/input.txt").read().upper())' });

  // Two calls in one session_id: the second sees the first's files.
  if (a && a.session_id) {
    await run('same-session', tool, { lang: 'py', session_id: a.session_id, code: 'import pandas as pd\nprint(int(pd.read_csv("table.csv").y.sum()))' });
  }

  // An error, and a language codegw has no runtime for.
  await run('error', tool, { lang: 'py', code: 'raise ValueError("bad value")' });
  await run('unsupported', tool, { lang: 'rs', code: 'fn main() {}' });
  report({ step: 'done', ok: true });
})().catch((err) => {
  report({ step: 'crash', ok: false, error: String(err && err.stack) });
  process.exit(1);
});
