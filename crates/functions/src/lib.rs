//! Cloud functions of every env.
//!
//! - Deploy: a `tar.gz` is checked ([`archive`]), its `package.json` dependencies are installed by
//!   `npm install` in a sandbox that may reach only the npm registry, and the result is stored as a new
//!   immutable version in the object store, with its row in the platform store. Rollback points the
//!   function at any stored version.
//! - Invoke: every invocation runs in a sandbox, in a Node process started from the embedded runner
//!   (`runner.mjs`), reached through the agent's port forward (no TCP path into the sandbox). A warm
//!   pool keeps runners per version, one invocation at a time each, evicted when idle; the function's
//!   concurrency limit bounds how many run at once on an instance. Each invocation gets its own service
//!   token (this env, data plane only), revoked when it ends, and its secrets, opened with the master key
//!   ([`seal`]). Timeouts, crashes and exhausted memory end the sandbox; the next invocation starts a
//!   fresh one.
//! - Logs (bounded stdout and stderr of every invocation), the `function_invocations` and
//!   `function_gb_ms` meters, and cron schedules claimed with a conditional UPDATE ([`cron`]).

pub mod apps;
pub mod archive;
pub mod cron;
pub mod seal;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use platform::{Actor, Platform, PlatformError};
use protocol::functions::{
    FunctionRecord, FunctionVersion, InvocationLog, InvocationOutcome, SetScheduleRequest, SetSecretsRequest,
};
use protocol::sandbox::CreateSandboxRequest;
use protocol::{EnvId, Meter};
use sandbox::client::OutputLimit;
use sandbox::proto::{ExecEvent, ExecSpec};
use sandbox::{SandboxError, Sandboxes};
use sha2::Digest as _;
use store::{Conn, Row, StoreError, Value};

/// The runner, written into every function sandbox.
pub const RUNNER_JS: &str = include_str!("runner.mjs");
/// Where the runner listens inside the sandbox.
const RUNNER_PORT: u16 = 9000;
const FN_DIR: &str = "/home/user/fn";
const RUNNER_PATH: &str = "/home/user/.vb-runner.mjs";
/// The registry `npm install` may reach at deploy time.
pub const NPM_REGISTRY: &str = "registry.npmjs.org";
/// What an invocation's token may do: the env's data plane, not functions, sandboxes or models.
const INVOCATION_ACTIONS: &[&str] = &["db:*", "auth:*", "storage:*"];
/// Largest envelope (response body, base64, plus logs) read back from a runner.
const MAX_ENVELOPE: usize = 16 * 1024 * 1024;

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct FunctionsConfig {
    /// `VIBEBASE_MASTER_KEY`; without it the key is kept in `<data dir>/master.key`.
    pub master_key: Option<String>,
    /// A warm runner unused this long is stopped.
    pub idle_timeout: Duration,
    pub archive_limits: archive::Limits,
    /// Longest `npm install` at deploy time.
    pub install_timeout: Duration,
    /// Bytes of stdout and of stderr kept per invocation.
    pub log_limit: usize,
    /// How long an invocation waits for a free slot under the concurrency limit before 429.
    pub queue_timeout: Duration,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        Self {
            master_key: None,
            idle_timeout: Duration::from_secs(120),
            archive_limits: archive::Limits::default(),
            install_timeout: Duration::from_secs(300),
            log_limit: 64 * 1024,
            queue_timeout: Duration::from_secs(10),
        }
    }
}

/// Limits a deploy may set (each has a default).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeployOptions {
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub concurrency: Option<u64>,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// No such function or version in this env.
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The request is malformed or out of range.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The deploy archive was refused.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// `npm install` failed at deploy time (its output tail is the message).
    #[error("installing dependencies failed: {0}")]
    InstallFailed(String),
    /// The concurrency limit is reached and no slot freed in time.
    #[error("the function is at its concurrency limit ({0})")]
    Busy(u64),
    /// The invocation did not end well; the caller gets `outcome`'s error.
    #[error("{message}")]
    Failed { outcome: InvocationOutcome, message: String, invocation: String },
    /// Sandboxes are unavailable or failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The platform (store, credentials, object store) failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The master key is unusable or a sealed value does not open.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
}

impl From<StoreError> for FunctionError {
    fn from(e: StoreError) -> Self {
        Self::Platform(e.into())
    }
}

impl From<store::BlobError> for FunctionError {
    fn from(e: store::BlobError) -> Self {
        Self::Platform(e.into())
    }
}

fn invalid(code: &'static str, message: impl Into<String>) -> FunctionError {
    FunctionError::Invalid { code, message: message.into() }
}

/// Function names: 1..=63 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_name(name: &str) -> Result<(), FunctionError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(invalid("invalid_function_name", "function names are 1..=63 of a-z, 0-9, '-', '_'"))
    }
}

/// Secret names: environment variable names, not the platform's own.
fn check_var(name: &str) -> Result<(), FunctionError> {
    let shaped = (1..=256).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !shaped {
        return Err(invalid("invalid_secret_name", format!("{name:?} is not an environment variable name")));
    }
    if name.starts_with("SUPABASE_") || name.starts_with("VIBEBASE_") {
        return Err(invalid("reserved_secret_name", format!("{name} is set by the platform")));
    }
    Ok(())
}

/// Who called, as the data API decided it (the server verifies end-user JWTs).
#[derive(Debug, Clone)]
pub struct CallerAuth {
    /// `anon`, `authenticated` or `service_role`.
    pub role: String,
    /// The end user's verified claims (empty for keys).
    pub claims: serde_json::Value,
}

/// One call of a function.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub method: String,
    /// The path below the function's name (`""` or `/…`).
    pub subpath: String,
    pub query: String,
    /// `query`, decoded.
    pub query_params: BTreeMap<String, String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub auth: CallerAuth,
    /// `http` or `schedule`.
    pub trigger: &'static str,
    pub request_id: String,
}

/// A function's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub invocation: String,
    pub version: u64,
    /// Whether a new runner was started for it.
    pub cold: bool,
}

/// The active version's settings, as an invocation needs them.
#[derive(Debug, Clone)]
struct Active {
    version: u64,
    blob_key: String,
    entrypoint: String,
    memory_mb: u64,
    timeout: Duration,
    concurrency: u64,
}

type PoolKey = (String, String, u64);

/// A started runner.
struct Warm {
    env: EnvId,
    sandbox: String,
    last_used: Instant,
    exit: Arc<Mutex<RunnerExit>>,
}

#[derive(Default)]
struct RunnerExit {
    code: Option<i32>,
    stderr_tail: String,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Warm>,
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

struct Inner {
    platform: Platform,
    sandboxes: Sandboxes,
    config: FunctionsConfig,
    key: OnceLock<Arc<seal::MasterKey>>,
    pools: Mutex<HashMap<PoolKey, Pool>>,
}

/// The functions of this platform instance.
#[derive(Clone)]
pub struct Functions {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn actor(name: &str, request_id: &str) -> Actor {
    Actor { name: name.to_owned(), request_id: request_id.to_owned() }
}

fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn uint(row: &Row, i: usize) -> Result<u64, StoreError> {
    Ok(u64::try_from(row.int(i)?).unwrap_or(0))
}

const VERSION_COLUMNS: &str =
    "version, blob_key, sha256, size_bytes, entrypoint, dependencies, memory_mb, timeout_ms, concurrency, created_at";

/// The version (and its bundle's key) from [`VERSION_COLUMNS`] starting at column `at`.
fn version_of(row: &Row, at: usize) -> Result<(FunctionVersion, String), StoreError> {
    Ok((
        FunctionVersion {
            version: uint(row, at)?,
            sha256: row.text(at + 2)?,
            size_bytes: uint(row, at + 3)?,
            entrypoint: row.text(at + 4)?,
            dependencies_installed: row.int(at + 5)? != 0,
            memory_mb: uint(row, at + 6)?,
            timeout_ms: uint(row, at + 7)?,
            concurrency: uint(row, at + 8)?,
            created_at: platform::runtime::rfc3339(row.int(at + 9)?),
        },
        row.text(at + 1)?,
    ))
}

/// [`VERSION_COLUMNS`] of the joined `function_versions` row `v`.
fn joined_version_columns() -> String {
    VERSION_COLUMNS.split(", ").map(|c| format!("v.{c}")).collect::<Vec<_>>().join(", ")
}

impl Functions {
    /// Creates the registry and its idle evictor and scheduler.
    pub fn new(platform: Platform, sandboxes: Sandboxes, config: FunctionsConfig) -> Self {
        let inner = Arc::new(Inner { platform, sandboxes, config, key: OnceLock::new(), pools: Mutex::default() });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(inner) = weak.upgrade() else { return };
                Functions { inner }.evict_idle().await;
            }
        });
        let functions = Self { inner };
        functions.register_delete_hook();
        cron::spawn(&functions);
        functions
    }

    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    fn master_key(&self) -> Result<Arc<seal::MasterKey>, FunctionError> {
        if let Some(k) = self.inner.key.get() {
            return Ok(k.clone());
        }
        let key =
            seal::MasterKey::load(self.inner.config.master_key.as_deref(), &self.inner.platform.config().data_dir)?;
        Ok(self.inner.key.get_or_init(|| Arc::new(key)).clone())
    }

    fn register_delete_hook(&self) {
        self.inner.platform.on_env_delete_weak(&self.inner, |inner, env| async move {
            let f = Functions { inner };
            f.evict(&env, None).await;
            let tables = &["functions", "function_versions", "function_secrets", "function_logs"];
            f.inner.platform.db().delete_env_rows(env.as_str(), tables).await.map_err(|e| e.to_string())
        });
    }

    fn blob_prefix(&self, env: &EnvId, name: &str) -> String {
        format!("{}functions/{name}/", self.inner.platform.layout(env).object_prefix)
    }

    /// Runs one query about a function of an env (`$1` the env, `$2` the name, then `extra`).
    async fn rows(&self, env: &EnvId, name: &str, sql: String, extra: Vec<Value>) -> Result<Vec<Row>, FunctionError> {
        let mut params: Vec<Value> = vec![env.as_str().into(), name.into()];
        params.extend(extra);
        self.inner.platform.db().tx(move |conn| conn.query(&sql, &params)).await.map_err(FunctionError::from)
    }

    // ---- deploy, versions, rollback, delete ----

    /// Deploys a `tar.gz` as the function's next version and makes it the active one.
    pub async fn deploy(
        &self,
        actor: &Actor,
        env: &EnvId,
        name: &str,
        archive_bytes: Bytes,
        options: DeployOptions,
    ) -> Result<FunctionVersion, FunctionError> {
        check_name(name)?;
        let memory_mb = options.memory_mb.unwrap_or(256);
        let timeout_ms = options.timeout_ms.unwrap_or(10_000);
        let concurrency = options.concurrency.unwrap_or(4);
        if !(64..=4096).contains(&memory_mb) {
            return Err(invalid("invalid_limits", "memory_mb must be 64..=4096"));
        }
        if !(100..=900_000).contains(&timeout_ms) {
            return Err(invalid("invalid_limits", "timeout_ms must be 100..=900000"));
        }
        if !(1..=256).contains(&concurrency) {
            return Err(invalid("invalid_limits", "concurrency must be 1..=256"));
        }
        let limits = self.inner.config.archive_limits;
        let source = archive_bytes.clone();
        let checked = tokio::task::spawn_blocking(move || archive::check(&source, limits))
            .await
            .map_err(|e| invalid("invalid_archive", e.to_string()))??;
        let bundle =
            if checked.has_dependencies { self.install(actor, env, archive_bytes).await? } else { archive_bytes };
        let sha = hex::encode(sha2::Sha256::digest(&bundle));
        let size = bundle.len() as u64;
        let key =
            format!("{}{}.tar.gz", self.blob_prefix(env, name), self.inner.platform.random_id(20).to_ascii_lowercase());
        self.inner.platform.blobs().put(&key, bundle).await?;
        let now = self.inner.platform.clock().now_ms();
        let (id, fname, actor_c, key_c) = (env.to_string(), name.to_owned(), actor.clone(), key.clone());
        let entrypoint = checked.entrypoint.clone();
        let deps = checked.has_dependencies;
        let inserted = self
            .inner
            .platform
            .db()
            .tx(move |conn| {
                let (e, n) = (id.as_str(), fname.as_str());
                let next = conn
                    .query_opt(
                        "SELECT COALESCE(MAX(version), 0) FROM function_versions WHERE env_id = $1 AND name = $2",
                        &[e.into(), n.into()],
                    )?
                    .map_or(Ok(0), |r| r.int(0))?
                    + 1;
                conn.execute(
                    &format!("INSERT INTO function_versions ({VERSION_COLUMNS}, env_id, name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
                    &[
                        next.into(),
                        key_c.as_str().into(),
                        sha.as_str().into(),
                        int(size),
                        entrypoint.as_str().into(),
                        deps.into(),
                        int(memory_mb),
                        int(timeout_ms),
                        int(concurrency),
                        now.into(),
                        e.into(),
                        n.into(),
                    ],
                )?;
                activate(conn, e, n, next, now)?;
                audit(conn, now, &actor_c, "functions:Deploy", e, &format!("{n} v{next}"))?;
                Ok::<_, PlatformError>(FunctionVersion {
                    version: u64::try_from(next).unwrap_or(0),
                    entrypoint,
                    size_bytes: size,
                    sha256: sha,
                    dependencies_installed: deps,
                    memory_mb,
                    timeout_ms,
                    concurrency,
                    created_at: platform::runtime::rfc3339(now),
                })
            })
            .await;
        match inserted {
            Ok(v) => {
                // The first call after a deploy is a cold start.
                self.evict(env, Some(name)).await;
                Ok(v)
            }
            Err(e) => {
                // Nothing half-written: the bundle goes with the failed row.
                if let Err(del) = self.inner.platform.blobs().delete_prefix(&key).await {
                    tracing::warn!(error = %del, "could not remove the bundle of a failed deploy");
                }
                Err(e.into())
            }
        }
    }

    async fn install(&self, actor: &Actor, env: &EnvId, source: Bytes) -> Result<Bytes, FunctionError> {
        let c = &self.inner.config;
        install_dependencies(&self.inner.sandboxes, actor, env, source, c.install_timeout, c.archive_limits).await
    }

    /// The versions of a function, newest first.
    pub async fn versions(&self, env: &EnvId, name: &str) -> Result<Vec<FunctionVersion>, FunctionError> {
        check_name(name)?;
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM function_versions WHERE env_id = $1 AND name = $2 ORDER BY version DESC"
        );
        let rows = self.rows(env, name, sql, Vec::new()).await?;
        if rows.is_empty() {
            return Err(FunctionError::NotFound { what: "function" });
        }
        rows.iter().map(|r| version_of(r, 0).map(|v| v.0).map_err(FunctionError::from)).collect()
    }

    /// The env's functions (`name = None`) or one of them.
    async fn records(&self, env: &EnvId, name: Option<&str>) -> Result<Vec<FunctionRecord>, FunctionError> {
        let (id, n) = (env.to_string(), name.map(str::to_owned));
        let cols = joined_version_columns();
        self.inner
            .platform
            .db()
            .tx(move |conn| {
                let mut sql = format!(
                    "SELECT f.name, f.schedule, f.created_at, f.updated_at, {cols} FROM functions f \
                     JOIN function_versions v ON v.env_id = f.env_id AND v.name = f.name AND v.version = f.active_version \
                     WHERE f.env_id = $1"
                );
                let mut params: Vec<Value> = vec![id.as_str().into()];
                if let Some(n) = &n {
                    sql.push_str(" AND f.name = $2");
                    params.push(n.as_str().into());
                }
                sql.push_str(" ORDER BY f.name");
                let rows = conn.query(&sql, &params)?;
                let mut out = Vec::new();
                for row in rows {
                    let fname = row.text(0)?;
                    let (active, _) = version_of(&row, 4)?;
                    let secrets = conn
                        .query(
                            "SELECT var FROM function_secrets WHERE env_id = $1 AND name = $2 ORDER BY var",
                            &[id.as_str().into(), fname.as_str().into()],
                        )?
                        .iter()
                        .map(|r| r.text(0))
                        .collect::<Result<Vec<_>, _>>()?;
                    out.push(FunctionRecord {
                        name: fname,
                        active_version: active.version,
                        active,
                        secrets,
                        schedule: row.opt_text(1)?,
                        created_at: platform::runtime::rfc3339(row.int(2)?),
                        updated_at: platform::runtime::rfc3339(row.int(3)?),
                    });
                }
                Ok::<_, StoreError>(out)
            })
            .await
            .map_err(FunctionError::from)
    }

    pub async fn list(&self, env: &EnvId) -> Result<Vec<FunctionRecord>, FunctionError> {
        self.records(env, None).await
    }

    pub async fn get(&self, env: &EnvId, name: &str) -> Result<FunctionRecord, FunctionError> {
        check_name(name)?;
        self.records(env, Some(name)).await?.into_iter().next().ok_or(FunctionError::NotFound { what: "function" })
    }

    /// Serves `version` from now on.
    pub async fn rollback(
        &self,
        actor: &Actor,
        env: &EnvId,
        name: &str,
        version: u64,
    ) -> Result<FunctionRecord, FunctionError> {
        check_name(name)?;
        let (id, n, actor_c) = (env.to_string(), name.to_owned(), actor.clone());
        let now = self.inner.platform.clock().now_ms();
        self.inner
            .platform
            .db()
            .tx(move |conn| {
                let (e, n) = (id.as_str(), n.as_str());
                let exists = conn.query_opt(
                    "SELECT version FROM function_versions WHERE env_id = $1 AND name = $2 AND version = $3",
                    &[e.into(), n.into(), int(version)],
                )?;
                if exists.is_none() {
                    return Err(PlatformError::NotFound { what: "function version" });
                }
                activate(conn, e, n, i64::try_from(version).unwrap_or(0), now)?;
                audit(conn, now, &actor_c, "functions:Rollback", e, &format!("{n} v{version}"))?;
                Ok(())
            })
            .await?;
        self.evict(env, Some(name)).await;
        self.get(env, name).await
    }

    /// Deletes a function: its versions, bundles, secrets and logs.
    pub async fn delete(&self, actor: &Actor, env: &EnvId, name: &str) -> Result<(), FunctionError> {
        check_name(name)?;
        let (id, n, actor_c) = (env.to_string(), name.to_owned(), actor.clone());
        let now = self.inner.platform.clock().now_ms();
        self.inner
            .platform
            .db()
            .tx(move |conn| {
                let (e, n) = (id.as_str(), n.as_str());
                let gone =
                    conn.execute("DELETE FROM functions WHERE env_id = $1 AND name = $2", &[e.into(), n.into()])?;
                if gone == 0 {
                    return Err(PlatformError::NotFound { what: "function" });
                }
                for table in ["function_versions", "function_secrets", "function_logs"] {
                    conn.execute(
                        &format!("DELETE FROM {table} WHERE env_id = $1 AND name = $2"),
                        &[e.into(), n.into()],
                    )?;
                }
                audit(conn, now, &actor_c, "functions:Delete", e, n)?;
                Ok(())
            })
            .await?;
        self.evict(env, Some(name)).await;
        self.inner.platform.blobs().delete_prefix(&self.blob_prefix(env, name)).await?;
        Ok(())
    }

    // ---- secrets and schedules ----

    /// Sets or removes environment variables of a function (sealed at rest); returns their names.
    pub async fn set_secrets(
        &self,
        actor: &Actor,
        env: &EnvId,
        name: &str,
        req: SetSecretsRequest,
    ) -> Result<Vec<String>, FunctionError> {
        check_name(name)?;
        if req.values.len() > 100 {
            return Err(invalid("too_many_secrets", "at most 100 variables per request"));
        }
        let key = self.master_key()?;
        let mut sealed = Vec::new();
        for (var, value) in &req.values {
            check_var(var)?;
            let value = match value {
                Some(v) if v.len() > 64 * 1024 => {
                    return Err(invalid("secret_too_large", format!("{var} is longer than 64 KiB")));
                }
                Some(v) if v.contains('\0') => return Err(invalid("invalid_secret", format!("{var} contains NUL"))),
                Some(v) => Some(key.seal(&slot(env, name, var), v)?),
                None => None,
            };
            sealed.push((var.clone(), value));
        }
        self.get(env, name).await?;
        let (id, n, actor_c) = (env.to_string(), name.to_owned(), actor.clone());
        let now = self.inner.platform.clock().now_ms();
        self.inner
            .platform
            .db()
            .tx(move |conn| {
                let (e, n) = (id.as_str(), n.as_str());
                for (var, value) in &sealed {
                    let params = [e.into(), n.into(), var.as_str().into()];
                    conn.execute("DELETE FROM function_secrets WHERE env_id = $1 AND name = $2 AND var = $3", &params)?;
                    if let Some(v) = value {
                        conn.execute(
                            "INSERT INTO function_secrets (env_id, name, var, sealed, updated_at) VALUES ($1, $2, $3, $4, $5)",
                            &[e.into(), n.into(), var.as_str().into(), v.as_str().into(), now.into()],
                        )?;
                    }
                }
                audit(conn, now, &actor_c, "functions:SetSecrets", e, n)?;
                Ok::<_, PlatformError>(())
            })
            .await?;
        Ok(self.get(env, name).await?.secrets)
    }

    /// The opened secrets of a function.
    async fn secrets(&self, env: &EnvId, name: &str) -> Result<BTreeMap<String, String>, FunctionError> {
        let sql = "SELECT var, sealed FROM function_secrets WHERE env_id = $1 AND name = $2".to_owned();
        let rows = self.rows(env, name, sql, Vec::new()).await?;
        if rows.is_empty() {
            return Ok(BTreeMap::new());
        }
        let key = self.master_key()?;
        let mut out = BTreeMap::new();
        for r in rows {
            let var = r.text(0)?;
            let value = key.open(&slot(env, name, &var), &r.text(1)?)?;
            out.insert(var, value);
        }
        Ok(out)
    }

    /// Sets (or removes) the function's cron schedule.
    pub async fn set_schedule(
        &self,
        actor: &Actor,
        env: &EnvId,
        name: &str,
        req: SetScheduleRequest,
    ) -> Result<FunctionRecord, FunctionError> {
        check_name(name)?;
        let now = self.inner.platform.clock().now_ms();
        let next = match &req.schedule {
            Some(s) => {
                let cron = cron::Schedule::parse(s).map_err(|why| invalid("invalid_schedule", why))?;
                Some(cron.next_after(now).ok_or_else(|| invalid("invalid_schedule", "the schedule never fires"))?)
            }
            None => None,
        };
        let (id, n, actor_c, schedule) = (env.to_string(), name.to_owned(), actor.clone(), req.schedule.clone());
        self.inner
            .platform
            .db()
            .tx(move |conn| {
                let (e, n) = (id.as_str(), n.as_str());
                let changed = conn.execute(
                    "UPDATE functions SET schedule = $3, next_run_at = $4, updated_at = $5 WHERE env_id = $1 AND name = $2",
                    &[e.into(), n.into(), schedule.into(), next.into(), now.into()],
                )?;
                if changed == 0 {
                    return Err(PlatformError::NotFound { what: "function" });
                }
                audit(conn, now, &actor_c, "functions:SetSchedule", e, n)?;
                Ok(())
            })
            .await?;
        self.get(env, name).await
    }

    // ---- logs ----

    /// Invocation logs of a function in `[from, to)` (Unix ms), newest first.
    pub async fn logs(
        &self,
        env: &EnvId,
        name: &str,
        from: i64,
        to: i64,
        limit: u64,
    ) -> Result<Vec<InvocationLog>, FunctionError> {
        check_name(name)?;
        let sql = "SELECT id, name, version, started_at, duration_ms, status, outcome, trigger_kind, stdout, stderr, \
                   error FROM function_logs WHERE env_id = $1 AND name = $2 AND started_at >= $3 AND started_at < $4 \
                   ORDER BY started_at DESC, id LIMIT $5"
            .to_owned();
        let rows = self.rows(env, name, sql, vec![from.into(), to.into(), int(limit)]).await?;
        rows.iter()
            .map(|r| {
                Ok(InvocationLog {
                    id: r.text(0)?,
                    function: r.text(1)?,
                    version: uint(r, 2)?,
                    started_at: platform::runtime::rfc3339(r.int(3)?),
                    duration_ms: uint(r, 4)?,
                    status: u16::try_from(r.int(5)?).unwrap_or(0),
                    outcome: InvocationOutcome::parse(&r.text(6)?).unwrap_or(InvocationOutcome::Crashed),
                    trigger: r.text(7)?,
                    stdout: r.text(8)?,
                    stderr: r.text(9)?,
                    error: r.opt_text(10)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
            .map_err(FunctionError::from)
    }

    // ---- invocation ----

    async fn active(&self, env: &EnvId, name: &str) -> Result<Active, FunctionError> {
        let sql = format!(
            "SELECT {} FROM functions f JOIN function_versions v ON v.env_id = f.env_id AND v.name = f.name \
             AND v.version = f.active_version WHERE f.env_id = $1 AND f.name = $2",
            joined_version_columns()
        );
        let row = self
            .rows(env, name, sql, Vec::new())
            .await?
            .into_iter()
            .next()
            .ok_or(FunctionError::NotFound { what: "function" })?;
        let (v, blob_key) = version_of(&row, 0)?;
        Ok(Active {
            version: v.version,
            blob_key,
            entrypoint: v.entrypoint,
            memory_mb: v.memory_mb,
            timeout: Duration::from_millis(v.timeout_ms),
            concurrency: v.concurrency,
        })
    }

    /// Invokes the active version of a function.
    pub async fn invoke(&self, env: &EnvId, name: &str, inv: Invocation) -> Result<Reply, FunctionError> {
        if !valid_name(name) {
            return Err(FunctionError::NotFound { what: "function" });
        }
        let active = self.active(env, name).await?;
        let secrets = self.secrets(env, name).await?;
        let key: PoolKey = (env.to_string(), name.to_owned(), active.version);
        let slots = {
            let mut pools = lock(&self.inner.pools);
            let pool = pools.entry(key.clone()).or_default();
            pool.slots
                .get_or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(usize::try_from(active.concurrency).unwrap_or(1)))
                })
                .clone()
        };
        let _permit = tokio::time::timeout(self.inner.config.queue_timeout, slots.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(FunctionError::Busy(active.concurrency))?;
        let started_ms = self.inner.platform.clock().now_ms();
        let started = Instant::now();
        let invocation = format!("inv{}", self.inner.platform.random_id(16).to_ascii_lowercase());
        let (warm, cold) = match self.take_idle(&key).await {
            Some(w) => (w, false),
            None => (self.start_runner(env, name, &active).await?, true),
        };
        let outcome = self.call_runner(env, name, &active, &warm, &inv, &invocation, secrets).await;
        let elapsed = started.elapsed();
        // Reuse a runner only after a clean invocation that left no refused forks or OOM kills behind.
        let reusable = matches!(&outcome, Ok(r) if r.reusable)
            && self.inner.sandboxes.usage(env, &warm.sandbox).is_ok_and(|u| u.pids_refused == 0 && u.oom_kills == 0);
        if reusable {
            let mut w = warm;
            w.last_used = Instant::now();
            lock(&self.inner.pools).entry(key).or_default().idle.push(w);
        } else {
            self.discard(warm);
        }
        // Meters: one invocation, and memory × time in GB·ms (rounded up).
        let platform = &self.inner.platform;
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX).max(1);
        platform.meter(env, Meter::FunctionInvocations, ("function", name), 1);
        let gb_ms = (active.memory_mb * ms).div_ceil(1024);
        platform.meter(env, Meter::FunctionGbMs, ("function", name), i64::try_from(gb_ms).unwrap_or(i64::MAX));
        let (status, result, stdout, stderr, error, reply) = match outcome {
            Ok(done) => match done.result {
                Ok(parts) => (parts.status, InvocationOutcome::Ok, done.stdout, done.stderr, None, Some(parts)),
                Err((o, message)) => (status_of(o), o, done.stdout, done.stderr, Some(message), None),
            },
            Err((o, message, stderr)) => (status_of(o), o, String::new(), stderr, Some(message), None),
        };
        self.write_log(LogRow {
            id: invocation.clone(),
            env: env.to_string(),
            name: name.to_owned(),
            version: active.version,
            started_ms,
            duration_ms: ms,
            status,
            outcome: result,
            trigger: inv.trigger,
            stdout,
            stderr,
            error: error.clone(),
        });
        match reply {
            Some(p) => Ok(Reply {
                status: p.status,
                headers: p.headers,
                body: p.body,
                invocation,
                version: active.version,
                cold,
            }),
            None => Err(FunctionError::Failed { outcome: result, message: error.unwrap_or_default(), invocation }),
        }
    }

    /// Starts a runner for the active version: a sandbox, the bundle unpacked, the runner loaded.
    async fn start_runner(&self, env: &EnvId, name: &str, active: &Active) -> Result<Warm, FunctionError> {
        let sandboxes = &self.inner.sandboxes;
        let record = sandboxes
            .create(
                &actor(&format!("function:{name}"), ""),
                env,
                CreateSandboxRequest {
                    timeout_seconds: Some(protocol::sandbox::MAX_SANDBOX_SECONDS),
                    memory_mb: Some(active.memory_mb),
                    max_processes: Some(64),
                    disk_mb: Some(512),
                    metadata: BTreeMap::from([
                        ("function".to_owned(), name.to_owned()),
                        ("version".to_owned(), active.version.to_string()),
                    ]),
                    ..Default::default()
                },
            )
            .await?;
        let exit = Arc::new(Mutex::new(RunnerExit::default()));
        let warm = Warm { env: env.clone(), sandbox: record.id.clone(), last_used: Instant::now(), exit: exit.clone() };
        match self.boot(env, &record.id, active, exit).await {
            Ok(()) => Ok(warm),
            Err(e) => {
                self.discard(warm);
                Err(e)
            }
        }
    }

    async fn boot(
        &self,
        env: &EnvId,
        id: &str,
        active: &Active,
        exit: Arc<Mutex<RunnerExit>>,
    ) -> Result<(), FunctionError> {
        let sandboxes = &self.inner.sandboxes;
        sandboxes.drop_token(env, id).await?;
        let agent = sandboxes.agent(env, id)?;
        let bundle = self
            .inner
            .platform
            .blobs()
            .get(&active.blob_key)
            .await?
            .ok_or(FunctionError::NotFound { what: "function bundle" })?;
        unpack(&agent, bundle, FN_DIR).await?;
        agent.write_file(RUNNER_PATH, RUNNER_JS.as_bytes(), Some(0o644)).await?;
        let heap = (active.memory_mb * 3 / 4).max(32);
        let spec = ExecSpec {
            argv: vec![
                "node".to_owned(),
                // supabase-js builds its realtime client at construction, which needs WebSocket (behind
                // this flag on Node 20; accepted and on by default later).
                "--experimental-websocket".to_owned(),
                format!("--max-old-space-size={heap}"),
                RUNNER_PATH.to_owned(),
                format!("{FN_DIR}/{}", active.entrypoint),
                RUNNER_PORT.to_string(),
                self.inner.config.log_limit.to_string(),
            ],
            cwd: Some(FN_DIR.to_owned()),
            tag: Some("function-runner".to_owned()),
            ..Default::default()
        };
        let mut stream = agent.exec(spec).await?;
        let mut stdout = String::new();
        let mut stderr = String::new();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(ev) = stream.next().await? {
                match ev {
                    ExecEvent::Stdout { data } => {
                        stdout.push_str(&String::from_utf8_lossy(&data.0));
                        if stdout.contains("ready\n") {
                            return Ok(true);
                        }
                    }
                    ExecEvent::Stderr { data } => push_tail(&mut stderr, &String::from_utf8_lossy(&data.0)),
                    ExecEvent::Exited { .. } => return Ok(false),
                    ExecEvent::Started { .. } => {}
                }
            }
            Ok::<_, SandboxError>(false)
        })
        .await;
        match ready {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                return Err(FunctionError::Failed {
                    outcome: InvocationOutcome::LoadFailed,
                    message: format!("the runner exited while loading the function: {}", stderr.trim()),
                    invocation: String::new(),
                });
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(FunctionError::Failed {
                    outcome: InvocationOutcome::LoadFailed,
                    message: "the function did not load within 20 s".to_owned(),
                    invocation: String::new(),
                });
            }
        }
        // Follow the runner to its end: its exit status and last words explain a crash.
        tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.next().await {
                match ev {
                    ExecEvent::Stderr { data } => {
                        push_tail(&mut lock(&exit).stderr_tail, &String::from_utf8_lossy(&data.0))
                    }
                    ExecEvent::Exited { exit_code, .. } => {
                        lock(&exit).code = Some(exit_code);
                        return;
                    }
                    ExecEvent::Stdout { .. } | ExecEvent::Started { .. } => {}
                }
            }
            let mut e = lock(&exit);
            e.code = e.code.or(Some(-1));
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_runner(
        &self,
        env: &EnvId,
        name: &str,
        active: &Active,
        warm: &Warm,
        inv: &Invocation,
        invocation: &str,
        secrets: BTreeMap<String, String>,
    ) -> Result<Done, (InvocationOutcome, String, String)> {
        let platform = &self.inner.platform;
        let crashed = |message: String| (InvocationOutcome::Crashed, message, String::new());
        // The invocation's own credential: service role on this env's data plane, until it ends.
        let token = platform
            .mint_token(
                &actor(&format!("function:{name}"), &inv.request_id),
                env,
                protocol::api::MintTokenRequest {
                    ttl_seconds: active.timeout.as_secs() + 60,
                    session: None,
                    actions: INVOCATION_ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
                    holder: Some(format!("function:{name}")),
                },
            )
            .await
            .map_err(|e| crashed(format!("could not mint the invocation's token: {e}")))?;
        let anon = {
            let id = env.to_string();
            platform.db().tx(move |conn| platform::keys::current_publishable(conn, &id)).await.unwrap_or_default()
        };
        let api = format!("http://127.0.0.1:{}/env/{env}", sandbox::agent::EGRESS_PORT);
        let mut vars = secrets;
        for (k, v) in [
            ("SUPABASE_URL", api.clone()),
            ("SUPABASE_ANON_KEY", anon.clone()),
            ("SUPABASE_SERVICE_ROLE_KEY", token.token.clone()),
            ("VIBEBASE_URL", api.clone()),
            ("VIBEBASE_API_URL", api),
            ("VIBEBASE_PUBLISHABLE_KEY", anon),
            ("VIBEBASE_SERVICE_ROLE_KEY", token.token.clone()),
            ("VIBEBASE_TOKEN", token.token.clone()),
            ("VIBEBASE_FUNCTION", name.to_owned()),
            ("VIBEBASE_FUNCTION_VERSION", active.version.to_string()),
            ("VIBEBASE_INVOCATION_ID", invocation.to_owned()),
        ] {
            vars.insert(k.to_owned(), v);
        }
        let query = &inv.query_params;
        let url = format!(
            "{}/functions/v1/{name}{}{}",
            vars.get("SUPABASE_URL").cloned().unwrap_or_default(),
            inv.subpath,
            if inv.query.is_empty() { String::new() } else { format!("?{}", inv.query) }
        );
        let meta = serde_json::json!({
            "method": inv.method,
            "url": url,
            "headers": inv.headers,
            "query": query,
            "env": vars,
            "context": {
                "request_id": inv.request_id,
                "invocation_id": invocation,
                "function_name": name,
                "function_version": active.version,
                "env_id": env.as_str(),
                "trigger": inv.trigger,
                "auth": {"role": inv.auth.role, "claims": inv.auth.claims},
                "headers": inv.headers,
                "method": inv.method,
                "path": inv.subpath,
                "query": query,
            },
        });
        let meta = base64::engine::general_purpose::STANDARD.encode(meta.to_string());
        let call = async {
            let agent = self.inner.sandboxes.agent(env, &warm.sandbox)?;
            let stream = agent.forward(RUNNER_PORT).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| SandboxError::AgentLost(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = http::Request::post("/invoke")
                .header(http::header::HOST, "localhost")
                .header("x-vb-meta", meta)
                .body(http_body_util::Full::new(inv.body.clone()))
                .map_err(|e| SandboxError::AgentLost(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| SandboxError::AgentLost(e.to_string()))?;
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ENVELOPE)
                .collect()
                .await
                .map_err(|e| SandboxError::AgentLost(e.to_string()))?
                .to_bytes();
            Ok::<_, SandboxError>(body)
        };
        let answered = tokio::time::timeout(active.timeout, call).await;
        if let Err(e) = platform.revoke_key(&actor(&format!("function:{name}"), &inv.request_id), env, &token.id).await
        {
            tracing::warn!(error = %e, function = name, "could not revoke an invocation token");
        }
        let envelope = match answered {
            Err(_) => {
                return Err((
                    InvocationOutcome::Timeout,
                    format!("the function did not answer within {} ms", active.timeout.as_millis()),
                    String::new(),
                ));
            }
            Ok(Err(_)) => return Err(self.why_gone(env, warm).await),
            Ok(Ok(body)) => body,
        };
        let env_v: Envelope =
            serde_json::from_slice(&envelope).map_err(|e| crashed(format!("the runner answered garbage: {e}")))?;
        let result = if env_v.ok {
            match decode_reply(&env_v) {
                Some(r) => Ok(r),
                None => Err((InvocationOutcome::InvalidResult, "the function's response is malformed".to_owned())),
            }
        } else {
            let outcome = match env_v.kind.as_deref() {
                Some("invalid_result") => InvocationOutcome::InvalidResult,
                Some("load_failed") => InvocationOutcome::LoadFailed,
                _ => InvocationOutcome::Threw,
            };
            Err((outcome, env_v.message.clone().unwrap_or_default()))
        };
        let reusable = !matches!(&result, Err((InvocationOutcome::LoadFailed, _)));
        Ok(Done { result, stdout: env_v.stdout, stderr: env_v.stderr, reusable })
    }
}

impl Functions {
    /// An idle runner of this version that is still alive, if any.
    async fn take_idle(&self, key: &PoolKey) -> Option<Warm> {
        loop {
            let w = lock(&self.inner.pools).get_mut(key).and_then(|p| p.idle.pop())?;
            let alive = lock(&w.exit).code.is_none() && self.inner.sandboxes.get(&w.env, &w.sandbox).is_ok();
            if alive {
                return Some(w);
            }
            self.discard(w);
        }
    }

    /// Ends a runner's sandbox (in the background: the caller's answer does not wait for it).
    fn discard(&self, w: Warm) {
        let sandboxes = self.inner.sandboxes.clone();
        tokio::spawn(async move {
            match sandboxes.kill(&w.env, &w.sandbox).await {
                Ok(()) | Err(SandboxError::NotFound) => {}
                Err(e) => tracing::warn!(sandbox = %w.sandbox, error = %e, "could not end a function sandbox"),
            }
        });
    }

    /// Stops the idle runners of an env (of one function, when named).
    async fn evict(&self, env: &EnvId, name: Option<&str>) {
        let gone: Vec<Warm> = {
            let mut pools = lock(&self.inner.pools);
            let keys: Vec<PoolKey> =
                pools.keys().filter(|(e, n, _)| e == env.as_str() && name.is_none_or(|x| x == n)).cloned().collect();
            keys.iter().filter_map(|k| pools.remove(k)).flat_map(|p| p.idle).collect()
        };
        for w in gone {
            let _ = self.inner.sandboxes.kill(&w.env, &w.sandbox).await;
        }
    }

    async fn evict_idle(&self) {
        let idle = self.inner.config.idle_timeout;
        let gone: Vec<Warm> = {
            let mut pools = lock(&self.inner.pools);
            let mut gone = Vec::new();
            for pool in pools.values_mut() {
                let (old, keep): (Vec<Warm>, Vec<Warm>) =
                    std::mem::take(&mut pool.idle).into_iter().partition(|w| w.last_used.elapsed() >= idle);
                pool.idle = keep;
                gone.extend(old);
            }
            // Pools with nothing idle and nothing running are forgotten.
            // Pools with nothing idle and nothing running (no permit holds the semaphore) are forgotten.
            pools.retain(|_, p| !p.idle.is_empty() || p.slots.as_ref().is_some_and(|s| Arc::strong_count(s) > 1));
            gone
        };
        for w in gone {
            tracing::debug!(sandbox = %w.sandbox, "evicting an idle function runner");
            let _ = self.inner.sandboxes.kill(&w.env, &w.sandbox).await;
        }
    }

    /// Why a runner stopped answering: its exit status and last words.
    async fn why_gone(&self, env: &EnvId, warm: &Warm) -> (InvocationOutcome, String, String) {
        // The exit event may trail the broken connection a little.
        for _ in 0..20 {
            if lock(&warm.exit).code.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let (code, tail) = {
            let e = lock(&warm.exit);
            (e.code, e.stderr_tail.clone())
        };
        let oom = self.inner.sandboxes.usage(env, &warm.sandbox).is_ok_and(|u| u.oom_kills > 0)
            || code == Some(137)
            || tail.contains("heap out of memory")
            || tail.contains("Allocation failed");
        if oom {
            (InvocationOutcome::OutOfMemory, "the function ran out of memory".to_owned(), tail)
        } else {
            let how = code.map_or("stopped answering".to_owned(), |c| format!("exited with status {c}"));
            (InvocationOutcome::Crashed, format!("the function's process {how}"), tail)
        }
    }

    fn write_log(&self, row: LogRow) {
        let db = self.inner.platform.db().clone();
        tokio::spawn(async move {
            let id = row.id.clone();
            let written = db
                .tx(move |conn| {
                    conn.execute(
                        "INSERT INTO function_logs (id, env_id, name, version, started_at, duration_ms, status, outcome, \
                         trigger_kind, stdout, stderr, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                        &[
                            row.id.into(),
                            row.env.into(),
                            row.name.into(),
                            int(row.version),
                            row.started_ms.into(),
                            int(row.duration_ms),
                            i64::from(row.status).into(),
                            row.outcome.as_str().into(),
                            row.trigger.into(),
                            row.stdout.into(),
                            row.stderr.into(),
                            row.error.into(),
                        ],
                    )
                })
                .await;
            if let Err(e) = written {
                tracing::warn!(invocation = %id, error = %e, "could not store an invocation log");
            }
        });
    }
}

struct LogRow {
    id: String,
    env: String,
    name: String,
    version: u64,
    started_ms: i64,
    duration_ms: u64,
    status: u16,
    outcome: InvocationOutcome,
    trigger: &'static str,
    stdout: String,
    stderr: String,
    error: Option<String>,
}

/// What the runner answered for one invocation.
#[derive(serde::Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
    kind: Option<String>,
    message: Option<String>,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
}

/// A successful answer, as the runner reported it.
struct Parts {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

struct Done {
    result: Result<Parts, (InvocationOutcome, String)>,
    stdout: String,
    stderr: String,
    reusable: bool,
}

fn decode_reply(e: &Envelope) -> Option<Parts> {
    if !(100..=599).contains(&e.status) {
        return None;
    }
    let body = base64::engine::general_purpose::STANDARD.decode(&e.body).ok()?;
    Some(Parts { status: e.status, headers: e.headers.clone(), body: Bytes::from(body) })
}

/// The HTTP status a caller gets for an outcome.
pub fn status_of(o: InvocationOutcome) -> u16 {
    match o {
        InvocationOutcome::Ok => 200,
        InvocationOutcome::Threw | InvocationOutcome::LoadFailed => 500,
        InvocationOutcome::InvalidResult | InvocationOutcome::Crashed | InvocationOutcome::OutOfMemory => 502,
        InvocationOutcome::Timeout => 504,
    }
}

/// Keeps the last 4 KiB of a stream.
fn push_tail(buf: &mut String, more: &str) {
    buf.push_str(more);
    if buf.len() > 4096 {
        let mut cut = buf.len() - 4096;
        while !buf.is_char_boundary(cut) {
            cut += 1;
        }
        buf.drain(..cut);
    }
}

/// The associated data that binds a sealed value to its place.
fn slot(env: &EnvId, name: &str, var: &str) -> String {
    format!("{env}/{name}/{var}")
}

/// Unpacks a bundle into `dir`, inside the sandbox (as its user, in its confinement).
async fn unpack(agent: &sandbox::AgentClient, bundle: Bytes, dir: &str) -> Result<(), FunctionError> {
    let spec = ExecSpec {
        argv: vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("mkdir -p {dir} && tar -xzf - -C {dir} --no-same-owner --no-same-permissions"),
        ],
        stdin: true,
        timeout_ms: Some(120_000),
        ..Default::default()
    };
    let done = agent.run(spec, Some(bundle.to_vec()), OutputLimit(16 * 1024)).await?;
    if done.exit_code != 0 {
        return Err(invalid(
            "invalid_archive",
            format!("unpacking failed: {}", String::from_utf8_lossy(&done.stderr).trim()),
        ));
    }
    Ok(())
}

/// The audit row of a successful change, in its transaction.
fn audit(
    conn: &mut dyn Conn,
    now: i64,
    actor: &Actor,
    action: &str,
    env: &str,
    target: &str,
) -> Result<(), PlatformError> {
    platform::audit::write(
        conn,
        now,
        &platform::audit::Record { actor, action, env: Some(env), target: Some(target), result: "ok" },
    )?;
    Ok(())
}

/// Points a function at a version, creating its row on first deploy.
fn activate(conn: &mut dyn Conn, env: &str, name: &str, version: i64, now: i64) -> Result<(), StoreError> {
    let changed = conn.execute(
        "UPDATE functions SET active_version = $3, updated_at = $4 WHERE env_id = $1 AND name = $2",
        &[env.into(), name.into(), version.into(), now.into()],
    )?;
    if changed == 0 {
        conn.execute(
            "INSERT INTO functions (env_id, name, active_version, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
            &[env.into(), name.into(), version.into(), now.into()],
        )?;
    }
    Ok(())
}

/// Runs `npm install` on the source in a sandbox that reaches only the registry; returns the
/// function with its `node_modules` as a new `tar.gz`.
pub(crate) async fn install_dependencies(
    sandboxes: &Sandboxes,
    actor: &Actor,
    env: &EnvId,
    source: Bytes,
    timeout: Duration,
    limits: archive::Limits,
) -> Result<Bytes, FunctionError> {
    let record = sandboxes
        .create(
            actor,
            env,
            CreateSandboxRequest {
                timeout_seconds: Some(timeout.as_secs() + 60),
                memory_mb: Some(1024),
                disk_mb: Some(2048),
                allow_egress: vec![NPM_REGISTRY.to_owned()],
                metadata: BTreeMap::from([("purpose".to_owned(), "functions:install".to_owned())]),
                ..Default::default()
            },
        )
        .await?;
    let result = install_in(sandboxes, env, &record.id, source, timeout, limits).await;
    if let Err(e) = sandboxes.kill(env, &record.id).await {
        tracing::warn!(error = %e, "could not end the install sandbox");
    }
    result
}

async fn install_in(
    sandboxes: &Sandboxes,
    env: &EnvId,
    id: &str,
    source: Bytes,
    timeout: Duration,
    limits: archive::Limits,
) -> Result<Bytes, FunctionError> {
    sandboxes.drop_token(env, id).await?;
    let agent = sandboxes.agent(env, id)?;
    unpack(&agent, source, FN_DIR).await?;
    let install = ExecSpec {
        argv: ["npm", "install", "--omit=dev", "--no-audit", "--no-fund", "--ignore-scripts", "--no-update-notifier"]
            .map(str::to_owned)
            .to_vec(),
        cwd: Some(FN_DIR.to_owned()),
        timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        ..Default::default()
    };
    let done = agent.run(install, None, OutputLimit(64 * 1024)).await?;
    if done.exit_code != 0 {
        let mut why = String::from_utf8_lossy(&done.stderr).into_owned();
        if done.timed_out {
            why = format!("timed out after {} s. {why}", timeout.as_secs());
        }
        let tail: String = why.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(FunctionError::InstallFailed(tail.trim().to_owned()));
    }
    let pack = ExecSpec {
        argv: ["tar", "-C", FN_DIR, "-czf", "-", "."].map(str::to_owned).to_vec(),
        timeout_ms: Some(300_000),
        ..Default::default()
    };
    let max = usize::try_from(limits.max_unpacked).unwrap_or(usize::MAX);
    let packed = agent.run(pack, None, OutputLimit(max)).await?;
    if packed.exit_code != 0 || packed.truncated {
        return Err(FunctionError::InstallFailed("the installed function is too large to store".to_owned()));
    }
    Ok(Bytes::from(packed.stdout))
}
