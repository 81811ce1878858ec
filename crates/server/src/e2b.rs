//! E2B compatibility: the control plane (`/env/{env}/e2b/...`, REST as the `e2b` SDK calls it) and
//! envd (`/env/{env}/e2b/envd/...`: Connect RPC with JSON for processes and the filesystem, plus the
//! `/files` and `/health` HTTP routes), both on top of [`sandbox::Sandboxes`]. The SDK names the
//! sandbox of an envd call in the `E2b-Sandbox-Id` header and authenticates it with the sandbox's
//! envd access token (`X-Access-Token`), which works on that sandbox only.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use protocol::sandbox::{CreateSandboxRequest, SandboxRecord, SandboxState};
use sandbox::proto::{EntryInfo, ExecEvent, ExecSpec, PtySize};
use sandbox::{AgentClient, SandboxError};
use serde::Deserialize;
use serde_json::{Value, json};
use tenancy::Principal;

use crate::AppState;
use crate::error::ApiError;
use crate::gate::Caller;
use crate::handlers::env_of;
use crate::sandboxes::{audit, sandboxes};

/// The envd version we answer to: the SDK turns features on by version (octet-stream uploads since
/// 0.5.7; every feature it gates below that is implemented here).
pub const ENVD_VERSION: &str = "0.5.7";
/// The only template: the host's own userland.
pub const TEMPLATE: &str = "base";
const MAX_UPLOAD: usize = 100 * 1024 * 1024;

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

// ------------------------------------------------------------------------------------------------
// Control plane

#[derive(Deserialize)]
pub struct EnvRest {
    rest: String,
}

/// `ANY /env/{env}/e2b/{*rest}`: the E2B REST API.
pub async fn control(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<EnvRest>,
    req: Request,
) -> Result<Response, ApiError> {
    let env = env_of(&caller)?.clone();
    let method = req.method().clone();
    let body = axum::body::to_bytes(req.into_body(), crate::MAX_JSON_BODY)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large"))?;
    let parts: Vec<&str> = p.rest.trim_matches('/').split('/').collect();
    let sbx = sandboxes(&state)?;
    match (&method, parts.as_slice()) {
        (&Method::POST, ["sandboxes"] | ["v2", "sandboxes"]) => {
            let req = parse_new_sandbox(&body, &sbx.templates())?;
            let record = sbx.create(&caller.actor, &env, req).await?;
            audit(&state, &caller, "sandboxes:Create", &env, &record.id).await;
            Ok(json_response(StatusCode::CREATED, sandbox_json(&record)))
        }
        (&Method::GET, ["sandboxes"] | ["v2", "sandboxes"]) => {
            let items: Vec<Value> = sbx.list(&env).iter().map(listed_json).collect();
            Ok(json_response(StatusCode::OK, Value::Array(items)))
        }
        (&Method::GET, ["sandboxes", id]) => {
            let r = sbx.get(&env, id).map_err(not_found_e2b)?;
            let mut v = listed_json(&r);
            v["envdAccessToken"] = json!(r.envd_access_token);
            v["domain"] = Value::Null;
            Ok(json_response(StatusCode::OK, v))
        }
        (&Method::DELETE, ["sandboxes", id]) => {
            sbx.kill(&env, id).await.map_err(not_found_e2b)?;
            audit(&state, &caller, "sandboxes:Kill", &env, id).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::POST, ["sandboxes", id, "timeout"]) => {
            let v: Value =
                serde_json::from_slice(&body).map_err(|_| bad("invalid_body", "expected {\"timeout\": seconds}"))?;
            let secs = v["timeout"]
                .as_u64()
                .ok_or_else(|| bad("invalid_body", "timeout must be a whole number of seconds"))?;
            sbx.set_timeout(&env, id, Duration::from_secs(secs)).map_err(not_found_e2b)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::POST, ["sandboxes", id, "pause"]) => {
            sbx.pause(&env, id).await.map_err(not_found_e2b)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::POST, ["sandboxes", id, "resume" | "connect"] | ["v2", "sandboxes", id, "connect"]) => {
            let r = sbx.get(&env, id).map_err(not_found_e2b)?;
            let r = if r.state == SandboxState::Paused { sbx.resume(&env, id).await? } else { r };
            if let Ok(v) = serde_json::from_slice::<Value>(&body)
                && let Some(secs) = v["timeout"].as_u64()
            {
                sbx.set_timeout(&env, id, Duration::from_secs(secs))?;
            }
            Ok(json_response(StatusCode::CREATED, sandbox_json(&r)))
        }
        _ => Err(ApiError::not_found("route_not_found", format!("no E2B route {method} /{}", p.rest))),
    }
}

fn bad(code: &str, message: &str) -> ApiError {
    ApiError::bad_request(code, message)
}

fn not_found_e2b(e: SandboxError) -> ApiError {
    match e {
        SandboxError::NotFound => ApiError::not_found("sandbox_not_found", "sandbox not found"),
        other => other.into(),
    }
}

/// E2B's `NewSandbox` body: template, timeout, metadata, env vars.
fn parse_new_sandbox(body: &[u8], templates: &[String]) -> Result<CreateSandboxRequest, ApiError> {
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|_| bad("invalid_body", "malformed JSON"))?
    };
    if !v.is_object() {
        return Err(bad("invalid_body", "expected a JSON object"));
    }
    // `base` is the host's own userland; any other name is a platform template.
    let template = match v.get("templateID").and_then(Value::as_str) {
        None | Some(TEMPLATE) => None,
        Some(t) if templates.iter().any(|x| x == t) => Some(t.to_owned()),
        Some(t) => return Err(ApiError::not_found("template_not_found", format!("template {t} not found"))),
    };
    let strings = |key: &str| -> Result<BTreeMap<String, String>, ApiError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_owned()))
                        .ok_or_else(|| bad("invalid_body", "values must be strings"))
                })
                .collect(),
            Some(_) => Err(bad("invalid_body", &format!("{key} must be an object"))),
        }
    };
    Ok(CreateSandboxRequest {
        timeout_seconds: v.get("timeout").and_then(Value::as_u64),
        env_vars: strings("envVars")?,
        metadata: strings("metadata")?,
        template,
        ..Default::default()
    })
}

fn sandbox_json(r: &SandboxRecord) -> Value {
    json!({
        "templateID": r.template.as_deref().unwrap_or(TEMPLATE),
        "sandboxID": r.id,
        "clientID": "vibebase",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": r.envd_access_token,
        "domain": Value::Null,
    })
}

fn listed_json(r: &SandboxRecord) -> Value {
    json!({
        "templateID": r.template.as_deref().unwrap_or(TEMPLATE),
        "sandboxID": r.id,
        "clientID": "vibebase",
        "startedAt": r.started_at,
        "endAt": r.expires_at,
        "cpuCount": r.cpu_percent.div_ceil(100),
        "memoryMB": r.memory_mb,
        "diskSizeMB": r.disk_mb,
        "envdVersion": ENVD_VERSION,
        "metadata": r.metadata,
        "state": match r.state { SandboxState::Running => "running", SandboxState::Paused => "paused" },
    })
}

// ------------------------------------------------------------------------------------------------
// envd

/// The agent of the sandbox an envd call names, after checking that the caller may use it.
fn envd_agent(state: &AppState, caller: &Caller, headers: &HeaderMap) -> Result<AgentClient, ConnectError> {
    let env = env_of(caller).map_err(|_| ConnectError::new("not_found", "environment not found"))?;
    let id = headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ConnectError::new("invalid_argument", "the E2b-Sandbox-Id header is required"))?;
    // An envd access token opens its own sandbox only.
    if let Principal::Minted { holder: Some(h), .. } = &caller.principal
        && h.starts_with("envd:")
        && *h != sandbox::manager::envd_holder(id)
    {
        return Err(ConnectError::new("permission_denied", "this access token belongs to another sandbox"));
    }
    let sbx = state.sandboxes.as_ref().map_err(|why| ConnectError::new("unavailable", why))?;
    sbx.agent(env, id).map_err(ConnectError::from)
}

/// A Connect error: a code name and a message.
#[derive(Debug)]
pub struct ConnectError {
    code: &'static str,
    message: String,
}

impl ConnectError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    fn status(&self) -> StatusCode {
        match self.code {
            "invalid_argument" | "failed_precondition" | "out_of_range" => StatusCode::BAD_REQUEST,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "permission_denied" => StatusCode::FORBIDDEN,
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::BAD_GATEWAY,
            "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }

    /// As a unary response.
    fn unary(&self) -> Response {
        json_response(self.status(), self.body())
    }
}

impl From<SandboxError> for ConnectError {
    fn from(e: SandboxError) -> Self {
        match e {
            // As E2B's proxy says it, so the SDK reports the sandbox as no longer running.
            SandboxError::NotFound => Self::new("unavailable", "The sandbox was not found"),
            SandboxError::Paused => Self::new("failed_precondition", "the sandbox is paused"),
            SandboxError::Agent(a) => {
                let code = match a.code.as_str() {
                    "not_found" | "no_such_process" => "not_found",
                    "permission_denied" => "permission_denied",
                    "exists" => "already_exists",
                    "no_space" => "resource_exhausted",
                    "io" => "internal",
                    _ => "invalid_argument",
                };
                Self::new(code, a.message)
            }
            SandboxError::AgentLost(m) => Self::new("unavailable", m),
            other => Self::new("internal", other.to_string()),
        }
    }
}

/// The Connect error code for a gate refusal on an envd RPC path (see `surface.rs`).
pub fn connect_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 => "invalid_argument",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        402 | 429 => "resource_exhausted",
        501 => "unimplemented",
        503 => "unavailable",
        _ => "internal",
    }
}

/// One Connect envelope: flags, big-endian length, JSON.
fn envelope(flags: u8, body: &Value) -> Bytes {
    let json = body.to_string();
    let mut out = Vec::with_capacity(5 + json.len());
    out.push(flags);
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(json.as_bytes());
    Bytes::from(out)
}

/// The request message of a unary (plain JSON) or streaming (enveloped) call.
fn request_message(headers: &HeaderMap, body: &[u8]) -> Result<Value, ConnectError> {
    let streaming = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/connect+"));
    let raw = if streaming {
        if body.len() < 5 {
            return Err(ConnectError::new("invalid_argument", "missing message envelope"));
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body.get(5..5 + len).ok_or_else(|| ConnectError::new("invalid_argument", "truncated message envelope"))?
    } else {
        body
    };
    if raw.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(raw).map_err(|e| ConnectError::new("invalid_argument", format!("malformed JSON: {e}")))
}

/// A server-streaming response: message envelopes from `rx`, then the end-of-stream envelope.
fn stream_response(mut rx: tokio::sync::mpsc::Receiver<Result<Value, ConnectError>>) -> Response {
    let stream = async_stream(move |tx| async move {
        while let Some(item) = rx.recv().await {
            match item {
                Ok(msg) => {
                    if tx.send(envelope(0, &msg)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(envelope(2, &json!({"error": e.body()}))).await;
                    return;
                }
            }
        }
        let _ = tx.send(envelope(2, &json!({}))).await;
    });
    let mut r = Response::new(stream);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/connect+json"));
    r
}

/// A body fed by a producer task.
fn async_stream<F, Fut>(produce: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(produce(tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Body::from_stream(stream)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(v: &Value) -> Result<Vec<u8>, ConnectError> {
    let s = v.as_str().unwrap_or("");
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| ConnectError::new("invalid_argument", "bytes must be base64"))
}

fn pid_of(selector: &Value) -> Result<u32, ConnectError> {
    selector["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| ConnectError::new("invalid_argument", "select the process by pid"))
}

/// `ANY /env/{env}/e2b/envd/{*rest}`.
pub async fn envd(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<EnvRest>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let rest = p.rest.trim_start_matches('/').to_owned();
    let agent = match envd_agent(&state, &caller, &parts.headers) {
        Ok(a) => a,
        Err(e) => {
            return if rest.contains('/') { e.unary() } else { file_error(e) };
        }
    };
    if rest == "health" {
        return StatusCode::NO_CONTENT.into_response();
    }
    if rest == "files" {
        return files(&agent, &parts, body).await;
    }
    let body = match axum::body::to_bytes(body, crate::MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(_) => return ConnectError::new("resource_exhausted", "message too large").unary(),
    };
    let msg = match request_message(&parts.headers, &body) {
        Ok(m) => m,
        Err(e) => return e.unary(),
    };
    match rest.as_str() {
        "process.Process/Start" => return start(agent, msg).await,
        "process.Process/Connect" => return connect(agent, msg).await,
        "filesystem.Filesystem/WatchDir" => return watch_dir(agent, msg).await,
        _ => {}
    }
    let sandbox = parts.headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let watched = match rest.as_str() {
        "filesystem.Filesystem/CreateWatcher" => Some(create_watcher(&state, &sandbox, &agent, &msg).await),
        "filesystem.Filesystem/GetWatcherEvents" => Some(watcher_events(&state, &sandbox, &msg, false)),
        "filesystem.Filesystem/RemoveWatcher" => Some(watcher_events(&state, &sandbox, &msg, true)),
        _ => None,
    };
    if let Some(r) = watched {
        return match r {
            Ok(v) => json_response(StatusCode::OK, v),
            Err(e) => e.unary(),
        };
    }
    match unary(&agent, &rest, &msg, &body).await {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(e) => e.unary(),
    }
}

/// The unary RPC methods.
async fn unary(agent: &AgentClient, method: &str, msg: &Value, body: &[u8]) -> Result<Value, ConnectError> {
    match method {
        "process.Process/List" => list_processes(agent).await,
        "process.Process/SendInput" => send_input(agent, msg).await,
        "process.Process/StreamInput" => stream_input(agent, body).await,
        "process.Process/SendSignal" => send_signal(agent, msg).await,
        "process.Process/CloseStdin" => {
            async { agent.input(pid_of(&msg["process"])?, Vec::new(), true).await.map_err(ConnectError::from) }
                .await
                .map(|()| json!({}))
        }
        "process.Process/Update" => update(agent, msg).await,
        "filesystem.Filesystem/Stat" => entry_reply(agent.stat(path_of(&msg["path"])?).await),
        "filesystem.Filesystem/MakeDir" => entry_reply(agent.mkdir(path_of(&msg["path"])?).await),
        "filesystem.Filesystem/Move" => {
            let from = path_of(&msg["source"])?;
            let to = path_of(&msg["destination"])?;
            entry_reply(agent.rename(from, to).await)
        }
        "filesystem.Filesystem/Remove" => {
            let path = path_of(&msg["path"])?;
            agent.remove(path).await.map(|()| json!({})).map_err(ConnectError::from)
        }
        "filesystem.Filesystem/ListDir" => {
            let depth = msg["depth"].as_u64().and_then(|d| u32::try_from(d).ok()).unwrap_or(1).clamp(1, 32);
            match agent.list(path_of(&msg["path"])?, depth).await {
                Ok(entries) => Ok(json!({"entries": entries.iter().map(entry_json).collect::<Vec<_>>()})),
                Err(e) => Err(e.into()),
            }
        }
        other => Err(ConnectError::new("unimplemented", format!("{other} is not implemented"))),
    }
}

fn path_of(v: &Value) -> Result<&str, ConnectError> {
    v.as_str().filter(|s| !s.is_empty()).ok_or_else(|| ConnectError::new("invalid_argument", "path is required"))
}

fn entry_json(e: &EntryInfo) -> Value {
    let kind = match e.kind.as_str() {
        "dir" => "FILE_TYPE_DIRECTORY",
        "file" => "FILE_TYPE_FILE",
        "symlink" => "FILE_TYPE_SYMLINK",
        _ => "FILE_TYPE_UNSPECIFIED",
    };
    let modified = platform::runtime::rfc3339(e.modified.saturating_mul(1000));
    json!({
        "name": e.name,
        "type": kind,
        "path": e.path,
        "size": e.size.to_string(),
        "mode": e.mode,
        "permissions": permissions(e.mode, &e.kind),
        "owner": "user",
        "group": "user",
        "modifiedTime": modified,
        "symlinkTarget": e.symlink_target,
        "isSymlink": e.kind == "symlink",
    })
}

fn permissions(mode: u32, kind: &str) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        "dir" => 'd',
        "symlink" => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn entry_reply(r: Result<EntryInfo, SandboxError>) -> Result<Value, ConnectError> {
    r.map(|e| json!({"entry": entry_json(&e)})).map_err(ConnectError::from)
}

async fn start(agent: AgentClient, msg: Value) -> Response {
    let process = &msg["process"];
    let Some(cmd) = process["cmd"].as_str().filter(|c| !c.is_empty()) else {
        return ConnectError::new("invalid_argument", "process.cmd is required").unary();
    };
    let mut argv = vec![cmd.to_owned()];
    argv.extend(process["args"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_owned)));
    let env: BTreeMap<String, String> = process["envs"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect();
    let pty = msg["pty"]["size"].as_object().map(|s| PtySize {
        cols: s.get("cols").and_then(Value::as_u64).and_then(|v| u16::try_from(v).ok()).unwrap_or(80),
        rows: s.get("rows").and_then(Value::as_u64).and_then(|v| u16::try_from(v).ok()).unwrap_or(24),
    });
    let spec = ExecSpec {
        argv,
        env,
        cwd: process["cwd"].as_str().filter(|c| !c.is_empty()).map(str::to_owned),
        stdin: msg["stdin"].as_bool().unwrap_or(false),
        timeout_ms: None,
        pty,
        tag: msg["tag"].as_str().map(str::to_owned),
    };
    match agent.exec(spec).await {
        Ok(stream) => process_stream(stream, pty.is_some()),
        Err(e) => ConnectError::from(e).unary(),
    }
}

async fn connect(agent: AgentClient, msg: Value) -> Response {
    let pid = match pid_of(&msg["process"]) {
        Ok(p) => p,
        Err(e) => return e.unary(),
    };
    match agent.connect(pid).await {
        Ok(stream) => {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            tokio::spawn(async move {
                let _ = tx.send(Ok(json!({"event": {"start": {"pid": pid}}}))).await;
                forward_events(stream, tx, false).await;
            });
            stream_response(rx)
        }
        Err(e) => ConnectError::from(e).unary(),
    }
}

/// Streams a process's events as envd `ProcessEvent`s, with keep-alives while it is quiet.
fn process_stream(stream: sandbox::client::ExecStream, pty: bool) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(forward_events(stream, tx, pty));
    stream_response(rx)
}

async fn forward_events(
    mut stream: sandbox::client::ExecStream,
    tx: tokio::sync::mpsc::Sender<Result<Value, ConnectError>>,
    pty: bool,
) {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.next()).await;
        let event = match next {
            Err(_) => {
                if tx.send(Ok(json!({"event": {"keepalive": {}}}))).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Ok(Some(e))) => e,
            Ok(Ok(None)) => {
                let _ = tx.send(Err(ConnectError::new("unavailable", "the sandbox ended the stream"))).await;
                return;
            }
            Ok(Err(e)) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let (msg, last) = match event {
            ExecEvent::Started { pid } => (json!({"event": {"start": {"pid": pid}}}), false),
            ExecEvent::Stdout { data } => {
                let key = if pty { "pty" } else { "stdout" };
                (json!({"event": {"data": {key: b64(&data.0)}}}), false)
            }
            ExecEvent::Stderr { data } => (json!({"event": {"data": {"stderr": b64(&data.0)}}}), false),
            ExecEvent::Exited { exit_code, signal, error, .. } => {
                if error.is_some() && exit_code == 127 && signal.is_none() {
                    // The program could not be started at all.
                    let _ = tx.send(Err(ConnectError::new("invalid_argument", error.unwrap_or_default()))).await;
                    return;
                }
                let status = match signal {
                    Some(s) => format!("signal: {}", signal_name(s)),
                    None => format!("exit status {exit_code}"),
                };
                let mut end = json!({"exitCode": exit_code, "exited": signal.is_none(), "status": status});
                if let Some(e) = error {
                    end["error"] = json!(e);
                }
                (json!({"event": {"end": end}}), true)
            }
        };
        if tx.send(Ok(msg)).await.is_err() || last {
            return;
        }
    }
}

/// Polling watchers (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`, what the sync SDK uses):
/// each collects its sandbox's changes in the background until removed or its sandbox ends.
#[derive(Default)]
pub struct Watchers {
    by_id: std::sync::Mutex<std::collections::HashMap<String, Watcher>>,
}

struct Watcher {
    sandbox: String,
    events: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Events a watcher keeps between polls; older ones are dropped.
const MAX_WATCHER_EVENTS: usize = 10_000;

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Watcher>> {
        self.by_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn create_watcher(
    state: &AppState,
    sandbox: &str,
    agent: &AgentClient,
    msg: &Value,
) -> Result<Value, ConnectError> {
    let path = path_of(&msg["path"])?.to_owned();
    let mut stream = agent.watch(&path, msg["recursive"].as_bool().unwrap_or(false)).await?;
    let root = sandbox::agent::resolve(&path).map(|p| p.to_string_lossy().into_owned()).unwrap_or(path);
    let events: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = std::sync::Arc::default();
    let sink = events.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(e)) = stream.next().await {
            let mut ev = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if ev.len() >= MAX_WATCHER_EVENTS {
                ev.remove(0);
            }
            ev.push(fs_event(&root, &e));
        }
    });
    let id = state.platform.random_id(16);
    state.watchers.lock().insert(id.clone(), Watcher { sandbox: sandbox.to_owned(), events, task });
    Ok(json!({"watcherId": id}))
}

fn watcher_events(state: &AppState, sandbox: &str, msg: &Value, remove: bool) -> Result<Value, ConnectError> {
    let id = msg["watcherId"].as_str().unwrap_or("");
    let mut all = state.watchers.lock();
    let owned = all.get(id).is_some_and(|w| w.sandbox == sandbox);
    if !owned {
        return Err(ConnectError::new("not_found", "no such watcher"));
    }
    if remove {
        if let Some(w) = all.remove(id) {
            w.task.abort();
        }
        return Ok(json!({}));
    }
    let events = all
        .get(id)
        .map(|w| std::mem::take(&mut *w.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner)))
        .unwrap_or_default();
    Ok(json!({"events": events}))
}

fn fs_event(root: &str, e: &sandbox::proto::WatchEvent) -> Value {
    let name = e.path.strip_prefix(root).unwrap_or(&e.path).trim_start_matches('/').to_owned();
    let kind = match e.kind.as_str() {
        "create" => "EVENT_TYPE_CREATE",
        "write" => "EVENT_TYPE_WRITE",
        "remove" => "EVENT_TYPE_REMOVE",
        "chmod" => "EVENT_TYPE_CHMOD",
        _ => "EVENT_TYPE_UNSPECIFIED",
    };
    json!({"name": name, "type": kind})
}

/// `WatchDir`: a start event, then one event per change (paths relative to the watched directory).
async fn watch_dir(agent: AgentClient, msg: Value) -> Response {
    let path = match path_of(&msg["path"]) {
        Ok(p) => p.to_owned(),
        Err(e) => return e.unary(),
    };
    let recursive = msg["recursive"].as_bool().unwrap_or(false);
    let mut stream = match agent.watch(&path, recursive).await {
        Ok(s) => s,
        Err(e) => return ConnectError::from(e).unary(),
    };
    let root = sandbox::agent::resolve(&path).map(|p| p.to_string_lossy().into_owned()).unwrap_or(path);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        if tx.send(Ok(json!({"start": {}}))).await.is_err() {
            return;
        }
        loop {
            let event = match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
                Err(_) => json!({"keepalive": {}}),
                Ok(Ok(Some(e))) => json!({"filesystem": fs_event(&root, &e)}),
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    stream_response(rx)
}

fn signal_name(s: i32) -> &'static str {
    match s {
        9 => "killed",
        15 => "terminated",
        2 => "interrupt",
        6 => "aborted",
        11 => "segmentation fault",
        1 => "hangup",
        13 => "broken pipe",
        _ => "signal",
    }
}

async fn list_processes(agent: &AgentClient) -> Result<Value, ConnectError> {
    let procs = agent.processes().await?;
    let processes: Vec<Value> = procs
        .iter()
        .map(|p| {
            let mut config = json!({"cmd": p.argv.first().cloned().unwrap_or_default(), "args": p.argv.get(1..).unwrap_or(&[]), "envs": {}});
            if let Some(c) = &p.cwd {
                config["cwd"] = json!(c);
            }
            let mut v = json!({"config": config, "pid": p.pid});
            if let Some(t) = &p.tag {
                v["tag"] = json!(t);
            }
            v
        })
        .collect();
    Ok(json!({"processes": processes}))
}

async fn send_input(agent: &AgentClient, msg: &Value) -> Result<Value, ConnectError> {
    let pid = pid_of(&msg["process"])?;
    let input = &msg["input"];
    let data = if !input["stdin"].is_null() { unb64(&input["stdin"])? } else { unb64(&input["pty"])? };
    agent.input(pid, data, false).await?;
    Ok(json!({}))
}

/// Client streaming: every envelope of the body in order (start names the process, data carries input).
async fn stream_input(agent: &AgentClient, body: &[u8]) -> Result<Value, ConnectError> {
    let mut pid = None;
    let mut at = 0;
    while at + 5 <= body.len() {
        let len = u32::from_be_bytes([body[at + 1], body[at + 2], body[at + 3], body[at + 4]]) as usize;
        let Some(raw) = body.get(at + 5..at + 5 + len) else {
            return Err(ConnectError::new("invalid_argument", "truncated message envelope"));
        };
        at += 5 + len;
        let msg: Value =
            serde_json::from_slice(raw).map_err(|_| ConnectError::new("invalid_argument", "malformed JSON"))?;
        if let Some(start) = msg.get("start") {
            pid = Some(pid_of(&start["process"])?);
        } else if let Some(data) = msg.get("data") {
            let pid = pid.ok_or_else(|| ConnectError::new("invalid_argument", "start must come first"))?;
            let input = &data["input"];
            let bytes = if !input["stdin"].is_null() { unb64(&input["stdin"])? } else { unb64(&input["pty"])? };
            agent.input(pid, bytes, false).await?;
        }
    }
    Ok(json!({}))
}

async fn send_signal(agent: &AgentClient, msg: &Value) -> Result<Value, ConnectError> {
    let pid = pid_of(&msg["process"])?;
    let signal = match &msg["signal"] {
        Value::String(s) if s == "SIGNAL_SIGKILL" => libc_signal::KILL,
        Value::String(s) if s == "SIGNAL_SIGTERM" => libc_signal::TERM,
        Value::Number(n) if n.as_i64() == Some(9) => libc_signal::KILL,
        Value::Number(n) if n.as_i64() == Some(15) => libc_signal::TERM,
        _ => return Err(ConnectError::new("invalid_argument", "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM")),
    };
    agent.signal(pid, signal).await?;
    Ok(json!({}))
}

mod libc_signal {
    pub const KILL: i32 = 9;
    pub const TERM: i32 = 15;
}

async fn update(agent: &AgentClient, msg: &Value) -> Result<Value, ConnectError> {
    let pid = pid_of(&msg["process"])?;
    if let Some(size) = msg["pty"]["size"].as_object() {
        let dim = |k: &str| size.get(k).and_then(Value::as_u64).and_then(|v| u16::try_from(v).ok()).unwrap_or(0);
        agent.resize(pid, dim("cols"), dim("rows")).await?;
    }
    Ok(json!({}))
}

// ------------------------------------------------------------------------------------------------
// envd /files

fn file_error(e: ConnectError) -> Response {
    json_response(e.status(), json!({"code": e.status().as_u16(), "message": e.message}))
}

fn query_param(parts: &http::request::Parts, name: &str) -> Option<String> {
    let q = parts.uri.query()?;
    url_decode_pairs(q).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

pub(crate) fn url_decode_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn files(agent: &AgentClient, parts: &http::request::Parts, body: Body) -> Response {
    let path = query_param(parts, "path");
    match parts.method {
        Method::GET => {
            let Some(path) = path else {
                return file_error(ConnectError::new("invalid_argument", "path is required"));
            };
            match agent.read_file(&path, MAX_UPLOAD).await {
                Ok(data) => ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response(),
                Err(e) => file_error(e.into()),
            }
        }
        Method::POST => {
            let bytes = match axum::body::to_bytes(body, MAX_UPLOAD).await {
                Ok(b) => b,
                Err(_) => return file_error(ConnectError::new("invalid_argument", "upload too large")),
            };
            let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let uploads: Vec<(String, Vec<u8>)> = if content_type.starts_with("multipart/form-data") {
                match multipart_files(content_type, &bytes) {
                    Ok(files) => files.into_iter().map(|(name, data)| (path.clone().unwrap_or(name), data)).collect(),
                    Err(e) => return file_error(e),
                }
            } else {
                match path {
                    Some(p) => vec![(p, bytes.to_vec())],
                    None => return file_error(ConnectError::new("invalid_argument", "path is required")),
                }
            };
            let mut written = Vec::new();
            for (p, data) in uploads {
                match agent.write_file(&p, &data, None).await {
                    Ok(e) => written.push(json!({"name": e.name, "type": "file", "path": e.path})),
                    Err(e) => {
                        let e = ConnectError::from(e);
                        let status =
                            if e.code == "resource_exhausted" { StatusCode::INSUFFICIENT_STORAGE } else { e.status() };
                        return json_response(status, json!({"code": status.as_u16(), "message": e.message}));
                    }
                }
            }
            json_response(StatusCode::OK, Value::Array(written))
        }
        _ => file_error(ConnectError::new("invalid_argument", "method not allowed")),
    }
}

/// The file parts of a `multipart/form-data` body: (filename, bytes).
fn multipart_files(content_type: &str, body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ConnectError> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"'))
        .ok_or_else(|| ConnectError::new("invalid_argument", "multipart body without a boundary"))?;
    let delimiter = format!("--{boundary}");
    let mut files = Vec::new();
    let mut rest = body;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let Some(first) = find(rest, delimiter.as_bytes()) else {
        return Err(ConnectError::new("invalid_argument", "malformed multipart body"));
    };
    rest = &rest[first + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        rest = rest.strip_prefix(b"\r\n").unwrap_or(rest);
        let head_end =
            find(rest, b"\r\n\r\n").ok_or_else(|| ConnectError::new("invalid_argument", "malformed multipart part"))?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let content = &rest[head_end + 4..];
        let next = find(content, format!("\r\n{delimiter}").as_bytes())
            .ok_or_else(|| ConnectError::new("invalid_argument", "unterminated multipart part"))?;
        let data = content[..next].to_vec();
        let filename = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition")).and_then(|l| {
            l.split(';').find_map(|p| p.trim().strip_prefix("filename=").map(|f| f.trim_matches('"').to_owned()))
        });
        if let Some(name) = filename {
            files.push((name, data));
        }
        rest = &content[next + 2 + delimiter.len()..];
    }
    if files.is_empty() {
        return Err(ConnectError::new("invalid_argument", "no file in the multipart body"));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::{multipart_files, percent_decode, permissions};

    #[test]
    fn multipart_bodies_yield_their_files() {
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/a.txt\"\r\nContent-Type: application/octet-stream\r\n\r\nhello\r\nworld\r\n--xyz--\r\n";
        let files = multipart_files("multipart/form-data; boundary=xyz", body).unwrap_or_default();
        assert_eq!(files, vec![("/home/user/a.txt".to_owned(), b"hello\r\nworld".to_vec())]);
        assert!(multipart_files("multipart/form-data", body).is_err());
        assert!(multipart_files("multipart/form-data; boundary=xyz", b"--xyz\r\nbroken").is_err());
    }

    #[test]
    fn percent_decoding_and_permissions() {
        assert_eq!(percent_decode("%2Fhome%2Fuser%2Fa+b.txt"), "/home/user/a b.txt");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(permissions(0o755, "dir"), "drwxr-xr-x");
    }
}
