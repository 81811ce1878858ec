//! Supabase Storage through the real router: buckets, uploads (raw and multipart), downloads with Range
//! and ETag, list, move, copy, remove, public objects, signed URLs, policies on `storage.objects`, the
//! bad-input list (traversal, MIME types, oversize uploads, forged or expired signatures), concurrent
//! overwrites, quotas and meters. Runs on SQLite + local files, or on PostgreSQL + S3 with the
//! harness's environment variables.

use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::Resp;

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
