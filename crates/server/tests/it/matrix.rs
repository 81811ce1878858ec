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
    /// Extra request headers (E2B's envd names its sandbox in one).
    headers: Vec<(&'static str, String)>,
}

struct World {
    h: Harness,
    /// A live sandbox of env A (with `seed.txt` in its workspace), for the sandbox routes.
    sandbox: String,
    creds: Vec<Option<String>>,
    a_key_to_revoke: String,
    webhook: String,
    principal: String,
    /// An end user of env A (email `user@example.com`, password `password-123`).
    auth_user: String,
    /// A ready, published deployment of env A (`index.html` is `{}`).
    deployment: String,
    /// A pending deployment of env A (`data.json` is `{}`).
    pending: String,
}

/// SHA-256 of `{}`, the body the matrix sends to upload routes.
const EMPTY_OBJECT_SHA: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// A published deployment and a pending one of env A, through the API.
async fn deployments(h: &Harness, key: &str) -> (String, String) {
    let create = |file: &'static str| async move {
        let r = h
            .call("POST", "/v1/envs/tenant-a/deployments", Some(key), Some(json!({"files": {file: EMPTY_OBJECT_SHA}})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json["deployment"]["id"].as_str().unwrap().to_owned()
    };
    let ready = create("index.html").await;
    let auth = [("authorization", format!("Bearer {key}"))];
    let upload = format!("/v1/envs/tenant-a/deployments/{ready}/files/{EMPTY_OBJECT_SHA}");
    let r = h.send("PUT", &upload, &auth, Some("{}".to_owned())).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r =
        h.call("POST", &format!("/v1/envs/tenant-a/deployments/{ready}/finalize?publish=true"), Some(key), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    (ready, create("data.json").await)
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
    let user = h
        .call(
            "POST",
            "/env/tenant-a/auth/v1/admin/users",
            Some(a.secret()),
            Some(json!({"email": "user@example.com", "password": "password-123", "email_confirm": true})),
        )
        .await;
    assert_eq!(user.status, StatusCode::OK, "{}", user.text);
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
    let (deployment, pending) = deployments(&h, &admin).await;
    let session = h.call("POST", "/v1/envs/tenant-a/sessions", Some(&admin), Some(json!({"id": "s-fixture"}))).await;
    assert_eq!(session.status, StatusCode::CREATED, "{}", session.text);
    // A pending custom domain of env A whose TXT record holds its token (so verify succeeds).
    let domain = h
        .call("POST", "/v1/envs/tenant-a/domains", Some(&admin), Some(json!({"domain": "www.tenant-a.example"})))
        .await;
    assert_eq!(domain.status, StatusCode::CREATED, "{}", domain.text);
    h.dns
        .set_txt("_vibebase-challenge.www.tenant-a.example", &[domain.json["verification"]["value"].as_str().unwrap()]);
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
        sandbox: String::new(),
        creds,
        a_key_to_revoke: target.json["id"].as_str().unwrap().to_owned(),
        webhook: webhook.json["id"].as_str().unwrap().to_owned(),
        principal: target_principal.json["id"].as_str().unwrap().to_owned(),
        auth_user: user.json["id"].as_str().unwrap().to_owned(),
        deployment,
        pending,
    }
}

impl World {
    /// Starts env A's sandbox when a route needs one.
    async fn ensure_sandbox(&mut self, path: &str) {
        let needs = path.contains("{sandbox}") || path.contains("/envd/");
        if !needs || !self.sandbox.is_empty() {
            return;
        }
        let r = self
            .h
            .call("POST", "/v1/envs/tenant-a/sandboxes", Some(&self.h.admin), Some(json!({"timeout_seconds": 120})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        self.sandbox = r.json["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/envs/tenant-a/sandboxes/{}/exec", self.sandbox);
        let r = self.h.call("POST", &path, Some(&self.h.admin), Some(json!({"command": "touch seed.txt"}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }

    async fn close(self) {
        if let Ok(s) = &self.h.sandboxes {
            s.kill_all().await;
        }
    }
}

/// The fixture of a route. Adding a route to the table without adding it here fails the test.
fn fixture(method: &str, path: &str, w: &World) -> Option<Fixture> {
    let f = |class, ok, path: String, body| Some(Fixture { class, ok, path, body, headers: Vec::new() });
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
        ("POST", "/v1/envs/{env}/sandboxes") => {
            f("env_tenant", 201, "/v1/envs/tenant-a/sandboxes".into(), Some(json!({"timeout_seconds": 60})))
        }
        ("GET", "/v1/envs/{env}/sandboxes") => f("env_tenant", 200, "/v1/envs/tenant-a/sandboxes".into(), None),
        // Templates are platform-wide; the archive itself is tested on the real binary. Here an empty
        // body (not an archive: 400) and a missing template (404) show who gets past the gate.
        ("PUT", "/v1/templates/{template}") => f("platform", 400, "/v1/templates/t1".into(), None),
        ("GET", "/v1/templates") => f("platform", 200, "/v1/templates".into(), None),
        ("DELETE", "/v1/templates/{template}") => f("platform", 404, "/v1/templates/none".into(), None),
        ("GET", "/v1/envs/{env}/snapshots") => f("env_tenant", 200, "/v1/envs/tenant-a/snapshots".into(), None),
        (_, p) if p.starts_with("/v1/envs/{env}/sandboxes/{sandbox}") => {
            let sb = format!("/v1/envs/tenant-a/sandboxes/{}", w.sandbox);
            let (ok, path, body) = match (method, &p["/v1/envs/{env}/sandboxes/{sandbox}".len()..]) {
                ("GET", "") => (200, sb, None),
                ("DELETE", "") => (204, sb, None),
                ("POST", "/pause" | "/resume") => (200, format!("{sb}{}", &p[p.rfind('/').unwrap_or(0)..]), None),
                ("POST", "/timeout") => (200, format!("{sb}/timeout"), Some(json!({"timeout_seconds": 60}))),
                ("POST", "/exec") => (200, format!("{sb}/exec"), Some(json!({"command": "true"}))),
                ("POST", "/snapshot") => (201, format!("{sb}/snapshot"), None),
                // The workspace holds `seed.txt`: a one-file site.
                ("POST", "/deploy") => (201, format!("{sb}/deploy"), Some(json!({"path": "."}))),
                // A well-formed id that does not exist: refused before or after the gate alike.
                ("POST", "/restore") => {
                    (404, format!("{sb}/restore"), Some(json!({"snapshot": "snap0000000000000000"})))
                }
                ("GET", "/files") => (200, format!("{sb}/files?path=seed.txt"), None),
                ("PUT", "/files") => (200, format!("{sb}/files?path=new.txt"), Some(json!({}))),
                ("DELETE", "/files") => (204, format!("{sb}/files?path=seed.txt"), None),
                ("GET", "/files/list") => (200, format!("{sb}/files/list?path=/home/user"), None),
                ("GET", "/files/stat") => (200, format!("{sb}/files/stat?path=seed.txt"), None),
                ("POST", "/files/mkdir") => (200, format!("{sb}/files/mkdir"), Some(json!({"path": "d"}))),
                ("POST", "/files/move") => {
                    (200, format!("{sb}/files/move"), Some(json!({"from": "seed.txt", "to": "moved.txt"})))
                }
                _ => return None,
            };
            f("env_tenant", ok, path, body)
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
        // GoTrue. Routes that need an end user's access token get the env key as bearer here, which the
        // handler refuses (403 bad_jwt) after the gate let it through.
        ("ANY", "/env/{env}/auth/v1/{*rest}") => f("data_any", 404, "/env/tenant-a/auth/v1/nope".into(), None),
        ("GET", "/env/{env}/auth/v1/health") => f("data_any", 200, "/env/tenant-a/auth/v1/health".into(), None),
        ("GET", "/env/{env}/auth/v1/settings") => f("data_any", 200, "/env/tenant-a/auth/v1/settings".into(), None),
        ("GET", "/env/{env}/auth/v1/.well-known/jwks.json") => {
            f("public", 200, "/env/tenant-a/auth/v1/.well-known/jwks.json".into(), None)
        }
        ("POST", "/env/{env}/auth/v1/signup") => f(
            "data_any",
            200,
            "/env/tenant-a/auth/v1/signup".into(),
            Some(json!({"email": "new@example.com", "password": "password-123"})),
        ),
        ("POST", "/env/{env}/auth/v1/token") => f(
            "data_any",
            200,
            "/env/tenant-a/auth/v1/token?grant_type=password".into(),
            Some(json!({"email": "user@example.com", "password": "password-123"})),
        ),
        ("GET", "/env/{env}/auth/v1/user") => f("data_any", 403, "/env/tenant-a/auth/v1/user".into(), None),
        ("PUT", "/env/{env}/auth/v1/user") => {
            f("data_any", 403, "/env/tenant-a/auth/v1/user".into(), Some(json!({"data": {"a": 1}})))
        }
        ("POST", "/env/{env}/auth/v1/logout") => f("data_any", 403, "/env/tenant-a/auth/v1/logout".into(), None),
        ("POST", "/env/{env}/auth/v1/recover") => {
            f("data_any", 200, "/env/tenant-a/auth/v1/recover".into(), Some(json!({"email": "user@example.com"})))
        }
        ("POST", "/env/{env}/auth/v1/otp") => {
            f("data_any", 200, "/env/tenant-a/auth/v1/otp".into(), Some(json!({"email": "user@example.com"})))
        }
        ("POST", "/env/{env}/auth/v1/resend") => f(
            "data_any",
            200,
            "/env/tenant-a/auth/v1/resend".into(),
            Some(json!({"type": "signup", "email": "user@example.com"})),
        ),
        ("POST", "/env/{env}/auth/v1/verify") => {
            f("data_any", 400, "/env/tenant-a/auth/v1/verify".into(), Some(json!({"token_hash": "00"})))
        }
        ("GET", "/env/{env}/auth/v1/verify") => {
            f("public", 303, "/env/tenant-a/auth/v1/verify?token=00&type=signup".into(), None)
        }
        ("GET", "/env/{env}/auth/v1/admin/users") => {
            f("data_secret", 200, "/env/tenant-a/auth/v1/admin/users".into(), None)
        }
        ("POST", "/env/{env}/auth/v1/admin/users") => f(
            "data_secret",
            200,
            "/env/tenant-a/auth/v1/admin/users".into(),
            Some(json!({"email": "other@example.com", "password": "password-123"})),
        ),
        ("GET", "/env/{env}/auth/v1/admin/users/{user}") => {
            f("data_secret", 200, format!("/env/tenant-a/auth/v1/admin/users/{}", w.auth_user), None)
        }
        ("PUT", "/env/{env}/auth/v1/admin/users/{user}") => f(
            "data_secret",
            200,
            format!("/env/tenant-a/auth/v1/admin/users/{}", w.auth_user),
            Some(json!({"user_metadata": {"plan": "pro"}})),
        ),
        ("DELETE", "/env/{env}/auth/v1/admin/users/{user}") => {
            f("data_secret", 200, format!("/env/tenant-a/auth/v1/admin/users/{}", w.auth_user), None)
        }
        ("GET", "/v1/envs/{env}/auth/settings") => f("env_tenant", 200, "/v1/envs/tenant-a/auth/settings".into(), None),
        ("PUT", "/v1/envs/{env}/auth/settings") => {
            f("env_tenant", 200, "/v1/envs/tenant-a/auth/settings".into(), Some(json!({"anonymous_sign_ins": true})))
        }
        ("GET", "/v1/envs/{env}/auth/outbox") => f("env_tenant", 200, "/v1/envs/tenant-a/auth/outbox".into(), None),
        ("ANY", "/env/{env}/storage/v1/{*rest}") => f("data_any", 200, "/env/tenant-a/storage/v1/bucket".into(), None),
        // Public objects and signed URLs: no key needed (a missing bucket, a missing token).
        ("GET", "/env/{env}/storage/v1/object/public/{*rest}") => {
            f("public", 404, "/env/tenant-a/storage/v1/object/public/pub/a.txt".into(), None)
        }
        // Writes into a bucket named `public` (none exists here).
        ("POST" | "PUT", "/env/{env}/storage/v1/object/public/{*rest}") => {
            f("data_any", 404, "/env/tenant-a/storage/v1/object/public/a.txt".into(), Some(json!({})))
        }
        ("DELETE", "/env/{env}/storage/v1/object/public/{*rest}") => {
            f("data_any", 404, "/env/tenant-a/storage/v1/object/public/a.txt".into(), None)
        }
        ("GET", "/env/{env}/storage/v1/object/sign/{*rest}") => {
            f("public", 400, "/env/tenant-a/storage/v1/object/sign/b/a.txt".into(), None)
        }
        ("PUT", "/env/{env}/storage/v1/object/upload/sign/{*rest}") => {
            f("public", 400, "/env/tenant-a/storage/v1/object/upload/sign/b/a.txt".into(), Some(json!({})))
        }
        ("POST", "/env/{env}/storage/v1/object/sign/{*rest}") => {
            f("data_any", 404, "/env/tenant-a/storage/v1/object/sign/b/a.txt".into(), Some(json!({"expiresIn": 60})))
        }
        ("POST", "/env/{env}/storage/v1/object/upload/sign/{*rest}") => {
            f("data_any", 404, "/env/tenant-a/storage/v1/object/upload/sign/b/a.txt".into(), None)
        }
        // TUS resumable uploads need a key of A (no bucket `b`, no upload).
        ("POST", "/env/{env}/storage/v1/upload/resumable") => Some(Fixture {
            class: "data_any",
            ok: 404,
            path: "/env/tenant-a/storage/v1/upload/resumable".into(),
            body: None,
            headers: vec![
                ("tus-resumable", "1.0.0".into()),
                ("upload-length", "3".into()),
                ("upload-metadata", "bucketName Yg==,objectName YS50eHQ=".into()),
            ],
        }),
        ("HEAD" | "PATCH" | "DELETE", "/env/{env}/storage/v1/upload/resumable/{id}") => Some(Fixture {
            class: "data_any",
            ok: 404,
            path: "/env/tenant-a/storage/v1/upload/resumable/00000000-0000-0000-0000-000000000000".into(),
            body: None,
            headers: vec![
                ("tus-resumable", "1.0.0".into()),
                ("upload-offset", "0".into()),
                ("content-type", "application/offset+octet-stream".into()),
            ],
        }),
        // Signed TUS uploads: the x-signature token is the credential (none here: 400), whatever key.
        ("POST", "/env/{env}/storage/v1/upload/resumable/sign") => Some(Fixture {
            class: "public",
            ok: 400,
            path: "/env/tenant-a/storage/v1/upload/resumable/sign".into(),
            body: None,
            headers: vec![
                ("tus-resumable", "1.0.0".into()),
                ("upload-length", "3".into()),
                ("upload-metadata", "bucketName Yg==,objectName YS50eHQ=".into()),
            ],
        }),
        ("HEAD" | "PATCH" | "DELETE", "/env/{env}/storage/v1/upload/resumable/sign/{id}") => Some(Fixture {
            class: "public",
            ok: 404,
            path: "/env/tenant-a/storage/v1/upload/resumable/sign/00000000-0000-0000-0000-000000000000".into(),
            body: None,
            headers: vec![
                ("tus-resumable", "1.0.0".into()),
                ("upload-offset", "0".into()),
                ("content-type", "application/offset+octet-stream".into()),
            ],
        }),
        // Functions: archives and invocations are tested on the real binary (`vibebase/tests/it/functions.rs`).
        // Here an empty body (not an archive: 400) and a function that does not exist (404) show who gets
        // past the gate.
        ("ANY", "/env/{env}/functions/v1/{*rest}") => {
            f("data_any", 404, "/env/tenant-a/functions/v1/hello".into(), None)
        }
        ("POST", "/v1/envs/{env}/functions/{name}/deploy") => {
            f("env_tenant", 400, "/v1/envs/tenant-a/functions/hello/deploy".into(), None)
        }
        ("GET", "/v1/envs/{env}/functions") => f("env_tenant", 200, "/v1/envs/tenant-a/functions".into(), None),
        ("GET", "/v1/envs/{env}/functions/{name}") => {
            f("env_tenant", 404, "/v1/envs/tenant-a/functions/hello".into(), None)
        }
        ("DELETE", "/v1/envs/{env}/functions/{name}") => {
            f("env_tenant", 404, "/v1/envs/tenant-a/functions/hello".into(), None)
        }
        ("GET", "/v1/envs/{env}/functions/{name}/versions") => {
            f("env_tenant", 404, "/v1/envs/tenant-a/functions/hello/versions".into(), None)
        }
        ("POST", "/v1/envs/{env}/functions/{name}/rollback") => {
            f("env_tenant", 404, "/v1/envs/tenant-a/functions/hello/rollback".into(), Some(json!({"version": 1})))
        }
        ("PUT", "/v1/envs/{env}/functions/{name}/secrets") => f(
            "env_tenant",
            404,
            "/v1/envs/tenant-a/functions/hello/secrets".into(),
            Some(json!({"values": {"API_KEY": "x"}})),
        ),
        ("PUT", "/v1/envs/{env}/functions/{name}/schedule") => f(
            "env_tenant",
            404,
            "/v1/envs/tenant-a/functions/hello/schedule".into(),
            Some(json!({"schedule": "*/5 * * * *"})),
        ),
        ("GET", "/v1/envs/{env}/functions/{name}/logs") => {
            f("env_tenant", 200, "/v1/envs/tenant-a/functions/hello/logs".into(), None)
        }
        ("ANY", "/env/{env}/e2b/{*rest}") => f("data_hands", 200, "/env/tenant-a/e2b/sandboxes".into(), None),
        ("ANY", "/env/{env}/e2b/envd/{*rest}") => Some(Fixture {
            class: "data_hands",
            ok: 204,
            path: "/env/tenant-a/e2b/envd/health".into(),
            body: None,
            headers: vec![("e2b-sandbox-id", w.sandbox.clone())],
        }),
        ("ANY", "/env/{env}/llm/v1/{*rest}") => f("data_hands", 200, "/env/tenant-a/llm/v1/models".into(), None),
        // GET past the gate: no server-initiated stream is offered (the MCP tests post messages).
        ("ANY", "/env/{env}/mcp") => f("data_secret", 405, "/env/tenant-a/mcp".into(), None),
        // No model is configured in the matrix: the run is refused after the gate, and nothing is written.
        ("POST", "/v1/envs/{env}/agent") => f(
            "data_secret",
            400,
            "/v1/envs/tenant-a/agent".into(),
            Some(json!({"threadId": "s-fixture", "messages": [{"role": "user", "content": "hi"}]})),
        ),
        ("POST", "/v1/envs/{env}/sessions") => {
            f("env_tenant", 400, "/v1/envs/tenant-a/sessions".into(), Some(json!({"model": "no-such-model"})))
        }
        ("GET", "/v1/envs/{env}/sessions") => f("env_tenant", 200, "/v1/envs/tenant-a/sessions".into(), None),
        ("GET", "/v1/envs/{env}/sessions/{session}") => {
            f("env_tenant", 200, "/v1/envs/tenant-a/sessions/s-fixture".into(), None)
        }
        ("GET", "/v1/envs/{env}/sessions/{session}/events") => {
            f("env_tenant", 200, "/v1/envs/tenant-a/sessions/s-fixture/events?follow=false".into(), None)
        }
        ("POST", "/v1/envs/{env}/sessions/{session}/messages") => {
            f("env_tenant", 400, "/v1/envs/tenant-a/sessions/s-fixture/messages".into(), Some(json!({"content": "hi"})))
        }
        ("POST", "/v1/envs/{env}/sessions/{session}/approvals") => f(
            "env_tenant",
            404,
            "/v1/envs/tenant-a/sessions/s-fixture/approvals".into(),
            Some(json!({"tool_call_id": "call_none", "decision": "allow"})),
        ),
        // A seq that is no checkpoint: refused, nothing written (the session's log is unchanged).
        ("POST", "/v1/envs/{env}/sessions/{session}/revert") => {
            f("env_tenant", 404, "/v1/envs/tenant-a/sessions/s-fixture/revert".into(), Some(json!({"checkpoint": 1})))
        }
        ("POST", "/v1/envs/{env}/sessions/{session}/interrupt") => {
            f("env_tenant", 404, "/v1/envs/tenant-a/sessions/no-such-session/interrupt".into(), None)
        }
        ("ANY", "/env/{env}/site/{*rest}") => f("public", 200, "/env/tenant-a/site/index.html".into(), None),
        ("ANY", "/env/{env}/deployments/{deployment}/{*rest}") => {
            f("public", 200, format!("/env/tenant-a/deployments/{}/index.html", w.deployment), None)
        }
        ("POST", "/v1/envs/{env}/deployments") => f(
            "env_tenant",
            201,
            "/v1/envs/tenant-a/deployments".into(),
            Some(json!({"files": {"index.html": EMPTY_OBJECT_SHA}})),
        ),
        ("GET", "/v1/envs/{env}/deployments") => f("env_tenant", 200, "/v1/envs/tenant-a/deployments".into(), None),
        // An empty body is no archive: 400 once past the gate (archives are tested in `hosting`).
        ("POST", "/v1/envs/{env}/deployments/archive") => {
            f("env_tenant", 400, "/v1/envs/tenant-a/deployments/archive".into(), None)
        }
        ("GET", "/v1/envs/{env}/deployments/{deployment}") => {
            f("env_tenant", 200, format!("/v1/envs/tenant-a/deployments/{}", w.deployment), None)
        }
        ("PUT", "/v1/envs/{env}/deployments/{deployment}/files/{sha256}") => f(
            "env_tenant",
            204,
            format!("/v1/envs/tenant-a/deployments/{}/files/{EMPTY_OBJECT_SHA}", w.pending),
            Some(json!({})),
        ),
        ("POST", "/v1/envs/{env}/deployments/{deployment}/finalize") => {
            f("env_tenant", 200, format!("/v1/envs/tenant-a/deployments/{}/finalize", w.pending), None)
        }
        ("POST", "/v1/envs/{env}/deployments/{deployment}/publish") => {
            f("env_tenant", 200, format!("/v1/envs/tenant-a/deployments/{}/publish", w.deployment), None)
        }
        ("POST", "/v1/envs/{env}/deployments/{deployment}/rollback") => {
            f("env_tenant", 200, format!("/v1/envs/tenant-a/deployments/{}/rollback", w.deployment), None)
        }
        ("POST", "/v1/envs/{env}/domains") => {
            f("env_tenant", 201, "/v1/envs/tenant-a/domains".into(), Some(json!({"domain": "shop.tenant-a.example"})))
        }
        ("GET", "/v1/envs/{env}/domains") => f("env_tenant", 200, "/v1/envs/tenant-a/domains".into(), None),
        ("GET", "/v1/envs/{env}/domains/{domain}") => {
            f("env_tenant", 200, "/v1/envs/tenant-a/domains/www.tenant-a.example".into(), None)
        }
        ("POST", "/v1/envs/{env}/domains/{domain}/verify") => {
            f("env_tenant", 200, "/v1/envs/tenant-a/domains/www.tenant-a.example/verify".into(), None)
        }
        ("DELETE", "/v1/envs/{env}/domains/{domain}") => {
            f("env_tenant", 204, "/v1/envs/tenant-a/domains/www.tenant-a.example".into(), None)
        }
        // No certificate order is in progress: 404 for everyone.
        ("GET", "/.well-known/acme-challenge/{token}") => {
            f("public", 404, "/.well-known/acme-challenge/abcdef".into(), None)
        }
        // Container apps: running ones are tested on the real binary (`vibebase/tests/it/apps.rs`). No app
        // exists here, so an authorized request gets 404 (or 400 for a definition with a bad port) and
        // nothing is written; serving is public, and an unknown app is 404 for everyone.
        ("ANY", "/env/{env}/apps/{app}/{*rest}") => f("public", 404, "/env/tenant-a/apps/api/health".into(), None),
        ("GET", "/v1/envs/{env}/apps") => f("env_tenant", 200, "/v1/envs/tenant-a/apps".into(), None),
        ("PUT", "/v1/envs/{env}/apps/{app}") => f(
            "env_tenant",
            400,
            "/v1/envs/tenant-a/apps/api".into(),
            Some(json!({"command": "node server.js", "port": 0})),
        ),
        ("GET", "/v1/envs/{env}/apps/{app}") => f("env_tenant", 404, "/v1/envs/tenant-a/apps/api".into(), None),
        ("DELETE", "/v1/envs/{env}/apps/{app}") => f("env_tenant", 404, "/v1/envs/tenant-a/apps/api".into(), None),
        ("PUT", "/v1/envs/{env}/apps/{app}/archive") => {
            f("env_tenant", 404, "/v1/envs/tenant-a/apps/api/archive".into(), Some(json!({})))
        }
        ("POST", "/v1/envs/{env}/apps/{app}/from-sandbox") => f(
            "env_tenant",
            404,
            "/v1/envs/tenant-a/apps/api/from-sandbox".into(),
            Some(json!({"sandbox": w.sandbox, "path": "."})),
        ),
        ("POST", "/v1/envs/{env}/apps/{app}/restart") => {
            f("env_tenant", 404, "/v1/envs/tenant-a/apps/api/restart".into(), None)
        }
        ("GET", "/v1/envs/{env}/apps/{app}/logs") => {
            f("env_tenant", 404, "/v1/envs/tenant-a/apps/api/logs".into(), None)
        }
        // Previews are public (like E2B's port URLs); nothing listens on the port: 502 for everyone.
        ("ANY", "/env/{env}/sandboxes/{sandbox}/ports/{port}/{*rest}") => {
            f("public", 502, format!("/env/tenant-a/sandboxes/{}/ports/5173/index.html", w.sandbox), None)
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
        shared.ensure_sandbox(spec.path).await;
        let Some(fx) = fixture(spec.method, spec.path, &shared) else {
            panic!("route {} {} has no fixture in the matrix: add one", spec.method, spec.path);
        };
        let want = expected(fx.class);
        for (i, cred) in CREDENTIALS.iter().enumerate() {
            // A mutation that gets through may change the world: the next cell gets a fresh one. A
            // refused one changes nothing (or it is a leak, which this cell reports). Fresh worlds only
            // where needed keep the PostgreSQL run short: each world creates env databases.
            let w = &shared;
            let fx = fixture(spec.method, spec.path, w).unwrap();
            let mut headers = fx.headers.clone();
            if let Some(c) = w.creds[i].as_deref() {
                headers.push(("authorization", format!("Bearer {c}")));
            }
            let r = w.h.send(method, &fx.path, &headers, fx.body.as_ref().map(Value::to_string)).await;
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
            if method != "GET" && r.status.is_success() {
                let mut next = world().await;
                next.ensure_sandbox(spec.path).await;
                std::mem::replace(&mut shared, next).close().await;
            }
        }
        if method != "GET" {
            std::mem::replace(&mut shared, world().await).close().await;
        }
    }
    shared.close().await;
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

/// Every envd RPC method and route, with the credentials that must not reach env A's sandbox: env B's
/// secret key and env B's envd token (wrong env), and the envd token of A's other sandbox (wrong
/// sandbox). A's own envd token for the sandbox gets past authorization on each.
#[tokio::test]
async fn envd_methods_refuse_other_envs_and_other_sandboxes() {
    let h = crate::harness::Harness::new().await;
    let a = h.create_env("env-a").await;
    let b = h.create_env("env-b").await;
    let start = |env: &'static str| {
        let h = &h;
        async move {
            let r = h
                .call(
                    "POST",
                    &format!("/v1/envs/{env}/sandboxes"),
                    Some(&h.admin),
                    Some(json!({"timeout_seconds": 60})),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            (r.json["id"].as_str().unwrap().to_owned(), r.json["envd_access_token"].as_str().unwrap().to_owned())
        }
    };
    let (a1, a1_token) = start("env-a").await;
    let (_a2, a2_token) = start("env-a").await;
    let (_b1, b1_token) = start("env-b").await;
    let methods = [
        "process.Process/Start",
        "process.Process/Connect",
        "process.Process/List",
        "process.Process/Update",
        "process.Process/StreamInput",
        "process.Process/SendInput",
        "process.Process/SendSignal",
        "process.Process/CloseStdin",
        "filesystem.Filesystem/Stat",
        "filesystem.Filesystem/MakeDir",
        "filesystem.Filesystem/Move",
        "filesystem.Filesystem/ListDir",
        "filesystem.Filesystem/WatchDir",
        "filesystem.Filesystem/Remove",
        "filesystem.Filesystem/CreateWatcher",
        "filesystem.Filesystem/GetWatcherEvents",
        "filesystem.Filesystem/RemoveWatcher",
        "files",
        "health",
    ];
    let refused: [(&str, &str, StatusCode); 4] = [
        ("b secret", b.secret(), StatusCode::FORBIDDEN),
        ("b envd token", &b1_token, StatusCode::FORBIDDEN),
        ("a's other sandbox's envd token", &a2_token, StatusCode::FORBIDDEN),
        ("a publishable", a.publishable(), StatusCode::FORBIDDEN),
    ];
    for method in methods {
        let path = format!("/env/env-a/e2b/envd/{method}");
        let verb = if matches!(method, "files" | "health") { "GET" } else { "POST" };
        for (who, token, want) in &refused {
            let headers = [("x-access-token", (*token).to_owned()), ("e2b-sandbox-id", a1.clone())];
            let r = h.send(verb, &path, &headers, Some("{}".to_owned())).await;
            assert_eq!(r.status, *want, "{method} with {who}: {}", r.text);
        }
        let headers = [("x-access-token", a1_token.clone()), ("e2b-sandbox-id", a1.clone())];
        let r = h.send(verb, &path, &headers, Some("{}".to_owned())).await;
        assert!(
            r.status != StatusCode::UNAUTHORIZED && r.status != StatusCode::FORBIDDEN,
            "{method} with the sandbox's own token: {} {}",
            r.status,
            r.text
        );
    }
    if let Ok(s) = &h.sandboxes {
        s.kill_all().await;
    }
}
