//! Handlers of the env database: migrations (`/v1/envs/{env}/sql`) and the PostgREST data API
//! (`/env/{env}/rest/v1/…`). The gate has authenticated the key; this maps the principal to a request
//! role, verifies an end-user JWT when one is presented, and meters rows.

use appdb::api::{Method, RestRequest, RestResponse};
use appdb::migrate::MigrateError;
use appdb::sqlgen::RestError;
use appdb::{RequestAuth, RequestRole};
use axum::Extension;
use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use protocol::Meter;
use protocol::api::{SqlRequest, SqlResult};
use tenancy::{EnvRole, Principal};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::gate::Caller;

/// Longest migration text.
pub const MAX_SQL_CHARS: usize = 100_000;

/// Largest data-API request body.
pub const MAX_REST_BODY: usize = 1024 * 1024;

/// The audit row of a migration that committed in the env's database (it goes to the platform's).
pub(crate) async fn audit_migration(
    platform: &platform::Platform,
    actor: &platform::Actor,
    env: &protocol::EnvId,
    version: i64,
) {
    let (actor, at, env_id) = (actor.clone(), platform.clock().now_ms(), env.to_string());
    let target = format!("migration {version}");
    let audited = platform
        .db()
        .tx(move |conn| {
            platform::audit::write(
                conn,
                at,
                &platform::audit::Record {
                    actor: &actor,
                    action: "db:Migrate",
                    env: Some(&env_id),
                    target: Some(&target),
                    result: "ok",
                },
            )
        })
        .await;
    if let Err(e) = audited {
        tracing::error!(error = %e, "could not write the audit row of a migration");
    }
}

pub async fn sql(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<SqlRequest>,
) -> ApiResult<Json<SqlResult>> {
    let env = caller.env.clone().ok_or_else(|| ApiError::not_found("env_not_found", "environment not found"))?;
    // Within the JSON body limit even when every character is escaped.
    if req.query.chars().count() > MAX_SQL_CHARS {
        return Err(ApiError::bad_request("sql_too_long", format!("query is longer than {MAX_SQL_CHARS} characters")));
    }
    match state.appdb.migrate(&env, req.query).await {
        Ok(applied) => {
            audit_migration(&state.platform, &caller.actor, &env, applied.version).await;
            Ok(Json(SqlResult { version: applied.version, statements: applied.statements as u64 }))
        }
        Err(e) => Err(migrate_error(e)),
    }
}

/// A refused or failed migration as the API answers it.
pub(crate) fn migrate_error(e: MigrateError) -> ApiError {
    match e {
        MigrateError::AppDb(e) => {
            tracing::error!(error = %e, "env database unavailable");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "the env database is unavailable")
        }
        e => {
            let message = match &e {
                MigrateError::Database { index, error } if *index > 0 => {
                    format!("statement {index}: {} (SQLSTATE {})", error.message, error.code)
                }
                MigrateError::Database { error, .. } => format!("{} (SQLSTATE {})", error.message, error.code),
                other => other.to_string(),
            };
            ApiError::bad_request(e.code(), message)
        }
    }
}

fn rest_error(status: u16, code: &str, message: &str) -> Response {
    let e = RestError::new(status, code, message);
    to_response(RestResponse::error(&e))
}

fn to_response(r: RestResponse) -> Response {
    let mut resp =
        (StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), r.body).into_response();
    for (k, v) in r.headers {
        if let Ok(v) = http::HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// The end user's verified claims when `Authorization: Bearer` carries a JWT that is not the key
/// itself (an error when it does not verify); `None` when the request carries only keys.
pub(crate) async fn end_user_claims(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Option<Result<serde_json::Value, String>> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.strip_prefix("Bearer ").or_else(|| s.strip_prefix("bearer ")))
        .map(str::trim);
    let apikey = headers.get("apikey").or_else(|| headers.get("x-api-key")).and_then(|v| v.to_str().ok());
    // A JWT (three dot-separated parts) that is not the key itself is an end user's token.
    let (Some(token), Some(env)) = (bearer, caller.env.as_ref()) else { return None };
    if Some(token) == apikey || token.split('.').count() != 3 {
        return None;
    }
    // The env's auth service signed it (or nobody did): verified against the env's public keys.
    Some(state.auth.verify_access_token(env, token).await.map(|v| v.payload).map_err(|e| e.to_string()))
}

/// The request role: the key decides, unless `Authorization: Bearer` carries an end-user JWT.
pub(crate) async fn request_auth(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<RequestAuth, RestError> {
    if let Some(verified) = end_user_claims(state, caller, headers).await {
        return match verified {
            Ok(claims) => {
                let role = claims.get("role").and_then(|r| r.as_str()).unwrap_or("authenticated");
                Ok(match role {
                    "service_role" => RequestAuth { role: RequestRole::ServiceRole, claims },
                    "anon" => RequestAuth { role: RequestRole::Anon, claims },
                    _ => RequestAuth::authenticated(claims),
                })
            }
            Err(why) => Err(RestError::new(401, "PGRST301", format!("JWT could not be verified: {why}"))),
        };
    }
    Ok(match &caller.principal {
        Principal::EnvKey { role: EnvRole::Anon, .. } => RequestAuth::anon(),
        Principal::EnvKey { role: EnvRole::Service, .. }
        | Principal::Minted { .. }
        | Principal::Admin
        | Principal::SubAccount { .. } => RequestAuth::service_role(),
    })
}

pub async fn rest(State(state): State<AppState>, Extension(caller): Extension<Caller>, req: Request) -> Response {
    let Some(env) = caller.env.clone() else {
        return rest_error(404, "PGRST000", "environment not found");
    };
    let (parts, body) = req.into_parts();
    let method = match parts.method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        _ => return rest_error(405, "PGRST117", "Unsupported HTTP method"),
    };
    let path = parts.uri.path();
    let table = path.split_once("/rest/v1/").map_or("", |(_, t)| t).trim_end_matches('/').to_owned();
    let auth = match request_auth(&state, &caller, &parts.headers).await {
        Ok(a) => a,
        Err(e) => return to_response(RestResponse::error(&e)),
    };
    if let Some(function) = table.strip_prefix("rpc/").filter(|f| !f.is_empty() && !f.contains('/')) {
        let args = match method {
            Method::Post => match axum::body::to_bytes(body, MAX_REST_BODY).await {
                Ok(b) if b.is_empty() => serde_json::json!({}),
                Ok(b) => match serde_json::from_slice(&b) {
                    Ok(v) => v,
                    Err(e) => return rest_error(400, "PGRST102", &format!("Empty or invalid json: {e}")),
                },
                Err(_) => return rest_error(413, "PGRST413", "request body is too large"),
            },
            Method::Get | Method::Head => {
                let mut m = serde_json::Map::new();
                for pair in parts.uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    match (appdb::rest::percent_decode(k), appdb::rest::percent_decode(v)) {
                        (Ok(k), Ok(v)) => {
                            m.insert(k, serde_json::Value::String(v));
                        }
                        (Err(e), _) | (_, Err(e)) => return rest_error(400, e.code, &e.message),
                    }
                }
                serde_json::Value::Object(m)
            }
            _ => return rest_error(405, "PGRST101", "rpc takes GET or POST"),
        };
        let accept = parts.headers.get("accept").and_then(|v| v.to_str().ok()).map(str::to_owned);
        return to_response(state.appdb.rpc(&env, auth, function.to_owned(), args, accept).await);
    }
    if table.is_empty() || table.contains('/') {
        return rest_error(404, "PGRST125", "Invalid path specified in request URL");
    }
    let writes = matches!(method, Method::Post | Method::Patch);
    let meter = if writes { Meter::DbRowsWritten } else { Meter::DbRowsRead };
    if let Err(e) = state.platform.check_quota(&env, meter).await {
        return ApiError::from(e).into_response();
    }
    if writes && let Err(e) = check_size_quota(&state, &env).await {
        return e.into_response();
    }
    let body = match axum::body::to_bytes(body, MAX_REST_BODY).await {
        Ok(b) => b.to_vec(),
        Err(_) => return rest_error(413, "PGRST413", "request body is too large"),
    };
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request = RestRequest {
        method,
        table,
        query: parts.uri.query().unwrap_or("").to_owned(),
        // Clients may send several Prefer headers; their preferences add up.
        prefer: Some(
            parts.headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(","),
        )
        .filter(|p| !p.is_empty()),
        accept: header("accept"),
        range: header("range"),
        body,
    };
    let response = state.appdb.rest(&env, auth, request).await;
    state.platform.meter(&env, Meter::DbRowsRead, ("surface", "rest"), response.rows_read);
    state.platform.meter(&env, Meter::DbRowsWritten, ("surface", "rest"), response.rows_written);
    if response.rows_written > 0 && state.appdb.size_sample_due(&env) {
        sample_size(&state, &env).await;
    }
    to_response(response)
}

/// 402 when the env's database is at or over a hard `db_bytes` quota (its size now, not a sum).
async fn check_size_quota(state: &AppState, env: &protocol::EnvId) -> Result<(), ApiError> {
    let limits = state.platform.get_env_limits(env).await?;
    let Some(q) = limits.quotas.iter().find(|q| q.meter == Meter::DbBytes.name() && q.hard_limit.is_some()) else {
        return Ok(());
    };
    let limit = q.hard_limit.unwrap_or(i64::MAX);
    let used = state.appdb.size_bytes(env).await.map_err(|e| {
        tracing::error!(error = %e, "env database unavailable");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "the env database is unavailable")
    })?;
    if used >= limit {
        return Err(platform::PlatformError::QuotaExceeded {
            meter: Meter::DbBytes.name().to_owned(),
            used,
            limit,
            period: q.period.as_str(),
        }
        .into());
    }
    Ok(())
}

/// Records the database size as a `db_bytes` gauge event.
async fn sample_size(state: &AppState, env: &protocol::EnvId) {
    let Ok(size) = state.appdb.size_bytes(env).await else { return };
    let input = protocol::api::UsageEventInput {
        meter: Meter::DbBytes.name().to_owned(),
        quantity: size,
        source: "appdb".to_owned(),
        event_id: format!("size-{}", state.platform.random_id(16)),
        at: None,
        dimensions: Default::default(),
    };
    if let Err(e) = state.platform.record_usage(env, input).await {
        tracing::warn!(error = %e, "could not record db_bytes");
    }
}
