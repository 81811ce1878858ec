//! The custom-domain API (`/v1/envs/{env}/domains…`) over [`hosting::domains::Domains`].

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use protocol::hosting::{AddDomainRequest, DomainList, DomainRecord};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Body as JsonBody;
use crate::gate::Caller;
use crate::handlers::env_of;

#[derive(Deserialize)]
pub struct DomainPath {
    #[allow(dead_code)]
    env: String,
    domain: String,
}

pub async fn add(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<AddDomainRequest>,
) -> ApiResult<Response> {
    let record = state.domains.add(&caller.actor, env_of(&caller)?, &req.domain).await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<DomainList>> {
    Ok(Json(state.domains.list(env_of(&caller)?).await?))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<DomainPath>,
) -> ApiResult<Json<DomainRecord>> {
    Ok(Json(state.domains.get(env_of(&caller)?, &p.domain).await?))
}

pub async fn verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<DomainPath>,
) -> ApiResult<Json<DomainRecord>> {
    Ok(Json(state.domains.verify(&caller.actor, env_of(&caller)?, &p.domain).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<DomainPath>,
) -> ApiResult<StatusCode> {
    state.domains.delete(&caller.actor, env_of(&caller)?, &p.domain).await?;
    Ok(StatusCode::NO_CONTENT)
}
