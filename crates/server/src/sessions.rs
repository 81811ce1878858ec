//! The session API (`/v1/envs/{env}/sessions`) and AG-UI's entry point (`POST /v1/envs/{env}/agent`) over
//! [`agent::Agent`]. Events stream as SSE, each with its log sequence number as the SSE id, so a client
//! resumes with `Last-Event-ID` and gets exactly what it missed. A run goes on when every client has
//! gone: the stream only reads the log.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use agent::event::Event;
use agent::{Agent, AgentError};
use axum::Extension;
use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use protocol::EnvId;
use protocol::agent::{
    ApprovalRequest, CreateSessionRequest, InterruptResult, RevertRequest, RevertResult, RunStarted,
    SendMessageRequest, SessionList, SessionRecord,
};
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};
use crate::gate::Caller;
use crate::handlers::env_of;
use crate::sandboxes::audit;

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        if matches!(e, AgentError::Store(_) | AgentError::Corrupt(_)) {
            tracing::error!(error = %e, "agent store error");
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error");
        }
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.code(), e.to_string())
    }
}

#[derive(Deserialize)]
pub struct SessionPath {
    session: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Start after this sequence number (`Last-Event-ID` wins when both are given).
    after: Option<i64>,
    /// `false`: end the stream at the log's current end instead of following it.
    follow: Option<bool>,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateSessionRequest>,
) -> ApiResult<(StatusCode, Json<SessionRecord>)> {
    let env = env_of(&caller)?;
    let s = state.agent.create_session(env, req).await?;
    audit(&state, &caller, "sessions:Create", env, &s.id).await;
    Ok((StatusCode::CREATED, Json(s.record())))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<SessionList>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=crate::routes::MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit must be 1..=1000"));
    }
    let items = state.agent.sessions(env_of(&caller)?, limit).await?;
    Ok(Json(SessionList { items: items.iter().map(agent::Session::record).collect() }))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SessionPath>,
) -> ApiResult<Json<SessionRecord>> {
    Ok(Json(state.agent.session(env_of(&caller)?, &p.session).await?.record()))
}

pub async fn send(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SessionPath>,
    Body(req): Body<SendMessageRequest>,
) -> ApiResult<(StatusCode, Json<RunStarted>)> {
    let env = env_of(&caller)?;
    let run = state.agent.send(env, &p.session, req).await?;
    audit(&state, &caller, "sessions:Send", env, &p.session).await;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

pub async fn interrupt(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SessionPath>,
) -> ApiResult<Json<InterruptResult>> {
    let env = env_of(&caller)?;
    let interrupted = state.agent.interrupt(env, &p.session).await?;
    audit(&state, &caller, "sessions:Interrupt", env, &p.session).await;
    Ok(Json(InterruptResult { interrupted }))
}

/// A person's decision on a tool call waiting for approval.
pub async fn approve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SessionPath>,
    Body(req): Body<ApprovalRequest>,
) -> ApiResult<Json<ApprovalRequest>> {
    let env = env_of(&caller)?;
    state.agent.approve(env, &p.session, req.clone()).await?;
    audit(&state, &caller, "sessions:Approve", env, &p.session).await;
    Ok(Json(req))
}

/// Returns the session's workspace and site to one of its checkpoints (the schema is not reverted).
pub async fn revert(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SessionPath>,
    Body(req): Body<RevertRequest>,
) -> ApiResult<Json<RevertResult>> {
    let env = env_of(&caller)?;
    let reverted = state.agent.revert(env, &p.session, req).await?;
    audit(&state, &caller, "sessions:Revert", env, &p.session).await;
    Ok(Json(reverted))
}

/// The session's events as SSE, from `Last-Event-ID` (or `?after=`), following the log.
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SessionPath>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let env = env_of(&caller)?;
    state.agent.session(env, &p.session).await?;
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => {
            Some(v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()).filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be a sequence number")
            })?)
        }
        None => None,
    };
    let after = last_event_id.or(q.after).unwrap_or(0).max(0);
    let until = if q.follow == Some(false) { Until::CurrentEnd } else { Until::Disconnect };
    Ok(sse(state.agent.clone(), env.clone(), p.session, after, until))
}

/// What AG-UI's `HttpAgent` posts.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunAgentInput {
    thread_id: String,
    run_id: Option<String>,
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    forwarded_props: Value,
    // `state`, `tools` and `context` are accepted and not used: the tools are the env's own.
    #[serde(default, rename = "state")]
    _state: Value,
    #[serde(default, rename = "tools")]
    _tools: Value,
    #[serde(default, rename = "context")]
    _context: Value,
}

/// AG-UI's entry: `threadId` is the session (a new id starts one), the last user message of `messages`
/// starts a run, and the answer is that run's events.
pub async fn ag_ui(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(input): Body<RunAgentInput>,
) -> ApiResult<Response> {
    let env = env_of(&caller)?;
    let content = input
        .messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(message_text)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid_message", "messages holds no user message with text"))?;
    let model = input.forwarded_props.get("model").and_then(Value::as_str).map(str::to_owned);
    if let Err(AgentError::NotFound) = state.agent.session(env, &input.thread_id).await {
        // Checked before the session exists, so a refused run leaves no empty session behind.
        if model.is_none() && state.agent.default_model().is_none() {
            return Err(AgentError::NoModel.into());
        }
        let req =
            CreateSessionRequest { id: Some(input.thread_id.clone()), model: model.clone(), ..Default::default() };
        match state.agent.create_session(env, req).await {
            Ok(_) | Err(AgentError::Exists) => audit(&state, &caller, "sessions:Create", env, &input.thread_id).await,
            Err(e) => return Err(e.into()),
        }
    }
    let req = SendMessageRequest { content, model, run_id: input.run_id };
    let run = state.agent.send(env, &input.thread_id, req).await?;
    audit(&state, &caller, "sessions:Send", env, &input.thread_id).await;
    Ok(sse(state.agent.clone(), env.clone(), input.thread_id, run.after_seq, Until::RunEnd))
}

/// The text of an AG-UI message: `content` as a string, or the text parts of a content array.
fn message_text(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// When an event stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// At the first event that ends a run (AG-UI's per-run stream).
    RunEnd,
    /// When the log has nothing more right now.
    CurrentEnd,
    /// When the client goes away.
    Disconnect,
}

/// A comment line keeps idle connections (and the proxies between) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Longest wait before looking at the log again (other instances' writes wake nobody here).
const POLL: Duration = Duration::from_millis(500);

struct Cursor {
    agent: Agent,
    env: EnvId,
    session: String,
    after: i64,
    until: Until,
    queue: VecDeque<(i64, Event)>,
    done: bool,
    last_sent: Instant,
}

fn sse(agent: Agent, env: EnvId, session: String, after: i64, until: Until) -> Response {
    let cursor =
        Cursor { agent, env, session, after, until, queue: VecDeque::new(), done: false, last_sent: Instant::now() };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if c.done {
                return None;
            }
            if let Some((seq, event)) = c.queue.pop_front() {
                if c.until == Until::RunEnd && event.ends_run() {
                    c.done = true;
                }
                c.last_sent = Instant::now();
                let data = serde_json::to_string(&event).unwrap_or_default();
                return Some((Ok::<_, Infallible>(Bytes::from(format!("id: {seq}\ndata: {data}\n\n"))), c));
            }
            // Subscribe before reading, so a write between the read and the wait still wakes us.
            let notify = c.agent.notifier(&c.env, &c.session);
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match c.agent.log().read(&c.env, &c.session, c.after, 256).await {
                Ok(rows) if !rows.is_empty() => {
                    c.after = rows.last().map_or(c.after, |(s, _)| *s);
                    c.queue.extend(rows);
                    continue;
                }
                Ok(_) if c.until == Until::CurrentEnd => return None,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "session stream could not read the log");
                    return None;
                }
            }
            let _ = tokio::time::timeout(POLL, woken).await;
            if c.last_sent.elapsed() >= KEEP_ALIVE {
                c.last_sent = Instant::now();
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), c));
            }
        }
    });
    let mut r = Response::new(HttpBody::from_stream(stream));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
