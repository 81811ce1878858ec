//! `/v1/envs/{env}/sandboxes` handlers: lifecycle, exec and files of an env's sandboxes. Each runs after
//! the gate; a sandbox of another env answers exactly as a missing one.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use protocol::EnvId;
use protocol::sandbox::{
    CreateSandboxRequest, ExecRequest, ExecResult, FileEntry, FileList, MakeDirRequest, MoveRequest, RestoreRequest,
    SandboxList, SandboxRecord, SetTimeoutRequest, SnapshotList, SnapshotRecord,
};
use sandbox::client::OutputLimit;
use sandbox::proto::{EntryInfo, ExecSpec};
use sandbox::{SandboxError, Sandboxes};
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};
use crate::gate::Caller;
use crate::handlers::env_of;

/// Largest file the files API moves in one request.
pub const MAX_FILE_BYTES: usize = 100 * 1024 * 1024;
/// Output an exec keeps per stream; the rest is cut and `truncated` is set.
pub const MAX_EXEC_OUTPUT: usize = 4 * 1024 * 1024;
const DEFAULT_EXEC_TIMEOUT_MS: u64 = 60_000;

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        match e {
            SandboxError::NotFound => ApiError::not_found("sandbox_not_found", "sandbox not found"),
            SandboxError::WorkspaceBusy(_) => ApiError::new(S::CONFLICT, "workspace_busy", message),
            SandboxError::Invalid { code, .. } if code.ends_with("_not_found") => ApiError::not_found(code, message),
            SandboxError::Invalid { code, .. } => ApiError::bad_request(code, message),
            SandboxError::Unavailable(_) => ApiError::new(S::SERVICE_UNAVAILABLE, "sandboxes_unavailable", message),
            SandboxError::Start(_) => {
                tracing::error!(error = %message, "sandbox start failed");
                ApiError::new(S::INTERNAL_SERVER_ERROR, "sandbox_start_failed", "the sandbox could not be started")
            }
            SandboxError::Agent(a) => {
                let status = match a.code.as_str() {
                    "not_found" | "no_such_process" => S::NOT_FOUND,
                    "permission_denied" => S::FORBIDDEN,
                    "exists" | "not_empty" => S::CONFLICT,
                    "no_space" => S::INSUFFICIENT_STORAGE,
                    "too_large" => S::PAYLOAD_TOO_LARGE,
                    "io" => S::INTERNAL_SERVER_ERROR,
                    _ => S::BAD_REQUEST,
                };
                let code = match a.code.as_str() {
                    "not_found" => "file_not_found".to_owned(),
                    other => other.to_owned(),
                };
                ApiError::new(status, code, a.message)
            }
            SandboxError::AgentLost(_) => {
                ApiError::new(S::BAD_GATEWAY, "sandbox_unreachable", "the sandbox stopped answering")
            }
            SandboxError::Paused => ApiError::new(S::CONFLICT, "sandbox_paused", message),
            SandboxError::TooMany(_) => ApiError::new(S::SERVICE_UNAVAILABLE, "too_many_sandboxes", message),
            SandboxError::Platform(p) => p.into(),
        }
    }
}

/// The sandbox registry, or 503 `sandboxes_unavailable` with the reason there is none.
pub(crate) fn sandboxes(state: &AppState) -> ApiResult<&Sandboxes> {
    state.sandboxes.as_ref().map_err(|why| ApiError::from(SandboxError::Unavailable(why.clone())))
}

pub(crate) async fn audit(state: &AppState, caller: &Caller, action: &str, env: &EnvId, target: &str) {
    if let Err(e) = state.platform.audit_ok(&caller.actor, action, env.as_str(), target).await {
        tracing::error!(error = %e, "could not write an audit row");
    }
}

#[derive(Deserialize)]
pub struct SandboxPath {
    sandbox: String,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateSandboxRequest>,
) -> ApiResult<(StatusCode, Json<SandboxRecord>)> {
    let env = env_of(&caller)?;
    let record = sandboxes(&state)?.create(&caller.actor, env, req).await?;
    audit(&state, &caller, "sandboxes:Create", env, &record.id).await;
    Ok((StatusCode::CREATED, Json(record)))
}

pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<SandboxList>> {
    Ok(Json(SandboxList { items: sandboxes(&state)?.list(env_of(&caller)?) }))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
) -> ApiResult<Json<SandboxRecord>> {
    Ok(Json(sandboxes(&state)?.get(env_of(&caller)?, &p.sandbox)?))
}

pub async fn kill(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
) -> ApiResult<StatusCode> {
    let env = env_of(&caller)?;
    sandboxes(&state)?.kill(env, &p.sandbox).await?;
    audit(&state, &caller, "sandboxes:Kill", env, &p.sandbox).await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
) -> ApiResult<Json<SandboxRecord>> {
    let env = env_of(&caller)?;
    let r = sandboxes(&state)?.pause(env, &p.sandbox).await?;
    audit(&state, &caller, "sandboxes:Pause", env, &p.sandbox).await;
    Ok(Json(r))
}

pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
) -> ApiResult<Json<SandboxRecord>> {
    let env = env_of(&caller)?;
    let r = sandboxes(&state)?.resume(env, &p.sandbox).await?;
    audit(&state, &caller, "sandboxes:Resume", env, &p.sandbox).await;
    Ok(Json(r))
}

pub async fn set_timeout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    Body(req): Body<SetTimeoutRequest>,
) -> ApiResult<Json<SandboxRecord>> {
    let env = env_of(&caller)?;
    let r = sandboxes(&state)?.set_timeout(env, &p.sandbox, Duration::from_secs(req.timeout_seconds))?;
    audit(&state, &caller, "sandboxes:SetTimeout", env, &p.sandbox).await;
    Ok(Json(r))
}

pub async fn snapshot(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
) -> ApiResult<(StatusCode, Json<SnapshotRecord>)> {
    let env = env_of(&caller)?;
    let snap = sandboxes(&state)?.snapshot(env, &p.sandbox, &[]).await?;
    audit(&state, &caller, "sandboxes:Snapshot", env, &snap.id).await;
    Ok((StatusCode::CREATED, Json(snap)))
}

pub async fn restore(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    Body(req): Body<RestoreRequest>,
) -> ApiResult<Json<SandboxRecord>> {
    let env = env_of(&caller)?;
    let sbx = sandboxes(&state)?;
    sbx.restore(env, &p.sandbox, &req.snapshot).await?;
    audit(&state, &caller, "sandboxes:Restore", env, &p.sandbox).await;
    Ok(Json(sbx.get(env, &p.sandbox)?))
}

#[derive(Deserialize)]
pub struct TemplatePath {
    template: String,
}

/// Largest template archive accepted.
pub const MAX_TEMPLATE_BYTES: usize = 1024 * 1024 * 1024;

pub async fn put_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<TemplatePath>,
    body: Bytes,
) -> ApiResult<Json<protocol::sandbox::TemplateList>> {
    let sbx = sandboxes(&state)?;
    sbx.put_template(&p.template, body.to_vec()).await?;
    if let Err(e) = state.platform.audit_ok(&caller.actor, "templates:Put", "", &p.template).await {
        tracing::error!(error = %e, "could not write an audit row");
    }
    Ok(Json(protocol::sandbox::TemplateList { items: sbx.templates() }))
}

pub async fn list_templates(State(state): State<AppState>) -> ApiResult<Json<protocol::sandbox::TemplateList>> {
    Ok(Json(protocol::sandbox::TemplateList { items: sandboxes(&state)?.templates() }))
}

pub async fn delete_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<TemplatePath>,
) -> ApiResult<StatusCode> {
    sandboxes(&state)?.delete_template(&p.template).await?;
    if let Err(e) = state.platform.audit_ok(&caller.actor, "templates:Delete", "", &p.template).await {
        tracing::error!(error = %e, "could not write an audit row");
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn snapshots(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<SnapshotList>> {
    Ok(Json(SnapshotList { items: sandboxes(&state)?.snapshots(env_of(&caller)?).await? }))
}

/// Runs a command to completion (or starts it in the background) and returns its output.
pub async fn exec(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    Body(req): Body<ExecRequest>,
) -> ApiResult<Json<ExecResult>> {
    let env = env_of(&caller)?;
    let argv = match (req.argv.is_empty(), &req.command) {
        (false, None) => req.argv,
        (true, Some(c)) => vec!["/bin/sh".to_owned(), "-c".to_owned(), c.clone()],
        _ => return Err(ApiError::bad_request("invalid_exec", "give exactly one of argv and command")),
    };
    if argv.iter().any(|a| a.contains('\0'))
        || req.env.iter().any(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
    {
        return Err(ApiError::bad_request(
            "invalid_exec",
            "arguments and environment may not contain NUL (or '=' in names)",
        ));
    }
    let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS);
    if !(1..=86_400_000).contains(&timeout_ms) {
        return Err(ApiError::bad_request("invalid_exec", "timeout_ms must be 1..=86400000"));
    }
    let agent = sandboxes(&state)?.agent(env, &p.sandbox)?;
    let spec = ExecSpec {
        argv,
        env: req.env,
        cwd: req.cwd,
        stdin: req.stdin.is_some(),
        timeout_ms: Some(timeout_ms),
        pty: None,
        tag: None,
    };
    if req.background {
        let mut stream = agent.exec(spec).await?;
        if let Some(data) = req.stdin {
            stream.send(&sandbox::proto::ExecInput::Stdin { data: sandbox::proto::Bytes(data.into_bytes()) }).await?;
            stream.send(&sandbox::proto::ExecInput::CloseStdin).await?;
        }
        return match stream.next().await? {
            Some(sandbox::proto::ExecEvent::Started { pid }) => Ok(Json(ExecResult {
                pid,
                exit_code: None,
                signal: None,
                timed_out: false,
                stdout: String::new(),
                stderr: String::new(),
                truncated: false,
                error: None,
            })),
            Some(sandbox::proto::ExecEvent::Exited { error, .. }) => Err(ApiError::bad_request(
                "spawn_failed",
                error.unwrap_or_else(|| "the command did not start".to_owned()),
            )),
            _ => Err(SandboxError::AgentLost("no start event".to_owned()).into()),
        };
    }
    let done = agent.run(spec, req.stdin.map(String::into_bytes), OutputLimit(MAX_EXEC_OUTPUT)).await?;
    if let Some(error) = &done.error
        && done.pid == 0
    {
        return Err(ApiError::bad_request("spawn_failed", error.clone()));
    }
    Ok(Json(ExecResult {
        pid: done.pid,
        exit_code: Some(done.exit_code),
        signal: done.signal,
        timed_out: done.timed_out,
        stdout: String::from_utf8_lossy(&done.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
        truncated: done.truncated,
        error: done.error,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    path: String,
    depth: Option<u32>,
}

fn entry(e: EntryInfo) -> FileEntry {
    FileEntry {
        name: e.name,
        path: e.path,
        kind: e.kind,
        size: e.size,
        mode: e.mode,
        modified: platform::runtime::rfc3339(e.modified.saturating_mul(1000)),
        symlink_target: e.symlink_target,
    }
}

pub async fn read_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Response> {
    let agent = sandboxes(&state)?.agent(env_of(&caller)?, &p.sandbox)?;
    let data = agent.read_file(&q.path, MAX_FILE_BYTES).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

pub async fn write_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    Query(q): Query<PathQuery>,
    body: Bytes,
) -> ApiResult<Json<FileEntry>> {
    let agent = sandboxes(&state)?.agent(env_of(&caller)?, &p.sandbox)?;
    Ok(Json(entry(agent.write_file(&q.path, &body, None).await?)))
}

pub async fn remove_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    Query(q): Query<PathQuery>,
) -> ApiResult<StatusCode> {
    let agent = sandboxes(&state)?.agent(env_of(&caller)?, &p.sandbox)?;
    agent.remove(&q.path).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_files(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Json<FileList>> {
    let depth = q.depth.unwrap_or(1);
    if !(1..=32).contains(&depth) {
        return Err(ApiError::bad_request("invalid_query", "depth must be 1..=32"));
    }
    let agent = sandboxes(&state)?.agent(env_of(&caller)?, &p.sandbox)?;
    Ok(Json(FileList { items: agent.list(&q.path, depth).await?.into_iter().map(entry).collect() }))
}

pub async fn stat_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Json<FileEntry>> {
    let agent = sandboxes(&state)?.agent(env_of(&caller)?, &p.sandbox)?;
    Ok(Json(entry(agent.stat(&q.path).await?)))
}

pub async fn make_dir(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    Body(req): Body<MakeDirRequest>,
) -> ApiResult<Json<FileEntry>> {
    let agent = sandboxes(&state)?.agent(env_of(&caller)?, &p.sandbox)?;
    Ok(Json(entry(agent.mkdir(&req.path).await?)))
}

pub async fn move_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<SandboxPath>,
    Body(req): Body<MoveRequest>,
) -> ApiResult<Json<FileEntry>> {
    let agent = sandboxes(&state)?.agent(env_of(&caller)?, &p.sandbox)?;
    Ok(Json(entry(agent.rename(&req.from, &req.to).await?)))
}
