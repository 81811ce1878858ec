//! Env app databases: one database per environment, migrations written in the PostgreSQL dialect,
//! row-level security with Supabase semantics, and the PostgREST data API.
//!
//! # Backends
//!
//! - **Embedded** (the platform runs on SQLite): one SQLite file per env at
//!   [`tenancy::EnvLayout::sqlite_file`], opened lazily; at most [`MAX_OPEN`] handles stay open. Tables
//!   of the `auth` and `storage` schemas are tables whose *name* is the schema-qualified string
//!   (`"auth.users"`); user tables may never contain a dot in their name. Policies are stored in
//!   `_vb_policies` and applied by the data API; `auth.uid()`, `auth.role()`, `auth.jwt()`,
//!   `auth.email()` are SQL functions of the connection (`auth_uid()`, …) reading the request's claims.
//! - **Scale-out** (the platform runs on PostgreSQL): one database per env
//!   ([`tenancy::EnvLayout::database_name`], prefixed with the platform's schema when that is not
//!   `public`, so two platforms can share a cluster), created on first use from a template database that
//!   holds the `auth` and `storage` schemas and every registered [`SchemaHook`]. Each env has its own
//!   non-superuser owner role; every connection to an env database logs in as that owner, migrations run
//!   as it, and data-API requests `SET LOCAL ROLE` to `anon`, `authenticated` or `service_role` (shared,
//!   as on Supabase), with `request.jwt.claims` set for `auth.uid()` and friends. Nothing is
//!   cross-database: `CONNECT` on an env database is revoked from `PUBLIC`.
//!
//! # The contract for other crates (e.g. `auth`)
//!
//! - [`AppDbs::with_conn`] runs a closure in one transaction on the env's database, as the env's owner
//!   ([`Role::Owner`]) or as a request role. SQL uses `$N` placeholders on both backends.
//! - Tables of schema `auth` are written `auth.users` on PostgreSQL and `"auth.users"` on SQLite
//!   ([`Dialect`] tells which; [`table_ref`] renders either).
//! - On PostgreSQL, [`store::Value`] binds only `BIGINT`/`INT`/`TEXT` parameters and reads `BIGINT`,
//!   `INT`, `BOOLEAN` and `TEXT` columns: bind uuids and times as text and cast in SQL
//!   (`$1::text::uuid`), select them as `col::text`.
//! - [`AppDbs::register_schema`] adds DDL (one text per dialect) run once in every env database,
//!   before the env's own migrations can see it: in the template on PostgreSQL, and on open for envs
//!   created before the hook existed. Register hooks before serving. On PostgreSQL the DDL runs as the
//!   platform's (super)user; afterwards the env's owner and `service_role` get all privileges on the
//!   tables of `auth` and `storage`.
//! - The closure's error type needs `From<AppDbError>` (and usually `From<store::StoreError>`).
//! - End-user tokens: [`AppDbs::set_jwt_verifier`] installs the function that turns a bearer token of an
//!   env into its claims; the data API then runs as `authenticated` with them. `auth.uid()` is the
//!   `sub` claim (a `uuid` on PostgreSQL, as on Supabase; text on SQLite).

pub mod api;
pub mod backend;
pub mod migrate;
pub mod rest;
pub mod sqlgen;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use platform::Platform;
use protocol::EnvId;
pub use store::Dialect;

pub use backend::{EnvDb, Role};

/// Handles of env databases kept open at once; the least recently used is closed first.
pub const MAX_OPEN: usize = 128;

/// What a data-API request runs as: the role the credential or end-user token grants, and the JWT
/// claims `auth.uid()`, `auth.role()` and `auth.jwt()` read. The server fills it from the gate's
/// principal and the `auth` crate's verifier.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    pub role: RequestRole,
    /// The whole JWT payload (`sub`, `email`, `role`, …); `{}` without an end-user token.
    pub claims: serde_json::Value,
}

impl RequestAuth {
    pub fn anon() -> Self {
        Self { role: RequestRole::Anon, claims: serde_json::json!({"role": "anon"}) }
    }

    pub fn service_role() -> Self {
        Self { role: RequestRole::ServiceRole, claims: serde_json::json!({"role": "service_role"}) }
    }

    /// An end user with verified claims (`sub` is their id).
    pub fn authenticated(claims: serde_json::Value) -> Self {
        Self { role: RequestRole::Authenticated, claims }
    }

    /// The `sub` claim, if any.
    pub fn sub(&self) -> Option<&str> {
        self.claims.get("sub").and_then(serde_json::Value::as_str)
    }
}

/// The three request roles, as on Supabase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestRole {
    Anon,
    Authenticated,
    /// Bypasses row-level security.
    ServiceRole,
}

impl RequestRole {
    pub fn name(self) -> &'static str {
        match self {
            Self::Anon => "anon",
            Self::Authenticated => "authenticated",
            Self::ServiceRole => "service_role",
        }
    }
}

/// Verifies an end-user JWT for an env and returns its claims (payload), or why it is not valid.
pub type JwtVerifier = Arc<dyn Fn(&EnvId, &str) -> Result<serde_json::Value, String> + Send + Sync>;

/// DDL another crate needs in every env database, in both dialects.
#[derive(Debug, Clone)]
pub struct SchemaHook {
    /// Stable name; a hook runs once per database, recorded under this name.
    pub name: String,
    pub sqlite: String,
    pub postgres: String,
}

/// Why an env-database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AppDbError {
    /// The env database's SQLite engine reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The env database's PostgreSQL server reported an error.
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    /// A platform or store operation failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// The blocking task running the query panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(String),
}

impl AppDbError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// All env databases of this platform. Cheap to clone.
#[derive(Clone)]
pub struct AppDbs {
    inner: Arc<Inner>,
}

struct Inner {
    platform: Platform,
    /// The platform's PostgreSQL settings when env databases live on PostgreSQL.
    pg_config: Option<postgres::Config>,
    /// Connected on first use (on a blocking thread).
    cluster: std::sync::OnceLock<backend::PgCluster>,
    jwt_verifier: RwLock<Option<JwtVerifier>>,
    hooks: RwLock<Vec<SchemaHook>>,
    open: Mutex<Lru>,
    /// One gate per env being opened: concurrent first requests of an env wait for one opener instead
    /// of racing to create the same database (SQLite answers a second writer's schema transaction with
    /// "database is locked"; PostgreSQL with "tuple concurrently updated" on the owner role).
    opening: Mutex<HashMap<EnvId, Arc<Mutex<()>>>>,
    /// When each env's size was last sampled (ms).
    size_sampled: Mutex<HashMap<EnvId, i64>>,
}

#[derive(Default)]
struct Lru {
    tick: u64,
    map: HashMap<EnvId, (u64, Arc<EnvDb>)>,
}

impl AppDbs {
    /// Env databases for `platform`: SQLite files when it runs on SQLite, databases on the same
    /// PostgreSQL cluster when it runs on PostgreSQL.
    pub fn new(platform: Platform) -> Self {
        let pg_config = platform.db().postgres_config().cloned();
        Self {
            inner: Arc::new(Inner {
                platform,
                pg_config,
                cluster: std::sync::OnceLock::new(),
                jwt_verifier: RwLock::new(None),
                hooks: RwLock::new(Vec::new()),
                open: Mutex::new(Lru::default()),
                opening: Mutex::new(HashMap::new()),
                size_sampled: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The PostgreSQL cluster, connected on first use. Call on a blocking thread.
    fn cluster(&self) -> Result<Option<backend::PgCluster>, AppDbError> {
        let Some(config) = &self.inner.pg_config else { return Ok(None) };
        if let Some(c) = self.inner.cluster.get() {
            return Ok(Some(c.clone()));
        }
        let c = backend::PgCluster::connect_blocking(&self.inner.platform, config.clone())?;
        Ok(Some(self.inner.cluster.get_or_init(|| c).clone()))
    }

    /// Sets how end-user JWTs are verified (the `auth` crate provides it).
    pub fn set_jwt_verifier(&self, verifier: JwtVerifier) {
        *self.inner.jwt_verifier.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(verifier);
    }

    /// Verifies an end-user JWT of `env`; its claims, or why not.
    pub fn verify_jwt(&self, env: &EnvId, token: &str) -> Result<serde_json::Value, String> {
        let v = self.inner.jwt_verifier.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match v {
            Some(f) => f(env, token),
            None => Err("end-user tokens are not accepted yet".to_owned()),
        }
    }

    /// Registers the hook that drops an env's database when the platform deletes the env. The hook
    /// holds the databases weakly: the platform must not keep them alive (nor they it) in a cycle.
    pub fn register_delete_hook(&self) {
        self.inner.platform.on_env_delete_weak(&self.inner, |inner, env| async move {
            AppDbs { inner }.drop_env(&env).await.map_err(|e| e.to_string())
        });
    }

    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    /// Which dialect env databases speak.
    pub fn dialect(&self) -> Dialect {
        if self.inner.pg_config.is_some() { Dialect::Postgres } else { Dialect::Sqlite }
    }

    /// Adds DDL run in every env database (see the crate docs). Register before serving.
    pub fn register_schema(&self, hook: SchemaHook) {
        self.inner.hooks.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(hook);
    }

    pub(crate) fn hooks(&self) -> Vec<SchemaHook> {
        self.inner.hooks.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether the env's database exists (without creating it): a request that only reads or changes
    /// tables need not create a database that cannot have any.
    pub async fn exists(&self, env: &EnvId) -> Result<bool, AppDbError> {
        if self.inner.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map.contains_key(env) {
            return Ok(true);
        }
        let layout = self.inner.platform.layout(env);
        let this = self.clone();
        tokio::task::spawn_blocking(move || match this.cluster()? {
            None => Ok(layout.sqlite_file.exists()),
            Some(c) => c.exists(&layout.database_name),
        })
        .await
        .map_err(|e| AppDbError::Task(e.to_string()))?
    }

    /// The env's database, opened (and created) on first use.
    pub(crate) fn open_blocking(&self, env: &EnvId) -> Result<Arc<EnvDb>, AppDbError> {
        if let Some(db) = self.open_handle(env) {
            return Ok(db);
        }
        let gate = self
            .inner
            .opening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(env.clone())
            .or_default()
            .clone();
        let opened = {
            let _held = gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match self.open_handle(env) {
                Some(db) => Ok(db),
                None => self.open_new(env),
            }
        };
        self.inner.opening.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(env);
        opened
    }

    /// The env's open handle, if any (marked as just used).
    fn open_handle(&self, env: &EnvId) -> Option<Arc<EnvDb>> {
        let mut lru = self.inner.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        lru.tick += 1;
        let tick = lru.tick;
        let entry = lru.map.get_mut(env)?;
        entry.0 = tick;
        Some(entry.1.clone())
    }

    /// Opens (creating if need be) the env's database and keeps its handle. Called with the env's gate held.
    fn open_new(&self, env: &EnvId) -> Result<Arc<EnvDb>, AppDbError> {
        let layout = self.inner.platform.layout(env);
        let hooks = self.hooks();
        let db = Arc::new(match &self.cluster()? {
            None => EnvDb::open_sqlite(&layout.sqlite_file, &hooks)?,
            Some(cluster) => EnvDb::open_postgres(cluster, &layout.database_name, &hooks)?,
        });
        let mut lru = self.inner.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        lru.tick += 1;
        let tick = lru.tick;
        if lru.map.len() >= MAX_OPEN
            && let Some(oldest) = lru.map.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| k.clone())
        {
            lru.map.remove(&oldest);
        }
        lru.map.insert(env.clone(), (tick, db.clone()));
        Ok(db)
    }

    /// Runs `f` in one transaction on the env's database as `role`: committed if it returns `Ok`.
    pub async fn with_conn<T, E, F>(&self, env: &EnvId, role: Role, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<AppDbError> + Send + 'static,
        F: FnOnce(&mut dyn store::Conn) -> Result<T, E> + Send + 'static,
    {
        let this = self.clone();
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            let db = this.open_blocking(&env)?;
            db.tx(&role, |tx| f(tx.as_conn()))
        })
        .await
        .map_err(|e| E::from(AppDbError::Task(e.to_string())))?
    }

    /// Runs `f` with the env's open database on a blocking thread.
    pub(crate) async fn run<T, E, F>(&self, env: &EnvId, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<AppDbError> + Send + 'static,
        F: FnOnce(&EnvDb) -> Result<T, E> + Send + 'static,
    {
        let this = self.clone();
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            let db = this.open_blocking(&env)?;
            f(&db)
        })
        .await
        .map_err(|e| E::from(AppDbError::Task(e.to_string())))?
    }

    /// Removes the env's database: closes its handle, drops the PostgreSQL database and owner role, or
    /// deletes the SQLite file (with its WAL files). Idempotent.
    pub async fn drop_env(&self, env: &EnvId) -> Result<(), AppDbError> {
        self.inner.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map.remove(env);
        let layout = self.inner.platform.layout(env);
        match self.inner.pg_config {
            Some(_) => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || match this.cluster()? {
                    Some(c) => c.drop_database(&layout.database_name),
                    None => Ok(()),
                })
                .await
                .map_err(|e| AppDbError::Task(e.to_string()))?
            }
            None => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut p = layout.sqlite_file.clone().into_os_string();
                    p.push(suffix);
                    match tokio::fs::remove_file(&p).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(AppDbError::io(format!("remove {}", layout.sqlite_file.display()), e)),
                    }
                }
                Ok(())
            }
        }
    }

    /// The env database's size in bytes.
    pub async fn size_bytes(&self, env: &EnvId) -> Result<i64, AppDbError> {
        self.run(env, |db| db.size_bytes()).await
    }

    /// True at most once a minute per env: whether to sample the database size for the `db_bytes` gauge.
    pub fn size_sample_due(&self, env: &EnvId) -> bool {
        let now = self.inner.platform.clock().now_ms();
        let mut last = self.inner.size_sampled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.get(env) {
            Some(t) if now - t < 60_000 => false,
            _ => {
                if last.len() > 10_000 {
                    last.clear();
                }
                last.insert(env.clone(), now);
                true
            }
        }
    }

    /// The name of the env's PostgreSQL database on this cluster (for operators and tests).
    pub fn database_name(&self, env: &EnvId) -> Option<String> {
        self.inner.cluster.get().map(|c| c.database_name(&self.inner.platform.layout(env).database_name))
    }
}

/// A table of schema `schema` as SQL in `dialect`: `auth.users` on PostgreSQL, `"auth.users"` on SQLite.
pub fn table_ref(dialect: Dialect, schema: &str, table: &str) -> String {
    match dialect {
        Dialect::Postgres => format!("{}.{}", quote_ident(schema), quote_ident(table)),
        Dialect::Sqlite if schema == "public" => quote_ident(table),
        Dialect::Sqlite => quote_ident(&format!("{schema}.{table}")),
    }
}

/// An identifier in double quotes, inner quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
