//! Environment lifecycle, credentials and bad input through the real router.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::harness::{EnvKeysExt, Harness};

#[tokio::test]
async fn create_returns_the_design_record_and_urls() {
    let h = Harness::new().await;
    let r = h.call("POST", "/v1/envs", Some(&h.admin), Some(json!({"id": "shop", "name": "Shop"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let e = &r.json;
    assert_eq!(e["id"], "shop");
    assert_eq!(e["status"], "active");
    assert_eq!(e["urls"]["api"], "http://127.0.0.1:8787/env/shop");
    assert_eq!(e["urls"]["site"], "http://shop.localhost:8787/");
    assert_eq!(e["urls"]["llm"], "http://127.0.0.1:8787/env/shop/llm/v1");
    assert_eq!(e["urls"]["e2b_api"], "http://127.0.0.1:8787/env/shop/e2b");
    assert_eq!(e["urls"]["e2b_sandbox"], "http://127.0.0.1:8787/env/shop/e2b/envd");
    assert_eq!(e["urls"]["mcp"], "http://127.0.0.1:8787/env/shop/mcp");
    let secret = e["keys"]["secret"].as_str().unwrap();
    let publishable = e["keys"]["publishable"].as_str().unwrap();
    assert!(secret.starts_with("vb_sk_") && publishable.starts_with("vb_pk_"));
    // The secret is shown once; the publishable key can be read again.
    let got = h.call("GET", "/v1/envs/shop", Some(&h.admin), None).await;
    assert_eq!(got.json["keys"]["publishable"], publishable);
    assert!(got.json["keys"].get("secret").is_none());
    assert!(!got.text.contains(secret));
    // Without an id, one is generated and valid.
    let r = h.call("POST", "/v1/envs", Some(&h.admin), Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(protocol::EnvId::parse(r.json["id"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn list_paginates_with_a_cursor() {
    let h = Harness::new().await;
    for id in ["e1", "e2", "e3", "e4", "e5"] {
        h.create_env(id).await;
    }
    let mut seen = vec![];
    let mut cursor = String::new();
    loop {
        let q = if cursor.is_empty() { String::new() } else { format!("&cursor={cursor}") };
        let r = h.call("GET", &format!("/v1/envs?limit=2{q}"), Some(&h.admin), None).await;
        assert_eq!(r.status, StatusCode::OK);
        let items = r.json["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["e1", "e2", "e3", "e4", "e5"]);
}

#[tokio::test]
async fn suspend_stops_tenant_traffic_and_resume_restores_it() {
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    let data = || h.call("GET", "/env/shop/rest/v1/todos", Some(a.publishable()), None);
    assert_eq!(data().await.status, StatusCode::NOT_FOUND);
    let r = h.call("POST", "/v1/envs/shop/suspend", Some(&h.admin), None).await;
    assert_eq!((r.status, r.json["status"].as_str()), (StatusCode::OK, Some("suspended")));
    let r = data().await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::FORBIDDEN, Some("env_suspended")));
    let r = h.call("GET", "/v1/envs/shop", Some(a.secret()), None).await;
    assert_eq!(r.json["code"], "env_suspended");
    // The operator still manages a suspended env.
    assert_eq!(h.call("GET", "/v1/envs/shop", Some(&h.admin), None).await.status, StatusCode::OK);
    let r = h.call("POST", "/v1/envs/shop/resume", Some(&h.admin), None).await;
    assert_eq!(r.json["status"], "active");
    assert_eq!(data().await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_kills_keys_at_once_and_retires_the_id() {
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    let r = h.call("DELETE", "/v1/envs/shop", Some(&h.admin), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = h.call("GET", "/v1/envs/shop", Some(&h.admin), None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::NOT_FOUND, Some("env_not_found")));
    let r = h.call("GET", "/env/shop/rest/v1/todos", Some(a.publishable()), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = h.call("GET", "/v1/envs/shop", Some(a.secret()), None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_key")));
    let r = h.call("DELETE", "/v1/envs/shop", Some(&h.admin), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h.call("POST", "/v1/envs", Some(&h.admin), Some(json!({"id": "shop"}))).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::CONFLICT, Some("env_id_retired")));
    // The audit log outlives the env, for billing and forensics: the env route is gone, the platform
    // log still answers for the retired id.
    let r = h.call("GET", "/v1/envs/shop/audit", Some(&h.admin), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h.call("GET", "/v1/audit?env=shop", Some(&h.admin), None).await;
    let actions: Vec<&str> =
        r.json["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["env:Delete", "env:Create"]);
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_the_overlap_only() {
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    let r = h
        .call(
            "POST",
            "/v1/envs/shop/keys/rotate",
            Some(a.secret()),
            Some(json!({"kind": "secret", "overlap_seconds": 60})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let new = r.json["key"].as_str().unwrap().to_owned();
    assert_eq!(h.call("GET", "/v1/envs/shop", Some(a.secret()), None).await.status, StatusCode::OK);
    assert_eq!(h.call("GET", "/v1/envs/shop", Some(&new), None).await.status, StatusCode::OK);
    h.clock.advance(Duration::from_secs(61));
    let r = h.call("GET", "/v1/envs/shop", Some(a.secret()), None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("key_expired")));
    assert_eq!(h.call("GET", "/v1/envs/shop", Some(&new), None).await.status, StatusCode::OK);
    // Publishable rotation: the env record shows the new key.
    let r = h
        .call(
            "POST",
            "/v1/envs/shop/keys/rotate",
            Some(&new),
            Some(json!({"kind": "publishable", "overlap_seconds": 0})),
        )
        .await;
    let pk = r.json["key"].as_str().unwrap().to_owned();
    assert_eq!(h.call("GET", "/v1/envs/shop", Some(&new), None).await.json["keys"]["publishable"], pk.as_str());
    let r = h.call("GET", "/env/shop/rest/v1/x", Some(a.publishable()), None).await;
    assert_eq!(r.json["code"], "key_revoked");
}

#[tokio::test]
async fn minted_tokens_expire_and_revoke_at_once() {
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    let mint =
        |ttl: u64| json!({"ttl_seconds": ttl, "session": "sess-1", "holder": "sandbox", "actions": ["db:*", "llm:*"]});
    let t = h.call("POST", "/v1/envs/shop/tokens", Some(a.secret()), Some(mint(30))).await;
    assert_eq!(t.status, StatusCode::CREATED, "{}", t.text);
    let token = t.json["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("vb_tok_"));
    assert_eq!(h.call("GET", "/env/shop/rest/v1/t", Some(&token), None).await.status, StatusCode::NOT_FOUND);
    // Its actions bound it: storage is not among them.
    let r = h.call("GET", "/env/shop/storage/v1/bucket", Some(&token), None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::FORBIDDEN, Some("access_denied")));
    // Never the control plane.
    let r = h.call("GET", "/v1/envs/shop", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    h.clock.advance(Duration::from_secs(31));
    let r = h.call("GET", "/env/shop/rest/v1/t", Some(&token), None).await;
    assert_eq!(r.json["code"], "key_expired");
    let t = h.call("POST", "/v1/envs/shop/tokens", Some(a.secret()), Some(mint(600))).await;
    let token = t.json["token"].as_str().unwrap().to_owned();
    let r = h
        .call("POST", &format!("/v1/envs/shop/keys/{}/revoke", t.json["id"].as_str().unwrap()), Some(a.secret()), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.call("GET", "/env/shop/rest/v1/t", Some(&token), None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("key_revoked")));
    // Revoking a whole session's tokens.
    let t = h.call("POST", "/v1/envs/shop/tokens", Some(a.secret()), Some(mint(600))).await;
    let env = protocol::EnvId::parse("shop").unwrap();
    assert_eq!(h.platform.revoke_session_tokens(&env, "sess-1").await.unwrap(), 1);
    let r = h.call("GET", "/env/shop/rest/v1/t", Some(t.json["token"].as_str().unwrap()), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A week later, housekeeping purges dead tokens; the env's live keys stay.
    h.clock.advance(Duration::from_secs(8 * 24 * 3600));
    assert_eq!(h.platform.purge_expired_keys().await.unwrap(), 3);
    let keys = h.call("GET", "/v1/envs/shop/keys", Some(a.secret()), None).await;
    let mut kinds: Vec<&str> =
        keys.json["items"].as_array().unwrap().iter().map(|k| k["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(kinds, ["publishable", "secret"]);
}

/// Each bad request gets its stable code and changes nothing.
#[tokio::test]
async fn bad_input_gets_stable_codes_and_changes_nothing() {
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    let b = h.create_env("other").await;
    let audit_before =
        h.call("GET", "/v1/envs/shop/audit", Some(&h.admin), None).await.json["items"].as_array().unwrap().len();
    let admin = vec![("authorization", format!("Bearer {}", h.admin))];
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, Option<String>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("POST", "/v1/envs", admin.clone(), Some("{not json".into()), 400, "invalid_json"),
        ("POST", "/v1/envs", admin.clone(), Some(r#"{"id": 42}"#.into()), 400, "invalid_body"),
        ("POST", "/v1/envs", admin.clone(), Some(r#"{"id": "x1", "colour": "red"}"#.into()), 400, "invalid_body"),
        ("POST", "/v1/envs", admin.clone(), Some(r#"{"id": "Bad--Id"}"#.into()), 400, "invalid_body"),
        ("POST", "/v1/envs", admin.clone(), Some(format!(r#"{{"id": "big", "name": "{}"}}"#, "x".repeat(2 << 20))), 413, "payload_too_large"),
        ("POST", "/v1/envs", admin.clone(), Some(format!(r#"{{"id": "long", "name": "{}"}}"#, "x".repeat(300))), 400, "invalid_name"),
        ("POST", "/v1/envs", vec![admin[0].clone(), ("content-type", "text/plain".into())], Some("{}".into()), 415, "unsupported_media_type"),
        ("POST", "/v1/envs", admin.clone(), Some("[null, null]".into()), 400, "invalid_body"),
        ("POST", "/v1/envs", admin.clone(), Some(r#"{"id": "nul", "name": "a\u0000b"}"#.into()), 400, "invalid_body"),
        ("GET", "/v1/envs?cursor=%00", admin.clone(), None, 400, "invalid_request"),
        ("GET", "/v1/principals/p%00x", admin.clone(), None, 400, "invalid_request"),
        ("GET", "/v1/envs?limit=0", admin.clone(), None, 400, "invalid_query"),
        ("GET", "/v1/envs/shop/audit?limit=1001", admin.clone(), None, 400, "invalid_query"),
        ("GET", "/v1/envs/nope", admin.clone(), None, 404, "env_not_found"),
        ("GET", "/v1/envs/NOT_AN_ID", admin.clone(), None, 404, "env_not_found"),
        ("GET", "/v1/envs?limit=abc", admin.clone(), None, 400, "invalid_query"),
        ("GET", "/v1/envs?bogus=1", admin.clone(), None, 400, "invalid_query"),
        ("GET", "/v1/envs", vec![], None, 401, "missing_credentials"),
        ("GET", "/v1/envs", vec![("authorization", "Basic Zm9vOmJhcg==".into())], None, 401, "invalid_key"),
        ("GET", "/v1/envs", vec![("authorization", "Bearer garbage".to_owned())], None, 401, "invalid_key"),
        ("GET", "/v1/envs/shop", vec![("authorization", format!("Bearer {}", b.secret()))], None, 403, "env_mismatch"),
        ("GET", "/env/shop/rest/v1/t", vec![("apikey", b.publishable().to_owned())], None, 403, "env_mismatch"),
        ("GET", "/v1/envs", vec![("authorization", format!("Bearer {}", a.secret()))], None, 403, "credential_not_allowed"),
        ("DELETE", "/v1/envs/shop", vec![("authorization", format!("Bearer {}", a.secret()))], None, 403, "credential_not_allowed"),
        ("POST", "/v1/principals", admin.clone(), Some(r#"{"name": "p", "policy": {"version": "1.0", "statement": []}}"#.into()), 400, "policy_unsupported_version"),
        ("POST", "/v1/principals", admin.clone(), Some(r#"{"name": "p", "policy": {"version": "2.0", "statement": [{"effect": "maybe", "action": "*", "resource": "*"}]}}"#.into()), 400, "policy_invalid"),
        ("POST", "/v1/envs/shop/keys/rotate", admin.clone(), Some(r#"{"kind": "admin"}"#.into()), 400, "invalid_body"),
        ("POST", "/v1/envs/shop/keys/rotate", admin.clone(), Some(r#"{"kind": "secret", "overlap_seconds": 99999999}"#.into()), 400, "invalid_overlap"),
        ("POST", "/v1/envs/shop/tokens", admin.clone(), Some(r#"{"ttl_seconds": 0}"#.into()), 400, "invalid_ttl"),
        ("POST", "/v1/envs/shop/tokens", admin.clone(), Some(r#"{"ttl_seconds": 5, "actions": ["no colon"]}"#.into()), 400, "invalid_actions"),
        ("PUT", "/v1/envs/shop/limits", admin.clone(), Some(r#"{"quotas": [{"meter": "bogus", "period": "day", "hard_limit": 1}]}"#.into()), 400, "unknown_meter"),
        ("POST", "/v1/webhooks", admin.clone(), Some(r#"{"url": "ftp://x", "events": ["*"]}"#.into()), 400, "invalid_url"),
        ("POST", "/v1/webhooks", admin.clone(), Some(r#"{"url": "http://127.0.0.1:9/", "events": ["nope"]}"#.into()), 400, "invalid_events"),
        ("POST", "/v1/envs/shop/usage/events", admin.clone(), Some(r#"{"meter": "api_requests", "quantity": -1, "source": "s", "event_id": "e"}"#.into()), 400, "invalid_quantity"),
        ("GET", "/v1/envs/shop/usage?from=yesterday", admin.clone(), None, 400, "invalid_time"),
        ("GET", "/v1/nothing-here", admin.clone(), None, 404, "route_not_found"),
        ("PATCH", "/v1/envs", admin.clone(), None, 405, "method_not_allowed"),
    ];
    for (method, path, headers, body, status, code) in cases {
        let r = h.send(method, path, &headers, body).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.text);
        let got = r.json["code"].as_str().unwrap_or_else(|| panic!("{method} {path}: no code in {}", r.text));
        assert_eq!(got, code, "{method} {path}");
        if path.starts_with("/v1") {
            assert!(r.json["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{method} {path}");
            assert_eq!(r.headers["x-request-id"].to_str().unwrap(), r.json["request_id"].as_str().unwrap());
        }
    }
    // Nothing changed: the same two envs, no new principal or webhook, no successful audit entries.
    let envs = h.call("GET", "/v1/envs", Some(&h.admin), None).await;
    assert_eq!(envs.json["items"].as_array().unwrap().len(), 2);
    assert_eq!(h.call("GET", "/v1/principals", Some(&h.admin), None).await.json["items"].as_array().unwrap().len(), 0);
    assert_eq!(h.call("GET", "/v1/webhooks", Some(&h.admin), None).await.json["items"].as_array().unwrap().len(), 0);
    let audit = h.call("GET", "/v1/envs/shop/audit", Some(&h.admin), None).await;
    let items = audit.json["items"].as_array().unwrap();
    assert!(items.iter().filter(|e| e["result"] == "ok").count() == audit_before, "{items:?}");
    // Failed mutations are audited with their code.
    assert!(items.iter().any(|e| e["action"] == "keys:Rotate" && e["result"] == "invalid_overlap"), "{items:?}");
    let keys = h.call("GET", "/v1/envs/shop/keys", Some(&h.admin), None).await;
    assert_eq!(keys.json["items"].as_array().unwrap().len(), 2, "no key was added");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_cors_headers() {
    let h = Harness::new().await;
    let r = h.send("GET", "/healthz", &[("origin", "http://shop.localhost:8787".into())], None).await;
    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(r.headers["access-control-allow-origin"], "http://shop.localhost:8787");
    let pre = h
        .send(
            "OPTIONS",
            "/env/shop/rest/v1/todos",
            &[
                ("origin", "http://shop.localhost:8787".into()),
                ("access-control-request-method", "POST".into()),
                ("access-control-request-headers", "apikey,authorization,content-type,x-client-info".into()),
            ],
            None,
        )
        .await;
    assert!(pre.status.is_success(), "{}", pre.status);
    assert!(pre.headers["access-control-allow-headers"].to_str().unwrap().contains("apikey"));
    // A client-supplied request id of a safe shape is kept, for tracing across services.
    let r = h.send("GET", "/healthz", &[("x-request-id", "abc-123".into())], None).await;
    assert_eq!(r.headers["x-request-id"], "abc-123");
    let r = h.send("GET", "/healthz", &[("x-request-id", "bad id\twith tab".into())], None).await;
    assert_ne!(r.headers["x-request-id"], "bad id\twith tab");
}

#[tokio::test]
async fn host_form_reaches_the_same_routes_as_path_form() {
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    let hdr = |host: &str| vec![("host", host.to_owned()), ("apikey", a.publishable().to_owned())];
    // A data-API answer (no such table) proves the host form reached the PostgREST route.
    let r = h.send("GET", "/rest/v1/todos", &hdr("shop.localhost:8787"), None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::NOT_FOUND, Some("42P01")));
    // The same origin's API prefixes answer in their own shapes.
    let r = h.send("GET", "/auth/v1/user", &hdr("shop.localhost:8787"), None).await;
    assert_eq!((r.status, r.json["error_code"].as_str()), (StatusCode::UNAUTHORIZED, Some("no_authorization")));
    // Another env's key on this env's host is refused like on the path form.
    let b = h.create_env("other").await;
    let r = h
        .send(
            "GET",
            "/rest/v1/todos",
            &[("host", "shop.localhost".into()), ("apikey", b.publishable().to_owned())],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Site, previews, apps and ports are routed to hosting (nothing published, no such deployment or
    // app, a sandbox port of a missing sandbox: a plain 404).
    for (host, status) in [
        ("shop.localhost", StatusCode::NOT_FOUND),
        ("dpl0000000000--shop.localhost", StatusCode::NOT_FOUND),
        ("api--shop.localhost", StatusCode::NOT_FOUND),
        ("5173-sb1--shop.localhost", StatusCode::NOT_FOUND),
    ] {
        let r = h.send("GET", "/", &[("host", host.to_owned())], None).await;
        assert_eq!(r.status, status, "{host}");
        assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8", "{host}");
    }
}
