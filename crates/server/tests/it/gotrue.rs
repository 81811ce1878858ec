//! End-user auth through the router, as supabase-js calls it: `apikey` carries the env key,
//! `Authorization: Bearer` the user's access token.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use protocol::api::EnvRecord;
use serde_json::{Value, json};

use crate::harness::{EnvKeysExt, Harness, Resp};

const PASSWORD: &str = "password-123";

struct Env {
    h: Harness,
    rec: EnvRecord,
    id: String,
}

async fn env() -> Env {
    let h = Harness::new().await;
    let rec = h.create_env("shop").await;
    Env { h, rec, id: "shop".into() }
}

impl Env {
    fn path(&self, p: &str) -> String {
        format!("/env/{}/auth/v1{p}", self.id)
    }

    /// A GoTrue call with the publishable key, and a user token if given.
    async fn call(&self, method: &str, p: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        self.call_with(self.rec.publishable(), method, p, token, body).await
    }

    async fn call_with(&self, key: &str, method: &str, p: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        let mut headers = vec![("apikey", key.to_owned())];
        headers.push(("authorization", format!("Bearer {}", token.unwrap_or(key))));
        self.h.send(method, &self.path(p), &headers, body.map(|b| b.to_string())).await
    }

    async fn admin(&self, method: &str, p: &str, body: Option<Value>) -> Resp {
        self.call_with(self.rec.secret(), method, p, None, body).await
    }

    async fn settings(&self, patch: Value) {
        let r = self
            .h
            .call("PUT", &format!("/v1/envs/{}/auth/settings", self.id), Some(self.rec.secret()), Some(patch))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }

    async fn signup(&self, email: &str) -> Resp {
        self.call("POST", "/signup", None, Some(json!({"email": email, "password": PASSWORD, "data": {"name": "Ann"}})))
            .await
    }

    async fn sign_in(&self, email: &str, password: &str) -> Resp {
        self.call("POST", "/token?grant_type=password", None, Some(json!({"email": email, "password": password}))).await
    }

    async fn refresh(&self, token: &str) -> Resp {
        self.call("POST", "/token?grant_type=refresh_token", None, Some(json!({"refresh_token": token}))).await
    }

    async fn outbox(&self) -> Vec<Value> {
        let r = self.h.call("GET", &format!("/v1/envs/{}/auth/outbox", self.id), Some(self.rec.secret()), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json["items"].as_array().unwrap().clone()
    }
}

fn gotrue_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    assert_eq!(r.json["error_code"], code, "{}", r.text);
    assert_eq!(r.json["code"], status, "{}", r.text);
    assert!(r.json["msg"].is_string(), "{}", r.text);
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn code_in(mail: &Value) -> String {
    let body = mail["body"].as_str().unwrap();
    body.rsplit("code: ").next().unwrap().trim().to_owned()
}

fn session_ok(r: &Resp) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for k in ["access_token", "refresh_token", "user"] {
        assert!(!r.json[k].is_null(), "{k} missing: {}", r.text);
    }
    assert_eq!(r.json["token_type"], "bearer");
    assert!(r.json["expires_in"].as_i64().unwrap() > 0);
    assert!(r.json["expires_at"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn sign_up_sign_in_get_user_and_the_jwt() {
    let e = env().await;
    let r = e.signup("Ann@Example.com").await;
    session_ok(&r);
    let user = &r.json["user"];
    assert_eq!(user["email"], "ann@example.com");
    assert_eq!(user["aud"], "authenticated");
    assert_eq!(user["role"], "authenticated");
    assert_eq!(user["user_metadata"]["name"], "Ann");
    assert_eq!(user["app_metadata"]["provider"], "email");
    assert_eq!(user["identities"][0]["provider"], "email");
    assert!(user["email_confirmed_at"].is_string());
    assert_eq!(user["is_anonymous"], false);

    let c = claims(r.json["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], user["id"]);
    assert_eq!(c["role"], "authenticated");
    assert_eq!(c["aud"], "authenticated");
    assert_eq!(c["email"], "ann@example.com");
    assert!(c["session_id"].is_string());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 3600);
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD.decode(r.json["access_token"].as_str().unwrap().split('.').next().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");

    // JWKS: public, the key that signed the token.
    let jwks = e.h.send("GET", &e.path("/.well-known/jwks.json"), &[], None).await;
    assert_eq!(jwks.status, StatusCode::OK, "{}", jwks.text);
    assert_eq!(jwks.json["keys"][0]["kid"], header["kid"]);
    assert_eq!(jwks.json["keys"][0]["kty"], "EC");
    assert!(jwks.json["keys"][0].get("d").is_none(), "private key published");

    let me = e.call("GET", "/user", r.json["access_token"].as_str(), None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.json["id"], user["id"]);

    let s = e.sign_in("ann@example.com", PASSWORD).await;
    session_ok(&s);
    assert_eq!(s.json["user"]["id"], user["id"]);
    assert!(s.json["user"]["last_sign_in_at"].is_string());
    gotrue_error(&e.sign_in("ann@example.com", "wrong-password").await, 400, "invalid_credentials");
    gotrue_error(&e.sign_in("nobody@example.com", PASSWORD).await, 400, "invalid_credentials");
    gotrue_error(&e.signup("ann@example.com").await, 422, "user_already_exists");

    // The data API's view: verified claims for this env.
    let env_id = protocol::EnvId::parse("shop").unwrap();
    let auth = auth::Auth::new(e.h.platform.clone(), auth::AuthConfig::default());
    let v = auth.verify_access_token(&env_id, s.json["access_token"].as_str().unwrap()).await.unwrap();
    assert_eq!(v.claims.sub, user["id"].as_str().unwrap());
    assert_eq!(v.payload["email"], "ann@example.com");
}

#[tokio::test]
async fn bad_input_gets_gotrue_errors_and_writes_nothing() {
    let e = env().await;
    let r = e.call("POST", "/signup", None, Some(json!({"email": "a@example.com", "password": "123"}))).await;
    gotrue_error(&r, 422, "weak_password");
    assert_eq!(r.json["weak_password"]["reasons"][0], "length");
    gotrue_error(
        &e.call("POST", "/signup", None, Some(json!({"email": "not-an-email", "password": PASSWORD}))).await,
        400,
        "email_address_invalid",
    );
    gotrue_error(
        &e.call("POST", "/signup", None, Some(json!({"email": "a@example.com"}))).await,
        400,
        "validation_failed",
    );
    gotrue_error(
        &e.call("POST", "/signup", None, Some(json!({"email": "a@example.com", "password": PASSWORD, "data": 5})))
            .await,
        400,
        "validation_failed",
    );
    gotrue_error(
        &e.call("POST", "/token?grant_type=magic", None, Some(json!({}))).await,
        400,
        "unsupported_grant_type",
    );
    gotrue_error(
        &e.call("POST", "/token?grant_type=password", None, Some(json!({"email": 5}))).await,
        400,
        "validation_failed",
    );
    let raw =
        e.h.send("POST", &e.path("/signup"), &[("apikey", e.rec.publishable().to_owned())], Some("{not json".into()))
            .await;
    assert_eq!(raw.status, StatusCode::BAD_REQUEST, "{}", raw.text);
    assert!(raw.json["error_code"].is_string(), "{}", raw.text);
    gotrue_error(&e.call("GET", "/nope", None, None).await, 404, "not_found");
    gotrue_error(&e.call("POST", "/logout?scope=everything", None, None).await, 400, "validation_failed");
    gotrue_error(&e.call("GET", "/user", None, None).await, 403, "bad_jwt");
    let users = e.admin("GET", "/admin/users", None).await;
    assert_eq!(users.json["users"], json!([]), "{}", users.text);
}

#[tokio::test]
async fn bad_jwts_are_refused() {
    let e = env().await;
    let r = e.signup("ann@example.com").await;
    let token = r.json["access_token"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = token.split('.').collect();

    // alg=none with the same claims and no signature.
    let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    gotrue_error(&e.call("GET", "/user", Some(&none), None).await, 403, "bad_jwt");
    // HS256 "signed" with the public key material (algorithm confusion).
    let hs = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#), parts[1], parts[2]);
    gotrue_error(&e.call("GET", "/user", Some(&hs), None).await, 403, "bad_jwt");
    // Tampered claims: the signature no longer matches.
    let mut c = claims(&token);
    c["role"] = json!("service_role");
    let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(c.to_string()), parts[2]);
    gotrue_error(&e.call("GET", "/user", Some(&forged), None).await, 403, "bad_jwt");
    gotrue_error(&e.call("GET", "/user", Some("garbage"), None).await, 403, "bad_jwt");

    // Another env's token, on this env.
    let other = e.h.create_env("other").await;
    let o =
        e.h.send(
            "POST",
            "/env/other/auth/v1/signup",
            &[("apikey", other.publishable().to_owned())],
            Some(json!({"email": "ann@example.com", "password": PASSWORD}).to_string()),
        )
        .await;
    assert_eq!(o.status, StatusCode::OK, "{}", o.text);
    let other_token = o.json["access_token"].as_str().unwrap();
    gotrue_error(&e.call("GET", "/user", Some(other_token), None).await, 403, "bad_jwt");

    // Expired: the TTL is configurable; the clock moves past it.
    e.settings(json!({"access_token_ttl_seconds": 60})).await;
    let s = e.sign_in("ann@example.com", PASSWORD).await;
    assert_eq!(s.json["expires_in"], 60);
    let short = s.json["access_token"].as_str().unwrap().to_owned();
    assert_eq!(e.call("GET", "/user", Some(&short), None).await.status, StatusCode::OK);
    e.h.clock.advance(Duration::from_secs(61));
    gotrue_error(&e.call("GET", "/user", Some(&short), None).await, 403, "bad_jwt");
    // The refresh token still works after the access token expired.
    session_ok(&e.refresh(s.json["refresh_token"].as_str().unwrap()).await);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_after_the_interval_revokes_the_family() {
    let e = env().await;
    let s = e.signup("ann@example.com").await;
    let first = s.json["refresh_token"].as_str().unwrap().to_owned();
    let r1 = e.refresh(&first).await;
    session_ok(&r1);
    let second = r1.json["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(
        claims(r1.json["access_token"].as_str().unwrap())["session_id"],
        claims(s.json["access_token"].as_str().unwrap())["session_id"]
    );

    // Within 10 s, the rotated-out token answers with the active one (concurrent tabs).
    e.h.clock.advance(Duration::from_secs(5));
    let again = e.refresh(&first).await;
    session_ok(&again);
    assert_eq!(again.json["refresh_token"], second.as_str());

    // After the interval, reusing it is a replay: the family dies, the active token with it.
    e.h.clock.advance(Duration::from_secs(6));
    gotrue_error(&e.refresh(&first).await, 400, "refresh_token_already_used");
    gotrue_error(&e.refresh(&second).await, 400, "refresh_token_already_used");
    gotrue_error(&e.refresh("never-issued").await, 400, "refresh_token_not_found");
    gotrue_error(
        &e.call("POST", "/token?grant_type=refresh_token", None, Some(json!({}))).await,
        400,
        "refresh_token_not_found",
    );

    // Other sessions are untouched.
    let other = e.sign_in("ann@example.com", PASSWORD).await;
    session_ok(&e.refresh(other.json["refresh_token"].as_str().unwrap()).await);
}

#[tokio::test]
async fn logout_scopes_end_sessions_and_their_refresh_tokens() {
    let e = env().await;
    let a = e.signup("ann@example.com").await;
    let b = e.sign_in("ann@example.com", PASSWORD).await;
    let c = e.sign_in("ann@example.com", PASSWORD).await;
    let tok = |r: &Resp, k: &str| r.json[k].as_str().unwrap().to_owned();

    // others: A stays, B and C end.
    let r = e.call("POST", "/logout?scope=others", Some(&tok(&a, "access_token")), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    gotrue_error(&e.refresh(&tok(&b, "refresh_token")).await, 400, "refresh_token_not_found");
    gotrue_error(&e.call("GET", "/user", Some(&tok(&c, "access_token")), None).await, 403, "session_not_found");
    assert_eq!(e.call("GET", "/user", Some(&tok(&a, "access_token")), None).await.status, StatusCode::OK);

    // local: only this session.
    let d = e.sign_in("ann@example.com", PASSWORD).await;
    let r = e.call("POST", "/logout?scope=local", Some(&tok(&a, "access_token")), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    gotrue_error(&e.refresh(&tok(&a, "refresh_token")).await, 400, "refresh_token_not_found");
    assert_eq!(e.call("GET", "/user", Some(&tok(&d, "access_token")), None).await.status, StatusCode::OK);

    // global (the default): every session.
    let f = e.sign_in("ann@example.com", PASSWORD).await;
    let r = e.call("POST", "/logout", Some(&tok(&d, "access_token")), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    gotrue_error(&e.refresh(&tok(&f, "refresh_token")).await, 400, "refresh_token_not_found");
    gotrue_error(&e.refresh(&tok(&d, "refresh_token")).await, 400, "refresh_token_not_found");
}

#[tokio::test]
async fn update_user_merges_metadata_and_changes_the_password() {
    let e = env().await;
    let s = e.signup("ann@example.com").await;
    let token = s.json["access_token"].as_str().unwrap().to_owned();
    let r = e.call("PUT", "/user", Some(&token), Some(json!({"data": {"plan": "pro", "name": null}}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["user_metadata"], json!({"plan": "pro"}));
    gotrue_error(&e.call("PUT", "/user", Some(&token), Some(json!({"password": "x"}))).await, 422, "weak_password");
    let r = e.call("PUT", "/user", Some(&token), Some(json!({"password": "new-password-456"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    gotrue_error(&e.sign_in("ann@example.com", PASSWORD).await, 400, "invalid_credentials");
    session_ok(&e.sign_in("ann@example.com", "new-password-456").await);
    let r = e.call("PUT", "/user", Some(&token), Some(json!({"email": "ann2@example.com"}))).await;
    assert_eq!(r.json["email"], "ann2@example.com", "{}", r.text);
    e.signup("bob@example.com").await;
    gotrue_error(
        &e.call("PUT", "/user", Some(&token), Some(json!({"email": "bob@example.com"}))).await,
        422,
        "email_exists",
    );
}

#[tokio::test]
async fn anonymous_sign_in_follows_the_env_setting() {
    let e = env().await;
    gotrue_error(&e.call("POST", "/signup", None, Some(json!({"data": {}}))).await, 422, "anonymous_provider_disabled");
    let settings = e.call("GET", "/settings", None, None).await;
    assert_eq!(settings.json["external"]["anonymous_users"], false, "{}", settings.text);
    e.settings(json!({"anonymous_sign_ins": true})).await;
    assert_eq!(e.call("GET", "/settings", None, None).await.json["external"]["anonymous_users"], true);
    let r = e.call("POST", "/signup", None, Some(json!({"data": {}, "gotrue_meta_security": {}}))).await;
    session_ok(&r);
    assert_eq!(r.json["user"]["is_anonymous"], true);
    assert_eq!(r.json["user"]["identities"], json!([]));
    let c = claims(r.json["access_token"].as_str().unwrap());
    assert_eq!(c["is_anonymous"], true);
    assert_eq!(c["role"], "authenticated");
    // An anonymous user can become a permanent one.
    let r = e
        .call(
            "PUT",
            "/user",
            r.json["access_token"].as_str(),
            Some(json!({"email": "anon@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(r.json["is_anonymous"], false, "{}", r.text);
    session_ok(&e.sign_in("anon@example.com", PASSWORD).await);
}

#[tokio::test]
async fn email_confirmation_by_code_and_by_link() {
    let e = env().await;
    e.settings(json!({"email_confirmation": true, "site_url": "http://app.example.com"})).await;
    assert_eq!(e.call("GET", "/settings", None, None).await.json["mailer_autoconfirm"], false);
    let r = e.signup("ann@example.com").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.json.get("access_token").is_none(), "no session before confirmation: {}", r.text);
    assert!(r.json["confirmation_sent_at"].is_string());
    assert!(r.json.get("email_confirmed_at").is_none());
    gotrue_error(&e.sign_in("ann@example.com", PASSWORD).await, 400, "email_not_confirmed");

    let mails = e.outbox().await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["kind"], "confirmation");
    assert_eq!(mails[0]["to"], "ann@example.com");
    let code = code_in(&mails[0]);
    assert_eq!(code.len(), 6);
    // The link's hash cannot be computed from the address and the code (GoTrue's unkeyed SHA-224 of
    // both can be, for all million codes, offline).
    let unkeyed: String = {
        use sha2::Digest as _;
        sha2::Sha224::digest(format!("ann@example.com{code}")).iter().map(|b| format!("{b:02x}")).collect()
    };
    let r = e.h.send("GET", &e.path(&format!("/verify?token={unkeyed}&type=signup")), &[], None).await;
    assert!(r.headers["location"].to_str().unwrap().contains("error_code=otp_expired"));
    gotrue_error(
        &e.call(
            "POST",
            "/verify",
            None,
            Some(json!({"type": "signup", "email": "ann@example.com", "token": "000000x"})),
        )
        .await,
        403,
        "otp_expired",
    );
    let v = e
        .call("POST", "/verify", None, Some(json!({"type": "signup", "email": "ann@example.com", "token": code})))
        .await;
    session_ok(&v);
    assert!(v.json["user"]["email_confirmed_at"].is_string());
    session_ok(&e.sign_in("ann@example.com", PASSWORD).await);
    // A token works once.
    gotrue_error(
        &e.call("POST", "/verify", None, Some(json!({"type": "signup", "email": "ann@example.com", "token": code})))
            .await,
        403,
        "otp_expired",
    );

    // The link: a browser without a key, redirected with the session in the fragment.
    e.h.clock.advance(Duration::from_secs(61));
    e.signup("bob@example.com").await;
    let mails = e.outbox().await;
    let body = mails[0]["body"].as_str().unwrap();
    let link = body.lines().find(|l| l.contains("/verify?")).unwrap();
    let path = &link[link.find("/env/").unwrap()..];
    let r = e.h.send("GET", path, &[], None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let location = r.headers["location"].to_str().unwrap();
    assert!(location.starts_with("http://app.example.com#access_token="), "{location}");
    assert!(location.contains("&type=signup"), "{location}");
    // Used again, it redirects with the error instead.
    let r = e.h.send("GET", path, &[], None).await;
    let location = r.headers["location"].to_str().unwrap();
    assert!(location.contains("#error=access_denied&error_code=otp_expired"), "{location}");
    // A redirect_to outside the allowed URLs is ignored (no open redirect).
    let without = path.split("&redirect_to=").next().unwrap();
    let r = e.h.send("GET", &format!("{without}&redirect_to=https%3A%2F%2Fevil.example"), &[], None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert!(r.headers["location"].to_str().unwrap().starts_with("http://app.example.com#"));

    // Codes expire after an hour.
    e.h.clock.advance(Duration::from_secs(61));
    e.signup("cy@example.com").await;
    let code = code_in(&e.outbox().await[0]);
    e.h.clock.advance(Duration::from_secs(3601));
    gotrue_error(
        &e.call("POST", "/verify", None, Some(json!({"type": "signup", "email": "cy@example.com", "token": code})))
            .await,
        403,
        "otp_expired",
    );
}

#[tokio::test]
async fn password_recovery_by_code() {
    let e = env().await;
    e.signup("ann@example.com").await;
    let r = e.call("POST", "/recover", None, Some(json!({"email": "ann@example.com"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json, json!({}));
    // Unknown addresses get the same answer and no mail.
    let r = e.call("POST", "/recover", None, Some(json!({"email": "nobody@example.com"}))).await;
    assert_eq!((r.status, r.json.clone()), (StatusCode::OK, json!({})));
    let mails = e.outbox().await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["kind"], "recovery");
    let v = e
        .call(
            "POST",
            "/verify",
            None,
            Some(json!({"type": "recovery", "email": "ann@example.com", "token": code_in(&mails[0])})),
        )
        .await;
    session_ok(&v);
    let r = e.call("PUT", "/user", v.json["access_token"].as_str(), Some(json!({"password": "recovered-789"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    session_ok(&e.sign_in("ann@example.com", "recovered-789").await);
}

#[tokio::test]
async fn admin_user_management_needs_the_secret_key() {
    let e = env().await;
    let r = e.admin("POST", "/admin/users", Some(json!({"email": "a@example.com", "password": PASSWORD, "email_confirm": true, "user_metadata": {"x": 1}}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert!(r.json["email_confirmed_at"].is_string());
    gotrue_error(
        &e.admin("POST", "/admin/users", Some(json!({"email": "a@example.com", "password": PASSWORD}))).await,
        422,
        "email_exists",
    );
    for i in 0..3 {
        e.admin("POST", "/admin/users", Some(json!({"email": format!("u{i}@example.com")}))).await;
    }
    let page = e.admin("GET", "/admin/users?page=1&per_page=2", None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(page.json["users"].as_array().unwrap().len(), 2);
    assert_eq!(page.headers["x-total-count"], "4");
    assert!(page.headers["link"].to_str().unwrap().contains("rel=\"next\""));

    let got = e.admin("GET", &format!("/admin/users/{id}"), None).await;
    assert_eq!(got.json["user_metadata"]["x"], 1, "{}", got.text);
    gotrue_error(
        &e.admin("GET", "/admin/users/00000000-0000-4000-8000-000000000000", None).await,
        404,
        "user_not_found",
    );
    gotrue_error(&e.admin("GET", "/admin/users/not-a-uuid", None).await, 404, "user_not_found");
    gotrue_error(&e.admin("GET", "/admin/users?per_page=0", None).await, 400, "validation_failed");
    gotrue_error(&e.admin("GET", "/admin/users?page=-1", None).await, 400, "validation_failed");

    // Ban: sessions end and sign-in is refused; lifting it lets the user back in.
    let s = e.sign_in("a@example.com", PASSWORD).await;
    session_ok(&s);
    let r = e
        .admin(
            "PUT",
            &format!("/admin/users/{id}"),
            Some(json!({"ban_duration": "24h", "app_metadata": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.json["banned_until"].is_string());
    assert_eq!(r.json["app_metadata"]["plan"], "pro");
    assert_eq!(r.json["app_metadata"]["provider"], "email");
    gotrue_error(&e.sign_in("a@example.com", PASSWORD).await, 400, "user_banned");
    gotrue_error(&e.refresh(s.json["refresh_token"].as_str().unwrap()).await, 400, "refresh_token_not_found");
    gotrue_error(
        &e.admin("PUT", &format!("/admin/users/{id}"), Some(json!({"ban_duration": "forever"}))).await,
        400,
        "validation_failed",
    );
    e.admin("PUT", &format!("/admin/users/{id}"), Some(json!({"ban_duration": "none"}))).await;
    session_ok(&e.sign_in("a@example.com", PASSWORD).await);

    // The publishable key may not manage users.
    let r = e.call("GET", "/admin/users", None, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(r.json["error_code"].is_string());

    let d = e.admin("DELETE", &format!("/admin/users/{id}"), None).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    gotrue_error(&e.admin("GET", &format!("/admin/users/{id}"), None).await, 404, "user_not_found");
    gotrue_error(&e.admin("DELETE", &format!("/admin/users/{id}"), None).await, 404, "user_not_found");
    gotrue_error(&e.sign_in("a@example.com", PASSWORD).await, 400, "invalid_credentials");
}

#[tokio::test]
async fn rate_limits_per_ip_and_per_email() {
    let e = env().await;
    e.settings(json!({"rate_limit_per_ip": 3, "email_interval_seconds": 60})).await;
    e.signup("ann@example.com").await;
    let r = e.call("POST", "/recover", None, Some(json!({"email": "ann@example.com"}))).await;
    assert_eq!(r.status, StatusCode::OK);
    gotrue_error(
        &e.call("POST", "/recover", None, Some(json!({"email": "ann@example.com"}))).await,
        429,
        "over_email_send_rate_limit",
    );
    let r = e.sign_in("ann@example.com", "wrong").await;
    gotrue_error(&r, 429, "over_request_rate_limit");
    assert!(r.headers.get("retry-after").is_some());
    // The window slides: five minutes later the client may try again.
    e.h.clock.advance(Duration::from_secs(301));
    session_ok(&e.sign_in("ann@example.com", PASSWORD).await);
    assert_eq!(
        e.call("POST", "/recover", None, Some(json!({"email": "ann@example.com"}))).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn settings_are_validated_and_auth_events_are_metered() {
    let e = env().await;
    let url = format!("/v1/envs/{}/auth/settings", e.id);
    let r = e.h.call("GET", &url, Some(e.rec.secret()), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["access_token_ttl_seconds"], 3600);
    for bad in [
        json!({"access_token_ttl_seconds": 5}),
        json!({"site_url": "javascript:alert(1)"}),
        json!({"password_min_length": 2}),
    ] {
        let r = e.h.call("PUT", &url, Some(e.rec.secret()), Some(bad)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.json["code"], "invalid_settings");
    }
    let r = e.h.call("PUT", &url, Some(e.rec.secret()), Some(json!({"nope": 1}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(e.h.call("GET", &url, Some(e.rec.secret()), None).await.json["access_token_ttl_seconds"], 3600);
    assert_eq!(e.h.call("GET", &url, Some(e.rec.publishable()), None).await.status, StatusCode::FORBIDDEN);
    let audit = e.h.call("GET", "/v1/envs/shop/audit", Some(&e.h.admin), None).await;
    let actions: Vec<(&str, &str)> = audit.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "auth:SetSettings")
        .map(|a| (a["result"].as_str().unwrap(), a["actor"].as_str().unwrap()))
        .collect();
    assert!(actions.iter().any(|(r, _)| *r == "invalid_settings"), "failures are audited: {actions:?}");
    assert!(!actions.iter().any(|(r, _)| *r == "ok"), "nothing changed yet: {actions:?}");
    e.h.call("PUT", &url, Some(e.rec.secret()), Some(json!({"disable_signup": true}))).await;
    let audit = e.h.call("GET", "/v1/envs/shop/audit", Some(&e.h.admin), None).await;
    assert!(
        audit.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "auth:SetSettings" && a["result"] == "ok")
    );
    gotrue_error(&e.signup("zed@example.com").await, 422, "signup_disabled");
    e.h.call("PUT", &url, Some(e.rec.secret()), Some(json!({"disable_signup": false}))).await;
    let r = e.h.call("GET", "/v1/envs/shop/auth/outbox?limit=0", Some(e.rec.secret()), None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));

    let s = e.signup("ann@example.com").await;
    e.sign_in("ann@example.com", PASSWORD).await;
    e.refresh(s.json["refresh_token"].as_str().unwrap()).await;
    let usage = e.h.call("GET", &format!("/v1/envs/{}/usage", e.id), Some(&e.h.admin), None).await;
    let total = usage.json["totals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["meter"] == "auth_events")
        .map(|t| t["quantity"].as_i64().unwrap());
    assert_eq!(total, Some(3), "{}", usage.text);
}

#[tokio::test]
async fn deleting_the_env_removes_its_signing_keys_and_settings() {
    let e = env().await;
    e.settings(json!({"anonymous_sign_ins": true})).await;
    e.signup("ann@example.com").await;
    let count = |h: &Harness| {
        let db = h.platform.db().clone();
        async move {
            db.tx(|c| {
                let k =
                    c.query_opt("SELECT CAST(COUNT(*) AS BIGINT) FROM auth_signing_keys WHERE env_id = 'shop'", &[])?;
                let s = c.query_opt("SELECT CAST(COUNT(*) AS BIGINT) FROM auth_settings WHERE env_id = 'shop'", &[])?;
                Ok::<_, store::StoreError>(k.unwrap().int(0)? + s.unwrap().int(0)?)
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(count(&e.h).await, 2);
    let r = e.h.call("DELETE", "/v1/envs/shop", Some(&e.h.admin), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(count(&e.h).await, 0);
    assert!(!e.h.platform.layout(&protocol::EnvId::parse("shop").unwrap()).sqlite_file.exists());
    assert_eq!(
        e.h.send("GET", "/env/shop/auth/v1/.well-known/jwks.json", &[], None).await.status,
        StatusCode::NOT_FOUND
    );
}

/// A local SMTP sink: accepts one session per connection and hands each message's DATA to the test.
async fn smtp_sink() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let (mut in_data, mut data, mut envelope) = (false, String::new(), String::new());
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            tx.send(format!("{envelope}{data}")).unwrap();
                            data.clear();
                            write.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            data.push_str(line.strip_prefix('.').unwrap_or(&line));
                            data.push('\n');
                        }
                        continue;
                    }
                    let reply: &[u8] = match line.split(' ').next().unwrap_or("").to_ascii_uppercase().as_str() {
                        "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "MAIL" | "RCPT" => {
                            envelope.push_str(&line);
                            envelope.push('\n');
                            b"250 ok\r\n"
                        }
                        "DATA" => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            write.write_all(b"221 bye\r\n").await.unwrap();
                            break;
                        }
                        _ => b"500 what\r\n",
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn mail_goes_through_smtp_when_a_relay_is_configured() {
    let (addr, mut inbox) = smtp_sink().await;
    let h = Harness::new().await;
    let smtp = auth::SmtpConfig::from_url(&format!("smtp://{addr}"), "auth@shop.example").unwrap();
    let h = h.with_smtp(smtp);
    let rec = h.create_env("shop").await;
    let e = Env { h, rec, id: "shop".into() };
    e.settings(json!({"email_confirmation": true})).await;
    let r = e.signup("ann@example.com").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mail = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await.unwrap().unwrap();
    assert!(mail.contains("MAIL FROM:<auth@shop.example>"), "{mail}");
    assert!(mail.contains("RCPT TO:<ann@example.com>"), "{mail}");
    assert!(mail.contains("Subject: Confirm your signup"), "{mail}");
    let code = mail.rsplit("code: ").next().unwrap().trim().to_owned();
    assert!(e.outbox().await.is_empty(), "with a relay, nothing goes to the outbox");
    let v = e
        .call("POST", "/verify", None, Some(json!({"type": "signup", "email": "ann@example.com", "token": code})))
        .await;
    session_ok(&v);

    // A relay that is down: the sign-up answers 500 in GoTrue's shape.
    let h = Harness::new().await.with_smtp(auth::SmtpConfig::from_url("smtp://127.0.0.1:9", "a@b.example").unwrap());
    let rec = h.create_env("shop").await;
    let e = Env { h, rec, id: "shop".into() };
    e.settings(json!({"email_confirmation": true})).await;
    gotrue_error(&e.signup("bob@example.com").await, 500, "unexpected_failure");
}

#[tokio::test]
async fn concurrent_sign_ups_and_refreshes_of_one_env_all_succeed() {
    let e = std::sync::Arc::new(env().await);
    e.settings(json!({"rate_limit_per_ip": 1000, "rate_limit_refresh_per_ip": 1000})).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let s = e.signup(&format!("u{i}@example.com")).await;
            session_ok(&s);
            let r = e.refresh(s.json["refresh_token"].as_str().unwrap()).await;
            session_ok(&r);
            let me = e.call("GET", "/user", r.json["access_token"].as_str(), None).await;
            assert_eq!(me.status, StatusCode::OK, "{}", me.text);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let users = e.admin("GET", "/admin/users?per_page=100", None).await;
    assert_eq!(users.headers["x-total-count"], "24");
}

#[tokio::test]
async fn magic_links_are_not_served_and_resend_replaces_the_code() {
    let e = env().await;
    e.signup("ann@example.com").await;
    // Passwordless sign-in (magic links, email codes) is not part of this release: no route, no mail.
    let r = e.call("POST", "/otp", None, Some(json!({"email": "ann@example.com"}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert!(e.outbox().await.is_empty());
    gotrue_error(
        &e.call(
            "POST",
            "/verify",
            None,
            Some(json!({"type": "magiclink", "email": "ann@example.com", "token": "123456"})),
        )
        .await,
        400,
        "validation_failed",
    );

    // Resend: a new confirmation replaces the old one; redirect_to is carried into the link.
    e.settings(json!({"email_confirmation": true, "site_url": "http://app.example.com"})).await;
    let r =
        e.h.send(
            "POST",
            &e.path("/signup?redirect_to=http%3A%2F%2Fapp.example.com%2Fwelcome"),
            &[("apikey", e.rec.publishable().to_owned())],
            Some(json!({"email": "cy@example.com", "password": PASSWORD}).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let first = e.outbox().await.remove(0);
    assert!(first["body"].as_str().unwrap().contains("redirect_to=http%3A%2F%2Fapp.example.com%2Fwelcome"), "{first}");
    gotrue_error(
        &e.call("POST", "/resend", None, Some(json!({"type": "signup", "email": "cy@example.com"}))).await,
        429,
        "over_email_send_rate_limit",
    );
    e.h.clock.advance(Duration::from_secs(61));
    let r = e.call("POST", "/resend", None, Some(json!({"type": "signup", "email": "cy@example.com"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let second = e.outbox().await.remove(0);
    assert_ne!(first["id"], second["id"]);
    let verify = |mail: &Value| json!({"type": "signup", "email": "cy@example.com", "token": code_in(mail)});
    gotrue_error(&e.call("POST", "/verify", None, Some(verify(&first))).await, 403, "otp_expired");
    session_ok(&e.call("POST", "/verify", None, Some(verify(&second))).await);
    gotrue_error(
        &e.call("POST", "/resend", None, Some(json!({"type": "sms", "email": "cy@example.com"}))).await,
        400,
        "validation_failed",
    );
}

#[tokio::test]
async fn pkce_mail_links_answer_with_a_code_to_exchange() {
    use sha2::Digest as _;
    let e = env().await;
    e.settings(json!({"email_confirmation": true, "site_url": "http://app.example.com"})).await;
    let verifier = "a-verifier-of-at-least-forty-three-characters-0123456789";
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier));
    let r = e
        .call(
            "POST",
            "/signup",
            None,
            Some(json!({"email": "ann@example.com", "password": PASSWORD, "code_challenge": challenge, "code_challenge_method": "s256"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mail = e.outbox().await.remove(0);
    let link = mail["body"].as_str().unwrap().lines().find(|l| l.contains("/verify?")).unwrap().to_owned();
    let r = e.h.send("GET", &link[link.find("/env/").unwrap()..], &[], None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let location = r.headers["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("http://app.example.com?code="), "{location}");
    let code = location.split("code=").nth(1).unwrap().to_owned();

    let exchange = |verifier: &str| json!({"auth_code": code, "code_verifier": verifier});
    gotrue_error(
        &e.call("POST", "/token?grant_type=pkce", None, Some(exchange("wrong-verifier"))).await,
        403,
        "bad_code_verifier",
    );
    let s = e.call("POST", "/token?grant_type=pkce", None, Some(exchange(verifier))).await;
    session_ok(&s);
    assert_eq!(s.json["user"]["email"], "ann@example.com");
    assert!(s.json["user"]["email_confirmed_at"].is_string());
    gotrue_error(
        &e.call("POST", "/token?grant_type=pkce", None, Some(exchange(verifier))).await,
        404,
        "flow_state_not_found",
    );
    gotrue_error(
        &e.call("POST", "/token?grant_type=pkce", None, Some(json!({"auth_code": "x"}))).await,
        400,
        "validation_failed",
    );
    let bad = json!({"email": "bob@example.com", "password": PASSWORD, "code_challenge": "short", "code_challenge_method": "s256"});
    gotrue_error(&e.call("POST", "/signup", None, Some(bad)).await, 400, "validation_failed");
    let half = json!({"email": "bob@example.com", "password": PASSWORD, "code_challenge": challenge});
    gotrue_error(&e.call("POST", "/signup", None, Some(half)).await, 400, "validation_failed");
}
