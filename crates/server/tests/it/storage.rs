//! Supabase Storage through the real router: buckets, uploads (raw and multipart), downloads with Range
//! and ETag, list, move, copy, remove, public objects, signed URLs, policies on `storage.objects`, the
//! bad-input list (traversal, MIME types, oversize uploads, forged or expired signatures), concurrent
//! overwrites, quotas and meters. Runs on SQLite + local files, or on PostgreSQL + S3 with the
//! harness's environment variables.

use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{EnvKeysExt, Resp};

use crate::appdb::{ALICE, BOB};

/// The storage tests' env (the harness serves the router; the users' tokens are signed by the env).
struct Env(crate::appdb::UserEnv);

impl std::ops::Deref for Env {
    type Target = crate::appdb::UserEnv;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Env {
    async fn new() -> Self {
        Self(crate::appdb::user_env("st-").await)
    }

    fn url(&self, rest: &str) -> String {
        format!("/env/{}/storage/v1/{rest}", self.id)
    }

    /// Headers as supabase-js sends them: the key in `apikey`, the user's token (or the key) as bearer.
    fn as_key(&self, key: &str) -> Vec<(&'static str, String)> {
        vec![("apikey", key.to_owned()), ("authorization", format!("Bearer {key}"))]
    }

    fn service(&self) -> Vec<(&'static str, String)> {
        self.as_key(&self.secret)
    }

    fn user(&self, who: &str) -> Vec<(&'static str, String)> {
        vec![("apikey", self.publishable.clone()), ("authorization", format!("Bearer {}", self.tokens[who]))]
    }

    async fn json(&self, method: &str, rest: &str, who: &[(&'static str, String)], body: Value) -> Resp {
        self.h.send(method, &self.url(rest), who, Some(body.to_string())).await
    }

    async fn upload(
        &self,
        rest: &str,
        who: &[(&'static str, String)],
        content_type: &str,
        body: &str,
        extra: &[(&'static str, String)],
    ) -> Resp {
        let mut headers = who.to_vec();
        headers.push(("content-type", content_type.to_owned()));
        headers.extend(extra.iter().cloned());
        self.h.send("POST", &self.url(rest), &headers, Some(body.to_owned())).await
    }

    async fn get(&self, rest: &str, headers: &[(&'static str, String)]) -> Resp {
        self.h.send("GET", &self.url(rest), headers, None).await
    }

    async fn bucket(&self, id: &str, settings: Value) {
        let mut body = json!({"id": id, "name": id});
        if let (Some(b), Some(s)) = (body.as_object_mut(), settings.as_object()) {
            b.extend(s.clone());
        }
        let r = self.json("POST", "bucket", &self.service(), body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json, json!({"name": id}));
    }

    /// Keys of the env's stored object versions in the object store.
    async fn blobs(&self) -> Vec<String> {
        let prefix = format!("envs/{}/storage/", self.id);
        self.h.platform.blobs().list(&prefix).await.unwrap()
    }

    fn names(r: &Resp) -> Vec<String> {
        r.json.as_array().unwrap_or(&vec![]).iter().map(|o| o["name"].as_str().unwrap_or("").to_owned()).collect()
    }
}

fn assert_storage_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    assert_eq!(r.json["statusCode"], json!(status.to_string()), "{}", r.text);
    assert_eq!(r.json["error"], json!(code), "{}", r.text);
    assert!(r.json["message"].is_string(), "{}", r.text);
}

#[tokio::test]
async fn buckets_and_objects_round_trip() {
    let e = Env::new().await;
    let svc = e.service();
    // No database yet: reads answer without creating one.
    let r = e.get("bucket", &svc).await;
    assert_eq!((r.status, r.json.clone()), (StatusCode::OK, json!([])));
    e.bucket("docs", json!({"public": false})).await;
    assert_storage_error(&e.json("POST", "bucket", &svc, json!({"id": "docs"})).await, 409, "Duplicate");
    let r = e.get("bucket/docs", &svc).await;
    assert_eq!((r.json["id"].clone(), r.json["public"].clone()), (json!("docs"), json!(false)), "{}", r.text);

    let r = e.upload("object/docs/a/hello.txt", &svc, "text/plain", "hello world", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["Key"], json!("docs/a/hello.txt"));
    assert!(r.json["Id"].is_string());
    // Without x-upsert an existing name is a conflict; with it, a replacement.
    assert_storage_error(&e.upload("object/docs/a/hello.txt", &svc, "text/plain", "x", &[]).await, 409, "Duplicate");
    let r = e
        .upload("object/docs/a/hello.txt", &svc, "text/markdown", "# hello again", &[("x-upsert", "true".into())])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let r = e.get("object/docs/a/hello.txt", &svc).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "# hello again"));
    assert_eq!(r.headers["content-type"], "text/markdown");
    assert_eq!(r.headers["content-length"], "13");
    assert_eq!(r.headers["cache-control"], "max-age=3600");
    let etag = r.headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    // The same through /object/authenticated/, a Range, a conditional GET, HEAD.
    let r = e.get("object/authenticated/docs/a/hello.txt", &svc).await;
    assert_eq!(r.text, "# hello again");
    let mut ranged = svc.clone();
    ranged.push(("range", "bytes=2-6".into()));
    let r = e.get("object/docs/a/hello.txt", &ranged).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::PARTIAL_CONTENT, "hello"));
    assert_eq!(r.headers["content-range"], "bytes 2-6/13");
    let mut suffix = svc.clone();
    suffix.push(("range", "bytes=-5".into()));
    assert_eq!(e.get("object/docs/a/hello.txt", &suffix).await.text, "again");
    let mut bad_range = svc.clone();
    bad_range.push(("range", "bytes=50-".into()));
    let r = e.get("object/docs/a/hello.txt", &bad_range).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers["content-range"], "bytes */13");
    let mut cond = svc.clone();
    cond.push(("if-none-match", etag.clone()));
    assert_eq!(e.get("object/docs/a/hello.txt", &cond).await.status, StatusCode::NOT_MODIFIED);
    let r = e.h.send("HEAD", &e.url("object/docs/a/hello.txt"), &svc, None).await;
    assert_eq!((r.status, r.headers["content-length"].to_str().unwrap()), (StatusCode::OK, "13"));

    let r = e.get("object/info/docs/a/hello.txt", &svc).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((r.json["size"].clone(), r.json["content_type"].clone()), (json!(13), json!("text/markdown")));

    // List: folders and files directly under a prefix, search, sort, paging.
    for name in ["a/b.txt", "a/c.txt", "a/sub/d.txt", "top.txt"] {
        assert_eq!(
            e.upload(&format!("object/docs/{name}"), &svc, "text/plain", name, &[]).await.status,
            StatusCode::OK
        );
    }
    let list = |body: Value| e.json("POST", "object/list/docs", &svc, body);
    let r = list(json!({"prefix": "a", "limit": 100, "offset": 0, "sortBy": {"column": "name", "order": "asc"}})).await;
    assert_eq!(Env::names(&r), ["b.txt", "c.txt", "hello.txt", "sub"], "{}", r.text);
    let folder = r.json.as_array().unwrap().iter().find(|o| o["name"] == "sub").unwrap().clone();
    assert!(folder["id"].is_null());
    let file = r.json.as_array().unwrap().iter().find(|o| o["name"] == "b.txt").unwrap().clone();
    assert_eq!(file["metadata"]["size"], json!(7));
    let r = list(json!({"prefix": "", "sortBy": {"column": "name", "order": "desc"}})).await;
    assert_eq!(Env::names(&r), ["top.txt", "a"]);
    let r = list(json!({"prefix": "a/", "limit": 2, "offset": 1})).await;
    assert_eq!(Env::names(&r), ["c.txt", "hello.txt"]);
    let r = list(json!({"prefix": "a", "search": "H"})).await;
    assert_eq!(Env::names(&r), ["hello.txt"]);

    // Move, copy (into another bucket), remove.
    e.bucket("archive", json!({})).await;
    let r = e
        .json(
            "POST",
            "object/move",
            &svc,
            json!({"bucketId": "docs", "sourceKey": "top.txt", "destinationKey": "moved/top.txt"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_storage_error(&e.get("object/docs/top.txt", &svc).await, 404, "NoSuchKey");
    assert_eq!(e.get("object/docs/moved/top.txt", &svc).await.text, "top.txt");
    let r = e
        .json(
            "POST",
            "object/copy",
            &svc,
            json!({"bucketId": "docs", "sourceKey": "a/b.txt", "destinationKey": "copy.txt", "destinationBucket": "archive"}),
        )
        .await;
    assert_eq!((r.status, r.json["Key"].clone()), (StatusCode::OK, json!("archive/copy.txt")), "{}", r.text);
    assert_eq!(e.get("object/archive/copy.txt", &svc).await.text, "a/b.txt");
    let blobs_before = e.blobs().await.len();
    let r =
        e.h.send("DELETE", &e.url("object/docs"), &svc, Some(json!({"prefixes": ["a/b.txt", "nope.txt"]}).to_string()))
            .await;
    assert_eq!((r.status, Env::names(&r)), (StatusCode::OK, vec!["a/b.txt".to_owned()]), "{}", r.text);
    assert_eq!(e.blobs().await.len(), blobs_before - 1, "the removed object's bytes are gone");
    // The copy is independent of its source.
    assert_eq!(e.get("object/archive/copy.txt", &svc).await.text, "a/b.txt");

    // Buckets: update, not-empty delete, empty, delete.
    let r = e.json("PUT", "bucket/docs", &svc, json!({"public": true, "file_size_limit": "1MB"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = e.get("bucket/docs", &svc).await;
    assert_eq!((r.json["public"].clone(), r.json["file_size_limit"].clone()), (json!(true), json!(1_048_576)));
    assert_storage_error(&e.h.send("DELETE", &e.url("bucket/docs"), &svc, None).await, 409, "InvalidRequest");
    let r = e.json("POST", "bucket/docs/empty", &svc, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = e.h.send("DELETE", &e.url("bucket/docs"), &svc, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_storage_error(&e.get("bucket/docs", &svc).await, 404, "NoSuchBucket");
    assert_eq!(e.blobs().await.len(), 1, "only archive/copy.txt's bytes are left");
}

#[tokio::test]
async fn multipart_uploads_as_supabase_js_sends_them() {
    let e = Env::new().await;
    e.bucket("pics", json!({"allowed_mime_types": ["image/*"]})).await;
    let body = "--BOUNDARY\r\nContent-Disposition: form-data; name=\"cacheControl\"\r\n\r\n60\r\n\
                --BOUNDARY\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{\"k\":\"v\"}\r\n\
                --BOUNDARY\r\nContent-Disposition: form-data; name=\"\"; filename=\"blob\"\r\nContent-Type: image/png\r\n\r\n\
                PNGDATA\r\nline two\r\n--BOUNDARY--\r\n";
    let r = e.upload("object/pics/p.png", &e.service(), "multipart/form-data; boundary=BOUNDARY", body, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = e.get("object/pics/p.png", &e.service()).await;
    assert_eq!(r.text, "PNGDATA\r\nline two");
    assert_eq!(
        (r.headers["content-type"].to_str().unwrap(), r.headers["cache-control"].to_str().unwrap()),
        ("image/png", "max-age=60")
    );
    let info = e.get("object/info/pics/p.png", &e.service()).await;
    assert_eq!(info.json["metadata"], json!({"k": "v"}), "{}", info.text);
    // The part's own type decides the MIME check.
    let text_part = body.replace("image/png", "text/html");
    let r =
        e.upload("object/pics/q.png", &e.service(), "multipart/form-data; boundary=BOUNDARY", &text_part, &[]).await;
    assert_storage_error(&r, 415, "InvalidMimeType");
    let broken = "--BOUNDARY\r\nContent-Disposition: form-data; name=\"\"; filename=\"b\"\r\nContent-Type: image/png\r\n\r\nno end";
    let r = e.upload("object/pics/r.png", &e.service(), "multipart/form-data; boundary=BOUNDARY", broken, &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(e.blobs().await.len(), 1, "refused uploads leave no bytes");
}

#[tokio::test]
async fn bad_input_is_refused_and_leaves_nothing() {
    let e = Env::new().await;
    let svc = e.service();
    e.bucket("b", json!({"file_size_limit": 10, "allowed_mime_types": ["text/plain", "image/*"]})).await;
    // Path traversal and odd names, raw and encoded.
    let long = "x".repeat(1100);
    for name in [
        "../escape.txt",
        "a/../../escape.txt",
        "%2e%2e%2fescape.txt",
        "%2E%2E/escape.txt",
        "%252e%252e%252fescape.txt",
        "a/%2e%2e/b.txt",
        "%2fabsolute.txt",
        "a//b.txt",
        "a%0ab.txt",
        "a%5cb.txt",
        "./a.txt",
        long.as_str(),
    ] {
        let r = e.upload(&format!("object/b/{name}"), &svc, "text/plain", "hi", &[]).await;
        assert_storage_error(&r, 400, "InvalidKey");
        let r = e.get(&format!("object/b/{name}"), &svc).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "GET {name}: {}", r.text);
    }
    // NUL never gets past the edge.
    let r = e.upload("object/b/a%00b.txt", &svc, "text/plain", "hi", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    for bucket in ["..", "a%2fb", "%20lead", ""] {
        let r = e.json("POST", "bucket", &svc, json!({"id": percent_decode(bucket)})).await;
        assert_storage_error(&r, 400, "InvalidBucketName");
    }
    assert_storage_error(&e.upload("object/b/page.html", &svc, "text/html", "<p>", &[]).await, 415, "InvalidMimeType");
    assert_eq!(e.upload("object/b/ok.png", &svc, "image/png", "0123456789", &[]).await.status, StatusCode::OK);
    // Over the bucket's limit: refused with a declared length and while streaming; nothing is left.
    let r = e.upload("object/b/big.txt", &svc, "text/plain", "0123456789A", &[]).await;
    assert_storage_error(&r, 413, "EntityTooLarge");
    let r =
        e.h.send("POST", &e.url("object/b/big.txt"), &with(&svc, "content-type", "text/plain"), Some("x".repeat(5000)))
            .await;
    assert_storage_error(&r, 413, "EntityTooLarge");
    let r = e.get("object/b/big.txt", &svc).await;
    assert_storage_error(&r, 404, "NoSuchKey");
    let r = e.json("POST", "object/list/b", &svc, json!({"prefix": ""})).await;
    assert_eq!(Env::names(&r), ["ok.png"]);
    assert_eq!(e.blobs().await.len(), 1, "no bytes of refused uploads: {:?}", e.blobs().await);
    // An oversize replacement keeps the old object intact.
    let r = e.upload("object/b/ok.png", &svc, "image/png", &"y".repeat(64), &[("x-upsert", "true".into())]).await;
    assert_eq!(r.status.as_u16(), 413);
    assert_eq!(e.get("object/b/ok.png", &svc).await.text, "0123456789");
    // Unknown bucket, malformed JSON, unknown route.
    assert_storage_error(&e.upload("object/nope/a.txt", &svc, "text/plain", "x", &[]).await, 404, "NoSuchBucket");
    let r = e.h.send("POST", &e.url("bucket"), &svc, Some("{not json".to_owned())).await;
    assert_storage_error(&r, 400, "InvalidRequest");
    assert_eq!(e.get("nonsense/route", &svc).await.status, StatusCode::BAD_REQUEST);
}

fn with(h: &[(&'static str, String)], k: &'static str, v: &str) -> Vec<(&'static str, String)> {
    let mut h = h.to_vec();
    h.push((k, v.to_owned()));
    h
}

fn percent_decode(s: &str) -> String {
    storage::names::percent_decode_path(s).unwrap()
}

#[tokio::test]
async fn public_buckets_and_signed_urls() {
    let e = Env::new().await;
    let svc = e.service();
    e.bucket("pub", json!({"public": true})).await;
    e.bucket("priv", json!({})).await;
    for b in ["pub", "priv"] {
        assert_eq!(
            e.upload(&format!("object/{b}/f.txt"), &svc, "text/plain", "secret-ish", &[]).await.status,
            StatusCode::OK
        );
    }
    // Public objects need no key; private buckets have no public URLs.
    let r = e.get("object/public/pub/f.txt", &[]).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "secret-ish"));
    assert_storage_error(&e.get("object/public/priv/f.txt", &[]).await, 404, "NoSuchBucket");
    assert_eq!(e.get("object/priv/f.txt", &[]).await.status, StatusCode::UNAUTHORIZED);

    let r = e.json("POST", "object/sign/priv/f.txt", &svc, json!({"expiresIn": 60})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let signed = r.json["signedURL"].as_str().unwrap().to_owned();
    assert!(signed.starts_with("/object/sign/priv/f.txt?token="), "{signed}");
    let r = e.get(&signed[1..], &[]).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "secret-ish"));
    // Batch signing reports missing objects inline.
    let r = e.json("POST", "object/sign/priv", &svc, json!({"expiresIn": 60, "paths": ["f.txt", "missing.txt"]})).await;
    assert_eq!(r.json[0]["error"], Value::Null, "{}", r.text);
    assert!(r.json[1]["error"].is_string() && r.json[1]["signedURL"].is_null(), "{}", r.text);

    // Forged: tampered signature, payload swapped for another object's, token of another env.
    let token = signed.split("token=").nth(1).unwrap().to_owned();
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_storage_error(&e.get(&format!("object/sign/priv/f.txt?token={forged}"), &[]).await, 400, "InvalidSignature");
    assert_storage_error(&e.get(&format!("object/sign/pub/f.txt?token={token}"), &[]).await, 400, "InvalidSignature");
    assert_storage_error(&e.get("object/sign/priv/f.txt?token=a.b.c", &[]).await, 400, "InvalidSignature");
    assert_storage_error(&e.get("object/sign/priv/f.txt", &[]).await, 400, "InvalidSignature");
    let other = e.h.create_env(&format!("{}-b", e.id)).await;
    let r =
        e.h.send("GET", &format!("/env/{}-b/storage/v1/object/sign/priv/f.txt?token={token}", e.id), &[], None).await;
    assert_storage_error(&r, 400, "InvalidSignature");
    drop(other);
    // Expired.
    e.h.clock.advance(std::time::Duration::from_secs(61));
    assert_storage_error(&e.get(&signed[1..], &[]).await, 400, "InvalidSignature");
    assert_storage_error(
        &e.json("POST", "object/sign/priv/f.txt", &svc, json!({"expiresIn": 0})).await,
        400,
        "InvalidRequest",
    );

    // Signed upload URL: the token is the credential, once signed.
    let r = e.json("POST", "object/upload/sign/priv/up/new.txt", &svc, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let url = r.json["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("/object/upload/sign/priv/up/new.txt?token="), "{url}");
    let r =
        e.h.send("PUT", &e.url(&url[1..]), &[("content-type", "text/plain".into())], Some("via token".into())).await;
    assert_eq!((r.status, r.json["Key"].clone()), (StatusCode::OK, json!("priv/up/new.txt")), "{}", r.text);
    assert_eq!(e.get("object/priv/up/new.txt", &svc).await.text, "via token");
    // Without upsert in the token, it cannot replace; nor upload elsewhere.
    let r = e.h.send("PUT", &e.url(&url[1..]), &[("content-type", "text/plain".into())], Some("again".into())).await;
    assert_storage_error(&r, 409, "Duplicate");
    let elsewhere = url.replace("new.txt", "other.txt");
    let r = e.h.send("PUT", &e.url(&elsewhere[1..]), &[("content-type", "text/plain".into())], Some("x".into())).await;
    assert_storage_error(&r, 400, "InvalidSignature");
}

/// The issue's policy: each user reads and writes only their own folder (`storage.foldername(name)[1]
/// = auth.uid()`), in a private bucket, on both backends.
#[tokio::test]
async fn policies_on_storage_objects_keep_users_in_their_folders() {
    let e = Env::new().await;
    e.bucket("home", json!({})).await;
    let migration = r#"
create policy "own folder read" on storage.objects for select to authenticated
  using (bucket_id = 'home' and (storage.foldername(name))[1] = auth.uid()::text);
create policy "own folder write" on storage.objects for insert to authenticated
  with check (bucket_id = 'home' and (storage.foldername(name))[1] = (select auth.uid()::text));
create policy "own folder update" on storage.objects for update to authenticated
  using ((storage.foldername(name))[1] = auth.uid()::text) with check ((storage.foldername(name))[1] = auth.uid()::text);
create policy "own folder delete" on storage.objects for delete to authenticated
  using ((storage.foldername(name))[1] = auth.uid()::text and storage.extension(name) = 'txt'
         and storage.filename(name) <> 'keep.txt');
"#;
    let r =
        e.h.call("POST", &format!("/v1/envs/{}/sql", e.id), Some(&e.secret), Some(json!({"query": migration}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (alice, bob) = (e.user(ALICE), e.user(BOB));
    let r = e.upload(&format!("object/home/{ALICE}/a.txt"), &alice, "text/plain", "alice's", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        e.upload(&format!("object/home/{ALICE}/keep.txt"), &alice, "text/plain", "k", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        e.upload(&format!("object/home/{BOB}/b.txt"), &bob, "text/plain", "bob's", &[]).await.status,
        StatusCode::OK
    );
    // Alice cannot write into Bob's folder, nor at the top.
    let r = e.upload(&format!("object/home/{BOB}/evil.txt"), &alice, "text/plain", "x", &[]).await;
    assert_storage_error(&r, 403, "AccessDenied");
    assert_storage_error(&e.upload("object/home/top.txt", &alice, "text/plain", "x", &[]).await, 403, "AccessDenied");
    // …nor read, list, sign, overwrite, move or delete Bob's objects.
    assert_storage_error(&e.get(&format!("object/home/{BOB}/b.txt"), &alice).await, 404, "NoSuchKey");
    let r = e.json("POST", "object/list/home", &alice, json!({"prefix": BOB})).await;
    assert_eq!(Env::names(&r), Vec::<String>::new());
    let r = e.json("POST", "object/list/home", &alice, json!({"prefix": ""})).await;
    assert_eq!(Env::names(&r), [ALICE]);
    let r = e.json("POST", &format!("object/sign/home/{BOB}/b.txt"), &alice, json!({"expiresIn": 60})).await;
    assert_storage_error(&r, 404, "NoSuchKey");
    let r =
        e.upload(&format!("object/home/{BOB}/b.txt"), &alice, "text/plain", "x", &[("x-upsert", "true".into())]).await;
    assert!(r.status == StatusCode::FORBIDDEN || r.status == StatusCode::CONFLICT, "{}", r.text);
    let r = e.json("POST", "object/move", &alice, json!({"bucketId": "home", "sourceKey": format!("{BOB}/b.txt"), "destinationKey": format!("{ALICE}/stolen.txt")})).await;
    assert_storage_error(&r, 404, "NoSuchKey");
    let r = e
        .h
        .send("DELETE", &e.url("object/home"), &alice, Some(json!({"prefixes": [format!("{BOB}/b.txt")]}).to_string()))
        .await;
    assert_eq!(Env::names(&r), Vec::<String>::new());
    // Moving her own object into Bob's folder fails the update's WITH CHECK.
    let r = e.json("POST", "object/move", &alice, json!({"bucketId": "home", "sourceKey": format!("{ALICE}/a.txt"), "destinationKey": format!("{BOB}/a.txt")})).await;
    assert_storage_error(&r, 403, "AccessDenied");
    assert_eq!(e.get(&format!("object/home/{BOB}/b.txt"), &e.service()).await.text, "bob's");
    // Her own: read, upsert, delete (policy: only .txt files other than keep.txt).
    assert_eq!(e.get(&format!("object/home/{ALICE}/a.txt"), &alice).await.text, "alice's");
    let r = e
        .upload(&format!("object/home/{ALICE}/a.txt"), &alice, "text/plain", "v2", &[("x-upsert", "true".into())])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r =
        e.h.send(
            "DELETE",
            &e.url("object/home"),
            &alice,
            Some(json!({"prefixes": [format!("{ALICE}/a.txt"), format!("{ALICE}/keep.txt")]}).to_string()),
        )
        .await;
    assert_eq!(Env::names(&r), [format!("{ALICE}/a.txt")], "{}", r.text);
    // Anonymous callers see nothing (no policy for anon); buckets have no policies: only the secret key
    // manages them.
    let anon = e.as_key(&e.publishable);
    assert_eq!(
        Env::names(&e.json("POST", "object/list/home", &anon, json!({"prefix": ALICE})).await),
        Vec::<String>::new()
    );
    assert_storage_error(&e.upload("object/home/x.txt", &anon, "text/plain", "x", &[]).await, 403, "AccessDenied");
    assert_storage_error(&e.json("POST", "bucket", &alice, json!({"id": "mine"})).await, 403, "AccessDenied");
    let r = e.get("bucket", &alice).await;
    assert_eq!(r.json, json!([]));
    // A signed upload URL is refused when the policies would refuse the upload.
    let r = e.json("POST", &format!("object/upload/sign/home/{BOB}/x.txt"), &alice, json!({})).await;
    assert_storage_error(&r, 403, "AccessDenied");
    let r = e.json("POST", &format!("object/upload/sign/home/{ALICE}/x.txt"), &alice, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Policies on other schemas' tables stay refused.
    let r =
        e.h.call(
            "POST",
            &format!("/v1/envs/{}/sql", e.id),
            Some(&e.secret),
            Some(json!({"query": "create policy p on auth.users for select using (true)"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
}

#[tokio::test]
async fn concurrent_overwrites_leave_one_whole_version() {
    let e = std::sync::Arc::new(Env::new().await);
    e.bucket("c", json!({})).await;
    let contents: Vec<String> =
        (0..8).map(|i| char::from(b'a' + i).to_string().repeat(300_000 + usize::from(i) * 1000)).collect();
    let mut tasks = Vec::new();
    for body in contents.clone() {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            e.upload(
                "object/c/same.bin",
                &e.service(),
                "application/octet-stream",
                &body,
                &[("x-upsert", "true".into())],
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let r = e.get("object/c/same.bin", &e.service()).await;
    assert!(contents.contains(&r.text), "a torn or mixed object of {} bytes", r.text.len());
    assert_eq!(e.blobs().await.len(), 1, "replaced versions are deleted: {:?}", e.blobs().await);
    let info = e.get("object/info/c/same.bin", &e.service()).await;
    assert_eq!(info.json["size"], json!(r.text.len()));
}

#[tokio::test]
async fn quota_and_meters() {
    let e = Env::new().await;
    let svc = e.service();
    e.bucket("q", json!({})).await;
    let limits = json!({"quotas": [{"meter": "storage_bytes", "period": "month", "hard_limit": 1000}]});
    let r = e.h.call("PUT", &format!("/v1/envs/{}/limits", e.id), Some(&e.h.admin), Some(limits)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(e.upload("object/q/a", &svc, "text/plain", &"a".repeat(600), &[]).await.status, StatusCode::OK);
    let r = e.upload("object/q/b", &svc, "text/plain", &"b".repeat(600), &[]).await;
    assert_storage_error(&r, 402, "quota_exceeded_storage_bytes");
    assert_eq!(e.blobs().await.len(), 1);
    assert_eq!(e.upload("object/q/c", &svc, "text/plain", &"c".repeat(300), &[]).await.status, StatusCode::OK);
    assert_eq!(e.get("object/q/a", &svc).await.text.len(), 600);
    let totals = e.h.usage_totals(&e.id).await;
    let total = |m: &str| totals.get(m).copied().unwrap_or(0);
    assert_eq!(total("storage_bytes"), 900, "{totals:?}");
    assert_eq!(total("egress_bytes"), 600, "{totals:?}");
    assert!(total("storage_ops") >= 5, "{totals:?}");
}

// ------------------------------------------------------------------------------------------------
// TUS resumable uploads (`/upload/resumable`), as tus-js-client speaks them.

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Env {
    /// `POST /upload/resumable` for `bucket/name` of `len` bytes; `extra` headers last (they may
    /// replace the defaults).
    async fn tus_create(
        &self,
        who: &[(&'static str, String)],
        bucket: &str,
        name: &str,
        len: usize,
        extra: &[(&'static str, String)],
    ) -> Resp {
        let mut headers = who.to_vec();
        headers.push(("tus-resumable", "1.0.0".into()));
        headers.push(("upload-length", len.to_string()));
        headers.push((
            "upload-metadata",
            format!(
                "bucketName {},objectName {},contentType {},cacheControl {}",
                b64(bucket),
                b64(name),
                b64("text/plain"),
                b64("60")
            ),
        ));
        for (k, v) in extra {
            headers.retain(|(h, _)| h != k);
            headers.push((k, v.clone()));
        }
        self.h.send("POST", &self.url("upload/resumable"), &headers, None).await
    }

    /// The path of a created upload (from its absolute `Location`).
    fn tus_path(r: &Resp) -> String {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.headers["tus-resumable"], "1.0.0");
        let loc = r.headers["location"].to_str().unwrap();
        loc.strip_prefix("http://localhost").unwrap_or(loc).to_owned()
    }

    async fn tus_patch(&self, who: &[(&'static str, String)], path: &str, offset: usize, body: &str) -> Resp {
        let mut headers = who.to_vec();
        headers.push(("tus-resumable", "1.0.0".into()));
        headers.push(("upload-offset", offset.to_string()));
        headers.push(("content-type", "application/offset+octet-stream".into()));
        self.h.send("PATCH", path, &headers, Some(body.to_owned())).await
    }

    async fn tus_head(&self, who: &[(&'static str, String)], path: &str) -> Resp {
        let mut headers = who.to_vec();
        headers.push(("tus-resumable", "1.0.0".into()));
        self.h.send("HEAD", path, &headers, None).await
    }

    /// Keys of the parts of unfinished uploads in the object store.
    async fn upload_parts(&self) -> Vec<String> {
        self.h.platform.blobs().list(&format!("envs/{}/storage-uploads/", self.id)).await.unwrap()
    }
}

fn offset_of(r: &Resp) -> u64 {
    r.headers.get("upload-offset").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

#[tokio::test]
async fn tus_upload_in_chunks_resumes_and_completes_atomically() {
    let e = Env::new().await;
    let svc = e.service();
    e.bucket("big", json!({})).await;
    let r = e.h.send("OPTIONS", &e.url("upload/resumable"), &[], None).await;
    assert!(r.status.is_success(), "{}", r.text);
    assert_eq!(r.headers["tus-version"], "1.0.0");
    assert_eq!(r.headers["tus-resumable"], "1.0.0");
    assert!(r.headers["tus-extension"].to_str().unwrap().contains("termination"));
    assert!(r.headers.contains_key("tus-max-size"));

    let chunks = ["a".repeat(1000), "b".repeat(1000), "c".repeat(500)];
    let whole = chunks.concat();
    let path = Env::tus_path(&e.tus_create(&svc, "big", "dir/file.txt", whole.len(), &[]).await);
    assert!(path.starts_with(&format!("/env/{}/storage/v1/upload/resumable/", e.id)), "{path}");
    let r = e.tus_head(&svc, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!((offset_of(&r), r.headers["upload-length"].to_str().unwrap()), (0, "2500"));
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(r.headers.contains_key("upload-expires"));

    let r = e.tus_patch(&svc, &path, 0, &chunks[0]).await;
    assert_eq!((r.status, offset_of(&r)), (StatusCode::NO_CONTENT, 1000), "{}", r.text);
    // Nothing is visible before the last chunk.
    assert_storage_error(&e.get("object/big/dir/file.txt", &svc).await, 404, "NoSuchKey");
    // A PATCH at another offset than the upload's is a conflict and stores nothing.
    let r = e.tus_patch(&svc, &path, 0, &chunks[0]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.headers["tus-resumable"], "1.0.0");
    assert_eq!(e.upload_parts().await.len(), 1);
    // "Resume": ask where it stands, continue from there.
    assert_eq!(offset_of(&e.tus_head(&svc, &path).await), 1000);
    let r = e.tus_patch(&svc, &path, 1000, &chunks[1]).await;
    assert_eq!(offset_of(&r), 2000, "{}", r.text);
    let r = e.tus_patch(&svc, &path, 2000, &chunks[2]).await;
    assert_eq!((r.status, offset_of(&r)), (StatusCode::NO_CONTENT, 2500), "{}", r.text);
    assert_eq!(r.headers["tus-complete"], "1");

    let r = e.get("object/big/dir/file.txt", &svc).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text == whole, "the object is not the concatenated chunks");
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(r.headers["cache-control"], "max-age=60");
    // The parts and the upload are gone; one object version is stored.
    assert_eq!(e.upload_parts().await, Vec::<String>::new());
    assert_eq!(e.blobs().await.len(), 1);
    assert_eq!(e.tus_head(&svc, &path).await.status, StatusCode::NOT_FOUND);
    // Without x-upsert the name is taken (refused at creation); with it, replaced.
    let r = e.tus_create(&svc, "big", "dir/file.txt", 3, &[]).await;
    assert_storage_error(&r, 409, "Duplicate");
    let path = Env::tus_path(&e.tus_create(&svc, "big", "dir/file.txt", 3, &[("x-upsert", "true".into())]).await);
    assert_eq!(e.tus_patch(&svc, &path, 0, "new").await.status, StatusCode::NO_CONTENT);
    assert_eq!(e.get("object/big/dir/file.txt", &svc).await.text, "new");
    assert_eq!(e.blobs().await.len(), 1, "the replaced version is deleted");
    // An empty upload completes at creation.
    Env::tus_path(&e.tus_create(&svc, "big", "empty.txt", 0, &[]).await);
    let r = e.get("object/big/empty.txt", &svc).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, ""));
    // Data with the creation request (creation-with-upload, as Supabase's docs configure tus-js-client).
    let mut with_data = svc.clone();
    with_data.extend([
        ("tus-resumable", "1.0.0".to_owned()),
        ("upload-length", "8".to_owned()),
        ("upload-metadata", format!("bucketName {},objectName {}", b64("big"), b64("first.txt"))),
        ("content-type", "application/offset+octet-stream".to_owned()),
    ]);
    let r = e.h.send("POST", &e.url("upload/resumable"), &with_data, Some("1234".into())).await;
    let path = Env::tus_path(&r);
    assert_eq!(offset_of(&r), 4);
    assert_eq!(e.tus_patch(&svc, &path, 4, "5678").await.status, StatusCode::NO_CONTENT);
    assert_eq!(e.get("object/big/first.txt", &svc).await.text, "12345678");
    let named = |name: &str| {
        let mut h = with_data.clone();
        h.retain(|(k, _)| *k != "upload-metadata");
        h.push(("upload-metadata", format!("bucketName {},objectName {}", b64("big"), b64(name))));
        h
    };
    let r = e.h.send("POST", &e.url("upload/resumable"), &named("over.txt"), Some("123456789".into())).await;
    assert_storage_error(&r, 413, "EntityTooLarge");
    assert_storage_error(&e.get("object/big/over.txt", &svc).await, 404, "NoSuchKey");
    let whole = named("one-shot.txt");
    let r = e.h.send("POST", &e.url("upload/resumable"), &whole, Some("abcdefgh".into())).await;
    assert_eq!((r.status, offset_of(&r)), (StatusCode::CREATED, 8), "{}", r.text);
    assert_eq!(e.get("object/big/one-shot.txt", &svc).await.text, "abcdefgh");
    assert_eq!(e.upload_parts().await, Vec::<String>::new());
    // Termination drops the upload and its parts.
    let path = Env::tus_path(&e.tus_create(&svc, "big", "gone.txt", 10, &[]).await);
    assert_eq!(e.tus_patch(&svc, &path, 0, "12345").await.status, StatusCode::NO_CONTENT);
    let mut del = svc.clone();
    del.push(("tus-resumable", "1.0.0".into()));
    let r = e.h.send("DELETE", &path, &del, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(e.tus_head(&svc, &path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(e.upload_parts().await, Vec::<String>::new());
    // Meters as for plain uploads.
    let totals = e.h.usage_totals(&e.id).await;
    assert_eq!(totals.get("storage_bytes").copied(), Some(3 + 8 + 8), "{totals:?}");
}

#[tokio::test]
async fn tus_bad_input_is_refused() {
    let e = Env::new().await;
    let svc = e.service();
    e.bucket("lim", json!({"file_size_limit": 100, "allowed_mime_types": ["text/*"]})).await;
    // Tus-Resumable missing or of another version: 412 with the version served.
    let r = e.tus_create(&svc, "lim", "a.txt", 10, &[("tus-resumable", "0.2.2".into())]).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.text);
    assert_eq!(r.headers["tus-version"], "1.0.0");
    let r = e.h.send("POST", &e.url("upload/resumable"), &svc, None).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    // Upload-Length missing, bad metadata, no bucket, a bad name.
    let r = e.tus_create(&svc, "lim", "a.txt", 10, &[("upload-length", "-1".into())]).await;
    assert_storage_error(&r, 400, "InvalidRequest");
    let r = e.tus_create(&svc, "lim", "a.txt", 10, &[("upload-metadata", "bucketName %%%".into())]).await;
    assert_storage_error(&r, 400, "InvalidRequest");
    let r = e.tus_create(&svc, "lim", "a.txt", 10, &[("upload-metadata", format!("bucketName {}", b64("lim")))]).await;
    assert_storage_error(&r, 400, "InvalidRequest");
    assert_storage_error(&e.tus_create(&svc, "nope", "a.txt", 10, &[]).await, 404, "NoSuchBucket");
    assert_storage_error(&e.tus_create(&svc, "lim", "../a.txt", 10, &[]).await, 400, "InvalidKey");
    // Over the bucket's file size limit: 413 at creation; a MIME type outside its list: 415.
    assert_storage_error(&e.tus_create(&svc, "lim", "a.txt", 101, &[]).await, 413, "EntityTooLarge");
    let meta = format!("bucketName {},objectName {},contentType {}", b64("lim"), b64("a.bin"), b64("image/png"));
    let r = e.tus_create(&svc, "lim", "a.txt", 10, &[("upload-metadata", meta)]).await;
    assert_storage_error(&r, 415, "InvalidMimeType");

    let path = Env::tus_path(&e.tus_create(&svc, "lim", "a.txt", 10, &[]).await);
    // PATCH: wrong content type 415, no Tus-Resumable 412, no offset 400, more bytes than declared 413.
    let mut wrong = svc.clone();
    wrong.extend([
        ("tus-resumable", "1.0.0".to_owned()),
        ("upload-offset", "0".to_owned()),
        ("content-type", "text/plain".to_owned()),
    ]);
    assert_eq!(e.h.send("PATCH", &path, &wrong, Some("x".into())).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut old = svc.clone();
    old.extend([("upload-offset", "0".to_owned()), ("content-type", "application/offset+octet-stream".to_owned())]);
    assert_eq!(e.h.send("PATCH", &path, &old, Some("x".into())).await.status, StatusCode::PRECONDITION_FAILED);
    let mut no_offset = svc.clone();
    no_offset.extend([
        ("tus-resumable", "1.0.0".to_owned()),
        ("content-type", "application/offset+octet-stream".to_owned()),
    ]);
    assert_eq!(e.h.send("PATCH", &path, &no_offset, Some("x".into())).await.status, StatusCode::BAD_REQUEST);
    assert_storage_error(&e.tus_patch(&svc, &path, 0, "12345678901").await, 413, "EntityTooLarge");
    assert_eq!(e.tus_patch(&svc, &path, 0, "1234").await.status, StatusCode::NO_CONTENT);
    assert_storage_error(&e.tus_patch(&svc, &path, 4, "12345678").await, 413, "EntityTooLarge");
    assert_eq!(offset_of(&e.tus_head(&svc, &path).await), 4);
    assert_eq!(e.upload_parts().await.len(), 1, "a refused chunk leaves no part");
    assert_eq!(e.tus_patch(&svc, &path, 2, "xx").await.status, StatusCode::CONFLICT);

    // Unknown ids, malformed ids, another env's or another user's upload: 404.
    let base = e.url("upload/resumable");
    let unknown = format!("{base}/00000000-0000-0000-0000-000000000000");
    assert_eq!(e.tus_head(&svc, &unknown).await.status, StatusCode::NOT_FOUND);
    assert_storage_error(&e.tus_patch(&svc, &unknown, 0, "x").await, 404, "NoSuchUpload");
    assert_eq!(e.tus_patch(&svc, &format!("{base}/..%2F..%2Fx"), 0, "x").await.status, StatusCode::NOT_FOUND);
    let other = e.h.create_env(&format!("{}-b", e.id)).await;
    let id = path.rsplit('/').next().unwrap();
    let theirs = format!("/env/{}/storage/v1/upload/resumable/{id}", other.id);
    assert_eq!(e.tus_head(&e.as_key(other.secret()), &theirs).await.status, StatusCode::NOT_FOUND);
    assert_eq!(e.tus_patch(&e.as_key(other.secret()), &theirs, 4, "x").await.status, StatusCode::NOT_FOUND);
    assert_eq!(e.tus_head(&e.as_key(other.secret()), &path).await.status, StatusCode::FORBIDDEN);
    assert_eq!(e.tus_head(&e.user(ALICE), &path).await.status, StatusCode::NOT_FOUND, "the secret key's upload");
    assert_eq!(e.tus_patch(&e.user(ALICE), &path, 4, "abcdef").await.status, StatusCode::NOT_FOUND);
    assert_eq!(offset_of(&e.tus_head(&svc, &path).await), 4);

    // Expired uploads answer 410 once, their parts deleted; others are swept by the next creation.
    let stale = Env::tus_path(&e.tus_create(&svc, "lim", "stale.txt", 10, &[]).await);
    assert_eq!(e.tus_patch(&svc, &stale, 0, "12").await.status, StatusCode::NO_CONTENT);
    assert_eq!(e.upload_parts().await.len(), 2);
    e.h.clock.advance(std::time::Duration::from_secs(25 * 3600));
    assert_storage_error(&e.tus_patch(&svc, &path, 4, "x").await, 410, "UploadExpired");
    assert_eq!(e.tus_head(&svc, &path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(e.upload_parts().await.len(), 1);
    Env::tus_path(&e.tus_create(&svc, "lim", "fresh.txt", 10, &[]).await);
    assert_eq!(e.upload_parts().await, Vec::<String>::new(), "the sweep deleted the stale upload's parts");
    assert_eq!(e.tus_head(&svc, &stale).await.status, StatusCode::NOT_FOUND);
    assert_storage_error(&e.get("object/lim/a.txt", &svc).await, 404, "NoSuchKey");
}

#[tokio::test]
async fn tus_concurrent_patches_at_one_offset_let_one_through() {
    let e = std::sync::Arc::new(Env::new().await);
    let svc = e.service();
    e.bucket("c", json!({})).await;
    let path = Env::tus_path(&e.tus_create(&svc, "c", "race.txt", 40_000, &[]).await);
    let mut tasks = Vec::new();
    for i in 0..6u8 {
        let (e, path) = (e.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let body = char::from(b'a' + i).to_string().repeat(20_000);
            let r = e.tus_patch(&e.service(), &path, 0, &body).await;
            (r.status, body)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::NO_CONTENT => winners.push(body),
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one PATCH at offset 0 wins");
    assert_eq!(offset_of(&e.tus_head(&svc, &path).await), 20_000);
    assert_eq!(e.upload_parts().await.len(), 1, "the losers' bytes are deleted");
    let tail = "z".repeat(20_000);
    assert_eq!(e.tus_patch(&svc, &path, 20_000, &tail).await.status, StatusCode::NO_CONTENT);
    let r = e.get("object/c/race.txt", &svc).await;
    assert!(r.text == format!("{}{tail}", winners[0]), "the object is the winner's chunk and the tail");
}

#[tokio::test]
async fn tus_uploads_obey_policies_at_creation_and_completion() {
    let e = Env::new().await;
    e.bucket("home", json!({})).await;
    let sql_path = format!("/v1/envs/{}/sql", e.id);
    let sql = |q: &str| e.h.call("POST", &sql_path, Some(&e.secret), Some(json!({ "query": q })));
    let r = sql(r#"
create policy "own folder write" on storage.objects for insert to authenticated
  with check (bucket_id = 'home' and (storage.foldername(name))[1] = (select auth.uid()::text));
create policy "own folder read" on storage.objects for select to authenticated
  using ((storage.foldername(name))[1] = auth.uid()::text);
"#)
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let alice = e.user(ALICE);
    // Into Bob's folder: refused at creation.
    let r = e.tus_create(&alice, "home", &format!("{BOB}/x.txt"), 5, &[]).await;
    assert_storage_error(&r, 403, "AccessDenied");
    let anon = e.as_key(&e.publishable);
    assert_storage_error(&e.tus_create(&anon, "home", "x.txt", 5, &[]).await, 403, "AccessDenied");
    // Her own folder: allowed, and the object is hers.
    let path = Env::tus_path(&e.tus_create(&alice, "home", &format!("{ALICE}/a.txt"), 6, &[]).await);
    assert_eq!(e.tus_patch(&alice, &path, 0, "abc").await.status, StatusCode::NO_CONTENT);
    assert_eq!(e.tus_patch(&alice, &path, 3, "def").await.status, StatusCode::NO_CONTENT);
    let r = e.get(&format!("object/home/{ALICE}/a.txt"), &alice).await;
    assert_eq!(r.text, "abcdef");
    let r = e.json("POST", "object/list/home", &alice, json!({"prefix": ALICE})).await;
    assert_eq!(r.json[0]["owner"], json!(ALICE), "{}", r.text);
    // The policies are checked again at completion: revoked meanwhile, the upload is refused and
    // dropped, and no object appears.
    let path = Env::tus_path(&e.tus_create(&alice, "home", &format!("{ALICE}/b.txt"), 6, &[]).await);
    assert_eq!(e.tus_patch(&alice, &path, 0, "abc").await.status, StatusCode::NO_CONTENT);
    assert_eq!(sql(r#"drop policy "own folder write" on storage.objects"#).await.status, StatusCode::OK);
    assert_storage_error(&e.tus_patch(&alice, &path, 3, "def").await, 403, "AccessDenied");
    assert_eq!(e.tus_head(&alice, &path).await.status, StatusCode::NOT_FOUND);
    assert_storage_error(&e.get(&format!("object/home/{ALICE}/b.txt"), &e.service()).await, 404, "NoSuchKey");
    assert_eq!(e.upload_parts().await, Vec::<String>::new());
    assert_eq!(e.blobs().await.len(), 1);
}

/// An upload whose completion holds the lease answers 423 (tus-js-client retries); one whose completing
/// instance died (the lease ran out) gets its last chunk rolled back, so the client sends it again.
#[tokio::test]
async fn tus_completion_lease_locks_and_a_dead_completion_rolls_back() {
    let e = Env::new().await;
    let svc = e.service();
    e.bucket("l", json!({})).await;
    let path = Env::tus_path(&e.tus_create(&svc, "l", "x.txt", 8, &[]).await);
    assert_eq!(e.tus_patch(&svc, &path, 0, "abcd").await.status, StatusCode::NO_CONTENT);
    let id = path.rsplit('/').next().unwrap().to_owned();
    let set_lease = |until: i64| {
        let id = id.clone();
        e.h.platform.db().tx(move |c| {
            c.execute(
                "UPDATE storage_uploads SET completing_until = $1 WHERE id = $2",
                &[until.into(), id.as_str().into()],
            )
        })
    };
    let now = e.h.platform.clock().now_ms();
    set_lease(now + 60_000).await.unwrap();
    assert_eq!(e.tus_head(&svc, &path).await.status.as_u16(), 423);
    assert_eq!(e.tus_patch(&svc, &path, 4, "efgh").await.status.as_u16(), 423);
    set_lease(now - 1).await.unwrap();
    let r = e.tus_head(&svc, &path).await;
    assert_eq!((r.status, offset_of(&r)), (StatusCode::OK, 0));
    assert_eq!(e.upload_parts().await, Vec::<String>::new(), "the rolled-back chunk is deleted");
    assert_eq!(e.tus_patch(&svc, &path, 0, "abcd").await.status, StatusCode::NO_CONTENT);
    assert_eq!(e.tus_patch(&svc, &path, 4, "efgh").await.status, StatusCode::NO_CONTENT);
    assert_eq!(e.get("object/l/x.txt", &svc).await.text, "abcdefgh");
}

/// The signed variant (`/upload/resumable/sign`): a signed upload URL's token in `x-signature` is the
/// credential, for its object only; the object gets the signer's owner.
#[tokio::test]
async fn tus_signed_uploads_take_a_signed_upload_urls_token() {
    let e = Env::new().await;
    e.bucket("s", json!({})).await;
    let policy = "create policy \"own folder\" on storage.objects for insert to authenticated \
                  with check ((storage.foldername(name))[1] = auth.uid()::text)";
    let r = e.h.call("POST", &format!("/v1/envs/{}/sql", e.id), Some(&e.secret), Some(json!({"query": policy}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let alice = e.user(ALICE);
    let r = e.json("POST", &format!("object/upload/sign/s/{ALICE}/v.bin"), &alice, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let token = r.json["token"].as_str().unwrap().to_owned();
    let signed = |name: &str, sig: &str| {
        vec![
            ("tus-resumable", "1.0.0".to_owned()),
            ("upload-length", "6".to_owned()),
            ("upload-metadata", format!("bucketName {},objectName {}", b64("s"), b64(name))),
            ("x-signature", sig.to_owned()),
        ]
    };
    let create = e.url("upload/resumable/sign");
    // No token, a forged one, or the token of another object: refused, nothing created.
    let mut none = signed(&format!("{ALICE}/v.bin"), "");
    none.retain(|(k, _)| *k != "x-signature");
    assert_storage_error(&e.h.send("POST", &create, &none, None).await, 400, "InvalidSignature");
    let r = e.h.send("POST", &create, &signed(&format!("{ALICE}/v.bin"), "forged.token.x"), None).await;
    assert_storage_error(&r, 400, "InvalidSignature");
    let r = e.h.send("POST", &create, &signed(&format!("{ALICE}/other.bin"), &token), None).await;
    assert_storage_error(&r, 400, "InvalidSignature");
    // With it: create, offset, chunks, done.
    let r = e.h.send("POST", &create, &signed(&format!("{ALICE}/v.bin"), &token), None).await;
    let path = Env::tus_path(&r);
    assert!(path.contains("/upload/resumable/sign/"), "{path}");
    let with_sig = vec![("x-signature", token.clone())];
    assert_eq!(offset_of(&e.tus_head(&with_sig, &path).await), 0);
    assert_eq!(e.tus_head(&[], &path).await.status, StatusCode::BAD_REQUEST, "no token");
    assert_eq!(e.tus_patch(&with_sig, &path, 0, "abc").await.status, StatusCode::NO_CONTENT);
    // A key of the env does not reach a signed upload through the keyed endpoint.
    let keyed = path.replace("/resumable/sign/", "/resumable/");
    assert_eq!(e.tus_head(&e.service(), &keyed).await.status, StatusCode::NOT_FOUND);
    assert_eq!(e.tus_patch(&with_sig, &path, 3, "def").await.status, StatusCode::NO_CONTENT);
    let r = e.json("POST", "object/list/s", &e.service(), json!({"prefix": ALICE})).await;
    assert_eq!((r.json[0]["name"].clone(), r.json[0]["owner"].clone()), (json!("v.bin"), json!(ALICE)), "{}", r.text);
    assert_eq!(e.get(&format!("object/s/{ALICE}/v.bin"), &e.service()).await.text, "abcdef");
}
