//! The one authorization path. Every routed request passes [`gate`] before its handler: the caller is
//! resolved from a verified credential only, the env scope from the path is checked against it, the
//! decision is made by [`tenancy::authorize`], then rate limits and quotas apply and the request is
//! metered. [`edge`] wraps everything: request ids, error rendering in the surface's shape, metrics, logs.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use platform::Actor;
use protocol::api::EnvStatus;
use protocol::{EnvId, Meter};
use tenancy::policy::{self, Context, ContextValue};
use tenancy::{Denial, Plane, Principal};

use crate::AppState;
use crate::error::ApiError;
use crate::routes::{RouteSpec, Scope};
use crate::surface::{ErrorBody, Surface};

/// The request id, set by [`edge`] on every request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The verified caller, set by [`gate`] for every non-public route.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The env the path names, verified to exist and to be within the caller's scope.
    pub env: Option<EnvId>,
    pub actor: Actor,
    /// CAM condition context of this request (source ip, time, transport).
    pub context: Context,
}

impl Caller {
    /// Decides an action on one env for platform-wide principals (used where the env is known only inside
    /// the handler: create and list).
    pub fn may(&self, spec_action: tenancy::Access, env: &EnvId) -> bool {
        tenancy::authorize(&self.principal, &spec_action, Some(env), &policy::env_resource(env), &self.context).is_ok()
    }

    /// Decides a platform-wide action (resource `vrn:vibebase:platform`).
    pub fn may_platform(&self, spec_action: tenancy::Access) -> bool {
        tenancy::authorize(&self.principal, &spec_action, None, PLATFORM_RESOURCE, &self.context).is_ok()
    }
}

pub(crate) fn denial(d: Denial) -> ApiError {
    match d {
        Denial::WrongEnv => {
            ApiError::new(StatusCode::FORBIDDEN, "env_mismatch", "this credential belongs to another environment")
        }
        Denial::CredentialKind => {
            ApiError::new(StatusCode::FORBIDDEN, "credential_not_allowed", "this credential may not use this route")
        }
        Denial::Policy => ApiError::new(StatusCode::FORBIDDEN, "access_denied", "not allowed by policy"),
    }
}

/// The credential a request presents. The `/v1` API takes `Authorization: Bearer`; data-plane surfaces
/// also take the header their clients send (`apikey` for supabase-js, `x-api-key` for Anthropic and E2B,
/// `x-access-token` for E2B's envd).
fn presented_credential(headers: &HeaderMap, plane: Plane) -> Result<&str, ApiError> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().map_err(|_| invalid_key()));
    let bearer = headers.get(http::header::AUTHORIZATION).map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.strip_prefix("Bearer ").or_else(|| s.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(invalid_key)
    });
    let found = match plane {
        Plane::Data => header("apikey").or_else(|| header("x-api-key")).or_else(|| header("x-access-token")).or(bearer),
        _ => bearer,
    };
    match found {
        Some(Ok(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(invalid_key()),
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing_credentials", "no credentials were given")),
    }
}

fn invalid_key() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_key", "not a valid key")
}

/// The route-level middleware: authentication, env scope, authorization, limits, metering.
pub async fn gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let Some(spec) = MatchedPath::from_request_parts(&mut parts, &state)
        .await
        .ok()
        .and_then(|m| state.spec(&parts.method, m.as_str()))
    else {
        return ApiError::not_found("route_not_found", "no such route").into_response();
    };
    let params = RawPathParams::from_request_parts(&mut parts, &state).await.ok();
    let env_param = params.as_ref().and_then(|p| p.iter().find(|(k, _)| *k == "env").map(|(_, v)| v.to_owned()));
    let mut req = Request::from_parts(parts, body);
    if spec.scope == Scope::Public {
        return next.run(req).await;
    }
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let caller = match admit(&state, spec, req.headers(), env_param, request_id, peer).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(caller.clone());
    let idempotency_key = (spec.surface == Surface::Platform && crate::idempotency::applies(req.method()))
        .then(|| req.headers().get(crate::idempotency::HEADER).cloned())
        .flatten();
    let response = match idempotency_key {
        Some(key) => {
            let now = state.platform.clock().now_ms();
            crate::idempotency::run(state.platform.db(), now, &caller, &key, req, next).await
        }
        None => next.run(req).await,
    };
    if spec.access.plane == Plane::Control
        && spec.method != "GET"
        && let Some(err) = response.extensions().get::<ApiError>()
    {
        let env = caller.env.as_ref().map(ToString::to_string);
        if let Err(e) = state
            .platform
            .audit_failure(caller.actor.clone(), spec.access.action.to_owned(), env, err.code.clone())
            .await
        {
            tracing::error!(error = %e, "could not write audit row for a failed mutation");
        }
    }
    response
}

async fn admit(
    state: &AppState,
    spec: &RouteSpec,
    headers: &HeaderMap,
    env_param: Option<String>,
    request_id: String,
    peer: Option<IpAddr>,
) -> Result<Caller, ApiError> {
    let platform = &state.platform;
    let presented = presented_credential(headers, spec.access.plane)?;
    let principal = platform.authenticate(presented).await?.principal;
    let mut context = Context::new()
        .with(policy::keys::CURRENT_TIME, ContextValue::Time(platform.clock().now()))
        .with(policy::keys::SECURE_TRANSPORT, ContextValue::Bool(false));
    if let Some(ip) = peer {
        context.insert(policy::keys::SOURCE_IP, ContextValue::Ip(ip));
    }
    if let Principal::SubAccount { id, .. } = &principal {
        context.insert(policy::keys::PRINCIPAL, ContextValue::String(id.clone()));
    }
    let actor = Actor { name: principal.actor(), request_id };
    let env = match spec.scope {
        Scope::Public => None,
        Scope::Platform | Scope::PerEnv => {
            if principal.bound_env().is_some() {
                return Err(denial(Denial::CredentialKind));
            }
            if spec.scope == Scope::Platform {
                tenancy::authorize(&principal, &spec.access, None, PLATFORM_RESOURCE, &context).map_err(denial)?;
            }
            None
        }
        Scope::Env => {
            let env = env_param
                .and_then(|e| EnvId::parse(&e).ok())
                .ok_or_else(|| ApiError::not_found("env_not_found", "environment not found"))?;
            // Scope before existence: a key of env B learns nothing about env A, not even whether it exists.
            if principal.bound_env().is_some_and(|own| *own != env) {
                return Err(denial(Denial::WrongEnv));
            }
            context.insert(policy::keys::ENV, ContextValue::String(env.to_string()));
            tenancy::authorize(&principal, &spec.access, Some(&env), &policy::env_resource(&env), &context)
                .map_err(denial)?;
            let status = platform.env_status(&env).await?;
            let platform_principal = principal.bound_env().is_none();
            if status == EnvStatus::Suspended && (spec.access.plane == Plane::Data || !platform_principal) {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "env_suspended", "this environment is suspended"));
            }
            // The tenant's own traffic is limited and billed; the operator managing the env is neither,
            // so an operator can always inspect and lift a tenant's limits.
            if !platform_principal {
                platform.check_rate(&env).await?;
                platform.check_quota(&env, Meter::ApiRequests).await?;
                platform.meter_api_request(&env, spec.surface.name());
            }
            Some(env)
        }
    };
    Ok(Caller { principal, env, actor, context })
}

/// The CAM resource of platform-wide routes.
pub const PLATFORM_RESOURCE: &str = "vrn:vibebase:platform";

/// The surface a path belongs to (for rendering errors raised before or outside routing).
pub fn surface_for_path(path: &str) -> Surface {
    let Some(rest) = path.strip_prefix("/env/") else { return Surface::Platform };
    let after_env = rest.split_once('/').map_or("", |(_, r)| r);
    let first = after_env.split('/').next().unwrap_or("");
    match first {
        "rest" => Surface::Rest,
        "auth" => Surface::Auth,
        "storage" => Surface::Storage,
        "functions" => Surface::Functions,
        "llm" => Surface::Llm,
        "e2b" => Surface::E2b,
        "mcp" => Surface::Mcp,
        "site" | "deployments" | "apps" | "sandboxes" => Surface::Hosting,
        _ => Surface::Platform,
    }
}

fn valid_request_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The outermost middleware: request id, error rendering, metrics and the access log.
pub async fn edge(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(protocol::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid_request_id(s))
        .map_or_else(|| state.platform.random_id(20), str::to_owned);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let surface = surface_for_path(&path);
    // No store accepts NUL in text; refuse it in paths and queries before anything parses them.
    let has_nul = req.uri().path_and_query().is_some_and(|pq| pq.as_str().to_ascii_lowercase().contains("%00"));
    let mut response = if has_nul {
        ApiError::bad_request("invalid_request", "the URL may not contain NUL characters").into_response()
    } else {
        next.run(req).await
    };
    if let Some(err) = response.extensions().get::<ApiError>().cloned() {
        response = render_error(response, surface, &err, &request_id, &path);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(protocol::REQUEST_ID_HEADER, v);
    }
    // The CORS layer answers every OPTIONS request; TUS clients read the server's capabilities from
    // that answer on the resumable-upload endpoint.
    if method == http::Method::OPTIONS && crate::storage_tus::is_tus_path(&path) {
        crate::storage_tus::capability_headers(response.headers_mut());
    }
    // White-label deployments never name the product to end users; others say who answered.
    if !state.platform.config().white_label {
        response
            .headers_mut()
            .insert(http::header::SERVER, HeaderValue::from_static(concat!("vibebase/", env!("CARGO_PKG_VERSION"))));
    }
    let status = response.status();
    state.metrics.observe(surface, status, started.elapsed());
    tracing::info!(%method, %path, status = status.as_u16(), ms = started.elapsed().as_millis() as u64, %request_id, "request");
    response
}

fn render_error(response: Response, surface: Surface, err: &ApiError, request_id: &str, path: &str) -> Response {
    let (mut parts, _) = response.into_parts();
    let body = match surface.error_body(err.status, &err.code, &err.message, request_id, path) {
        ErrorBody::Json(v) => {
            parts.headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            v.to_string()
        }
        ErrorBody::Text(t) => {
            parts.headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            t
        }
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}
