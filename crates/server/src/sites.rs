//! Static hosting at the edge: the deployment API (`/v1/envs/{env}/deployments…`) over
//! [`hosting::Hosting`], and the public serving routes (`/env/{env}/site/…`,
//! `/env/{env}/deployments/{deployment}/…`, and their host forms).

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hosting::HostingError;
use hosting::deploy::PublishKind;
use hosting::serve::SiteRequest;
use http::StatusCode;
use protocol::EnvId;
use protocol::hosting::{
    CreateDeploymentRequest, CreatedDeployment, DeploymentList, DeploymentRecord, SandboxDeployRequest,
};
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body as JsonBody, Query};
use crate::gate::Caller;
use crate::handlers::{env_of, page_size};

/// Largest file upload (the protocol's per-file limit).
pub const MAX_FILE_BYTES: usize = protocol::hosting::MAX_SITE_FILE_BYTES;
/// Largest archive upload.
pub const MAX_ARCHIVE_BYTES: usize = protocol::hosting::MAX_ARCHIVE_BYTES;

impl From<HostingError> for ApiError {
    fn from(e: HostingError) -> Self {
        match e {
            HostingError::Invalid { code, message } => ApiError::bad_request(code, message),
            HostingError::NotFound { what } => {
                ApiError::not_found(&format!("{what}_not_found"), format!("{what} not found"))
            }
            HostingError::Conflict { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            HostingError::TooLarge { code, message } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message),
            HostingError::Platform(p) => p.into(),
        }
    }
}

fn raw_body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large")
        } else {
            ApiError::bad_request("invalid_body", "could not read the request body")
        }
    })
}

#[derive(Deserialize)]
pub struct DeploymentPath {
    #[allow(dead_code)]
    env: String,
    deployment: String,
}

#[derive(Deserialize)]
pub struct SandboxPath {
    #[allow(dead_code)]
    env: String,
    sandbox: String,
}

#[derive(Deserialize)]
pub struct FilePath {
    #[allow(dead_code)]
    env: String,
    deployment: String,
    sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishQuery {
    #[serde(default)]
    publish: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<u32>,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CreateDeploymentRequest>,
) -> ApiResult<Response> {
    let created: CreatedDeployment = state.hosting.create(&caller.actor, env_of(&caller)?, req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<FilePath>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let body = raw_body(body)?;
    state.hosting.upload(env_of(&caller)?, &p.deployment, &p.sha256, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn finalize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<DeploymentPath>,
    Query(q): Query<PublishQuery>,
) -> ApiResult<Json<DeploymentRecord>> {
    Ok(Json(state.hosting.finalize(&caller.actor, env_of(&caller)?, &p.deployment, q.publish).await?))
}

pub async fn archive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<PublishQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = raw_body(body)?;
    deploy_archive(&state, &caller, body, q.publish).await
}

/// Deploys a directory of a running sandbox: archived inside the sandbox, then deployed like an upload.
pub async fn from_sandbox(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    JsonBody(req): JsonBody<SandboxDeployRequest>,
) -> ApiResult<Response> {
    if req.path.is_empty() || req.path.len() > 1024 || req.path.starts_with('-') {
        return Err(ApiError::bad_request("invalid_path", "path must be a directory of the sandbox"));
    }
    let sandboxes = state
        .sandboxes
        .as_ref()
        .map_err(|why| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sandboxes_unavailable", why.clone()))?;
    let archive = sandboxes.archive_dir(env_of(&caller)?, &p.sandbox, &req.path, MAX_ARCHIVE_BYTES).await?;
    deploy_archive(&state, &caller, Bytes::from(archive), req.publish).await
}

async fn deploy_archive(state: &AppState, caller: &Caller, body: Bytes, publish: bool) -> ApiResult<Response> {
    let unpacked =
        tokio::task::spawn_blocking(move || hosting::archive::unpack(&body, hosting::archive::Limits::default()))
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))??;
    if unpacked.files.is_empty() {
        return Err(ApiError::bad_request("empty_deployment", "the archive holds no deployable files"));
    }
    let record = state.hosting.deploy_files(&caller.actor, env_of(caller)?, unpacked.files, publish).await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<DeploymentList>> {
    Ok(Json(state.hosting.list(env_of(&caller)?, page_size(q.limit)?).await?))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<DeploymentPath>,
) -> ApiResult<Json<DeploymentRecord>> {
    Ok(Json(state.hosting.get(env_of(&caller)?, &p.deployment).await?))
}

pub async fn publish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<DeploymentPath>,
) -> ApiResult<Json<DeploymentRecord>> {
    let env = env_of(&caller)?;
    Ok(Json(state.hosting.publish(&caller.actor, env, &p.deployment, PublishKind::Publish).await?))
}

pub async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<DeploymentPath>,
) -> ApiResult<Json<DeploymentRecord>> {
    let env = env_of(&caller)?;
    Ok(Json(state.hosting.publish(&caller.actor, env, &p.deployment, PublishKind::Rollback).await?))
}

#[derive(Deserialize)]
pub struct SitePath {
    env: String,
    #[serde(default)]
    rest: String,
}

#[derive(Deserialize)]
pub struct PreviewPath {
    env: String,
    deployment: String,
    #[serde(default)]
    rest: String,
}

fn nothing_here() -> ApiError {
    ApiError::not_found("not_found", "not found")
}

/// The published site of an env (public: a site is for anyone who has its address).
pub async fn site(
    State(state): State<AppState>,
    path: Result<Path<SitePath>, axum::extract::rejection::PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    let Path(p) = path.map_err(|_| nothing_here())?;
    serve(&state, &p.env, hosting::Target::Published, &p.rest, req).await
}

/// A deployment's preview.
pub async fn preview(
    State(state): State<AppState>,
    path: Result<Path<PreviewPath>, axum::extract::rejection::PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    let Path(p) = path.map_err(|_| nothing_here())?;
    serve(&state, &p.env, hosting::Target::Deployment(p.deployment), &p.rest, req).await
}

async fn serve(state: &AppState, env: &str, target: hosting::Target, rest: &str, req: Request) -> ApiResult<Response> {
    // Every miss answers the same plain 404, whether the env exists or not.
    let env = EnvId::parse(env).map_err(|_| nothing_here())?;
    let site_req = SiteRequest {
        method: req.method(),
        path: rest,
        query: req.uri().query(),
        headers: req.headers(),
        preview: false,
    };
    match state.hosting.serve(&env, &target, site_req).await {
        Ok(r) => Ok(r.map(Body::from)),
        Err(HostingError::NotFound { .. }) => Err(nothing_here()),
        Err(e) => Err(e.into()),
    }
}
