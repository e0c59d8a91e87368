// Drives codegw's MCP server with the official TypeScript MCP client.
// Usage: node client.mjs http URL KEY   |   node client.mjs stdio COMMAND ARGS...
// Prints "ok <check>" per passed check; exits non-zero on the first failure.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const [mode, ...args] = process.argv.slice(2);

function check(cond, what, detail) {
  if (!cond) {
    console.error(`FAIL ${what}: ${JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok ${what}`);
}

function text(res) {
  return res.content.filter((c) => c.type === "text").map((c) => c.text).join("\n");
}

async function connect(key) {
  const client = new Client({ name: "codegw-test", version: "1.0.0" });
  let transport;
  if (mode === "http") {
    transport = new StreamableHTTPClientTransport(new URL(args[0]), {
      requestInit: { headers: { Authorization: `Bearer ${key}` } },
    });
  } else {
    transport = new StdioClientTransport({ command: args[0], args: args.slice(1), env: process.env, stderr: "inherit" });
  }
  await client.connect(transport);
  return { client, transport };
}

const key = mode === "http" ? args[1] : process.env.CODEGW_KEY;
if (mode === "http") {
  let refused = false;
  try {
    const { client } = await connect("wrong-" + key);
    await client.listTools();
  } catch (e) {
    refused = /401|unauthori|unknown API key/i.test(String(e));
    if (!refused) console.error(String(e));
  }
  check(refused, "wrong key refused");
}

const { client, transport } = await connect(key);
const tools = (await client.listTools()).tools.map((t) => t.name).sort();
check(
  ["execute_python", "list_files", "read_file", "restart_kernel", "upload_file"].every((n) => tools.includes(n)),
  "list tools",
  tools,
);

const call = (name, a, opts) => client.callTool({ name, arguments: a }, undefined, opts);

let r = await call("execute_python", { code: "x = 41" });
check(!r.isError, "x = 41", r);
r = await call("execute_python", { code: "x + 1" });
check(!r.isError && text(r).includes("42"), "state carried: x + 1 = 42", r);

r = await call("execute_python", { code: "x", fresh: true });
check(r.isError && text(r).includes("NameError"), "fresh run has no x", r);

r = await call("execute_python", {
  code: "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()",
});
const img = r.content.find((c) => c.type === "image");
check(!r.isError && img && img.mimeType === "image/png", "image content", r.content);
const png = Buffer.from(img.data, "base64");
check(png.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), "PNG signature", [...png.subarray(0, 8)]);

r = await call("execute_python", { code: "1/0" });
check(r.isError === true && text(r).includes("ZeroDivisionError") && !text(r).includes("\u001b["), "1/0 is an error result with the traceback", r);

r = await call("execute_python", { code: "open('/code/output/out.csv', 'w').write('a,b\\n1,2\\n')" });
const link = r.content.find((c) => c.type === "resource_link");
check(!r.isError && link && link.uri, "file link", r.content);
if (link.uri.startsWith("file:")) {
  const body = readFileSync(fileURLToPath(link.uri), "utf8");
  check(body === "a,b\n1,2\n", "file link on disk", { uri: link.uri, body });
} else {
  const resp = await fetch(link.uri, { headers: key ? { Authorization: `Bearer ${key}` } : {} });
  const body = await resp.text();
  check(resp.ok && body === "a,b\n1,2\n", "file link downloads", { status: resp.status, body });
}
r = await call("read_file", { name: "out.csv" });
check(!r.isError && text(r) === "a,b\n1,2\n", "read_file", r);
r = await call("list_files", {});
check(r.content.some((c) => c.type === "resource_link" && c.name === "out.csv"), "list_files", r);
r = await call("upload_file", { name: "in.txt", text: "hello" });
check(!r.isError, "upload_file text", r);
r = await call("execute_python", { code: "print(open('/code/input/in.txt').read())" });
check(text(r).includes("hello"), "uploaded file readable", r);

// Progress: stdout lines arrive as progress notifications while it runs.
const lines = [];
r = await call("execute_python", { code: "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.2)" }, {
  onprogress: (p) => lines.push(p.message),
});
check(!r.isError && lines.includes("line 0") && lines.includes("line 2"), "progress notifications", lines);

// Cancellation interrupts the kernel; the kernel is usable afterwards.
const ac = new AbortController();
const t0 = Date.now();
setTimeout(() => ac.abort(), 1000);
let aborted = false;
try {
  await call("execute_python", { code: "import time\ntime.sleep(30)" }, { signal: ac.signal });
} catch (e) {
  aborted = true;
}
check(aborted, "call cancelled");
r = await call("execute_python", { code: "print('after', x)" });
check(!r.isError && text(r) === "after 41\n" && Date.now() - t0 < 20000, "kernel interrupted, state kept", { r, ms: Date.now() - t0 });

r = await call("restart_kernel", {});
check(!r.isError, "restart_kernel", r);
r = await call("execute_python", { code: "x" });
check(r.isError && text(r).includes("NameError"), "restart cleared x", r);

if (mode === "http") {
  await transport.terminateSession();
  console.log("ok session terminated");
}
await client.close();
console.log("done");
