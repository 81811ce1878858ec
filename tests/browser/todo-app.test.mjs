// Issue 6's real-browser test: Debian's Chromium, driven by playwright-core, opens the todo app in app/
// (Vite + React + supabase-js) deployed with the real CLI at its env's host-form address, where the
// env's APIs are on the same origin. Sign-up, a todo that survives a reload, a second user who does not
// see it, a newly published version, a rollback to the previous one, and the newer version still
// working at its own preview address.
//
// Needs VB_URL (a running `vibebase serve` with the default apps domain, localhost), VB_ADMIN_KEY and
// VB_BIN (the vibebase binary, used as the CLI); VB_WORK (optional) holds the builds.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as ui from './ui.mjs';

const run = promisify(execFile);
const base = process.env.VB_URL;
const admin = process.env.VB_ADMIN_KEY;
const cli = process.env.VB_BIN;
assert.ok(base && admin && cli, 'VB_URL, VB_ADMIN_KEY and VB_BIN are required');

const appDir = path.join(import.meta.dirname, 'app');
const id = `browser-${Math.random().toString(36).slice(2, 10)}`;

const schema = readFileSync(path.join(appDir, 'schema.sql'), 'utf8');

let env, work, browser, site;
const deployments = {};
const pageErrors = []; // uncaught exceptions and console errors of every page

async function platform(method, urlPath, body, key = admin) {
  const r = await fetch(base + urlPath, {
    method,
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : null };
}

/** Builds the app as `version` with the env's publishable key, and deploys it with the CLI. */
async function buildAndDeploy(version) {
  const outDir = path.join(work, version);
  await run(path.join(appDir, 'node_modules', '.bin', 'vite'), ['build', '--outDir', outDir, '--emptyOutDir'], {
    cwd: appDir,
    env: { ...process.env, VITE_SUPABASE_ANON_KEY: env.keys.publishable, VITE_APP_VERSION: version },
  });
  const { stdout } = await run(cli, ['deploy', '--env', env.id, outDir, '--publish', '--json'], {
    env: { ...process.env, VIBEBASE_URL: base, VIBEBASE_KEY: env.keys.secret },
  });
  const deployment = JSON.parse(stdout);
  assert.equal(deployment.published, true, stdout);
  deployments[version] = deployment;
}

const visitor = (url = site) => ui.visitor(browser, url, pageErrors);
const { signUp, addTodo, shownTodos } = ui;

const shownVersion = (page) => page.getByTestId('version').textContent();

before(async () => {
  const created = await platform('POST', '/v1/envs', { id });
  assert.equal(created.status, 201, JSON.stringify(created.json));
  env = created.json;
  site = env.urls.site;
  assert.match(site, /^http:\/\/[^/]+\.localhost:\d+\/?$/, site);
  // Sign-up must give a session at once: no confirmation mail in this test.
  const settings = await platform('PUT', `/v1/envs/${id}/auth/settings`, { email_confirmation: false }, env.keys.secret);
  assert.equal(settings.status, 200, JSON.stringify(settings.json));
  assert.equal(settings.json.email_confirmation, false);
  const migrated = await platform('POST', `/v1/envs/${id}/sql`, { query: schema }, env.keys.secret);
  assert.equal(migrated.status, 200, JSON.stringify(migrated.json));

  work = process.env.VB_WORK || (await mkdtemp(path.join(tmpdir(), 'vb-browser-')));
  await buildAndDeploy('v1');
  browser = await ui.launch();
});

after(async () => {
  await browser?.close();
  if (env) assert.equal((await platform('DELETE', `/v1/envs/${id}`)).status, 204);
  if (work && !process.env.VB_WORK) await rm(work, { recursive: true, force: true });
});

let alice;

test('a visitor signs up on the published site and adds a todo that survives a reload', async () => {
  alice = await visitor();
  assert.equal(await shownVersion(alice), 'v1');
  await signUp(alice, 'alice@example.com');
  assert.deepEqual(await shownTodos(alice), []);
  await addTodo(alice, 'buy milk');
  // The app ticks the box once the update is stored, so wait for it rather than `check()`.
  const milk = alice.getByRole('listitem').filter({ hasText: 'buy milk' });
  await milk.getByRole('checkbox').click();
  await milk.getByRole('checkbox', { checked: true }).waitFor();

  await alice.reload();
  await alice.getByTestId('user').filter({ hasText: 'alice@example.com' }).waitFor();
  assert.deepEqual(await shownTodos(alice), ['buy milk']);
  assert.equal(await alice.getByRole('listitem').getByRole('checkbox').isChecked(), true);
});

test('a second user in a fresh browser context sees only their own todos', async () => {
  const bob = await visitor();
  await signUp(bob, 'bob@example.com');
  assert.deepEqual(await shownTodos(bob), []);
  await addTodo(bob, 'walk the dog');
  await bob.reload();
  assert.deepEqual(await shownTodos(bob), ['walk the dog']);
  await bob.context().close();

  await alice.reload();
  assert.deepEqual(await shownTodos(alice), ['buy milk']);
});

test('a newly published version reaches the browser on reload', async () => {
  await buildAndDeploy('v2');
  assert.notEqual(deployments.v2.id, deployments.v1.id);
  await alice.reload();
  assert.equal(await shownVersion(alice), 'v2');
  // The session and the data outlive the deploy.
  assert.deepEqual(await shownTodos(alice), ['buy milk']);
});

test('a rollback with the CLI brings the previous version back', async () => {
  const { stdout } = await run(cli, ['rollback', '--env', env.id, deployments.v1.id, '--json'], {
    env: { ...process.env, VIBEBASE_URL: base, VIBEBASE_KEY: env.keys.secret },
  });
  assert.equal(JSON.parse(stdout).id, deployments.v1.id, stdout);
  await alice.reload();
  assert.equal(await shownVersion(alice), 'v1');
  assert.deepEqual(await shownTodos(alice), ['buy milk']);
});

test("an unpublished deployment's preview address runs that version against the env's backend", async () => {
  const preview = deployments.v2.urls.preview;
  assert.match(preview, new RegExp(`^http://${deployments.v2.id}--${id}\\.localhost:\\d+/$`), preview);
  const page = await visitor(preview);
  assert.equal(await shownVersion(page), 'v2');
  // Another origin, so another session: sign in there.
  await signUp(page, 'alice@example.com', 'Sign in');
  assert.deepEqual(await shownTodos(page), ['buy milk']);
  await page.context().close();
  // The published site stays on the rolled-back version.
  await alice.reload();
  assert.equal(await shownVersion(alice), 'v1');
});

test('no page raised an uncaught error or logged one', () => {
  assert.deepEqual(pageErrors, []);
});
