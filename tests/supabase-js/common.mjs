// What the supabase-js suites share: the server under test (VB_URL, VB_ADMIN_KEY), client options,
// calls to the platform API, and signed-in end users.
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
// Node < 22 has no global WebSocket; supabase-js's realtime client wants one even when unused.
import ws from 'ws';

export const base = process.env.VB_URL;
export const admin = process.env.VB_ADMIN_KEY;
assert.ok(base && admin, 'VB_URL and VB_ADMIN_KEY are required');

export const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };

/** A platform API call (`/v1/…`) with a key (the admin key by default). */
export async function platform(method, path, body, key = admin) {
  const r = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : null };
}

/** A new end user of `env`, signed up and signed in: their client and user. */
export async function signedIn(env, email) {
  const client = createClient(env.urls.api, env.keys.publishable, opts);
  const { error: up } = await client.auth.signUp({ email, password: 'correct-horse-battery' });
  assert.equal(up, null);
  const { data, error } = await client.auth.signInWithPassword({ email, password: 'correct-horse-battery' });
  assert.equal(error, null);
  return { client, user: data.user };
}

/** Applies a migration to `env` with its secret key. */
export async function migrate(env, query) {
  const migrated = await platform('POST', `/v1/envs/${env.id}/sql`, { query }, env.keys.secret);
  assert.equal(migrated.status, 200, JSON.stringify(migrated.json));
}

/** Alice and Bob, signed in to `env`, and an anonymous client (the publishable key). */
export async function twoUsers(env) {
  return {
    alice: await signedIn(env, 'alice@example.com'),
    bob: await signedIn(env, 'bob@example.com'),
    anon: createClient(env.urls.api, env.keys.publishable, opts),
  };
}
