//! MCP's streamable HTTP transport at `/env/{env}/mcp`, over [`agent::mcp`]: one JSON-RPC message per
//! POST, answered as JSON (or as one SSE event when the client accepts only SSE); the session is named
//! by `Mcp-Session-Id`, issued by `initialize` and ended by DELETE. No server-initiated stream is
//! offered, so GET answers 405. Errors before a request is dispatched are JSON-RPC errors with id null
//! in the MCP surface's shape (`surface::Surface::Mcp`).

use agent::mcp::{self, Incoming, Reply};
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::gate::Caller;
use crate::handlers::env_of;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
/// The largest message a client may post (a `write_file` carries a whole file).
pub const MAX_MESSAGE: usize = crate::MAX_JSON_BODY;

/// Every method of the MCP endpoint.
pub async fn handle(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    match method {
        Method::POST => post(&state, &caller, &headers, body).await,
        Method::DELETE => {
            let env = env_of(&caller)?;
            let id = session_id(&headers)?;
            if !state.agent.mcp_end(env, &id).await {
                return Err(session_not_found());
            }
            Ok(StatusCode::OK.into_response())
        }
        _ => {
            // Server-initiated messages are not offered: the spec's answer to GET is then 405.
            let mut r = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this MCP endpoint takes POST (messages) and DELETE (end a session)",
            )
            .into_response();
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
            Ok(r)
        }
    }
}

/// How the client wants responses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Json,
    Sse,
}

fn answer_kind(headers: &HeaderMap) -> ApiResult<Answer> {
    let accept: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    if accept.is_empty() {
        return Ok(Answer::Json);
    }
    let types: Vec<String> = accept
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .collect();
    if types.iter().any(|t| t == "application/json" || t == "application/*" || t == "*/*") {
        Ok(Answer::Json)
    } else if types.iter().any(|t| t == "text/event-stream") {
        Ok(Answer::Sse)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "the client must accept application/json or text/event-stream",
        ))
    }
}

fn session_id(headers: &HeaderMap) -> ApiResult<String> {
    match headers.get(SESSION_HEADER) {
        None => Err(ApiError::bad_request("invalid_request", "the Mcp-Session-Id header is required after initialize")),
        // Not visible ASCII: no session of ours has such an id.
        Some(v) => v.to_str().map(str::to_owned).map_err(|_| session_not_found()),
    }
}

fn session_not_found() -> ApiError {
    ApiError::not_found("session_not_found", "no MCP session with this id (it ended or expired): initialize again")
}

async fn post(state: &AppState, caller: &Caller, headers: &HeaderMap, body: Body) -> ApiResult<Response> {
    let env = env_of(caller)?;
    let answer = answer_kind(headers)?;
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "MCP messages are posted as application/json",
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_MESSAGE).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "an MCP message is at most 1 MiB")
    })?;
    let message = mcp::parse(&bytes).map_err(|e| ApiError::bad_request(e.kind.name(), e.message))?;
    if let Incoming::Request { id, params, .. } = &message
        && message.is_initialize()
    {
        return Ok(match state.agent.mcp_initialize(env, id, params.as_ref()).await {
            Ok((session, response)) => {
                let mut r = respond(answer, &response);
                if let Ok(v) = HeaderValue::from_str(&session) {
                    r.headers_mut().insert(SESSION_HEADER, v);
                }
                r
            }
            Err(error) => respond(answer, &error),
        });
    }
    let id = session_id(headers)?;
    let session = state.agent.mcp_session(env, &id).ok_or_else(session_not_found)?;
    // Absent means 2025-03-26 (the spec's default); anything else must be a version this server speaks.
    if let Some(v) = headers.get(VERSION_HEADER)
        && !v.to_str().is_ok_and(|v| mcp::PROTOCOL_VERSIONS.contains(&v))
    {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("unsupported MCP-Protocol-Version; this server speaks {}", mcp::PROTOCOL_VERSIONS.join(", ")),
        ));
    }
    Ok(match state.agent.mcp_handle(&session, message, caller.actor.clone()).await {
        Reply::Accepted => StatusCode::ACCEPTED.into_response(),
        Reply::Response(response) => respond(answer, &response),
    })
}

fn respond(answer: Answer, message: &Value) -> Response {
    let (content_type, body) = match answer {
        Answer::Json => ("application/json", message.to_string()),
        Answer::Sse => ("text/event-stream", format!("event: message\ndata: {message}\n\n")),
    };
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if answer == Answer::Sse {
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    r
}
