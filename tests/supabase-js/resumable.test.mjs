// Resumable (TUS) uploads as Supabase's docs show them: tus-js-client, unmodified, against
// `<url>/storage/v1/upload/resumable` with the user's JWT, the publishable key, x-upsert and the
// bucketName/objectName/contentType/cacheControl metadata, in 6 MB chunks. The upload is interrupted
// after its first chunk and resumed by a new Upload from the stored URL; supabase-js downloads the
// result. A policy on storage.objects refuses an upload into another user's folder. Needs VB_URL and
// VB_ADMIN_KEY.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createClient } from '@supabase/supabase-js';
import * as tus from 'tus-js-client';
import { migrate, opts, platform, twoUsers } from './common.mjs';

const id = `tus-${Math.random().toString(36).slice(2, 10)}`;
const CHUNK = 6 * 1024 * 1024;
let env, alice, bob;

before(async () => {
  const created = await platform('POST', '/v1/envs', { id });
  assert.equal(created.status, 201, JSON.stringify(created.json));
  env = created.json;
  const service = createClient(env.urls.api, env.keys.secret, opts);
  assert.equal((await service.storage.createBucket('videos', { public: false })).error, null);
  await migrate(
    env,
    `create policy "own folder write" on storage.objects for insert to authenticated
       with check (bucket_id = 'videos' and (storage.foldername(name))[1] = auth.uid()::text);
     create policy "own folder read" on storage.objects for select to authenticated
       using (bucket_id = 'videos' and (storage.foldername(name))[1] = auth.uid()::text);`,
  );
  ({ alice, bob } = await twoUsers(env));
});

after(async () => {
  if (env) assert.equal((await platform('DELETE', `/v1/envs/${id}`)).status, 204);
});

async function token(user) {
  const { data } = await user.client.auth.getSession();
  return data.session.access_token;
}

/** Supabase's documented options; `extra` adds callbacks or replaces fields. */
async function options(user, objectName, extra) {
  return {
    endpoint: `${env.urls.api}/storage/v1/upload/resumable`,
    retryDelays: [0, 500],
    headers: { authorization: `Bearer ${await token(user)}`, apikey: env.keys.publishable, 'x-upsert': 'true' },
    uploadDataDuringCreation: true,
    removeFingerprintOnSuccess: true,
    metadata: { bucketName: 'videos', objectName, contentType: 'video/mp4', cacheControl: '3600' },
    chunkSize: CHUNK,
    ...extra,
  };
}

test('a 13 MB upload in 6 MB chunks, interrupted and resumed, downloads whole', async () => {
  const file = randomBytes(13 * 1024 * 1024 + 12345);
  const name = `${alice.user.id}/movie.mp4`;
  // First run: stop after the first chunk.
  const documented = await options(alice, name);
  const first = await new Promise((resolve, reject) => {
    const upload = new tus.Upload(file, {
      ...documented,
      onChunkComplete(_size, sent) {
        upload.abort().then(() => resolve({ url: upload.url, sent }), reject);
      },
      onError: reject,
      onSuccess: () => reject(new Error('the upload finished before it was interrupted')),
    });
    upload.start();
  });
  assert.equal(first.sent, CHUNK);
  assert.match(first.url, /\/storage\/v1\/upload\/resumable\/[0-9a-f-]{36}$/);
  // Not visible until the last chunk.
  const early = await alice.client.storage.from('videos').download(name);
  assert.ok(early.error, 'a partial object was visible');
  // Resume with a new Upload from the stored URL: it asks for the offset and sends the rest.
  let resumedFrom = -1;
  await new Promise((resolve, reject) => {
    const upload = new tus.Upload(file, {
      ...documented,
      uploadUrl: first.url,
      onProgress(sent) {
        if (resumedFrom < 0) resumedFrom = sent;
      },
      onError: reject,
      onSuccess: resolve,
    });
    upload.start();
  });
  assert.ok(resumedFrom >= CHUNK, `resumed from ${resumedFrom}, not after the first chunk`);
  const { data, error } = await alice.client.storage.from('videos').download(name);
  assert.equal(error, null);
  const got = Buffer.from(await data.arrayBuffer());
  assert.equal(got.length, file.length);
  assert.ok(got.equals(file), 'the downloaded bytes differ from the uploaded ones');
  // The object was written once, with the metadata's content type.
  const { data: listed } = await alice.client.storage.from('videos').list(alice.user.id);
  assert.deepEqual(listed.map((o) => [o.name, o.metadata.size, o.metadata.mimetype]), [
    ['movie.mp4', file.length, 'video/mp4'],
  ]);
});

test('a policy on storage.objects refuses an upload into another user\'s folder', async () => {
  const intrusion = await options(alice, `${bob.user.id}/intrusion.txt`);
  const err = await new Promise((resolve, reject) => {
    const upload = new tus.Upload(Buffer.from('not yours'), {
      ...intrusion,
      onError: resolve,
      onSuccess: () => reject(new Error('the upload into another folder succeeded')),
    });
    upload.start();
  });
  assert.equal(err.originalResponse?.getStatus(), 403, String(err));
  const { data } = await bob.client.storage.from('videos').list(bob.user.id);
  assert.deepEqual(data, []);
});
