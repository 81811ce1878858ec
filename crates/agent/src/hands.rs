//! The hands of whoever calls tools: an agent session's run, or an MCP session. Both keep up to
//! [`tools::MAX_HANDS`] named sandboxes (a tool call's `sandbox` argument names one, `main` by default),
//! each started on the first tool call that needs it, from the holder's workspace snapshot, and replaced
//! when it is gone, and run the registry's tools in them the same way. What differs is only where the
//! bindings are kept (the session's row and `agent_hands`, or the MCP session), which a
//! [`SandboxHolder`] says.

use std::sync::Arc;

use platform::Actor;
use protocol::EnvId;
use protocol::sandbox::CreateSandboxRequest;
use sandbox::AgentClient;

use crate::template;
use crate::tools::{self, Outcome, Placement};
use crate::{Agent, AgentError};

/// What the model is told when the sandbox died under a tool.
const SANDBOX_DIED: &str = "the sandbox died while this tool ran, so its outcome is unknown. The next call to it \
     gets a fresh sandbox with the workspace of the session's last checkpoint (installed dependencies come from \
     the app template; run npm install if you added any since).";

/// The registries a tool sandbox may reach (installing packages); nothing else.
const TOOL_EGRESS: &[&str] = &["registry.npmjs.org"];

/// What a holder knows about one hand.
pub(crate) struct Binding {
    /// The sandbox attached to the hand.
    pub sandbox: Option<String>,
    /// The workspace snapshot a new sandbox starts from.
    pub snapshot: Option<String>,
    /// How many hands are attached now (this one included, if it is).
    pub attached: usize,
}

/// Where a tool caller keeps its sandboxes: one per hand, named by the tool call's `sandbox` argument
/// ([`tools::MAIN_HAND`] by default).
pub(crate) trait SandboxHolder {
    /// The session the sandboxes work for: their tokens are scoped to it and their usage is metered
    /// under it.
    fn session(&self) -> &str;
    /// Who starts a sandbox (for the audit log).
    fn actor(&self) -> Actor;
    /// Held while a sandbox is started, so calls running concurrently start one sandbox per hand and
    /// never more than [`tools::MAX_HANDS`].
    fn start_lock(&self) -> Arc<tokio::sync::Mutex<()>>;
    /// The hand's sandbox and the workspace snapshot a new one starts from.
    async fn binding(&self, hand: &str) -> Result<Binding, AgentError>;
    /// Records a new sandbox as the hand's. An error means the holder is gone; the sandbox is then
    /// killed.
    async fn attach(&self, hand: &str, sandbox: &str) -> Result<(), AgentError>;
    /// Forgets the hand's sandbox (`reason`: why).
    async fn detach(&self, hand: &str, sandbox: &str, reason: &str) -> Result<(), AgentError>;
}

impl Agent {
    /// Runs a tool of the registry for `holder`. A failure of the tool, of its arguments or of the
    /// sandbox is an error outcome; `Err` only when the holder's own state failed.
    pub(crate) async fn run_tool_for<H: SandboxHolder>(
        &self,
        env: &EnvId,
        holder: &H,
        name: &str,
        arguments: &str,
    ) -> Result<Outcome, AgentError> {
        let (hand, arguments) = match tools::split_hand(name, arguments) {
            Ok(split) => split,
            Err(o) => return Ok(o),
        };
        let hand = hand.as_deref().unwrap_or(tools::MAIN_HAND);
        match tools::placement(name) {
            None => Ok(Outcome::error(format!("there is no tool named {name:?}"))),
            Some(Placement::Backend { needs_sandbox }) => {
                let Some(backend) = self.inner.backend.get() else {
                    return Ok(Outcome::error("backend tools are not available on this platform instance"));
                };
                let sandbox = if needs_sandbox {
                    match self.hands(env, holder, hand).await? {
                        Ok((sandbox, _)) => Some(sandbox),
                        Err(o) => return Ok(o),
                    }
                } else {
                    None
                };
                let call = tools::BackendCall {
                    env,
                    session: holder.session(),
                    sandbox: sandbox.as_deref(),
                    tool: name,
                    arguments: &arguments,
                };
                Ok(backend.call(call).await)
            }
            Some(Placement::Sandbox) => {
                let (sandbox, client) = match self.hands(env, holder, hand).await? {
                    Ok(c) => c,
                    Err(o) => return Ok(o),
                };
                match tools::run_in_sandbox(&client, name, &arguments).await {
                    Ok(o) => Ok(o),
                    Err(tools::SandboxLost(why)) => {
                        // The cause goes to the log; the model's text stays the same whatever it was.
                        holder.detach(hand, &sandbox, &format!("died: {why}")).await?;
                        Ok(Outcome::error(SANDBOX_DIED))
                    }
                }
            }
        }
    }

    /// The hand's sandbox (id, client), started on the first call that needs one and restored from the
    /// holder's snapshot. `Ok(Err(outcome))`: no sandbox could be had, which the caller is told.
    async fn hands<H: SandboxHolder>(
        &self,
        env: &EnvId,
        holder: &H,
        hand: &str,
    ) -> Result<Result<(String, AgentClient), Outcome>, AgentError> {
        let Some(sandboxes) = &self.inner.sandboxes else {
            return Ok(Err(Outcome::error("this platform instance cannot run sandboxes")));
        };
        // A live sandbox needs no lock: calls to hands that run already never wait for a start.
        if let Some(sb) = holder.binding(hand).await?.sandbox
            && let Ok(client) = sandboxes.agent(env, &sb)
        {
            return Ok(Ok((sb, client)));
        }
        let lock = holder.start_lock();
        let _starting = lock.lock().await;
        let binding = holder.binding(hand).await?;
        let mut attached = binding.attached;
        if let Some(sb) = binding.sandbox {
            if let Ok(client) = sandboxes.agent(env, &sb) {
                return Ok(Ok((sb, client)));
            }
            holder.detach(hand, &sb, "gone").await?;
            attached -= 1;
        }
        if attached >= tools::MAX_HANDS {
            return Ok(Err(Outcome::error(format!(
                "too many sandboxes: a session holds at most {} at once; use one of the sandboxes it has",
                tools::MAX_HANDS
            ))));
        }
        let record = match self.start_sandbox(env, holder, binding.snapshot.as_deref()).await {
            Ok(r) => r,
            Err(o) => return Ok(Err(o)),
        };
        if let Err(e) = holder.attach(hand, &record.id).await {
            // Nobody would ever use or kill it.
            let _ = sandboxes.kill(env, &record.id).await;
            return Err(e);
        }
        Ok(sandboxes
            .agent(env, &record.id)
            .map(|c| (record.id.clone(), c))
            .map_err(|e| Outcome::error(format!("the new sandbox is unreachable: {e}"))))
    }

    /// Makes a tool sandbox for `holder`, ready to use: from the app template (when configured), the
    /// workspace restored from `snapshot`, the env file written. Every hand's sandbox is made here; one
    /// that fails on the way is killed.
    async fn start_sandbox<H: SandboxHolder>(
        &self,
        env: &EnvId,
        holder: &H,
        snapshot: Option<&str>,
    ) -> Result<protocol::sandbox::SandboxRecord, Outcome> {
        let Some(sandboxes) = &self.inner.sandboxes else {
            return Err(Outcome::error("this platform instance cannot run sandboxes"));
        };
        let template = if self.inner.config.app_template {
            match template::ensure(sandboxes, &self.inner.template_build, env, &holder.actor()).await {
                Ok(name) => Some(name.to_owned()),
                Err(e) => return Err(Outcome::error(format!("could not prepare the app template: {e}"))),
            }
        } else {
            None
        };
        let req = CreateSandboxRequest {
            session: Some(holder.session().to_owned()),
            timeout_seconds: Some(self.inner.config.sandbox_timeout.as_secs()),
            memory_mb: Some(1024),
            allow_egress: TOOL_EGRESS.iter().map(|h| (*h).to_owned()).collect(),
            template: template.clone(),
            ..Default::default()
        };
        let record = sandboxes
            .create(&holder.actor(), env, req)
            .await
            .map_err(|e| Outcome::error(format!("could not start a sandbox: {e}")))?;
        if let Some(snap) = snapshot
            && let Err(e) = sandboxes.restore(env, &record.id, snap).await
        {
            let _ = sandboxes.kill(env, &record.id).await;
            return Err(Outcome::error(format!("could not restore the workspace: {e}")));
        }
        if template.is_some()
            && let Err(e) = self.write_env_file(env, sandboxes, &record.id).await
        {
            let _ = sandboxes.kill(env, &record.id).await;
            return Err(Outcome::error(format!("could not write {}: {e}", template::ENV_FILE)));
        }
        Ok(record)
    }

    /// Writes the env's publishable key where the template's Vite build reads it (after a restore, so
    /// a rotated key replaces the one a snapshot holds).
    async fn write_env_file(&self, env: &EnvId, sandboxes: &sandbox::Sandboxes, sandbox: &str) -> Result<(), String> {
        let Some(backend) = self.inner.backend.get() else { return Ok(()) };
        let key = backend.publishable_key(env).await?;
        let client = sandboxes.agent(env, sandbox).map_err(|e| e.to_string())?;
        client
            .write_file(template::ENV_FILE, template::env_file(&key).as_bytes(), None)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
