//! The agent runtime: sessions that turn a prompt into work, driven by a trusted loop.
//!
//! A session is an append-only log of AG-UI events in the platform store ([`log`]). A run starts when a
//! user message arrives: the instance that takes the session's lease appends the message and drives the
//! loop ([`run`]): fold the log into a conversation ([`history`]), ask the model through the gateway,
//! write the answer's events as they stream, run the tool calls the answer asked for ([`tools`]) and
//! write their results, until the model answers without tools. Everything is written before it is acted
//! on, so any instance can wake a session from its log: when a driver dies its lease expires and the
//! sweeper of another instance resumes the run, reporting tools whose outcome is unknown as interrupted.
//!
//! The loop holds the credentials; the model sees none; the sandbox holds only the token minted for it.

pub mod demo;
pub mod event;
mod hands;
pub mod history;
pub mod log;
pub mod mcp;
mod run;
pub mod template;
pub mod tools;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::Gateway;
use platform::Platform;
use protocol::EnvId;
use sandbox::Sandboxes;
use serde_json::json;
use tokio::sync::Notify;

use crate::event::{Event, custom};
pub use crate::log::{Bindings, Caps, Log, Session, valid_session_id};
pub use protocol::agent::{
    ApprovalRequest, CreateSessionRequest, Decision, RevertRequest, RevertResult, RunStarted, SendMessageRequest,
    SessionRecord,
};

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No session with this id in this env.
    #[error("session not found")]
    NotFound,
    /// A session with this id exists already.
    #[error("a session with this id exists")]
    Exists,
    /// The session is running a run; wait for it or interrupt it.
    #[error("the session is running; interrupt it or wait for the run to finish")]
    Busy,
    /// No tool call of the session waits for a decision under this id.
    #[error("no tool call waits for approval under this id")]
    ApprovalNotFound,
    /// The tool call was decided already.
    #[error("the tool call was decided already")]
    ApprovalDecided,
    /// No checkpoint event of the session has this sequence number.
    #[error("no checkpoint of this session has this sequence number")]
    CheckpointNotFound,
    /// The site could not be rolled back to the checkpoint's deployment (nothing was changed).
    #[error("the site could not be rolled back: {0}")]
    RevertFailed(String),
    /// The request is malformed.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// No model was named and no default is configured.
    #[error("no model: name one in the message or configure a default")]
    NoModel,
    /// This instance no longer holds the session's lease (another instance resumed it).
    #[error("the session's lease was lost")]
    LeaseLost,
    /// A stored event could not be read or written.
    #[error("corrupt session log: {0}")]
    Corrupt(String),
    /// The platform store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl AgentError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "session_not_found",
            Self::Exists => "session_exists",
            Self::Busy => "session_busy",
            Self::ApprovalNotFound => "approval_not_found",
            Self::ApprovalDecided => "approval_decided",
            Self::CheckpointNotFound => "checkpoint_not_found",
            Self::RevertFailed(_) => "revert_failed",
            Self::Invalid { code, .. } => code,
            Self::NoModel => "no_model",
            Self::LeaseLost => "lease_lost",
            Self::Corrupt(_) => "internal",
            Self::Store(_) => "internal",
        }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound | Self::ApprovalNotFound | Self::CheckpointNotFound => 404,
            Self::Exists | Self::Busy | Self::LeaseLost | Self::ApprovalDecided | Self::RevertFailed(_) => 409,
            Self::Invalid { .. } | Self::NoModel => 400,
            Self::Corrupt(_) | Self::Store(_) => 500,
        }
    }

    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { code, message: message.into() }
    }
}

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The model of a message that names none and whose session has none.
    pub default_model: Option<String>,
    /// Model calls a run may make before it stops with `turn_limit`.
    pub max_turns: u32,
    /// How long a lease lasts without a heartbeat; a dead driver's session is resumed after it.
    pub lease_ttl: Duration,
    /// How often the sweeper looks for sessions whose driver died.
    pub sweep_every: Duration,
    /// The share of the model's context window a prompt may fill before the loop compacts the older
    /// conversation into a summary.
    pub compact_at: f64,
    /// Sandbox settings of a session's sandbox.
    pub sandbox_timeout: Duration,
    /// An MCP session unused this long ends (and its sandbox is killed).
    pub mcp_idle_timeout: Duration,
    /// Start tool sandboxes from the built-in app template ([`template`]), made on first use with
    /// `npm ci` (the npm registry must be reachable then).
    pub app_template: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            default_model: None,
            max_turns: 50,
            lease_ttl: Duration::from_secs(15),
            sweep_every: Duration::from_secs(2),
            compact_at: 0.75,
            sandbox_timeout: Duration::from_secs(3600),
            mcp_idle_timeout: Duration::from_secs(30 * 60),
            app_template: false,
        }
    }
}

/// The agent runtime of this instance.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    platform: Platform,
    gateway: Gateway,
    sandboxes: Option<Sandboxes>,
    log: Log,
    config: AgentConfig,
    /// This instance's name as a lease holder.
    holder: String,
    /// Per-session wake-ups for streams waiting on this instance's writes (other instances' writes are
    /// found by polling).
    notify: Mutex<HashMap<(String, String), Arc<Notify>>>,
    /// The runs this instance drives, so an interrupt received here reaches its driver at once (one
    /// received by another instance arrives with the driver's next heartbeat).
    drivers: Mutex<Drivers>,
    /// Runs backend tools; set once by the server ([`Agent::set_backend`]).
    backend: std::sync::OnceLock<Arc<dyn tools::Backend>>,
    /// This instance's MCP sessions.
    mcp: mcp::Sessions,
    /// Held while this instance builds the app template.
    template_build: tokio::sync::Mutex<()>,
}

/// (env, session) → the signal channel of the run this instance drives.
type Drivers = HashMap<(String, String), Arc<tokio::sync::watch::Sender<run::Signal>>>;

/// Longest user message.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

impl Agent {
    pub fn new(platform: Platform, gateway: Gateway, sandboxes: Option<Sandboxes>, config: AgentConfig) -> Self {
        let log = Log::new(platform.db().clone());
        let holder = format!("i_{}", platform.random_id(16));
        let agent = Self {
            inner: Arc::new(Inner {
                platform,
                gateway,
                sandboxes,
                log,
                config,
                holder,
                notify: Mutex::default(),
                drivers: Mutex::default(),
                backend: std::sync::OnceLock::new(),
                mcp: mcp::Sessions::default(),
                template_build: tokio::sync::Mutex::new(()),
            }),
        };
        agent.register_delete_hook();
        agent
    }

    /// Gives the loop its backend tools (once; later calls are ignored).
    pub fn set_backend(&self, backend: Arc<dyn tools::Backend>) {
        let _ = self.inner.backend.set(backend);
    }

    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    fn now(&self) -> i64 {
        self.inner.platform.clock().now_ms()
    }

    fn lease_until(&self) -> i64 {
        self.now() + self.inner.config.lease_ttl.as_millis() as i64
    }

    fn register_delete_hook(&self) {
        self.inner.platform.on_env_delete_weak(&self.inner, |inner, env| async move {
            Agent { inner: inner.clone() }.end_mcp_of_env(&env).await;
            inner.log.delete_env(&env).await.map_err(|e| e.to_string())
        });
    }

    pub async fn create_session(&self, env: &EnvId, req: CreateSessionRequest) -> Result<Session, AgentError> {
        let id = match req.id {
            Some(id) if valid_session_id(&id) => id,
            Some(_) => {
                return Err(AgentError::invalid(
                    "invalid_session_id",
                    "session ids are 1..=128 of A-Z a-z 0-9 - _ . :",
                ));
            }
            None => format!("ses_{}", self.inner.platform.random_id(20)),
        };
        if req.title.as_ref().is_some_and(|t| t.len() > 200 || t.contains('\0')) {
            return Err(AgentError::invalid("invalid_title", "titles are at most 200 bytes, without NUL"));
        }
        if let Some(m) = &req.model {
            self.check_model(m)?;
        }
        let cap = |v: Option<u64>, what: &str| match v {
            None => Ok(None),
            Some(n) if (1..=i64::MAX as u64).contains(&n) => Ok(Some(n as i64)),
            Some(_) => Err(AgentError::invalid("invalid_caps", format!("{what} must be at least 1"))),
        };
        let caps = Caps {
            max_turns: cap(req.max_turns, "max_turns")?,
            max_tokens: cap(req.max_tokens, "max_tokens")?,
            max_cost: cap(req.max_cost, "max_cost")?,
        };
        if req.require_approval.len() > 32 {
            return Err(AgentError::invalid("invalid_approvals", "at most 32 tools may require approval"));
        }
        if let Some(t) = req.require_approval.iter().find(|t| tools::placement(t).is_none()) {
            return Err(AgentError::invalid("unknown_tool", format!("there is no tool named {t:?}")));
        }
        self.inner
            .log
            .create(
                env,
                log::NewSession { id, title: req.title, model: req.model, caps, approval_tools: req.require_approval },
                self.now(),
            )
            .await?
            .ok_or(AgentError::Exists)
    }

    /// A person's decision on a tool call waiting for approval. It reaches the driver at once on this
    /// instance and within a second on another; it survives restarts (the driver reads it from the
    /// store).
    pub async fn approve(&self, env: &EnvId, id: &str, req: ApprovalRequest) -> Result<(), AgentError> {
        self.session(env, id).await?;
        let events = self.inner.log.read_all(env, id).await?;
        let history = history::History::fold_log(&events);
        let Some((_, tool, _)) = history.awaiting_approval.iter().find(|(c, _, _)| *c == req.tool_call_id) else {
            return Err(AgentError::ApprovalNotFound);
        };
        let decision = match req.decision {
            Decision::Allow => "allow",
            Decision::AllowAlways => "allow_always",
            Decision::Deny => "deny",
        };
        if !self.inner.log.decide(env, id, &req.tool_call_id, decision, tool, self.now()).await? {
            return Err(AgentError::ApprovalDecided);
        }
        self.notifier(env, id).notify_waiters();
        Ok(())
    }

    pub async fn session(&self, env: &EnvId, id: &str) -> Result<Session, AgentError> {
        if !valid_session_id(id) {
            return Err(AgentError::NotFound);
        }
        self.inner.log.get(env, id).await?.ok_or(AgentError::NotFound)
    }

    pub async fn sessions(&self, env: &EnvId, limit: i64) -> Result<Vec<Session>, AgentError> {
        self.inner.log.list(env, limit).await
    }

    /// The model of messages and sessions that name none.
    pub fn default_model(&self) -> Option<&str> {
        self.inner.config.default_model.as_deref()
    }

    fn check_model(&self, model: &str) -> Result<(), AgentError> {
        if self.inner.gateway.models().iter().any(|m| m.id == model) {
            Ok(())
        } else {
            Err(AgentError::invalid("model_not_found", format!("the gateway knows no model {model:?}")))
        }
    }

    /// Appends a user message and starts a run on this instance. The run goes on when every client
    /// disconnects; [`Agent::wait`] and [`Log::read`] follow it.
    pub async fn send(&self, env: &EnvId, id: &str, msg: SendMessageRequest) -> Result<RunStarted, AgentError> {
        if msg.content.is_empty() || msg.content.len() > MAX_MESSAGE_BYTES || msg.content.contains('\0') {
            return Err(AgentError::invalid("invalid_message", "a message is 1..=262144 bytes of text without NUL"));
        }
        if let Some(r) = &msg.run_id
            && !valid_session_id(r)
        {
            return Err(AgentError::invalid("invalid_run_id", "run ids are 1..=128 of A-Z a-z 0-9 - _ . :"));
        }
        let session = self.session(env, id).await?;
        if let Some(m) = &msg.model {
            self.check_model(m)?;
        }
        let model = msg.model.clone().or(session.model.clone()).or(self.inner.config.default_model.clone());
        let Some(model) = model else { return Err(AgentError::NoModel) };
        let run_id = msg.run_id.clone().unwrap_or_else(|| format!("run_{}", self.inner.platform.random_id(20)));
        let holder = &self.inner.holder;
        if !self.inner.log.acquire(env, id, holder, self.now(), self.lease_until(), Some(&run_id)).await? {
            return Err(AgentError::Busy);
        }
        if session.model.as_deref() != Some(model.as_str()) {
            self.inner.log.set_model(env, id, &model).await?;
        }
        let message_id = format!("msg_{}", self.inner.platform.random_id(20));
        let events = vec![
            Event::RunStarted { thread_id: id.to_owned(), run_id: run_id.clone() },
            Event::custom(
                custom::USER_MESSAGE,
                json!({"messageId": message_id, "content": msg.content, "model": model}),
            ),
        ];
        let after_seq = session.last_seq;
        if let Err(e) = self.append(env, id, events).await {
            let _ = self.inner.log.release(env, id, holder, self.now()).await;
            return Err(e);
        }
        self.spawn_driver(env.clone(), id.to_owned(), run_id.clone());
        Ok(RunStarted { session: id.to_owned(), run_id, after_seq })
    }

    /// Returns the session's workspace and site to a checkpoint: its next sandbox starts from the
    /// checkpoint's snapshot and the checkpoint's deployment is published again. The schema is not
    /// reverted. Refused while a run is in progress; holds the lease meanwhile, so no run starts.
    pub async fn revert(&self, env: &EnvId, id: &str, req: RevertRequest) -> Result<RevertResult, AgentError> {
        let session = self.session(env, id).await?;
        let checkpoint = match self.inner.log.read(env, id, req.checkpoint.saturating_sub(1), 1).await?.pop() {
            Some((seq, Event::Custom { name, value })) if seq == req.checkpoint && name == custom::CHECKPOINT => value,
            _ => return Err(AgentError::CheckpointNotFound),
        };
        let text = |k: &str| checkpoint.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
        let (snapshot, deployment) = (text("snapshot"), text("deployment"));
        let migration = checkpoint.get("migration").and_then(serde_json::Value::as_i64);
        if session.status == "running" {
            return Err(AgentError::Busy);
        }
        // A holder of its own: a run started on this instance meanwhile must not share the lease.
        let holder = format!("{}_revert_{}", self.inner.holder, self.inner.platform.random_id(8));
        if !self.inner.log.acquire(env, id, &holder, self.now(), self.lease_until(), None).await? {
            return Err(AgentError::Busy);
        }
        let reverted = self.revert_held(env, id, &holder, req.checkpoint, snapshot, deployment, migration).await;
        if let Err(e) = self.inner.log.release(env, id, &holder, self.now()).await {
            tracing::warn!(error = %e, env = %env, session = %id, "could not release a session after a revert");
        }
        self.notifier(env, id).notify_waiters();
        reverted
    }

    #[allow(clippy::too_many_arguments)]
    async fn revert_held(
        &self,
        env: &EnvId,
        id: &str,
        holder: &str,
        checkpoint: i64,
        snapshot: Option<String>,
        deployment: Option<String>,
        migration: Option<i64>,
    ) -> Result<RevertResult, AgentError> {
        // Checked under the lease: a run that started between the first look and the lease shows here.
        let session = self.session(env, id).await?;
        if session.status == "running" {
            return Err(AgentError::Busy);
        }
        // The site first: it is the step that can be refused, and then nothing has changed.
        if let Some(d) = &deployment {
            let Some(backend) = self.inner.backend.get() else {
                return Err(AgentError::RevertFailed("site deployments are not available on this instance".into()));
            };
            backend.roll_back_site(env, id, d).await.map_err(AgentError::RevertFailed)?;
        }
        let hands = self.inner.log.bindings(env, id).await?.hands;
        self.inner.log.restore_workspace(env, id, holder, snapshot.as_deref()).await?;
        let mut events = Vec::new();
        for (hand, sb) in &hands {
            if let Some(sandboxes) = &self.inner.sandboxes {
                // Nobody uses it any more; its workspace is the one being undone.
                let _ = sandboxes.kill(env, sb).await;
            }
            let detach = json!({"sandbox": sb, "hand": hand, "reason": "reverted"});
            events.push(Event::custom(custom::SANDBOX_DETACH, detach));
        }
        events.push(Event::custom(
            custom::REVERTED,
            json!({
                "checkpoint": checkpoint,
                "snapshot": snapshot,
                "deployment": deployment,
                "schema": {"reverted": false, "migration_at_checkpoint": migration},
            }),
        ));
        let seq = self.inner.log.append(env, id, holder, events, self.now()).await?;
        Ok(RevertResult { checkpoint, seq, snapshot, deployment, migration })
    }

    /// Asks the session's run to stop at its next step; false when no run is in progress.
    pub async fn interrupt(&self, env: &EnvId, id: &str) -> Result<bool, AgentError> {
        self.session(env, id).await?;
        let asked = self.inner.log.request_interrupt(env, id).await?;
        if asked && let Some(driver) = self.drivers().get(&(env.to_string(), id.to_owned())) {
            let _ = driver.send(run::Signal::Interrupt);
        }
        Ok(asked)
    }

    fn drivers(&self) -> std::sync::MutexGuard<'_, Drivers> {
        self.inner.drivers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The wake-up of a session's streams: notified after each append by this instance (other
    /// instances' appends are found by polling the log).
    pub fn notifier(&self, env: &EnvId, id: &str) -> Arc<Notify> {
        let mut map = self.inner.notify.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, n| Arc::strong_count(n) > 1);
        }
        map.entry((env.to_string(), id.to_owned())).or_default().clone()
    }

    /// Appends as this instance's lease and wakes the session's streams.
    async fn append(&self, env: &EnvId, id: &str, events: Vec<Event>) -> Result<i64, AgentError> {
        if events.is_empty() {
            return Ok(0);
        }
        let seq = self.inner.log.append(env, id, &self.inner.holder, events, self.now()).await?;
        self.notifier(env, id).notify_waiters();
        Ok(seq)
    }

    /// Starts the sweeper that resumes sessions whose driver died (their lease expired) and ends idle MCP
    /// sessions.
    pub fn spawn_background(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let agent = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(agent.inner.config.sweep_every) => {}
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
                if let Err(e) = agent.sweep().await {
                    tracing::warn!(error = %e, "agent sweep failed");
                }
                agent.sweep_mcp().await;
            }
        })
    }

    /// Resumes every orphaned session this instance can take.
    pub async fn sweep(&self) -> Result<usize, AgentError> {
        let mut resumed = 0;
        for (env, id) in self.inner.log.orphaned(self.now()).await? {
            let Ok(env) = EnvId::parse(&env) else { continue };
            if self.inner.log.acquire(&env, &id, &self.inner.holder, self.now(), self.lease_until(), None).await? {
                tracing::info!(env = %env, session = %id, "resuming a session whose driver stopped");
                let run_id = self.session(&env, &id).await?.run_id.unwrap_or_default();
                self.append(&env, &id, vec![Event::custom(custom::RESUMED, json!({"holder": self.inner.holder}))])
                    .await?;
                self.spawn_driver(env, id, run_id);
                resumed += 1;
            }
        }
        Ok(resumed)
    }
}
