//! `/v1` handlers. Each one runs after the gate, so it finds a verified [`Caller`] in its extensions and
//! only translates between HTTP and the platform's services.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use protocol::api::{
    CreateEnvRequest, CreatePrincipalRequest, CreateWebhookRequest, EnvLimits, EnvRecord, EnvStatus, Health, MeterInfo,
    MintTokenRequest, OwnerPolicyRequest, RotateKeyRequest, SetPolicyRequest, UsageEventAccepted, UsageEventInput,
};
use protocol::{EnvId, Meter};
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};
use crate::gate::{Caller, denial};
use tenancy::Denial;

pub(crate) fn env_of(caller: &Caller) -> ApiResult<&EnvId> {
    // The gate sets `env` on every env-scoped route; its absence would be a routing bug, answered safely.
    caller.env.as_ref().ok_or_else(|| ApiError::not_found("env_not_found", "environment not found"))
}

pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".to_owned(), version: env!("CARGO_PKG_VERSION").to_owned() })
}

pub async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let envs = state.platform.count_envs().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(envs)).into_response())
}

pub async fn openapi(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.openapi.clone()).into_response()
}

/// Header with which a platform principal or an env's secret key names the session to bill on the model
/// gateway. A minted token's own session always wins (the hands cannot bill another session).
pub const SESSION_HEADER: &str = "x-vibebase-session";

/// The model gateway (`/env/<env>/llm/v1/...`): the env and session to bill come from the verified caller.
pub async fn llm(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: axum::extract::Request,
) -> Response {
    let env = match env_of(&caller) {
        Ok(e) => e.clone(),
        Err(e) => return e.into_response(),
    };
    let (parts, body) = req.into_parts();
    let session = match &caller.principal {
        tenancy::Principal::Minted { session, .. } => session.clone(),
        _ => parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty() && s.len() <= 200)
            .map(str::to_owned),
    };
    let path = parts.uri.path();
    let rest = path.split_once("/llm/v1").map_or("", |(_, r)| r);
    let bill = gateway::Bill { env, session, caps: gateway::SessionCaps::default() };
    match gateway::http::handle(&state.gateway, bill, &parts.method, rest, &parts.headers, body).await {
        Ok(r) => r,
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            ApiError { status, code: e.code, message: e.message, retry_after: e.retry_after }.into_response()
        }
    }
}

/// Answer of data-plane surfaces whose protocol a later capability builds (see STATUS.md).
pub async fn surface_not_built() -> ApiError {
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", "this surface is not available yet")
}

pub async fn create_env(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateEnvRequest>,
) -> ApiResult<(StatusCode, Json<EnvRecord>)> {
    let id = req.id.clone().unwrap_or_else(|| state.platform.generate_env_id());
    if !caller.may(state.spec_access("POST", "/v1/envs"), &id) {
        return Err(denial(Denial::Policy));
    }
    let record = state.platform.create_env(&caller.actor, req, id).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// The page size a listing asked for (default 100), within 1..=1000.
pub(crate) fn page_size(limit: Option<u32>) -> ApiResult<u32> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=crate::routes::MAX_PAGE as u32).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request("invalid_query", "limit must be 1..=1000")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    cursor: Option<String>,
    limit: Option<u32>,
}

pub async fn list_envs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let get = state.spec_access("GET", "/v1/envs/{env}");
    let page = state.platform.list_envs(q.cursor, page_size(q.limit)?, &|env| caller.may(get, env)).await?;
    Ok(Json(page).into_response())
}

pub async fn get_env(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<EnvRecord>> {
    Ok(Json(state.platform.get_env(env_of(&caller)?).await?))
}

pub async fn delete_env(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<StatusCode> {
    let env = env_of(&caller)?;
    // Sandboxes first: their workspaces are mounted from the env's data directory.
    if let Ok(sandboxes) = &state.sandboxes {
        sandboxes.kill_env(env).await;
    }
    state.platform.delete_env(&caller.actor, env).await?;
    // The env's auth settings and signing keys live in the platform store; its users went with its data.
    state.auth.forget_env(env).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn suspend_env(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<EnvRecord>> {
    Ok(Json(state.platform.set_env_status(&caller.actor, env_of(&caller)?, EnvStatus::Suspended).await?))
}

pub async fn resume_env(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<EnvRecord>> {
    Ok(Json(state.platform.set_env_status(&caller.actor, env_of(&caller)?, EnvStatus::Active).await?))
}

pub async fn list_keys(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    Ok(Json(serde_json::json!({"items": state.platform.list_keys(env_of(&caller)?).await?})).into_response())
}

pub async fn rotate_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<RotateKeyRequest>,
) -> ApiResult<Response> {
    Ok(Json(state.platform.rotate_key(&caller.actor, env_of(&caller)?, req).await?).into_response())
}

pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, key)): Path<(String, String)>,
) -> ApiResult<Response> {
    Ok(Json(state.platform.revoke_key(&caller.actor, env_of(&caller)?, &key).await?).into_response())
}

pub async fn mint_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<MintTokenRequest>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(state.platform.mint_token(&caller.actor, env_of(&caller)?, req).await?))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    cursor: Option<i64>,
    limit: Option<u32>,
}

pub async fn audit_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    let page = state.platform.audit_log(Some(env_of(&caller)?.as_str()), q.cursor, page_size(q.limit)?).await?;
    Ok(Json(page).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformAuditQuery {
    env: Option<EnvId>,
    cursor: Option<i64>,
    limit: Option<u32>,
}

/// The platform-wide audit log, or one env's (live or deleted). Decided per env: a sub-account sees the
/// log of the envs its policy covers, and the whole log only with a platform-wide grant.
pub async fn platform_audit_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<PlatformAuditQuery>,
) -> ApiResult<Response> {
    let access = state.spec_access("GET", "/v1/audit");
    let allowed = match &q.env {
        Some(env) => caller.may(access, env),
        None => caller.may_platform(access),
    };
    if !allowed {
        return Err(denial(Denial::Policy));
    }
    let env = q.env.as_ref().map(EnvId::as_str);
    let mut page = state.platform.audit_log(env, q.cursor, page_size(q.limit)?).await?;
    // A platform-wide grant does not override a deny on one env: its rows are filtered out.
    page.items
        .retain(|e| e.env.as_deref().and_then(|id| EnvId::parse(id).ok()).is_none_or(|id| caller.may(access, &id)));
    Ok(Json(page).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
    format: Option<String>,
}

async fn usage(state: &AppState, env: Option<&EnvId>, q: UsageQuery) -> ApiResult<Response> {
    let now = state.platform.clock().now_ms();
    let time = |s: &Option<String>, default: i64| match s {
        None => Ok(default),
        Some(s) => platform::runtime::parse_rfc3339(s)
            .ok_or_else(|| ApiError::bad_request("invalid_time", "from and to must be RFC 3339 times")),
    };
    let (from, to) = (time(&q.from, now - 30 * 86_400_000)?, time(&q.to, now + 60_000)?);
    // An empty or inverted range is a valid question with an empty answer.
    let to = to.max(from);
    let buckets = match q.granularity.as_deref() {
        None | Some("total") => false,
        Some("minute") => true,
        Some(_) => return Err(ApiError::bad_request("invalid_query", "granularity must be total or minute")),
    };
    // Counted requests are written once a second; flush so a report includes everything up to now.
    state.platform.flush_meters().await?;
    let report = state.platform.usage(env, from, to, buckets).await?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(report).into_response()),
        Some("csv") => {
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], platform::ledger::to_csv(&report)).into_response())
        }
        Some(_) => Err(ApiError::bad_request("invalid_query", "format must be json or csv")),
    }
}

pub async fn env_usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Response> {
    usage(&state, Some(env_of(&caller)?), q).await
}

pub async fn platform_usage(State(state): State<AppState>, Query(q): Query<UsageQuery>) -> ApiResult<Response> {
    usage(&state, None, q).await
}

pub async fn record_usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(input): Body<UsageEventInput>,
) -> ApiResult<Json<UsageEventAccepted>> {
    let recorded = state.platform.record_usage(env_of(&caller)?, input).await?;
    Ok(Json(UsageEventAccepted { recorded }))
}

pub async fn get_limits(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<EnvLimits>> {
    Ok(Json(state.platform.get_env_limits(env_of(&caller)?).await?))
}

pub async fn set_limits(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(limits): Body<EnvLimits>,
) -> ApiResult<Json<EnvLimits>> {
    Ok(Json(state.platform.set_env_limits(&caller.actor, env_of(&caller)?, limits).await?))
}

pub async fn alerts(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    Ok(Json(serde_json::json!({"items": state.platform.quota_alerts(env_of(&caller)?).await?})).into_response())
}

pub async fn meters() -> Response {
    let items: Vec<MeterInfo> = Meter::ALL
        .iter()
        .map(|m| MeterInfo {
            name: m.name().to_owned(),
            unit: m.unit().to_owned(),
            emitted_by: m.emitted_by().to_owned(),
            dimensions: m.dimensions().iter().map(|d| (*d).to_owned()).collect(),
        })
        .collect();
    Json(serde_json::json!({"items": items})).into_response()
}

pub async fn create_principal(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreatePrincipalRequest>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(state.platform.create_principal(&caller.actor, req).await?)).into_response())
}

pub async fn list_principals(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(serde_json::json!({"items": state.platform.list_principals().await?})).into_response())
}

pub async fn get_principal(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(state.platform.get_principal(&id).await?).into_response())
}

pub async fn set_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<SetPolicyRequest>,
) -> ApiResult<Response> {
    Ok(Json(state.platform.set_principal_policy(&caller.actor, &id, &req.policy).await?).into_response())
}

pub async fn delete_principal(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.platform.delete_principal(&caller.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn owner_policy(Body(req): Body<OwnerPolicyRequest>) -> Response {
    Json(tenancy::policy::owner_of_env(&req.env).to_json()).into_response()
}

pub async fn create_webhook(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateWebhookRequest>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(state.platform.create_webhook(&caller.actor, req).await?)).into_response())
}

pub async fn list_webhooks(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(serde_json::json!({"items": state.platform.list_webhooks().await?})).into_response())
}

pub async fn delete_webhook(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.platform.delete_webhook(&caller.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn webhook_deliveries(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(serde_json::json!({"items": state.platform.webhook_deliveries(&id).await?})).into_response())
}
