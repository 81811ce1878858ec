//! Container apps over HTTP: the `/v1/envs/{env}/apps` API (define, upload a source, list, get,
//! delete, restart, logs) and serving at `/env/{env}/apps/{app}/…` (host form
//! `<app>--<env>.<apps-domain>`), through the same relay as sandbox port previews, WebSockets included.
//! A request to a stopped app waits until it is healthy (bounded by the wake timeout, then 503).

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use bytes::Bytes;
use functions::apps::{AppError, Apps};
use http::StatusCode;
use protocol::EnvId;
use protocol::apps::{AppFromSandboxRequest, AppList, AppLogList, AppRecord, PutAppRequest};
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};
use crate::gate::Caller;
use crate::handlers::env_of;

/// Largest source archive.
pub const MAX_ARCHIVE_BYTES: usize = 50 * 1024 * 1024;

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let message = e.to_string();
        match e {
            AppError::NotFound => ApiError::not_found("app_not_found", message),
            AppError::Invalid { code, .. } => ApiError::bad_request(code, message),
            AppError::Archive(a) => match a {
                functions::archive::ArchiveError::TooLarge(_) => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, a.code(), message)
                }
                _ => ApiError::bad_request(a.code(), message),
            },
            AppError::InstallFailed(_) => ApiError::bad_request("dependency_install_failed", message),
            AppError::NoSource => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "app_has_no_source", message),
            AppError::Unavailable(_) => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "app_unavailable", message);
                e.retry_after = Some(std::time::Duration::from_secs(5));
                e
            }
            AppError::Sandbox(s) => s.into(),
            AppError::Platform(p) => p.into(),
            AppError::Seal(s) => {
                tracing::error!(error = %s, "app env vars unavailable");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "secrets_unavailable",
                    "the app's environment variables could not be opened",
                )
            }
        }
    }
}

/// The apps registry, or 503 with the reason there is none (no sandboxes on this instance).
fn apps(state: &AppState) -> ApiResult<&Apps> {
    state.apps.as_ref().map_err(|why| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "apps_unavailable", format!("apps are unavailable: {why}"))
    })
}

#[derive(Deserialize)]
pub struct AppPath {
    app: String,
}

pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<AppPath>,
    Body(req): Body<PutAppRequest>,
) -> ApiResult<Json<AppRecord>> {
    let env = env_of(&caller)?;
    let (record, _created) = apps(&state)?.put(&caller.actor, env, &p.app, req).await?;
    Ok(Json(record))
}

pub async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<AppPath>,
    body: Bytes,
) -> ApiResult<Json<AppRecord>> {
    let env = env_of(&caller)?;
    Ok(Json(apps(&state)?.upload(&caller.actor, env, &p.app, body).await?))
}

/// The source from a directory of a running sandbox of the env (archived inside it, so the path reaches
/// only what the sandbox can read), then stored like an uploaded archive.
pub async fn from_sandbox(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<AppPath>,
    Body(req): Body<AppFromSandboxRequest>,
) -> ApiResult<Json<AppRecord>> {
    let env = env_of(&caller)?;
    if req.path.is_empty() || req.path.len() > 1024 || req.path.starts_with('-') {
        return Err(ApiError::bad_request("invalid_path", "path must be a directory of the sandbox"));
    }
    let apps = apps(&state)?;
    // Unknown apps answer before the sandbox is touched.
    apps.get(env, &p.app).await?;
    let sandboxes = state
        .sandboxes
        .as_ref()
        .map_err(|why| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sandboxes_unavailable", why.clone()))?;
    let archive = sandboxes.archive_dir(env, &req.sandbox, &req.path, MAX_ARCHIVE_BYTES).await?;
    Ok(Json(apps.upload(&caller.actor, env, &p.app, Bytes::from(archive)).await?))
}

pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<AppList>> {
    Ok(Json(apps(&state)?.list(env_of(&caller)?).await?))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<AppPath>,
) -> ApiResult<Json<AppRecord>> {
    Ok(Json(apps(&state)?.get(env_of(&caller)?, &p.app).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<AppPath>,
) -> ApiResult<StatusCode> {
    apps(&state)?.delete(&caller.actor, env_of(&caller)?, &p.app).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn restart(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<AppPath>,
) -> ApiResult<Json<AppRecord>> {
    match apps(&state)?.restart(env_of(&caller)?, &p.app).await {
        Ok(r) => Ok(Json(r)),
        // Nothing to start is the caller's state, not a failure of the platform.
        Err(e @ AppError::NoSource) => Err(ApiError::new(StatusCode::CONFLICT, "app_has_no_source", e.to_string())),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct LogQuery {
    limit: Option<usize>,
}

pub const LOG_QUERY: &[(&str, crate::routes::QueryType, &str)] =
    &[("limit", crate::routes::QueryType::Integer(1, 10_000), "The last this many lines (default 200).")];

pub async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<AppPath>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<AppLogList>> {
    let limit = q.limit.unwrap_or(200);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit must be 1..=10000"));
    }
    Ok(Json(apps(&state)?.logs(env_of(&caller)?, &p.app, limit).await?))
}

#[derive(Deserialize)]
pub struct ServePath {
    env: String,
    app: String,
    #[serde(default)]
    rest: String,
}

/// Serves a request of an app: waits for a healthy instance, then relays to it.
pub async fn serve(State(state): State<AppState>, Path(p): Path<ServePath>, req: Request) -> ApiResult<Response> {
    let not_found = || ApiError::not_found("app_not_found", "no such app");
    let env = EnvId::parse(&p.env).map_err(|_| not_found())?;
    let apps = state.apps.as_ref().map_err(|_| not_found())?;
    let sandboxes = state.sandboxes.as_ref().map_err(|_| not_found())?;
    // Suspended (or unknown) envs serve nothing, the same plain 404 as an unknown app.
    if !matches!(state.platform.env_status(&env).await, Ok(protocol::api::EnvStatus::Active)) {
        return Err(not_found());
    }
    let lease = apps.connect(&env, &p.app).await?;
    let agent = sandboxes
        .agent(&env, &lease.sandbox)
        .map_err(|_| ApiError::new(StatusCode::BAD_GATEWAY, "app_restarting", "the app's instance ended; try again"))?;
    let port = lease.port;
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let keep = Served { _lease: lease, platform: state.platform.clone(), env, bytes: served.clone() };
    crate::preview::relay(&agent, port, &p.rest, req, keep, Some(served)).await
}

/// Holds an app's lease while its answer is relayed, and meters what was sent when it is done.
struct Served {
    _lease: functions::apps::Lease,
    platform: platform::Platform,
    env: EnvId,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let bytes = self.bytes.load(std::sync::atomic::Ordering::Relaxed);
        let quantity = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.platform.meter(&self.env, protocol::Meter::HostingBytesServed, ("kind", "app"), quantity);
    }
}
