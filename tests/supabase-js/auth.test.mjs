// supabase-js auth flows, unmodified, against a running `vibebase serve`.
// Needs VB_URL (the server) and VB_ADMIN_KEY; creates its own env. Run: node --test auth.test.mjs
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';

const base = process.env.VB_URL;
const adminKey = process.env.VB_ADMIN_KEY;
assert.ok(base && adminKey, 'VB_URL and VB_ADMIN_KEY must be set');

let env;
const password = 'password-123';
const options = { auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false } };

async function v1(method, path, body) {
  const r = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  assert.ok(r.ok, `${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const client = () => createClient(env.urls.api, env.keys.publishable, options);
const service = () => createClient(env.urls.api, env.keys.secret, options);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

before(async () => {
  const id = `authjs-${Date.now().toString(36)}`;
  env = await v1('POST', '/v1/envs', { id });
  await v1('PUT', `/v1/envs/${id}/auth/settings`, { anonymous_sign_ins: true });
});

test('sign up, sign in, getUser, getClaims (JWKS)', async () => {
  const supabase = client();
  const email = `ann-${Date.now()}@example.com`;
  const { data: up, error: upError } = await supabase.auth.signUp({ email, password, options: { data: { name: 'Ann' } } });
  assert.equal(upError, null);
  assert.ok(up.session?.access_token, 'a session without email confirmation');
  assert.equal(up.user.email, email);
  assert.equal(up.user.user_metadata.name, 'Ann');

  await supabase.auth.signOut({ scope: 'local' });
  const { data: signIn, error } = await supabase.auth.signInWithPassword({ email, password });
  assert.equal(error, null);
  assert.equal(signIn.user.id, up.user.id);

  const { data: me, error: meError } = await supabase.auth.getUser();
  assert.equal(meError, null);
  assert.equal(me.user.id, up.user.id);

  // getClaims verifies the ES256 token with the env's JWKS.
  const { data: claims, error: claimsError } = await supabase.auth.getClaims();
  assert.equal(claimsError, null);
  assert.equal(claims.claims.sub, up.user.id);
  assert.equal(claims.header.alg, 'ES256');

  const { error: again } = await client().auth.signUp({ email, password });
  assert.equal(again?.code, 'user_already_exists');
  const { error: wrong } = await client().auth.signInWithPassword({ email, password: 'wrong-password' });
  assert.equal(wrong?.code, 'invalid_credentials');
  assert.equal(wrong?.status, 400);
  const { error: weak } = await client().auth.signUp({ email: `w-${Date.now()}@example.com`, password: '123' });
  assert.equal(weak?.code, 'weak_password');
});

test('updateUser and anonymous sign-in', async () => {
  const supabase = client();
  const { data, error } = await supabase.auth.signInAnonymously();
  assert.equal(error, null);
  assert.equal(data.user.is_anonymous, true);
  const { data: updated, error: updateError } = await supabase.auth.updateUser({ data: { plan: 'pro' } });
  assert.equal(updateError, null);
  assert.equal(updated.user.user_metadata.plan, 'pro');
});

test('sign-out invalidates the refresh token', async () => {
  const supabase = client();
  const email = `bob-${Date.now()}@example.com`;
  await supabase.auth.signUp({ email, password });
  const { data } = await supabase.auth.signInWithPassword({ email, password });
  const refreshToken = data.session.refresh_token;
  const { error } = await supabase.auth.signOut();
  assert.equal(error, null);
  const { data: after } = await supabase.auth.getSession();
  assert.equal(after.session, null);
  const { error: refreshError } = await client().auth.refreshSession({ refresh_token: refreshToken });
  assert.ok(refreshError, 'the refresh token of a signed-out session is refused');
  assert.equal(refreshError.code, 'refresh_token_not_found');
});

test('a session refreshes after the access token expires', async () => {
  await v1('PUT', `/v1/envs/${env.id}/auth/settings`, { access_token_ttl_seconds: 30 });
  try {
    const supabase = client();
    const email = `cy-${Date.now()}@example.com`;
    await supabase.auth.signUp({ email, password });
    const { data } = await supabase.auth.signInWithPassword({ email, password });
    assert.equal(data.session.expires_in, 30);
    const first = data.session;
    await sleep(31_000);
    // The stored session has expired: getSession refreshes it, and the new token works.
    const { data: current, error } = await supabase.auth.getSession();
    assert.equal(error, null);
    assert.notEqual(current.session.access_token, first.access_token);
    assert.notEqual(current.session.refresh_token, first.refresh_token);
    assert.ok(current.session.expires_at * 1000 > Date.now());
    const { data: me, error: meError } = await supabase.auth.getUser();
    assert.equal(meError, null);
    assert.equal(me.user.email, email);
  } finally {
    await v1('PUT', `/v1/envs/${env.id}/auth/settings`, { access_token_ttl_seconds: 3600 });
  }
});

test('admin API with the secret key', async () => {
  const admin = service().auth.admin;
  const email = `dee-${Date.now()}@example.com`;
  const { data: created, error } = await admin.createUser({ email, password, email_confirm: true });
  assert.equal(error, null);
  assert.equal(created.user.email, email);
  const { data: list, error: listError } = await admin.listUsers({ page: 1, perPage: 100 });
  assert.equal(listError, null);
  assert.ok(list.users.some((u) => u.id === created.user.id));
  const { data: got } = await admin.getUserById(created.user.id);
  assert.equal(got.user.email, email);
  const { data: updated } = await admin.updateUserById(created.user.id, { user_metadata: { role: 'editor' } });
  assert.equal(updated.user.user_metadata.role, 'editor');
  const { error: deleteError } = await admin.deleteUser(created.user.id);
  assert.equal(deleteError, null);
  const { error: gone } = await admin.getUserById(created.user.id);
  assert.equal(gone?.status, 404);
  // The publishable key is not enough.
  const { error: denied } = await client().auth.admin.listUsers();
  assert.ok(denied);
});

async function lastMailTo(email) {
  const { items } = await v1('GET', `/v1/envs/${env.id}/auth/outbox`);
  const mail = items.find((m) => m.to === email);
  assert.ok(mail, `a mail to ${email}`);
  return { ...mail, code: mail.body.split('code: ').pop().trim() };
}

test('email confirmation and password recovery by code; no magic links', async () => {
  await v1('PUT', `/v1/envs/${env.id}/auth/settings`, { email_confirmation: true });
  try {
    const supabase = client();
    const email = `eve-${Date.now()}@example.com`;
    const { data: up, error } = await supabase.auth.signUp({ email, password });
    assert.equal(error, null);
    assert.equal(up.session, null, 'no session before confirmation');
    assert.equal(up.user.email, email);
    const { error: early } = await supabase.auth.signInWithPassword({ email, password });
    assert.equal(early?.code, 'email_not_confirmed');
    const confirm = await lastMailTo(email);
    const { data: verified, error: verifyError } = await supabase.auth.verifyOtp({ email, token: confirm.code, type: 'signup' });
    assert.equal(verifyError, null);
    assert.ok(verified.session.access_token);
    assert.ok(verified.user.email_confirmed_at);

    // Passwordless sign-in (magic links) is not served in this release: a clear error, no mail.
    const magicEmail = `gus-${Date.now()}@example.com`;
    await service().auth.admin.createUser({ email: magicEmail, email_confirm: true });
    const { error: otpError } = await client().auth.signInWithOtp({ email: magicEmail, options: { shouldCreateUser: false } });
    assert.equal(otpError?.status, 404);

    // Recovery: a code, then a new password.
    const rec = client();
    const recEmail = `fay-${Date.now()}@example.com`;
    await service().auth.admin.createUser({ email: recEmail, password, email_confirm: true });
    const { error: resetError } = await rec.auth.resetPasswordForEmail(recEmail);
    assert.equal(resetError, null);
    const recovery = await lastMailTo(recEmail);
    assert.equal(recovery.kind, 'recovery');
    const { error: recVerifyError } = await rec.auth.verifyOtp({ email: recEmail, token: recovery.code, type: 'recovery' });
    assert.equal(recVerifyError, null);
    const { error: updateError } = await rec.auth.updateUser({ password: 'brand-new-password' });
    assert.equal(updateError, null);
    const { error: newSignIn } = await client().auth.signInWithPassword({ email: recEmail, password: 'brand-new-password' });
    assert.equal(newSignIn, null);
  } finally {
    await v1('PUT', `/v1/envs/${env.id}/auth/settings`, { email_confirmation: false });
  }
});

test('PKCE: the confirmation link answers with a code the client exchanges', async () => {
  await v1('PUT', `/v1/envs/${env.id}/auth/settings`, { email_confirmation: true });
  try {
    const supabase = createClient(env.urls.api, env.keys.publishable, { auth: { ...options.auth, flowType: 'pkce' } });
    const email = `hal-${Date.now()}@example.com`;
    const { data: up, error } = await supabase.auth.signUp({ email, password });
    assert.equal(error, null);
    assert.equal(up.session, null);
    const mail = await lastMailTo(email);
    const link = mail.body.split('\n').find((l) => l.includes('/verify?'));
    const r = await fetch(link, { redirect: 'manual' });
    assert.equal(r.status, 303);
    const code = new URL(r.headers.get('location')).searchParams.get('code');
    assert.ok(code, r.headers.get('location'));
    const { data, error: exchangeError } = await supabase.auth.exchangeCodeForSession(code);
    assert.equal(exchangeError, null);
    assert.equal(data.user.email, email);
    assert.ok(data.session.access_token);
    const { data: me } = await supabase.auth.getUser();
    assert.equal(me.user.id, up.user.id);
  } finally {
    await v1('PUT', `/v1/envs/${env.id}/auth/settings`, { email_confirmation: false });
  }
});
