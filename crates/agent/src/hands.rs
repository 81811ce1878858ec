//! The hands of whoever calls tools: an agent session's run, or an MCP session. Both keep one sandbox,
//! started on the first tool call that needs one, replaced when it is gone, and run the registry's tools
//! in it the same way. What differs is only where the binding is kept (the session log, or the MCP
//! session), which a [`SandboxHolder`] says.

use std::sync::Arc;

use platform::Actor;
use protocol::EnvId;
use protocol::sandbox::CreateSandboxRequest;
use sandbox::AgentClient;

use crate::template;
use crate::tools::{self, Outcome, Placement};
use crate::{Agent, AgentError};

/// What the model is told when the sandbox died under a tool.
const SANDBOX_DIED: &str = "the sandbox died while this tool ran, so its outcome is unknown. The next sandbox call \
     gets a fresh sandbox with the workspace of the session's last checkpoint (installed dependencies come from \
     the app template; run npm install if you added any since).";

/// The registries a tool sandbox may reach (installing packages); nothing else.
const TOOL_EGRESS: &[&str] = &["registry.npmjs.org"];

/// Where a tool caller keeps its sandbox.
pub(crate) trait SandboxHolder {
    /// The session the sandbox works for: its token is scoped to it and its usage is metered under it.
    fn session(&self) -> &str;
    /// Who starts the sandbox (for the audit log).
    fn actor(&self) -> Actor;
    /// Held while a sandbox is found or started, when the holder may call tools concurrently.
    fn start_lock(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        None
    }
    /// The attached sandbox and the workspace snapshot a new one starts from.
    async fn binding(&self) -> Result<(Option<String>, Option<String>), AgentError>;
    /// Records a new sandbox as attached. An error means the holder is gone; the sandbox is then killed.
    async fn attach(&self, sandbox: &str) -> Result<(), AgentError>;
    /// Forgets the attached sandbox (`reason`: why).
    async fn detach(&self, sandbox: &str, reason: &str) -> Result<(), AgentError>;
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
        match tools::placement(name) {
            None => Ok(Outcome::error(format!("there is no tool named {name:?}"))),
            Some(Placement::Backend { needs_sandbox }) => {
                let Some(backend) = self.inner.backend.get() else {
                    return Ok(Outcome::error("backend tools are not available on this platform instance"));
                };
                let sandbox = if needs_sandbox {
                    match self.hands(env, holder).await? {
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
                    arguments,
                };
                Ok(backend.call(call).await)
            }
            Some(Placement::Sandbox) => {
                let (sandbox, client) = match self.hands(env, holder).await? {
                    Ok(c) => c,
                    Err(o) => return Ok(o),
                };
                match tools::run_in_sandbox(&client, name, arguments).await {
                    Ok(o) => Ok(o),
                    Err(tools::SandboxLost(why)) => {
                        // The cause goes to the log; the model's text stays the same whatever it was.
                        holder.detach(&sandbox, &format!("died: {why}")).await?;
                        Ok(Outcome::error(SANDBOX_DIED))
                    }
                }
            }
        }
    }

    /// The holder's sandbox (id, client), started on the first call that needs one and restored from the
    /// holder's snapshot. `Ok(Err(outcome))`: no sandbox could be had, which the caller is told.
    async fn hands<H: SandboxHolder>(
        &self,
        env: &EnvId,
        holder: &H,
    ) -> Result<Result<(String, AgentClient), Outcome>, AgentError> {
        let Some(sandboxes) = &self.inner.sandboxes else {
            return Ok(Err(Outcome::error("this platform instance cannot run sandboxes")));
        };
        let _starting = match holder.start_lock() {
            Some(lock) => Some(lock.lock_owned().await),
            None => None,
        };
        let (attached, snapshot) = holder.binding().await?;
        if let Some(sb) = attached {
            if let Ok(client) = sandboxes.agent(env, &sb) {
                return Ok(Ok((sb, client)));
            }
            holder.detach(&sb, "gone").await?;
        }
        let template = if self.inner.config.app_template {
            match template::ensure(sandboxes, &self.inner.template_build, env, &holder.actor()).await {
                Ok(name) => Some(name.to_owned()),
                Err(e) => return Ok(Err(Outcome::error(format!("could not prepare the app template: {e}")))),
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
        let record = match sandboxes.create(&holder.actor(), env, req).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(Outcome::error(format!("could not start a sandbox: {e}")))),
        };
        if let Some(snap) = &snapshot
            && let Err(e) = sandboxes.restore(env, &record.id, snap).await
        {
            let _ = sandboxes.kill(env, &record.id).await;
            return Ok(Err(Outcome::error(format!("could not restore the workspace: {e}"))));
        }
        if template.is_some()
            && let Err(e) = self.write_env_file(env, sandboxes, &record.id).await
        {
            let _ = sandboxes.kill(env, &record.id).await;
            return Ok(Err(Outcome::error(format!("could not write {}: {e}", template::ENV_FILE))));
        }
        if let Err(e) = holder.attach(&record.id).await {
            // Nobody would ever use or kill it.
            let _ = sandboxes.kill(env, &record.id).await;
            return Err(e);
        }
        Ok(sandboxes
            .agent(env, &record.id)
            .map(|c| (record.id.clone(), c))
            .map_err(|e| Outcome::error(format!("the new sandbox is unreachable: {e}"))))
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
