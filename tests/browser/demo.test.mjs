// Issue 8's end-to-end test: `vibebase demo` builds a todo app from one prompt, played by the built-in
// replay model from its recorded transcript, through the real loop, sandboxes and backend. Then
// Debian's Chromium signs up two users on the deployed site and checks that each sees only their own
// todos (and the open count the app's cloud function computes). Three runs:
//   1. undisturbed;
//   2. the sandbox killed in the middle of the build (the transcript's recorded error branch: build
//      again in a fresh sandbox restored from the last checkpoint);
//   3. the server killed (SIGKILL) in the middle of the build and started again: the restarted server
//      resumes the session from its log, reports the build as interrupted, and the transcript's branch
//      builds again. `vibebase demo` itself rides through the restart (Last-Event-ID).
//
// The test runs its own `vibebase serve` (it has to kill and restart it). Needs VB_BIN (the binary)
// and VB_WORK (a scratch directory); VB_SERVE_ARGS (a JSON array) adds serve arguments.
//
// Recording: with VB_DEMO_RECORD=<path of transcript.json>, the same three runs go to the demo's
// author (tests/demo/author/model.mjs, a hand-scripted model) through the gateway's `record` setting,
// which writes the transcript the built-in replay model plays back (see tests/demo/README.md).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as ui from './ui.mjs';

const bin = process.env.VB_BIN;
const work = process.env.VB_WORK;
assert.ok(bin && work, 'VB_BIN and VB_WORK are required');
const record = process.env.VB_DEMO_RECORD;
const extraArgs = JSON.parse(process.env.VB_SERVE_ARGS || '[]');
const admin = `vb_admin_demo_${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
const tag = Math.random().toString(36).slice(2, 8);

let port, base, server, author, browser;
const pageErrors = [];
const children = [];

const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: p } = s.address();
      s.close(() => resolve(p));
    });
  });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts `vibebase serve` on the test's port and data dir (the same on a restart). */
async function startServer() {
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', path.join(work, 'data')];
  args.push('--no-webhook-delivery', '--dns-server', '127.0.0.1:9', '--agent-lease-seconds', '2', ...extraArgs);
  if (record) args.push('--models', path.join(work, 'models.json'));
  const log = fs.openSync(path.join(work, 'server.log'), 'a');
  server = spawn(bin, args, { env: { ...process.env, VIBEBASE_ADMIN_KEY: admin }, stdio: ['ignore', log, log] });
  children.push(server);
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`${base}/healthz`)).ok) return;
    } catch {}
    assert.equal(server.exitCode, null, 'vibebase serve exited; see server.log');
    await sleep(100);
  }
  assert.fail('vibebase serve did not become healthy');
}

async function api(method, urlPath, body) {
  const r = await fetch(base + urlPath, {
    method,
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : null };
}

/** Runs `vibebase demo`; resolves with its exit code and output. */
function demo(env, session) {
  const p = spawn(bin, ['demo', '--env', env, '--session', session], {
    env: { ...process.env, VIBEBASE_URL: base, VIBEBASE_KEY: admin },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(p);
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d) => (stdout += d));
  p.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve) => p.on('close', (code) => resolve({ code, stdout, stderr })));
}

/** Calls `onEvent` with each event of the session (waiting for it to exist) until it returns true or
 * the run ends; survives a server restart by reconnecting with Last-Event-ID. */
async function watch(env, session, onEvent) {
  let last = 0;
  for (;;) {
    let r;
    try {
      r = await fetch(`${base}/v1/envs/${env}/sessions/${session}/events`, {
        headers: { authorization: `Bearer ${admin}`, accept: 'text/event-stream', 'last-event-id': String(last) },
      });
    } catch {
      await sleep(200);
      continue;
    }
    if (r.status === 404) {
      await sleep(100);
      continue;
    }
    assert.equal(r.status, 200);
    let buf = '';
    try {
      for await (const chunk of r.body) {
        buf += Buffer.from(chunk).toString('utf8');
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const frame = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const id = /^id: ?(\d+)$/m.exec(frame);
          const data = frame
            .split('\n')
            .filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5).trimStart())
            .join('\n');
          if (!id || !data) continue;
          last = Number(id[1]);
          const event = JSON.parse(data);
          if ((await onEvent(event)) || event.type === 'RUN_FINISHED' || event.type === 'RUN_ERROR') {
            await r.body.cancel().catch(() => {});
            return;
          }
        }
      }
    } catch {
      await sleep(200);
    }
  }
}

/** Resolves once the session's build runs: its intent is logged and the command has started in the
 * sandbox (its install log exists), so the build has at least npm install and vite build ahead. */
async function duringBuild(env, session) {
  const names = new Map();
  const args = new Map();
  await watch(env, session, async (e) => {
    if (e.type === 'TOOL_CALL_START') names.set(e.toolCallId, e.toolCallName);
    if (e.type === 'TOOL_CALL_ARGS') args.set(e.toolCallId, (args.get(e.toolCallId) ?? '') + e.delta);
    // The intent is recorded (TOOL_CALL_END) right before the tool runs.
    return e.type === 'TOOL_CALL_END' && names.get(e.toolCallId) === 'bash' && args.get(e.toolCallId).includes('npm run build');
  });
  for (let i = 0; i < 400; i++) {
    const listed = await api('GET', `/v1/envs/${env}/sandboxes`);
    for (const sb of listed.json?.items ?? []) {
      const stat = await api('GET', `/v1/envs/${env}/sandboxes/${sb.id}/files/stat?path=/tmp/install.log`);
      if (stat.status === 200) return;
    }
    await sleep(25);
  }
  assert.fail('the build did not start in a sandbox');
}

/** The session's tool results, in order. */
async function toolResults(env, session) {
  const r = await fetch(`${base}/v1/envs/${env}/sessions/${session}/events?follow=false`, {
    headers: { authorization: `Bearer ${admin}`, accept: 'text/event-stream' },
  });
  const text = await r.text();
  return text
    .split('\n')
    .filter((l) => l.startsWith('data:'))
    .map((l) => JSON.parse(l.slice(5)))
    .filter((e) => e.type === 'TOOL_CALL_RESULT');
}

/** Two users on the deployed site: each sees only their own todos and their own open count. */
async function checkSite(site, label) {
  const alice = await ui.visitor(browser, site, pageErrors);
  await ui.signUp(alice, `alice-${label}-${tag}@example.com`);
  assert.deepEqual(await ui.shownTodos(alice), []);
  await ui.addTodo(alice, 'buy milk');
  await alice.getByTestId('open-count').filter({ hasText: '1 open' }).waitFor();

  const bob = await ui.visitor(browser, site, pageErrors);
  await ui.signUp(bob, `bob-${label}-${tag}@example.com`);
  assert.deepEqual(await ui.shownTodos(bob), []);
  await ui.addTodo(bob, 'walk the dog');
  await ui.addTodo(bob, 'water the plants');
  await bob.getByTestId('open-count').filter({ hasText: '2 open' }).waitFor();
  await bob.reload();
  assert.deepEqual(await ui.shownTodos(bob), ['walk the dog', 'water the plants']);

  await alice.reload();
  assert.deepEqual(await ui.shownTodos(alice), ['buy milk']);
  const milk = alice.getByRole('listitem').filter({ hasText: 'buy milk' });
  await milk.getByRole('checkbox').click();
  await milk.getByRole('checkbox', { checked: true }).waitFor();
  await alice.getByTestId('open-count').filter({ hasText: '0 open' }).waitFor();
  await alice.context().close();
  await bob.context().close();
}

/** The site URL `vibebase demo` printed. */
function siteOf(out) {
  assert.equal(out.code, 0, `vibebase demo failed:\n${out.stdout}\n${out.stderr}`);
  const m = /^Your app is live at (\S+)$/m.exec(out.stdout);
  assert.ok(m, out.stdout);
  return m[1];
}

before(async () => {
  fs.mkdirSync(work, { recursive: true });
  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  if (record) {
    fs.rmSync(record, { force: true });
    const authorPort = await freePort();
    author = spawn('node', [path.join(import.meta.dirname, '../demo/author/model.mjs'), String(authorPort)], {
      stdio: 'ignore',
    });
    children.push(author);
    const models = {
      providers: {
        author: {
          kind: 'openai',
          base_url: `http://127.0.0.1:${authorPort}/v1`,
          record: path.resolve(record),
          volatile: ['deployment ', 'http://', 'https://'],
        },
      },
      models: [{ name: 'vibebase-demo', routes: [{ provider: 'author' }] }],
    };
    fs.writeFileSync(path.join(work, 'models.json'), JSON.stringify(models));
    await sleep(300);
  }
  await startServer();
  browser = await ui.launch();
});

after(async () => {
  await browser?.close();
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
});

test('vibebase demo turns one prompt into a deployed app where each user sees only their own todos', async () => {
  const out = await demo(`demo-a-${tag}`, 'demo');
  const site = siteOf(out);
  assert.match(site, new RegExp(`^http://demo-a-${tag}\\.localhost:${port}/?$`));
  await checkSite(site, 'a');
  const results = await toolResults(`demo-a-${tag}`, 'demo');
  assert.ok(results.every((r) => !r.metadata?.isError), JSON.stringify(results.filter((r) => r.metadata?.isError)));
});

test('the demo passes with its sandbox killed in the middle of the build', async () => {
  const env = `demo-b-${tag}`;
  const running = demo(env, 'demo');
  await duringBuild(env, 'demo');
  const sandboxes = await api('GET', `/v1/envs/${env}/sandboxes`);
  assert.equal(sandboxes.status, 200, JSON.stringify(sandboxes.json));
  assert.ok(sandboxes.json.items.length > 0, 'the build runs in a sandbox');
  for (const sb of sandboxes.json.items) assert.equal((await api('DELETE', `/v1/envs/${env}/sandboxes/${sb.id}`)).status, 204);
  const site = siteOf(await running);
  const results = await toolResults(env, 'demo');
  assert.ok(results.some((r) => r.content.startsWith('the sandbox died')), 'the build reported the dead sandbox');
  assert.ok(results.some((r) => r.content.includes('build ok')), 'a fresh sandbox built the app');
  await checkSite(site, 'b');
});

test('the demo passes with the server killed in the middle of the turn and started again', async () => {
  const env = `demo-c-${tag}`;
  const running = demo(env, 'demo');
  await duringBuild(env, 'demo');
  server.kill('SIGKILL');
  await new Promise((r) => (server.exitCode !== null || server.signalCode ? r() : server.once('exit', r)));
  await startServer();
  const site = siteOf(await running);
  const results = await toolResults(env, 'demo');
  assert.ok(results.some((r) => r.content.startsWith('interrupted:')), 'the cut-off build was reported as interrupted');
  assert.ok(results.some((r) => r.content.includes('build ok')), 'the resumed run built the app');
  await checkSite(site, 'c');
});

test("a request the transcript has no recording for fails the run, saying so", { skip: !!record }, async () => {
  const env = `demo-d-${tag}`;
  assert.equal((await api('POST', '/v1/envs', { id: env })).status, 201);
  const created = await api('POST', `/v1/envs/${env}/sessions`, { id: 'other', model: 'vibebase-demo' });
  assert.equal(created.status, 201, JSON.stringify(created.json));
  const sent = await api('POST', `/v1/envs/${env}/sessions/other/messages`, { content: 'Build a chat app instead.' });
  assert.equal(sent.status, 202, JSON.stringify(sent.json));
  let end;
  await watch(env, 'other', async (e) => {
    if (e.type === 'RUN_FINISHED' || e.type === 'RUN_ERROR') end = e;
  });
  assert.equal(end.type, 'RUN_ERROR', JSON.stringify(end));
  assert.equal(end.code, 'replay_no_recording', JSON.stringify(end));
});

test('no page raised an uncaught error or logged one', () => {
  assert.deepEqual(pageErrors, []);
});
