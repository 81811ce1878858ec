//! The platform's sandbox registry: creates sandboxes with their minted credentials, enforces
//! lifetimes and idle timeouts, lends out workspaces one sandbox at a time, and meters usage.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use platform::{Actor, Platform};
use protocol::EnvId;
use protocol::api::{MintTokenRequest, UsageEventInput};
use protocol::sandbox::{CreateSandboxRequest, MAX_SANDBOX_SECONDS, SandboxRecord, SandboxState, SnapshotRecord};

use crate::{AgentClient, Backend, Instance, SandboxError, StartPlan};

/// What a sandbox's own token may do: the env's data plane, not sandboxes or MCP.
pub const HANDS_ACTIONS: &[&str] = &["db:*", "auth:*", "storage:*", "functions:*", "llm:*", "site:*"];
/// The host name sandboxes reach the platform by (through the egress proxy, which knows it).
pub const SANDBOX_API_HOST: &str = "vibebase.internal";

/// The action of the envd API (E2B's in-sandbox API).
pub const ENVD_ACTION: &str = "sandboxes:Envd";

/// The holder of the envd access token of sandbox `id`: a token so held works on that sandbox only.
pub fn envd_holder(id: &str) -> String {
    format!("envd:{id}")
}

/// Defaults and ceilings for new sandboxes.
#[derive(Debug, Clone)]
pub struct SandboxDefaults {
    pub timeout: Duration,
    pub memory_mb: u64,
    pub max_processes: u64,
    pub cpu_percent: u32,
    pub disk_mb: u64,
    /// Live sandboxes on this instance, all envs together.
    pub max_live: usize,
}

impl Default for SandboxDefaults {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            memory_mb: 512,
            max_processes: 256,
            cpu_percent: 100,
            disk_mb: 1024,
            max_live: 2000,
        }
    }
}

struct Live {
    record: Mutex<SandboxRecord>,
    instance: Box<dyn Instance>,
    deadline: Mutex<Instant>,
    idle: Option<Duration>,
    last_used: Mutex<Instant>,
    /// The sandbox's own token, revoked when it ends. (The envd access token is the caller's, bound
    /// to this sandbox id, which is never reused; it expires with the lifetime, so a client asking
    /// after the end learns that the sandbox is gone rather than that its key is.)
    token_id: String,
    /// Memory integrated over time, in MiB·ms.
    mem_mb_ms: AtomicU64,
}

struct Inner {
    platform: Platform,
    backend: Arc<dyn Backend>,
    defaults: SandboxDefaults,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// (env, workspace) pairs mounted in a live sandbox.
    busy: Mutex<HashSet<(String, String)>>,
    /// The egress proxy, once the platform installs it.
    egress: std::sync::OnceLock<crate::EgressHandler>,
}

/// The sandboxes of this platform instance.
#[derive(Clone)]
pub struct Sandboxes {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn invalid(code: &'static str, message: impl Into<String>) -> SandboxError {
    SandboxError::Invalid { code, message: message.into() }
}

fn now_rfc3339() -> String {
    rfc3339_in(Duration::ZERO)
}

fn rfc3339_in(d: Duration) -> String {
    let ms =
        SystemTime::now().checked_add(d).and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis());
    platform::runtime::rfc3339(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn valid_workspace(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_egress_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    (1..=253).contains(&name.len())
        && name.contains('.')
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn valid_env_var(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Sandboxes {
    /// Creates the registry and its supervisor (lifetimes, idle timeouts, usage sampling).
    pub fn new(platform: Platform, backend: Arc<dyn Backend>, defaults: SandboxDefaults) -> Self {
        let inner = Arc::new(Inner {
            platform,
            backend,
            defaults,
            live: Mutex::default(),
            busy: Mutex::default(),
            egress: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let tick = Duration::from_millis(500);
            loop {
                tokio::time::sleep(tick).await;
                let Some(inner) = weak.upgrade() else { return };
                Sandboxes { inner }.supervise(tick).await;
            }
        });
        Self { inner }
    }

    /// Installs the egress proxy (once); sandboxes started before have no way out.
    pub fn set_egress(&self, handler: crate::EgressHandler) {
        let _ = self.inner.egress.set(handler);
    }

    pub fn backend_name(&self) -> String {
        self.inner.backend.name()
    }

    async fn supervise(&self, tick: Duration) {
        let now = Instant::now();
        let live: Vec<(String, Arc<Live>)> =
            lock(&self.inner.live).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (id, sb) in live {
            let mb = sb.instance.usage().memory_bytes / (1024 * 1024);
            sb.mem_mb_ms.fetch_add(mb * tick.as_millis() as u64, Ordering::Relaxed);
            let expired = *lock(&sb.deadline) <= now;
            let idle = sb.idle.is_some_and(|i| lock(&sb.last_used).elapsed() >= i);
            let dead = !sb.instance.alive().await;
            if expired || idle || dead {
                let reason = if expired {
                    "lifetime"
                } else if idle {
                    "idle"
                } else {
                    "exited"
                };
                tracing::info!(sandbox = %id, reason, "ending sandbox");
                let env = lock(&sb.record).env.clone();
                if let Ok(env) = EnvId::parse(&env) {
                    let _ = self.kill(&env, &id).await;
                }
            }
        }
    }

    /// Starts a sandbox for `env`.
    pub async fn create(
        &self,
        actor: &Actor,
        env: &EnvId,
        req: CreateSandboxRequest,
    ) -> Result<SandboxRecord, SandboxError> {
        let d = &self.inner.defaults;
        let timeout = req.timeout_seconds.map_or(d.timeout, Duration::from_secs);
        if timeout.is_zero() || timeout.as_secs() > MAX_SANDBOX_SECONDS {
            return Err(invalid("invalid_timeout", format!("timeout_seconds must be 1..={MAX_SANDBOX_SECONDS}")));
        }
        let idle = req.idle_timeout_seconds.map(Duration::from_secs);
        if idle.is_some_and(|i| i.is_zero() || i.as_secs() > MAX_SANDBOX_SECONDS) {
            return Err(invalid("invalid_timeout", format!("idle_timeout_seconds must be 1..={MAX_SANDBOX_SECONDS}")));
        }
        let memory_mb = req.memory_mb.unwrap_or(d.memory_mb);
        let max_processes = req.max_processes.unwrap_or(d.max_processes);
        let cpu_percent = req.cpu_percent.unwrap_or(d.cpu_percent);
        let disk_mb = req.disk_mb.unwrap_or(d.disk_mb);
        if !(16..=16384).contains(&memory_mb) {
            return Err(invalid("invalid_limits", "memory_mb must be 16..=16384"));
        }
        if !(8..=4096).contains(&max_processes) {
            return Err(invalid("invalid_limits", "max_processes must be 8..=4096"));
        }
        if !(1..=800).contains(&cpu_percent) {
            return Err(invalid("invalid_limits", "cpu_percent must be 1..=800"));
        }
        if !(4..=65536).contains(&disk_mb) {
            return Err(invalid("invalid_limits", "disk_mb must be 4..=65536"));
        }
        if let Some(w) = &req.workspace
            && !valid_workspace(w)
        {
            return Err(invalid("invalid_workspace", "workspace names are 1..=63 of a-z, 0-9, '-', '_'"));
        }
        if let Some(t) = &req.template {
            if !crate::valid_template_name(t) {
                return Err(invalid("invalid_template", "template names are 1..=63 of a-z, 0-9, '-', '_'"));
            }
            if req.workspace.is_some() {
                return Err(invalid("invalid_template", "a template starts a disposable workspace; drop `workspace`"));
            }
            if !self.inner.backend.templates().contains(t) {
                return Err(invalid("template_not_found", format!("no template {t}")));
            }
        }
        if let Some(s) = &req.session
            && (s.is_empty() || s.len() > 128)
        {
            return Err(invalid("invalid_session", "session must be 1..=128 characters"));
        }
        if req.env_vars.len() > 256
            || req.env_vars.iter().any(|(k, v)| !valid_env_var(k) || v.contains('\0') || v.len() > 32768)
        {
            return Err(invalid(
                "invalid_env_vars",
                "environment variable names are [A-Za-z_][A-Za-z0-9_]*, values without NUL",
            ));
        }
        if req.env_vars.keys().any(|k| k.starts_with("VIBEBASE_")) {
            return Err(invalid("invalid_env_vars", "VIBEBASE_* variables are set by the platform"));
        }
        if req.allow_egress.len() > 64 || req.allow_egress.iter().any(|h| !valid_egress_host(h)) {
            return Err(invalid("invalid_egress", "allow_egress holds host names (or *.domain), at most 64"));
        }
        if req.metadata.len() > 64 || req.metadata.iter().any(|(k, v)| k.len() > 128 || v.len() > 1024) {
            return Err(invalid("invalid_metadata", "at most 64 metadata entries (keys ≤ 128, values ≤ 1024 bytes)"));
        }
        if lock(&self.inner.live).len() >= d.max_live {
            return Err(SandboxError::TooMany(d.max_live));
        }
        let busy_key = req.workspace.as_ref().map(|w| (env.to_string(), w.clone()));
        if let Some(k) = &busy_key
            && !lock(&self.inner.busy).insert(k.clone())
        {
            return Err(SandboxError::WorkspaceBusy(k.1.clone()));
        }
        if let Some(snap) = &req.snapshot
            && !valid_snapshot_id(snap)
        {
            return Err(invalid("invalid_snapshot", "not a snapshot id"));
        }
        let snapshot = req.snapshot.clone();
        let mut result =
            self.start(actor, env, req, timeout, idle, (memory_mb, max_processes, cpu_percent, disk_mb)).await;
        if let (Ok(record), Some(snap)) = (&result, snapshot)
            && let Err(e) = self.restore(env, &record.id, &snap).await
        {
            let _ = self.kill(env, &record.id).await;
            result = Err(e);
        }
        if result.is_err()
            && let Some(k) = &busy_key
        {
            lock(&self.inner.busy).remove(k);
        }
        result
    }

    async fn start(
        &self,
        actor: &Actor,
        env: &EnvId,
        req: CreateSandboxRequest,
        timeout: Duration,
        idle: Option<Duration>,
        (memory_mb, max_processes, cpu_percent, disk_mb): (u64, u64, u32, u64),
    ) -> Result<SandboxRecord, SandboxError> {
        let platform = &self.inner.platform;
        let id = format!("sb{}", platform.random_id(14).to_ascii_lowercase());
        let mint = |actions: Vec<String>, holder: String| MintTokenRequest {
            ttl_seconds: (timeout.as_secs() + 60).min(MAX_SANDBOX_SECONDS),
            session: req.session.clone(),
            actions,
            holder: Some(holder),
        };
        // The sandbox's only credential: scoped to its env (and session), dead when the sandbox ends.
        // It reaches the env's data plane, never sandboxes (the hands do not start more hands).
        let hands = HANDS_ACTIONS.iter().map(|a| (*a).to_owned()).collect();
        let token = platform.mint_token(actor, env, mint(hands, format!("sandbox:{id}"))).await?;
        // The caller's key for this sandbox's envd API (E2B's `envdAccessToken`), bound to it.
        let envd = platform.mint_token(actor, env, mint(vec![ENVD_ACTION.to_owned()], envd_holder(&id))).await;
        let envd = match envd {
            Ok(t) => t,
            Err(e) => {
                let _ = platform.revoke_key(actor, env, &token.id).await;
                return Err(e.into());
            }
        };
        let api = format!("http://{SANDBOX_API_HOST}/env/{env}");
        let mut env_vars: BTreeMap<String, String> = req.env_vars.clone();
        env_vars.insert("VIBEBASE_ENV".to_owned(), env.to_string());
        env_vars.insert("VIBEBASE_SANDBOX_ID".to_owned(), id.clone());
        env_vars.insert("VIBEBASE_LLM_URL".to_owned(), format!("{api}/llm/v1"));
        env_vars.insert("VIBEBASE_API_URL".to_owned(), api);
        env_vars.insert("VIBEBASE_TOKEN".to_owned(), token.token.clone());
        // The only way out: the agent's relay to the platform's egress proxy.
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env_vars.insert(k.to_owned(), format!("http://127.0.0.1:{}", crate::agent::EGRESS_PORT));
        }
        for k in ["NO_PROXY", "no_proxy"] {
            env_vars.insert(k.to_owned(), "localhost,127.0.0.1,::1".to_owned());
        }
        let egress = self.inner.egress.get().map(|h| {
            let ctx = crate::EgressContext {
                env: env.clone(),
                sandbox: id.clone(),
                session: req.session.clone(),
                allow: req.allow_egress.iter().map(|h| h.to_ascii_lowercase()).collect(),
            };
            (ctx, h.clone())
        });
        let workspace_image = req.workspace.as_ref().map(|w| workspace_image(platform, env, w));
        let plan = StartPlan {
            id: id.clone(),
            env: env.clone(),
            memory_bytes: memory_mb * 1024 * 1024,
            max_processes,
            cpu_percent,
            disk_bytes: disk_mb * 1024 * 1024,
            workspace_image,
            template: req.template.clone(),
            env_vars,
            egress,
        };
        let instance = match self.inner.backend.start(plan).await {
            Ok(i) => i,
            Err(e) => {
                let _ = platform.revoke_key(actor, env, &token.id).await;
                let _ = platform.revoke_key(actor, env, &envd.id).await;
                return Err(e);
            }
        };
        let record = SandboxRecord {
            id: id.clone(),
            env: env.to_string(),
            state: SandboxState::Running,
            workspace: req.workspace,
            template: req.template,
            session: req.session,
            started_at: now_rfc3339(),
            expires_at: rfc3339_in(timeout),
            memory_mb,
            max_processes,
            cpu_percent,
            disk_mb,
            metadata: req.metadata,
            backend: self.inner.backend.name(),
            envd_access_token: envd.token,
        };
        let live = Arc::new(Live {
            record: Mutex::new(record.clone()),
            instance,
            deadline: Mutex::new(Instant::now() + timeout),
            idle,
            last_used: Mutex::new(Instant::now()),
            token_id: token.id,
            mem_mb_ms: AtomicU64::new(0),
        });
        lock(&self.inner.live).insert(id, live);
        Ok(record)
    }

    fn find(&self, env: &EnvId, id: &str) -> Result<Arc<Live>, SandboxError> {
        let sb = lock(&self.inner.live).get(id).cloned().ok_or(SandboxError::NotFound)?;
        // Another env's sandbox is indistinguishable from a missing one.
        if lock(&sb.record).env != env.as_str() {
            return Err(SandboxError::NotFound);
        }
        Ok(sb)
    }

    pub fn get(&self, env: &EnvId, id: &str) -> Result<SandboxRecord, SandboxError> {
        Ok(lock(&self.find(env, id)?.record).clone())
    }

    pub fn list(&self, env: &EnvId) -> Vec<SandboxRecord> {
        let mut out: Vec<SandboxRecord> = lock(&self.inner.live)
            .values()
            .map(|sb| lock(&sb.record).clone())
            .filter(|r| r.env == env.as_str())
            .collect();
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        out
    }

    /// The agent of a running sandbox, for an API call (which counts as activity).
    pub fn agent(&self, env: &EnvId, id: &str) -> Result<AgentClient, SandboxError> {
        let sb = self.find(env, id)?;
        if lock(&sb.record).state == SandboxState::Paused {
            return Err(SandboxError::Paused);
        }
        *lock(&sb.last_used) = Instant::now();
        Ok(sb.instance.agent())
    }

    /// Revokes the sandbox's own token at once. For holders that get narrower per-use tokens instead
    /// (a function runner is given one per invocation), so no standing credential stays inside.
    pub async fn drop_token(&self, env: &EnvId, id: &str) -> Result<(), SandboxError> {
        let sb = self.find(env, id)?;
        let actor = Actor { name: "platform:sandboxes".to_owned(), request_id: String::new() };
        self.inner.platform.revoke_key(&actor, env, &sb.token_id).await?;
        Ok(())
    }

    /// Resource use so far (for tests and the API).
    pub fn usage(&self, env: &EnvId, id: &str) -> Result<crate::Usage, SandboxError> {
        Ok(self.find(env, id)?.instance.usage())
    }

    pub async fn pause(&self, env: &EnvId, id: &str) -> Result<SandboxRecord, SandboxError> {
        let sb = self.find(env, id)?;
        sb.instance.pause().await?;
        let mut r = lock(&sb.record);
        r.state = SandboxState::Paused;
        Ok(r.clone())
    }

    pub async fn resume(&self, env: &EnvId, id: &str) -> Result<SandboxRecord, SandboxError> {
        let sb = self.find(env, id)?;
        sb.instance.resume().await?;
        *lock(&sb.last_used) = Instant::now();
        let mut r = lock(&sb.record);
        r.state = SandboxState::Running;
        Ok(r.clone())
    }

    /// The sandbox now lives `timeout` from now.
    pub fn set_timeout(&self, env: &EnvId, id: &str, timeout: Duration) -> Result<SandboxRecord, SandboxError> {
        if timeout.is_zero() || timeout.as_secs() > MAX_SANDBOX_SECONDS {
            return Err(invalid("invalid_timeout", format!("timeout_seconds must be 1..={MAX_SANDBOX_SECONDS}")));
        }
        let sb = self.find(env, id)?;
        *lock(&sb.deadline) = Instant::now() + timeout;
        *lock(&sb.last_used) = Instant::now();
        let mut r = lock(&sb.record);
        r.expires_at = rfc3339_in(timeout);
        Ok(r.clone())
    }

    /// Kills a sandbox: its processes, its host resources, its token; then meters its usage.
    pub async fn kill(&self, env: &EnvId, id: &str) -> Result<(), SandboxError> {
        let sb = self.find(env, id)?;
        // Whoever removes it from the registry does the teardown, exactly once.
        if lock(&self.inner.live).remove(id).is_none() {
            return Ok(());
        }
        let usage = sb.instance.usage();
        let destroyed = sb.instance.destroy().await;
        let record = lock(&sb.record).clone();
        if let Some(w) = &record.workspace {
            lock(&self.inner.busy).remove(&(record.env.clone(), w.clone()));
        }
        let platform = &self.inner.platform;
        let actor = Actor { name: "platform:sandboxes".to_owned(), request_id: String::new() };
        if let Err(e) = platform.revoke_key(&actor, env, &sb.token_id).await {
            tracing::warn!(sandbox = %id, error = %e, "could not revoke the sandbox token");
        }
        let mut dimensions = BTreeMap::new();
        if let Some(s) = &record.session {
            dimensions.insert("session".to_owned(), s.clone());
        }
        let mem_mb_s = sb.mem_mb_ms.load(Ordering::Relaxed) / 1000;
        for (meter, quantity) in [("sandbox_cpu_ms", usage.cpu_us / 1000), ("sandbox_mem_mb_s", mem_mb_s)] {
            let event = UsageEventInput {
                meter: meter.to_owned(),
                quantity: i64::try_from(quantity).unwrap_or(i64::MAX),
                source: "sandbox".to_owned(),
                event_id: format!("{id}:{meter}"),
                at: None,
                dimensions: dimensions.clone(),
            };
            if let Err(e) = platform.record_usage(env, event).await {
                tracing::warn!(sandbox = %id, error = %e, "could not record sandbox usage");
            }
        }
        destroyed
    }

    /// A `tar.gz` of a directory of the sandbox, made inside the sandbox (`tar | gzip`), so no spelling
    /// of `dir` reaches anything the sandbox itself cannot read.
    async fn tar_dir(
        &self,
        env: &EnvId,
        id: &str,
        dir: &str,
        limit: usize,
        code: &'static str,
        exclude: &[&str],
    ) -> Result<Vec<u8>, SandboxError> {
        let agent = self.agent(env, id)?;
        let mut argv: Vec<String> = ["tar", "-C", dir, "-czf", "-"].map(str::to_owned).to_vec();
        // GNU tar: an unanchored pattern leaves out every file or directory of that name, at any depth.
        argv.extend(exclude.iter().map(|e| format!("--exclude={e}")));
        argv.push(".".to_owned());
        let spec = crate::proto::ExecSpec { argv, timeout_ms: Some(600_000), ..Default::default() };
        let done = agent.run(spec, None, crate::client::OutputLimit(limit)).await?;
        // GNU tar exits 1 when a file changed while it was read: the archive is still whole.
        if done.truncated || !(0..=1).contains(&done.exit_code) {
            let why = if done.truncated {
                format!("{dir} is over {limit} bytes as an archive")
            } else {
                String::from_utf8_lossy(&done.stderr).into_owned()
            };
            return Err(invalid(code, why));
        }
        Ok(done.stdout)
    }

    /// A `tar.gz` of `path` (absolute, or relative to the workspace) of a sandbox, at most `limit`
    /// bytes: what a static deployment from a sandbox is made of.
    pub async fn archive_dir(&self, env: &EnvId, id: &str, path: &str, limit: usize) -> Result<Vec<u8>, SandboxError> {
        let dir = if path.starts_with('/') { path.to_owned() } else { format!("{}/{path}", crate::agent::WORKSPACE) };
        self.tar_dir(env, id, &dir, limit, "archive_failed", &[]).await
    }

    /// Archives the sandbox's workspace (`tar | gzip`, run inside the sandbox) into the object store,
    /// without the files and directories named in `exclude` (at any depth).
    pub async fn snapshot(&self, env: &EnvId, id: &str, exclude: &[&str]) -> Result<SnapshotRecord, SandboxError> {
        let stdout =
            self.tar_dir(env, id, crate::agent::WORKSPACE, MAX_SNAPSHOT_BYTES, "snapshot_failed", exclude).await?;
        let snap = format!("snap{}", self.inner.platform.random_id(16).to_ascii_lowercase());
        let size = stdout.len() as u64;
        self.inner
            .platform
            .blobs()
            .put(&snapshot_key(&self.inner.platform, env, &snap), stdout.into())
            .await
            .map_err(|e| SandboxError::Platform(e.into()))?;
        Ok(SnapshotRecord { id: snap, sandbox: id.to_owned(), size_bytes: size, created_at: now_rfc3339() })
    }

    /// Unpacks a snapshot of the env into the sandbox's workspace (over what is there).
    pub async fn restore(&self, env: &EnvId, id: &str, snapshot: &str) -> Result<(), SandboxError> {
        if !valid_snapshot_id(snapshot) {
            return Err(invalid("invalid_snapshot", "not a snapshot id"));
        }
        let agent = self.agent(env, id)?;
        let data = self
            .inner
            .platform
            .blobs()
            .get(&snapshot_key(&self.inner.platform, env, snapshot))
            .await
            .map_err(|e| SandboxError::Platform(e.into()))?
            .ok_or_else(|| SandboxError::Invalid {
                code: "snapshot_not_found",
                message: format!("no snapshot {snapshot}"),
            })?;
        let spec = crate::proto::ExecSpec {
            argv: ["tar", "-C", crate::agent::WORKSPACE, "-xzf", "-"].map(str::to_owned).to_vec(),
            stdin: true,
            timeout_ms: Some(600_000),
            ..Default::default()
        };
        let done = agent.run(spec, Some(data.to_vec()), crate::client::OutputLimit(64 * 1024)).await?;
        if done.exit_code != 0 {
            return Err(invalid("restore_failed", String::from_utf8_lossy(&done.stderr).into_owned()));
        }
        Ok(())
    }

    /// Stores a workspace template (platform-wide) from a `tar.gz` archive.
    pub async fn put_template(&self, name: &str, archive: Vec<u8>) -> Result<(), SandboxError> {
        if !crate::valid_template_name(name) {
            return Err(invalid("invalid_template", "template names are 1..=63 of a-z, 0-9, '-', '_'"));
        }
        self.inner.backend.put_template(name, archive).await
    }

    pub fn templates(&self) -> Vec<String> {
        self.inner.backend.templates()
    }

    pub async fn delete_template(&self, name: &str) -> Result<(), SandboxError> {
        if !crate::valid_template_name(name) || !self.templates().iter().any(|t| t == name) {
            return Err(invalid("template_not_found", format!("no template {name}")));
        }
        self.inner.backend.delete_template(name).await
    }

    /// The env's snapshot ids.
    pub async fn snapshots(&self, env: &EnvId) -> Result<Vec<String>, SandboxError> {
        let prefix = snapshot_key(&self.inner.platform, env, "");
        let keys = self.inner.platform.blobs().list(&prefix).await.map_err(|e| SandboxError::Platform(e.into()))?;
        let mut ids: Vec<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix).and_then(|n| n.strip_suffix(".tar.gz")).map(str::to_owned))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Kills every sandbox of an env (the env is being deleted).
    pub async fn kill_env(&self, env: &EnvId) {
        let ids: Vec<String> = self.list(env).into_iter().map(|r| r.id).collect();
        for id in ids {
            if let Err(e) = self.kill(env, &id).await {
                tracing::warn!(sandbox = %id, error = %e, "teardown of a sandbox of a deleted env failed");
            }
        }
    }

    /// Kills every sandbox of this registry.
    pub async fn kill_all(&self) {
        let all: Vec<(String, String)> =
            lock(&self.inner.live).iter().map(|(id, sb)| (lock(&sb.record).env.clone(), id.clone())).collect();
        for (env, id) in all {
            if let Ok(env) = EnvId::parse(&env) {
                let _ = self.kill(&env, &id).await;
            }
        }
    }

    /// Kills every sandbox and releases the backend (the platform is stopping).
    pub async fn shutdown(&self) {
        self.kill_all().await;
        self.inner.backend.shutdown().await;
    }
}

/// The largest workspace archive a snapshot keeps.
const MAX_SNAPSHOT_BYTES: usize = 2 * 1024 * 1024 * 1024;

fn valid_snapshot_id(id: &str) -> bool {
    id.len() == 20 && id.starts_with("snap") && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Snapshots live under the env's object prefix, so deleting the env deletes them.
fn snapshot_key(platform: &Platform, env: &EnvId, id: &str) -> String {
    let prefix = platform.layout(env).object_prefix;
    if id.is_empty() { format!("{prefix}snapshots/") } else { format!("{prefix}snapshots/{id}.tar.gz") }
}

/// Where a named workspace's image lives: in the env's data directory, so deleting the env deletes it.
fn workspace_image(platform: &Platform, env: &EnvId, name: &str) -> std::path::PathBuf {
    platform.layout(env).data_dir.join("workspaces").join(format!("{name}.img"))
}
