//! Cloud functions over HTTP: the `/v1/envs/{env}/functions` API (deploy, versions, rollback, secrets,
//! schedules, logs) and invocation at `/env/{env}/functions/v1/<name>` (supabase-js
//! `functions.invoke`). The caller's role is decided as the data API decides it: an end-user JWT in
//! `Authorization` is verified with the env's keys, and the header reaches the function unchanged.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use functions::{CallerAuth, DeployOptions, FunctionError, Functions, Invocation};
use http::StatusCode;
use protocol::functions::{
    FunctionList, FunctionRecord, FunctionVersion, FunctionVersionList, InvocationLogList, InvocationOutcome,
    RollbackRequest, SecretNames, SetScheduleRequest, SetSecretsRequest,
};
use serde::Deserialize;
use tenancy::{EnvRole, Principal};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};
use crate::gate::Caller;
use crate::handlers::env_of;

/// Largest deploy archive.
pub const MAX_ARCHIVE_BYTES: usize = 50 * 1024 * 1024;
/// Largest invocation request body.
pub const MAX_INVOKE_BODY: usize = 6 * 1024 * 1024;

impl From<FunctionError> for ApiError {
    fn from(e: FunctionError) -> Self {
        let message = e.to_string();
        match e {
            FunctionError::NotFound { what } => {
                ApiError::not_found(&format!("{}_not_found", what.replace(' ', "_")), message)
            }
            FunctionError::Invalid { code, .. } => ApiError::bad_request(code, message),
            FunctionError::Archive(a) => match a {
                functions::archive::ArchiveError::TooLarge(_) => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, a.code(), message)
                }
                _ => ApiError::bad_request(a.code(), message),
            },
            FunctionError::InstallFailed(_) => ApiError::bad_request("dependency_install_failed", message),
            FunctionError::Busy(_) => {
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "function_concurrency_limit", message);
                e.retry_after = Some(std::time::Duration::from_secs(1));
                e
            }
            FunctionError::Failed { outcome, message, .. } => {
                let status = StatusCode::from_u16(functions::status_of(outcome)).unwrap_or(StatusCode::BAD_GATEWAY);
                let code = match outcome {
                    InvocationOutcome::Ok => "ok",
                    InvocationOutcome::Threw => "function_threw",
                    InvocationOutcome::InvalidResult => "function_invalid_result",
                    InvocationOutcome::LoadFailed => "function_load_failed",
                    InvocationOutcome::Timeout => "function_timeout",
                    InvocationOutcome::Crashed => "function_crashed",
                    InvocationOutcome::OutOfMemory => "function_out_of_memory",
                };
                ApiError::new(status, code, message)
            }
            FunctionError::Sandbox(s) => s.into(),
            FunctionError::Platform(p) => p.into(),
            FunctionError::Seal(s) => {
                tracing::error!(error = %s, "function secrets unavailable");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "secrets_unavailable",
                    "the function's secrets could not be opened",
                )
            }
        }
    }
}

/// The functions registry, or 503 with the reason there is none (no sandboxes on this instance).
fn functions(state: &AppState) -> ApiResult<&Functions> {
    state.functions.as_ref().map_err(|why| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "functions_unavailable",
            format!("functions are unavailable: {why}"),
        )
    })
}

#[derive(Deserialize)]
pub struct FunctionPath {
    name: String,
}

#[derive(Deserialize)]
pub struct DeployQuery {
    memory_mb: Option<u64>,
    timeout_ms: Option<u64>,
    concurrency: Option<u64>,
}

pub const DEPLOY_QUERY: &[(&str, crate::routes::QueryType, &str)] = &[
    ("memory_mb", crate::routes::QueryType::Integer(64, 4096), "Memory limit in MiB (default 256)."),
    ("timeout_ms", crate::routes::QueryType::Integer(100, 900_000), "Wall-clock limit per invocation (default 10000)."),
    ("concurrency", crate::routes::QueryType::Integer(1, 256), "Invocations at once per instance (default 4)."),
];

pub async fn deploy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<FunctionPath>,
    Query(q): Query<DeployQuery>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<FunctionVersion>)> {
    let env = env_of(&caller)?;
    let options = DeployOptions { memory_mb: q.memory_mb, timeout_ms: q.timeout_ms, concurrency: q.concurrency };
    let v = functions(&state)?.deploy(&caller.actor, env, &p.name, body, options).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<FunctionList>> {
    let env = env_of(&caller)?;
    Ok(Json(FunctionList { items: functions(&state)?.list(env).await? }))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<FunctionPath>,
) -> ApiResult<Json<FunctionRecord>> {
    Ok(Json(functions(&state)?.get(env_of(&caller)?, &p.name).await?))
}

pub async fn versions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<FunctionPath>,
) -> ApiResult<Json<FunctionVersionList>> {
    Ok(Json(FunctionVersionList { items: functions(&state)?.versions(env_of(&caller)?, &p.name).await? }))
}

pub async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<FunctionPath>,
    Body(req): Body<RollbackRequest>,
) -> ApiResult<Json<FunctionRecord>> {
    let env = env_of(&caller)?;
    Ok(Json(functions(&state)?.rollback(&caller.actor, env, &p.name, req.version).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<FunctionPath>,
) -> ApiResult<StatusCode> {
    functions(&state)?.delete(&caller.actor, env_of(&caller)?, &p.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_secrets(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<FunctionPath>,
    Body(req): Body<SetSecretsRequest>,
) -> ApiResult<Json<SecretNames>> {
    let env = env_of(&caller)?;
    Ok(Json(SecretNames { items: functions(&state)?.set_secrets(&caller.actor, env, &p.name, req).await? }))
}

pub async fn set_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<FunctionPath>,
    Body(req): Body<SetScheduleRequest>,
) -> ApiResult<Json<FunctionRecord>> {
    let env = env_of(&caller)?;
    Ok(Json(functions(&state)?.set_schedule(&caller.actor, env, &p.name, req).await?))
}

#[derive(Deserialize)]
pub struct LogQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<u64>,
}

pub const LOG_QUERY: &[(&str, crate::routes::QueryType, &str)] = &[
    ("from", crate::routes::QueryType::DateTime, "Invocations started at or after (default: 24 hours ago)."),
    ("to", crate::routes::QueryType::DateTime, "Invocations started before (default: now)."),
    ("limit", crate::routes::QueryType::Integer(1, 1000), "Most recent first, at most (default 100)."),
];

pub async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<FunctionPath>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<InvocationLogList>> {
    let env = env_of(&caller)?;
    let now = state.platform.clock().now_ms();
    let time = |s: &Option<String>, default: i64| match s {
        None => Ok(default),
        Some(s) => platform::runtime::parse_rfc3339(s)
            .ok_or_else(|| ApiError::bad_request("invalid_time", format!("{s:?} is not an RFC 3339 time"))),
    };
    let from = time(&q.from, now - 24 * 3600 * 1000)?;
    let to = time(&q.to, now + 1)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit must be 1..=1000"));
    }
    Ok(Json(InvocationLogList { items: functions(&state)?.logs(env, &p.name, from, to, limit).await? }))
}

/// The caller as the function sees it: the role and, for an end user, the verified claims.
async fn caller_auth(state: &AppState, caller: &Caller, headers: &http::HeaderMap) -> ApiResult<CallerAuth> {
    if let Some(verified) = crate::data::end_user_claims(state, caller, headers).await {
        let claims = verified.map_err(|e| {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_jwt", format!("JWT could not be verified: {e}"))
        })?;
        let role = claims.get("role").and_then(|r| r.as_str()).unwrap_or("authenticated").to_owned();
        return Ok(CallerAuth { role, claims });
    }
    let role = match &caller.principal {
        Principal::EnvKey { role: EnvRole::Anon, .. } => "anon",
        Principal::EnvKey { role: EnvRole::Service, .. }
        | Principal::Minted { .. }
        | Principal::Admin
        | Principal::SubAccount { .. } => "service_role",
    };
    Ok(CallerAuth { role: role.to_owned(), claims: serde_json::Value::Null })
}

/// Hop-by-hop headers, which belong to one connection and are never relayed.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
];

/// `ANY /env/{env}/functions/v1/<name>[/…]`.
pub async fn invoke(State(state): State<AppState>, Extension(caller): Extension<Caller>, req: Request) -> Response {
    match invoke_inner(&state, &caller, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn invoke_inner(state: &AppState, caller: &Caller, req: Request) -> ApiResult<Response> {
    let env = env_of(caller)?.clone();
    let prefix = format!("/env/{env}/functions/v1/");
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix(&prefix).unwrap_or("");
    let (name, subpath) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let functions = functions(state)?;
    let auth = caller_auth(state, caller, req.headers()).await?;
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_INVOKE_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {MAX_INVOKE_BODY} bytes"),
        )
    })?;
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()))
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
        .collect();
    let request_id = caller.actor.request_id.clone();
    let inv = Invocation {
        method: parts.method.as_str().to_owned(),
        subpath: subpath.to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        query_params: crate::e2b::url_decode_pairs(parts.uri.query().unwrap_or("")).into_iter().collect(),
        headers,
        body,
        auth,
        trigger: "http",
        request_id,
    };
    let reply = functions.invoke(&env, name, inv).await?;
    let mut resp = Response::new(axum::body::Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    for (k, v) in &reply.headers {
        if HOP_BY_HOP.contains(&k.to_ascii_lowercase().as_str()) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k.as_str()), http::HeaderValue::try_from(v.as_str())) {
            resp.headers_mut().append(k, v);
        }
    }
    let h = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::try_from(reply.invocation.as_str()) {
        h.insert("x-vibebase-invocation", v);
    }
    h.insert("x-vibebase-function-version", http::HeaderValue::from(reply.version));
    h.insert("x-vibebase-cold-start", http::HeaderValue::from_static(if reply.cold { "1" } else { "0" }));
    Ok(resp)
}
