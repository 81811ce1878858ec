//! The cross-tenant matrix: every route of the router's own table × every kind of credential, each cell
//! aimed at a real resource of env A. Expected outcomes are literal below, per route class; the class of
//! each route is literal in its fixture. A route without a fixture fails the test, so a new route cannot
//! escape the matrix.

use http::StatusCode;
use serde_json::{Value, json};
use server::routes::route_table;

use crate::harness::{EnvKeysExt, Harness};

/// The credentials of the matrix, in column order.
const CREDENTIALS: [&str; 11] = [
    "admin",
    "a_secret",
    "a_publishable",
    "a_minted",
    "b_secret",
    "b_publishable",
    "owner_of_a",
    "explicit_deny",
    "none",
    "garbage",
    "revoked",
];

/// An expected cell: the route's success status, or a refusal status.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Ok,
    S(u16),
}
use Want::{Ok as OK, S};

/// Literal expectations per route class, one entry per credential in [`CREDENTIALS`] order.
fn expected(class: &str) -> [Want; 11] {
    match class {
        // Anyone, no credential needed.
        "public" => [OK, OK, OK, OK, OK, OK, OK, OK, OK, OK, OK],
        // /v1 routes about one env that its secret key may use.
        "env_tenant" => [OK, OK, S(403), S(403), S(403), S(403), OK, S(403), S(401), S(401), S(401)],
        // /v1 routes about one env reserved to the operator (lifecycle, limits, usage reporting).
        "env_operator" => [OK, S(403), S(403), S(403), S(403), S(403), OK, S(403), S(401), S(401), S(401)],
        // Platform-wide /v1 routes.
        "platform" => [OK, S(403), S(403), S(403), S(403), S(403), S(403), OK, S(401), S(401), S(401)],
        // Creating an env (the fixture creates a new id, not A): owner-of-A may not.
        "create_env" => [OK, S(403), S(403), S(403), S(403), S(403), S(403), OK, S(401), S(401), S(401)],
        // Listing envs: any platform principal; the list is filtered (checked separately below).
        "list_envs" => [OK, S(403), S(403), S(403), S(403), S(403), OK, OK, S(401), S(401), S(401)],
        // The platform audit log asked for env A: decided on A, like A's own routes, env keys excluded.
        "env_log" => [OK, S(403), S(403), S(403), S(403), S(403), OK, S(403), S(401), S(401), S(401)],
        // Browser-facing data plane: every key of A, none of B.
        "data_any" => [OK, OK, OK, OK, S(403), S(403), OK, S(403), S(401), S(401), S(401)],
        // Data plane for the hands: secret key and minted tokens of A.
        "data_hands" => [OK, OK, S(403), OK, S(403), S(403), OK, S(403), S(401), S(401), S(401)],
        // Data plane for trusted callers only (MCP): secret key of A.
        "data_secret" => [OK, OK, S(403), S(403), S(403), S(403), OK, S(403), S(401), S(401), S(401)],
        other => panic!("unknown class {other}"),
    }
}

/// A concrete request for one route: (class, success status, path, body).
struct Fixture {
    class: &'static str,
    ok: u16,
    path: String,
    body: Option<Value>,
}

struct World {
    h: Harness,
    creds: Vec<Option<String>>,
    a_key_to_revoke: String,
    webhook: String,
    principal: String,
}

async fn world() -> World {
    let h = Harness::new().await;
    let a = h.create_env("tenant-a").await;
    let b = h.create_env("tenant-b").await;
    let admin = h.admin.clone();
    let mint = |ttl: u64| json!({"ttl_seconds": ttl, "session": "s1"});
    let minted = h.call("POST", "/v1/envs/tenant-a/tokens", Some(a.secret()), Some(mint(600))).await;
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.text);
    let target = h.call("POST", "/v1/envs/tenant-a/tokens", Some(a.secret()), Some(mint(600))).await;
    let owner_policy = h.call("POST", "/v1/policies/owner", Some(&admin), Some(json!({"env": "tenant-a"}))).await;
    assert_eq!(owner_policy.status, StatusCode::OK, "{}", owner_policy.text);
    let owner = h
        .call("POST", "/v1/principals", Some(&admin), Some(json!({"name": "owner", "policy": owner_policy.json})))
        .await;
    assert_eq!(owner.status, StatusCode::CREATED, "{}", owner.text);
    let deny_policy = json!({"version": "2.0", "statement": [
        {"effect": "allow", "action": ["*"], "resource": ["*"]},
        {"effect": "deny", "action": ["*"], "resource": ["vrn:vibebase:env/tenant-a", "vrn:vibebase:env/tenant-a/*"]},
    ]});
    let deny =
        h.call("POST", "/v1/principals", Some(&admin), Some(json!({"name": "deny", "policy": deny_policy}))).await;
    assert_eq!(deny.status, StatusCode::CREATED, "{}", deny.text);
    // A second secret key, rotated in with overlap 0, so the first one is revoked.
    let rotated = h
        .call(
            "POST",
            "/v1/envs/tenant-a/keys/rotate",
            Some(&admin),
            Some(json!({"kind": "secret", "overlap_seconds": 0})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let a_secret = rotated.json["key"].as_str().unwrap().to_owned();
    let webhook = h
        .call("POST", "/v1/webhooks", Some(&admin), Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]})))
        .await;
    assert_eq!(webhook.status, StatusCode::CREATED, "{}", webhook.text);
    let target_principal = h
        .call("POST", "/v1/principals", Some(&admin), Some(json!({"name": "target", "policy": owner_policy.json})))
        .await;
    let creds = vec![
        Some(admin),
        Some(a_secret),
        Some(a.publishable().to_owned()),
        Some(minted.json["token"].as_str().unwrap().to_owned()),
        Some(b.secret().to_owned()),
        Some(b.publishable().to_owned()),
        Some(owner.json["key"].as_str().unwrap().to_owned()),
        Some(deny.json["key"].as_str().unwrap().to_owned()),
        None,
        Some("vb_sk_garbage-garbage".to_owned()),
        Some(a.secret().to_owned()),
    ];
    World {
        h,
        creds,
        a_key_to_revoke: target.json["id"].as_str().unwrap().to_owned(),
        webhook: webhook.json["id"].as_str().unwrap().to_owned(),
        principal: target_principal.json["id"].as_str().unwrap().to_owned(),
    }
}

/// The fixture of a route. Adding a route to the table without adding it here fails the test.
fn fixture(method: &str, path: &str, w: &World) -> Option<Fixture> {
    let f = |class, ok, path: String, body| Some(Fixture { class, ok, path, body });
    match (method, path) {
        ("GET", "/healthz") => f("public", 200, "/healthz".into(), None),
        ("GET", "/metrics") => f("public", 200, "/metrics".into(), None),
        ("GET", "/openapi.json") => f("public", 200, "/openapi.json".into(), None),
        ("POST", "/v1/envs") => f("create_env", 201, "/v1/envs".into(), Some(json!({"id": "brand-new"}))),
        ("GET", "/v1/envs") => f("list_envs", 200, "/v1/envs".into(), None),
        ("GET", "/v1/envs/{env}") => f("env_tenant", 200, "/v1/envs/tenant-a".into(), None),
        ("DELETE", "/v1/envs/{env}") => f("env_operator", 204, "/v1/envs/tenant-a".into(), None),
        ("POST", "/v1/envs/{env}/suspend") => f("env_operator", 200, "/v1/envs/tenant-a/suspend".into(), None),
        ("POST", "/v1/envs/{env}/resume") => f("env_operator", 200, "/v1/envs/tenant-a/resume".into(), None),
        ("GET", "/v1/envs/{env}/keys") => f("env_tenant", 200, "/v1/envs/tenant-a/keys".into(), None),
        ("POST", "/v1/envs/{env}/keys/rotate") => f(
            "env_tenant",
            200,
            "/v1/envs/tenant-a/keys/rotate".into(),
            Some(json!({"kind": "publishable", "overlap_seconds": 60})),
        ),
        ("POST", "/v1/envs/{env}/keys/{key}/revoke") => {
            f("env_tenant", 200, format!("/v1/envs/tenant-a/keys/{}/revoke", w.a_key_to_revoke), None)
        }
        ("POST", "/v1/envs/{env}/tokens") => {
            f("env_tenant", 201, "/v1/envs/tenant-a/tokens".into(), Some(json!({"ttl_seconds": 60})))
        }
        ("GET", "/v1/envs/{env}/audit") => f("env_tenant", 200, "/v1/envs/tenant-a/audit".into(), None),
        ("GET", "/v1/envs/{env}/usage") => f("env_tenant", 200, "/v1/envs/tenant-a/usage".into(), None),
        ("POST", "/v1/envs/{env}/usage/events") => f(
            "env_operator",
            200,
            "/v1/envs/tenant-a/usage/events".into(),
            Some(json!({"meter": "storage_ops", "quantity": 3, "source": "test", "event_id": "e1"})),
        ),
        ("GET", "/v1/envs/{env}/limits") => f("env_tenant", 200, "/v1/envs/tenant-a/limits".into(), None),
        ("PUT", "/v1/envs/{env}/limits") => {
            f("env_operator", 200, "/v1/envs/tenant-a/limits".into(), Some(json!({"rate_limit_per_second": 50})))
        }
        ("GET", "/v1/envs/{env}/alerts") => f("env_tenant", 200, "/v1/envs/tenant-a/alerts".into(), None),
        ("GET", "/v1/usage") => f("platform", 200, "/v1/usage".into(), None),
        ("GET", "/v1/meters") => f("platform", 200, "/v1/meters".into(), None),
        ("GET", "/v1/audit") => f("env_log", 200, "/v1/audit?env=tenant-a".into(), None),
        ("POST", "/v1/principals") => f(
            "platform",
            201,
            "/v1/principals".into(),
            Some(
                json!({"name": "new", "policy": {"version": "2.0", "statement": [{"effect": "allow", "action": "env:Get", "resource": "*"}]}}),
            ),
        ),
        ("GET", "/v1/principals") => f("platform", 200, "/v1/principals".into(), None),
        ("GET", "/v1/principals/{principal}") => f("platform", 200, format!("/v1/principals/{}", w.principal), None),
        ("PUT", "/v1/principals/{principal}/policy") => f(
            "platform",
            200,
            format!("/v1/principals/{}/policy", w.principal),
            Some(
                json!({"policy": {"version": "2.0", "statement": [{"effect": "deny", "action": "*", "resource": "*"}]}}),
            ),
        ),
        ("DELETE", "/v1/principals/{principal}") => f("platform", 204, format!("/v1/principals/{}", w.principal), None),
        ("POST", "/v1/policies/owner") => {
            f("platform", 200, "/v1/policies/owner".into(), Some(json!({"env": "tenant-a"})))
        }
        ("POST", "/v1/webhooks") => f(
            "platform",
            201,
            "/v1/webhooks".into(),
            Some(json!({"url": "http://127.0.0.1:9/x", "events": ["env.created"]})),
        ),
        ("GET", "/v1/webhooks") => f("platform", 200, "/v1/webhooks".into(), None),
        ("DELETE", "/v1/webhooks/{webhook}") => f("platform", 204, format!("/v1/webhooks/{}", w.webhook), None),
        ("GET", "/v1/webhooks/{webhook}/deliveries") => {
            f("platform", 200, format!("/v1/webhooks/{}/deliveries", w.webhook), None)
        }
        // Data-plane surfaces are guarded now and answer 501 until their protocol lands.
        // A's database has no tables: the data API answers PostgREST's 404 once the gate lets it through.
        ("ANY", "/env/{env}/rest/v1/{*rest}") => f("data_any", 404, "/env/tenant-a/rest/v1/todos".into(), None),
        ("POST", "/v1/envs/{env}/sql") => f(
            "env_tenant",
            200,
            "/v1/envs/tenant-a/sql".into(),
            Some(json!({"query": "create table if not exists todos (id bigint primary key, title text)"})),
        ),
        ("ANY", "/env/{env}/auth/v1/{*rest}") => f("data_any", 501, "/env/tenant-a/auth/v1/user".into(), None),
        ("ANY", "/env/{env}/storage/v1/{*rest}") => f("data_any", 501, "/env/tenant-a/storage/v1/bucket".into(), None),
        ("ANY", "/env/{env}/functions/v1/{*rest}") => {
            f("data_any", 501, "/env/tenant-a/functions/v1/hello".into(), None)
        }
        ("ANY", "/env/{env}/llm/v1/{*rest}") => f("data_hands", 501, "/env/tenant-a/llm/v1/models".into(), None),
        ("ANY", "/env/{env}/e2b/{*rest}") => f("data_hands", 501, "/env/tenant-a/e2b/sandboxes".into(), None),
        ("ANY", "/env/{env}/mcp") => f("data_secret", 501, "/env/tenant-a/mcp".into(), None),
        ("POST", "/v1/envs/{env}/agent") => f("data_secret", 501, "/v1/envs/tenant-a/agent".into(), Some(json!({}))),
        ("ANY", "/env/{env}/site/{*rest}") => f("public", 501, "/env/tenant-a/site/index.html".into(), None),
        ("ANY", "/env/{env}/deployments/{deployment}/{*rest}") => {
            f("public", 501, "/env/tenant-a/deployments/dpl0000000000/index.html".into(), None)
        }
        ("ANY", "/env/{env}/apps/{app}/{*rest}") => f("public", 501, "/env/tenant-a/apps/api/health".into(), None),
        ("ANY", "/env/{env}/sandboxes/{sandbox}/ports/{port}/{*rest}") => {
            f("public", 501, "/env/tenant-a/sandboxes/sb1/ports/5173/index.html".into(), None)
        }
        _ => None,
    }
}

#[tokio::test]
async fn cross_tenant_matrix_has_zero_leaks() {
    let mut failures = Vec::new();
    let mut cells = 0;
    let mut shared = world().await;
    for spec in route_table() {
        let method = if spec.method == "ANY" { "GET" } else { spec.method };
        let Some(fx) = fixture(spec.method, spec.path, &shared) else {
            panic!("route {} {} has no fixture in the matrix: add one", spec.method, spec.path);
        };
        let want = expected(fx.class);
        for (i, cred) in CREDENTIALS.iter().enumerate() {
            // A mutation may change the world; give each mutating cell a fresh one.
            let fresh;
            let w = if method == "GET" {
                &shared
            } else {
                fresh = world().await;
                &fresh
            };
            let fx = fixture(spec.method, spec.path, w).unwrap();
            let r = w.h.call(method, &fx.path, w.creds[i].as_deref(), fx.body.clone()).await;
            cells += 1;
            let expect = match want[i] {
                Want::Ok => fx.ok,
                Want::S(s) => s,
            };
            if r.status.as_u16() != expect {
                failures.push(format!("{method} {} as {cred}: want {expect}, got {} {}", fx.path, r.status, r.text));
            }
            // A refusal carries nothing of env A.
            if r.status.is_client_error() && r.status != StatusCode::NOT_IMPLEMENTED {
                let a_pk = w.creds[2].as_deref().unwrap();
                assert!(!r.text.contains(a_pk), "{method} {} as {cred} leaked A's key", fx.path);
            }
        }
        if method != "GET" {
            shared = world().await;
        }
    }
    assert!(failures.is_empty(), "{} of {cells} cells wrong:\n{}", failures.len(), failures.join("\n"));
    assert!(cells >= 11 * 40, "matrix too small: {cells}");
}

#[tokio::test]
async fn listing_shows_a_sub_account_only_the_envs_its_policy_allows() {
    let w = world().await;
    let owner = w.creds[6].as_deref();
    let r = w.h.call("GET", "/v1/envs", owner, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let ids: Vec<&str> = r.json["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tenant-a"]);
    let deny = w.creds[7].as_deref();
    let r = w.h.call("GET", "/v1/envs", deny, None).await;
    let ids: Vec<&str> = r.json["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tenant-b"]);
}

#[tokio::test]
async fn platform_audit_log_hides_the_envs_a_policy_denies() {
    let w = world().await;
    let all = w.h.call("GET", "/v1/audit", w.creds[0].as_deref(), None).await;
    let envs_of = |r: &crate::harness::Resp| -> Vec<String> {
        r.json["items"].as_array().unwrap().iter().filter_map(|e| e["env"].as_str().map(str::to_owned)).collect()
    };
    assert!(envs_of(&all).iter().any(|e| e == "tenant-a"));
    let deny = w.h.call("GET", "/v1/audit", w.creds[7].as_deref(), None).await;
    assert_eq!(deny.status, StatusCode::OK);
    let seen = envs_of(&deny);
    assert!(seen.iter().any(|e| e == "tenant-b") && !seen.iter().any(|e| e == "tenant-a"), "{seen:?}");
    // Owner of A has no platform-wide grant.
    let owner = w.h.call("GET", "/v1/audit", w.creds[6].as_deref(), None).await;
    assert_eq!(owner.status, StatusCode::FORBIDDEN);
}
