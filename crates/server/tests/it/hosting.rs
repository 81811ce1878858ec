//! Static hosting through the router: deploy (manifest + uploads, and archives), publish, roll back,
//! serve by host and path form, and the bad input of each.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::Instant;

use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use protocol::Meter;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{EnvKeysExt, Harness};

struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// A request with raw bytes, as the listener would handle it (host rewrite included).
async fn raw(h: &Harness, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Raw {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::from(body)).unwrap();
    let apps = h.platform.config().apps_domain.clone();
    let r = server::handle(h.router.clone(), &apps, req).await;
    let (status, headers) = (r.status(), r.headers().clone());
    let body = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap().to_vec();
    Raw { status, headers, body }
}

fn sha(data: &[u8]) -> String {
    hex_of(&Sha256::digest(data))
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Deploys `files` through the manifest API; returns (the finalize answer, the hashes it asked for).
async fn deploy(h: &Harness, env: &str, key: &str, files: &[(&str, Vec<u8>)], publish: bool) -> (Value, Vec<String>) {
    let manifest: BTreeMap<&str, String> = files.iter().map(|(p, d)| (*p, sha(d))).collect();
    let r = h.call("POST", &format!("/v1/envs/{env}/deployments"), Some(key), Some(json!({"files": manifest}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json["deployment"]["id"].as_str().unwrap().to_owned();
    let missing: Vec<String> = serde_json::from_value(r.json["missing"].clone()).unwrap();
    let auth = format!("Bearer {key}");
    for (_, data) in files {
        let s = sha(data);
        if missing.contains(&s) {
            let path = format!("/v1/envs/{env}/deployments/{id}/files/{s}");
            let up = raw(h, "PUT", &path, &[("authorization", &auth)], data.clone()).await;
            assert_eq!(up.status, StatusCode::NO_CONTENT, "{}", up.text());
        }
    }
    let fin =
        h.call("POST", &format!("/v1/envs/{env}/deployments/{id}/finalize?publish={publish}"), Some(key), None).await;
    assert_eq!(fin.status, StatusCode::OK, "{}", fin.text);
    (fin.json, missing)
}

async fn site(h: &Harness, host: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    raw(h, "GET", path, &all, Vec::new()).await
}

fn app_js() -> Vec<u8> {
    "export const answer = () => 42; // padding so it compresses\n".repeat(40).into_bytes()
}

fn site_v1() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("index.html", b"<h1>home v1</h1>".to_vec()),
        ("about.html", b"<h1>about</h1>".to_vec()),
        ("docs/index.html", b"<h1>docs</h1>".to_vec()),
        ("assets/app-BXkqJzPa.js", app_js()),
        ("logo.png", vec![0x89, b'P', b'N', b'G', 1, 2, 3, 4, 5, 6]),
        (
            "vibebase.json",
            br#"{"headers":[{"source":"/assets/*","headers":{"X-Frame-Options":"DENY"}}],
                 "redirects":[{"source":"/old/*","destination":"/docs/:splat","status":301}]}"#
                .to_vec(),
        ),
    ]
}

#[tokio::test]
async fn deploy_publish_serve_redeploy_and_roll_back() {
    let h = Harness::new().await;
    let env = h.create_env("shop").await;
    let key = env.secret();
    let hook = h
        .call("POST", "/v1/webhooks", Some(&h.admin), Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]})))
        .await;
    assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.text);
    let host = "shop.localhost:8787";

    // Nothing published yet: the same plain 404 as an env that does not exist.
    let none = site(&h, host, "/", &[]).await;
    let unknown = site(&h, "nope.localhost:8787", "/", &[]).await;
    assert_eq!((none.status, unknown.status), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(none.body, unknown.body);
    assert_eq!(none.header("content-type"), "text/plain; charset=utf-8");

    let (v1, missing) = deploy(&h, "shop", key, &site_v1(), true).await;
    assert_eq!(missing.len(), 6);
    assert_eq!(v1["status"], "ready");
    assert_eq!(v1["published"], true);
    assert_eq!(v1["file_count"], 6);
    let v1_id = v1["id"].as_str().unwrap().to_owned();
    assert_eq!(v1["urls"]["preview"], format!("http://{v1_id}--shop.localhost:8787/"));
    assert_eq!(v1["urls"]["site"], "http://shop.localhost:8787/");

    // Host form and path form serve the same site.
    let home = site(&h, host, "/", &[]).await;
    assert_eq!(home.status, StatusCode::OK);
    assert_eq!(home.text(), "<h1>home v1</h1>");
    assert_eq!(home.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(home.header("cache-control"), "no-cache");
    assert_eq!(home.header("etag"), format!("\"{}\"", sha(b"<h1>home v1</h1>")));
    assert_eq!(raw(&h, "GET", "/env/shop/site/", &[], vec![]).await.text(), "<h1>home v1</h1>");
    // The env's APIs share the site's origin.
    let api = site(&h, host, "/auth/v1/health", &[("apikey", env.publishable())]).await;
    assert_eq!(api.status, StatusCode::OK, "{}", api.text());

    // Clean URLs.
    assert_eq!(site(&h, host, "/about", &[]).await.text(), "<h1>about</h1>");
    assert_eq!(site(&h, host, "/docs", &[]).await.text(), "<h1>docs</h1>");
    assert_eq!(site(&h, host, "/docs/", &[]).await.text(), "<h1>docs</h1>");
    // SPA fallback for extension-less paths (no 404.html here); a missing asset is a 404.
    assert_eq!(site(&h, host, "/app/todos/3", &[]).await.text(), "<h1>home v1</h1>");
    assert_eq!(site(&h, host, "/assets/missing.js", &[]).await.status, StatusCode::NOT_FOUND);
    // The config file itself is never served.
    assert_eq!(site(&h, host, "/vibebase.json", &[]).await.status, StatusCode::NOT_FOUND);

    // Hashed assets: immutable, precompressed by Accept-Encoding, per-deployment headers.
    let js = "/assets/app-BXkqJzPa.js";
    let plain = site(&h, host, js, &[]).await;
    assert_eq!(plain.body, app_js());
    assert_eq!(plain.header("cache-control"), "public, max-age=31536000, immutable");
    assert_eq!(plain.header("content-type"), "text/javascript; charset=utf-8");
    assert_eq!(plain.header("x-frame-options"), "DENY");
    assert_eq!(plain.header("vary"), "Accept-Encoding");
    let br = site(&h, host, js, &[("accept-encoding", "gzip, deflate, br")]).await;
    assert_eq!(br.header("content-encoding"), "br");
    assert!(br.body.len() < app_js().len() / 4);
    assert_ne!(br.header("etag"), plain.header("etag"));
    let gz = site(&h, host, js, &[("accept-encoding", "gzip")]).await;
    assert_eq!(gz.header("content-encoding"), "gzip");
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gz.body[..]).read_to_end(&mut unzipped).unwrap();
    assert_eq!(unzipped, app_js());
    // Binary files are not compressed.
    let png = site(&h, host, "/logo.png", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!((png.header("content-type"), png.header("content-encoding")), ("image/png", ""));

    // Conditional requests and ranges.
    let etag = plain.header("etag").to_owned();
    let not_modified = site(&h, host, js, &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    let part = site(&h, host, js, &[("range", "bytes=7-12"), ("accept-encoding", "br")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body, &app_js()[7..13]);
    assert_eq!(part.header("content-range"), format!("bytes 7-12/{}", app_js().len()));
    let past = site(&h, host, js, &[("range", "bytes=999999-")]).await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // A stale If-Range gets the whole file.
    let stale = site(&h, host, js, &[("range", "bytes=0-1"), ("if-range", "\"other\"")]).await;
    assert_eq!((stale.status, stale.body.len()), (StatusCode::OK, app_js().len()));

    // Redirects from the config.
    let moved = site(&h, host, "/old/intro?x=1", &[]).await;
    assert_eq!(moved.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(moved.header("location"), "/docs/intro?x=1");

    // Only GET and HEAD.
    let post = raw(&h, "POST", "/", &[("host", host)], b"x".to_vec()).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    let head = raw(&h, "HEAD", "/about", &[("host", host)], vec![]).await;
    assert_eq!(head.status, StatusCode::OK);

    // A redeploy uploads only what changed, and stays a preview until published.
    let mut files = site_v1();
    files[0].1 = b"<h1>home v2</h1>".to_vec();
    let (v2, missing) = deploy(&h, "shop", key, &files, false).await;
    assert_eq!(missing, [sha(b"<h1>home v2</h1>")]);
    assert_eq!(v2["published"], false);
    let v2_id = v2["id"].as_str().unwrap().to_owned();
    assert_eq!(site(&h, host, "/", &[]).await.text(), "<h1>home v1</h1>");
    let preview_host = format!("{v2_id}--shop.localhost:8787");
    assert_eq!(site(&h, &preview_host, "/", &[]).await.text(), "<h1>home v2</h1>");
    // A preview reaches the env's APIs on its own origin too (a same-origin app works there).
    // (Not the SPA fallback, which would answer 200 with index.html.)
    let api = site(&h, &preview_host, "/auth/v1/health", &[("apikey", env.publishable())]).await;
    assert_eq!(api.status, StatusCode::OK, "{}", api.text());
    assert!(api.text().contains("\"GoTrue\""), "{}", api.text());
    let preview_path = format!("/env/shop/deployments/{v2_id}/about");
    assert_eq!(raw(&h, "GET", &preview_path, &[], vec![]).await.text(), "<h1>about</h1>");

    // Publish, then roll back in well under a second, without uploading anything.
    let r = h.call("POST", &format!("/v1/envs/shop/deployments/{v2_id}/publish"), Some(key), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(site(&h, host, "/", &[]).await.text(), "<h1>home v2</h1>");
    let started = Instant::now();
    let r = h.call("POST", &format!("/v1/envs/shop/deployments/{v1_id}/rollback"), Some(key), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(site(&h, host, "/", &[]).await.text(), "<h1>home v1</h1>");
    assert!(started.elapsed().as_millis() < 1000, "rollback took {:?}", started.elapsed());

    // The list: newest first, the published one marked.
    let list = h.call("GET", "/v1/envs/shop/deployments", Some(key), None).await;
    let items = list.json["items"].as_array().unwrap();
    let ids: Vec<(&str, bool)> =
        items.iter().map(|d| (d["id"].as_str().unwrap(), d["published"].as_bool().unwrap())).collect();
    assert_eq!(ids, [(v2_id.as_str(), false), (v1_id.as_str(), true)]);
    let one = h.call("GET", &format!("/v1/envs/shop/deployments/{v2_id}"), Some(key), None).await;
    assert_eq!(one.json["id"], v2_id.as_str());

    // Webhooks: created ×2, published ×2 (finalize with publish, then publish), rolled back ×1.
    let deliveries = h
        .call("GET", &format!("/v1/webhooks/{}/deliveries", hook.json["id"].as_str().unwrap()), Some(&h.admin), None)
        .await;
    let mut types: Vec<&str> =
        deliveries.json["items"].as_array().unwrap().iter().filter_map(|d| d["event_type"].as_str()).collect();
    types.retain(|t| t.starts_with("deployment."));
    types.sort_unstable();
    assert_eq!(
        types,
        [
            "deployment.created",
            "deployment.created",
            "deployment.published",
            "deployment.published",
            "deployment.rolled_back"
        ]
    );

    // Bytes served are metered for the env.
    assert!(h.platform.pending_usage("shop", Meter::HostingBytesServed, 0) > 0);

    // Deleting the env removes its site.
    let r = h.call("DELETE", "/v1/envs/shop", Some(&h.admin), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let gone = site(&h, host, "/", &[]).await;
    assert_eq!((gone.status, gone.body), (StatusCode::NOT_FOUND, unknown.body));
}

#[tokio::test]
async fn a_404_page_replaces_the_spa_fallback_and_suspended_envs_serve_nothing() {
    let h = Harness::new().await;
    let env = h.create_env("blog").await;
    let files = vec![("index.html", b"home".to_vec()), ("404.html", b"<h1>lost</h1>".to_vec())];
    deploy(&h, "blog", env.secret(), &files, true).await;
    let lost = site(&h, "blog.localhost", "/nowhere", &[]).await;
    assert_eq!((lost.status, lost.text()), (StatusCode::NOT_FOUND, "<h1>lost</h1>".to_owned()));
    assert_eq!(lost.header("content-type"), "text/html; charset=utf-8");
    let r = h.call("POST", "/v1/envs/blog/suspend", Some(&h.admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The alias is trusted for at most a second.
    tokio::time::sleep(hosting::cache::ALIAS_TTL).await;
    assert_eq!(site(&h, "blog.localhost", "/", &[]).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn hostile_paths_and_hosts_reveal_nothing() {
    let h = Harness::new().await;
    let env = h.create_env("shop").await;
    let files = vec![("index.html", b"home".to_vec()), (".well-known/security.txt", b"contact".to_vec())];
    deploy(&h, "shop", env.secret(), &files, true).await;
    let host = "shop.localhost";
    let not_found = site(&h, "nope.localhost", "/", &[]).await;
    for path in [
        "/.env",
        "/.git/config",
        "/%2e%2e/%2e%2e/v1/envs",
        "/..%2f..%2fv1%2fenvs",
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/a/../../../etc/passwd",
        "/%252e%252e/x.txt",
        "/index.html%00.txt",
        "/..\\..\\x.txt",
    ] {
        let r = site(&h, host, path, &[]).await;
        assert!(r.status == StatusCode::NOT_FOUND || r.status == StatusCode::BAD_REQUEST, "{path}: {}", r.status);
        assert!(!r.text().contains("home"), "{path} served a file");
    }
    assert_eq!(site(&h, host, "/.well-known/security.txt", &[]).await.text(), "contact");
    // Forged hosts: another env, a preview of another env's deployment, a host outside the apps domain.
    let other = h.create_env("other").await;
    let (theirs, _) = deploy(&h, "other", other.secret(), &[("index.html", b"theirs".to_vec())], true).await;
    let their_id = theirs["id"].as_str().unwrap();
    let cross = site(&h, &format!("{their_id}--shop.localhost"), "/", &[]).await;
    assert_eq!((cross.status, &cross.body), (StatusCode::NOT_FOUND, &not_found.body));
    for forged in ["shop.evil.example", "localhost.shop", "shop..localhost", "SHOP.localhost.evil"] {
        let r = site(&h, forged, "/", &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{forged}");
        assert!(!r.text().contains("home") && !r.text().contains("shop"), "{forged}: {}", r.text());
    }
    // A key of env B cannot deploy to env A or read its deployments.
    let r = h.call("GET", "/v1/envs/shop/deployments", Some(other.secret()), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_manifests_uploads_and_configs_are_refused_with_stable_codes() {
    let h = Harness::new().await;
    let env = h.create_env("shop").await;
    let key = env.secret();
    let good = sha(b"x");
    for (files, code) in [
        (json!({"../x": good}), "invalid_path"),
        (json!({"/etc/passwd": good}), "invalid_path"),
        (json!({"a//b": good}), "invalid_path"),
        (json!({".env": good}), "dotfile_refused"),
        (json!({".git/config": good}), "dotfile_refused"),
        (json!({"index.html": "abc"}), "invalid_hash"),
        (json!({"index.html": good.to_uppercase()}), "invalid_hash"),
        (json!({}), "empty_deployment"),
    ] {
        let r = h.call("POST", "/v1/envs/shop/deployments", Some(key), Some(json!({"files": files}))).await;
        assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{files}: {}", r.text);
    }
    // Nothing was written by the refused requests.
    let list = h.call("GET", "/v1/envs/shop/deployments", Some(key), None).await;
    assert_eq!(list.json["items"].as_array().unwrap().len(), 0);

    let r = h.call("POST", "/v1/envs/shop/deployments", Some(key), Some(json!({"files": {"index.html": good}}))).await;
    let id = r.json["deployment"]["id"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {key}");
    let up = |s: String, body: &'static [u8]| {
        let (h, auth, id) = (&h, auth.clone(), id.clone());
        async move {
            raw(
                h,
                "PUT",
                &format!("/v1/envs/shop/deployments/{id}/files/{s}"),
                &[("authorization", &auth)],
                body.to_vec(),
            )
            .await
        }
    };
    let wrong = up(good.clone(), b"not x").await;
    assert_eq!((wrong.status, wrong.json()["code"].clone()), (StatusCode::BAD_REQUEST, json!("hash_mismatch")));
    let stranger = up(sha(b"y"), b"y").await;
    assert_eq!(stranger.json()["code"], "file_not_in_manifest");
    let fin = h.call("POST", &format!("/v1/envs/shop/deployments/{id}/finalize"), Some(key), None).await;
    assert_eq!((fin.status, fin.json["code"].as_str()), (StatusCode::CONFLICT, Some("files_missing")));
    let publish = h.call("POST", &format!("/v1/envs/shop/deployments/{id}/publish"), Some(key), None).await;
    assert_eq!(publish.json["code"], "deployment_not_ready");
    assert_eq!(up(good.clone(), b"x").await.status, StatusCode::NO_CONTENT);
    let fin = h.call("POST", &format!("/v1/envs/shop/deployments/{id}/finalize"), Some(key), None).await;
    assert_eq!(fin.status, StatusCode::OK, "{}", fin.text);
    // Immutable once finalized.
    assert_eq!(up(good.clone(), b"x").await.json()["code"], "deployment_finalized");
    let again = h.call("POST", &format!("/v1/envs/shop/deployments/{id}/finalize"), Some(key), None).await;
    assert_eq!(again.json["code"], "deployment_finalized");
    let missing = h.call("POST", "/v1/envs/shop/deployments/dplaaaaaaaaaa/publish", Some(key), None).await;
    assert_eq!((missing.status, missing.json["code"].as_str()), (StatusCode::NOT_FOUND, Some("deployment_not_found")));

    // A bad vibebase.json refuses the finalize and leaves the deployment pending.
    let config = br#"{"headers":[{"source":"/","headers":{"Content-Length":"1"}}]}"#;
    let r = h
        .call(
            "POST",
            "/v1/envs/shop/deployments",
            Some(key),
            Some(json!({"files": {"index.html": good, "vibebase.json": sha(config)}})),
        )
        .await;
    let id = r.json["deployment"]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/envs/shop/deployments/{id}/files/{}", sha(config));
    assert_eq!(
        raw(&h, "PUT", &path, &[("authorization", &auth)], config.to_vec()).await.status,
        StatusCode::NO_CONTENT
    );
    let fin = h.call("POST", &format!("/v1/envs/shop/deployments/{id}/finalize"), Some(key), None).await;
    assert_eq!((fin.status, fin.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_site_config")));
    let r = h.call("GET", &format!("/v1/envs/shop/deployments/{id}"), Some(key), None).await;
    assert_eq!(r.json["status"], "pending");
}

/// One tar entry with whatever name and type a test wants: the name goes into the header raw, where a
/// careful tool would refuse absolute names or `..`.
fn tar_entry(out: &mut Vec<u8>, name: &str, kind: u8, data: &[u8], size: Option<u64>) {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_size(size.unwrap_or(data.len() as u64));
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::new(kind));
    if kind == b'1' || kind == b'2' {
        header.set_link_name_literal("/etc/passwd").unwrap();
    }
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn targz(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, kind, data) in entries {
        tar_entry(&mut tar, name, *kind, data, None);
    }
    tar.resize(tar.len() + 1024, 0);
    gzip(&tar)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn archives_deploy_and_hostile_archives_are_refused_whole() {
    let h = Harness::new().await;
    let env = h.create_env("shop").await;
    let auth = format!("Bearer {}", env.secret());
    let post = |body: Vec<u8>, publish: bool| {
        let (h, auth) = (&h, auth.clone());
        async move {
            let path = format!("/v1/envs/shop/deployments/archive?publish={publish}");
            raw(h, "POST", &path, &[("authorization", &auth), ("content-type", "application/gzip")], body).await
        }
    };
    let ok = post(
        targz(&[
            ("./", b'5', b""),
            ("./index.html", b'0', b"<h1>from tar</h1>"),
            ("./.env", b'0', b"SECRET=1"),
            ("./assets/", b'5', b""),
            ("./assets/a.css", b'0', b"body{}"),
        ]),
        true,
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text());
    assert_eq!(ok.json()["file_count"], 2);
    assert_eq!(site(&h, "shop.localhost", "/", &[]).await.text(), "<h1>from tar</h1>");
    assert_eq!(site(&h, "shop.localhost", "/.env", &[]).await.status, StatusCode::NOT_FOUND);

    for (name, kind, code) in [
        ("link", b'2', "unsafe_archive_entry"),
        ("hardlink", b'1', "unsafe_archive_entry"),
        ("/etc/cron.d/x", b'0', "unsafe_archive_entry"),
        ("../../escape.html", b'0', "unsafe_archive_entry"),
        ("a/../../b.html", b'0', "unsafe_archive_entry"),
        ("fifo", b'6', "unsafe_archive_entry"),
    ] {
        let r = post(targz(&[("index.html", b'0', b"fine"), (name, kind, b"")]), true).await;
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{name}: {}",
            r.text()
        );
    }
    let r = post(b"this is not an archive at all, not even close to one".to_vec(), false).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // A bomb: one entry claiming 100 MiB of zeros (~100 KiB compressed), over the per-file cap.
    let mut tar = Vec::new();
    tar_entry(&mut tar, "zeros.bin", b'0', &vec![0u8; 100 * 1024 * 1024], None);
    let bomb = gzip(&tar);
    assert!(bomb.len() < 1024 * 1024);
    let r = post(bomb, false).await;
    assert_eq!((r.status, r.json()["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("file_too_large")));
    // None of the refused archives changed what is published or left a deployment behind.
    assert_eq!(site(&h, "shop.localhost", "/", &[]).await.text(), "<h1>from tar</h1>");
    let list = h.call("GET", "/v1/envs/shop/deployments", Some(env.secret()), None).await;
    assert_eq!(list.json["items"].as_array().unwrap().len(), 1);
}

/// A client that trickles its headers is cut off after the header read timeout, while other clients
/// are served meanwhile (connections are tasks, not workers).
#[tokio::test]
async fn slow_clients_are_cut_off_without_starving_others() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let h = Harness::new().await;
    let env = h.create_env("shop").await;
    deploy(&h, "shop", env.secret(), &[("index.html", b"fast".to_vec())], true).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = server::AppState::new(h.platform.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let timeout = std::time::Duration::from_millis(300);
    let served = tokio::spawn(server::serve_with(listener, state, async move { drop(stopped.await) }, timeout));
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: shop.loc").await.unwrap();
        slow.push(tcp);
    }
    let mut fast = tokio::net::TcpStream::connect(addr).await.unwrap();
    fast.write_all(b"GET / HTTP/1.1\r\nHost: shop.localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    fast.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("fast"), "{answer}");
    let started = Instant::now();
    for mut tcp in slow {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "a slow client was not cut off");
        let text = String::from_utf8_lossy(&rest);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}
