// The function runner: loads one function and serves its invocations, one at a time, on a port inside
// the sandbox that the platform reaches through the sandbox agent. Embedded in the vibebase binary.
//
// Request: POST /invoke, header x-vb-meta (base64 JSON: method, url, headers, query, env, context),
// body = the caller's body. Answer: a JSON envelope {ok, status, headers, body (base64), stdout, stderr}
// or {ok: false, kind, message, stdout, stderr}.
import http from 'node:http';
import fs from 'node:fs';
import { pathToFileURL } from 'node:url';

const [entry, portText, logLimitText] = process.argv.slice(2);
const LOG_LIMIT = Number(logLimitText) || 65536;

// Output during an invocation is kept (bounded) for its log; the rest is dropped, so a flood costs
// time, not memory.
let capture = null;
for (const name of ['stdout', 'stderr']) {
  const stream = process[name];
  const original = stream.write.bind(stream);
  stream.write = (chunk, encoding, callback) => {
    const done = typeof encoding === 'function' ? encoding : callback;
    if (!capture) return original(chunk, encoding, callback);
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
    const room = LOG_LIMIT - capture[name].length;
    if (room > 0) capture[name] += text.slice(0, room);
    if (text.length > room) capture.dropped[name] += text.length - Math.max(room, 0);
    if (done) done();
    return true;
  };
}

// Supabase functions are written for Deno: `Deno.serve(handler)` and `Deno.env.get(name)` work here.
let served = null;
globalThis.Deno = {
  serve(a, b) {
    served = typeof a === 'function' ? a : typeof b === 'function' ? b : a?.handler;
    return { finished: new Promise(() => {}), shutdown: async () => {}, ref() {}, unref() {} };
  },
  env: {
    get: (k) => process.env[k],
    has: (k) => k in process.env,
    toObject: () => ({ ...process.env }),
  },
};

class Failure extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

async function load() {
  let mod;
  try {
    mod = await import(pathToFileURL(entry).href);
  } catch (e) {
    // `export default` in a .js file without "type": "module": load it as ESM.
    const esm = e instanceof SyntaxError && /\b(export|import)\b/.test(String(e.message));
    if (!esm || entry.endsWith('.mjs')) throw e;
    const copy = entry.replace(/\.c?js$/, '') + '.vb-esm.mjs';
    fs.copyFileSync(entry, copy);
    mod = await import(pathToFileURL(copy).href);
  }
  if (served) return { style: 'web', fn: served };
  const d = mod.default;
  if (typeof d === 'function') return { style: 'web', fn: d };
  if (d && typeof d.fetch === 'function') return { style: 'web', fn: (req) => d.fetch(req) };
  const main = typeof mod.main === 'function' ? mod.main : d && typeof d.main === 'function' ? d.main : null;
  if (main) return { style: 'event', fn: main };
  throw new Error(
    'the function exports no handler: use `export default async (req) => Response` or `exports.main = async (event, context) => result`',
  );
}

let handler = null;
let loadError = null;
try {
  handler = await load();
} catch (e) {
  loadError = e;
}

function describe(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? `an object (${v.constructor?.name ?? 'Object'})` : `a ${typeof v}`;
}

function eventOf(body, meta) {
  const text = body.toString('utf8');
  if (text.trim() === '') return { ...meta.query };
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function run(meta, body) {
  if (loadError) throw new Failure('load_failed', String(loadError?.stack ?? loadError));
  if (handler.style === 'web') {
    const init = { method: meta.method, headers: meta.headers };
    if (meta.method !== 'GET' && meta.method !== 'HEAD') init.body = body;
    const res = await handler.fn(new Request(meta.url, init), meta.context);
    if (!(res instanceof Response)) {
      throw new Failure('invalid_result', `the handler returned ${describe(res)}, not a Response`);
    }
    const bytes = Buffer.from(await res.arrayBuffer());
    return { status: res.status, headers: [...res.headers], body: bytes.toString('base64') };
  }
  const result = await handler.fn(eventOf(body, meta), meta.context);
  let json;
  try {
    json = JSON.stringify(result === undefined ? null : result);
  } catch (e) {
    throw new Failure('invalid_result', `the result is not JSON: ${e.message}`);
  }
  if (json === undefined) throw new Failure('invalid_result', `the result is not JSON: ${describe(result)}`);
  return {
    status: 200,
    headers: [['content-type', 'application/json']],
    body: Buffer.from(json).toString('base64'),
  };
}

process.on('uncaughtException', (e) => process.stderr.write(`uncaught: ${e?.stack ?? e}\n`));
process.on('unhandledRejection', (e) => process.stderr.write(`unhandled rejection: ${e?.stack ?? e}\n`));

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const meta = JSON.parse(Buffer.from(req.headers['x-vb-meta'] ?? '', 'base64').toString('utf8'));
  const saved = {};
  for (const [k, v] of Object.entries(meta.env)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  capture = { stdout: '', stderr: '', dropped: { stdout: 0, stderr: 0 } };
  let out;
  try {
    out = { ok: true, ...(await run(meta, Buffer.concat(chunks))) };
  } catch (e) {
    const kind = e instanceof Failure ? e.kind : 'threw';
    if (kind === 'threw') process.stderr.write(`${e?.stack ?? e}\n`);
    out = { ok: false, kind, message: e instanceof Error ? e.message : String(e) };
  }
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  const { stdout, stderr, dropped } = capture;
  capture = null;
  out.stdout = dropped.stdout ? `${stdout}\n[… ${dropped.stdout} more characters dropped]\n` : stdout;
  out.stderr = dropped.stderr ? `${stderr}\n[… ${dropped.stderr} more characters dropped]\n` : stderr;
  const payload = JSON.stringify(out);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
  res.end(payload);
});
server.keepAliveTimeout = 0;
server.listen(Number(portText), '127.0.0.1', () => process.stdout.write('ready\n'));
