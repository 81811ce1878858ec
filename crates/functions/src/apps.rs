//! Container apps: a long-lived web server of an env (`node server.js`, `npm start`, any command) in a
//! sandbox of its own, reached through the agent's port forward (no TCP path into the sandbox).
//!
//! - Definition (command, port, sealed env vars, health check, idle timeout, memory) and source (a
//!   checked `tar.gz`, dependencies installed as for functions) live in the platform store and the
//!   object store, so an app survives a restart of the platform; the running instance is process state,
//!   started on demand.
//! - A supervisor task per running app: sandbox, source unpacked, command started with `PORT`; healthy
//!   once `GET <health path>` answers below 500; health checked every interval (three failures in a row
//!   restart it); a crash restarts it after an exponential backoff; no request for the idle timeout
//!   stops it (scale to zero).
//! - [`Apps::connect`] is what a request does: it waits (bounded) until the instance is healthy and
//!   holds a [`Lease`] while it is served, so an open request or WebSocket keeps the app awake.
//! - Logs: the last lines of stdout, stderr and the supervisor's own notes, in memory, bounded.
//! - Meter: `container_cpu_ms`, the CPU time of the app's sandbox, sampled at each health check and
//!   when the sandbox ends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use platform::{Actor, Platform, PlatformError};
use protocol::apps::{
    AppList, AppLogLine, AppLogList, AppRecord, AppSource, AppStatus, AppUrls, HealthCheck, PutAppRequest,
};
use protocol::sandbox::CreateSandboxRequest;
use protocol::{EnvId, Meter};
use sandbox::proto::{ExecEvent, ExecSpec};
use sandbox::{AgentClient, SandboxError, Sandboxes};
use sha2::Digest as _;
use store::{Row, StoreError, Value};
use tokio::sync::watch;

use crate::{FunctionError, archive, seal};

/// Where an app's source is unpacked inside its sandbox (its working directory).
pub const APP_DIR: &str = "/home/user/app";
/// Consecutive failed health checks after which a running app is restarted.
const HEALTH_FAILURES: u32 = 3;
/// A run this long resets the crash backoff.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// Bytes kept of one log line.
const MAX_LOG_LINE: usize = 4096;

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct AppsConfig {
    /// `VIBEBASE_MASTER_KEY`; without it the key is kept in `<data dir>/master.key`.
    pub master_key: Option<String>,
    /// How long a request waits for a stopped or starting app to become healthy before 503.
    pub wake_timeout: Duration,
    /// How long a new process has to become healthy before it counts as crashed.
    pub start_timeout: Duration,
    /// First restart delay after a crash; doubled per crash in a row, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Log lines kept per app.
    pub log_lines: usize,
    pub archive_limits: archive::Limits,
    pub install_timeout: Duration,
}

impl Default for AppsConfig {
    fn default() -> Self {
        Self {
            master_key: None,
            wake_timeout: Duration::from_secs(60),
            start_timeout: Duration::from_secs(60),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            log_lines: 2000,
            archive_limits: archive::Limits::default(),
            install_timeout: Duration::from_secs(300),
        }
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No such app in this env.
    #[error("app not found")]
    NotFound,
    /// The request is malformed or out of range.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The source archive was refused.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// `npm install` failed at upload time (its output tail is the message).
    #[error("installing dependencies failed: {0}")]
    InstallFailed(String),
    /// The app has a definition but no source yet.
    #[error("the app has no source yet: upload an archive first")]
    NoSource,
    /// The app did not become healthy within the wake timeout.
    #[error("{0}")]
    Unavailable(String),
    /// Sandboxes are unavailable or failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The platform (store, object store) failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The master key is unusable or the sealed env vars do not open.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        Self::Platform(e.into())
    }
}

impl From<store::BlobError> for AppError {
    fn from(e: store::BlobError) -> Self {
        Self::Platform(e.into())
    }
}

impl From<FunctionError> for AppError {
    fn from(e: FunctionError) -> Self {
        match e {
            FunctionError::NotFound { .. } => Self::NotFound,
            FunctionError::Invalid { code, message } => Self::Invalid { code, message },
            FunctionError::Archive(a) => Self::Archive(a),
            FunctionError::InstallFailed(m) => Self::InstallFailed(m),
            FunctionError::Sandbox(s) => Self::Sandbox(s),
            FunctionError::Platform(p) => Self::Platform(p),
            FunctionError::Seal(s) => Self::Seal(s),
            other @ (FunctionError::Busy(_) | FunctionError::Failed { .. }) => Self::Unavailable(other.to_string()),
        }
    }
}

fn invalid(code: &'static str, message: impl Into<String>) -> AppError {
    AppError::Invalid { code, message: message.into() }
}

/// App names are DNS labels that start with a letter and never contain `--` (so `<app>--<env>` is
/// unambiguous, and never reads as a sandbox port `<port>-<sandbox>` or a deployment id `dpl…`).
pub fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
        && !name.contains("--")
        && !(name.len() == 13 && name.starts_with("dpl"))
}

fn check_name(name: &str) -> Result<(), AppError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(invalid(
            "invalid_app_name",
            "app names are 1..=40 lowercase letters, digits and single hyphens, starting with a letter",
        ))
    }
}

/// A checked definition, as stored.
#[derive(Debug, Clone)]
struct Definition {
    command: String,
    port: u16,
    env: BTreeMap<String, String>,
    health: HealthCheck,
    idle: Duration,
    memory_mb: u64,
}

fn check_definition(req: PutAppRequest) -> Result<Definition, AppError> {
    let command = req.command.trim().to_owned();
    if command.is_empty() || command.len() > 4096 || command.contains('\0') {
        return Err(invalid("invalid_command", "the command must be 1..=4096 bytes of shell, without NUL"));
    }
    let port = u16::try_from(req.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid("invalid_port", format!("port {} is not a TCP port (1..=65535)", req.port)))?;
    if port == sandbox::agent::EGRESS_PORT {
        return Err(invalid("invalid_port", format!("port {port} is reserved for the sandbox's egress relay")));
    }
    if req.env.len() > 100 {
        return Err(invalid("invalid_env", "at most 100 environment variables"));
    }
    for (k, v) in &req.env {
        let shaped = (1..=256).contains(&k.len())
            && k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !shaped {
            return Err(invalid("invalid_env", format!("{k:?} is not an environment variable name")));
        }
        if k == "PORT" || k.starts_with("VIBEBASE_") || k.ends_with("_PROXY") || k.ends_with("_proxy") {
            return Err(invalid("invalid_env", format!("{k} is set by the platform")));
        }
        if v.len() > 64 * 1024 || v.contains('\0') {
            return Err(invalid("invalid_env", format!("{k} is over 64 KiB or contains NUL")));
        }
    }
    let health = req.health_check.unwrap_or_default();
    let path_ok =
        health.path.starts_with('/') && health.path.len() <= 1024 && health.path.bytes().all(|b| b.is_ascii_graphic());
    if !path_ok {
        return Err(invalid("invalid_health_check", "the health check path is an absolute path of visible ASCII"));
    }
    if !(100..=3_600_000).contains(&health.interval_ms) {
        return Err(invalid("invalid_health_check", "the health check interval must be 100..=3600000 ms"));
    }
    let idle = req.idle_timeout_seconds.unwrap_or(300);
    if !(1..=86_400).contains(&idle) {
        return Err(invalid("invalid_idle_timeout", "idle_timeout_seconds must be 1..=86400"));
    }
    let memory_mb = req.memory_mb.unwrap_or(512);
    if !(64..=8192).contains(&memory_mb) {
        return Err(invalid("invalid_memory", "memory_mb must be 64..=8192"));
    }
    Ok(Definition { command, port, env: req.env, health, idle: Duration::from_secs(idle), memory_mb })
}

/// What a running instance needs to start (the definition with its opened env vars and its source).
#[derive(Debug, Clone)]
struct Spec {
    def: Definition,
    blob_key: Option<String>,
}

/// How one run of the app's process ended.
enum Ended {
    /// Asked to stop (delete, update, restart, shutdown).
    Stopped,
    /// No request for the idle timeout.
    Idle,
    Crashed(String),
}

#[derive(Default)]
struct Shared {
    /// The sandbox serving requests (set once healthy, cleared before it is torn down).
    serving: Option<String>,
    port: u16,
    restarts: u64,
    /// A supervisor task runs; its stop switch.
    stop: Option<watch::Sender<bool>>,
    /// Why the last run ended badly, for the 503 of a request that waited in vain.
    last_error: Option<String>,
}

/// An app's state on this platform instance.
struct Instance {
    env: EnvId,
    name: String,
    status: watch::Sender<AppStatus>,
    shared: Mutex<Shared>,
    /// Requests and connections in flight (each holds a [`Lease`] or waits for one).
    active: AtomicUsize,
    last_request: Mutex<Instant>,
    logs: Mutex<VecDeque<AppLogLine>>,
}

impl Instance {
    fn idle_for(&self) -> Duration {
        if self.active.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        lock(&self.last_request).elapsed()
    }

    fn log(&self, stream: &str, text: &str, max: usize, now_ms: i64) {
        let mut logs = lock(&self.logs);
        for line in text.split_terminator('\n') {
            let mut line = line.trim_end_matches('\r').to_owned();
            if line.len() > MAX_LOG_LINE {
                let mut cut = MAX_LOG_LINE;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
            logs.push_back(AppLogLine { at: platform::runtime::rfc3339(now_ms), stream: stream.to_owned(), line });
            while logs.len() > max {
                logs.pop_front();
            }
        }
    }

    fn hold(self: &Arc<Self>) -> Hold {
        self.active.fetch_add(1, Ordering::SeqCst);
        *lock(&self.last_request) = Instant::now();
        Hold(self.clone())
    }
}

/// Keeps an app awake while a request waits or is served.
struct Hold(Arc<Instance>);

impl Drop for Hold {
    fn drop(&mut self) {
        *lock(&self.0.last_request) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A healthy instance to send one request (or connection) to; keeps the app awake until dropped.
pub struct Lease {
    pub sandbox: String,
    pub port: u16,
    _hold: Hold,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("sandbox", &self.sandbox).field("port", &self.port).finish()
    }
}

struct Inner {
    platform: Platform,
    sandboxes: Sandboxes,
    config: AppsConfig,
    key: OnceLock<Arc<seal::MasterKey>>,
    instances: Mutex<HashMap<(String, String), Arc<Instance>>>,
}

/// The container apps of this platform instance.
#[derive(Clone)]
pub struct Apps {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

const COLUMNS: &str = "name, command, port, env_names, health_path, health_interval_ms, idle_timeout_ms, memory_mb, \
                       blob_key, sha256, size_bytes, dependencies, uploaded_at, created_at, updated_at, env_sealed";

/// A stored row: the record's parts that do not depend on the instance, the blob key and sealed env.
struct Stored {
    name: String,
    command: String,
    port: u16,
    env_names: Vec<String>,
    health: HealthCheck,
    idle_ms: u64,
    memory_mb: u64,
    blob_key: Option<String>,
    source: Option<AppSource>,
    created_at: i64,
    updated_at: i64,
    env_sealed: Option<String>,
}

fn stored(row: &Row) -> Result<Stored, StoreError> {
    let u = |i: usize| -> Result<u64, StoreError> { Ok(u64::try_from(row.int(i)?).unwrap_or(0)) };
    let blob_key = row.opt_text(8)?;
    let source = match (&blob_key, row.opt_text(9)?) {
        (Some(_), Some(sha256)) => Some(AppSource {
            sha256,
            size_bytes: u(10)?,
            dependencies_installed: row.int(11)? != 0,
            uploaded_at: platform::runtime::rfc3339(row.int(12)?),
        }),
        _ => None,
    };
    Ok(Stored {
        name: row.text(0)?,
        command: row.text(1)?,
        port: u16::try_from(row.int(2)?).unwrap_or(0),
        env_names: serde_json::from_str(&row.text(3)?).unwrap_or_default(),
        health: HealthCheck { path: row.text(4)?, interval_ms: u(5)? },
        idle_ms: u(6)?,
        memory_mb: u(7)?,
        blob_key,
        source,
        created_at: row.int(13)?,
        updated_at: row.int(14)?,
        env_sealed: row.opt_text(15)?,
    })
}

fn slot(env: &EnvId, name: &str) -> String {
    format!("app/{env}/{name}/env")
}

impl Apps {
    /// Creates the registry (no app runs until a request asks for it).
    pub fn new(platform: Platform, sandboxes: Sandboxes, config: AppsConfig) -> Self {
        let apps = Self {
            inner: Arc::new(Inner { platform, sandboxes, config, key: OnceLock::new(), instances: Mutex::default() }),
        };
        apps.register_delete_hook();
        apps
    }

    fn master_key(&self) -> Result<Arc<seal::MasterKey>, AppError> {
        if let Some(k) = self.inner.key.get() {
            return Ok(k.clone());
        }
        let key =
            seal::MasterKey::load(self.inner.config.master_key.as_deref(), &self.inner.platform.config().data_dir)?;
        Ok(self.inner.key.get_or_init(|| Arc::new(key)).clone())
    }

    fn register_delete_hook(&self) {
        self.inner.platform.on_env_delete_weak(&self.inner, |inner, env| async move {
            let apps = Apps { inner };
            let mine: Vec<Arc<Instance>> = {
                let mut all = lock(&apps.inner.instances);
                let keys: Vec<_> = all.keys().filter(|(e, _)| e == env.as_str()).cloned().collect();
                keys.iter().filter_map(|k| all.remove(k)).collect()
            };
            for inst in mine {
                apps.stop_and_wait(&inst).await;
            }
            apps.inner.platform.db().delete_env_rows(env.as_str(), &["apps"]).await.map_err(|e| e.to_string())
        });
    }

    fn blob_prefix(&self, env: &EnvId, name: &str) -> String {
        format!("{}apps/{name}/", self.inner.platform.layout(env).object_prefix)
    }

    fn urls(&self, env: &EnvId, name: &str) -> AppUrls {
        let c = self.inner.platform.config();
        AppUrls {
            site: format!("{}://{name}--{env}.{}{}/", c.site_scheme, c.apps_domain, c.site_port_suffix),
            path: format!("/env/{env}/apps/{name}/"),
        }
    }

    fn instance(&self, env: &EnvId, name: &str) -> Option<Arc<Instance>> {
        lock(&self.inner.instances).get(&(env.to_string(), name.to_owned())).cloned()
    }

    fn instance_or_new(&self, env: &EnvId, name: &str) -> Arc<Instance> {
        lock(&self.inner.instances)
            .entry((env.to_string(), name.to_owned()))
            .or_insert_with(|| {
                Arc::new(Instance {
                    env: env.clone(),
                    name: name.to_owned(),
                    status: watch::channel(AppStatus::Stopped).0,
                    shared: Mutex::default(),
                    active: AtomicUsize::new(0),
                    last_request: Mutex::new(Instant::now()),
                    logs: Mutex::default(),
                })
            })
            .clone()
    }

    fn record(&self, env: &EnvId, s: Stored) -> AppRecord {
        let (status, restarts, last_error) = match self.instance(env, &s.name) {
            Some(i) => {
                let shared = lock(&i.shared);
                (*i.status.borrow(), shared.restarts, shared.last_error.clone())
            }
            None => (AppStatus::Stopped, 0, None),
        };
        AppRecord {
            urls: self.urls(env, &s.name),
            name: s.name,
            command: s.command,
            port: u32::from(s.port),
            env: s.env_names,
            health_check: s.health,
            idle_timeout_seconds: s.idle_ms / 1000,
            memory_mb: s.memory_mb,
            source: s.source,
            status,
            restarts,
            last_error,
            created_at: platform::runtime::rfc3339(s.created_at),
            updated_at: platform::runtime::rfc3339(s.updated_at),
        }
    }

    async fn load(&self, env: &EnvId, name: Option<&str>) -> Result<Vec<Stored>, AppError> {
        let (id, n) = (env.to_string(), name.map(str::to_owned));
        let rows = self
            .inner
            .platform
            .db()
            .tx(move |conn| {
                let mut sql = format!("SELECT {COLUMNS} FROM apps WHERE env_id = $1");
                let mut params: Vec<Value> = vec![id.as_str().into()];
                if let Some(n) = &n {
                    sql.push_str(" AND name = $2");
                    params.push(n.as_str().into());
                }
                sql.push_str(" ORDER BY name");
                conn.query(&sql, &params)
            })
            .await?;
        rows.iter().map(|r| stored(r).map_err(AppError::from)).collect()
    }

    async fn stored(&self, env: &EnvId, name: &str) -> Result<Stored, AppError> {
        self.load(env, Some(name)).await?.into_iter().next().ok_or(AppError::NotFound)
    }

    // ---- the API ----

    /// Creates an app or replaces its definition (a running instance is stopped; the next request
    /// starts the new definition). Returns the record and whether it was created.
    pub async fn put(
        &self,
        actor: &Actor,
        env: &EnvId,
        name: &str,
        req: PutAppRequest,
    ) -> Result<(AppRecord, bool), AppError> {
        check_name(name)?;
        let def = check_definition(req)?;
        let names: Vec<String> = def.env.keys().cloned().collect();
        let sealed = if def.env.is_empty() {
            None
        } else {
            let json = serde_json::to_string(&def.env).map_err(|e| invalid("invalid_env", e.to_string()))?;
            Some(self.master_key()?.seal(&slot(env, name), &json)?)
        };
        let now = self.inner.platform.clock().now_ms();
        let (id, n, actor_c) = (env.to_string(), name.to_owned(), actor.clone());
        let names_json = serde_json::to_string(&names).unwrap_or_else(|_| "[]".to_owned());
        let created = self
            .inner
            .platform
            .db()
            .tx(move |conn| {
                let (e, n) = (id.as_str(), n.as_str());
                let params: Vec<Value> = vec![
                    e.into(),
                    n.into(),
                    def.command.as_str().into(),
                    i64::from(def.port).into(),
                    names_json.as_str().into(),
                    sealed.clone().into(),
                    def.health.path.as_str().into(),
                    int(def.health.interval_ms),
                    int(ms(def.idle)),
                    int(def.memory_mb),
                    now.into(),
                ];
                let changed = conn.execute(
                    "UPDATE apps SET command = $3, port = $4, env_names = $5, env_sealed = $6, health_path = $7, \
                     health_interval_ms = $8, idle_timeout_ms = $9, memory_mb = $10, updated_at = $11 \
                     WHERE env_id = $1 AND name = $2",
                    &params,
                )?;
                if changed == 0 {
                    conn.execute(
                        "INSERT INTO apps (env_id, name, command, port, env_names, env_sealed, health_path, \
                         health_interval_ms, idle_timeout_ms, memory_mb, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
                        &params,
                    )?;
                }
                platform::audit::write(
                    conn,
                    now,
                    &platform::audit::Record {
                        actor: &actor_c,
                        action: "apps:Put",
                        env: Some(e),
                        target: Some(n),
                        result: "ok",
                    },
                )?;
                Ok::<_, PlatformError>(changed == 0)
            })
            .await?;
        self.stop(env, name).await;
        Ok((self.get(env, name).await?, created))
    }

    /// Stores a `tar.gz` as the app's source (dependencies installed in a registry-only sandbox when
    /// `package.json` declares any). A running instance is stopped; the next request starts the new
    /// source. Nothing is written when the archive is refused.
    pub async fn upload(
        &self,
        actor: &Actor,
        env: &EnvId,
        name: &str,
        archive_bytes: Bytes,
    ) -> Result<AppRecord, AppError> {
        check_name(name)?;
        let previous = self.stored(env, name).await?;
        let limits = self.inner.config.archive_limits;
        let source = archive_bytes.clone();
        let tree = tokio::task::spawn_blocking(move || archive::check_tree(&source, limits))
            .await
            .map_err(|e| invalid("invalid_archive", e.to_string()))??;
        let deps = tree.has_dependencies();
        let bundle = if deps {
            crate::install_dependencies(
                &self.inner.sandboxes,
                actor,
                env,
                archive_bytes,
                self.inner.config.install_timeout,
                limits,
            )
            .await?
        } else {
            archive_bytes
        };
        let sha = hex::encode(sha2::Sha256::digest(&bundle));
        let size = bundle.len() as u64;
        let key =
            format!("{}{}.tar.gz", self.blob_prefix(env, name), self.inner.platform.random_id(20).to_ascii_lowercase());
        self.inner.platform.blobs().put(&key, bundle).await?;
        let now = self.inner.platform.clock().now_ms();
        let (id, n, actor_c, key_c) = (env.to_string(), name.to_owned(), actor.clone(), key.clone());
        let written = self
            .inner
            .platform
            .db()
            .tx(move |conn| {
                let (e, n) = (id.as_str(), n.as_str());
                let changed = conn.execute(
                    "UPDATE apps SET blob_key = $3, sha256 = $4, size_bytes = $5, dependencies = $6, uploaded_at = $7, \
                     updated_at = $7 WHERE env_id = $1 AND name = $2",
                    &[
                        e.into(),
                        n.into(),
                        key_c.as_str().into(),
                        sha.as_str().into(),
                        int(size),
                        deps.into(),
                        now.into(),
                    ],
                )?;
                if changed == 0 {
                    return Err(PlatformError::NotFound { what: "app" });
                }
                platform::audit::write(
                    conn,
                    now,
                    &platform::audit::Record {
                        actor: &actor_c,
                        action: "apps:Upload",
                        env: Some(e),
                        target: Some(n),
                        result: "ok",
                    },
                )?;
                Ok(())
            })
            .await;
        if let Err(e) = written {
            if let Err(del) = self.inner.platform.blobs().delete_prefix(&key).await {
                tracing::warn!(error = %del, "could not remove the bundle of a failed app upload");
            }
            return Err(match e {
                PlatformError::NotFound { .. } => AppError::NotFound,
                e => e.into(),
            });
        }
        // The old bundle goes once the new one is in place.
        if let Some(old) = previous.blob_key
            && let Err(e) = self.inner.platform.blobs().delete_prefix(&old).await
        {
            tracing::warn!(error = %e, "could not remove an app's previous bundle");
        }
        self.stop(env, name).await;
        self.get(env, name).await
    }

    pub async fn list(&self, env: &EnvId) -> Result<AppList, AppError> {
        let items = self.load(env, None).await?.into_iter().map(|s| self.record(env, s)).collect();
        Ok(AppList { items })
    }

    pub async fn get(&self, env: &EnvId, name: &str) -> Result<AppRecord, AppError> {
        if !valid_name(name) {
            return Err(AppError::NotFound);
        }
        let s = self.stored(env, name).await?;
        Ok(self.record(env, s))
    }

    /// Deletes an app: its instance, definition and source.
    pub async fn delete(&self, actor: &Actor, env: &EnvId, name: &str) -> Result<(), AppError> {
        if !valid_name(name) {
            return Err(AppError::NotFound);
        }
        let now = self.inner.platform.clock().now_ms();
        let (id, n, actor_c) = (env.to_string(), name.to_owned(), actor.clone());
        self.inner
            .platform
            .db()
            .tx(move |conn| {
                let (e, n) = (id.as_str(), n.as_str());
                if conn.execute("DELETE FROM apps WHERE env_id = $1 AND name = $2", &[e.into(), n.into()])? == 0 {
                    return Err(PlatformError::NotFound { what: "app" });
                }
                platform::audit::write(
                    conn,
                    now,
                    &platform::audit::Record {
                        actor: &actor_c,
                        action: "apps:Delete",
                        env: Some(e),
                        target: Some(n),
                        result: "ok",
                    },
                )?;
                Ok(())
            })
            .await
            .map_err(|e| match e {
                PlatformError::NotFound { .. } => AppError::NotFound,
                e => e.into(),
            })?;
        let inst = lock(&self.inner.instances).remove(&(env.to_string(), name.to_owned()));
        if let Some(inst) = inst {
            self.stop_and_wait(&inst).await;
        }
        self.inner.platform.blobs().delete_prefix(&self.blob_prefix(env, name)).await?;
        Ok(())
    }

    /// Stops the running instance (if any) and starts a new one at once.
    pub async fn restart(&self, env: &EnvId, name: &str) -> Result<AppRecord, AppError> {
        if !valid_name(name) {
            return Err(AppError::NotFound);
        }
        let spec = self.spec(env, name).await?;
        let inst = self.instance_or_new(env, name);
        self.stop_and_wait(&inst).await;
        // A restart counts as a request: the new instance gets its full idle period.
        *lock(&inst.last_request) = Instant::now();
        self.ensure_supervisor(&inst, spec);
        self.get(env, name).await
    }

    /// The last `limit` log lines of an app, oldest first.
    pub async fn logs(&self, env: &EnvId, name: &str, limit: usize) -> Result<AppLogList, AppError> {
        if !valid_name(name) {
            return Err(AppError::NotFound);
        }
        self.stored(env, name).await?;
        let items = match self.instance(env, name) {
            Some(i) => {
                let logs = lock(&i.logs);
                logs.iter().skip(logs.len().saturating_sub(limit)).cloned().collect()
            }
            None => Vec::new(),
        };
        Ok(AppLogList { items })
    }

    /// Stops every instance (platform shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Instance>> = lock(&self.inner.instances).values().cloned().collect();
        for inst in all {
            self.stop_and_wait(&inst).await;
        }
    }

    // ---- serving ----

    /// A healthy instance of the app for one request: starts it when stopped and waits (up to the wake
    /// timeout) until it is healthy.
    pub async fn connect(&self, env: &EnvId, name: &str) -> Result<Lease, AppError> {
        if !valid_name(name) {
            return Err(AppError::NotFound);
        }
        if let Some(inst) = self.instance(env, name) {
            let hold = inst.hold();
            if let Some((sandbox, port)) = serving(&inst) {
                return Ok(Lease { sandbox, port, _hold: hold });
            }
        }
        let spec = self.spec(env, name).await?;
        let inst = self.instance_or_new(env, name);
        let hold = inst.hold();
        let deadline = tokio::time::Instant::now() + self.inner.config.wake_timeout;
        loop {
            let mut changes = inst.status.subscribe();
            if let Some((sandbox, port)) = serving(&inst) {
                return Ok(Lease { sandbox, port, _hold: hold });
            }
            self.ensure_supervisor(&inst, spec.clone());
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                // The reason stays in the app's logs (the API's), not in a public answer.
                let status = inst.status.borrow().as_str();
                return Err(AppError::Unavailable(format!(
                    "the app did not become healthy within {} s (status: {status}); its logs say why",
                    self.inner.config.wake_timeout.as_secs(),
                )));
            }
        }
    }

    /// The definition with opened env vars and the source key.
    async fn spec(&self, env: &EnvId, name: &str) -> Result<Spec, AppError> {
        let s = self.stored(env, name).await?;
        if s.blob_key.is_none() {
            return Err(AppError::NoSource);
        }
        let env_vars: BTreeMap<String, String> = match &s.env_sealed {
            Some(sealed) => {
                let json = self.master_key()?.open(&slot(env, name), sealed)?;
                serde_json::from_str(&json).map_err(|e| invalid("invalid_env", e.to_string()))?
            }
            None => BTreeMap::new(),
        };
        Ok(Spec {
            def: Definition {
                command: s.command,
                port: s.port,
                env: env_vars,
                health: s.health,
                idle: Duration::from_millis(s.idle_ms),
                memory_mb: s.memory_mb,
            },
            blob_key: s.blob_key,
        })
    }

    /// Starts the app's supervisor unless one runs.
    fn ensure_supervisor(&self, inst: &Arc<Instance>, spec: Spec) {
        let stop = {
            let mut shared = lock(&inst.shared);
            if shared.stop.is_some() {
                return;
            }
            let (tx, rx) = watch::channel(false);
            shared.stop = Some(tx);
            shared.port = spec.def.port;
            rx
        };
        inst.status.send_replace(AppStatus::Starting);
        let (apps, inst) = (self.clone(), inst.clone());
        tokio::spawn(async move { apps.supervise(inst, spec, stop).await });
    }

    /// Asks the instance of an app to stop (it is stopped when the next request comes).
    async fn stop(&self, env: &EnvId, name: &str) {
        if let Some(inst) = self.instance(env, name) {
            self.stop_and_wait(&inst).await;
        }
    }

    async fn stop_and_wait(&self, inst: &Arc<Instance>) {
        let mut changes = inst.status.subscribe();
        let asked = lock(&inst.shared).stop.as_ref().map(|s| s.send_replace(true)).is_some();
        if asked {
            let _ = tokio::time::timeout(Duration::from_secs(30), changes.wait_for(|s| *s == AppStatus::Stopped)).await;
        }
    }

    fn note(&self, inst: &Instance, text: &str) {
        inst.log("system", text, self.inner.config.log_lines, self.inner.platform.clock().now_ms());
    }

    async fn supervise(self, inst: Arc<Instance>, mut spec: Spec, mut stop: watch::Receiver<bool>) {
        let mut streak: u32 = 0;
        loop {
            inst.status.send_replace(AppStatus::Starting);
            let started = Instant::now();
            let ended = self.run_once(&inst, &spec, &mut stop).await;
            let why = match ended {
                Ended::Stopped => {
                    self.note(&inst, "stopped");
                    break;
                }
                Ended::Idle => {
                    self.note(&inst, &format!("stopped after {} s without requests", spec.def.idle.as_secs()));
                    break;
                }
                Ended::Crashed(why) => why,
            };
            if started.elapsed() >= STABLE_RUN {
                streak = 0;
            }
            let backoff = self
                .inner
                .config
                .backoff_base
                .saturating_mul(2u32.saturating_pow(streak.min(16)))
                .min(self.inner.config.backoff_max);
            streak = streak.saturating_add(1);
            {
                let mut shared = lock(&inst.shared);
                shared.restarts += 1;
                shared.last_error = Some(why.clone());
            }
            inst.status.send_replace(AppStatus::Crashed);
            self.note(&inst, &format!("{why}; restarting in {} ms", backoff.as_millis()));
            let stopped = tokio::select! {
                _ = stop.wait_for(|s| *s) => true,
                () = tokio::time::sleep(backoff) => false,
            };
            if stopped {
                self.note(&inst, "stopped");
                break;
            }
            if inst.idle_for() >= spec.def.idle {
                self.note(&inst, "stopped: crashing with no requests for the idle timeout");
                break;
            }
            // The definition may have changed or gone while it was down.
            match self.spec(&inst.env, &inst.name).await {
                Ok(s) => spec = s,
                Err(e) => {
                    self.note(&inst, &format!("stopped: {e}"));
                    break;
                }
            }
        }
        let mut shared = lock(&inst.shared);
        shared.stop = None;
        shared.serving = None;
        inst.status.send_replace(AppStatus::Stopped);
    }

    /// One sandbox and one process of the app, until it stops, idles out or crashes.
    async fn run_once(&self, inst: &Arc<Instance>, spec: &Spec, stop: &mut watch::Receiver<bool>) -> Ended {
        let sandboxes = &self.inner.sandboxes;
        let env = &inst.env;
        let mut vars = spec.def.env.clone();
        vars.insert("PORT".to_owned(), spec.def.port.to_string());
        vars.insert("HOST".to_owned(), "127.0.0.1".to_owned());
        let created = sandboxes
            .create(
                &Actor { name: format!("app:{}", inst.name), request_id: String::new() },
                env,
                CreateSandboxRequest {
                    timeout_seconds: Some(protocol::sandbox::MAX_SANDBOX_SECONDS),
                    memory_mb: Some(spec.def.memory_mb),
                    max_processes: Some(256),
                    disk_mb: Some(1024),
                    env_vars: vars,
                    metadata: BTreeMap::from([("app".to_owned(), inst.name.clone())]),
                    ..Default::default()
                },
            )
            .await;
        let id = match created {
            Ok(r) => r.id,
            Err(e) => return Ended::Crashed(format!("could not start its sandbox: {e}")),
        };
        let mut metered_us = 0u64;
        let ended = self.run_in(inst, spec, &id, stop, &mut metered_us).await;
        lock(&inst.shared).serving = None;
        self.meter_cpu(inst, &id, &mut metered_us);
        match sandboxes.kill(env, &id).await {
            Ok(()) | Err(SandboxError::NotFound) => {}
            Err(e) => tracing::warn!(sandbox = %id, error = %e, "could not end an app sandbox"),
        }
        ended
    }

    async fn run_in(
        &self,
        inst: &Arc<Instance>,
        spec: &Spec,
        id: &str,
        stop: &mut watch::Receiver<bool>,
        metered_us: &mut u64,
    ) -> Ended {
        let platform = &self.inner.platform;
        let agent = match self.inner.sandboxes.agent(&inst.env, id) {
            Ok(a) => a,
            Err(e) => return Ended::Crashed(format!("its sandbox is gone: {e}")),
        };
        let bundle = match spec.blob_key.as_deref() {
            Some(key) => match platform.blobs().get(key).await {
                Ok(Some(b)) => b,
                Ok(None) => return Ended::Crashed("its source is missing from the object store".to_owned()),
                Err(e) => return Ended::Crashed(format!("could not read its source: {e}")),
            },
            None => return Ended::Crashed(AppError::NoSource.to_string()),
        };
        if let Err(e) = crate::unpack(&agent, bundle, APP_DIR).await {
            return Ended::Crashed(e.to_string());
        }
        let exec = ExecSpec {
            argv: vec!["sh".to_owned(), "-c".to_owned(), spec.def.command.clone()],
            cwd: Some(APP_DIR.to_owned()),
            tag: Some("app".to_owned()),
            ..Default::default()
        };
        let mut stream = match agent.exec(exec).await {
            Ok(s) => s,
            Err(e) => return Ended::Crashed(format!("could not start its command: {e}")),
        };
        self.note(inst, &format!("started `{}` in sandbox {id}", spec.def.command));
        // Follow the process: its output into the logs, its exit into `exited`.
        let (exit_tx, mut exited) = watch::channel(None::<i32>);
        {
            let (apps, inst) = (self.clone(), inst.clone());
            tokio::spawn(async move {
                let max = apps.inner.config.log_lines;
                while let Ok(Some(ev)) = stream.next().await {
                    let now = apps.inner.platform.clock().now_ms();
                    match ev {
                        ExecEvent::Stdout { data } => inst.log("stdout", &String::from_utf8_lossy(&data.0), max, now),
                        ExecEvent::Stderr { data } => inst.log("stderr", &String::from_utf8_lossy(&data.0), max, now),
                        ExecEvent::Exited { exit_code, .. } => {
                            exit_tx.send_replace(Some(exit_code));
                            return;
                        }
                        ExecEvent::Started { .. } => {}
                    }
                }
                exit_tx.send_replace(Some(-1));
            });
        }
        let exit_message = |code: Option<i32>| match code {
            Some(-1) | None => "its process stopped answering".to_owned(),
            Some(c) => format!("its process exited with status {c}"),
        };
        // Healthy once the health check answers, while the process lives.
        let port = spec.def.port;
        let path = spec.def.health.path.clone();
        let booted = Instant::now();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ended::Stopped,
                code = exited.wait_for(Option::is_some) => {
                    let code = code.map(|c| *c).unwrap_or(None);
                    return Ended::Crashed(format!("{} before it was healthy", exit_message(code)));
                }
                healthy = probe(&agent, port, &path) => if healthy { break },
            }
            if booted.elapsed() >= self.inner.config.start_timeout {
                return Ended::Crashed(format!(
                    "no answer on port {port} at {path} within {} s",
                    self.inner.config.start_timeout.as_secs()
                ));
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ended::Stopped,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        self.note(inst, &format!("healthy after {} ms", booted.elapsed().as_millis()));
        {
            let mut shared = lock(&inst.shared);
            shared.serving = Some(id.to_owned());
            shared.port = port;
            shared.last_error = None;
        }
        inst.status.send_replace(AppStatus::Running);
        let interval = Duration::from_millis(spec.def.health.interval_ms);
        let tick = interval.min(Duration::from_millis(250));
        let mut last_check = Instant::now();
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ended::Stopped,
                code = exited.wait_for(Option::is_some) => {
                    let code = code.map(|c| *c).unwrap_or(None);
                    return Ended::Crashed(exit_message(code));
                }
                () = tokio::time::sleep(tick) => {}
            }
            if inst.idle_for() >= spec.def.idle {
                return Ended::Idle;
            }
            if last_check.elapsed() >= interval {
                last_check = Instant::now();
                self.meter_cpu(inst, id, metered_us);
                if probe(&agent, port, &path).await {
                    failures = 0;
                } else {
                    failures += 1;
                    self.note(inst, &format!("health check {failures}/{HEALTH_FAILURES} failed"));
                    if failures >= HEALTH_FAILURES {
                        return Ended::Crashed(format!("{HEALTH_FAILURES} health checks in a row failed"));
                    }
                }
            }
        }
    }

    /// Meters the CPU time the app's sandbox used since the last sample.
    fn meter_cpu(&self, inst: &Instance, id: &str, metered_us: &mut u64) {
        let Ok(usage) = self.inner.sandboxes.usage(&inst.env, id) else { return };
        let new_ms = usage.cpu_us.saturating_sub(*metered_us) / 1000;
        if new_ms > 0 {
            *metered_us += new_ms * 1000;
            self.inner.platform.meter(
                &inst.env,
                Meter::ContainerCpuMs,
                ("app", &inst.name),
                i64::try_from(new_ms).unwrap_or(i64::MAX),
            );
        }
    }
}

fn serving(inst: &Instance) -> Option<(String, u16)> {
    let shared = lock(&inst.shared);
    shared.serving.clone().map(|s| (s, shared.port))
}

/// `GET path` on the app's port answers below 500 within two seconds.
async fn probe(agent: &AgentClient, port: u16, path: &str) -> bool {
    let attempt = async {
        let stream = agent.forward(port).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(path)
            .header(http::header::HOST, format!("localhost:{port}"))
            .header(http::header::USER_AGENT, "vibebase-health-check")
            .body(http_body_util::Empty::<Bytes>::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        Some(resp.status().as_u16() < 500)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: &str, port: u32) -> PutAppRequest {
        PutAppRequest {
            command: command.to_owned(),
            port,
            env: BTreeMap::new(),
            health_check: None,
            idle_timeout_seconds: None,
            memory_mb: None,
        }
    }

    fn code(r: Result<Definition, AppError>) -> &'static str {
        match r {
            Err(AppError::Invalid { code, .. }) => code,
            Err(_) => "other error",
            Ok(_) => "ok",
        }
    }

    #[test]
    fn names_stay_unambiguous_in_host_form() {
        for ok in ["api", "web-1", "a", "shop2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "1api", "8080-sbx", "Api", "a_b", "dpl0123456789", &"a".repeat(41)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn definitions_are_checked() {
        assert_eq!(code(check_definition(req("node server.js", 3000))), "ok");
        assert_eq!(code(check_definition(req("  ", 3000))), "invalid_command");
        assert_eq!(code(check_definition(req("a\0b", 3000))), "invalid_command");
        assert_eq!(code(check_definition(req("node s.js", 0))), "invalid_port");
        assert_eq!(code(check_definition(req("node s.js", 70_000))), "invalid_port");
        assert_eq!(code(check_definition(req("node s.js", u32::from(sandbox::agent::EGRESS_PORT)))), "invalid_port");
        let mut r = req("node s.js", 3000);
        r.env.insert("PORT".to_owned(), "1".to_owned());
        assert_eq!(code(check_definition(r)), "invalid_env");
        let mut r = req("node s.js", 3000);
        r.env.insert("1X".to_owned(), "1".to_owned());
        assert_eq!(code(check_definition(r)), "invalid_env");
        let mut r = req("node s.js", 3000);
        r.health_check = Some(HealthCheck { path: "healthz".to_owned(), interval_ms: 1000 });
        assert_eq!(code(check_definition(r)), "invalid_health_check");
        let mut r = req("node s.js", 3000);
        r.health_check = Some(HealthCheck { path: "/".to_owned(), interval_ms: 10 });
        assert_eq!(code(check_definition(r)), "invalid_health_check");
        let mut r = req("node s.js", 3000);
        r.idle_timeout_seconds = Some(0);
        assert_eq!(code(check_definition(r)), "invalid_idle_timeout");
        let mut r = req("node s.js", 3000);
        r.memory_mb = Some(10);
        assert_eq!(code(check_definition(r)), "invalid_memory");
    }
}
