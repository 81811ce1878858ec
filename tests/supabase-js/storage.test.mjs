// Supabase Storage with supabase-js, unmodified: the service key manages buckets; two signed-in users
// upload, download, list, sign and remove files in a private bucket under a policy on storage.objects
// (storage.foldername(name) and auth.uid()) that keeps each in their own folder; anyone reads a public
// bucket by its public URL. Needs VB_URL and VB_ADMIN_KEY.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
import { migrate, opts, platform, twoUsers } from './common.mjs';

const id = `files-${Math.random().toString(36).slice(2, 10)}`;
let env, service, alice, bob, anon;

const policies = `
create policy "read own folder" on storage.objects for select to authenticated
  using (bucket_id = 'private' and (storage.foldername(name))[1] = auth.uid()::text);
create policy "write own folder" on storage.objects for insert to authenticated
  with check (bucket_id = 'private' and (storage.foldername(name))[1] = auth.uid()::text);
create policy "update own folder" on storage.objects for update to authenticated
  using ((storage.foldername(name))[1] = auth.uid()::text);
create policy "delete own folder" on storage.objects for delete to authenticated
  using ((storage.foldername(name))[1] = auth.uid()::text);
`;

before(async () => {
  const created = await platform('POST', '/v1/envs', { id });
  assert.equal(created.status, 201, JSON.stringify(created.json));
  env = created.json;
  service = createClient(env.urls.api, env.keys.secret, opts);
  const { error: e1 } = await service.storage.createBucket('private', { public: false });
  assert.equal(e1, null);
  const { error: e2 } = await service.storage.createBucket('public', {
    public: true,
    allowedMimeTypes: ['image/*', 'text/plain'],
    fileSizeLimit: '1MB',
  });
  assert.equal(e2, null);
  await migrate(env, policies);
  ({ alice, bob, anon } = await twoUsers(env));
});

after(async () => {
  if (env) assert.equal((await platform('DELETE', `/v1/envs/${id}`)).status, 204);
});

test('buckets are managed with the service key', async () => {
  const { data: buckets, error } = await service.storage.listBuckets();
  assert.equal(error, null);
  assert.deepEqual(buckets.map((b) => [b.id, b.public]).sort(), [['private', false], ['public', true]]);
  const { data: pub } = await service.storage.getBucket('public');
  assert.equal(pub.file_size_limit, 1024 * 1024);
  assert.deepEqual(pub.allowed_mime_types, ['image/*', 'text/plain']);
  const { error: dup } = await service.storage.createBucket('private');
  assert.equal(dup.statusCode, '409');
  // Users have no bucket policies: they cannot create buckets.
  const { error: denied } = await alice.client.storage.createBucket('mine');
  assert.ok(denied, 'a user created a bucket');
  const { error: tmp } = await service.storage.createBucket('scratch');
  assert.equal(tmp, null);
  const { error: upd } = await service.storage.updateBucket('scratch', { public: true });
  assert.equal(upd, null);
  await service.storage.from('scratch').upload('x.txt', 'x');
  const { error: notEmpty } = await service.storage.deleteBucket('scratch');
  assert.ok(notEmpty, 'a non-empty bucket was deleted');
  assert.equal((await service.storage.emptyBucket('scratch')).error, null);
  assert.equal((await service.storage.deleteBucket('scratch')).error, null);
});

test('each user uploads, downloads, lists and removes files in their own folder only', async () => {
  const a = alice.client.storage.from('private');
  const b = bob.client.storage.from('private');
  const aliceDir = alice.user.id;
  const bobDir = bob.user.id;

  const { data: up, error } = await a.upload(`${aliceDir}/notes.txt`, new Blob(['alice notes'], { type: 'text/plain' }));
  assert.equal(error, null);
  assert.equal(up.fullPath, `private/${aliceDir}/notes.txt`);
  assert.equal((await a.upload(`${aliceDir}/raw.bin`, new Uint8Array([1, 2, 3, 250]), { contentType: 'application/octet-stream' })).error, null);
  assert.equal((await b.upload(`${bobDir}/diary.txt`, 'bob diary')).error, null);

  // Alice is kept out of Bob's folder: no upload, no download, no listing, no signed URL, no removal.
  const { error: intrude } = await a.upload(`${bobDir}/evil.txt`, 'x');
  assert.ok(intrude, 'alice uploaded into bob\'s folder');
  assert.equal(intrude.statusCode, '403');
  const { data: peek, error: peekErr } = await a.download(`${bobDir}/diary.txt`);
  assert.equal(peek, null);
  assert.ok(peekErr);
  const { data: bobList } = await a.list(bobDir);
  assert.deepEqual(bobList, []);
  const { error: signErr } = await a.createSignedUrl(`${bobDir}/diary.txt`, 60);
  assert.ok(signErr);
  const { data: removed } = await a.remove([`${bobDir}/diary.txt`]);
  assert.deepEqual(removed, []);
  const { data: still } = await b.download(`${bobDir}/diary.txt`);
  assert.equal(await still.text(), 'bob diary');

  // Her own files.
  const { data: file } = await a.download(`${aliceDir}/notes.txt`);
  assert.equal(await file.text(), 'alice notes');
  assert.equal(file.type, 'text/plain');
  const { data: bin } = await a.download(`${aliceDir}/raw.bin`);
  assert.deepEqual([...new Uint8Array(await bin.arrayBuffer())], [1, 2, 3, 250]);
  const { data: listed, error: listErr } = await a.list(aliceDir, { sortBy: { column: 'name', order: 'asc' } });
  assert.equal(listErr, null);
  assert.deepEqual(listed.map((o) => o.name), ['notes.txt', 'raw.bin']);
  assert.equal(listed[0].metadata.size, 11);
  const { data: searched } = await a.list(aliceDir, { search: 'raw' });
  assert.deepEqual(searched.map((o) => o.name), ['raw.bin']);
  const { data: top } = await a.list();
  assert.deepEqual(top.map((o) => o.name), [aliceDir]);

  // Replace, info, move, copy.
  assert.equal((await a.update(`${aliceDir}/notes.txt`, 'alice notes v2')).error, null);
  const { data: info } = await a.info(`${aliceDir}/notes.txt`);
  assert.equal(info.size, 14);
  assert.equal((await a.move(`${aliceDir}/notes.txt`, `${aliceDir}/moved.txt`)).error, null);
  assert.equal((await a.copy(`${aliceDir}/moved.txt`, `${aliceDir}/copy.txt`)).error, null);
  assert.equal(await (await a.download(`${aliceDir}/copy.txt`)).data.text(), 'alice notes v2');

  // Signed download URL: usable without any key.
  const { data: signed, error: sErr } = await a.createSignedUrl(`${aliceDir}/moved.txt`, 60);
  assert.equal(sErr, null);
  const viaUrl = await fetch(signed.signedUrl);
  assert.equal(viaUrl.status, 200);
  assert.equal(await viaUrl.text(), 'alice notes v2');
  const forged = signed.signedUrl.replace(/.$/, (c) => (c === 'A' ? 'B' : 'A'));
  assert.equal((await fetch(forged)).status, 400);

  // Signed upload URL, then the upload through it.
  const { data: slot, error: slotErr } = await a.createSignedUploadUrl(`${aliceDir}/via-token.txt`);
  assert.equal(slotErr, null);
  const { error: tokErr } = await anon.storage.from('private').uploadToSignedUrl(slot.path, slot.token, 'sent with a token');
  assert.equal(tokErr, null);
  assert.equal(await (await a.download(`${aliceDir}/via-token.txt`)).data.text(), 'sent with a token');
  const { error: bobSlot } = await b.createSignedUploadUrl(`${aliceDir}/bob-was-here.txt`);
  assert.ok(bobSlot, 'bob got an upload URL into alice\'s folder');

  // Removal of her own files.
  const { data: gone, error: rmErr } = await a.remove([`${aliceDir}/copy.txt`, `${aliceDir}/raw.bin`]);
  assert.equal(rmErr, null);
  assert.deepEqual(gone.map((o) => o.name).sort(), [`${aliceDir}/copy.txt`, `${aliceDir}/raw.bin`]);
  const { data: after } = await a.list(aliceDir);
  assert.deepEqual(after.map((o) => o.name), ['moved.txt', 'via-token.txt']);

  // Anonymous callers see nothing of the private bucket.
  const { data: anonList } = await anon.storage.from('private').list(aliceDir);
  assert.deepEqual(anonList, []);
});

test('public buckets serve public URLs; limits and MIME types hold', async () => {
  const pub = service.storage.from('public');
  assert.equal((await pub.upload('hello.txt', 'hello public', { contentType: 'text/plain' })).error, null);
  const { data } = pub.getPublicUrl('hello.txt');
  const r = await fetch(data.publicUrl);
  assert.equal(r.status, 200);
  assert.equal(await r.text(), 'hello public');
  const ranged = await fetch(data.publicUrl, { headers: { range: 'bytes=0-4' } });
  assert.equal(ranged.status, 206);
  assert.equal(await ranged.text(), 'hello');
  const { data: priv } = service.storage.from('private').getPublicUrl('x.txt');
  assert.equal((await fetch(priv.publicUrl)).status, 404);

  const { error: mime } = await pub.upload('page.html', '<p>x</p>', { contentType: 'text/html' });
  assert.equal(mime.statusCode, '415');
  const { error: big } = await pub.upload('big.txt', 'x'.repeat(1024 * 1024 + 1), { contentType: 'text/plain' });
  assert.equal(big.statusCode, '413');
  const { data: names } = await pub.list();
  assert.deepEqual(names.map((o) => o.name), ['hello.txt']);
  const { error: traversal } = await pub.upload('../escape.txt', 'x', { contentType: 'text/plain' });
  assert.ok(traversal);
});
