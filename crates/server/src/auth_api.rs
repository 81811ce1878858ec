//! `/env/{env}/auth/v1`: GoTrue's HTTP API over the [`auth`] service, and the `/v1` routes that manage an
//! env's auth (settings, outbox). Handlers run after the gate: the env key (`apikey`) was checked there;
//! a user's access token (`Authorization: Bearer`) is checked here.

// Handlers answer errors as ready responses (GoTrue's weak-password body has extra fields), the axum way.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;

use auth::flows::{
    AdminUser, LogoutScope, PasswordGrant, PkceGrant, RecoverRequest, RefreshGrant, ResendRequest, SignupOutcome,
    SignupRequest, UserUpdate, Verified, VerifyRequest,
};
use auth::{AuthError, Client};
use axum::Extension;
use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use protocol::EnvId;
use protocol::api::EnvStatus;
use protocol::auth::{AuthSettings, AuthSettingsPatch, OutboxMail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};
use crate::gate::Caller;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if status.is_server_error() {
            // Logged here, where it is handled; the client learns only that it was our fault.
            tracing::error!(error = ?e, "auth internal error");
            "Unexpected failure, please check server logs for more information".to_owned()
        } else {
            e.to_string()
        };
        let mut err = ApiError::new(status, e.code(), message);
        err.retry_after = e.retry_after();
        err
    }
}

/// GoTrue answers a weak password with the reasons beside the usual fields.
fn auth_error(e: AuthError) -> Response {
    if let AuthError::WeakPassword { .. } = e {
        let body = json!({"code": 422, "error_code": e.code(), "msg": e.to_string(), "weak_password": {"reasons": ["length"]}});
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    ApiError::from(e).into_response()
}

type AuthResult = Result<Response, Response>;

fn env_of(caller: &Caller) -> Result<&EnvId, Response> {
    caller.env.as_ref().ok_or_else(|| ApiError::not_found("not_found", "environment not found").into_response())
}

/// The env's own database, where its users live (created on first use, with the auth tables).
fn env_db(state: &AppState, env: &EnvId) -> auth::EnvStore {
    auth::EnvStore::new(state.appdb.clone(), env.clone())
}

fn client(connect: Option<Extension<ConnectInfo<SocketAddr>>>) -> Client {
    Client { ip: connect.map_or_else(|| "unknown".to_owned(), |c| c.0.0.ip().to_string()) }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::trim)
}

fn ok(body: Value) -> AuthResult {
    Ok(Json(body).into_response())
}

pub async fn health() -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "name": "GoTrue",
        "description": "GoTrue is a user registration and authentication API",
    }))
}

pub async fn settings(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> AuthResult {
    let s = state.auth.settings(env_of(&caller)?).await.map_err(auth_error)?;
    let external: serde_json::Map<String, Value> = [
        "apple",
        "azure",
        "bitbucket",
        "discord",
        "facebook",
        "figma",
        "github",
        "gitlab",
        "google",
        "keycloak",
        "kakao",
        "linkedin",
        "linkedin_oidc",
        "notion",
        "slack",
        "slack_oidc",
        "spotify",
        "twitch",
        "twitter",
        "workos",
        "zoom",
        "phone",
    ]
    .iter()
    .map(|p| ((*p).to_owned(), json!(false)))
    .chain([("email".to_owned(), json!(true)), ("anonymous_users".to_owned(), json!(s.anonymous_sign_ins))])
    .collect();
    ok(json!({
        "external": external,
        "disable_signup": s.disable_signup,
        "mailer_autoconfirm": !s.email_confirmation,
        "phone_autoconfirm": false,
        "sms_provider": "",
        "saml_enabled": false,
    }))
}

/// The env's public signing keys. Public (JWKS is meant to be fetched by anyone verifying tokens).
pub async fn jwks(State(state): State<AppState>, Path(env): Path<String>) -> AuthResult {
    let env = active_env(&state, &env).await?;
    ok(state.auth.jwks(&env).await.map_err(auth_error)?)
}

/// An env named by the path of a public route: it must exist and be active.
pub(crate) async fn active_env(state: &AppState, env: &str) -> Result<EnvId, Response> {
    let not_found = || ApiError::not_found("not_found", "environment not found").into_response();
    let env = EnvId::parse(env).map_err(|_| not_found())?;
    match state.platform.env_status(&env).await {
        Ok(EnvStatus::Active) => Ok(env),
        Ok(_) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "env_suspended", "this environment is suspended").into_response())
        }
        Err(_) => Err(not_found()),
    }
}

#[derive(Deserialize)]
pub struct RedirectQuery {
    redirect_to: Option<String>,
}

pub async fn signup(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<RedirectQuery>,
    Body(mut req): Body<SignupRequest>,
) -> AuthResult {
    let env = env_of(&caller)?;
    req.redirect_to = q.redirect_to;
    let db = env_db(&state, env);
    match state.auth.signup(env, &db, req, &client(connect)).await.map_err(auth_error)? {
        SignupOutcome::Session(s) | SignupOutcome::User(s) => ok(s),
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    grant_type: Option<String>,
}

pub async fn token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<TokenQuery>,
    Body(body): Body<Value>,
) -> AuthResult {
    let env = env_of(&caller)?;
    let client = client(connect);
    match q.grant_type.as_deref() {
        Some("password") => {
            let req: PasswordGrant = parse(body)?;
            let db = env_db(&state, env);
            ok(state.auth.password_grant(env, &db, req, &client).await.map_err(auth_error)?)
        }
        Some("pkce") => {
            let req: PkceGrant = parse(body)?;
            let db = env_db(&state, env);
            ok(state.auth.pkce_grant(env, &db, req, &client).await.map_err(auth_error)?)
        }
        Some("refresh_token") => {
            let req: RefreshGrant = parse(body)?;
            let db = env_db(&state, env);
            ok(state.auth.refresh_grant(env, &db, req, &client).await.map_err(auth_error)?)
        }
        other => Err(auth_error(AuthError::BadRequest(
            "unsupported_grant_type",
            format!("unsupported_grant_type: {}", other.unwrap_or("")),
        ))),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, Response> {
    serde_json::from_value(body).map_err(|e| auth_error(AuthError::Validation("validation_failed", e.to_string())))
}

pub async fn get_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> AuthResult {
    let env = env_of(&caller)?;
    let db = env_db(&state, env);
    ok(state.auth.get_user(env, &db, bearer(&headers)).await.map_err(auth_error)?)
}

pub async fn update_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Body(req): Body<UserUpdate>,
) -> AuthResult {
    let env = env_of(&caller)?;
    let db = env_db(&state, env);
    ok(state.auth.update_user(env, &db, bearer(&headers), req).await.map_err(auth_error)?)
}

#[derive(Deserialize)]
pub struct LogoutQuery {
    scope: Option<String>,
}

pub async fn logout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(q): Query<LogoutQuery>,
) -> AuthResult {
    let env = env_of(&caller)?;
    let scope = LogoutScope::parse(q.scope.as_deref()).map_err(auth_error)?;
    let db = env_db(&state, env);
    state.auth.logout(env, &db, bearer(&headers), scope).await.map_err(auth_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn recover(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<RedirectQuery>,
    Body(mut req): Body<RecoverRequest>,
) -> AuthResult {
    let env = env_of(&caller)?;
    req.redirect_to = q.redirect_to;
    let db = env_db(&state, env);
    state.auth.recover(env, &db, req, &client(connect)).await.map_err(auth_error)?;
    ok(json!({}))
}

pub async fn resend(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<RedirectQuery>,
    Body(mut req): Body<ResendRequest>,
) -> AuthResult {
    let env = env_of(&caller)?;
    req.redirect_to = q.redirect_to;
    let db = env_db(&state, env);
    state.auth.resend(env, &db, req, &client(connect)).await.map_err(auth_error)?;
    ok(json!({}))
}

pub async fn verify_post(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    Body(req): Body<VerifyRequest>,
) -> AuthResult {
    let env = env_of(&caller)?;
    let db = env_db(&state, env);
    match state.auth.verify(env, &db, &req, false, &client(connect)).await.map_err(auth_error)?.0 {
        Verified::Session(s) => ok(s),
        // Only mail links (GET) answer with a code.
        Verified::Code(_) => Err(auth_error(AuthError::Key("unexpected PKCE code on POST /verify".into()))),
    }
}

/// The link in a confirmation or recovery mail: verifies, then redirects the browser to the app with the
/// session (or the error) in the URL fragment, as GoTrue does. Public: a browser following a link from
/// a mail sends no key.
pub async fn verify_get(
    State(state): State<AppState>,
    Path(env): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(mut req): Query<VerifyRequest>,
) -> AuthResult {
    let env = active_env(&state, &env).await?;
    // In a mail link, `token` is the token hash.
    if req.token_hash.is_none() && req.email.is_none() {
        req.token_hash = req.token.take();
    }
    let settings = state.auth.settings(&env).await.map_err(auth_error)?;
    let target = state.auth.redirect_target(&env, &settings, req.redirect_to.as_deref());
    let base = target.split('#').next().unwrap_or_default().to_owned();
    let db = env_db(&state, &env);
    let fragment = match state.auth.verify(&env, &db, &req, true, &client(connect)).await {
        Ok((Verified::Code(code), _)) => {
            // PKCE: the app exchanges the code (with its verifier) at /token?grant_type=pkce.
            let sep = if base.contains('?') { '&' } else { '?' };
            return Ok(redirect(&format!("{base}{sep}code={}", encode(&code))));
        }
        Ok((Verified::Session(s), _)) => {
            let kind = req.kind.as_deref().unwrap_or("signup");
            format!(
                "access_token={}&expires_at={}&expires_in={}&refresh_token={}&token_type=bearer&type={}",
                s["access_token"].as_str().unwrap_or_default(),
                s["expires_at"],
                s["expires_in"],
                s["refresh_token"].as_str().unwrap_or_default(),
                encode(kind),
            )
        }
        Err(e) if e.status() >= 500 => return Err(auth_error(e)),
        Err(e) => {
            format!("error=access_denied&error_code={}&error_description={}", e.code(), encode(&e.to_string()))
        }
    };
    Ok(redirect(&format!("{base}#{fragment}")))
}

fn redirect(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<i64>,
    per_page: Option<i64>,
}

pub async fn admin_list_users(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<PageQuery>,
) -> AuthResult {
    let env = env_of(&caller)?;
    let db = env_db(&state, env);
    let (page, per_page) = (q.page.unwrap_or(1), q.per_page.unwrap_or(50));
    if !(1..=1_000_000).contains(&page) || !(1..=1000).contains(&per_page) {
        return Err(auth_error(AuthError::validation_failed("page must be 1..=1000000 and per_page 1..=1000")));
    }
    let (users, total) = state.auth.admin_list(&db, page, per_page).await.map_err(auth_error)?;
    let mut r = Json(json!({"users": users, "aud": "authenticated"})).into_response();
    let last = ((total + per_page - 1) / per_page).max(1);
    let base = format!("/env/{env}/auth/v1/admin/users");
    let mut links = Vec::new();
    if page < last {
        links.push(format!("<{base}?page={}&per_page={per_page}>; rel=\"next\"", page + 1));
    }
    links.push(format!("<{base}?page={last}&per_page={per_page}>; rel=\"last\""));
    for (name, value) in [("x-total-count", total.to_string()), ("link", links.join(", "))] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    Ok(r)
}

pub async fn admin_create_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<AdminUser>,
) -> AuthResult {
    let env = env_of(&caller)?;
    let db = env_db(&state, env);
    ok(state.auth.admin_create(env, &db, req).await.map_err(auth_error)?)
}

pub async fn admin_get_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, user)): Path<(String, String)>,
) -> AuthResult {
    let env = env_of(&caller)?;
    let db = env_db(&state, env);
    ok(state.auth.admin_get(&db, &user).await.map_err(auth_error)?)
}

pub async fn admin_update_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, user)): Path<(String, String)>,
    Body(req): Body<AdminUser>,
) -> AuthResult {
    let env = env_of(&caller)?;
    let db = env_db(&state, env);
    ok(state.auth.admin_update(env, &db, &user, req).await.map_err(auth_error)?)
}

pub async fn admin_delete_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, user)): Path<(String, String)>,
) -> AuthResult {
    let env = env_of(&caller)?;
    let db = env_db(&state, env);
    state.auth.admin_delete(env, &db, &user).await.map_err(auth_error)?;
    ok(json!({}))
}

/// Any other path under `/auth/v1`.
pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such auth endpoint")
}

// ---- /v1 management routes ----

fn v1_error(e: AuthError) -> ApiError {
    ApiError::from(e)
}

pub async fn get_auth_settings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<AuthSettings>> {
    let env = caller.env.as_ref().ok_or_else(|| ApiError::not_found("env_not_found", "environment not found"))?;
    Ok(Json(state.auth.settings(env).await.map_err(v1_error)?))
}

pub async fn put_auth_settings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(patch): Body<AuthSettingsPatch>,
) -> ApiResult<Json<AuthSettings>> {
    let env = caller.env.as_ref().ok_or_else(|| ApiError::not_found("env_not_found", "environment not found"))?;
    Ok(Json(state.auth.update_settings(&caller.actor, env, patch).await.map_err(v1_error)?))
}

#[derive(Deserialize)]
pub struct OutboxQuery {
    limit: Option<i64>,
}

pub async fn outbox(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<OutboxQuery>,
) -> Result<Json<Value>, Response> {
    let env = caller
        .env
        .as_ref()
        .ok_or_else(|| ApiError::not_found("env_not_found", "environment not found").into_response())?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=crate::routes::MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit must be 1..=1000").into_response());
    }
    let db = env_db(&state, env);
    let items: Vec<OutboxMail> = state.auth.outbox(&db, limit).await.map_err(|e| v1_error(e).into_response())?;
    Ok(Json(json!({"items": items})))
}
