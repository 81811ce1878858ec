//! The tool registry served as an MCP server: JSON-RPC parsing and dispatch, and the MCP sessions, with
//! no HTTP (the streamable HTTP transport is `server::mcp`). Outside agents (Claude Code, Cursor, Codex)
//! call the same tools a session's run calls, the same way ([`crate::hands`]): each MCP session gets its
//! own sandboxes of the env (named hands, as in a session), each started on the first tool call that
//! needs it, metered under the MCP session id, and killed when the session ends or idles out.
//!
//! MCP sessions live in this instance's memory, bounded per env and per instance: a client whose session
//! this instance does not know (another instance, a restart, an idle-out) gets "session not found" and
//! initializes again, as the transport specifies.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use platform::Actor;
use protocol::EnvId;
use serde_json::{Map, Value, json};

use crate::hands::{Binding, SandboxHolder};
use crate::tools;
use crate::{Agent, AgentError};

/// The protocol versions this server speaks, newest first.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-06-18", "2025-03-26"];
/// Live MCP sessions of one env on one instance.
pub const MAX_SESSIONS_PER_ENV: usize = 100;
/// Live MCP sessions on one instance.
pub const MAX_SESSIONS: usize = 10_000;

/// A JSON-RPC error: its kind gives the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The JSON-RPC error codes this server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not JSON (-32700).
    Parse,
    /// The body is JSON but not a JSON-RPC message this server takes (-32600).
    InvalidRequest,
    /// No such method (-32601).
    MethodNotFound,
    /// The method's params are wrong (-32602).
    InvalidParams,
    /// The server failed (-32603).
    Internal,
}

impl ErrorKind {
    pub fn code(self) -> i64 {
        match self {
            Self::Parse => -32700,
            Self::InvalidRequest => -32600,
            Self::MethodNotFound => -32601,
            Self::InvalidParams => -32602,
            Self::Internal => -32603,
        }
    }

    /// The stable code string of the error (what the HTTP edge carries).
    pub fn name(self) -> &'static str {
        match self {
            Self::Parse => "parse_error",
            Self::InvalidRequest => "invalid_request",
            Self::MethodNotFound => "method_not_found",
            Self::InvalidParams => "invalid_params",
            Self::Internal => "internal",
        }
    }
}

/// The JSON-RPC code of an error raised with this code string at the HTTP edge; errors that are not
/// JSON-RPC's own (authentication, limits, unknown sessions) use MCP's server-defined -32001.
pub fn rpc_code(name: &str) -> i64 {
    [ErrorKind::Parse, ErrorKind::InvalidRequest, ErrorKind::MethodNotFound, ErrorKind::InvalidParams]
        .into_iter()
        .find(|k| k.name() == name)
        .map_or(-32001, ErrorKind::code)
}

impl RpcError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// The error as the response to the request `id`.
    pub fn response(&self, id: &Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": self.kind.code(), "message": self.message}})
    }
}

/// One message a client posted.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A request: it gets a response. `id` is a string or an integer.
    Request { id: Value, method: String, params: Option<Value> },
    /// A notification: no response.
    Notification { method: String },
    /// A response to a server request (this server sends none): accepted and dropped.
    Response,
}

impl Incoming {
    pub fn is_initialize(&self) -> bool {
        matches!(self, Self::Request { method, .. } if method == "initialize")
    }
}

/// Parses one posted body. Batches are refused (MCP 2025-06-18 removed them).
pub fn parse(body: &[u8]) -> Result<Incoming, RpcError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| RpcError::new(ErrorKind::Parse, format!("the body is not JSON: {e}")))?;
    let invalid = |m: &str| Err(RpcError::new(ErrorKind::InvalidRequest, m));
    let obj = match value {
        Value::Object(o) => o,
        Value::Array(_) => return invalid("JSON-RPC batches are not supported; send one message per request"),
        _ => return invalid("a JSON-RPC message is an object"),
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("jsonrpc must be \"2.0\"");
    }
    let id = obj.get("id");
    if let Some(id) = id
        && !(id.is_string() || id.is_i64() || id.is_u64())
    {
        return invalid("id must be a string or an integer");
    }
    match (obj.get("method"), id) {
        (Some(Value::String(method)), Some(id)) => {
            Ok(Incoming::Request { id: id.clone(), method: method.clone(), params: obj.get("params").cloned() })
        }
        (Some(Value::String(method)), None) => Ok(Incoming::Notification { method: method.clone() }),
        (Some(_), _) => invalid("method must be a string"),
        (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => Ok(Incoming::Response),
        (None, _) => invalid("a JSON-RPC message has a method, or a result or error with an id"),
    }
}

/// The protocol version to answer a client that asked for `requested`.
pub fn negotiate(requested: &str) -> &'static str {
    PROTOCOL_VERSIONS.iter().find(|v| **v == requested).copied().unwrap_or(PROTOCOL_VERSIONS[0])
}

/// One MCP session: its env, its sandbox and when it was last used.
pub struct McpSession {
    pub id: String,
    env: EnvId,
    /// The negotiated protocol version.
    pub protocol_version: &'static str,
    last_used_ms: AtomicI64,
    /// The attached sandboxes by hand; taken (and killed) when the session ends.
    sandbox: Mutex<BTreeMap<String, String>>,
    /// Set when the session ends: a sandbox started for it afterwards is killed at once.
    closed: AtomicBool,
    /// Concurrent tool calls start one sandbox per hand, not one each.
    starting: Arc<tokio::sync::Mutex<()>>,
}

impl McpSession {
    fn slot(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.sandbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sandbox attached to the main hand now.
    pub fn sandbox(&self) -> Option<String> {
        self.slot().get(tools::MAIN_HAND).cloned()
    }
}

/// This instance's MCP sessions, keyed by (env, session id).
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<(String, String), Arc<McpSession>>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<McpSession>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct McpHolder<'a> {
    session: &'a McpSession,
    /// The caller of the tool (for the audit log of the sandbox it may start).
    actor: Actor,
}

impl SandboxHolder for McpHolder<'_> {
    fn session(&self) -> &str {
        &self.session.id
    }

    fn actor(&self) -> Actor {
        self.actor.clone()
    }

    fn start_lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.session.starting.clone()
    }

    async fn binding(&self, hand: &str) -> Result<Binding, AgentError> {
        let slot = self.session.slot();
        Ok(Binding { sandbox: slot.get(hand).cloned(), snapshot: None, attached: slot.len() })
    }

    async fn attach(&self, hand: &str, sandbox: &str) -> Result<(), AgentError> {
        let mut slot = self.session.slot();
        // Checked under the slot's lock, which ending the session also takes: no sandbox outlives it.
        if self.session.closed.load(Ordering::SeqCst) {
            return Err(AgentError::NotFound);
        }
        slot.insert(hand.to_owned(), sandbox.to_owned());
        Ok(())
    }

    async fn detach(&self, hand: &str, sandbox: &str, _reason: &str) -> Result<(), AgentError> {
        let mut slot = self.session.slot();
        if slot.get(hand).map(String::as_str) == Some(sandbox) {
            slot.remove(hand);
        }
        Ok(())
    }
}

/// The answer to a posted message that is not an `initialize`.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The JSON-RPC response to the request.
    Response(Value),
    /// A notification or a response: accepted, nothing to answer.
    Accepted,
}

impl Agent {
    fn now_ms(&self) -> i64 {
        self.inner.platform.clock().now_ms()
    }

    /// Starts an MCP session: `Ok((session id, response))`, or the error response to send.
    pub async fn mcp_initialize(
        &self,
        env: &EnvId,
        id: &Value,
        params: Option<&Value>,
    ) -> Result<(String, Value), Value> {
        let params = match params {
            Some(Value::Object(p)) => p,
            _ => {
                return Err(
                    RpcError::new(ErrorKind::InvalidParams, "initialize takes an object of params").response(id)
                );
            }
        };
        let Some(requested) = params.get("protocolVersion").and_then(Value::as_str) else {
            return Err(RpcError::new(ErrorKind::InvalidParams, "params.protocolVersion must be a string").response(id));
        };
        if params.get("capabilities").is_some_and(|c| !c.is_object()) {
            return Err(RpcError::new(ErrorKind::InvalidParams, "params.capabilities must be an object").response(id));
        }
        let version = negotiate(requested);
        self.sweep_mcp().await;
        let session = Arc::new(McpSession {
            id: format!("mcp_{}", self.inner.platform.random_id(32)),
            env: env.clone(),
            protocol_version: version,
            last_used_ms: AtomicI64::new(self.now_ms()),
            sandbox: Mutex::default(),
            closed: AtomicBool::new(false),
            starting: Arc::default(),
        });
        {
            let mut map = self.inner.mcp.lock();
            let of_env = map.keys().filter(|(e, _)| e == env.as_str()).count();
            if of_env >= MAX_SESSIONS_PER_ENV || map.len() >= MAX_SESSIONS {
                let message = format!(
                    "too many open MCP sessions (at most {MAX_SESSIONS_PER_ENV} per environment): end one \
                     (HTTP DELETE) or wait for an idle one to expire"
                );
                return Err(RpcError::new(ErrorKind::Internal, message).response(id));
            }
            map.insert((env.to_string(), session.id.clone()), session.clone());
        }
        let result = json!({
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "vibebase", "title": "vibebase environment", "version": env!("CARGO_PKG_VERSION")},
            "instructions": format!(
                "Tools of the vibebase environment {env}: they run in a sandbox of the environment (workspace \
                 /home/user), started on the first call that needs one and kept for this MCP session."
            ),
        });
        Ok((session.id.clone(), json!({"jsonrpc": "2.0", "id": id, "result": result})))
    }

    /// The env's MCP session of this id, if this instance knows it (and it has not idled out).
    pub fn mcp_session(&self, env: &EnvId, id: &str) -> Option<Arc<McpSession>> {
        let now = self.now_ms();
        let session = self.inner.mcp.lock().get(&(env.to_string(), id.to_owned())).cloned()?;
        if session.last_used_ms.load(Ordering::SeqCst) + self.idle_ms() < now {
            return None;
        }
        session.last_used_ms.store(now, Ordering::SeqCst);
        Some(session)
    }

    fn idle_ms(&self) -> i64 {
        self.inner.config.mcp_idle_timeout.as_millis() as i64
    }

    /// Handles a message of an initialized session, sent by `actor`.
    pub async fn mcp_handle(&self, session: &McpSession, message: Incoming, actor: Actor) -> Reply {
        let (id, method, params) = match message {
            Incoming::Request { id, method, params } => (id, method, params),
            Incoming::Notification { .. } | Incoming::Response => return Reply::Accepted,
        };
        let result = match method.as_str() {
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": tool_list()})),
            "tools/call" => self.mcp_call(session, params.as_ref(), actor).await,
            "initialize" => Err(RpcError::new(ErrorKind::InvalidRequest, "this session is initialized already")),
            other => Err(RpcError::new(ErrorKind::MethodNotFound, format!("no method {other:?}"))),
        };
        session.last_used_ms.store(self.now_ms(), Ordering::SeqCst);
        Reply::Response(match result {
            Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
            Err(e) => e.response(&id),
        })
    }

    async fn mcp_call(&self, session: &McpSession, params: Option<&Value>, actor: Actor) -> Result<Value, RpcError> {
        let invalid = |m: &str| RpcError::new(ErrorKind::InvalidParams, m);
        let Some(Value::Object(params)) = params else { return Err(invalid("tools/call takes an object of params")) };
        let Some(name) = params.get("name").and_then(Value::as_str) else {
            return Err(invalid("params.name must be a string"));
        };
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(a @ Value::Object(_)) => a.clone(),
            Some(_) => return Err(invalid("params.arguments must be an object")),
        };
        let holder = McpHolder { session, actor };
        let outcome = self.run_tool_for(&session.env, &holder, name, &arguments.to_string()).await.map_err(|e| {
            tracing::error!(error = %e, session = %session.id, "MCP tool call failed");
            RpcError::new(ErrorKind::Internal, "internal error")
        })?;
        Ok(json!({"content": [{"type": "text", "text": outcome.content}], "isError": outcome.is_error}))
    }

    /// Ends an MCP session and kills its sandbox; false when there is no such session.
    pub async fn mcp_end(&self, env: &EnvId, id: &str) -> bool {
        let Some(session) = self.inner.mcp.lock().remove(&(env.to_string(), id.to_owned())) else { return false };
        self.close_mcp(&session).await;
        true
    }

    async fn close_mcp(&self, session: &McpSession) {
        let hands = {
            let mut slot = session.slot();
            session.closed.store(true, Ordering::SeqCst);
            std::mem::take(&mut *slot)
        };
        let Some(sandboxes) = &self.inner.sandboxes else { return };
        for sb in hands.values() {
            if let Err(e) = sandboxes.kill(&session.env, sb).await
                && !matches!(e, sandbox::SandboxError::NotFound)
            {
                tracing::warn!(error = %e, session = %session.id, "could not kill an MCP session's sandbox");
            }
        }
    }

    /// Ends the MCP sessions idle longer than the idle timeout.
    pub async fn sweep_mcp(&self) -> usize {
        self.end_mcp_where(|s, now, idle| s.last_used_ms.load(Ordering::SeqCst) + idle < now).await
    }

    pub(crate) async fn end_mcp_of_env(&self, env: &EnvId) -> usize {
        self.end_mcp_where(|s, _, _| s.env == *env).await
    }

    async fn end_mcp_where(&self, pick: impl Fn(&McpSession, i64, i64) -> bool) -> usize {
        let (now, idle) = (self.now_ms(), self.idle_ms());
        let ended: Vec<Arc<McpSession>> = {
            let mut map = self.inner.mcp.lock();
            let keys: Vec<_> = map.iter().filter(|(_, s)| pick(s, now, idle)).map(|(k, _)| k.clone()).collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for s in &ended {
            self.close_mcp(s).await;
        }
        ended.len()
    }
}

/// The registry as MCP's `tools/list` describes it.
pub fn tool_list() -> Vec<Value> {
    tools::specs()
        .into_iter()
        .map(|t| json!({"name": t.name, "description": t.description, "inputSchema": t.parameters}))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kind(body: &str) -> ErrorKind {
        parse(body.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn parses_requests_notifications_and_responses() {
        let r = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{}}"#).unwrap();
        assert_eq!(r, Incoming::Request { id: json!(7), method: "tools/list".into(), params: Some(json!({})) });
        let r = parse(br#"{"jsonrpc":"2.0","id":"a","method":"initialize"}"#).unwrap();
        assert!(r.is_initialize());
        let n = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n, Incoming::Notification { method: "notifications/initialized".into() });
        assert_eq!(parse(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap(), Incoming::Response);
    }

    #[test]
    fn refuses_what_is_not_one_json_rpc_message() {
        assert_eq!(kind("{"), ErrorKind::Parse);
        assert_eq!(kind(""), ErrorKind::Parse);
        assert_eq!(kind(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#), ErrorKind::InvalidRequest);
        assert_eq!(kind(r#"{"id":1,"method":"ping"}"#), ErrorKind::InvalidRequest);
        assert_eq!(kind(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#), ErrorKind::InvalidRequest);
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#), ErrorKind::InvalidRequest);
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#), ErrorKind::InvalidRequest);
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":1,"method":3}"#), ErrorKind::InvalidRequest);
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":1}"#), ErrorKind::InvalidRequest);
        assert_eq!(kind("42"), ErrorKind::InvalidRequest);
    }

    #[test]
    fn negotiates_a_version_both_speak() {
        assert_eq!(negotiate("2025-03-26"), "2025-03-26");
        assert_eq!(negotiate("2025-06-18"), "2025-06-18");
        assert_eq!(negotiate("2099-01-01"), "2025-06-18");
    }

    #[test]
    fn edge_codes_map_to_json_rpc_codes() {
        assert_eq!(rpc_code("parse_error"), -32700);
        assert_eq!(rpc_code("invalid_request"), -32600);
        assert_eq!(rpc_code("invalid_params"), -32602);
        assert_eq!(rpc_code("env_mismatch"), -32001);
    }

    #[test]
    fn every_tool_is_listed_with_an_input_schema() {
        let list = tool_list();
        assert_eq!(list.len(), tools::specs().len());
        for t in list {
            assert_eq!(t["inputSchema"]["type"], "object", "{t}");
            assert!(t["name"].is_string() && t["description"].is_string());
        }
    }
}
